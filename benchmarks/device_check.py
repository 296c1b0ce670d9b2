"""One command that proves and measures the project on a device (a CPU or a CUDA GPU): one JSON, one markdown table.

Sections, in order (``docs/gpu.md`` says what each line means):

1. **environment**: torch, CUDA and cuDNN versions, the device, its memory, bf16 and TF32 support, the CPU.
2. **correctness** on this device, in fp64 (both devices have it) unless said: for each ``grid.executor``, a stack
   equals its members trained alone by ``train``'s path (own seeds, batches and label smoothing), in fp64 and, within
   a stated tolerance, in fp32 channels-last (cuDNN's kernels on a GPU); a compiled stack equals an eager one;
   ``evaluate`` on a trained checkpoint equals the independent ``nn.Module`` of
   ``benchmarks/reference.py`` fed by its own preprocessing; a run stopped after an epoch and resumed equals an
   uninterrupted one.
3. **throughput**: the standard path (one model, as ``train`` runs it) against stacks of K (as the grid runs them)
   for each executor, precision and compile mode, in model-images/s, one after another in this process, through
   the project's own loop (:func:`cifar100_func.runtime.loop.train`); a warm-up round (compilation included) is
   not timed, then the median of the timed rounds; peak memory per model on CUDA.
4. **largest stack**: on CUDA, K grows until it runs out of memory (or a cap), beside what ``grid.max_stack:
   auto`` predicts (:mod:`cifar100_func.runtime.stack_size`); skipped on a CPU.
5. **grid**: a timed one-epoch grid of the config's configurations (24 in ``configs/config.yaml``) on the full
   training set (needs the data; skipped without).

``--quick`` runs the same on tiny sizes (synthetic data, a tiny architecture, K = 1, 2, 3, a few steps) in
seconds; the tests run it on the CPU. ``--budget`` bounds the full run: throughput variants past its share are
skipped and say so.

    python benchmarks/device_check.py --data-root ../shared                # the full check (about 10 min on a GPU)
    python benchmarks/device_check.py --quick --device cpu --out /tmp/dc   # seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import reference  # noqa: E402
from cifar100_func.commands import evaluate as evaluate_cmd  # noqa: E402
from cifar100_func.commands import grid_search  # noqa: E402
from cifar100_func.commands.cli import Runtime  # noqa: E402
from cifar100_func.config import Config, load_config  # noqa: E402
from cifar100_func.core import trees  # noqa: E402
from cifar100_func.core.hyper import Hyper  # noqa: E402
from cifar100_func.data.dataset import Dataset, load_dataset  # noqa: E402
from cifar100_func.data.loader import steps_per_epoch  # noqa: E402
from cifar100_func.errors import UserError  # noqa: E402
from cifar100_func.runtime import recipe, stack_size  # noqa: E402
from cifar100_func.runtime.backend import Backend, native_bf16, resolve_device  # noqa: E402
from cifar100_func.runtime.from_config import data_spec, pipeline  # noqa: E402
from cifar100_func.runtime.loop import Check, Hooks, Plan, train  # noqa: E402
from cifar100_func.runtime.trainer import RunFiles, arch_from, fit, schedule_fields  # noqa: E402
from cifar100_func.torch_private import set_recompile_limit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FP64 = {"rtol": 1e-7, "atol": 1e-9}  # fp64: the same maths up to rounding, amplified a little by training
FP32 = {"rtol": 1e-4, "atol": 1e-5}  # fp32 losses over a few steps (as tests/test_grid.py)
QUIET: Callable[[str], None] = lambda s: None  # noqa: E731
MIB = 2**20

# tiny sizes of --quick: 10 classes, (1,1,1)/4, batches of 16
QUICK = ["dataset.name=synthetic", "dataset.num_classes=10", "dataset.val_size=64", "dataset.synthetic.test_size=100",
         "model.blocks=[1,1,1]", "model.bottleneck_mid=4", "train.batch_size=16", "train.eval_batch_size=64"]


# ---------------------------------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def _max_diff(a: Any, b: Any) -> float:
    """The largest absolute difference over the leaves of two trees (or two tensors); inf if shapes differ."""
    la, lb = torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)
    if len(la) != len(lb):
        return math.inf
    worst = 0.0
    for x, y in zip(la, lb):
        x, y = torch.as_tensor(x).detach().cpu().double(), torch.as_tensor(y).detach().cpu().double()
        if x.shape != y.shape:
            return math.inf
        if x.numel():
            d = (x - y).abs()
            d = torch.where(torch.isnan(x) & torch.isnan(y), torch.zeros_like(d), d)
            worst = max(worst, float(d.max()))
    return worst


def _close(a: Any, b: Any, rtol: float, atol: float) -> bool:
    la, lb = torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)
    if len(la) != len(lb):
        return False
    try:
        for x, y in zip(la, lb):
            torch.testing.assert_close(torch.as_tensor(x).detach().cpu().double(),
                                       torch.as_tensor(y).detach().cpu().double(), rtol=rtol, atol=atol,
                                       equal_nan=True)
    except AssertionError:
        return False
    return True


def _check(name: str, executor: str | None, fn: Callable[[], dict]) -> dict:
    """Run one correctness check; an exception is a failed check with its reason, not the end of the run."""
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - a device check reports every failure and goes on
        traceback.print_exc()
        out = {"status": "fail", "detail": _error(exc)}
    out = {"check": name, "executor": executor, **out, "seconds": round(time.perf_counter() - t0, 2)}
    print(f"  {name}{f' [{executor}]' if executor else ''}: {out['status']}"
          + (f" ({out['detail']})" if out.get("detail") else ""), flush=True)
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "device"


# ---------------------------------------------------------------------------------------------- environment
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu {cpu_model()}"


def environment(device: torch.device) -> dict:
    env: dict[str, Any] = {
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "cuda_version": torch.version.cuda, "cudnn_version": torch.backends.cudnn.version()
        if torch.backends.cudnn.is_available() else None,
        "device": str(device), "device_name": device_name(device), "bf16_native": native_bf16(device),
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "host_memory_bytes": host_memory_bytes(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_memory_bytes=props.total_memory, device_free_bytes=stack_size.free_bytes(device),
                   bf16_in_hardware=props.major >= 8,  # bf16_native follows the backend's rule (emulation counts)
                   compute_capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                   tf32_supported=props.major >= 8, gpu_count=torch.cuda.device_count())
    else:
        env.update(device_memory_bytes=host_memory_bytes(), tf32_supported=False)
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


# ---------------------------------------------------------------------------------------------- correctness
@dataclasses.dataclass
class Ctx:
    """What every section shares: the command line, the device, the config's overrides, where to write."""

    args: argparse.Namespace
    device: torch.device
    base: list[str]  # the user's --set, plus the tiny sizes of --quick
    work: Path  # scratch folder (checkpoints of the checks)
    t0: float
    rate: float | None = None  # the throughput section's median model-images/s over its rows, once measured

    def cfg(self, *extra: str) -> Config:
        return load_config(self.args.config, [*self.base, *extra])

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


