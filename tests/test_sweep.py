"""Ensemble sweeps: seeds as a grid axis, each configuration's seed ensemble, the ensemble selected across the
sweep, and the study answering with it. Oracles: separate standard-path runs of each seed, and the members'
softmax computed by the reference nn.Module in float64."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from benchmarks.reference import BottleneckNetRef
from cifar100_func import inputs
from cifar100_func.commands import grid_search
from cifar100_func.config import load_config
from cifar100_func.data.dataset import load_dataset
from cifar100_func.data.loader import eval_batches
from cifar100_func.runtime import trainer
from cifar100_func.runtime.backend import Backend
from cifar100_func.runtime.from_config import data_spec, pipeline
from cifar100_func.runtime.interop import to_state_dict

SWEEP = {"train": {"precision": "fp64"},
         "hparams": {"lr": [0.002, 0.02], "blocks": [[1, 1, 1], [1, 1, 2]], "seeds": 2},
         "grid": {"epochs": 1, "selection_rounds": 6}}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One fp64 sweep (2 lrs x 2 architectures x 2 seeds) through the grid command, and its config."""
    import yaml

    from tests.conftest import TINY, _merge
    from cifar100_func.commands.cli import run_command

    tmp = tmp_path_factory.mktemp("sweep")
    data = _merge(_merge(TINY, SWEEP), {"paths": {"runs_dir": str(tmp / "runs"), "artifacts_dir": str(tmp / "art"),
                                                  "tensorboard": False}})
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    assert run_command(grid_search.main, ["--config", str(path)]) == 0
    return path, tmp / "runs" / "grid_search"


def _reference(sd: dict) -> BottleneckNetRef:
    from cifar100_func.runtime.interop import arch_from_state_dict

    arch = arch_from_state_dict(sd)
    ref = BottleneckNetRef(arch.blocks, arch.mid, num_classes=arch.num_classes).double()
    ref.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in sd.items()})
    return ref.eval()


def _probs(sds: list[dict], cfg, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, N, C) softmax of each state_dict on a split, from the reference module, and the labels."""
    data = load_dataset(data_spec(cfg))
    refs = [_reference(sd) for sd in sds]
    probs, ys = [[] for _ in refs], []
    with torch.no_grad():
        for x, y in eval_batches(getattr(data, split), pipeline(cfg, "cpu"), 41):
            for j, ref in enumerate(refs):
                probs[j].append(ref(x.double()).softmax(-1))
            ys.append(y)
    return torch.stack([torch.cat(p) for p in probs]), torch.cat(ys)


def _metrics(p: torch.Tensor, y: torch.Tensor) -> dict:
    return {"loss": float(-p[torch.arange(len(y)), y].log().mean()), "acc": float((p.argmax(-1) == y).double().mean())}


def _finals(out: Path) -> dict[str, dict]:
    """Every finished member's state_dict by name, as the grid kept them."""
    named = {}
    for f in sorted((out / "stacks").glob("*_final.pt")):
        obj = torch.load(f, weights_only=True)
        named.update(zip(obj["names"], obj["state_dicts"]))
    return named


def test_each_seed_of_a_stack_equals_its_own_run(sweep):
    path, out = sweep
    cfg = load_config(path)
    data = load_dataset(data_spec(cfg))
    finals = _finals(out)
    assert len(finals) == 8
    rows = json.loads((out / "results.json").read_text())
    row = next(r for r in rows if r["lr"] == 0.02 and r["blocks"] == [1, 1, 1])
    assert [m["seed"] for m in row["members"]] == [42, 43]  # the same seeds for every configuration: paired
    for m in row["members"]:
        c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, blocks=(1, 1, 1)), train=dataclasses.replace(
            cfg.train, seed=m["seed"], epochs=1,
            optimizer=dataclasses.replace(cfg.train.optimizer, lr=0.02, weight_decay=row["weight_decay"])))
        alone = trainer.fit(c, data, Backend.create(c, torch.device("cpu")), progress=False, log=lambda s: None)
        want = to_state_dict(alone.params, alone.state)
        for key, value in want.items():
            torch.testing.assert_close(finals[m["name"]][key], value, rtol=1e-9, atol=1e-11, msg=key)
        assert m["final_val_acc"] == pytest.approx(alone.metrics[-1]["val_acc"])


