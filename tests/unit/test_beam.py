"""Drift-averaged primary beam of a 5-min meridian transit (imaging/beam.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from astropy import units as u
from astropy.time import Time
from astropy.wcs import WCS

from dsa110_contimg.imaging.beam import band_sample_frequencies, beam_centres_icrs, drift_beam
from dsa110_contimg.instrument import INTEGRATION_S

DEC_APP = math.radians(55.0)
MID = Time("2026-01-15T10:00:00", scale="utc")
CELL_DEG = 0.02
N = 401  # 8 deg across: the whole main lobe


def _times(n: int) -> Time:
    return MID + (np.arange(n) - (n - 1) / 2) * INTEGRATION_S * u.s


def _grid() -> WCS:
    ra, dec = beam_centres_icrs(DEC_APP, MID)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [math.degrees(ra[0]), math.degrees(dec[0])]
    w.wcs.crpix = [(N + 1) / 2, (N + 1) / 2]
    w.wcs.cdelt = [-CELL_DEG, CELL_DEG]
    return w


def _fwhm_deg(profile: np.ndarray) -> float:
    """Full width at half the profile's maximum, linear interpolation, degrees."""
    k = int(np.argmax(profile))
    half = profile[k] / 2
    right = k + np.argmax(profile[k:] < half)
    left = k - np.argmax(profile[k::-1] < half)
    xr = right - 1 + (profile[right - 1] - half) / (profile[right - 1] - profile[right])
    xl = left + 1 - (profile[left + 1] - half) / (profile[left + 1] - profile[left])
    return (xr - xl) * CELL_DEG


@pytest.fixture(scope="module")
def drift():
    return drift_beam(_grid(), (N, N), DEC_APP, _times(24), [1.4e9])


@pytest.fixture(scope="module")
def snapshot():
    return drift_beam(_grid(), (N, N), DEC_APP, _times(1), [1.4e9])


def test_snapshot_peak_and_fwhm(snapshot):
    c = N // 2
    assert snapshot[c, c] == pytest.approx(1.0, abs=1e-3)
    # Airy FWHM 1.03 lambda/D = 2.72 deg at 1.4 GHz for a 4.65 m dish
    assert _fwhm_deg(snapshot[:, c]) == pytest.approx(2.72, abs=0.05)
    assert _fwhm_deg(snapshot[c, :]) == pytest.approx(_fwhm_deg(snapshot[:, c]), rel=0.01)


def test_drift_beam_peak_fwhm_and_elongation(drift):
    c = N // 2
    ky, kx = np.unravel_index(np.argmax(drift), drift.shape)
    # centred on the mid-time meridian, peak slightly below 1 (the beam
    # centre moves 1.3 deg of RA, 0.75 deg on the sky, in 309 s)
    assert abs(ky - c) <= 1 and abs(kx - c) <= 1
    assert 0.95 < drift.max() <= 1.0
    fwhm_dec = _fwhm_deg(drift[:, kx])
    fwhm_ra = _fwhm_deg(drift[ky, :])
    assert fwhm_dec == pytest.approx(2.72, abs=0.08)
    # broadened along RA by the drift: (2.72^2 + ~0.75^2 / ...)^0.5 -> a few %
    assert fwhm_ra > fwhm_dec * 1.01


def test_beam_centres_follow_the_meridian():
    t = _times(24)
    ra, dec = beam_centres_icrs(DEC_APP, t)
    # 309 s of sidereal time = 1.29 deg of RA, increasing with time
    span = math.degrees(ra[-1] - ra[0])
    assert span == pytest.approx(23 * INTEGRATION_S / 86164.0905 * 360.0, rel=0.01)
    # ICRS dec differs from the apparent dec only by precession (< 0.5 deg)
    assert np.all(np.abs(np.degrees(dec) - 55.0) < 0.5)


def test_band_sample_frequencies():
    f = np.linspace(1311e6, 1499e6, 768)
    s = band_sample_frequencies(f, 3)
    assert len(s) == 3 and s[0] > f.min() and s[-1] < f.max()
    assert np.mean(s) == pytest.approx(np.mean(f))
    assert band_sample_frequencies(f, 1)[0] == pytest.approx(np.mean(f))


def test_multifrequency_beam_is_wider_at_low_frequency():
    c = N // 2
    lo = drift_beam(_grid(), (N, N), DEC_APP, _times(1), [1.31e9])
    hi = drift_beam(_grid(), (N, N), DEC_APP, _times(1), [1.50e9])
    assert _fwhm_deg(lo[:, c]) / _fwhm_deg(hi[:, c]) == pytest.approx(1.50 / 1.31, rel=0.02)


def test_sampled_beam_equals_the_exact_one():
    """The image stage's beam (computed on a 16-pixel mesh and interpolated) against
    the exact one on a full-scale image's grid: 2160 px of 5.9" at 3 frequencies
    and 24 integrations; a 1e-6 bound (measured: 1.3e-8)."""
    from dsa110_contimg.imaging.beam import drift_beam_sampled

    ra, dec = beam_centres_icrs(DEC_APP, MID)
    n, cell = 2160, 5.9 / 3600
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [math.degrees(ra[0]) + 0.3, math.degrees(dec[0]) + 0.1]  # phase centre off the beam centre
    w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    w.wcs.cdelt = [-cell, cell]
    freqs = band_sample_frequencies(np.linspace(1.311e9, 1.499e9, 768), 3)
    sampled = drift_beam_sampled(w, (n, n), DEC_APP, _times(24), freqs)
    rows = np.r_[0:n:97, n - 1]  # the exact beam on a subset of rows (the whole grid takes ~8 s)
    yy, xx = np.meshgrid(rows, np.arange(n), indexing="ij")
    from dsa110_contimg.imaging.beam import _beam_at_pixels

    exact = _beam_at_pixels(w, xx.ravel(), yy.ravel(), DEC_APP, _times(24), freqs).reshape(yy.shape)
    assert sampled.shape == (n, n)
    assert 0.01 < exact.min() and exact.max() <= 1.0  # the corners reach 0.03
    assert np.max(np.abs(sampled[rows] - exact)) < 1e-6