MEMBERS = [(0.001, 0.0, 0.0), (0.003, 5e-4, 0.1), (0.01, 1e-3, 0.0)]  # lr, weight decay, label smoothing
# fp32 compares trajectories, so its members train with SGD: Adam's first steps move every weight by about +-lr
# whatever its gradient's size, so a gradient that is rounding noise flips a weight by 2 lr; at lr 0.01 a 1e-7
# difference between kernels became 5e-4 in the loss by the third step (seen on an AMD EPYC)
MEMBERS_FP32 = [(0.01, 0.0, 0.0), (0.03, 5e-4, 0.1), (0.1, 1e-3, 0.0)]


def correction_steps(ctx: Ctx) -> int:
    """Training steps per epoch of the correctness checks."""
    return 2 if ctx.args.quick else 3


def correctness_overrides(ctx: Ctx) -> list[str]:
    """fp64, eager, NCHW (fp64 convolutions have no fast channels-last kernels on a CPU), synthetic data of
    :func:`correction_steps` training steps per epoch at the config's batch size."""
    batch, steps = ctx.cfg().train.batch_size, correction_steps(ctx)
    val = 64 if ctx.args.quick else 200
    # validation in 4 batches: a step function whose outputs outlive their call (CUDA graphs) shows up there
    return ["dataset.name=synthetic", f"dataset.val_size={val}", f"dataset.synthetic.train_size={batch * steps + val}",
            f"train.eval_batch_size={val // 4}",
            f"dataset.synthetic.test_size={100 if ctx.args.quick else 500}", "train.precision=fp64",
            "train.compile=false", "train.channels_last=false", "train.scheduler.name=none",
            "augment.off_last_epochs=0"]


def _stack(cfg: Config, data: Dataset, backend: Backend, seeds: list[int], epochs: int, compile: bool,
           members: list = MEMBERS):
    """``members`` as one stack of the grid (own seeds, batches and label smoothing)."""
    hypers = [Hyper(lr, wd, ls) for lr, wd, ls in members]
    fields = schedule_fields(cfg, hypers, steps_per_epoch(len(data.train), cfg.train.batch_size), epochs)
    plan = Plan(arch_from(cfg, data.num_classes), seeds, epochs=epochs, **fields, shared_data=False, guard=True,
                grid=True, stacked=True, compile=compile)
    return train(plan, data, backend, pipeline(cfg, backend.device), batch_size=cfg.train.batch_size,
                 eval_batch_size=cfg.train.eval_batch_size, progress=False, log=QUIET)


