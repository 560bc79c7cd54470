"""How exactly each imager grids: its dirty image against a direct Fourier transform.

DESIGN.md asks that tclean and WSClean be compared like with like, in
accuracy too. tclean's w-projection grids with CASA's fixed kernel; WSClean's
w-gridder takes an accuracy and runs faster the looser it is. These helpers
make the same dirty image (niter 0, natural weighting, Stokes I, the first
``nchan`` channels, baselines longer than ``MIN_UV_LAMBDA``) with either
imager and compute the exact value at chosen pixels,

    I(l, m) = sum_k w_k Re(V_k exp(-2 pi i (u_k l + v_k m + w_k (n - 1)))) / sum_k w_k,

the sign being the MeasurementSet's. Used by ``bench/gridding_accuracy.py``
and its test."""
from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .. import casa_env
from ..instrument import SPEED_OF_LIGHT
from .backends import ImagerSetup, tclean_kwargs, wsclean_command

MIN_UV_LAMBDA = 1.0
ROW_CHUNK = 20000
PIX_CHUNK = 8
COLUMNS = {"data": "DATA", "corrected": "CORRECTED_DATA"}


def dirty_setup(setup: ImagerSetup) -> ImagerSetup:
    """``setup`` for a dirty image: no CLEAN, natural weighting."""
    return dataclasses.replace(setup, niter=0, weighting="natural")


def dirty_tclean(setup: ImagerSetup, ms: Path, work: Path, nchan: int) -> Path:
    """tclean's dirty image (FITS) of the first ``nchan`` channels."""
    cts = casa_env.casatasks()
    name = work / "tclean"
    kwargs = tclean_kwargs(dirty_setup(setup), ms, name) | {"spw": f"0:0~{nchan - 1}",
                                                             "uvrange": f">{MIN_UV_LAMBDA}lambda"}
    cts.tclean(**kwargs)
    out = work / "tclean-image.fits"
    cts.exportfits(imagename=f"{name}.image", fitsimage=str(out), overwrite=True, velocity=False)
    return out


def dirty_wsclean(setup: ImagerSetup, ms: Path, work: Path, nchan: int, accuracy: float, threads: int = 1) -> Path:
    """WSClean's dirty image (FITS) of the first ``nchan`` channels at ``accuracy``."""
    setup = dataclasses.replace(dirty_setup(setup), wgridder_accuracy=accuracy)
    name = work / f"wsclean-{accuracy:g}"
    cmd = wsclean_command(setup, shutil.which("wsclean") or "wsclean", ms, name, threads)
    cmd[-1:-1] = ["-channel-range", "0", str(nchan), "-minuv-l", str(MIN_UV_LAMBDA)]
    subprocess.run(cmd, cwd=work, check=True, capture_output=True)
    return Path(f"{name}-image.fits")


def sample_pixels(data: np.ndarray, npix: int, seed: int) -> np.ndarray:
    """(k, 2) integer (y, x): the brightest pixel first, then ``npix`` at random."""
    rng = np.random.default_rng(seed)
    peak = np.unravel_index(int(np.nanargmax(data)), data.shape)
    rand = np.column_stack([rng.integers(0, data.shape[0], npix), rng.integers(0, data.shape[1], npix)])
    return np.vstack([np.array(peak)[None, :], rand])


def direction_cosines(wcs, pix: np.ndarray, ra0_deg: float, dec0_deg: float):
    """(l, m, n) of pixels (y, x) of a celestial ``wcs`` relative to the phase centre."""
    ra, dec = (np.radians(v) for v in wcs.pixel_to_world_values(pix[:, 1], pix[:, 0]))
    ra0, dec0 = np.radians(ra0_deg), np.radians(dec0_deg)
    dra = ra - ra0
    l = np.cos(dec) * np.sin(dra)
    m = np.sin(dec) * np.cos(dec0) - np.cos(dec) * np.sin(dec0) * np.cos(dra)
    return l, m, np.sqrt(1.0 - l**2 - m**2)


