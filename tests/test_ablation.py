"""``benchmarks/ablation.py`` on tiny synthetic data: each seed of a variant equals that seed trained alone with the
variant's config (the standard path, the reference), the paired differences and the table follow from them, a run
started again keeps what is done, and a bad variant name is one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from cifar100_func.config import load_config
from cifar100_func.data.dataset import load_dataset
from cifar100_func.runtime.backend import Backend
from cifar100_func.runtime.from_config import data_spec
from cifar100_func.runtime.trainer import fit

REPO = Path(__file__).resolve().parents[1]
FP64 = ["train.precision=fp64", "train.epochs=1"]


def _run(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "benchmarks" / "ablation.py"), "--config", str(config), "--device", "cpu",
           "--seeds", "2", "--out", str(out), *(a for o in FP64 for a in ("--set", o)), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)


def test_variants_equal_their_seeds_trained_alone(tiny_config, tmp_path):
    config, out = tiny_config(), tmp_path / "abl"
    proc = _run(config, out, "--variants", "baseline,alternating_flip")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "ablation.json").read_text())
    for name, extra in (("baseline", []), ("alternating_flip", ["augment.flip=alternating"])):
        for j, seed in enumerate(res[name]["seeds"]):
            cfg = load_config(str(config), [*FP64, *extra, f"train.seed={seed}"])
            alone = fit(cfg, load_dataset(data_spec(cfg)), Backend.create(cfg, torch.device("cpu")), progress=False,
                        log=lambda s: None).metrics[-1]
            assert res[name]["val_acc"][j] == alone["val_acc"]
            assert abs(res[name]["val_loss"][j] - alone["val_loss"]) < 1e-9
    assert set(res["baseline"]["tta"]) == {"none", "flip", "flip_translate"}
    assert res["baseline"]["tta"]["none"] == res["baseline"]["val_acc"]
    md = (out / "ablation.md").read_text()
    assert "| alternating_flip |" in md and "baseline + TTA flip " in md

    # a later run of other variants keeps every finished one, asked for or not
    again = _run(config, out, "--variants", "baseline,identity_init")
    assert again.returncode == 0 and "baseline: done earlier, kept" in again.stdout
    now = json.loads((out / "ablation.json").read_text())
    assert set(now) == {"baseline", "alternating_flip", "identity_init"}
    assert {n: now[n] for n in res} == res
    # a changed base config makes every earlier result stale
    stale = _run(config, out, "--variants", "baseline", "--set", "train.seed=3")
    assert stale.returncode == 0 and "alternating_flip: an earlier result" in stale.stdout
    assert set(json.loads((out / "ablation.json").read_text())) == {"baseline"}


def test_an_unknown_variant_is_one_line_and_exit_2(tiny_config, tmp_path):
    proc = _run(tiny_config(), tmp_path / "abl", "--variants", "baseline,warp_drive")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "warp_drive" in proc.stderr
    assert not (tmp_path / "abl").exists()


def test_a_run_that_fails_before_any_result_leaves_no_folder(tiny_config, tmp_path):
    proc = _run(tiny_config(), tmp_path / "abl", "--variants", "baseline", "--data-root", str(tmp_path / "none"),
                "--set", "dataset.name=cifar100", "--set", "dataset.download=false")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert not (tmp_path / "abl").exists()