def check_stack_equals_alone(ctx: Ctx, executor: str) -> dict:
    cfg = ctx.cfg(*correctness_overrides(ctx), f"grid.executor={executor}")
    data = load_dataset(data_spec(cfg)).to(ctx.device)
    seeds, epochs = [7, 8, 9], 2
    res = _stack(cfg, data, Backend.create(cfg, ctx.device), seeds, epochs, compile=False)
    ok, loss_diff, tree_diff = True, 0.0, 0.0
    for j, ((lr, wd, ls), seed) in enumerate(zip(MEMBERS, seeds)):
        c = ctx.cfg(*correctness_overrides(ctx), f"train.seed={seed}", f"train.epochs={epochs}",
                    f"train.optimizer.lr={lr}", f"train.optimizer.weight_decay={wd}", f"train.label_smoothing={ls}")
        alone = fit(c, data, Backend.create(c, ctx.device), progress=False, log=QUIET)
        losses = torch.tensor(alone.step_losses, dtype=torch.float64)
        mine = (trees.member(res.params, j), trees.member(res.state, j))
        val = [[m["val_loss"] for m in ms] for ms in (res.metrics[j], alone.metrics)]
        ok &= _close(res.step_losses[:, j], losses, **FP64) and _close(mine, (alone.params, alone.state), FP64["rtol"],
                                                                       FP64["atol"] * 10) and _close(*val, **FP64)
        loss_diff = max(loss_diff, _max_diff(res.step_losses[:, j], losses))
        tree_diff = max(tree_diff, _max_diff(mine, (alone.params, alone.state)))
    return {"status": "pass" if ok else "fail", "precision": "fp64",
            "tolerance": f"every step's loss and each epoch's validation loss rtol {FP64['rtol']:g} atol "
                         f"{FP64['atol']:g}; weights and BN statistics atol {FP64['atol'] * 10:g}",
            "max_abs_diff": max(loss_diff, tree_diff), "runner": res.runner,
            "detail": f"3 members (own seeds, lr, wd, label smoothing), {epochs} epochs x {correction_steps(ctx)} "
                      f"steps; loss diff "
                      f"{loss_diff:.1e}, weights diff {tree_diff:.1e}"}


def check_stack_equals_alone_fp32(ctx: Ctx, executor: str) -> dict:
    """fp32 and channels-last, as runs train (on CUDA: cuDNN's batch norm under vmap, which fp64 may not reach);
    one epoch, every step's loss: training amplifies the last bit of kernels that differ under vmap. SGD with
    momentum (:data:`MEMBERS_FP32`), whose update is proportional to the gradient."""
    over = [*correctness_overrides(ctx), "train.precision=fp32", "train.channels_last=true",
            "train.optimizer.name=sgd"]
    cfg = ctx.cfg(*over, f"grid.executor={executor}")
    data = load_dataset(data_spec(cfg)).to(ctx.device)
    seeds = [7, 8, 9]
    res = _stack(cfg, data, Backend.create(cfg, ctx.device), seeds, 1, compile=False, members=MEMBERS_FP32)
    ok, diff = True, 0.0
    for j, ((lr, wd, ls), seed) in enumerate(zip(MEMBERS_FP32, seeds)):
        c = ctx.cfg(*over, f"train.seed={seed}", "train.epochs=1", f"train.optimizer.lr={lr}",
                    f"train.optimizer.weight_decay={wd}", f"train.label_smoothing={ls}")
        alone = torch.tensor(fit(c, data, Backend.create(c, ctx.device), progress=False, log=QUIET).step_losses)
        ok &= _close(res.step_losses[:, j], alone, **FP32)
        diff = max(diff, _max_diff(res.step_losses[:, j], alone))
    return {"status": "pass" if ok else "fail", "precision": "fp32", "max_abs_diff": diff, "runner": res.runner,
            "tolerance": f"every step's loss rtol {FP32['rtol']:g} atol {FP32['atol']:g}",
            "detail": f"3 members, 1 epoch x {correction_steps(ctx)} steps, channels-last"}


def check_compiled_equals_eager(ctx: Ctx, executor: str) -> dict:
    if "compiled" not in ctx.args.modes:
        return {"status": "skipped", "detail": "compiled mode not asked (--modes; --quick leaves it out on a CPU, "
                                               "where compiling takes minutes: CIFAR100_COMPILE_TESTS=1 adds it)"}
    cfg = ctx.cfg(*correctness_overrides(ctx), f"grid.executor={executor}")
    data = load_dataset(data_spec(cfg)).to(ctx.device)
    runs = {}
    for compile in (False, True):
        runs[compile] = _stack(cfg, data, Backend.create(cfg, ctx.device), [7, 8, 9], 1, compile)
    eager, compiled = runs[False], runs[True]
    if compiled.extra.get("compile_fallback"):
        return {"status": "fail", "detail": f"compiling failed: {compiled.extra['compile_fallback']}"}
    a, b = ((r.step_losses, r.params, r.state, [[m["val_loss"] for m in ms] for ms in r.metrics])
            for r in (eager, compiled))
    ok = _close(a, b, **FP64)
    return {"status": "pass" if ok else "fail", "precision": "fp64", "runner": compiled.runner,
            "tolerance": f"losses, weights, BN statistics, validation losses rtol {FP64['rtol']:g} atol "
                         f"{FP64['atol']:g}",
            "max_abs_diff": _max_diff(a, b), "detail": f"3 members, {correction_steps(ctx)} steps; compile mode "
                                                       f"{Backend.create(cfg, ctx.device).compile_mode}"}


