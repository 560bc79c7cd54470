"""Mosaic stage: primary-beam-weighted linear mosaic of pb-corrected images.

For pb-corrected images I_i (= flat image / PB_i) with flat-image noise s_i,
the noise of I_i is s_i / PB_i, so the minimum-variance combination is

    M = sum_i w_i I_i / sum_i w_i,   w_i = PB_i^2 / s_i^2,

and the mosaic noise is 1 / sqrt(sum_i w_i) (the weight map written beside
the mosaic). Every input is reprojected (bilinear, reproject_interp) onto one
celestial WCS covering all of them (find_optimal_celestial_wcs). Pixels where
an input's pbcor is NaN (below its pblimit) contribute nothing."""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MosaicError
from .results import jsonable
from .imaging.fitsutil import beam_deg, image_frequency, read_image_2d, write_fits_atomic

log = logging.getLogger(__name__)

FREQ_TOLERANCE = 0.01


@dataclass(frozen=True)
class MosaicResult:
    """mosaic_fits: the combined pb-corrected image (Jy/beam); weight_fits:
    sum of PB^2/sigma^2 (noise = 1/sqrt(weight)); rms_jy: the expected noise
    where the weight is highest; shape (ny, nx); beam_arcsec the median of
    the input beams (bmaj, bmin arcsec; bpa deg)."""

    mosaic_fits: Path
    weight_fits: Path
    preview_png: Path | None
    n_images: int
    rms_jy: float
    peak_jy: float
    ra_deg: float
    dec_deg: float
    shape: tuple[int, int]
    size_deg: tuple[float, float]  # (width along RA, height along Dec)
    freq_hz: float
    beam_arcsec: tuple[float, float, float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self)


def _check_inputs(pbcor_fits, pb_fits, rms):
    if not pbcor_fits:
        raise MosaicError(None, "no images to mosaic")
    if not (len(pbcor_fits) == len(pb_fits) == len(rms)):
        raise MosaicError(
            pbcor_fits[0], f"{len(pbcor_fits)} images, {len(pb_fits)} primary beams and {len(rms)} rms values given"
        )
    for p in [*pbcor_fits, *pb_fits]:
        if not Path(p).exists():
            raise MosaicError(p, "input image does not exist")
    for p, s in zip(pbcor_fits, rms):
        if not (np.isfinite(s) and s > 0):
            raise MosaicError(p, f"rms must be positive and finite, got {s!r}")


