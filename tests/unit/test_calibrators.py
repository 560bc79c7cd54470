"""Calibrator table and pure-python transit times."""
from __future__ import annotations

import warnings
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from dsa110_contimg import calibrators as cals


def test_table_has_required_calibrators():
    names = {c.name for c in cals.load_calibrators()}
    assert {"0834+555", "1911+161", "3C48", "3C138", "3C147", "3C286"} <= names
    c = cals.get_calibrator("0834+555")
    assert abs(c.dec_deg - 55.6) < 0.1
    assert abs(cals.get_calibrator("1911+161").dec_deg - 16.2) < 0.1
    with pytest.raises(KeyError):
        cals.get_calibrator("nope")


def test_flux_at_spectral_index():
    c = cals.Calibrator("x", 0.0, 0.0, 10.0, -0.7)
    assert c.flux_at(1.4e9) == pytest.approx(10.0)
    assert c.flux_at(2.8e9) == pytest.approx(10.0 * 2**-0.7)


def test_calibrators_in_strip():
    names = [c.name for c in cals.calibrators_in_strip(55.0, 3.0)]
    assert "0834+555" in names and "3C286" not in names


def _astropy_transit(ra_deg, dec_deg, guess):
    """Time the source's ITRS longitude equals OVRO's, by astropy (ground truth)."""
    from astropy import units as u
    from astropy.coordinates import ITRS, SkyCoord
    from astropy.time import Time
    from astropy.utils import iers

    iers.conf.auto_download = False
    iers.conf.auto_max_age = None
    sc = SkyCoord(ra_deg * u.deg, dec_deg * u.deg)
    t = guess
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(4):
            v = sc.transform_to(ITRS(obstime=Time(t))).cartesian.xyz.value
            dlon = (np.degrees(np.arctan2(v[1], v[0])) - cals.SITE_LON_DEG + 180.0) % 360.0 - 180.0
            t = t + timedelta(seconds=dlon / 360.0 * 86164.0905)
    return t


@pytest.mark.parametrize("when", [datetime(2026, 11, 24, tzinfo=timezone.utc), datetime(2025, 3, 1, tzinfo=timezone.utc)])
def test_transit_matches_astropy_within_5s(when):
    c = cals.get_calibrator("0834+555")
    t = cals.next_transit(c.ra_deg, when, dec_deg=c.dec_deg)
    assert t >= when and t - when < timedelta(days=1)
    ref = _astropy_transit(c.ra_deg, c.dec_deg, t)
    # tolerance 5 s (brief); the formula is good to ~0.1 s + |UT1-UTC|
    assert abs((t - ref).total_seconds()) < 5.0


def test_transits_in_one_per_sidereal_day():
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    ts = cals.transits_in(128.7, start, start + timedelta(days=3), dec_deg=55.6)
    assert len(ts) == 3
    gaps = [(b - a).total_seconds() for a, b in zip(ts, ts[1:])]
    assert all(abs(g - 86164.09) < 2.0 for g in gaps)
    assert all(t.tzinfo is not None for t in ts)
    # a transit exactly at the window start is included, one at the end excluded
    assert cals.transits_in(128.7, ts[0], ts[1], dec_deg=55.6) == [ts[0]] or \
        abs((cals.transits_in(128.7, ts[0], ts[1], dec_deg=55.6)[0] - ts[0]).total_seconds()) < 1e-3


def test_naive_datetime_rejected():
    with pytest.raises(ValueError):
        cals.next_transit(10.0, datetime(2026, 1, 1))


def test_gmst_known_value():
    # GMST at 2000-01-01 12:00 UT1 is 18h41m50.548s (IAU); UT1~UTC here
    jd = 2451545.0
    gmst_h = np.degrees(cals.gmst_rad(jd)) / 15.0
    assert abs(gmst_h - (18 + 41 / 60 + 50.548 / 3600)) * 3600 < 0.1