def check_resume(ctx: Ctx) -> dict:
    """A run of 2 epochs against one stopped after epoch 1 (its last checkpoint) and resumed to epoch 2."""
    over = correctness_overrides(ctx)
    cfg2 = ctx.cfg(*over, "train.epochs=2")
    data = load_dataset(data_spec(cfg2)).to(ctx.device)
    full_dir, cut_dir = ctx.work / "resume_full", ctx.work / "resume_cut"
    full = fit(cfg2, data, Backend.create(cfg2, ctx.device),
               RunFiles(best_ckpt=full_dir / "best.ckpt", last_ckpt=full_dir / "last.ckpt"), progress=False, log=QUIET)
    cut_files = RunFiles(best_ckpt=cut_dir / "best.ckpt", last_ckpt=cut_dir / "last.ckpt")
    cfg1 = ctx.cfg(*over, "train.epochs=1")
    fit(cfg1, data, Backend.create(cfg1, ctx.device), cut_files, progress=False, log=QUIET)
    resumed = fit(cfg2, data, Backend.create(cfg2, ctx.device), cut_files, resume=True, progress=False, log=QUIET)
    strip = lambda ms: [{k: v for k, v in m.items() if "sec" not in k and k != "runner"} for m in ms]  # noqa: E731
    same_metrics = strip(resumed.metrics) == strip(full.metrics)
    a, b = (resumed.params, resumed.state), (full.params, full.state)
    diff = _max_diff(a, b)
    exact = diff == 0.0
    # CPUs: bit for bit; CUDA kernels need not be deterministic even when asked, so fp64 agreement is the test there
    ok = same_metrics and (exact if ctx.device.type == "cpu" else _close(a, b, **FP64))
    return {"status": "pass" if ok else "fail", "precision": "fp64", "max_abs_diff": diff,
            "tolerance": "bit-identical weights and metrics" if ctx.device.type == "cpu"
            else f"weights rtol {FP64['rtol']:g} atol {FP64['atol']:g}, metrics equal",
            "detail": f"2 epochs x {correction_steps(ctx)} steps vs 1 epoch, then --resume to 2; bit-identical: "
                      f"{exact}; metrics equal: "
                      f"{same_metrics}"}


def check_evaluate(ctx: Ctx) -> dict:
    """The ``evaluate`` command on the resume check's best checkpoint vs the reference ``nn.Module`` loaded with the
    same state_dict, fed by its own preprocessing (uint8 -> /255 -> the reference's mean and std), in fp64."""
    ckpt = ctx.work / "resume_full" / "best.ckpt"
    cfg = ctx.cfg(*correctness_overrides(ctx), "train.epochs=2")
    if not ckpt.is_file():
        return {"status": "fail", "detail": f"no checkpoint at {ckpt} (the resume check failed before writing it)"}
    got = evaluate_cmd.execute(cfg, Runtime(str(ctx.device.type), None), ckpt).metrics
    data = load_dataset(data_spec(cfg))
    arch = arch_from(cfg, data.num_classes)
    ref = reference.BottleneckNetRef(arch.blocks, arch.mid, data.num_classes).double()
    ref.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"])
    ref = ref.to(ctx.device).eval()
    mean = torch.tensor(reference.MEAN, dtype=torch.float64, device=ctx.device).view(1, 3, 1, 1)
    std = torch.tensor(reference.STD, dtype=torch.float64, device=ctx.device).view(1, 3, 1, 1)
    loss = correct = top5 = 0.0
    with torch.no_grad():
        for i in range(0, len(data.test), 250):
            x = data.test.x[i:i + 250].to(ctx.device).double() / 255.0
            y = data.test.y[i:i + 250].to(ctx.device)
            logits = ref((x - mean) / std)
            loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            t5 = logits.topk(5, dim=1).indices
            correct += float((t5[:, 0] == y).sum())
            top5 += float((t5 == y[:, None]).any(dim=1).sum())
    n = len(data.test)
    want = {"test_loss": loss / n, "test_accuracy": correct / n, "test_top5_accuracy": top5 / n}
    diff = max(abs(got[k] - v) for k, v in want.items())
    # the project normalises images in fp32 before the fp64 model: ~1e-8 relative in the loss; a near-tie may flip
    ok = math.isclose(got["test_loss"], want["test_loss"], rel_tol=1e-6) and all(
        abs(got[k] - want[k]) <= 1.0 / n + 1e-12 for k in ("test_accuracy", "test_top5_accuracy"))
    return {"status": "pass" if ok else "fail", "precision": "fp64", "max_abs_diff": diff,
            "tolerance": "loss rel 1e-6 (images normalised in fp32), accuracy and top-5 within one image",
            "detail": f"{n} test images: evaluate loss {got['test_loss']:.6f} acc {got['test_accuracy']:.4f}, "
                      f"nn.Module loss {want['test_loss']:.6f} acc {want['test_accuracy']:.4f}"}


