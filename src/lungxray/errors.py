"""Errors a user can cause, and the one place option strings are validated.

Every error a user can fix (bad path, unreadable image, unknown model, wrong label column) is a
``LungXrayError`` subclass whose message says what went wrong and what to do. The CLI prints the
message without a traceback; library users can catch the base class.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LungXrayError(Exception):
    """Base class of every error a user can cause and fix."""


class ImageReadError(LungXrayError):
    """An image file could not be read; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DataError(LungXrayError):
    """A data set, label table or split is unusable (missing column, one class, empty split...)."""


class ConfigError(LungXrayError):
    """A configuration value or option string is invalid."""


class ModelError(LungXrayError):
    """A model cannot be built or its weights cannot be loaded."""


class RunError(LungXrayError):
    """A run directory is missing, incomplete or inconsistent."""


def check_option(value: str, options: Iterable[str], what: str) -> str:
    """Return ``value`` if it is one of ``options``, else raise ConfigError suggesting the closest.

    >>> check_option("cosine", ["constant", "cosine"], "schedule")
    'cosine'
    """
    options = list(options)
    if value in options:
        return value
    close = difflib.get_close_matches(str(value), options, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown {what} {value!r}.{hint} Valid: {', '.join(map(str, options))}.")
