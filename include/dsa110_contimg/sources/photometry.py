"""Forced photometry: the peak flux at given (reference) positions.

Method: a restoring-beam-shaped Gaussian fitted at the fixed position, with
its amplitude the only free parameter, over the pixels inside the beam's
half-power contour around the position (A = sum(P D) / sum(P^2), P the beam
centred on the position, D the pixel values).

Why not bilinear interpolation: a point source's pixel values sample a
Gaussian, and interpolating linearly between pixels underestimates its peak
whenever the position falls between pixel centres, by several per cent at the
usual 3-5 pixels per beam (e.g. 4 % at 4 pixels per FWHM, half a pixel
off). The fit has no such bias. Why only the half-power pixels: synthesis
image noise is correlated on the beam, so for a known position the single
pixel at the source is already nearly the best estimate; spreading the fit
wider adds sidelobe and neighbour confusion without lowering the noise (an
unweighted fit over the whole beam has 15 % more noise than the peak pixel).

The error is exact for noise whose autocorrelation is the restoring beam:
var(A) = sigma^2 P^T R P / (P^T P)^2 with R_ij = beam(p_i - p_j), sigma the
local rms (robust MAD in a box of ``noise_box_beams`` beams around the
position). For an unresolved source the fitted peak (Jy/beam) is its flux
density (Jy); for a resolved one it is the peak brightness only.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..imaging.fitsutil import beam_deg, read_image_2d, robust_rms
from .errors import FWHM_PER_SIGMA
from .find import SourceFindingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ForcedMeasurement:
    """Peak flux (Jy/beam; = Jy for an unresolved source) at a fixed position."""

    name: str
    ra_deg: float
    dec_deg: float
    flux_jy: float
    flux_err_jy: float
    rms_jy: float  # local rms used for the error
    x_pix: float
    y_pix: float
    n_pix: int  # pixels in the fit


@dataclass(frozen=True)
class _Beam:
    """Restoring beam as an inverse covariance on the pixel grid near one position."""

    icov_pix: np.ndarray
    fwhm_pix: float


def _sky_cov_arcsec(bmaj: float, bmin: float, bpa_deg: float) -> np.ndarray:
    t = math.radians(bpa_deg)
    major = np.array([math.sin(t), math.cos(t)])  # (east, north)
    minor = np.array([math.cos(t), -math.sin(t)])
    return ((bmaj / FWHM_PER_SIGMA) ** 2 * np.outer(major, major)
            + (bmin / FWHM_PER_SIGMA) ** 2 * np.outer(minor, minor))


def _local_jacobian(wcs, x: float, y: float) -> np.ndarray:
    """(east, north) arcsec per unit step in x and in y at pixel (x, y)."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    ra, dec = wcs.pixel_to_world_values([x, x + 1.0, x], [y, y, y + 1.0])
    c = SkyCoord(np.asarray(ra) * u.deg, np.asarray(dec) * u.deg)
    de, dn = c[0].spherical_offsets_to(c[1:])
    return np.array([[de[0].arcsec, de[1].arcsec], [dn[0].arcsec, dn[1].arcsec]])


def _beam_at(wcs, x: float, y: float, beam_as: tuple[float, float, float]) -> _Beam:
    jac = _local_jacobian(wcs, x, y)
    jinv = np.linalg.inv(jac)
    cov_pix = jinv @ _sky_cov_arcsec(*beam_as) @ jinv.T
    scale = math.sqrt(abs(np.linalg.det(jac)))
    return _Beam(np.linalg.inv(cov_pix), beam_as[0] / scale)