def correctness(ctx: Ctx) -> list[dict]:
    print("correctness:", flush=True)
    cuda = ctx.device.type == "cuda"
    if cuda:  # deterministic kernels where CUDA has them (as the tests ask), for these checks only
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        out = []
        for ex in ctx.args.executors:
            out.append(_check("stack equals its members trained alone", ex, lambda: check_stack_equals_alone(ctx, ex)))
            out.append(_check("stack equals its members trained alone, fp32", ex,
                              lambda: check_stack_equals_alone_fp32(ctx, ex)))
            out.append(_check("compiled stack equals eager stack", ex, lambda: check_compiled_equals_eager(ctx, ex)))
        out.append(_check("resumed run equals uninterrupted run", None, lambda: check_resume(ctx)))
        out.append(_check("evaluate equals the reference nn.Module", None, lambda: check_evaluate(ctx)))
        return out
    finally:
        if cuda:
            torch.use_deterministic_algorithms(False)


# ---------------------------------------------------------------------------------------------- throughput
def find_data(ctx: Ctx, *extra: str) -> tuple[Config, Dataset] | None:
    """The real training data (config's dataset, never downloaded), or None when it is not there."""
    cfg = ctx.cfg("dataset.download=false", *extra)
    if cfg.dataset.name != "cifar100":
        return None
    try:
        return cfg, load_dataset(data_spec(cfg), ctx.args.data_root)
    except UserError:
        return None


def measure(cfg: Config, data: Dataset, device: torch.device, k: int | None, compile: bool, steps: int,
            rounds: int) -> dict:
    """Model-images/s of ``k`` stacked models (None: the standard path) over ``rounds`` timed rounds of ``steps``
    steps after one warm-up round (compilation), through the loop; peak memory per model on CUDA."""
    stacked = k is not None
    n = k or 1
    backend = Backend.create(cfg, device)
    total = (rounds + 1) * steps
    spe = steps_per_epoch(len(data.train), cfg.train.batch_size)
    epochs = math.ceil(total / spe)
    h = recipe.hyper(cfg)
    hypers = [Hyper(h.lr * (1 + j / n), h.weight_decay, h.label_smoothing) for j in range(n)]  # members differ
    fields = schedule_fields(cfg, hypers, spe, epochs)
    plan = Plan(arch_from(cfg, data.num_classes), [cfg.train.seed] * n, epochs=epochs, **fields, shared_data=True,
                guard=stacked, validate=False, max_steps=total, compile=compile, grid=stacked, stacked=stacked)
    marks: list[tuple[int, float]] = []

    def on_check(c: Check) -> None:  # every `steps` steps (its copy of the losses to the host synchronises)
        marks.append((c.first_step + len(c.losses), time.perf_counter()))

    _free(device)
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    res = train(plan, data, backend, pipeline(cfg, device), batch_size=cfg.train.batch_size,
                eval_batch_size=cfg.train.eval_batch_size, hooks=Hooks(steps, on_check), progress=False, log=QUIET)
    _sync(device)
    peak = (torch.cuda.max_memory_allocated(device) - base) if device.type == "cuda" else None
    timed = [(g, t) for g, t in marks if g >= steps and g % steps == 0]
    rates = [n * cfg.train.batch_size * (g1 - g0) / (t1 - t0) for (g0, t0), (g1, t1) in zip(timed, timed[1:])]
    return {"rates": rates, "model_images_per_sec": statistics.median(rates) if rates else None,
            "first_step_seconds": res.first_step_seconds, "peak_bytes_per_model": None if peak is None else peak // n,
            "runner": res.runner, "compile_fallback": res.extra.get("compile_fallback"), "precision":
            backend.precision.name}