def test_configuration_ensembles_and_seed_statistics_equal_the_oracle(sweep):
    path, out = sweep
    cfg = load_config(path)
    finals = _finals(out)
    rows = json.loads((out / "results.json").read_text())
    for row in rows:
        names = [m["name"] for m in row["members"]]
        p, y = _probs([finals[n] for n in names], cfg, "val")
        want = _metrics(p.mean(0), y)
        assert row["ensemble_val"]["loss"] == pytest.approx(want["loss"], rel=1e-7)
        assert row["ensemble_val"]["acc"] == pytest.approx(want["acc"])
        single = [_metrics(pj, y)["acc"] for pj in p]
        assert row["single_val"]["acc"] == pytest.approx(sum(single) / len(single))
        accs = torch.tensor([m["final_val_acc"] for m in row["members"]], dtype=torch.float64)
        assert row["val_acc_mean"] == pytest.approx(float(accs.mean()))
        assert row["val_acc_sem"] == pytest.approx(float(accs.std() / len(accs) ** 0.5))
    ranked = sorted(rows, key=lambda r: r["rank"])
    assert [r["val_acc_mean"] for r in ranked] == sorted((r["val_acc_mean"] for r in rows), reverse=True)
    noise = json.loads((out / "sweep.json").read_text())["noise"]
    assert noise["winner"] == ranked[0]["config"] and noise["runner_up"]["config"] == ranked[1]["config"]
    assert noise["runner_up"]["n"] == 2 and "paired seeds" in noise["runner_up"]["verdict"]


def test_the_selected_ensemble_equals_the_oracle_on_validation_and_test(sweep, run_cli):
    path, out = sweep
    cfg = load_config(path)
    finals = _finals(out)
    sel = json.loads((out / "sweep.json").read_text())["selection"]
    assert sel["pool"] == 8 and sel["size"] <= 6
    names, weights = [m["name"] for m in sel["members"]], torch.tensor([m["weight"] for m in sel["members"]])
    p, y = _probs([finals[n] for n in finals], cfg, "val")
    best = min(_metrics(pj, y)["loss"] for pj in p)
    p, y = _probs([finals[n] for n in names], cfg, "val")
    want = _metrics((p * weights[:, None, None].double()).sum(0), y)
    assert sel["val"]["loss"] == pytest.approx(want["loss"], rel=1e-7) and sel["val"]["acc"] == pytest.approx(want["acc"])
    assert sel["val"]["loss"] <= best + 1e-12  # never worse than its best member on validation
    code, stdout, err = run_cli("evaluate", "--config", str(path), "--checkpoint", str(out / "selection.ckpt"))
    assert code == 0, err
    res = json.loads((out / "selection.eval_test.json").read_text())
    p, y = _probs([finals[n] for n in names], cfg, "test")
    want = _metrics((p * weights[:, None, None].double()).sum(0), y)
    assert res["test_loss"] == pytest.approx(want["loss"], rel=1e-7)
    assert res["test_accuracy"] == pytest.approx(want["acc"])
    assert res["ensemble_size"] == len(names)
    assert [m["name"] for m in res.get("members", [])] == (names if len(names) > 1 else [])
    assert res["calibration"]["temperature_fitted_on"] == "validation"


def test_halving_prunes_every_seed_of_a_configuration_together(tiny_config):
    cfg = load_config(tiny_config({"hparams": {"lr": [0.0005, 0.003, 0.02], "seeds": 2},
                                   "grid": {"epochs": 2, "schedule": "halving",
                                            "halving": {"min_epochs": 1, "eta": 3}}}))
    data = load_dataset(data_spec(cfg))
    rows = grid_search.run_grid(cfg, data, Backend.create(cfg, torch.device("cpu")), grid_search.expand(cfg), None,
                                progress=False, log=lambda s: None)
    assert sum(not r["pruned"] for r in rows) == 1
    for r in rows:
        assert len({m["pruned_at_rung"] for m in r["members"]}) == 1  # all seeds left (or stayed) together
        assert r["rung_val_acc"][0] == pytest.approx(sum(m["rung_val_acc"][0] for m in r["members"]) / 2)
    survivor = next(r for r in rows if not r["pruned"])
    assert survivor["rung_val_acc"][0] == max(r["rung_val_acc"][0] for r in rows)


def test_looking_at_trained_members_differently_trains_no_stack_again():
    base = load_config(None)
    for change in (["grid.selection_rounds=3"], ["grid.tta=flip"]):
        assert inputs.grid_common(load_config(None, change), "d") == inputs.grid_common(base, "d")
        assert inputs.grid(load_config(None, change), "d") != inputs.grid(base, "d")


def test_the_study_can_answer_with_the_selected_ensemble(run_cli, tiny_config, tmp_path):
    path = tiny_config({"study": {"final_from": "ensemble"}, "hparams": {"seeds": 2},
                        "paths": {"report_dir": str(tmp_path / "report"), "tensorboard": False},
                        "overfit": {"num_train": 20, "blocks": [1, 1, 1], "bottleneck_mid": 8, "epochs": 30, "lr": 0.01},
                        "lr_finder": {"seeds": 2, "max_steps": 5}})
    code, out, err = run_cli("study", "--config", str(path))
    assert code == 0, err
    assert not (tmp_path / "runs" / "study" / "final").exists()  # no final run
    res = json.loads((tmp_path / "runs" / "grid_search" / "selection.eval_test.json").read_text())
    report = (tmp_path / "report" / "REPORT.md").read_text()
    assert "No final run" in report and f"{100 * res['test_accuracy']:.2f}%" in report
    assert "paired" in report and "Ensemble selection" in report
