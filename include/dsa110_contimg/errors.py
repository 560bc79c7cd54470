"""Project exception types: each carries the offending path and a reason.

Operators read these messages in the Airflow UI, so every error names the file
(or group) and says what is wrong with it in words."""
from __future__ import annotations

from pathlib import Path


class ContimgError(Exception):
    """Base class; ``path`` is the file or directory the error is about."""

    retryable = False

    def __init__(self, path: str | Path | None, reason: str):
        self.path = str(path) if path is not None else None
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class CorruptSubbandError(ContimgError):
    """A subband file cannot be read or disagrees with its group."""


class IncompleteGroupError(ContimgError):
    """A group has too few subbands to be converted."""


class BadFileNameError(ContimgError):
    """A file name in the incoming directory does not parse."""


class CalibrationError(ContimgError):
    """A calibration solve failed or produced unusable solutions."""


class CalibrationQAError(CalibrationError):
    """A calibration set was solved but failed its quality gates (registered as failed)."""


class NoCalibrationError(ContimgError):
    """No valid calibration covers the data's time."""

    retryable = True


class ImagingError(ContimgError):
    """Imaging failed for a MeasurementSet."""


class MosaicError(ContimgError):
    """A mosaic could not be built from its inputs."""


class CatalogError(ContimgError):
    """A catalogue file is missing or malformed."""
