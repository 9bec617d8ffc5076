"""The library's exception types: every failure a user can cause is one of these, with a one-line message that
names the problem and what to do. The command line prints ``pyro-groupvae: error: <message>`` for them.

Each type also subclasses the built-in exception that code written against earlier versions catches
(``ValueError`` for bad input and options, ``RuntimeError`` for checkpoints, ``FloatingPointError`` for a diverged
loss), so ``except ValueError`` keeps working.

::

    PyroGroupVAEError
    |-- InputError (ValueError)        malformed data: shape, dtype, range, NaN, labels, groups
    |   `-- DataError                  a dataset file or folder that cannot be read as promised
    |       `-- MissingDataError (FileNotFoundError)  ... or that does not exist
    |-- ConfigError (ValueError)       a nonsensical option or a broken config.json
    |   |-- DeviceError                a device that does not exist here
    |   `-- RunFolderError             a run folder that cannot be used (a file in the way, ...)
    |-- CheckpointError (RuntimeError) a checkpoint that is missing, corrupt or from another model/config
    `-- TrainingError (FloatingPointError)  training diverged (non-finite loss)
"""
from __future__ import annotations

import re

__all__ = [
    "PyroGroupVAEError",
    "InputError",
    "DataError",
    "MissingDataError",
    "ConfigError",
    "DeviceError",
    "RunFolderError",
    "CheckpointError",
    "TrainingError",
    "one_line",
]


_TRACE_SHAPES = re.compile(r"\n\s*Trace Shapes:")


class PyroGroupVAEError(Exception):
    """Base class of every error raised on purpose by :mod:`pyro_groupvae`.

    Pyro re-raises a ``ValueError`` from inside a model or guide as the same type with its trace-shape table
    appended to the message; that table is cut here, so the message stays the one line we wrote (the original
    exception remains as ``__cause__``).
    """

    def __init__(self, *args):
        if args and isinstance(args[0], str):
            args = (_TRACE_SHAPES.split(args[0], maxsplit=1)[0].rstrip(),) + args[1:]
        super().__init__(*args)


class InputError(PyroGroupVAEError, ValueError):
    """Malformed inputs: shape, dtype, value range, NaN/Inf, labels, group ids."""


class DataError(InputError):
    """A dataset file or folder that cannot be read as promised (empty, truncated, labels outside its classes)."""


class MissingDataError(DataError, FileNotFoundError):
    """A dataset file or folder that does not exist (also a ``FileNotFoundError``)."""


class ConfigError(PyroGroupVAEError, ValueError):
    """A nonsensical option (``hidden=0``, ``min_scale=-1``, ...) or an unreadable/incomplete ``config.json``."""


class DeviceError(ConfigError):
    """A device that is unknown or not available on this machine."""


class RunFolderError(ConfigError):
    """A run folder that cannot be used: a regular file is in the way, or it holds a run that is not ours."""


class CheckpointError(PyroGroupVAEError, RuntimeError):
    """A checkpoint file is missing, truncated, not one of ours, or from another model or config."""


class TrainingError(PyroGroupVAEError, FloatingPointError):
    """Training cannot go on, e.g. the loss became NaN or infinite."""


def one_line(message) -> str:
    """A message as one line: Pyro's appended trace-shape tables are cut and the remaining lines are joined."""
    text = _TRACE_SHAPES.split(str(message).strip(), maxsplit=1)[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " ".join(lines) if lines else "(no message)"
