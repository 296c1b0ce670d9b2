"""Atomic writes: a failed write, whatever raises it, is one OutputError line and leaves the old file intact."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch

from cifar100_func.errors import OutputError
from cifar100_func.runtime.io import atomic_write, atomic_write_text


def _save(n: int):
    return lambda f: torch.save({"w": torch.zeros(n)}, f)


def test_torch_writer_failure_is_one_line_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "best.ckpt"
    atomic_write(path, _save(10))
    before = path.read_bytes()

    def fail(f):  # what torch's zip writer raises when the disk fills mid-write
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4096 vs 4021")

    with pytest.raises(OutputError) as info:
        atomic_write(path, fail)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]


def test_a_bug_in_the_writer_is_not_disguised(tmp_path):
    def bug(f):
        raise RuntimeError("some other failure")

    with pytest.raises(RuntimeError, match="some other failure"):
        atomic_write(tmp_path / "x", bug)
    assert not list(tmp_path.iterdir())


def test_files_get_the_users_umask(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask


def test_really_full_filesystem(tmp_path):
    fs = tmp_path / "tiny"
    fs.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(fs)], capture_output=True).returncode:
        pytest.skip("cannot mount a tiny tmpfs here (needs root)")
    try:
        path = fs / "best.ckpt"
        atomic_write(path, _save(10))
        before = path.read_bytes()
        with pytest.raises(OutputError, match="cannot write"):
            atomic_write(path, _save(100_000))  # 400 kB into 64 kB
        assert path.read_bytes() == before and [p.name for p in fs.iterdir()] == ["best.ckpt"]
    finally:
        subprocess.run(["umount", str(fs)], capture_output=True)
