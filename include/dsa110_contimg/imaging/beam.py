"""Drift-averaged primary beam of a meridian transit observation.

A DSA-110 dish points at the meridian at a fixed (apparent) declination: the
beam centre is fixed in ITRS and sweeps through the sky in RA during an
observation. The effective beam of an image is the Airy pattern averaged over
the integration times (beam centre converted to ICRS per time) and over a few
frequencies across the band."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from astropy import units as u
from astropy.coordinates import ICRS, ITRS, SkyCoord, UnitSphericalRepresentation
from astropy.time import Time
from astropy.wcs import WCS

from ..geometry import meridian_direction
from ..instrument import airy_beam

SAMPLE_STEP_PIX = 16  # drift_beam_sampled's mesh


def beam_centres_icrs(pointing_dec_rad: float, times: Time) -> tuple[np.ndarray, np.ndarray]:
    """ICRS (ra, dec) in radians of the meridian pointing at each time."""
    t = Time(np.atleast_1d(times.mjd), format="mjd", scale="utc")
    v = meridian_direction(pointing_dec_rad)
    # a direction (no distance): astropy treats it as infinitely far, so no
    # parallax creeps in (a finite 1e12 m vector would be shifted by degrees)
    lon = np.full(t.size, np.arctan2(v[1], v[0]))
    lat = np.full(t.size, np.arcsin(v[2]))
    rep = UnitSphericalRepresentation(lon * u.rad, lat * u.rad)
    sc = SkyCoord(ITRS(rep, obstime=t)).transform_to(ICRS())
    return np.asarray(sc.ra.rad), np.asarray(sc.dec.rad)


def band_sample_frequencies(freqs_hz: Sequence[float], nfreq: int) -> np.ndarray:
    """``nfreq`` frequencies at the centres of equal slices of the band."""
    f = np.asarray(freqs_hz, dtype=float)
    lo, hi = float(f.min()), float(f.max())
    if nfreq <= 1 or hi == lo:
        return np.array([0.5 * (lo + hi)])
    edges = np.linspace(lo, hi, nfreq + 1)
    return 0.5 * (edges[:-1] + edges[1:])


def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    c = np.cos(dec)
    return np.stack([c * np.cos(ra), c * np.sin(ra), np.sin(dec)], axis=-1)


def drift_beam(
    wcs: WCS,
    shape: tuple[int, int],
    pointing_dec_rad: float,
    times: Time,
    freqs_hz: Sequence[float] | float,
    max_times: int = 32,
) -> np.ndarray:
    """Mean Airy power beam on the (ny, nx) pixel grid of a celestial ``wcs``.

    Averaged over ``times`` (at most ``max_times`` evenly spaced of them) and
    over ``freqs_hz``. Pixels off the sky get 0. The WCS frame is taken as
    ICRS (FK5 J2000 differs by ~20 mas, immaterial for a 2.7 deg beam)."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    return _beam_at_pixels(wcs, xx.ravel(), yy.ravel(), pointing_dec_rad, times, freqs_hz,
                           max_times).reshape(ny, nx)


def _beam_at_pixels(wcs: WCS, x: np.ndarray, y: np.ndarray, pointing_dec_rad: float, times: Time,
                    freqs_hz: Sequence[float] | float, max_times: int = 32) -> np.ndarray:
    """The drift-averaged beam (see ``drift_beam``) at pixels (x, y); 0 off the sky."""
    t = Time(np.atleast_1d(times.mjd), format="mjd", scale="utc")
    if t.size > max_times:
        t = t[np.unique(np.round(np.linspace(0, t.size - 1, max_times)).astype(int))]
    freqs = np.atleast_1d(np.asarray(freqs_hz, dtype=float))
    ra_deg, dec_deg = wcs.celestial.pixel_to_world_values(x, y)
    ok = np.isfinite(ra_deg) & np.isfinite(dec_deg)
    pix = _unit(np.deg2rad(ra_deg[ok]), np.deg2rad(dec_deg[ok]))
    cra, cdec = beam_centres_icrs(pointing_dec_rad, t)
    centres = _unit(cra, cdec)
    acc = np.zeros(pix.shape[0])
    for c in centres:
        sep = np.arccos(np.clip(pix @ c, -1.0, 1.0))
        for f in freqs:
            acc += airy_beam(sep, f)
    out = np.zeros(np.size(x))
    out[ok] = acc / (len(centres) * len(freqs))
    return out


def drift_beam_sampled(wcs: WCS, shape: tuple[int, int], pointing_dec_rad: float, times: Time,
                       freqs_hz: Sequence[float] | float, step: int = SAMPLE_STEP_PIX) -> np.ndarray:
    """``drift_beam`` computed every ``step`` pixels (and on the last row and
    column) and interpolated with a bicubic spline.

    Why: the exact beam of a full-scale image is 24 times x 3 frequencies x
    4.7 M pixels of Bessel functions, 7-8 s of the image stage, the same for
    both imagers, while the beam changes on a scale of ~1600 pixels (its
    2.7 deg FWHM at 5.9" cells): a 16-pixel mesh reproduces it to 1.3e-8
    (measured on a full-scale grid; ``tests/unit/test_beam.py`` asks for 1e-6). Falls back to the exact beam when some
    mesh pixel is off the sky (an all-sky projection)."""
    from scipy.interpolate import RectBivariateSpline

    ny, nx = shape
    ys = np.unique(np.r_[np.arange(0, ny, step), ny - 1])
    xs = np.unique(np.r_[np.arange(0, nx, step), nx - 1])
    if step <= 1 or ys.size < 4 or xs.size < 4:
        return drift_beam(wcs, shape, pointing_dec_rad, times, freqs_hz)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    ra, dec = wcs.celestial.pixel_to_world_values(xx.ravel(), yy.ravel())
    if not (np.isfinite(ra).all() and np.isfinite(dec).all()):
        return drift_beam(wcs, shape, pointing_dec_rad, times, freqs_hz)
    mesh = _beam_at_pixels(wcs, xx.ravel(), yy.ravel(), pointing_dec_rad, times, freqs_hz).reshape(yy.shape)
    spline = RectBivariateSpline(ys.astype(float), xs.astype(float), mesh, kx=3, ky=3)
    return spline(np.arange(ny, dtype=float), np.arange(nx, dtype=float))


def drift_beam_for_ms(ms_info, wcs: WCS, shape: tuple[int, int], nfreq: int = 3) -> np.ndarray:
    """Drift-averaged beam of one MS (see :func:`msinfo.read_ms_info`) on a grid."""
    times = Time(ms_info.times_mjd, format="mjd", scale="utc")
    freqs = band_sample_frequencies(ms_info.freqs_hz, nfreq)
    return drift_beam_sampled(wcs, shape, ms_info.pointing_dec_rad, times, freqs)
