"""Project exception types: each carries the offending path and a reason.

Operators read these messages in the Airflow UI, so every error names the file
(or group) and says what is wrong with it in words. :func:`is_transient` says
whether retrying the same step later may succeed; the Airflow operators fail a
task at once, without spending retries, when it says no."""
from __future__ import annotations

import subprocess
from pathlib import Path


class ContimgError(Exception):
    """Base class; ``path`` is the file or directory the error is about.

    ``transient`` (class attribute): True when the same step may succeed if run
    again later (the condition can clear by itself); False, the default, when
    the input or the setup is at fault and a retry would fail the same way."""

    transient = False

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

    transient = True  # the solve may not have run yet


class ImagingError(ContimgError):
    """Imaging failed for a MeasurementSet."""


class MosaicError(ContimgError):
    """A mosaic could not be built from its inputs."""


class CatalogError(ContimgError):
    """A catalogue file is missing or malformed."""


# OSErrors that a retry minutes later will not fix: the path or its permissions are wrong.
_PERMANENT_OSERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                       PermissionError)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the step that raised ``exc`` later may succeed.

    - A project error says so itself (``ContimgError.transient``): a corrupt or
      incomplete input, a failed QA gate or unusable data are not transient;
      "no calibration yet" is.
    - I/O trouble (an ``OSError`` such as a busy or briefly unmounted shared
      volume, a dropped connection, a timeout), a subprocess timeout, running
      out of memory while other heavy tasks run, and a database that is locked
      or unreachable (SQLAlchemy ``OperationalError``) are transient. A missing
      file or a permission error is not: the path or the setup is wrong.
    - Anything else (``ValueError``, ``KeyError``, a ``RuntimeError`` from CASA,
      a bug) is not: the same input fails the same way again."""
    if isinstance(exc, ContimgError):
        return bool(exc.transient)
    if isinstance(exc, _PERMANENT_OSERRORS):
        return False
    if isinstance(exc, (OSError, TimeoutError, subprocess.TimeoutExpired, MemoryError)):
        return True
    try:
        from sqlalchemy import exc as sa_exc
    except ImportError:  # pragma: no cover - sqlalchemy is a dependency
        return False
    return isinstance(exc, (sa_exc.OperationalError, sa_exc.DisconnectionError, sa_exc.TimeoutError))
