"""Synthetic restored images with known sources and known noise.

For testing and benchmarking the source finder, the cross-match QA and
forced photometry against truth: Gaussian sources (point sources take the
restoring-beam shape) on a SIN-projected grid, plus Gaussian noise whose
autocorrelation is the restoring beam, as in a synthesis image (white noise
convolved with a Gaussian of half the beam's covariance, then scaled to the
requested rms). The header carries BMAJ/BMIN/BPA and FREQ like our images.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..imaging.fitsutil import write_fits_atomic

SIGMA_PER_FWHM = 1.0 / math.sqrt(8.0 * math.log(2.0))


@dataclass(frozen=True)
class TrueSource:
    """A source to inject: integrated flux (Jy), intrinsic FWHM size in arcsec
    (0 = unresolved), PA north through east."""

    name: str
    ra_deg: float
    dec_deg: float
    flux_jy: float
    maj_arcsec: float = 0.0
    min_arcsec: float = 0.0
    pa_deg: float = 0.0


@dataclass(frozen=True)
class ImageSpec:
    npix: int = 512
    cell_arcsec: float = 6.0
    beam_arcsec: tuple[float, float, float] = (30.0, 20.0, 30.0)  # bmaj, bmin, bpa (deg)
    rms_jy: float = 1e-3
    ra0_deg: float = 150.0
    dec0_deg: float = 55.0
    freq_hz: float = 1.4e9


def make_wcs(spec: ImageSpec):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [spec.ra0_deg, spec.dec0_deg]
    w.wcs.crpix = [spec.npix / 2 + 1, spec.npix / 2 + 1]
    w.wcs.cdelt = [-spec.cell_arcsec / 3600.0, spec.cell_arcsec / 3600.0]
    return w


def sky_cov(maj: float, mn: float, pa_deg: float) -> np.ndarray:
    """Covariance (arcsec^2) in (east, north) of a Gaussian of FWHM axes maj, mn."""
    t = math.radians(pa_deg)
    major = np.array([math.sin(t), math.cos(t)])
    minor = np.array([math.cos(t), -math.sin(t)])
    return ((maj * SIGMA_PER_FWHM) ** 2 * np.outer(major, major)
            + (mn * SIGMA_PER_FWHM) ** 2 * np.outer(minor, minor))


def _pix_to_sky(wcs) -> np.ndarray:
    """(east, north) arcsec per pixel step: the projection's Jacobian at the centre."""
    return np.asarray(wcs.pixel_scale_matrix) * 3600.0


def beam_noise(spec: ImageSpec, seed: int) -> np.ndarray:
    """Noise of rms ``spec.rms_jy`` whose autocorrelation is the restoring beam."""
    from scipy.signal import fftconvolve

    jac = _pix_to_sky(make_wcs(spec))
    half = math.ceil(2.0 * spec.beam_arcsec[0] / spec.cell_arcsec)
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    d = jac @ np.vstack([xx.ravel(), yy.ravel()])
    icov = np.linalg.inv(sky_cov(*spec.beam_arcsec) / 2.0)
    kernel = np.exp(-0.5 * np.einsum("in,ij,jn->n", d, icov, d)).reshape(xx.shape)
    white = np.random.default_rng(seed).normal(0.0, 1.0, (spec.npix, spec.npix))
    noise = fftconvolve(white, kernel, mode="same")
    return noise * (spec.rms_jy / math.sqrt(float((kernel ** 2).sum())))


def add_source(img: np.ndarray, wcs, src: TrueSource, beam: tuple[float, float, float]) -> None:
    """Add one source (Jy/beam) in place: the beam convolved with its intrinsic shape."""
    cb = sky_cov(*beam)
    cc = cb + (sky_cov(src.maj_arcsec, src.min_arcsec, src.pa_deg) if src.maj_arcsec > 0 else 0.0)
    peak = src.flux_jy * math.sqrt(np.linalg.det(cb) / np.linalg.det(cc))
    x0, y0 = wcs.world_to_pixel_values(src.ra_deg, src.dec_deg)
    jac = _pix_to_sky(wcs)
    half = math.ceil(4.0 * math.sqrt(np.linalg.eigvalsh(cc).max()) / np.abs(jac).max())
    ny, nx = img.shape
    ys, xs = np.mgrid[max(0, int(y0) - half):min(ny, int(y0) + half + 2),
                      max(0, int(x0) - half):min(nx, int(x0) + half + 2)]
    if xs.size == 0:
        return
    d = jac @ np.vstack([(xs - x0).ravel(), (ys - y0).ravel()])
    q = np.einsum("in,ij,jn->n", d, np.linalg.inv(cc), d).reshape(xs.shape)
    img[ys, xs] += peak * np.exp(-0.5 * q)


def synthetic_image(path: Path, sources: Sequence[TrueSource], spec: ImageSpec = ImageSpec(), seed: int = 0,
                    noise_scale: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                    blank: np.ndarray | None = None) -> Path:
    """Write a FITS image of ``sources`` on beam-correlated noise.

    ``noise_scale(x, y)`` multiplies the noise (e.g. a primary-beam-corrected
    mosaic's rise towards the edges); ``blank`` is a boolean mask set to NaN."""
    wcs = make_wcs(spec)
    img = beam_noise(spec, seed)
    if noise_scale is not None:
        yy, xx = np.mgrid[0:spec.npix, 0:spec.npix]
        img *= noise_scale(xx, yy)
    for src in sources:
        add_source(img, wcs, src, spec.beam_arcsec)
    if blank is not None:
        img[blank] = np.nan
    h = wcs.to_header()
    bmaj, bmin, bpa = spec.beam_arcsec
    h["BMAJ"], h["BMIN"], h["BPA"] = bmaj / 3600.0, bmin / 3600.0, bpa
    h["FREQ"] = spec.freq_hz
    h["BUNIT"] = "JY/BEAM"
    return write_fits_atomic(Path(path), img, h)


def random_sources(spec: ImageSpec, n: int, flux_range: tuple[float, float], seed: int,
                   margin_pix: int = 20, min_sep_arcsec: float = 150.0, prefix: str = "S") -> list[TrueSource]:
    """``n`` point sources, log-uniform in flux, uniform in pixel position
    away from the edges and from each other (so none blend)."""
    rng = np.random.default_rng(seed)
    wcs = make_wcs(spec)
    sep_pix = min_sep_arcsec / spec.cell_arcsec
    pts: list[tuple[float, float]] = []
    for _ in range(100 * n):
        if len(pts) == n:
            break
        x, y = rng.uniform(margin_pix, spec.npix - 1 - margin_pix, 2)
        if all((x - a) ** 2 + (y - b) ** 2 >= sep_pix ** 2 for a, b in pts):
            pts.append((x, y))
    lo, hi = np.log10(flux_range[0]), np.log10(flux_range[1])
    out = []
    for i, (x, y) in enumerate(pts):
        ra, dec = wcs.pixel_to_world_values(x, y)
        out.append(TrueSource(f"{prefix}{i:03d}", float(ra) % 360.0, float(dec), float(10 ** rng.uniform(lo, hi))))
    return out


__all__ = ["ImageSpec", "TrueSource", "add_source", "beam_noise", "make_wcs", "random_sources", "sky_cov",
           "synthetic_image"]
