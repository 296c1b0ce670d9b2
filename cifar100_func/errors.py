"""User-facing errors: one clear line, never a traceback. Exit 2: the user's input is wrong (config, data, checkpoint,
output location); 1: something failed on its own (a full disk, the overfit check); 3: training diverged."""

from __future__ import annotations

import re

_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")  # terminal colours, cursor moves, titles


def plain_text(message: object) -> str:
    """``message`` as one plain line: no terminal escape codes (torch's messages may carry colours), no newlines."""
    return " ".join(_ESCAPES.sub("", str(message)).split())


class UserError(Exception):
    """A mistake in the user's input (config, paths, data files, checkpoints, flags).

    The command-line wrapper prints ``error: <message>`` on one line and exits with ``exit_code``.
    """

    exit_code = 2


class ConfigError(UserError):
    """A config file or ``--set`` override that is malformed, unknown, mistyped or out of range."""


class DataError(UserError):
    """Data set files that are missing, truncated, corrupted or of the wrong shape."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read, is truncated or does not fit the configured architecture."""


class OutputError(UserError):
    """Writing failed on its own (a full disk, an I/O error): what was there before is intact."""

    exit_code = 1


class OutputConflict(UserError):
    """An output location the user chose that cannot be used: an existing run, a folder that cannot be created or
    written, another process writing there, ``--resume`` with nothing to resume."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the best checkpoint written so far is left intact."""

    exit_code = 3


class ModelNotFinite(UserError):
    """A model whose weights or outputs are NaN or infinite: its metrics would mean nothing."""

    exit_code = 1
