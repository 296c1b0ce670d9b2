"""Bad input and faults, for every command: one clear line, the right exit code, nothing lost."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO

COMMANDS = ["train", "evaluate", "grid_search", "lr_finder", "overfit", "sanity"]


def _one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("override, needle", [("train.optimizer.lr=-3", "train.optimizer.lr"),
                                              ("model.blocks=[1,1]", "model.blocks"),
                                              ("train.nosuch=1", "train.nosuch")])
def test_config_mistakes_for_every_command(run_cli, tiny_config, command, override, needle):
    code, _, err = run_cli(command, "--config", str(tiny_config()), "--set", override)
    assert code == 2 and needle in err and _one_line(err)


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_data_root_for_every_command(run_cli, tmp_path, command):
    code, _, err = run_cli(command, "--config", str(REPO / "configs" / "config.yaml"), "--data-root",
                           str(tmp_path / "nope"), "--set", f"paths.runs_dir={tmp_path}/r",
                           "--set", f"paths.artifacts_dir={tmp_path}/a")
    assert code == 2 and _one_line(err) and str(tmp_path / "nope") in err and "--data-root" in err


def test_debug_shows_the_traceback(run_cli, tiny_config):
    from cifar100_func.errors import ConfigError

    with pytest.raises(ConfigError):
        run_cli("train", "--config", str(tiny_config()), "--set", "train.epochs=0", "--debug")


def test_unwritable_output_folder(run_cli, tiny_config, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run_cli("train", "--config", str(tiny_config()), "--set", f"paths.runs_dir={blocker}/runs")
    assert code == 2 and _one_line(err) and str(blocker) in err


def test_disk_full_while_writing_a_checkpoint_keeps_the_old_one(run_cli, tiny_config, tmp_path, monkeypatch):
    cfg = str(tiny_config({"train": {"epochs": 1}}))
    assert run_cli("train", "--config", cfg)[0] == 0
    best = tmp_path / "artifacts" / "best.ckpt"
    before = best.read_bytes()
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    code, _, err = run_cli("train", "--config", cfg, "--overwrite")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert code == 1 and "No space left on device" in err and _one_line(err)
    assert best.read_bytes() == before
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_truncated_last_checkpoint_on_resume(run_cli, tiny_config, tmp_path):
    cfg = str(tiny_config({"train": {"epochs": 1}}))
    assert run_cli("train", "--config", cfg)[0] == 0
    last = tmp_path / "runs" / "train" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    code, _, err = run_cli("train", "--config", cfg, "--resume", "--set", "train.epochs=2")
    assert code == 2 and "truncated or corrupted" in err and _one_line(err)


def test_sigterm_mid_run_then_resume_matches_uninterrupted(tiny_config, tmp_path):
    """A real signal to a real process: exit 130, complete checkpoints, an exact resume."""
    cfg = str(tiny_config({"train": {"epochs": 4}, "dataset": {"synthetic": {"train_size": 100 + 32 * 40}}}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = [sys.executable, "-m", "cifar100_func.commands.train", "--config", cfg]
    full = subprocess.run(base + ["--run-name", "full", "--set", f"paths.artifacts_dir={tmp_path}/a2"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen(base, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "runs" / "train" / "last.ckpt"
    deadline = time.time() + 900
    while not last.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    done = torch.load(last, weights_only=True)["epoch"]
    assert 1 <= done < 4
    torch.load(tmp_path / "artifacts" / "best.ckpt", weights_only=True)  # complete, loadable
    res = subprocess.run(base + ["--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    a = torch.load(last, weights_only=True)
    b = torch.load(tmp_path / "runs" / "full" / "last.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for k in b["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


def test_exit_codes_say_whose_mistake_it_was(run_cli, tiny_config, tmp_path):
    """2: the user chose an output that cannot be used (an existing run, nothing to resume); 1 is for failures of
    their own (the full-disk test above)."""
    cfg = str(tiny_config({"train": {"epochs": 1}}))
    code, _, err = run_cli("train", "--config", cfg, "--run-name", "fresh", "--resume")
    assert code == 2 and "--resume" in err and _one_line(err)
    assert not (tmp_path / "runs" / "fresh").exists()  # the refused run left no folder behind
    assert run_cli("train", "--config", cfg)[0] == 0
    code, _, err = run_cli("train", "--config", cfg)
    assert code == 2 and "already exists" in err and "--overwrite" in err and _one_line(err)
