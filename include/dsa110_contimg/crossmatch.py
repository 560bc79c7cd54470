"""Cross-match stage: find sources in an image, match them to a reference
catalogue, and measure flux ratios and position offsets.

Source finding is a simple island finder: a robust (MAD) rms, islands of
pixels above ``snr`` x rms (8-connected), and for each island a fit of a 2-D
Gaussian with the restoring-beam shape held fixed (free amplitude and
position) around its peak. For an unresolved source the fitted peak in
Jy/beam is its flux density in Jy. Without a beam in the header the position
is the flux-weighted centroid of the 3x3 pixels around the peak.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .imaging.fitsutil import beam_deg, image_frequency, read_image_2d, robust_rms

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectedSource:
    """One island: position (deg, ICRS/the image frame), fitted peak (Jy/beam)
    = flux (Jy) for a point source, S/N against the local rms."""

    ra_deg: float
    dec_deg: float
    peak_jy: float
    flux_jy: float
    snr: float
    rms_jy: float
    x_pix: float
    y_pix: float
    npix: int
    fitted: bool  # True: beam-shaped Gaussian fit; False: 3x3 centroid
    freq_hz: float | None = None


@dataclass(frozen=True)
class Match:
    index: int  # index into the detected list
    name: str
    ra_deg: float
    dec_deg: float
    ref_ra_deg: float
    ref_dec_deg: float
    offset_arcsec: float
    flux_jy: float
    ref_flux_jy: float  # catalogue flux at its own frequency
    expected_flux_jy: float  # scaled to the image frequency
    flux_ratio: float  # measured / expected


@dataclass(frozen=True)
class CrossmatchResult:
    matches: tuple[Match, ...]
    unmatched: tuple[int, ...]  # indices of detections without a reference counterpart
    n_detected: int
    n_reference: int
    n_matched: int
    median_flux_ratio: float
    median_offset_arcsec: float
    csv_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def completeness(self) -> float:
        """Fraction of the detections with a reference counterpart."""
        return self.n_matched / self.n_detected if self.n_detected else 0.0

    def to_dict(self, include_rows: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["csv_path"] = str(self.csv_path) if self.csv_path else None
        d["unmatched"] = list(self.unmatched)
        if not include_rows:
            d.pop("matches")
        return d


# --------------------------------------------------------------------------
# source finding


def _local_rms(data: np.ndarray, box: int) -> np.ndarray:
    """MAD rms in box x box tiles, interpolated back to the pixel grid."""
    from scipy import ndimage

    ny, nx = data.shape
    ty, tx = max(1, math.ceil(ny / box)), max(1, math.ceil(nx / box))
    tiles = np.full((ty, tx), np.nan)
    for j in range(ty):
        for i in range(tx):
            r = robust_rms(data[j * box:(j + 1) * box, i * box:(i + 1) * box])
            tiles[j, i] = r if r > 0 else np.nan
    if np.isnan(tiles).all():
        return np.zeros_like(data)
    tiles = np.where(np.isnan(tiles), np.nanmedian(tiles), tiles)
    return ndimage.zoom(tiles, (ny / ty, nx / tx), order=1, mode="nearest", grid_mode=True)[:ny, :nx]


def _beam_inverse_cov_pix(header, wcs) -> np.ndarray | None:
    """Inverse covariance (pixel^-2) of the restoring beam on the pixel grid."""
    bm = beam_deg(header)
    if bm is None:
        return None
    bmaj, bmin, bpa = bm
    s = 1.0 / math.sqrt(8.0 * math.log(2.0))
    t = math.radians(bpa)  # from north through east
    major = np.array([math.sin(t), math.cos(t)])  # (east, north)
    minor = np.array([math.cos(t), -math.sin(t)])
    cov_sky = (bmaj * s) ** 2 * np.outer(major, major) + (bmin * s) ** 2 * np.outer(minor, minor)
    m = wcs.pixel_scale_matrix  # d(east?, north) deg / d(pixel)
    # projection-plane x points to increasing longitude (east): no sign flip needed
    jac = np.linalg.inv(m)  # pixel per degree
    cov_pix = jac @ cov_sky @ jac.T
    return np.linalg.inv(cov_pix)


def _fit_fixed_beam(data, x0, y0, icov, half):
    from scipy.optimize import least_squares

    ny, nx = data.shape
    ys, xs = np.mgrid[max(0, y0 - half):min(ny, y0 + half + 1), max(0, x0 - half):min(nx, x0 + half + 1)]
    z = data[ys, xs]
    ok = np.isfinite(z)
    xs, ys, z = xs[ok].astype(float), ys[ok].astype(float), z[ok]
    if z.size < 5:
        return None

    def resid(p):
        a, xc, yc = p
        dx, dy = xs - xc, ys - yc
        q = icov[0, 0] * dx * dx + 2 * icov[0, 1] * dx * dy + icov[1, 1] * dy * dy
        return a * np.exp(-0.5 * q) - z

    sol = least_squares(resid, [data[y0, x0], float(x0), float(y0)], method="lm")
    a, xc, yc = sol.x
    if not sol.success or a <= 0 or abs(xc - x0) > 2 or abs(yc - y0) > 2:
        return None
    return float(a), float(xc), float(yc)


def _centroid(data, x0, y0):
    ny, nx = data.shape
    sl = (slice(max(0, y0 - 1), min(ny, y0 + 2)), slice(max(0, x0 - 1), min(nx, x0 + 2)))
    w = np.clip(np.nan_to_num(data[sl]), 0, None)
    ys, xs = np.mgrid[sl]
    tot = w.sum()
    if tot <= 0:
        return float(x0), float(y0)
    return float((w * xs).sum() / tot), float((w * ys).sum() / tot)


def find_sources(
    fits_path: Path,
    snr: float = 5.0,
    rms: float | None = None,
    box: int | None = None,
    min_pix: int = 1,
) -> list[DetectedSource]:
    """Islands above ``snr`` x rms in a FITS image, brightest first.

    rms: a fixed rms (Jy/beam); None = robust MAD of the whole image, or of
    ``box`` x ``box`` pixel tiles when ``box`` is given (for pb-corrected
    images and mosaics, whose noise rises towards the edges)."""
    from scipy import ndimage

    fits_path = Path(fits_path)
    data, header, wcs = read_image_2d(fits_path)
    freq = image_frequency(header)
    if rms is not None:
        rms_map = np.full(data.shape, float(rms))
    elif box:
        rms_map = _local_rms(data, int(box))
    else:
        rms_map = np.full(data.shape, robust_rms(data))
    if not np.all(rms_map[np.isfinite(data)] > 0):
        log.warning("find_sources %s: zero rms, no sources", fits_path)
        return []
    with np.errstate(invalid="ignore"):
        mask = np.isfinite(data) & (data > snr * rms_map)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    icov = _beam_inverse_cov_pix(header, wcs)
    half = 2
    if icov is not None:
        # fit within ~ one beam FWHM of the peak
        fwhm_pix = math.sqrt(8 * math.log(2)) / math.sqrt(np.linalg.eigvalsh(icov).min())
        half = max(2, int(math.ceil(0.75 * fwhm_pix)))
    out: list[DetectedSource] = []
    for idx, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        isl = labels[sl] == idx
        npix = int(isl.sum())
        if npix < min_pix:
            continue
        sub = np.where(isl, data[sl], -np.inf)
        jy, jx = np.unravel_index(np.argmax(sub), sub.shape)
        y0, x0 = int(jy + sl[0].start), int(jx + sl[1].start)
        fit = _fit_fixed_beam(data, x0, y0, icov, half) if icov is not None else None
        if fit is not None:
            peak, xc, yc = fit
        else:
            peak = float(data[y0, x0])
            xc, yc = _centroid(data, x0, y0)
        ra, dec = wcs.pixel_to_world_values(xc, yc)
        r = float(rms_map[y0, x0])
        out.append(
            DetectedSource(
                ra_deg=float(ra) % 360.0, dec_deg=float(dec), peak_jy=peak, flux_jy=peak, snr=peak / r,
                rms_jy=r, x_pix=xc, y_pix=yc, npix=npix, fitted=fit is not None, freq_hz=freq,
            )
        )
    out.sort(key=lambda s: -s.peak_jy)
    log.info("find_sources %s: %d sources above %.1f sigma (rms %.3g Jy/beam)", fits_path.name, len(out), snr,
             float(np.nanmedian(rms_map)))
    return out


# --------------------------------------------------------------------------
# cross-matching

CSV_FIELDS = [
    "index", "ra_deg", "dec_deg", "flux_jy", "snr", "matched", "name", "ref_ra_deg", "ref_dec_deg",
    "offset_arcsec", "ref_flux_jy", "expected_flux_jy", "flux_ratio",
]


def _write_csv_atomic(path: Path, rows: list[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def crossmatch(
    detected: Sequence[DetectedSource],
    reference: Sequence[Any],
    radius_arcsec: float,
    ref_freq_hz: float = 1.4e9,
    image_freq_hz: float | None = None,
    spectral_index: float = -0.7,
    out_csv: Path | None = None,
) -> CrossmatchResult:
    """Match each detection to its nearest reference source within the radius.

    ``reference`` holds any objects with ``name``, ``ra_deg``, ``dec_deg`` and
    ``flux_jy`` (catalogue flux at ``ref_freq_hz``). Expected flux at the
    image frequency = flux_jy * (image_freq_hz / ref_freq_hz) ** spectral_index;
    image_freq_hz defaults to the detections' ``freq_hz`` (else no scaling).
    With ``out_csv`` every detection is written with its match (if any)."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    detected = list(detected)
    reference = list(reference)
    if image_freq_hz is None:
        freqs = [d.freq_hz for d in detected if getattr(d, "freq_hz", None)]
        image_freq_hz = float(np.median(freqs)) if freqs else ref_freq_hz
    scale = (image_freq_hz / ref_freq_hz) ** spectral_index
    matches: list[Match] = []
    unmatched: list[int] = []
    if detected and reference:
        det = SkyCoord([d.ra_deg for d in detected] * u.deg, [d.dec_deg for d in detected] * u.deg)
        ref = SkyCoord([r.ra_deg for r in reference] * u.deg, [r.dec_deg for r in reference] * u.deg)
        idx, sep, _ = det.match_to_catalog_sky(ref)
        sep_as = np.atleast_1d(sep.arcsec)
        idx = np.atleast_1d(idx)
        for i, d in enumerate(detected):
            if sep_as[i] > radius_arcsec:
                unmatched.append(i)
                continue
            r = reference[int(idx[i])]
            expected = float(r.flux_jy) * scale
            matches.append(
                Match(
                    index=i, name=str(r.name), ra_deg=d.ra_deg, dec_deg=d.dec_deg, ref_ra_deg=float(r.ra_deg),
                    ref_dec_deg=float(r.dec_deg), offset_arcsec=float(sep_as[i]), flux_jy=d.flux_jy,
                    ref_flux_jy=float(r.flux_jy), expected_flux_jy=expected,
                    flux_ratio=d.flux_jy / expected if expected > 0 else float("nan"),
                )
            )
    else:
        unmatched = list(range(len(detected)))
    ratios = [m.flux_ratio for m in matches if np.isfinite(m.flux_ratio)]
    med_ratio = float(np.median(ratios)) if ratios else float("nan")
    med_off = float(np.median([m.offset_arcsec for m in matches])) if matches else float("nan")
    csv_path = None
    if out_csv is not None:
        by_index = {m.index: m for m in matches}
        rows = []
        for i, d in enumerate(detected):
            m = by_index.get(i)
            row = {"index": i, "ra_deg": f"{d.ra_deg:.6f}", "dec_deg": f"{d.dec_deg:.6f}",
                   "flux_jy": f"{d.flux_jy:.6g}", "snr": f"{d.snr:.1f}", "matched": int(m is not None)}
            if m is not None:
                row.update(name=m.name, ref_ra_deg=f"{m.ref_ra_deg:.6f}", ref_dec_deg=f"{m.ref_dec_deg:.6f}",
                           offset_arcsec=f"{m.offset_arcsec:.2f}", ref_flux_jy=f"{m.ref_flux_jy:.6g}",
                           expected_flux_jy=f"{m.expected_flux_jy:.6g}", flux_ratio=f"{m.flux_ratio:.4f}")
            rows.append(row)
        csv_path = _write_csv_atomic(Path(out_csv), rows)
    log.info(
        "crossmatch: %d detected, %d reference, %d matched within %.1f\", median flux ratio %.3f, "
        "median offset %.2f\"", len(detected), len(reference), len(matches), radius_arcsec, med_ratio, med_off,
    )
    return CrossmatchResult(
        matches=tuple(matches), unmatched=tuple(unmatched), n_detected=len(detected), n_reference=len(reference),
        n_matched=len(matches), median_flux_ratio=med_ratio, median_offset_arcsec=med_off, csv_path=csv_path,
        extra={"image_freq_hz": image_freq_hz, "ref_freq_hz": ref_freq_hz, "spectral_index": spectral_index},
    )
