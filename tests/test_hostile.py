"""Smaller cases of the hostile test (issue 20): escape codes, a mistyped data root, an interrupted --overwrite."""

from __future__ import annotations

import json

import pytest

from cifar100_func.commands.cli import run_command
from cifar100_func.data.dataset import DataSpec, load_dataset
from cifar100_func.errors import DataError, UserError


def test_errors_carry_no_terminal_escape_codes(capsys):
    def main(argv):
        raise UserError("\x1b[31mcoloured\x1b[0m message from \x1b]0;title\x07torch")

    assert run_command(main, []) == 2
    assert capsys.readouterr().err == "error: coloured message from torch\n"


def test_a_mistyped_data_root_is_not_left_behind(tmp_path):
    root = tmp_path / "typo" / "data"  # the download is tried (auto) and refused by conftest's closed port
    with pytest.raises(DataError, match="not found"):
        load_dataset(DataSpec(download="auto"), str(root))
    assert not (tmp_path / "typo").exists()


def test_an_interrupted_overwrite_leaves_no_old_metrics_beside_the_new_config(run_cli, tiny_config, tmp_path,
                                                                              monkeypatch):
    cfg = str(tiny_config({"train": {"epochs": 1}}))
    assert run_cli("train", "--config", cfg)[0] == 0
    run_dir = tmp_path / "runs" / "train"
    (run_dir / "stale.txt").write_text("from the earlier run")

    from cifar100_func.commands import train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "fit", interrupted)
    code, _, _ = run_cli("train", "--config", cfg, "--overwrite", "--seed", "7")
    assert code == 130
    assert sorted(p.name for p in run_dir.iterdir() if p.name != ".lock") == ["config.yaml"]
    assert (tmp_path / "artifacts" / "best.ckpt").is_file()  # kept until the new run has a better one
    monkeypatch.undo()
    assert run_cli("train", "--config", cfg, "--overwrite", "--seed", "7")[0] == 0
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1
    assert not [p for p in (tmp_path / "runs").iterdir() if "overwritten" in p.name]


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_every_json_file_is_strict_even_with_a_diverged_grid_member(run_cli, tiny_config, tmp_path):
    cfg = str(tiny_config({"train": {"optimizer": {"name": "sgd"}}, "hparams": {"lr": [0.01, 90.0]}, "grid": {"epochs": 2}}))
    code, out, err = run_cli("grid_search", "--config", cfg)
    assert code == 0, err
    assert "diverged" in out
    files = [p for p in (tmp_path / "runs").rglob("*") if p.suffix in (".json", ".jsonl")]
    assert any(p.name == "results.json" for p in files)
    for path in files:
        for chunk in ([path.read_text()] if path.suffix == ".json" else path.read_text().splitlines()):
            _strict(chunk)
    rows = _strict((tmp_path / "runs" / "grid_search" / "results.json").read_text())
    bad = next(r for r in rows if r["lr"] == 90.0)
    assert bad["diverged"] and None in bad["step_losses"], {k: bad[k] for k in ("diverged", "diverged_at_step")}
    assert run_cli("grid_search", "--config", cfg)[0] == 0  # records with nulls are read back (kept, not retrained)