def write_preview_png(data: np.ndarray, wcs, path: Path, title: str = "") -> Path:
    """A quick-look PNG (Agg backend), written under a temporary name first."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    finite = data[np.isfinite(data)]
    if finite.size:
        lo, hi = np.percentile(finite, [1.0, 99.7])
    else:
        lo, hi = 0.0, 1.0
    fig = plt.figure(figsize=(8, 8 * min(2.0, max(0.3, data.shape[0] / data.shape[1]))))
    try:
        ax = fig.add_subplot(111, projection=wcs)
        im = ax.imshow(data, origin="lower", cmap="inferno", vmin=lo, vmax=hi)
        ax.set_xlabel("RA")
        ax.set_ylabel("Dec")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, label="Jy/beam", shrink=0.8)
        path = Path(path)
        tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
    return path


def mosaic_images(
    pbcor_fits: list[Path],
    pb_fits: list[Path],
    rms: list[float],
    out_path: Path,
    preview: bool = True,
) -> MosaicResult:
    """Combine pb-corrected images with weights PB^2/rms^2 onto one grid.

    ``rms`` are the flat (not pb-corrected) image noises (ImageResult.rms_jy).
    Writes ``out_path`` (the mosaic), ``<stem>.weight.fits`` and, with
    ``preview``, ``<stem>.png`` beside it. Raises MosaicError when inputs are
    missing, mismatched in number, lack a restoring beam, or differ in
    frequency by more than 1%."""
    from reproject import reproject_interp
    from reproject.mosaicking import find_optimal_celestial_wcs

    t0 = time.monotonic()
    pbcor_fits = [Path(p) for p in pbcor_fits]
    pb_fits = [Path(p) for p in pb_fits]
    rms = [float(s) for s in rms]
    out_path = Path(out_path)
    _check_inputs(pbcor_fits, pb_fits, rms)

    images = []
    freqs, beams = [], []
    for p in pbcor_fits:
        try:
            data, header, wcs = read_image_2d(p)
        except Exception as exc:
            raise MosaicError(p, f"cannot read image: {exc}") from exc
        f = image_frequency(header)
        if f is None:
            raise MosaicError(p, "image has no frequency (FREQ keyword or spectral axis)")
        b = beam_deg(header)
        if b is None:
            raise MosaicError(p, "image has no restoring beam (BMAJ/BMIN)")
        freqs.append(f)
        beams.append(b)
        images.append((data, wcs, header))
    f0 = float(np.median(freqs))
    for p, f in zip(pbcor_fits, freqs):
        if abs(f - f0) / f0 > FREQ_TOLERANCE:
            raise MosaicError(p, f"frequency {f / 1e6:.2f} MHz differs from the others' {f0 / 1e6:.2f} MHz by > 1%")

    wcs_out, shape_out = find_optimal_celestial_wcs([(d, w) for d, w, _ in images])
    num = np.zeros(shape_out)
    den = np.zeros(shape_out)
    for (data, wcs, _), pbp, s in zip(images, pb_fits, rms):
        try:
            pb, _, pbw = read_image_2d(pbp)
        except Exception as exc:
            raise MosaicError(pbp, f"cannot read primary beam: {exc}") from exc
        if pb.shape != data.shape:
            raise MosaicError(pbp, f"primary beam shape {pb.shape} differs from its image's {data.shape}")
        img_r, _ = reproject_interp((data, wcs), wcs_out, shape_out=shape_out, order="bilinear")
        pb_r, _ = reproject_interp((pb, pbw), wcs_out, shape_out=shape_out, order="bilinear")
        ok = np.isfinite(img_r) & np.isfinite(pb_r) & (pb_r > 0)
        w = np.where(ok, pb_r**2 / s**2, 0.0)
        num += np.where(ok, w * np.nan_to_num(img_r), 0.0)
        den += w
    with np.errstate(invalid="ignore", divide="ignore"):
        mosaic = np.where(den > 0, num / den, np.nan)
    if not np.isfinite(mosaic).any():
        raise MosaicError(out_path, "the inputs do not cover any common valid pixels")

    bm = np.median(np.array(beams), axis=0)
    header = wcs_out.to_header()
    header["BMAJ"], header["BMIN"], header["BPA"] = float(bm[0]), float(bm[1]), float(bm[2])
    header["FREQ"] = (f0, "[Hz] image frequency")
    header["BUNIT"] = "JY/BEAM"
    header["NIMAGES"] = (len(pbcor_fits), "images combined")
    header["COMMENT"] = "linear mosaic, weights PB^2/rms^2 (dsa110_contimg.mosaic)"
    weight_path = out_path.with_name(out_path.name.removesuffix(".fits") + ".weight.fits")
    whdr = header.copy()
    whdr["BUNIT"] = "1/(JY/BEAM)^2"
    mosaic_fits = write_fits_atomic(out_path, mosaic, header)
    weight_fits = write_fits_atomic(weight_path, den, whdr)
    png = None
    if preview:
        png = write_preview_png(mosaic, wcs_out, out_path.with_name(out_path.name.removesuffix(".fits") + ".png"),
                                title=f"{out_path.name} ({len(pbcor_fits)} images)")

    rms_best = float(1.0 / math.sqrt(den.max()))
    peak = float(np.nanmax(mosaic))
    ny, nx = shape_out
    cra, cdec = wcs_out.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0)
    from astropy.wcs.utils import proj_plane_pixel_scales

    scales = np.abs(proj_plane_pixel_scales(wcs_out))  # deg / pixel
    size = (float(nx * scales[0]), float(ny * scales[1]))
    seconds = time.monotonic() - t0
    log.info(
        "mosaic %s: %d images -> %dx%d px (%.2f x %.2f deg), best rms %.3g Jy/beam, peak %.4g Jy/beam, %.1f s",
        out_path.name, len(pbcor_fits), nx, ny, size[0], size[1], rms_best, peak, seconds,
    )
    return MosaicResult(
        mosaic_fits=mosaic_fits, weight_fits=weight_fits, preview_png=png, n_images=len(pbcor_fits),
        rms_jy=rms_best, peak_jy=peak, ra_deg=float(cra) % 360.0, dec_deg=float(cdec), shape=(int(ny), int(nx)),
        size_deg=size, freq_hz=f0, beam_arcsec=(float(bm[0]) * 3600, float(bm[1]) * 3600, float(bm[2])),
        seconds=seconds,
    )
