"""Image QA: noise, dynamic range, beam and flagging of one image, a verdict, a thumbnail.

``image_qa`` measures the flat (not primary-beam corrected) image, where the
noise is uniform, and returns JSON-able numbers with a 'good'/'bad' verdict
and the reasons, each naming the measured number and its limit, so an
operator reading the registry or the Airflow UI knows why an image failed.
``write_thumbnail`` makes the PNG an operator looks at first."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from .fitsutil import beam_deg, image_frequency, read_image_2d

CLIP_KAPPA = 3.0  # clip at 3 sigma around the median while estimating the noise
MAX_NOISE_PIXELS = 4_000_000  # the noise estimate uses a regular subsample above this
MAD_TO_SIGMA = 1.482602218505602  # 1 / Phi^-1(3/4)


@dataclass(frozen=True)
class ImageQAThresholds:
    """Limits an image must meet to be 'good'.

    Defaults (why):
    max_rms_jy 0.01: the thermal noise of a 5-minute group is ~0.2 mJy for
        96 antennas (SEFD 6500 Jy, 187.5 MHz, two polarisations) and
        ~0.5 mJy for the 40-antenna demo array; Briggs 0 and confusion
        raise it a few times. 10 mJy/beam, 10-50x the thermal value, is
        only reached by an image whose calibration or flagging failed.
    min_dynamic_range 20: peak/rms of pure noise over a few million pixels is
        ~5.5 (the largest Gaussian deviate); every 3.5 deg DSA-110 field
        holds NVSS sources of tens to hundreds of mJy, so a good image has a
        dynamic range of hundreds. Below 20 the sky is not in the image
        (decorrelated or wrongly calibrated data).
    max_flagged_fraction 0.5: with more than half the visibilities flagged
        the noise is >1.4x worse and the uv coverage (beam) is changed; the
        image is not comparable with its neighbours in a mosaic.
    max_beam_arcsec 300: the core arms alone (E-W 288 m, N-S 441 m) give a
        beam of ~165"x55" (Briggs 0), the full array ~40"x30"; a major axis
        above 300" means an arm is lost (most of the array flagged).
    """

    max_rms_jy: float = 0.01
    min_dynamic_range: float = 20.0
    max_flagged_fraction: float = 0.5
    max_beam_arcsec: float = 300.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{f.name} must be a finite number >= 0, not {value!r}")
        if self.max_flagged_fraction > 1:
            raise ValueError("max_flagged_fraction must be in [0, 1]")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ImageQAThresholds:
        """Build from a dict (config, DAG Params); unknown keys are an error, None keeps the default."""
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown image QA thresholds: {unknown}")
        return cls(**{k: float(v) for k, v in d.items() if v is not None})


# --------------------------------------------------------------------------
# measurements


def _noise_sample(data: np.ndarray) -> np.ndarray:
    v = np.asarray(data, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size > MAX_NOISE_PIXELS:
        v = v[:: math.ceil(v.size / MAX_NOISE_PIXELS)]
    return v


def _truncation_bias(kappa: float) -> float:
    """MAD-sigma of a normal truncated at +-kappa sigma, in units of sigma (0.997 at 3)."""
    from scipy.stats import norm

    return float(norm.ppf(0.5 + 0.25 * math.erf(kappa / math.sqrt(2.0))) * MAD_TO_SIGMA)


def clipped_rms(data: np.ndarray, kappa: float = CLIP_KAPPA, max_iter: int = 20) -> float:
    """Noise rms: 1.4826 x MAD, iteratively clipped at kappa sigma about the median.

    Sources and their sidelobes sit in the tails; clipping them until the
    estimate settles keeps them out of the noise. The 3-sigma truncation
    of the Gaussian itself lowers the MAD by 0.3 %, corrected here.
    Returns NaN when the image has no finite pixels."""
    v = _noise_sample(data)
    if v.size == 0:
        return float("nan")
    sigma = 0.0
    for _ in range(max_iter):
        med = float(np.median(v))
        new = MAD_TO_SIGMA * float(np.median(np.abs(v - med)))
        if new == 0.0 or abs(new - sigma) <= 1e-4 * new:
            sigma = new
            break
        sigma = new
        v = v[np.abs(v - med) <= kappa * sigma]
    return sigma / _truncation_bias(kappa)


def _pbcor_numbers(pbcor_fits: Path) -> dict[str, Any]:
    data, _, _ = read_image_2d(pbcor_fits)
    finite = np.isfinite(data)
    return {
        "pbcor_peak_jy": float(np.nanmax(data)) if finite.any() else None,
        "pbcor_valid_fraction": float(finite.mean()),
    }


def _header_flagged_fraction(header) -> float | None:
    value = header.get("FLAGFRAC")
    return float(value) if value is not None else None


# --------------------------------------------------------------------------
# verdict


def _reasons(m: dict[str, Any], t: ImageQAThresholds) -> list[str]:
    """Human-readable failures, each naming the measured number and its limit."""
    out: list[str] = []
    rms, dr, beam, flagged = m["rms_jy"], m["dynamic_range"], m["beam_arcsec"], m["flagged_fraction"]
    if rms is None or not (math.isfinite(rms) and rms > 0):
        out.append(f"rms {rms} Jy/beam is not a positive number (empty or constant image)")
    elif rms > t.max_rms_jy:
        out.append(f"rms {rms * 1e3:.3g} mJy/beam above the limit {t.max_rms_jy * 1e3:.3g} mJy/beam")
    if dr is not None and dr < t.min_dynamic_range:
        out.append(f"dynamic range {dr:.3g} (peak {m['peak_jy']:.3g} Jy/beam / rms) below the limit "
                   f"{t.min_dynamic_range:g}")
    if beam is None:
        out.append("no restoring beam in the header (BMAJ/BMIN)")
    elif beam[0] > t.max_beam_arcsec:
        out.append(f"beam major axis {beam[0]:.1f} arcsec above the limit {t.max_beam_arcsec:g} arcsec")
    if flagged is not None and flagged > t.max_flagged_fraction:
        out.append(f"flagged fraction {flagged:.3f} of the visibilities above the limit "
                   f"{t.max_flagged_fraction:g}")
    if m.get("pbcor_valid_fraction") == 0.0:
        out.append("pb-corrected image has no valid pixel (primary beam below pblimit everywhere)")
    return out


def image_qa(image_fits: Path, pbcor_fits: Path | None = None, flagged_fraction: float | None = None,
             thresholds: ImageQAThresholds | None = None, thumbnail_png: Path | None = None) -> dict[str, Any]:
    """Measure one image and judge it against ``thresholds``.

    rms_jy is :func:`clipped_rms` of the flat ``image_fits`` (Jy/beam),
    peak_jy its maximum, dynamic_range their ratio, beam_arcsec
    [bmaj arcsec, bmin arcsec, bpa deg] from the header; flagged_fraction
    is the argument, else the header's FLAGFRAC, else None (not judged).
    With ``pbcor_fits``: pbcor_peak_jy and pbcor_valid_fraction (share of
    pixels above the pb limit). With ``thumbnail_png``: the PNG of the
    pb-corrected image (the flat one without it), path under "thumbnail".
    Returns a JSON-serialisable dict with qa_status 'good' or 'bad' and reasons."""
    thresholds = thresholds or ImageQAThresholds()
    data, header, _ = read_image_2d(Path(image_fits))
    rms = clipped_rms(data)
    peak = float(np.nanmax(data)) if np.isfinite(data).any() else float("nan")
    bm = beam_deg(header)
    if flagged_fraction is None:
        flagged_fraction = _header_flagged_fraction(header)
    m: dict[str, Any] = {
        "image_fits": str(image_fits),
        "rms_jy": rms if math.isfinite(rms) else None,
        "peak_jy": peak if math.isfinite(peak) else None,
        "dynamic_range": peak / rms if (math.isfinite(peak) and math.isfinite(rms) and rms > 0) else None,
        "beam_arcsec": [bm[0] * 3600.0, bm[1] * 3600.0, bm[2]] if bm else None,
        "flagged_fraction": float(flagged_fraction) if flagged_fraction is not None else None,
    }
    if pbcor_fits is not None:
        m.update(_pbcor_numbers(Path(pbcor_fits)))
    reasons = _reasons(m, thresholds)
    m["qa_status"] = "good" if not reasons else "bad"
    m["reasons"] = reasons
    m["thresholds"] = thresholds.to_dict()
    if thumbnail_png is not None:
        m["thumbnail"] = str(write_thumbnail(Path(pbcor_fits or image_fits), Path(thumbnail_png)))
    return m


# --------------------------------------------------------------------------
# thumbnail


def _title(fits_path: Path, header) -> str:
    name = str(header.get("OBJECT") or fits_path.name)
    date = str(header.get("DATE-OBS", ""))[:19].replace("T", " ")
    freq = image_frequency(header)
    parts = [name, f"{date} UTC" if date else "", f"{freq / 1e6:.1f} MHz" if freq else ""]
    return "  |  ".join(p for p in parts if p)


def write_thumbnail(fits_path: Path, png: Path, size_px: int = 512) -> Path:
    """A PNG of a FITS image for people: asinh stretch, colour bar in the image's units.

    The stretch is linear within +-3 sigma of the noise (so the noise and
    faint sources both show) and logarithmic-like up to the peak; the floor is
    -3 sigma. Pixels off the sky or below the pb limit (NaN) are grey.
    matplotlib's object API only (no pyplot state: safe in worker threads);
    written to a temporary file and renamed into place."""
    from astropy.visualization.wcsaxes import WCSAxes  # noqa: F401  (registers the projection)
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import AsinhNorm
    from matplotlib.figure import Figure

    fits_path, png = Path(fits_path), Path(png)
    data, header, wcs = read_image_2d(fits_path)
    sigma = clipped_rms(data)
    if not (math.isfinite(sigma) and sigma > 0):
        sigma = 1.0
    med = float(np.nanmedian(data)) if np.isfinite(data).any() else 0.0
    top = float(np.nanmax(data)) if np.isfinite(data).any() else med + 1.0
    norm = AsinhNorm(linear_width=3.0 * sigma, vmin=med - 3.0 * sigma, vmax=max(top, med + 10.0 * sigma))
    cmap = colormaps["inferno"].with_extremes(bad="0.6")

    dpi = 100
    fig = Figure(figsize=(size_px / dpi, size_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(projection=wcs)
    im = ax.imshow(data, origin="lower", cmap=cmap, norm=norm, interpolation="antialiased")
    ax.coords[0].set_axislabel("RA (ICRS)", fontsize=7)
    ax.coords[1].set_axislabel("Dec (ICRS)", fontsize=7)
    ax.set_title(_title(fits_path, header), fontsize=7)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    unit = str(header.get("BUNIT") or "JY/BEAM")
    bar.set_label("Jy/beam" if unit.upper() == "JY/BEAM" else unit, fontsize=7)
    bar.ax.tick_params(labelsize=6)
    ax.tick_params(labelsize=6)

    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, png)
    finally:
        if tmp.exists():
            tmp.unlink()
    return png