def _quad(icov: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return icov[0, 0] * dx * dx + 2.0 * icov[0, 1] * dx * dy + icov[1, 1] * dy * dy


def _fit_pixels(data: np.ndarray, x: float, y: float, beam: _Beam, radius_beams: float):
    """Pixel coordinates and values inside ``radius_beams`` FWHM of (x, y) (at least the nearest 4)."""
    ny, nx = data.shape
    half = math.ceil(radius_beams * beam.fwhm_pix) + 2
    ys, xs = np.mgrid[max(0, round(y) - half):min(ny, round(y) + half + 1),
                      max(0, round(x) - half):min(nx, round(x) + half + 1)]
    xs, ys = xs.ravel(), ys.ravel()
    vals = data[ys, xs]
    ok = np.isfinite(vals)
    xs, ys, vals = xs[ok], ys[ok], vals[ok]
    q = _quad(beam.icov_pix, xs - x, ys - y)
    qmax = (radius_beams * FWHM_PER_SIGMA) ** 2  # radius_beams FWHM along any axis of the beam
    sel = q <= qmax
    if sel.sum() < 4:
        sel = np.argsort(q)[:4]
    return xs[sel], ys[sel], vals[sel], q[sel]


def _amplitude(xs, ys, vals, q, beam: _Beam, rms: float) -> tuple[float, float]:
    """Least-squares amplitude of the beam template and its error under beam-correlated noise."""
    p = np.exp(-0.5 * q)
    ptp = float(p @ p)
    amp = float(p @ vals) / ptp
    dx = xs[:, None] - xs[None, :]
    dy = ys[:, None] - ys[None, :]
    r = np.exp(-0.5 * _quad(beam.icov_pix, dx, dy))
    return amp, rms * math.sqrt(float(p @ r @ p)) / ptp


def _local_rms(data: np.ndarray, x: float, y: float, box_pix: int) -> float:
    ny, nx = data.shape
    h = max(8, box_pix // 2)
    xi, yi = round(x), round(y)
    return robust_rms(data[max(0, yi - h):min(ny, yi + h + 1), max(0, xi - h):min(nx, xi + h + 1)])


def measure(data: np.ndarray, wcs, beam_as: tuple[float, float, float], name: str, ra_deg: float,
            dec_deg: float, *, radius_beams: float = 0.5, noise_box_beams: float = 10.0,
            rms_jy: float | None = None, flux_cal_frac: float = 0.0) -> ForcedMeasurement | None:
    """Forced peak flux at one position of an image array; None off the image or on blanks."""
    x, y = (float(v) for v in wcs.world_to_pixel_values(ra_deg, dec_deg))
    ny, nx = data.shape
    if not (math.isfinite(x) and math.isfinite(y) and -0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5):
        return None
    if not np.isfinite(data[round(y), round(x)]):
        return None
    beam = _beam_at(wcs, x, y, beam_as)
    xs, ys, vals, q = _fit_pixels(data, x, y, beam, radius_beams)
    rms = rms_jy if rms_jy is not None else _local_rms(data, x, y, int(noise_box_beams * beam.fwhm_pix))
    if not (rms > 0):
        return None
    amp, err = _amplitude(xs, ys, vals, q, beam, rms)
    err = math.hypot(err, flux_cal_frac * amp)
    return ForcedMeasurement(name, float(ra_deg), float(dec_deg), amp, err, float(rms), x, y, int(xs.size))


def forced_photometry(fits_path: Path, positions: Sequence[Any], *, radius_beams: float = 0.5,
                      noise_box_beams: float = 10.0, flux_cal_frac: float = 0.0,
                      noise: Any = None) -> list[ForcedMeasurement]:
    """Peak flux at each of ``positions`` (objects with ``name``, ``ra_deg``,
    ``dec_deg``, e.g. catalogue rows) inside a FITS image or mosaic.

    Positions off the image or on blank pixels are left out. ``noise`` (a
    :class:`~.find.NoiseMap` from the same image) replaces the local MAD rms.
    ``flux_cal_frac`` defaults to 0 because the variability statistics want
    the errors that are independent between epochs."""
    fits_path = Path(fits_path)
    data, header, wcs = read_image_2d(fits_path)
    beam = beam_deg(header)
    if beam is None:
        raise SourceFindingError(fits_path, "no restoring beam (BMAJ/BMIN) in the header")
    beam_as = (beam[0] * 3600.0, beam[1] * 3600.0, beam[2])
    out = []
    for p in positions:
        rms = None
        if noise is not None:
            xi, yi = noise.pixels(p.ra_deg, p.dec_deg)
            rms = float(noise.rms[yi[0], xi[0]]) if xi[0] >= 0 else None
        m = measure(data, wcs, beam_as, str(p.name), float(p.ra_deg), float(p.dec_deg), radius_beams=radius_beams,
                    noise_box_beams=noise_box_beams, rms_jy=rms, flux_cal_frac=flux_cal_frac)
        if m is not None:
            out.append(m)
    log.info("forced photometry %s: %d of %d positions measured", fits_path.name, len(out), len(positions))
    return out


__all__ = ["ForcedMeasurement", "forced_photometry", "measure"]
