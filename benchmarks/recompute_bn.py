"""Recompute a checkpoint's batch-norm statistics on the first N training images (``update_bn``'s cumulative
average, as ``train.ema.bn=recompute`` does) and write ``<stem>.recomputed_bn<N>.ckpt`` beside it, for
``cifar100-func evaluate``. Used to measure how many images averaged weights' statistics need.

    python benchmarks/recompute_bn.py --config configs/recipe.yaml --data-root ../shared \\
        --checkpoint artifacts/recipe_ema20/best.ckpt --images 2000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch.utils._pytree import tree_map

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar100_func.config import load_config  # noqa: E402
from cifar100_func.core.step import recompute_bn  # noqa: E402
from cifar100_func.data.dataset import load_dataset  # noqa: E402
from cifar100_func.data.loader import bn_batches  # noqa: E402
from cifar100_func.runtime.backend import Backend, resolve_device  # noqa: E402
from cifar100_func.runtime.checkpoint import load_weights, save_checkpoint  # noqa: E402
from cifar100_func.runtime.from_config import data_spec, pipeline  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/config.yaml")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override, repeatable")
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    device = resolve_device("auto")
    backend = Backend.create(cfg, device)
    data = load_dataset(data_spec(cfg), args.data_root).to(device)
    path = Path(args.checkpoint)
    params, state, meta, _ = load_weights(path)
    params, state = (tree_map(lambda t: t.to(device), tr) for tr in (params, state))
    batches = bn_batches(data.train, pipeline(cfg, device), args.images, cfg.train.eval_batch_size)
    state = recompute_bn(params, state, batches, precision=backend.precision, device_type=device.type)
    out = path.with_name(f"{path.stem}.recomputed_bn{args.images}.ckpt")
    save_checkpoint(out, params, state, **{k: v for k, v in meta.items()
                                           if k not in ("format", "state_dict", "ensemble", "opt_state")})
    print(f"wrote {out} (epoch {meta.get('epoch')}, {meta.get('weights', 'trained')} weights, statistics of the "
          f"first {args.images} training images in whole batches)")


if __name__ == "__main__":
    main()
