"""Stacked seed ensembles: the members equal separate runs of their seeds, the ensemble's metrics equal the mean
of the members' softmax computed with the reference nn.Module, and a checkpoint of one resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.reference import BottleneckNetRef
from cifar100_func.runtime.checkpoint import load_file
from cifar100_func.runtime.from_config import data_spec, pipeline
from cifar100_func.config import load_config
from cifar100_func.data.dataset import load_dataset
from cifar100_func.data.loader import eval_batches

FP64 = {"train": {"precision": "fp64", "epochs": 2}}


def _reference(sd: dict) -> BottleneckNetRef:
    ref = BottleneckNetRef((1, 1, 1), 4, num_classes=10).double()
    ref.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in sd.items()})
    return ref.eval()


def _oracle(sds: list[dict], config_path) -> dict:
    """Test metrics of each member and of the mean of their softmax, from the reference module, in float64."""
    cfg = load_config(config_path)
    data = load_dataset(data_spec(cfg))
    pipe = pipeline(cfg, "cpu")
    refs = [_reference(sd) for sd in sds]
    probs, ys = [[] for _ in refs], []
    with torch.no_grad():
        for x, y in eval_batches(data.test, pipe, 37):
            for j, ref in enumerate(refs):
                probs[j].append(ref(x.double()).softmax(-1))
            ys.append(y)
    y = torch.cat(ys)
    p = torch.stack([torch.cat(pj) for pj in probs])  # (K, N, C)

    def metrics(q: torch.Tensor) -> dict:
        top5 = q.topk(5, dim=-1).indices
        return {"loss": float(-q[torch.arange(len(y)), y].log().mean()), "acc": float((top5[:, 0] == y).double().mean()),
                "top5": float((top5 == y[:, None]).any(-1).double().mean())}

    return {"members": [metrics(pj) for pj in p], "ensemble": metrics(p.mean(0))}


def test_ensemble_members_equal_single_runs_and_metrics_equal_the_oracle(run_cli, tiny_config, tmp_path):
    ens_cfg = tiny_config({**FP64, "paths": {"runs_dir": str(tmp_path / "e" / "runs"),
                                             "artifacts_dir": str(tmp_path / "e" / "art")}}, "ens.yaml")
    code, out, err = run_cli("train", "--config", str(ens_cfg), "--ensemble", "2")
    assert code == 0, err
    assert "2 members, mean val acc" in out
    ckpt = load_file(tmp_path / "e" / "art" / "best.ckpt")
    assert len(ckpt["ensemble"]) == 2 and len(ckpt["metrics"][-1]["members"]) == 2

    # each member is the model a plain run with its seed trains (own init, batch order and augmentation)
    for j in range(2):
        single = tiny_config({"train": {**FP64["train"], "seed": 42 + j},
                              "paths": {"runs_dir": str(tmp_path / f"s{j}" / "runs"),
                                        "artifacts_dir": str(tmp_path / f"s{j}" / "art")}}, f"s{j}.yaml")
        code, _, err = run_cli("train", "--config", str(single))
        assert code == 0, err
        one = load_file(tmp_path / f"s{j}" / "runs" / "train" / "last.ckpt")
        last = load_file(tmp_path / "e" / "runs" / "train" / "last.ckpt")
        for k, v in one["state_dict"].items():
            torch.testing.assert_close(last["ensemble"][j][k], v, rtol=1e-9, atol=1e-11, msg=lambda m: f"{j} {k}: {m}")

    code, out, err = run_cli("evaluate", "--config", str(ens_cfg))
    assert code == 0, err
    assert "member 2 (weight 1): " in out
    res = json.loads((tmp_path / "e" / "art" / "best.eval_test.json").read_text())
    want = _oracle(ckpt["ensemble"], ens_cfg)
    assert res["ensemble_size"] == 2 and res["checkpoint_kind"].startswith("ensemble of 2")
    assert res["test_loss"] == pytest.approx(want["ensemble"]["loss"], rel=1e-6)
    assert res["test_accuracy"] == pytest.approx(want["ensemble"]["acc"])
    assert res["test_top5_accuracy"] == pytest.approx(want["ensemble"]["top5"])
    for got, ref in zip(res["members"], want["members"]):
        assert got["test_loss"] == pytest.approx(ref["loss"], rel=1e-6)
        assert got["test_accuracy"] == pytest.approx(ref["acc"])
        assert got["test_top5_accuracy"] == pytest.approx(ref["top5"])
    assert sum(map(sum, res["confusion_matrix"])) == 100


def test_an_interrupted_ensemble_resumes_to_the_same_weights(run_cli, tiny_config, tmp_path):
    def cfg(name: str, epochs: int):
        return tiny_config({"train": {"precision": "fp64", "epochs": epochs},
                            "paths": {"runs_dir": str(tmp_path / name / "runs"),
                                      "artifacts_dir": str(tmp_path / name / "art")}}, f"{name}.yaml")

    code, _, err = run_cli("train", "--config", str(cfg("full", 2)), "--ensemble", "2")
    assert code == 0, err
    # the same run stopped after its first epoch, then resumed (train.epochs may change on --resume)
    part = cfg("part", 1)
    assert run_cli("train", "--config", str(part), "--ensemble", "2")[0] == 0
    code, _, err = run_cli("train", "--config", str(part), "--ensemble", "2", "--resume", "--set", "train.epochs=2")
    assert code == 0, err
    a = load_file(tmp_path / "full" / "runs" / "train" / "last.ckpt")
    b = load_file(tmp_path / "part" / "runs" / "train" / "last.ckpt")
    for j in range(2):
        for k, v in a["ensemble"][j].items():
            assert torch.equal(v, b["ensemble"][j][k]), (j, k)
    assert [m["val_acc"] for m in a["metrics"]] == [m["val_acc"] for m in b["metrics"]]
    code, _, err = run_cli("train", "--config", str(part), "--resume", "--set", "train.epochs=3")
    assert code != 0 and "holds 2 model(s), this run trains 1" in err
