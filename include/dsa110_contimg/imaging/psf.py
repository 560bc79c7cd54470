"""The synthesised beam: predicted from the uv coverage, fitted to a PSF.

Two jobs, one Gaussian fit so both backends and the cell rule agree:

* ``predict_beam`` estimates, before imaging, the half-power beam of the
  PSF the imagers will make, from the MS's uvw, the channel frequencies,
  the field of view and the weighting (imaging weights gridded as the
  imagers grid them: uv cells of 1/FOV, Briggs' formula). The cell is then
  a fixed fraction of the beam's minor axis. The DSA-110 uv coverage is too uneven for a rule
  on the longest baseline alone: Briggs 0 on a dense core with a few
  outriggers gives a minor axis ~1.5 lambda/B_max, the core arms alone
  ~0.55 lambda/B_max.
* ``fit_beam`` fits an elliptical Gaussian to the main lobe of a PSF image
  (pixels >= half the peak connected to it). The full array's PSF sits on
  a ~0.35-0.4 plateau from the E-W arm, so tclean's 0.35 ``psfcutoff``
  catches part of the plateau (40.5"x30.7" where the half-power fit is
  38.3"x30.7") and WSClean 3.1's fit is far off (92.6"x26.5" for the same
  PSF). Both imagers therefore restore with the predicted beam, and this
  fit of each imager's PSF checks the prediction afterwards.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..instrument import SPEED_OF_LIGHT

ARCSEC_PER_RAD = math.degrees(1.0) * 3600.0
PSF_CUTOFF = 0.5  # fit the lobe above half power: the FWHM by definition, clear of plateaus
SAMPLES_PER_CHUNK = 2_000_000  # (row, channel) pairs gridded at a time (~100 MB of temporaries)
WINDOW_PX = 65  # PSF window (pixels per side) evaluated for the prediction
DFT_CHUNK = 20_000  # uv cells per matrix product


def fit_beam(psf: np.ndarray, cell_arcsec: float, cutoff: float = PSF_CUTOFF) -> tuple[float, float, float]:
    """(bmaj arcsec, bmin arcsec, bpa deg) of a Gaussian fitted to the PSF's main lobe.

    ``psf`` is (ny, nx) with north up (+y) and east left (-x), as in a FITS
    image with negative CDELT1; pixels are ``cell_arcsec`` square. The fit is
    linear least squares on ln(psf) over the lobe, weighted by psf^2 so the
    top of the lobe (what "the beam" means) dominates. BPA is east of north
    in (-90, 90]. Raises ValueError when the lobe has too few pixels to fit."""
    psf = np.nan_to_num(np.asarray(psf, dtype=float))
    iy, ix = np.unravel_index(int(np.argmax(psf)), psf.shape)
    peak = psf[iy, ix]
    if not peak > 0:
        raise ValueError("PSF has no positive peak")
    labels, _ = ndimage.label(psf >= cutoff * peak)
    lobe = labels == labels[iy, ix]
    if lobe.sum() < 6:
        raise ValueError(f"PSF main lobe has {int(lobe.sum())} pixels above {cutoff}: cell too coarse to fit")
    yy, xx = np.nonzero(lobe)
    east = -(xx - ix) * cell_arcsec  # RA increases to the left
    north = (yy - iy) * cell_arcsec
    val = psf[yy, xx] / peak
    return _gaussian_from_log_fit(east, north, val)


def _gaussian_from_log_fit(east: np.ndarray, north: np.ndarray, val: np.ndarray) -> tuple[float, float, float]:
    """Solve -ln(val) = a e^2 + b e n + c n^2 and turn the quadratic form into FWHMs and PA."""
    design = np.stack([east**2, east * north, north**2], axis=1)
    w = val**2
    coef, *_ = np.linalg.lstsq(design * w[:, None], -np.log(np.clip(val, 1e-6, None)) * w, rcond=None)
    a, b, c = coef
    evals, evecs = np.linalg.eigh(np.array([[a, b / 2.0], [b / 2.0, c]]))
    if not np.all(evals > 0):
        raise ValueError(f"PSF main lobe is not a peak (quadratic form eigenvalues {evals})")
    fwhm = 2.0 * np.sqrt(math.log(2.0) / evals)  # evals ascending: major axis first
    e_maj, n_maj = evecs[:, 0]
    bpa = math.degrees(math.atan2(e_maj, n_maj))
    bpa = (bpa + 90.0) % 180.0 - 90.0
    if bpa == -90.0:
        bpa = 90.0
    return float(fwhm[0]), float(fwhm[1]), float(bpa)


def _density_grid(uvw_m: np.ndarray, freqs_hz: np.ndarray, du: float) -> tuple[np.ndarray, int]:
    """Samples per uv cell (du wavelengths) on the v >= 0 half plane, all rows x channels.

    Accumulated in row chunks on a dense grid (its half-width is B_max/lambda
    over du, ~600 cells for DSA-110 at 3.5 deg), so memory stays small and
    no sample is dropped. Returns (grid (n+1, 2n+1) indexed [iv, iu + n], n)."""
    inv_lam = np.asarray(freqs_hz, dtype=float) / SPEED_OF_LIGHT
    uv_max = float(np.max(np.hypot(uvw_m[0], uvw_m[1]))) * float(inv_lam.max()) if uvw_m.shape[1] else 0.0
    n = int(math.ceil(uv_max / du)) + 1
    width = 2 * n + 1
    counts = np.zeros((n + 1) * width, dtype=np.int64)
    rows = max(1, SAMPLES_PER_CHUNK // inv_lam.size)
    for s in range(0, uvw_m.shape[1], rows):
        u = np.outer(uvw_m[0, s : s + rows], inv_lam).ravel()
        v = np.outer(uvw_m[1, s : s + rows], inv_lam).ravel()
        flip = v < 0  # a visibility and its conjugate are one sample
        u[flip], v[flip] = -u[flip], -v[flip]
        iu = np.rint(u / du).astype(np.int64) + n
        iv = np.rint(v / du).astype(np.int64)
        counts += np.bincount(iv * width + iu, minlength=counts.size)
    return counts.reshape(n + 1, width), n


def gridded_imaging_weights(
    uvw_m: np.ndarray, freqs_hz: np.ndarray, fov_rad: float, weighting: str, robust: float
) -> tuple[np.ndarray, np.ndarray]:
    """Imaging weights summed per uv cell: (cell centres (k, 2) in wavelengths, weight per cell).

    Cells are 1/FOV wide, as tclean (npixels=0) and WSClean grid their
    weights. Natural: the count W per cell; uniform: 1 per occupied cell;
    Briggs: W / (1 + W f^2) with f^2 = (5 10^-R)^2 / (sum W^2 / sum W)."""
    du = 1.0 / fov_rad
    grid, n = _density_grid(uvw_m, freqs_hz, du)
    iv, iu = np.nonzero(grid)
    density = grid[iv, iu].astype(float)
    if weighting == "natural":
        g = density
    elif weighting == "uniform":
        g = np.ones_like(density)
    else:
        f2 = (5.0 * 10.0 ** (-robust)) ** 2 / (np.sum(density**2) / np.sum(density))
        g = density / (1.0 + density * f2)
    centres = np.stack([(iu - n) * du, iv * du], axis=1)
    return centres, g


def psf_window(centres: np.ndarray, weights: np.ndarray, cell_arcsec: float, npix: int = WINDOW_PX) -> np.ndarray:
    """PSF on an npix x npix window (north up, east left) by a direct Fourier sum.

    Separable: PSF = Re(E_m^T diag(w) E_l) with E = exp(2 pi i u x), so the
    sum over cells is a matrix product (chunked to bound memory)."""
    half = npix // 2
    offsets = np.arange(-half, half + 1) * cell_arcsec / ARCSEC_PER_RAD
    east, north = -offsets, offsets  # image x increases westward
    acc = np.zeros((npix, npix), dtype=complex)
    for s in range(0, len(weights), DFT_CHUNK):
        c, w = centres[s : s + DFT_CHUNK], weights[s : s + DFT_CHUNK]
        el = np.exp(2j * np.pi * np.outer(c[:, 0], east))  # (n, nx)
        em = np.exp(2j * np.pi * np.outer(c[:, 1], north))  # (n, ny)
        acc += (em * w[:, None]).T @ el
    return acc.real / float(np.sum(weights))


def predict_beam(
    uvw_m: np.ndarray, freqs_hz: np.ndarray, fov_deg: float, weighting: str, robust: float
) -> tuple[float, float, float]:
    """Predicted (bmaj arcsec, bmin arcsec, bpa deg) of the restoring beam.

    ``uvw_m`` is (3, nrow) of the unflagged cross-correlations. The window
    starts at 1/8 of lambda_min/B_max per pixel and doubles while the lobe
    reaches its edge (elongated beams)."""
    if uvw_m.shape[1] == 0:
        raise ValueError("no unflagged cross-correlation rows")
    centres, weights = gridded_imaging_weights(uvw_m, freqs_hz, math.radians(fov_deg), weighting, robust)
    b_max_lambda = float(np.max(np.hypot(centres[:, 0], centres[:, 1])))
    if b_max_lambda <= 0:
        raise ValueError("every baseline is shorter than one uv cell")
    cell = ARCSEC_PER_RAD / b_max_lambda / 8.0
    for _ in range(6):
        psf = psf_window(centres, weights, cell)
        bmaj, bmin, bpa = fit_beam(psf, cell)
        if bmaj < WINDOW_PX * cell / 3.0:
            return bmaj, bmin, bpa
        cell *= 2.0
    return bmaj, bmin, bpa