def throughput(ctx: Ctx) -> dict:
    a = ctx.args
    steps, rounds = a.steps, a.rounds
    found = None if a.quick else find_data(ctx)
    if found is None:
        batch = ctx.cfg().train.batch_size
        cfg0 = ctx.cfg("dataset.name=synthetic", "dataset.val_size=64",
                       f"dataset.synthetic.train_size={batch * (rounds + 1) * steps + 64}")
        data = load_dataset(data_spec(cfg0))
        source = "synthetic (the shapes of CIFAR-100; the data set was not found)" if not a.quick else "synthetic"
    else:
        cfg0, data = found
        source = data.source
    data = data.to(ctx.device)
    first = "bf16" if native_bf16(ctx.device) else "fp32"
    precisions = sorted(a.precisions, key=lambda p: p != first)  # the device's best first: the budget may cut
    modes = sorted(a.modes, key=lambda m: m != "eager")  # eager rows are cheap; each compiled row compiles anew
    blocks = [(p, m) for p in precisions for m in modes]
    variants = [(p, m, ex, k) for p, m in blocks for ex, k in [("standard", None)]
                + [(e, k) for e in a.executors for k in a.ks]]
    limit = a.budget * 0.55  # the rest: the largest stack and the grid
    rows = []
    print(f"throughput ({source}; {steps} steps x {rounds} rounds after a warm-up round):", flush=True)
    set_recompile_limit(64)
    for p, m, ex, k in variants:
        row: dict[str, Any] = {"precision": p, "mode": m, "executor": ex, "k": k}
        if ctx.elapsed > limit:
            row.update(status="skipped", detail=f"time budget (--budget {a.budget:.0f}s: throughput stops at "
                                                f"{limit:.0f}s)")
        else:
            cfg = load_config(a.config, [*ctx.base, *cfg0_overrides(cfg0, ctx), f"train.precision={p}",
                                         f"train.compile={str(m == 'compiled').lower()}",
                                         f"grid.executor={ex if k is not None else 'auto'}"])
            try:
                row.update(status="ok", **measure(cfg, data, ctx.device, k, m == "compiled", steps, rounds))
            except torch.cuda.OutOfMemoryError as exc:
                row.update(status="out of memory", detail=_error(exc))
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                row.update(status="error", detail=_error(exc))
            _free(ctx.device)
        rows.append(row)
        rate = row.get("model_images_per_sec")
        print(f"  {p} {m:>8} {'standard path' if k is None else f'{ex} K={k}':>16}: "
              + (f"{rate:8.1f} model-images/s" if rate else row["status"]), flush=True)
    for r in rows:
        std = next((s for s in rows if s["k"] is None and s["precision"] == r["precision"]
                    and s["mode"] == r["mode"]), None)
        if r.get("model_images_per_sec") and std and std.get("model_images_per_sec"):
            r["vs_standard"] = r["model_images_per_sec"] / std["model_images_per_sec"]
    return {"data": source, "batch_size": cfg0.train.batch_size, "blocks": list(cfg0.model.blocks),
            "mid": cfg0.model.bottleneck_mid, "steps": steps, "rounds": rounds, "rows": rows,
            "memory": "torch.cuda.max_memory_allocated above what was allocated before, divided by K"
            if ctx.device.type == "cuda" else "n/a on a CPU (no per-run peak counter; the process's RSS is not "
                                                "attributable to one variant)"}


def cfg0_overrides(cfg0: Config, ctx: Ctx) -> list[str]:
    """The dataset keys of the throughput data, as overrides (the data itself is loaded once)."""
    d = cfg0.dataset
    return [f"dataset.name={d.name}", f"dataset.val_size={d.val_size}",
            f"dataset.synthetic.train_size={d.synthetic.train_size}", "dataset.download=false"]


# ---------------------------------------------------------------------------------------------- largest stack
def largest_stack(ctx: Ctx) -> dict:
    if ctx.device.type != "cuda":
        return {"status": "skipped", "detail": "a CPU: memory is the host's, and grid.max_stack auto sets no limit "
                                               "there"}
    a = ctx.args
    if ctx.elapsed > a.budget * 0.7:
        return {"status": "skipped", "detail": f"time budget (--budget {a.budget:.0f}s)"}
    found = None if a.quick else find_data(ctx)
    cfg = found[0] if found else ctx.cfg("dataset.name=synthetic")
    data = (found[1] if found else load_dataset(data_spec(cfg))).to(ctx.device)
    arch = arch_from(cfg, data.num_classes)
    backend = Backend.create(cfg, ctx.device)
    per_model = stack_size.bytes_per_model(arch, cfg.train.batch_size, backend,
                                           eval_batch_size=cfg.train.eval_batch_size)
    auto_cfg = load_config(a.config, [*ctx.base, "grid.max_stack=auto"])
    predicted = stack_size.resolve_max_stack(auto_cfg, backend, arch)

    def fits(k: int) -> bool:
        """Two training steps and a validation of a stack of k, eager (a compiled step needs no more)."""
        fields = schedule_fields(cfg, [recipe.hyper(cfg)] * k, steps_per_epoch(len(data.train),
                                                                                cfg.train.batch_size), 1)
        plan = Plan(arch, [cfg.train.seed] * k, epochs=1, **fields, guard=True, grid=True, stacked=True, max_steps=2,
                    compile=False)
        try:
            train(plan, data, backend, pipeline(cfg, ctx.device), batch_size=cfg.train.batch_size,
                  eval_batch_size=cfg.train.eval_batch_size, progress=False, log=QUIET)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            _free(ctx.device)

    tried: dict[int, bool] = {}
    lo, hi, k = 0, None, max(a.ks)
    while k <= a.max_k and ctx.elapsed < a.budget * 0.8:
        tried[k] = fits(k)
        if not tried[k]:
            hi = k
            break
        lo, k = k, k * 2
    while hi is not None and hi - lo > max(1, lo // 8) and ctx.elapsed < a.budget * 0.8:
        mid = (lo + hi) // 2
        tried[mid] = fits(mid)
        lo, hi = (mid, hi) if tried[mid] else (lo, mid)
    return {"status": "ok", "largest_fitting": lo, "smallest_failing": hi, "cap": a.max_k, "tried": tried,
            "bytes_per_model_measured": per_model, "auto_predicts": predicted, "blocks": list(arch.blocks),
            "mid": arch.mid, "batch_size": cfg.train.batch_size,
            "detail": f"{'capped at --max-k' if hi is None else 'out of memory at ' + str(hi)}; grid.max_stack auto "
                      f"would use {predicted}"}


# ---------------------------------------------------------------------------------------------- the grid
def timed_grid(ctx: Ctx) -> dict:
    a = ctx.args
    if a.quick:
        cfg = ctx.cfg("dataset.synthetic.train_size=112", "grid.epochs=1", "hparams.lr=[0.001,0.003]",
                      "hparams.weight_decay=[0.0,0.0005]", "hparams.blocks=[[1,1,1]]", "hparams.bottleneck_mid=[4]",
                      "train.compile=false")
        data = load_dataset(data_spec(cfg))
    else:
        found = find_data(ctx, "grid.epochs=1", "grid.max_train=null", "grid.schedule=exhaustive")
        if found is None:
            return {"status": "skipped", "detail": "CIFAR-100 not found (give --data-root): the grid is timed on the "
                                                   "full training set only"}
        if ctx.elapsed > a.budget * 0.85:
            return {"status": "skipped", "detail": f"time budget (--budget {a.budget:.0f}s)"}
        cfg, data = found
    backend = Backend.create(cfg, ctx.device)
    points = grid_search.expand(cfg)
    if not a.quick:  # a grid that cannot end within the budget at the measured rate is not started
        images = len(points) * cfg.hparams.seeds * len(data.train) * cfg.grid.epochs
        if ctx.rate is None:
            return {"status": "skipped", "detail": "no throughput was measured to estimate the grid's time by"}
        estimate = 1.25 * images / ctx.rate  # a quarter more for validation and compiling
        if ctx.elapsed + estimate > a.budget:
            return {"status": "skipped", "detail": f"{len(points)} configurations x {cfg.hparams.seeds} seeds x "
                    f"{len(data.train)} images would take about {estimate:.0f} s at the median measured rate "
                    f"({ctx.rate:.0f} model-images/s) plus a quarter, beyond the budget (--budget {a.budget:.0f}s, "
                    f"{ctx.elapsed:.0f}s spent)"}
    lines: list[str] = []
    t0 = time.perf_counter()
    data = data.to(ctx.device)
    rows = grid_search.run_grid(cfg, data, backend, points, None, progress=False, log=lines.append)
    _sync(ctx.device)
    seconds = time.perf_counter() - t0
    best = min(rows, key=lambda r: r["rank"])
    images = sum(len(data.train) * r["epochs"] for r in rows)
    return {"status": "ok", "configurations": len(points), "epochs": 1, "train_images": len(data.train),
            "data": data.source, "seconds": seconds, "model_images_per_sec": images / seconds,
            "backend": backend.header(), "winner": best["config"], "winner_val_acc": best["final_val_acc"],
            "stacks": [line for line in lines if "model-images/s" in line or "max_stack" in line],
            "diverged": sum(r["diverged"] for r in rows)}


# ---------------------------------------------------------------------------------------------- outputs
def _mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / MIB:.1f}"


