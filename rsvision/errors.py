"""Errors a user can cause. Each names the offending file (and line) so the fix is obvious."""
from __future__ import annotations


class RSVisionError(Exception):
    """Base class of every user-facing rsvision error."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.path = str(path) if path is not None else None
        self.line = line
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        super().__init__(where + message)


class DataError(RSVisionError):
    """Unreadable, corrupt or inconsistent input data (image, label, raster)."""


class BandMismatchError(DataError):
    """The raster's band count or order does not match what the model expects."""


class CheckpointError(RSVisionError):
    """A checkpoint cannot be read or does not fit the model."""


class ConfigError(RSVisionError):
    """An invalid configuration value."""
