"""Atomic file output: a file at its final path is always complete (temporary file + fsync + rename)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from ..errors import OutputError


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents); a clear ``OutputError`` when that is impossible."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {str(path)!r}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK):
        raise OutputError(f"output folder {str(path)!r} is not writable")
    return path


def atomic_write(path: Path, write: Callable[[Any], None], *, binary: bool = True) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then rename it over ``path``.

    On any failure (full disk, permissions, an interrupt) the temporary file is removed and whatever was at
    ``path`` before is left untouched.
    """
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