def markdown(report: dict) -> str:
    env, tp = report["environment"], report["throughput"]
    out = [f"# Device check: {env['device_name']}" + (" (--quick)" if report["quick"] else ""), "",
           f"`{report['command']}`, {report['seconds']:.0f} s in all.", "", "## Environment", "",
           "| what | value |", "| --- | --- |"]
    for k, v in env.items():
        if k.endswith("_bytes") and v:
            v = f"{v / 2**30:.2f} GiB"
        out.append(f"| {k} | {v} |")
    out += ["", "## Correctness", "", "| check | executor | result | max abs diff | tolerance | detail |",
            "| --- | --- | --- | ---: | --- | --- |"]
    for c in report["correctness"]:
        d = c.get("max_abs_diff")
        out.append(f"| {c['check']} | {c['executor'] or ''} | **{c['status']}** | "
                   f"{'' if d is None else f'{d:.1e}'} | {c.get('tolerance', '')} | {c.get('detail', '')} |")
    out += ["", "## Throughput", ""]
    if "rows" not in tp:
        tp = {**tp, "rows": [], "data": f"{tp['status']}: {tp['detail']}", "blocks": "", "mid": "", "batch_size": "",
              "steps": 0, "rounds": 0, "memory": ""}
    out += [f"Data: {tp['data']}; blocks {tp['blocks']}, mid {tp['mid']}, batch {tp['batch_size']}; {tp['steps']} "
            f"steps x {tp['rounds']} rounds after a warm-up round (median). Peak memory: {tp['memory']}.", "",
            "| precision | mode | path | K | model-images/s | vs standard path | peak MiB per model | runner |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in tp["rows"]:
        rate = r.get("model_images_per_sec")
        path = "standard (one model)" if r["k"] is None else f"stack, {r['executor']}"
        vs = f"{r['vs_standard']:.2f}x" if r.get("vs_standard") else ""
        runner = r.get("runner", r.get("detail", ""))
        if r.get("compile_fallback"):
            runner += f"; compile failed: {r['compile_fallback']}"
        out.append(f"| {r['precision']} | {r['mode']} | {path} | {r['k'] or 1} | "
                   f"{f'{rate:.0f}' if rate else r['status']} | {vs} | {_mib(r.get('peak_bytes_per_model'))} | "
                   f"{runner} |")
    ls, g = report["largest_stack"], report["grid"]
    out += ["", "## Largest stack", ""]
    if ls["status"] == "ok":
        out += [f"Blocks {ls['blocks']}, mid {ls['mid']}, batch {ls['batch_size']}: largest stack that trained and "
                f"validated: **{ls['largest_fitting']}** ({ls['detail']}); measured "
                f"{_mib(ls['bytes_per_model_measured'])} MiB per model; tried {ls['tried']}."]
    else:
        out.append(f"{ls['status']}: {ls['detail']}")
    out += ["", "## One-epoch grid", ""]
    if g["status"] == "ok":
        out += [f"{g['configurations']} configurations x 1 epoch on {g['train_images']:,} training images "
                f"({g['data']}): **{g['seconds']:.0f} s**, {g['model_images_per_sec']:.0f} model-images/s in all; "
                f"winner {g['winner']} (val acc {g['winner_val_acc']:.4f}); diverged {g['diverged']}.", "",
                f"Backend: {g['backend']}", ""] + [f"- {line}" for line in g["stacks"]]
    else:
        out.append(f"{g['status']}: {g['detail']}")
    return "\n".join(out) + "\n"


def _strict(x: Any) -> Any:
    """Strict JSON: non-finite numbers as null (as every file of the project), keys as strings."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    return x


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "config.yaml"))
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--out", default=None, help="folder for device_check.json and .md (default: "
                                               "docs/results/device_check/<device name>[_quick]/)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, synthetic data, K = 1,2,3: seconds")
    ap.add_argument("--executors", default="vmap,sequential", help="grid.executor values to check and time")
    ap.add_argument("--ks", default=None, help="stack sizes to time (default 1,6,24,48; --quick 1,2,3)")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--modes", default=None, help="eager,compiled (default; --quick: eager unless "
                                                  "CIFAR100_COMPILE_TESTS=1 or on CUDA)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per round (default 20; --quick 3)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3; --quick 2)")
    ap.add_argument("--max-k", type=int, default=1024, help="largest stack tried (CUDA)")
    ap.add_argument("--budget", type=float, default=None, help="seconds the run aims at (default 600; --quick 300)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; on a CPU shared "
                                                               "with other work, fewer threads than cores is steadier)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    q = args.quick
    compile_ok = not q or os.environ.get("CIFAR100_COMPILE_TESTS") == "1" or args.device == "cuda"
    args.modes = (args.modes or ("eager,compiled" if compile_ok else "eager")).split(",")
    args.ks = [int(k) for k in (args.ks or ("1,2,3" if q else "1,6,24,48")).split(",")]
    args.executors = args.executors.split(",")
    args.precisions = args.precisions.split(",")
    args.steps = args.steps or (3 if q else 20)
    args.rounds = args.rounds or (2 if q else 3)
    args.budget = args.budget or (300.0 if q else 600.0)
    bad = [m for m in args.modes if m not in ("eager", "compiled")] + \
          [p for p in args.precisions if p not in ("fp32", "bf16")] + \
          [e for e in args.executors if e not in ("vmap", "sequential", "auto")]
    if bad:
        ap.error(f"unknown value(s): {', '.join(bad)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":  # before cuBLAS starts: deterministic matmuls for the correctness checks
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    name = _slug(device_name(device)) + ("_quick" if args.quick else "")
    out = Path(args.out) if args.out else REPO / "docs" / "results" / "device_check" / name
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="device_check."))  # the checks' checkpoints: scratch, removed at the end
    try:
        return run(args, device, out, Ctx(args, device, [*args.overrides, *(QUICK if args.quick else [])], work, t0),
                   argv)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, device: torch.device, out: Path, ctx: Ctx, argv: list[str] | None) -> int:
    t0 = ctx.t0
    print(f"device check on {device_name(device)} ({device}); output in {out}", flush=True)
    report: dict[str, Any] = {"quick": args.quick, "command": " ".join(["python benchmarks/device_check.py",
                                                                        *(argv if argv is not None
                                                                          else sys.argv[1:])])}
    report["environment"] = environment(device)
    report["correctness"] = correctness(ctx)
    for name, section in (("throughput", throughput), ("largest_stack", largest_stack), ("grid", timed_grid)):
        try:
            report[name] = section(ctx)
            if name == "throughput":
                rates = [r["model_images_per_sec"] for r in report[name]["rows"] if r.get("model_images_per_sec")]
                ctx.rate = statistics.median(rates) if rates else None
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others' results
            traceback.print_exc()
            report[name] = {"status": "error", "detail": _error(exc)}
        if name != "throughput":
            print(f"{name}: {report[name].get('status')} {report[name].get('seconds', report[name].get('detail'))}",
                  flush=True)
    report["seconds"] = time.perf_counter() - t0
    report["passed"] = all(c["status"] != "fail" for c in report["correctness"])
    (out / "device_check.json").write_text(json.dumps(_strict(report), indent=1, default=str, allow_nan=False))
    (out / "device_check.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out / 'device_check.json'} and {out / 'device_check.md'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
