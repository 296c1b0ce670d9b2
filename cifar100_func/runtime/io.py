"""Atomic file output: a file at its final path is always complete (temporary file + fsync + rename)."""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from ..errors import OutputConflict, OutputError


DISK_FAILURES = {errno.ENOSPC, errno.EIO, errno.EDQUOT}  # failures of the disk, not of the path the user chose


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give: mkstemp's files are 0600
# how torch's zip writer reports a failed write (a full disk, a vanished folder): RuntimeError, not OSError
TORCH_WRITE_FAILURES = ("PytorchStreamWriter", "inline_container", "unexpected pos", "file write failed")


def write_failure(exc: BaseException) -> str | None:
    """The cause of a failed write, when ``exc`` is one (an OSError, or torch's RuntimeError for the same), else None."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in TORCH_WRITE_FAILURES):
        return "the write failed (is the disk full?)"
    return None


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents); one line when that is impossible: ``OutputConflict`` (exit 2) for a path the
    user can fix, ``OutputError`` (exit 1) for a disk that failed."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        error = OutputError if exc.errno in DISK_FAILURES else OutputConflict
        raise error(f"cannot create output folder {str(path)!r}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK):
        raise OutputConflict(f"output folder {str(path)!r} is not writable")
    return path


def atomic_write(path: Path, write: Callable[[Any], None], *, binary: bool = True) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then rename it over ``path``.

    On any failure (full disk, permissions, an interrupt) the temporary file is removed and whatever was at
    ``path`` before is left untouched; a failed write (whatever torch raises for it) is one ``OutputError`` line.
    The file gets the mode ``open`` would give it (the user's umask).
    """
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        cause = write_failure(exc)
        if cause is not None:
            raise OutputError(f"cannot write {str(path)!r}: {cause}; what was there before is intact") from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None: JSON has no such numbers, and a strict parser
    rejects the bare ``NaN`` that Python's json writes by default (a diverged grid member's losses)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def to_json(obj: Any, indent: int | None = None) -> str:
    """Strict JSON (non-finite numbers as null)."""
    return json.dumps(finite_or_null(obj), indent=indent, allow_nan=False)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, to_json(obj, indent=2) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
