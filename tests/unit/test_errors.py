"""Which errors a retry may fix (``is_transient``), and the operators' wrapper that fails a task at
once on the others and leaves the transient ones to Airflow's retries."""
from __future__ import annotations

import errno
import logging
import subprocess

import pytest

from dsa110_contimg.errors import (
    CalibrationQAError,
    CatalogError,
    ContimgError,
    CorruptSubbandError,
    ImagingError,
    IncompleteGroupError,
    MosaicError,
    NoCalibrationError,
    is_transient,
)


@pytest.mark.parametrize("exc", [
    CorruptSubbandError("/in/2026-01-15T08:00:00_sb03.hdf5", "cannot read UVH5 header"),
    IncompleteGroupError("/in", "3 of 16 subbands"),
    CalibrationQAError("/cal/set1", "median SNR 2.1 < 5"),
    ImagingError("/ms/g.ms", "every cross-correlation visibility is flagged"),
    MosaicError("/m.fits", "no images to mosaic"),
    CatalogError("/ref.tsv", "malformed row"),
    ContimgError(None, "group g is not registered"),
    FileNotFoundError(errno.ENOENT, "No such file", "/data/ref.tsv"),  # a wrong path stays wrong
    PermissionError(errno.EACCES, "Permission denied", "/data/products"),
    ValueError("imsize 8 is too small"),  # a bad parameter
    KeyError("antenna 117"),
    RuntimeError("tclean: Error in making PSF"),
])
def test_input_setup_and_code_errors_are_not_transient(exc):
    assert is_transient(exc) is False


@pytest.mark.parametrize("exc", [
    NoCalibrationError(None, "no valid bandpass at MJD 61055.35"),  # the solve may not have run yet
    OSError(errno.EIO, "Input/output error"),  # a shared volume hiccup
    OSError(errno.ESTALE, "Stale file handle"),
    ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    TimeoutError("timed out"),
    subprocess.TimeoutExpired(["wsclean"], 3600),
    MemoryError(),
])
def test_io_timeouts_memory_and_pending_calibration_are_transient(exc):
    assert is_transient(exc) is True


def test_a_locked_or_unreachable_database_is_transient():
    from sqlalchemy import exc as sa_exc

    locked = sa_exc.OperationalError("UPDATE groups ...", {}, Exception("database is locked"))
    assert is_transient(locked) is True
    assert is_transient(sa_exc.IntegrityError("INSERT ...", {}, Exception("UNIQUE constraint failed"))) is False


def test_a_project_error_decides_even_when_caused_by_io():
    """A corrupt file often surfaces as an OSError from h5py; the library's verdict wins."""
    try:
        try:
            raise OSError("Unable to open file (file signature not found)")
        except OSError as io:
            raise CorruptSubbandError("/in/x_sb00.hdf5", f"cannot read UVH5 header: {io}") from io
    except CorruptSubbandError as exc:
        assert is_transient(exc) is False


# -- the operators' wrapper ----------------------------------------------------------------

class _Op:
    """Stands in for an operator: only ``log`` and ``execute`` are used by the wrapper."""

    log = logging.getLogger("test_errors")

    def __init__(self, error: BaseException | None = None, result=None):
        self.error, self.result = error, result


def _wrapped(error=None, result=None):
    from contimg_airflow.operators import fails_fast

    @fails_fast
    def execute(self, context):
        if self.error is not None:
            raise self.error
        return self.result

    return lambda: execute(_Op(error, result), {"params": {}})


def test_wrapper_returns_the_result():
    assert _wrapped(result={"ms_path": "/ms/g.ms"})() == {"ms_path": "/ms/g.ms"}


def test_corrupt_input_fails_at_once():
    from airflow.sdk.exceptions import AirflowFailException

    err = CorruptSubbandError("/in/2026-01-15T08:00:00_sb03.hdf5", "cannot read UVH5 header")
    with pytest.raises(AirflowFailException) as info:
        _wrapped(err)()
    assert str(info.value) == "CorruptSubbandError: /in/2026-01-15T08:00:00_sb03.hdf5: cannot read UVH5 header"
    assert info.value.__cause__ is err  # the alert reports the library's error (notifiers._reported_error)


@pytest.mark.parametrize("exc", [ValueError("pblimit must be in (0, 1)"),
                                 CalibrationQAError("/cal/set1", "median SNR 2.1 < 5")])
def test_bad_parameters_and_failed_qa_fail_at_once(exc):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException):
        _wrapped(exc)()


@pytest.mark.parametrize("exc", [OSError(errno.EIO, "Input/output error"), TimeoutError("timed out"),
                                 NoCalibrationError(None, "no valid bandpass at MJD 61055.35")])
def test_transient_error_is_reraised_as_is_for_a_retry(exc):
    with pytest.raises(type(exc)) as info:
        _wrapped(exc)()
    assert info.value is exc


@pytest.mark.parametrize("name", ["AirflowSkipException", "AirflowFailException", "AirflowSensorTimeout"])
def test_airflow_signals_pass_through(name):
    from airflow.sdk import exceptions

    exc = getattr(exceptions, name)("stop here")
    with pytest.raises(type(exc)) as info:
        _wrapped(exc)()
    assert info.value is exc


def test_failure_alert_names_the_library_error():
    """The alert behind an AirflowFailException from the wrapper names CorruptSubbandError."""
    from airflow.sdk.exceptions import AirflowFailException

    from contimg_airflow.notifiers import _reported_error

    err = CorruptSubbandError("/in/x_sb00.hdf5", "zero-length file")
    try:
        _wrapped(err)()
    except AirflowFailException as fail:
        assert _reported_error(fail) is err
    plain = AirflowFailException("gave up after waiting 6.00 h")  # raised by a sensor itself: kept
    assert _reported_error(plain) is plain
