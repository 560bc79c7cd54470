"""`dsa110 validate calibration --json`: the calibration proof at the instrument's full size.

The simulated proof runs one group containing the 0834+555 transit at the
`full` preset (96 antennas, 768 channels of 244 kHz, 24 x 12.9 s): thermal
noise per visibility is SEFD / sqrt(2 dnu tau) = 6500 / sqrt(2 x 244e3 x 12.9)
~ 2.6 Jy against ~8 Jy of calibrator, and one bandpass solution averages 95
baselines x 24 integrations, so its expected error is ~0.7 % in amplitude and
~0.4 deg in phase: the issue's limits (2 %, 2 deg rms; flux within 3 %)
leave room for the unmodelled sky but would catch a wrong sign convention, a
missing beam in the model or a bad reference-antenna handling at once.
The real-data proof calibrates the VLA NGC5921 observation and compares
1445+099 with CASA's published regression value (2 %).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.casa, pytest.mark.slow]


@pytest.fixture(scope="module")
def validation(tmp_path_factory):
    work = tmp_path_factory.mktemp("validate")
    proc = subprocess.run([sys.executable, "-m", "dsa110_contimg.cli", "validate", "calibration", "--json",
                           "--preset", "full", "--work", str(work)], capture_output=True, text=True, timeout=3600)
    lines = proc.stdout.strip().splitlines()
    return proc, lines, json.loads(lines[-1])


def test_validate_calibration_passes(validation):
    proc, lines, result = validation
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert result["pass"] is True
    assert set(result) >= {"gain_amp_rms_pct", "gain_phase_rms_deg", "calibrator_flux_ratio",
                           "ngc5921_1445_flux_jy", "pass"}


def test_simulated_gains_and_flux_within_the_issue_limits(validation):
    _, _, r = validation
    assert r["preset"] == "full"
    assert r["gain_amp_rms_pct"] < 2.0
    assert r["gain_phase_rms_deg"] < 2.0
    assert abs(r["calibrator_flux_ratio"] - 1.0) < 0.03


def test_ngc5921_matches_casas_published_flux(validation):
    _, _, r = validation
    assert abs(r["ngc5921_1445_flux_jy"] / r["ngc5921_1445_reference_jy"] - 1.0) < 0.02


def test_report_shows_each_number_next_to_its_limit(validation):
    _, lines, _ = validation
    table = "\n".join(lines[:-1])
    for label in ("gain amplitude rms error", "gain phase rms error", "calibrator flux / model",
                  "NGC5921: 1445+099 flux"):
        assert label in table
    assert "FAIL" not in table and "overall: PASS" in table
