"""The calibration stage's own logic (no CASA): which calibrator, which group,
when a group may be calibrated, and that a set failing QA is never applied."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dsa110_contimg.calibration.solve import CalSolveResult
from dsa110_contimg.calibration.stage import (
    _register,
    apply_step,
    calibration_state,
    solve_gains_step,
    transit_in_group,
)
from dsa110_contimg.calibrators import bandpass_calibrator_for, transit_on, transits_between
from dsa110_contimg.config import PipelineConfig
from dsa110_contimg.errors import CalibrationQAError, NoCalibrationError
from dsa110_contimg.registry import Registry, mjd_from_datetime

TRANSIT = transit_on("0834+555", datetime(2026, 1, 15, tzinfo=timezone.utc))
HALF_GROUP_S = 12 * 12.884902


@pytest.fixture
def env(tmp_path):
    cfg = PipelineConfig(data_dir=tmp_path / "data")
    reg = Registry(f"sqlite:///{tmp_path / 'registry.sqlite'}")
    reg.migrate()
    return cfg, reg


def _group(reg: Registry, gid: str, mid: datetime, ms: str = "/data/ms/x.ms") -> dict:
    start = mjd_from_datetime(mid) - HALF_GROUP_S / 86400
    reg.record_group(gid, start, [f"/in/{gid}_sb{i:02d}.hdf5" for i in range(16)])
    reg.update_group(gid, status="converted", ms_path=ms, mid_mjd=mjd_from_datetime(mid), pointing_dec_deg=55.6)
    return reg.get_group(gid)


def _result(tables, status="good", kind="bandpass", reasons=()) -> CalSolveResult:
    return CalSolveResult(ms="/data/ms/cal.ms", tables=list(tables), refant="25", calibrator="0834+555",
                          mid_mjd=mjd_from_datetime(TRANSIT), flagged_fraction=0.0, n_solutions=100, peak_beam=0.99,
                          seconds=1.0, kind=kind, qa_status=status, qa={"status": status, "reasons": list(reasons)},
                          casa_version="6.7.0-31")


def test_auto_bandpass_calibrator_is_the_brightest_in_the_strip():
    assert bandpass_calibrator_for("auto", 55.6).name == "0834+555"
    assert bandpass_calibrator_for("auto", 16.3).name == "3C138"  # 8.4 Jy beats 1911+161's 1 Jy
    assert bandpass_calibrator_for("3C286", 55.6).name == "3C286"  # an explicit choice is kept
    with pytest.raises(KeyError, match="no calibrator"):
        bandpass_calibrator_for("auto", -40.0)


def test_transits_between_finds_each_calibrator_of_the_strip_once_a_day():
    day = datetime(2026, 1, 15, tzinfo=timezone.utc)
    found = transits_between(day, day + timedelta(days=1), 55.6)
    assert [c.name for c, _ in found] == ["0834+555"]
    assert abs((found[0][1] - TRANSIT).total_seconds()) < 1


def test_transit_in_group_only_for_the_group_that_spans_it(env):
    cfg, reg = env
    row = _group(reg, "g-cal", TRANSIT + timedelta(seconds=40))
    cal, t = transit_in_group(cfg, row)
    assert cal.name == "0834+555" and abs((t - TRANSIT).total_seconds()) < 1
    assert transit_in_group(cfg, _group(reg, "g-later", TRANSIT + timedelta(minutes=30))) is None


def test_group_waits_for_a_good_bandpass_and_says_why(env):
    cfg, reg = env
    assert calibration_state(reg, "nope") == (False, "group nope is not converted yet")
    row = _group(reg, "g1", TRANSIT + timedelta(hours=2))
    ok, reason = calibration_state(reg, "g1")
    assert not ok and reason == f"no valid bandpass at MJD {row['mid_mjd']:.5f}"
    t = mjd_from_datetime(TRANSIT)
    with pytest.raises(CalibrationQAError, match="failed QA"):
        _register(reg, _result([("B", "/c/bad.B"), ("G", "/c/bad.G")], status="failed",
                               reasons=["B: 42% of solutions flagged (limit 30%)"]), "bad", (t - 0.5, t + 0.5), None)
    assert calibration_state(reg, "g1")[0] is False  # a failed set never counts
    (failed,) = reg.calsets(status="failed")
    assert failed["reason"] == "B: 42% of solutions flagged (limit 30%)"
    _register(reg, _result([("B", "/c/good.B"), ("G", "/c/good.G")]), "good", (t - 0.5, t + 0.5), None)
    assert calibration_state(reg, "g1") == (True, "")


def test_failed_set_leaves_the_previous_good_set_in_force(env):
    _, reg = env
    t = mjd_from_datetime(TRANSIT)
    _register(reg, _result([("B", "/c/day1.B"), ("G", "/c/day1.G")]), "day1", (t - 0.5, t + 0.5), None)
    with pytest.raises(CalibrationQAError):
        _register(reg, _result([("B", "/c/day2.B"), ("G", "/c/day2.G")], status="failed", reasons=["x"]),
                  "day2", (t - 0.4, t + 0.6), None)
    assert [x.path for x in reg.apply_list(t + 0.1)] == ["/c/day1.B", "/c/day1.G"]


def test_hourly_gains_replace_the_daily_gains_within_their_hour(env):
    _, reg = env
    t = mjd_from_datetime(TRANSIT)
    _register(reg, _result([("B", "/c/d.B"), ("G", "/c/d.G")]), "daily", (t - 0.5, t + 0.5), None)
    _register(reg, _result([("G", "/c/h.G")], kind="gains"), "hourly", (t - 1 / 48, t + 1 / 48), "daily")
    assert [x.path for x in reg.apply_list(t)] == ["/c/d.B", "/c/h.G"]
    assert [x.path for x in reg.apply_list(t + 2 / 24)] == ["/c/d.B", "/c/d.G"]


def test_group_without_a_transit_skips_the_gains_solve(env):
    cfg, reg = env
    _group(reg, "g-noon", TRANSIT + timedelta(hours=3))
    res = solve_gains_step(cfg, reg, "g-noon")
    assert res["skipped"] is True and "no calibrator" in res["reason"]


def test_apply_without_calibration_fails_the_group_with_the_reason(env):
    cfg, reg = env
    row = _group(reg, "g2", TRANSIT + timedelta(hours=5))
    with pytest.raises(NoCalibrationError, match="no valid bandpass at MJD"):
        apply_step(cfg, reg, "g2")
    g = reg.get_group("g2")
    assert g["status"] == "failed" and f"no valid bandpass at MJD {row['mid_mjd']:.5f}" in g["message"]
