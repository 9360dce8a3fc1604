"""The errors csdn raises for bad input: one base class, one subclass per kind of input.

A :class:`CsdnError` means the run cannot go on because of something the user can fix (a config value, a
dataset on disk, a checkpoint, CLIP weights, a diverging loss); its message names the input and the fix.
The ``csdn`` console script prints such an error as one line (``csdn: error: ...``) and exits with status
2; any other exception is a bug and keeps its traceback.

Each subclass also derives from the built-in exception the code raised before (``ValueError``,
``RuntimeError``, ``FloatingPointError``), so ``except ValueError`` written against older versions still
catches it.
"""

from __future__ import annotations


class CsdnError(Exception):
    """Bad input the user can fix; the message names it and the fix."""


class ConfigError(CsdnError, ValueError):
    """A configuration value (or override) that is unknown, of the wrong type or out of range."""


class DataError(CsdnError, ValueError):
    """A dataset on disk that does not have the expected layout or content."""


class CheckpointError(CsdnError, RuntimeError):
    """A checkpoint that is unreadable or belongs to another run (architecture, dataset, version)."""


class ClipWeightsError(CsdnError):
    """CLIP weights that cannot be found, read or fitted to the architecture."""


class NonFiniteLossError(CsdnError, FloatingPointError):
    """A training loss became NaN or infinite; the last good checkpoint is kept."""


class StorageError(CsdnError, OSError):
    """A file or folder csdn must write that cannot be written (read-only, disk full, a file in the way)."""


class CacheError(CsdnError, RuntimeError):
    """A file of the artifact cache that is truncated or not what csdn wrote; deleting it rebuilds it."""


def check_choice(name: str, value: object, choices: tuple) -> None:
    """A :class:`ConfigError` unless ``value`` is one of ``choices`` (a config field's allowed values)."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}")
