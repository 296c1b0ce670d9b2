"""One writer per output folder: a lock file held by the process for as long as it writes there.

``with folder_lock(path):`` takes an exclusive ``flock`` on ``path/.lock`` before anything is written and writes the
holder's pid into it. The kernel releases the lock however the process ends (exit, exception, SIGKILL), so a
stale lock file of a dead process is simply taken over. A second process into the same folder stops at once with
one line naming the folder and the holder's pid (exit 2). Locks are re-entrant within a process (the study holds
its folders while its stages take theirs). A folder the lock created and nothing else wrote into is removed again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from ..errors import OutputConflict
from .io import ensure_dir

LOCK_NAME = ".lock"
_held: dict[Path, tuple[int, int]] = {}  # folder -> (file descriptor, depth) held by this process


class FolderBusy(OutputConflict):
    """Another process writes into the same output folder."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "another process"
    return f"process {text}" if text else "another process"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold ``folder``'s lock (creating the folder) for the duration of the block; see the module docstring."""
    created = not Path(folder).exists()
    folder = ensure_dir(Path(folder)).resolve()
    if folder in _held:
        fd, depth = _held[folder]
        _held[folder] = (fd, depth + 1)
        try:
            yield folder
        finally:
            fd, depth = _held[folder]
            _held[folder] = (fd, depth - 1)
        return
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderBusy(f"output folder {str(folder)!r} is in use by {_holder(path)}: wait for it to finish, or "
                         "choose another folder (--run-name, --set paths.runs_dir=...)") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held[folder] = (fd, 1)
        yield folder
    finally:
        _held.pop(folder, None)
        if created and os.listdir(folder) == [LOCK_NAME]:  # a command that stopped before writing: leave nothing
            os.unlink(path)
            os.rmdir(folder)
        os.close(fd)  # releases the flock; a lock file that stays is taken over by the next holder
