"""Evaluation of project checkpoints and of plain reference-layout state_dicts."""

from __future__ import annotations

import json

import torch

from benchmarks.reference import BottleneckNetRef


def _reference_accuracy(ref: torch.nn.Module, config_path) -> float:
    """The reference module's own eval-mode test accuracy on the config's data (the independent oracle)."""
    from cifar100_func.config import load_config
    from cifar100_func.data.dataset import load_dataset
    from cifar100_func.runtime.from_config import data_spec, pipeline
    from cifar100_func.data.loader import eval_batches

    cfg = load_config(config_path)
    data = load_dataset(data_spec(cfg))
    pipe = pipeline(cfg, "cpu")
    ref.eval()
    with torch.no_grad():
        correct = sum((ref(x).argmax(1) == y).sum().item() for x, y in eval_batches(data.test, pipe, 64))
    return correct / len(data.test)


def _evaluate_module(run_cli, config_path, ref: torch.nn.Module, folder) -> dict:
    """Save ``ref``'s state_dict in ``folder``, run the evaluate command on it, return its eval_test.json."""
    path = folder / "model.pt"
    folder.mkdir()
    torch.save(ref.state_dict(), path)
    code, out, err = run_cli("evaluate", "--config", str(config_path), "--checkpoint", str(path))
    assert code == 0, err
    return json.loads((folder / "model.eval_test.json").read_text())


def test_evaluate_reference_state_dict(run_cli, tiny_config, tmp_path):
    torch.manual_seed(0)
    ref = BottleneckNetRef((1, 1, 1), 4, num_classes=10)
    result = _evaluate_module(run_cli, tiny_config(), ref, tmp_path / "ref")
    assert result["checkpoint_kind"] == "reference state_dict"
    assert {"test_accuracy", "test_loss", "test_top5_accuracy"} <= set(result)
    assert len(result["per_class_accuracy"]) == 10
    cm = torch.tensor(result["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == result["num_test_images"] == 100
    # the accuracy agrees with the reference module's own eval-mode predictions (one near-tie may flip on a GPU)
    assert abs(result["test_accuracy"] - _reference_accuracy(ref, tiny_config())) <= 0.01
    for name in ("model.confusion_test.png", "model.confusion_test_coarse.png"):
        assert (tmp_path / "ref" / name).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_project_checkpoint(run_cli, tiny_config, tmp_path):
    cfg = str(tiny_config())
    assert run_cli("train", "--config", cfg)[0] == 0
    code, out, err = run_cli("evaluate", "--config", cfg)  # default: <artifacts_dir>/best.ckpt
    assert code == 0, err
    result = json.loads((tmp_path / "artifacts" / "best.eval_test.json").read_text())
    assert result["checkpoint_kind"] == "project checkpoint" and result["dataset"] == "synthetic"


def test_architecture_comes_from_the_checkpoint_not_the_config(run_cli, tiny_config, tmp_path):
    """A (1,2,1)/8 model evaluates with a config that says (1,1,1)/4: the shapes are the truth; its predictions
    are the reference module's. A checkpoint for another number of classes is refused with one line."""
    torch.manual_seed(1)
    ref = BottleneckNetRef((1, 2, 1), 8, num_classes=10)
    result = _evaluate_module(run_cli, tiny_config(), ref, tmp_path / "other")
    path = tmp_path / "other" / "model.pt"
    assert result["architecture"] == {"blocks": [1, 2, 1], "bottleneck_mid": 8, "num_classes": 10}
    assert abs(result["test_accuracy"] - _reference_accuracy(ref, tiny_config())) <= 0.01

    torch.save(BottleneckNetRef((1, 1, 1), 4, num_classes=100).state_dict(), path)
    code, _, err = run_cli("evaluate", "--config", str(tiny_config()), "--checkpoint", str(path))
    assert code == 2 and "100 classes" in err and len(err.strip().splitlines()) == 1


def test_truncated_and_malicious_checkpoints(run_cli, tiny_config, tmp_path):
    cfg = str(tiny_config())
    good = tmp_path / "good.pt"
    torch.save(BottleneckNetRef((1, 1, 1), 4, num_classes=10).state_dict(), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:3000])
    code, _, err = run_cli("evaluate", "--config", cfg, "--checkpoint", str(cut))
    assert code == 2 and "truncated or corrupted" in err

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, bad)
    code, out, err = run_cli("evaluate", "--config", cfg, "--checkpoint", str(bad))
    assert code == 2 and "refused" in err and "pwned" not in out


def test_non_finite_weights_are_one_line_and_write_nothing(run_cli, tiny_config, tmp_path):
    torch.manual_seed(0)
    ref = BottleneckNetRef((1, 1, 1), 4, num_classes=10)
    with torch.no_grad():
        ref.fc.weight[0, 0] = float("nan")
    (tmp_path / "bad").mkdir()
    torch.save(ref.state_dict(), tmp_path / "bad" / "model.pt")
    code, _, err = run_cli("evaluate", "--config", str(tiny_config()), "--checkpoint", str(tmp_path / "bad" / "model.pt"))
    assert code == 1 and "NaN or inf" in err and "fc" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == ["model.pt"]


def test_two_checkpoints_in_one_folder_keep_their_own_outputs(run_cli, tiny_config, tmp_path):
    torch.manual_seed(0)
    a = _evaluate_module(run_cli, tiny_config(), BottleneckNetRef((1, 1, 1), 4, num_classes=10), tmp_path / "two")
    other = BottleneckNetRef((1, 1, 1), 4, num_classes=10)
    torch.save(other.state_dict(), tmp_path / "two" / "other.pt")
    assert run_cli("evaluate", "--config", str(tiny_config()), "--checkpoint", str(tmp_path / "two" / "other.pt"))[0] == 0
    assert json.loads((tmp_path / "two" / "model.eval_test.json").read_text()) == a
    assert (tmp_path / "two" / "other.eval_test.json").is_file() and (tmp_path / "two" / "other.confusion_test.png").is_file()
