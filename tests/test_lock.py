"""The output-folder lock, with real processes: a second writer is refused, a dead holder's lock is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifar100_func.runtime.lock import FolderBusy, folder_lock

HOLD = """
import sys, time
from cifar100_func.runtime.lock import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_process_is_refused_with_the_holders_pid(tmp_path):
    proc = _holder(tmp_path / "run")
    try:
        with pytest.raises(FolderBusy) as info:
            with folder_lock(tmp_path / "run"):
                pass
        assert str(proc.pid) in str(info.value) and str(tmp_path / "run") in str(info.value)
        assert info.value.exit_code == 2
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    proc = _holder(tmp_path / "run")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "run" / ".lock").read_text().strip() == str(proc.pid)  # the stale file is still there
    with folder_lock(tmp_path / "run"):
        assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())


def test_reentrant_in_one_process_and_released_after(tmp_path):
    with folder_lock(tmp_path / "a"):
        with folder_lock(tmp_path / "a"):
            pass
        proc = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(60)", "pass"), str(tmp_path / "a")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and "FolderBusy" in proc.stderr  # still held after the inner block
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(60)", "pass"), str(tmp_path / "a")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and time.monotonic() - start < 60


def test_two_train_processes_into_one_run_folder(tiny_config, tmp_path):
    """The hostile case of issue 20: the second `train` into the same run stops with one line, exit 2, and the
    first one's files stay its own."""
    cfg = str(tiny_config({"train": {"epochs": 200}}))
    cmd = [sys.executable, "-m", "cifar100_func", "train", "--config", cfg, "--run-name", "same"]
    first = subprocess.Popen(cmd + ["--seed", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "runs" / "same" / ".lock"
    try:
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.stderr else ""
            time.sleep(0.2)
        second = subprocess.run(cmd + ["--seed", "2"], capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and str(first.pid) in lines[0] and "same" in lines[0], second.stderr
    finally:
        first.kill()
        first.wait()
