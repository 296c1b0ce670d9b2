"""User-facing errors: one clear line and exit code 2, never a traceback for a user mistake."""

from __future__ import annotations


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
    """An output location that cannot be written (permissions, full disk, an existing run)."""

    exit_code = 1


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the best checkpoint written so far is left intact."""

    exit_code = 3