def exact_dirty(ms: Path, datacolumn: str, nchan: int, l: np.ndarray, m: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The direct Fourier transform of the selected visibilities at (l, m, n)."""
    tb = casa_env.casatools().table()
    tb.open(f"{ms}/SPECTRAL_WINDOW")
    freqs = tb.getcol("CHAN_FREQ")[:nchan, 0]
    tb.close()
    tb.open(str(ms))
    num, wsum = np.zeros(l.size), 0.0
    try:
        spectral = "WEIGHT_SPECTRUM" in tb.colnames() and tb.iscelldefined("WEIGHT_SPECTRUM", 0)
        for start in range(0, tb.nrows(), ROW_CHUNK):
            nr = min(ROW_CHUNK, tb.nrows() - start)
            blc, trc = [0, 0], [1, nchan - 1]
            vis = tb.getcolslice(COLUMNS[datacolumn], blc, trc, [], start, nr)  # (2, chan, rows)
            flag = tb.getcolslice("FLAG", blc, trc, [], start, nr)
            wt = (tb.getcolslice("WEIGHT_SPECTRUM", blc, trc, [], start, nr) if spectral
                  else np.repeat(tb.getcol("WEIGHT", start, nr)[:, None, :], nchan, axis=1))
            auto = tb.getcol("ANTENNA1", start, nr) == tb.getcol("ANTENNA2", start, nr)
            uvw = tb.getcol("UVW", start, nr).T[:, :, None] * (freqs / SPEED_OF_LIGHT)[None, None, :]
            w = np.where(flag[0] | flag[1], 0.0, 0.5 * (wt[0] + wt[1])).T  # (rows, chan)
            w[auto[:, None] | (np.hypot(uvw[:, 0], uvw[:, 1]) <= MIN_UV_LAMBDA)] = 0.0
            keep = w > 0
            v = 0.5 * (vis[0] + vis[1]).T[keep]  # Stokes I
            u, vv, ww, wk = uvw[:, 0][keep], uvw[:, 1][keep], uvw[:, 2][keep], w[keep]
            wsum += wk.sum()
            for p in range(0, l.size, PIX_CHUNK):
                sl = slice(p, p + PIX_CHUNK)
                phase = 2 * np.pi * (np.outer(l[sl], u) + np.outer(m[sl], vv) + np.outer(n[sl] - 1.0, ww))
                num[sl] += (wk * (v.real * np.cos(phase) + v.imag * np.sin(phase))).sum(axis=1)
    finally:
        tb.close()
    return num / wsum


def gridding_errors(images: dict[str, Path], ms: Path, datacolumn: str, nchan: int,
                    npix: int = 200, seed: int = 7) -> tuple[float, dict[str, dict[str, float]]]:
    """The exact value at the first image's brightest pixel, and each image's
    error against the exact transform at the same pixels in units of it:
    ``{label: {"rms", "max"}}``. All images must share one grid."""
    from .fitsutil import read_image_2d

    first, hdr, wcs = read_image_2d(next(iter(images.values())))
    pix = sample_pixels(first, npix, seed)
    exact = exact_dirty(ms, datacolumn, nchan, *direction_cosines(wcs, pix, hdr["CRVAL1"], hdr["CRVAL2"]))
    out = {}
    for label, path in images.items():
        data, _, w2 = read_image_2d(path)
        if not (np.allclose(w2.wcs.crval, wcs.wcs.crval) and np.allclose(w2.wcs.crpix, wcs.wcs.crpix)):
            raise ValueError(f"{path}: its grid differs from {next(iter(images.values()))}'s")
        err = (data[pix[:, 0], pix[:, 1]] - exact) / exact[0]
        out[label] = {"rms": float(np.sqrt(np.mean(err**2))), "max": float(np.max(np.abs(err)))}
    return float(exact[0]), out
