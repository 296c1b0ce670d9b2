"""The standard training path end to end: outputs, checkpoints, exact resume, divergence, real data."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks.reference import BottleneckNetRef
from cifar100_func.runtime import executor, trainer
from cifar100_func.runtime.from_config import data_spec, pipeline
from cifar100_func.config import load_config


def _files(tmp_path, run="train"):
    return tmp_path / "runs" / run, tmp_path / "artifacts" / "best.ckpt"


def test_train_writes_metrics_curves_and_a_safe_checkpoint(run_cli, tiny_config, tmp_path):
    cfg = tiny_config()
    code, out, err = run_cli("train", "--config", str(cfg))
    assert code == 0, err
    run_dir, best = _files(tmp_path)
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "seconds", "images_per_sec"} <= set(lines[0])
    assert all(m["dataset"] == "synthetic" for m in lines) and "SYNTHETIC" in out
    for name in ("loss.png", "accuracy.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_config(run_dir / "config.yaml").model.blocks == (1, 1, 1)  # the snapshot is a valid config
    ckpt = torch.load(best, weights_only=True)
    assert {"state_dict", "config", "epoch", "metrics"} <= set(ckpt)
    ref = BottleneckNetRef((1, 1, 1), 4, num_classes=10)
    ref.load_state_dict(ckpt["state_dict"])  # the reference layout, loadable as is
    last = torch.load(run_dir / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and "opt_state" in last
    assert not list(best.parent.glob(".*.tmp")) and not list(run_dir.glob(".*.tmp"))

    # a second run must not silently replace the first one's files
    before = best.read_bytes()
    code, _, err = run_cli("train", "--config", str(cfg))
    assert code != 0 and "--resume" in err and best.read_bytes() == before


def _final(tmp_path, run="train"):
    last = torch.load(tmp_path / "runs" / run / "last.ckpt", weights_only=True)
    return last["metrics"], last["state_dict"]


def test_resume_after_interrupt_gives_the_uninterrupted_result(run_cli, tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config({"train": {"epochs": 3}})
    assert run_cli("train", "--config", str(cfg), "--run-name", "full",
                   "--set", f"paths.artifacts_dir={tmp_path / 'a_full'}")[0] == 0
    full_metrics, full_sd = _final(tmp_path, "full")

    real_make = executor.make_train_step
    calls = {"n": 0}

    def interrupting(*a, **k):
        step = real_make(*a, **k)

        def wrapped(*args):
            calls["n"] += 1
            if calls["n"] == 15:  # in the middle of epoch 2 (10 steps per epoch)
                raise KeyboardInterrupt
            return step(*args)

        return wrapped

    monkeypatch.setattr(executor, "make_train_step", interrupting)
    code, _, err = run_cli("train", "--config", str(cfg), "--run-name", "cut")
    assert code == 130 and "--resume" in err
    best = tmp_path / "artifacts" / "best.ckpt"
    assert torch.load(best, weights_only=True)["epoch"] == 1  # the complete file from epoch 1
    assert torch.load(tmp_path / "runs" / "cut" / "last.ckpt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(executor, "make_train_step", real_make)

    code, out, err = run_cli("train", "--config", str(cfg), "--run-name", "cut", "--resume")
    assert code == 0, err
    metrics, sd = _final(tmp_path, "cut")
    strip = lambda ms: [{k: v for k, v in m.items() if "sec" not in k} for m in ms]  # noqa: E731
    assert strip(metrics) == strip(full_metrics)
    for k in full_sd:
        assert torch.equal(sd[k], full_sd[k]), k
    lines = (tmp_path / "runs" / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2, 3]


def test_resume_refuses_a_changed_config(run_cli, tiny_config):
    cfg = tiny_config({"train": {"epochs": 1}})
    assert run_cli("train", "--config", str(cfg))[0] == 0
    code, _, err = run_cli("train", "--config", str(cfg), "--resume", "--set", "train.optimizer.lr=0.1")
    assert code == 2 and "train.optimizer.lr" in err


def test_divergence_stops_with_step_and_lr_and_keeps_best(run_cli, tiny_config, tmp_path):
    cfg = tiny_config({"train": {"epochs": 1}})
    assert run_cli("train", "--config", str(cfg))[0] == 0
    best = tmp_path / "artifacts" / "best.ckpt"
    before = best.read_bytes()
    code, _, err = run_cli("train", "--config", str(cfg), "--run-name", "boom", "--overwrite",
                           "--set", "train.optimizer.lr=90", "--set", "train.optimizer.name=sgd")
    assert code == 3 and "diverged" in err and "lr 90" in err and "step" in err
    assert best.read_bytes() == before


def test_missing_data_root_is_exit_2(run_cli, tmp_path):
    code, _, err = run_cli("train", "--config", "configs/config.yaml", "--data-root", str(tmp_path / "none"),
                           "--set", f"paths.runs_dir={tmp_path}/r", "--set", f"paths.artifacts_dir={tmp_path}/a")
    assert code == 2 and "--data-root" in err and str(tmp_path / "none") in err
    assert not (tmp_path / "a" / "best.ckpt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_exit_2(run_cli, tiny_config):
    code, _, err = run_cli("train", "--config", str(tiny_config()), "--device", "cuda")
    assert code == 2 and "CUDA" in err


@pytest.mark.realdata
def test_initial_loss_on_real_data_is_ln100(real_root):
    from cifar100_func.core import model
    from cifar100_func.data.dataset import load_dataset
    from cifar100_func.data.loader import train_batches
    from cifar100_func.core.seeding import generator

    cfg = load_config("configs/config.yaml", ["dataset.max_train=640"])
    data = load_dataset(data_spec(cfg), str(real_root))
    params, state = model.init(trainer.arch_from(cfg, 100), generator(42, "init"))
    pipe = pipeline(cfg, "cpu")
    losses = []
    for x, y in train_batches(data.train, pipe, 64, 42, 0):
        logits, _ = model.apply(params, state, x, train=True)
        losses.append(torch.nn.functional.cross_entropy(logits, y).item())
    # PyTorch's default init gives logits of std ~0.7 here, so ~4.8 (the reference nn.Module measures alike)
    assert sum(losses) / len(losses) == pytest.approx(math.log(100), abs=0.3)


@pytest.mark.realdata
def test_short_real_run_learns(run_cli, real_root, tmp_path):
    code, out, err = run_cli(
        "train", "--config", "configs/config.yaml", "--data-root", str(real_root),
        "--set", "dataset.max_train=6400", "--set", "dataset.max_val=1000", "--set", "train.epochs=2",
        "--set", "train.optimizer.lr=0.002", "--set", "train.precision=bf16", "--set", "train.compile=false",
        "--set", f"paths.runs_dir={tmp_path}/runs", "--set", f"paths.artifacts_dir={tmp_path}/art")
    assert code == 0, err
    ckpt = torch.load(tmp_path / "art" / "best.ckpt", weights_only=True)
    assert ckpt["best_val_acc"] > 0.03  # chance is 0.01
