"""The generic calibration steps on real VLA data with a published answer (NGC 5921).

CASA's regression run of this data set derived 2.48576 +/- 0.0012 Jy for the
phase calibrator 1445+099 (Perley-Taylor 99 scale); ours must agree within 2 %.
The formal error is 0.05 %, so 2 % leaves room for CASA-version differences
(the regression restricted gaincal to channels 6-56; we solve on all channels,
which the bandpass makes flat) but not for a wrong flux scale: a missing or
wrong setjy, solnorm, or prior would be off by far more.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from dsa110_contimg import casa_env
from dsa110_contimg.calibration import steps
from dsa110_contimg.calibration.apply import cross_flagged_fraction
from dsa110_contimg.calibration.ngc5921 import (
    PHASE_CAL,
    REFERENCE_1331_FLUX_JY,
    REFERENCE_1445_FLUX_JY,
    REFERENCE_STANDARD,
    TOLERANCE,
    NGC5921Result,
    calibrate_ngc5921,
    field_name,
    find_ngc5921_fits,
)
from dsa110_contimg.errors import CalibrationError

pytestmark = pytest.mark.casa


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> NGC5921Result:
    return calibrate_ngc5921(tmp_path_factory.mktemp("ngc5921"))


@pytest.fixture
def ms_copy(calibrated, tmp_path) -> Path:
    """A private copy of the calibrated MS for tests that change flags."""
    copy = tmp_path / "copy.ms"
    shutil.copytree(calibrated.ms, copy)
    return copy


def _flagged_fraction(table: str) -> float:
    tb = casa_env.casatools().table()
    try:
        tb.open(table)
        flags = tb.getcol("FLAG")
        tb.close()
    finally:
        tb.done()
    return float(np.mean(flags))


# --------------------------------------------------------------------------
# the published number
# --------------------------------------------------------------------------
def test_1445_flux_matches_casa_regression(calibrated):
    assert calibrated.standard == REFERENCE_STANDARD
    assert calibrated.reference_jy == REFERENCE_1445_FLUX_JY
    assert calibrated.flux_1445_jy == pytest.approx(REFERENCE_1445_FLUX_JY, rel=TOLERANCE)
    assert calibrated.within_tolerance
    # the regression's setjy printed I=14.76 Jy for 3C286 with the same standard
    assert calibrated.flux_1331_jy == pytest.approx(REFERENCE_1331_FLUX_JY, rel=1e-3)
    assert 0 < calibrated.flux_1445_err_jy < 0.01 * calibrated.flux_1445_jy


def test_bandpass_mostly_unflagged(calibrated):
    types = [t for t, _ in calibrated.tables]
    assert types == ["B", "G"]
    bcal = dict(calibrated.tables)["B"]
    # one of the 28 antennas has no data at all (3.6 %); nothing else should be lost
    assert _flagged_fraction(bcal) < 0.10


def test_rerun_reuses_ms_and_rewrites_tables(calibrated, tmp_path_factory):
    again = calibrate_ngc5921(Path(calibrated.ms).parent)
    assert again.ms == calibrated.ms
    assert again.flux_1445_jy == pytest.approx(calibrated.flux_1445_jy, rel=1e-6)


def test_other_standard_compares_like_with_like(tmp_path):
    """Perley-Butler 2017 puts 3C286 ~1.7 % higher; the reference is rescaled by the same factor."""
    pb17 = calibrate_ngc5921(tmp_path, standard="Perley-Butler 2017")
    assert pb17.flux_1331_jy > REFERENCE_1331_FLUX_JY * 1.01
    assert pb17.reference_jy == pytest.approx(REFERENCE_1445_FLUX_JY * pb17.flux_1331_jy / REFERENCE_1331_FLUX_JY)
    assert pb17.within_tolerance


# --------------------------------------------------------------------------
# error cases name the file
# --------------------------------------------------------------------------
def test_missing_ms_is_named(tmp_path):
    missing = tmp_path / "nope.ms"
    with pytest.raises(CalibrationError) as err:
        steps.solve_gains(missing, tmp_path / "g.tab", "1")
    assert err.value.path == str(missing)
    assert "does not exist" in str(err.value)


def test_bad_refant_is_named(calibrated, tmp_path):
    table = tmp_path / "bad_refant.gcal"
    with pytest.raises(CalibrationError) as err:
        steps.solve_gains(Path(calibrated.ms), table, "no_such_antenna")
    assert err.value.path == calibrated.ms
    assert "no_such_antenna" in str(err.value)
    assert not table.exists()


def test_missing_uvfits_and_prior_are_named(calibrated, tmp_path):
    fits = tmp_path / "nope.fits"
    with pytest.raises(CalibrationError) as err:
        steps.import_uvfits(fits, tmp_path / "nope.ms")
    assert err.value.path == str(fits)
    assert not list(tmp_path.glob("*.ms")) and not list(tmp_path.glob(".*tmp"))
    prior = tmp_path / "gone.bcal"
    with pytest.raises(CalibrationError) as err:
        steps.solve_gains(Path(calibrated.ms), tmp_path / "g.tab", "15", prior=[("B", prior)])
    assert err.value.path == str(prior)


def test_setjy_unknown_source_is_an_error(ms_copy):
    """setjy silently falls back to 1 Jy for a source the standard does not know."""
    with pytest.raises(CalibrationError, match="does not know"):
        steps.setjy_standard(ms_copy, field_name(ms_copy, PHASE_CAL))


def test_import_is_idempotent(calibrated):
    ms = Path(calibrated.ms)
    mtime = (ms / "table.dat").stat().st_mtime_ns
    assert steps.import_uvfits(find_ngc5921_fits(), ms) == ms
    assert (ms / "table.dat").stat().st_mtime_ns == mtime


# --------------------------------------------------------------------------
# RFI flagging
# --------------------------------------------------------------------------
def test_flag_rfi_none(ms_copy):
    before = cross_flagged_fraction(ms_copy)
    assert steps.flag_rfi(ms_copy, "none") == "none"
    assert cross_flagged_fraction(ms_copy) == before


def test_flag_rfi_casa_flags_a_little(ms_copy):
    before = cross_flagged_fraction(ms_copy)
    assert steps.flag_rfi(ms_copy, "casa") == "tfcrop+rflag"
    after = cross_flagged_fraction(ms_copy)
    assert before < after < 0.20


@pytest.mark.skipif(shutil.which("aoflagger") is None, reason="aoflagger is not installed")
def test_flag_rfi_aoflagger(ms_copy):
    before = cross_flagged_fraction(ms_copy)
    assert steps.flag_rfi(ms_copy) == "aoflagger"
    assert before < cross_flagged_fraction(ms_copy) < 0.20


def test_aoflagger_failure_quotes_stderr(ms_copy, tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "aoflagger"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'starting' >&2\necho 'boom: strategy exploded' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    with pytest.raises(CalibrationError) as err:
        steps.flag_rfi(ms_copy, "aoflagger")
    assert err.value.path == str(ms_copy)
    assert "status 3" in str(err.value) and "strategy exploded" in str(err.value)


def test_unknown_rfi_method(ms_copy):
    with pytest.raises(ValueError):
        steps.flag_rfi(ms_copy, "magic")
