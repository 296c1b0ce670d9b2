"""TensorBoard event files, read back with tensorboard's EventAccumulator: what each training command wrote
agrees with its own metrics files, a resumed run leaves no doubles, the grid fills the hparams view."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    ea = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def _metrics(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_events_agree_with_its_metrics(run_cli, tiny_config, tmp_path):
    cfg = tiny_config()
    code, _, err = run_cli("train", "--config", str(cfg))
    assert code == 0, err
    run = tmp_path / "runs" / "train"
    ev = _scalars(run / "tb")
    metrics = _metrics(run / "metrics.jsonl")
    steps = len(ev["train/loss"])
    assert steps == 2 * (320 // 32)  # 2 epochs of 10 steps (420 images, 100 for validation)
    assert [s for s, _ in ev["train/loss"]] == list(range(1, steps + 1))
    per_epoch = np.array([v for _, v in ev["train/loss"]]).reshape(2, -1).mean(axis=1)
    np.testing.assert_allclose(per_epoch, [m["train_loss"] for m in metrics], rtol=1e-6)
    assert [v for _, v in ev["val/acc"]] == pytest.approx([m["val_acc"] for m in metrics])
    assert [s for s, _ in ev["val/acc"]] == [10, 20]
    assert [v for _, v in ev["train/epoch_acc"]] == pytest.approx([m["train_acc"] for m in metrics])
    assert ev["train/lr"][-1][1] == pytest.approx(metrics[-1]["lr"])
    assert all(0.0 <= v <= 1.0 for _, v in ev["train/acc"])


def test_resumed_run_continues_its_curves_without_doubles(run_cli, tiny_config, tmp_path):
    part = tiny_config({"train": {"epochs": 1}})
    assert run_cli("train", "--config", str(part))[0] == 0
    code, _, err = run_cli("train", "--config", str(part), "--resume", "--set", "train.epochs=2")
    assert code == 0, err
    ev = _scalars(tmp_path / "runs" / "train" / "tb")
    assert [s for s, _ in ev["train/loss"]] == list(range(1, 21))
    assert [s for s, _ in ev["val/acc"]] == [10, 20]


def test_grid_events_per_configuration_and_hparams(run_cli, tiny_config, tmp_path):
    cfg = tiny_config()
    code, _, err = run_cli("grid_search", "--config", str(cfg))
    assert code == 0, err
    out = tmp_path / "runs" / "grid_search"
    rows = json.loads((out / "results.json").read_text())
    for r in rows:
        folder = out / "tb" / r["config"]
        ev = _scalars(folder)
        assert len(ev["train/loss"]) == len(r["step_losses"])
        np.testing.assert_allclose([v for _, v in ev["train/loss"]], r["step_losses"], rtol=1e-6)
        assert ev["val/acc"][-1][1] == pytest.approx(r["final_val_acc"])
        assert ev["hparam/final_val_acc"][-1][1] == pytest.approx(r["final_val_acc"])
        ea = EventAccumulator(str(folder))
        ea.Reload()
        assert "_hparams_/session_start_info" in ea.PluginTagToContent("hparams")


def test_lr_finder_events_per_seed(run_cli, tiny_config, tmp_path):
    cfg = tiny_config({"lr_finder": {"seeds": 2, "max_steps": 8}})
    code, _, err = run_cli("lr_finder", "--config", str(cfg))
    assert code == 0, err
    summary = json.loads((tmp_path / "runs" / "lr_finder" / "lr_finder.json").read_text())
    for seed in summary["seeds"]:
        ev = _scalars(tmp_path / "runs" / "lr_finder" / "tb" / f"seed{seed}")
        assert len(ev["train/loss"]) == summary["steps"]
        lrs = [v for _, v in ev["train/lr"]]
        assert lrs == sorted(lrs) and lrs[0] > 0
