"""Mosaic stage: linear mosaic of a time window's primary-beam-corrected images.

Each input i is a pb-corrected image I_i = F_i / PB_i of a flat image F_i
whose noise is sigma_i (ImageResult.rms_jy), so the noise of I_i at a pixel
is s_i = sigma_i / PB_i. Every input is reprojected (bicubic: see
``_reproject_piece``) onto one celestial WCS covering all of them; at each
output pixel the inputs that are valid there (finite pbcor, PB > 0) are
combined by one of three methods:

weighted (default)
    M = sum w_i I_i / sum w_i with w_i = PB_i^2 / sigma_i^2 = 1 / s_i^2, the
    minimum-variance combination; noise = 1 / sqrt(sum w_i).
mean
    M = (1/n) sum I_i; noise = sqrt(sum s_i^2) / n. Ignores how well each
    input measures the pixel, so it is noisier where the beams differ.
median
    M = median of the n valid I_i (for even n numpy's: the mean of the two
    middle values), which suppresses an artefact present in a minority of
    the inputs. Needs n >= 3 to reject anything (the median of 2 is their
    mean). The noise map is an approximation (see ``_median_noise``): exact
    for n <= 2 and for equal input noise at any n, where it is the mean's
    noise x sqrt(MEDIAN_VARIANCE_FACTOR[n]) (-> sqrt(pi/2), the large-n
    efficiency of the median); for unequal noise it uses the asymptotic
    (Bahadur) variance of the median of independent Gaussians,
    f(n) n / (sum 1/s_i)^2, which tracks Monte Carlo to within ~5% for the
    overlaps of a drift scan (1-3 images, PB 0.2-1).

Before combining, inputs whose QA status is not 'good' are excluded (and
listed in the result); the rest must agree in frequency (FREQ_TOLERANCE),
restoring beam (BEAM_AREA_TOLERANCE, BEAM_PA_TOLERANCE_DEG) and WCS
(celestial, same axis types and projection), else MosaicError names the file.

Memory stays bounded whatever the window's size: headers are read first; the
output grid is then filled in row strips, each reading only the input rows
that map into it (memory-mapped) and streaming the strip to the output FITS
files, so only one strip of every array (and, for the median, one strip of
the stack) is ever in memory (STRIP_BUDGET_BYTES)."""
from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, WCSCOMPARE_ANCILLARY, FITSFixedWarning

from .errors import MosaicError
from .imaging.fitsutil import beam_deg, image_frequency
from .results import jsonable

log = logging.getLogger(__name__)

METHODS = ("weighted", "mean", "median")

# Fractional frequency difference from the inputs' median. A group imaged from
# 12 of 16 subbands (ingest's minimum) with the 4 missing at one end of the
# band has its MFS frequency shifted by 2 x 11.72 MHz = 1.7%, which must still
# mosaic; for a spectral index of -0.7 a 2% offset changes flux by 1.4%, below
# the reference catalogue's ~3% calibration accuracy. Anything larger is a
# different band or a wrong file.
FREQ_TOLERANCE = 0.02

# Restoring beams: point-source peaks (Jy/beam) are right in every input
# whatever its beam, so a mismatch only blurs the mosaic's effective PSF,
# whose area is the weighted mean of the inputs'. The header carries the
# median-area input beam, so with every input within 10% of it, integrated
# fluxes of resolved sources are off by < 10% in the worst case (and by the
# weighted mean difference, usually a few %, in practice). A drift scan at a
# fixed declination has the same uv coverage in every image, so beams in a
# window differ only through flagging and missing subbands (~3% in area for
# 12/16); more than 10% means a different array or a broken image.
BEAM_AREA_TOLERANCE = 0.10
# Position angles are compared only when the reference beam is elongated
# (axis ratio > BEAM_ELONGATION); for rounder beams the angle barely matters.
BEAM_PA_TOLERANCE_DEG = 10.0
BEAM_ELONGATION = 1.2

# Working memory per row strip (bytes): bounds the stage whatever the window.
STRIP_BUDGET_BYTES = 256 * 2**20
PREVIEW_MAX_PIXELS = 2048  # long side of the preview array (block-averaged)
# Resampling (see _reproject_piece): a cubic spline; the input rows read on either
# side of those an output strip maps to (the spline's prefilter couples pixels
# with weights falling as 0.27^n, so 16 rows make the crop invisible, ~1e-9);
# how far below 1 the resampled validity mask may be.
INTERP_ORDER = "bicubic"
INTERP_MARGIN_ROWS = 16
VALID_MASK_TOLERANCE = 1e-3

# n x Var(median of n iid unit Gaussians) (numpy's median: the mean of the two
# middle values for even n), by numerical integration of the order-statistic
# densities (checked against Monte Carlo in the tests); -> pi/2 for large n.
MEDIAN_VARIANCE_FACTOR = (
    1.0, 1.0, 1.0, 1.3460, 1.1927, 1.4342, 1.2882, 1.4731, 1.3451, 1.4949,
    1.3829, 1.5088, 1.4098, 1.5184, 1.4299, 1.5254, 1.4455,
)  # index n; beyond the table pi/2 (within 4% in rms at n = 16)


@dataclass(frozen=True)
class MosaicResult:
    """What the mosaic stage made (JSON-able through ``to_dict``).

    mosaic_fits: combined pb-corrected image (Jy/beam); weight_fits: sum of
    PB^2/sigma^2 for 'weighted', number of inputs per pixel otherwise;
    noise_fits: expected noise per pixel (Jy/beam); rms_jy: the lowest value
    of the noise map (where the mosaic is deepest); n_inputs: images combined;
    excluded: (path, reason) of inputs left out by QA; shape (ny, nx);
    size_deg (width along RA, height along Dec); beam_arcsec (bmaj, bmin
    arcsec; bpa deg) of the median-area input."""

    mosaic_fits: Path
    weight_fits: Path
    noise_fits: Path
    preview_png: Path | None
    method: str
    n_inputs: int
    excluded: tuple[tuple[Path, str], ...]
    rms_jy: float
    peak_jy: float
    ra_deg: float
    dec_deg: float
    shape: tuple[int, int]
    size_deg: tuple[float, float]
    freq_hz: float
    beam_arcsec: tuple[float, float, float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self)


@dataclass(frozen=True)
class _Input:
    """One image to combine, known from its headers only (no pixels read)."""

    path: Path
    pb_path: Path
    rms: float
    shape: tuple[int, int]
    wcs: WCS
    freq: float
    beam: tuple[float, float, float]  # degrees
    header: fits.Header


@dataclass(frozen=True)
class _Box:
    """An input's footprint on the output grid: rows y0:y1, columns x0:x1."""

    y0: int
    y1: int
    x0: int
    x1: int


# -- inputs and checks --------------------------------------------------------------
def _check_lists(pbcor_fits: list[Path], pb_fits: list[Path], rms: list[float],
                 qa_status: list[str] | None, out_fits: Path, method: str) -> None:
    """Arguments that cannot describe a mosaic at all."""
    if method not in METHODS:
        raise MosaicError(out_fits, f"unknown mosaic method {method!r} (one of {', '.join(METHODS)})")
    if not pbcor_fits:
        raise MosaicError(out_fits, "no images to mosaic")
    n_qa = len(qa_status) if qa_status is not None else len(pbcor_fits)
    if not (len(pbcor_fits) == len(pb_fits) == len(rms) == n_qa):
        raise MosaicError(pbcor_fits[0], f"{len(pbcor_fits)} images, {len(pb_fits)} primary beams, "
                                         f"{len(rms)} rms values and {n_qa} QA statuses given")


def _split_by_qa(pbcor_fits: list[Path], qa_status: list[str] | None) -> tuple[list[int], list[tuple[Path, str]]]:
    """Indices of inputs to use, and (path, reason) of those QA excludes."""
    if qa_status is None:
        return list(range(len(pbcor_fits))), []
    keep, excluded = [], []
    for i, (p, s) in enumerate(zip(pbcor_fits, qa_status, strict=True)):
        if str(s).lower() == "good":
            keep.append(i)
        else:
            excluded.append((p, f"QA status {s!r}, not 'good'"))
    return keep, excluded


def _celestial_wcs(path: Path, header: fits.Header) -> tuple[WCS, tuple[int, int]]:
    """The 2-D celestial WCS on FITS axes 1-2 and the (ny, nx) pixel shape.

    Further axes (Stokes, frequency) must be degenerate, as CASA/WSClean write."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            full = WCS(header)
        except Exception as exc:
            raise MosaicError(path, f"unreadable WCS: {exc}") from exc
    naxis = int(header.get("NAXIS", 0))
    if naxis < 2 or not full.has_celestial or {full.wcs.lng, full.wcs.lat} != {0, 1}:
        ctypes = [str(header.get(f"CTYPE{i}", "")) for i in range(1, max(naxis, 2) + 1)]
        raise MosaicError(path, f"no celestial WCS on the first two axes (CTYPE {ctypes})")
    extra = [int(header[f"NAXIS{i}"]) for i in range(3, naxis + 1)]
    if any(n != 1 for n in extra):
        raise MosaicError(path, f"image has non-degenerate extra axes {extra}")
    return full.celestial, (int(header["NAXIS2"]), int(header["NAXIS1"]))


def _read_header(path: Path) -> fits.Header:
    """The primary header, or MosaicError naming the file."""
    try:
        return fits.getheader(path)
    except Exception as exc:
        raise MosaicError(path, f"cannot read FITS header: {exc}") from exc


def _read_input(path: Path, pb_path: Path, rms: float) -> _Input:
    """Headers of an image and its primary beam; everything a check needs."""
    for p in (path, pb_path):
        if not p.exists():
            raise MosaicError(p, "input image does not exist")
    if not (np.isfinite(rms) and rms > 0):
        raise MosaicError(path, f"rms must be positive and finite, got {rms!r}")
    header, pb_header = _read_header(path), _read_header(pb_path)
    wcs, shape = _celestial_wcs(path, header)
    pb_wcs, pb_shape = _celestial_wcs(pb_path, pb_header)
    if pb_shape != shape or not wcs.wcs.compare(pb_wcs.wcs, cmp=WCSCOMPARE_ANCILLARY, tolerance=1e-9):
        raise MosaicError(pb_path, f"primary beam grid {pb_shape} differs from its image's {shape} ({path.name})")
    freq = image_frequency(header)
    if freq is None or not freq > 0:
        raise MosaicError(path, "image has no frequency (FREQ keyword or spectral axis)")
    beam = beam_deg(header)
    if beam is None:
        raise MosaicError(path, "image has no restoring beam (BMAJ/BMIN)")
    return _Input(path, pb_path, rms, shape, wcs, freq, beam, header)


def _projection(inp: _Input) -> str:
    """Axis types and projection, e.g. 'RA---SIN/DEC--SIN'."""
    return "/".join(str(c) for c in inp.wcs.wcs.ctype)


def _median_input(inputs: list[_Input], key: Callable[[_Input], float]) -> _Input:
    """The input at the (lower) median of ``key``: a real input, so with two
    inputs that disagree the one named in the error is the other one."""
    return sorted(inputs, key=key)[(len(inputs) - 1) // 2]


def _check_frequencies(inputs: list[_Input]) -> float:
    """The median input's frequency (Hz); every input within FREQ_TOLERANCE of it."""
    f0 = _median_input(inputs, lambda i: i.freq).freq
    for inp in inputs:
        if abs(inp.freq - f0) / f0 > FREQ_TOLERANCE:
            raise MosaicError(inp.path, f"frequency {inp.freq / 1e6:.2f} MHz differs from the others' "
                                        f"{f0 / 1e6:.2f} MHz by more than {FREQ_TOLERANCE:.0%}")
    return f0


def _pa_difference(a: float, b: float) -> float:
    """Difference of two position angles (deg), modulo 180."""
    return abs((a - b + 90.0) % 180.0 - 90.0)


def _check_beams(inputs: list[_Input]) -> tuple[float, float, float]:
    """The median-area beam (deg); every input's beam compatible with it."""
    ref = _median_input(inputs, lambda i: i.beam[0] * i.beam[1]).beam
    ref_area = ref[0] * ref[1]
    for inp in inputs:
        bmaj, bmin, bpa = inp.beam
        diff = bmaj * bmin / ref_area - 1.0
        if abs(diff) > BEAM_AREA_TOLERANCE:
            raise MosaicError(inp.path, f"restoring beam {bmaj * 3600:.1f}\"x{bmin * 3600:.1f}\" has {diff:+.0%} the "
                                        f"area of the others' {ref[0] * 3600:.1f}\"x{ref[1] * 3600:.1f}\" "
                                        f"(tolerance {BEAM_AREA_TOLERANCE:.0%}); convolve to a common beam first")
        if ref[0] / ref[1] > BEAM_ELONGATION and _pa_difference(bpa, ref[2]) > BEAM_PA_TOLERANCE_DEG:
            raise MosaicError(inp.path, f"restoring beam position angle {bpa:.1f} deg differs from the others' "
                                        f"{ref[2]:.1f} deg by more than {BEAM_PA_TOLERANCE_DEG:g} deg")
    return ref


def _check_projections(inputs: list[_Input]) -> str:
    """The common projection code (e.g. 'SIN'); every input uses it."""
    common, _ = Counter(_projection(i) for i in inputs).most_common(1)[0]
    for inp in inputs:
        if _projection(inp) != common:
            raise MosaicError(inp.path, f"WCS {_projection(inp)} differs from the others' {common} "
                                        "(axis types and projection must match)")
    return str(inputs[0].wcs.wcs.ctype[0])[5:8].strip("-") or "TAN"


# -- geometry ---------------------------------------------------------------------
def _edge_pixels(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of every pixel edge point around rows y0:y1, columns x0:x1."""
    xs = np.arange(x0, x1 + 1, dtype=float) - 0.5
    ys = np.arange(y0, y1 + 1, dtype=float) - 0.5
    x = np.concatenate([xs, xs, np.full(ys.size, xs[0]), np.full(ys.size, xs[-1])])
    y = np.concatenate([np.full(xs.size, ys[0]), np.full(xs.size, ys[-1]), ys, ys])
    return x, y


def _map_pixels(x: np.ndarray, y: np.ndarray, src: WCS, dst: WCS) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in ``dst`` of pixels ``(x, y)`` of ``src``."""
    lon, lat = src.pixel_to_world_values(x, y)
    return dst.world_to_pixel_values(lon, lat)


def _footprint(inp: _Input, wcs_out: WCS, shape_out: tuple[int, int]) -> _Box | None:
    """Bounding box of an input on the output grid (2 px margin for interpolation).

    The image of the input's border encloses the image of the input, so mapping
    every border pixel is enough."""
    ox, oy = _map_pixels(*_edge_pixels(0, inp.shape[0], 0, inp.shape[1]), inp.wcs, wcs_out)
    if not (np.isfinite(ox).any() and np.isfinite(oy).any()):
        return None
    y0, y1 = max(0, int(np.floor(np.nanmin(oy))) - 2), min(shape_out[0], int(np.ceil(np.nanmax(oy))) + 3)
    x0, x1 = max(0, int(np.floor(np.nanmin(ox))) - 2), min(shape_out[1], int(np.ceil(np.nanmax(ox))) + 3)
    return _Box(y0, y1, x0, x1) if y0 < y1 and x0 < x1 else None


def _input_rows(inp: _Input, wcs_out: WCS, y0: int, y1: int, x0: int, x1: int) -> tuple[int, int]:
    """Rows of the input that output rows y0:y1, columns x0:x1 interpolate from."""
    _, iy = _map_pixels(*_edge_pixels(y0, y1, x0, x1), wcs_out, inp.wcs)
    if not np.isfinite(iy).all():
        return 0, inp.shape[0]
    m = INTERP_MARGIN_ROWS
    return max(0, int(np.floor(iy.min())) - m), min(inp.shape[0], int(np.ceil(iy.max())) + m + 1)


def _read_rows(path: Path, r0: int, r1: int) -> np.ndarray:
    """Rows r0:r1 of a 2-D (or degenerate N-D) FITS image, read through a memory map."""
    try:
        with fits.open(path, memmap=True) as hdul:
            data = hdul[0].data
            while data.ndim > 2:
                data = data[0]
            return np.array(data[r0:r1], dtype=float)
    except Exception as exc:
        raise MosaicError(path, f"cannot read image data: {exc}") from exc


def _reproject_piece(inp: _Input, wcs_out: WCS, y0: int, y1: int, x0: int, x1: int
                     ) -> tuple[np.ndarray, np.ndarray] | None:
    """pbcor and PB of one input on output rows y0:y1, columns x0:x1 (bicubic).

    Why bicubic: a restored image has ~5 pixels across the beam, and linear
    interpolation between pixel centres flattens a point source's peak (by
    up to ~3 % per axis at half a pixel). On the imaging proof's mosaic
    (``dsa110 validate imaging``) bilinear resampling read the bright
    sources' fitted peaks 3.8 % low (median ratio 0.962); bicubic reads
    0.996. A cubic spline spreads NaN over the whole piece, so the NaN
    border beyond pblimit is filled with 0 and a validity mask resampled
    alongside: an output pixel counts only where that mask is ~1, i.e. no
    NaN input pixel contributes to it (a few pixels are lost at the edge).

    roundtrip_coords is off: it doubles the WCS work and only guards against
    all-sky projections folding over, which a few-degree field cannot do."""
    from reproject import reproject_interp

    r0, r1 = _input_rows(inp, wcs_out, y0, y1, x0, x1)
    if r0 >= r1:
        return None
    img, pb = _read_rows(inp.path, r0, r1), _read_rows(inp.pb_path, r0, r1)
    ok = np.isfinite(img) & np.isfinite(pb)
    stack = np.stack([np.where(ok, img, 0.0), np.where(ok, pb, 0.0), ok.astype(float)])
    out = reproject_interp((stack, inp.wcs[r0:r1, :]), wcs_out[y0:y1, x0:x1], shape_out=(3, y1 - y0, x1 - x0),
                           order=INTERP_ORDER, return_footprint=False, roundtrip_coords=False)
    valid = out[2] > 1.0 - VALID_MASK_TOLERANCE
    return np.where(valid, out[0], np.nan), np.where(valid, out[1], np.nan)


# -- combining ----------------------------------------------------------------------
class _Combiner:
    """Per-strip accumulation of the valid inputs at each pixel.

    ``add`` takes one input's reprojected pbcor and PB on a sub-rectangle of
    the strip; ``result`` returns (mosaic, weight, noise) for the strip.
    Subclasses differ only in what they keep and how they finish."""

    def __init__(self, shape: tuple[int, int], n_slots: int):
        self.count = np.zeros(shape)
        self.var = np.zeros(shape)  # sum of s_i^2 = (sigma_i / PB_i)^2

    def add(self, rows: slice, cols: slice, img: np.ndarray, pb: np.ndarray, sigma: float) -> None:
        ok = np.isfinite(img) & np.isfinite(pb) & (pb > 0)
        s = np.where(ok, sigma / np.where(ok, pb, 1.0), np.inf)  # noise of pbcor; inf = not valid
        self.count[rows, cols] += ok
        self.var[rows, cols] += np.where(ok, s * s, 0.0)
        self._add(rows, cols, np.where(ok, img, np.nan), s, ok)

    def _add(self, rows: slice, cols: slice, img: np.ndarray, s: np.ndarray, ok: np.ndarray) -> None:
        raise NotImplementedError

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _mean_noise(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, np.sqrt(self.var) / self.count, np.nan)


class _WeightedCombiner(_Combiner):
    """sum w I / sum w with w = 1/s^2 = PB^2/sigma^2; noise 1/sqrt(sum w)."""

    def __init__(self, shape: tuple[int, int], n_slots: int):
        super().__init__(shape, n_slots)
        self.num = np.zeros(shape)
        self.den = np.zeros(shape)

    def _add(self, rows, cols, img, s, ok):
        w = 1.0 / (s * s)  # 0 where not valid (s = inf)
        self.num[rows, cols] += np.where(ok, w * img, 0.0)
        self.den[rows, cols] += w

    def result(self):
        with np.errstate(invalid="ignore", divide="ignore"):
            mosaic = np.where(self.den > 0, self.num / self.den, np.nan)
            noise = np.where(self.den > 0, 1.0 / np.sqrt(self.den), np.nan)
        return mosaic, self.den, noise


class _MeanCombiner(_Combiner):
    """Plain mean of the valid inputs; noise sqrt(sum s^2)/n."""

    def __init__(self, shape: tuple[int, int], n_slots: int):
        super().__init__(shape, n_slots)
        self.total = np.zeros(shape)

    def _add(self, rows, cols, img, s, ok):
        self.total[rows, cols] += np.where(ok, img, 0.0)

    def result(self):
        with np.errstate(invalid="ignore", divide="ignore"):
            mosaic = np.where(self.count > 0, self.total / self.count, np.nan)
        return mosaic, self.count, self._mean_noise()


class _MedianCombiner(_Combiner):
    """Per-pixel median of the valid inputs, from a (n, rows, cols) stack."""

    def __init__(self, shape: tuple[int, int], n_slots: int):
        super().__init__(shape, n_slots)
        self.stack = np.full((n_slots, *shape), np.nan, dtype=np.float32)
        self.inv = np.zeros(shape)  # sum of 1/s_i
        self.used = 0

    def _add(self, rows, cols, img, s, ok):
        self.stack[self.used, rows, cols] = img
        self.inv[rows, cols] += 1.0 / s
        self.used += 1

    def result(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
            mosaic = np.nanmedian(self.stack[: self.used], axis=0).astype(float)
        return mosaic, self.count, _median_noise(self.count, self.var, self.inv, self._mean_noise())


def _median_noise(count: np.ndarray, var: np.ndarray, inv: np.ndarray, mean_noise: np.ndarray) -> np.ndarray:
    """Expected noise of the per-pixel median of n Gaussian inputs of noise s_i.

    n <= 2: the median is the mean, exactly. n >= 3: the asymptotic variance of
    the median of independent Gaussians (Bahadur), n / (4 (sum_i phi_i(0))^2)
    = (pi/2) n / (sum 1/s_i)^2, with pi/2 replaced by the exact small-n factor
    for equal noises (MEDIAN_VARIANCE_FACTOR), so it is exact for equal s_i.
    With very unequal s_i (one input far deeper than the rest) it can be low
    by up to ~30% for even n; for a drift scan's overlaps it is within ~5%."""
    n = count.astype(int)
    table = np.array(MEDIAN_VARIANCE_FACTOR)
    factor = np.where(n < table.size, table[np.minimum(n, table.size - 1)], math.pi / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        bahadur = np.sqrt(factor * n) / inv
    return np.where(n >= 3, bahadur, mean_noise)


_COMBINERS: dict[str, type[_Combiner]] = {
    "weighted": _WeightedCombiner, "mean": _MeanCombiner, "median": _MedianCombiner,
}


# -- outputs ------------------------------------------------------------------------
class _StreamedFits:
    """A float32 2-D FITS image written row strip by row strip, then renamed in.

    The data go to ``.<name>.tmp-<pid>`` beside the target; ``commit`` renames
    the completed file into place and ``abort`` deletes it, so a reader never
    sees a partial product."""

    def __init__(self, path: Path, header: fits.Header, shape: tuple[int, int]):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.unlink(missing_ok=True)
        full = fits.PrimaryHDU(np.zeros((1, 1), dtype=np.float32)).header
        full["NAXIS1"], full["NAXIS2"] = shape[1], shape[0]
        for card in header.cards:
            if card.keyword not in full or card.keyword in ("HISTORY", "COMMENT"):
                full.append(card)
            else:
                full[card.keyword] = (card.value, card.comment)
        self._hdu = fits.StreamingHDU(self.tmp, full)

    def write(self, rows: np.ndarray) -> None:
        self._hdu.write(np.ascontiguousarray(rows, dtype=np.float32))

    def commit(self) -> Path:
        complete = self._hdu.writecomplete
        self._hdu.close()
        if not complete:
            raise MosaicError(self.path, "internal error: output written incompletely")
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._hdu.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def _utc_iso(dt: datetime) -> str:
    """ISO time in UTC without zone suffix (the FITS DATE-OBS form)."""
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt.isoformat(timespec="seconds")


def _input_mjd(header: fits.Header) -> float | None:
    """Time of an input image: its mid-time, else its start (MJD UTC)."""
    from astropy.time import Time

    for key in ("MJD-MID", "MJD-OBS"):
        if key in header:
            return float(header[key])
    if "DATE-OBS" in header:
        try:
            return float(Time(str(header["DATE-OBS"]), scale="utc").mjd)
        except ValueError:
            return None
    return None


def _time_cards(inputs: list[_Input], window: tuple[datetime, datetime] | None) -> list[tuple[str, Any, str]]:
    """DATE-OBS/DATE-END: the window when given, else the span of the inputs' times."""
    from astropy.time import Time

    if window is not None:
        start, end = _utc_iso(window[0]), _utc_iso(window[1])
        note = "window"
    else:
        mjds = [m for m in (_input_mjd(i.header) for i in inputs) if m is not None]
        if not mjds:
            return []
        start, end = (Time(m, format="mjd", scale="utc").isot for m in (min(mjds), max(mjds)))
        note = "input times"
    mjd0 = float(Time(start, format="isot", scale="utc").mjd)
    return [("DATE-OBS", start, f"start of {note} (UTC)"), ("DATE-END", end, f"end of {note} (UTC)"),
            ("MJD-OBS", mjd0, "[d] DATE-OBS as MJD (UTC)")]


def _mosaic_header(wcs_out: WCS, inputs: list[_Input], excluded: list[tuple[Path, str]], method: str,
                   freq: float, beam: tuple[float, float, float],
                   window: tuple[datetime, datetime] | None) -> fits.Header:
    """Header shared by the mosaic, weight and noise maps (BUNIT set per file)."""
    h = wcs_out.to_header()
    h["BMAJ"] = (beam[0], "[deg] beam of the median-area input")
    h["BMIN"] = (beam[1], "[deg]")
    h["BPA"] = (beam[2], "[deg]")
    h["FREQ"] = (freq, "[Hz] image frequency (median input)")
    h["BUNIT"] = "JY/BEAM"
    for key, value, comment in _time_cards(inputs, window):
        h[key] = (value, comment)
    telescopes = {str(i.header["TELESCOP"]) for i in inputs if "TELESCOP" in i.header}
    if len(telescopes) == 1:
        h["TELESCOP"] = telescopes.pop()
    h["MOSMETH"] = (method, "mosaic method: weighted, mean or median")
    h["NINPUTS"] = (len(inputs), "images combined")
    h.add_history(f"dsa110_contimg.mosaic: {method} linear mosaic of {len(inputs)} pb-corrected images"
                  + (" with weights PB^2/rms^2" if method == "weighted" else ""))
    for inp in inputs:
        h.add_history(f"input {inp.path} rms {inp.rms:.4g} Jy/beam pb {inp.pb_path.name}")
    for path, reason in excluded:
        h.add_history(f"excluded {path}: {reason}")
    return h


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """k x k block means (NaN-aware), padding ragged edges with NaN."""
    if k == 1:
        return a.astype(np.float32)
    ny, nx = a.shape
    pad = np.full((-(-ny // k) * k, -(-nx // k) * k), np.nan)
    pad[:ny, :nx] = a
    blocks = pad.reshape(pad.shape[0] // k, k, pad.shape[1] // k, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(blocks, axis=(1, 3)).astype(np.float32)


def _colourbar_ticks(sigma: float, vmax: float) -> list[float]:
    """-3, 0, +3 sigma, then the decades from 10 sigma to the top of the scale."""
    decades = range(math.ceil(math.log10(10 * sigma)), math.floor(math.log10(vmax)) + 1)
    return [-3 * sigma, 0.0, 3 * sigma] + [10.0**d for d in decades]


def write_preview_png(data: np.ndarray, wcs: WCS, path: Path, title: str = "",
                      noise_jy: float | None = None) -> Path:
    """A quick-look PNG (Agg backend) with RA/Dec axes and a Jy/beam colourbar.

    The stretch is asinh, linear within +-3 noise_jy (so the noise shows as
    texture, not saturation) and logarithmic up to the peak (so bright and
    faint sources both show); the floor is -3 noise_jy. ``noise_jy`` defaults
    to the robust rms of ``data``. Written under a temporary name first."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import AsinhNorm

    from .imaging.fitsutil import robust_rms

    sigma = noise_jy if noise_jy is not None and np.isfinite(noise_jy) and noise_jy > 0 else robust_rms(data)
    finite = data[np.isfinite(data)]
    peak = float(finite.max()) if finite.size else 1.0
    sigma = sigma if sigma > 0 else max(abs(peak), 1.0) * 1e-3
    vmax = max(peak, 10 * sigma)
    norm = AsinhNorm(linear_width=3 * sigma, vmin=-3 * sigma, vmax=vmax)
    aspect = data.shape[0] / data.shape[1]
    fig = plt.figure(figsize=(12, max(3.0, min(12.0, 12 * aspect + 1.5))))
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        ax = fig.add_subplot(111, projection=wcs)
        im = ax.imshow(data, origin="lower", cmap="inferno", norm=norm, interpolation="nearest")
        ax.set_xlabel("RA")
        ax.set_ylabel("Dec")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, label="Jy/beam", shrink=0.8, pad=0.02, ticks=_colourbar_ticks(sigma, vmax),
                     format="%.3g")
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


# -- the stage ----------------------------------------------------------------------
def _strip_rows(n_slots: int, nx: int, method: str, step: int) -> int:
    """Rows per strip so one strip's arrays fit STRIP_BUDGET_BYTES (multiple of step)."""
    per_row = nx * (12 * 8 + (4 * n_slots if method == "median" else 0))
    rows = max(step, STRIP_BUDGET_BYTES // max(per_row, 1))
    return max(step, rows // step * step)


@dataclass
class _Stats:
    """Running numbers over the strips: best noise, peak, preview arrays."""

    best_noise: float = math.inf
    peak: float = -math.inf
    preview: list[np.ndarray] | None = None
    preview_noise: list[np.ndarray] | None = None

    def update(self, mosaic: np.ndarray, noise: np.ndarray, k: int) -> None:
        if np.isfinite(noise).any():
            self.best_noise = min(self.best_noise, float(np.nanmin(noise)))
        if np.isfinite(mosaic).any():
            self.peak = max(self.peak, float(np.nanmax(mosaic)))
        if self.preview is not None:
            self.preview.append(_block_mean(mosaic, k))
            self.preview_noise.append(_block_mean(noise, k))


def _combine_strips(inputs: list[_Input], boxes: list[_Box | None], wcs_out: WCS, shape_out: tuple[int, int],
                    method: str, writers: list[_StreamedFits], stats: _Stats, k: int) -> None:
    """Fill the output grid strip by strip and stream each strip to the writers."""
    ny, nx = shape_out
    rows = _strip_rows(len(inputs), nx, method, k)
    n_strips = -(-ny // rows)
    for j, y0 in enumerate(range(0, ny, rows)):
        y1 = min(ny, y0 + rows)
        todo = [(inp, b) for inp, b in zip(inputs, boxes, strict=True) if b is not None and b.y0 < y1 and b.y1 > y0]
        comb = _COMBINERS[method]((y1 - y0, nx), len(todo))
        for inp, b in todo:
            ys, ye = max(y0, b.y0), min(y1, b.y1)
            piece = _reproject_piece(inp, wcs_out, ys, ye, b.x0, b.x1)
            if piece is not None:
                comb.add(slice(ys - y0, ye - y0), slice(b.x0, b.x1), piece[0], piece[1], inp.rms)
        arrays = comb.result()
        for writer, a in zip(writers, arrays, strict=True):
            writer.write(a)
        stats.update(arrays[0], arrays[2], k)
        if n_strips >= 10 and (j + 1) % max(1, n_strips // 10) == 0:
            log.info("mosaic: %d/%d strips (%d rows) combined", j + 1, n_strips, y1)


def _sibling(out_fits: Path, suffix: str) -> Path:
    """``<name>.mosaic.fits`` -> ``<name>.mosaic<suffix>``."""
    return out_fits.with_name(out_fits.name.removesuffix(".fits") + suffix)


def _write_products(inputs: list[_Input], boxes: list[_Box | None], wcs_out: WCS, shape_out: tuple[int, int],
                    header: fits.Header, method: str, out_fits: Path, k: int | None
                    ) -> tuple[tuple[Path, Path, Path], _Stats]:
    """Mosaic, weight and noise FITS, written together strip by strip."""
    whdr, nhdr = header.copy(), header.copy()
    if method == "weighted":
        whdr["BUNIT"] = ("1/(JY/BEAM)^2", "sum of PB^2/rms^2")
    else:
        whdr["BUNIT"] = ("", "inputs combined per pixel")
    nhdr["BUNIT"] = ("JY/BEAM", "expected noise of the mosaic")
    paths = (out_fits, _sibling(out_fits, ".weight.fits"), _sibling(out_fits, ".noise.fits"))
    writers: list[_StreamedFits] = []
    stats = _Stats(preview=[] if k else None, preview_noise=[] if k else None)
    try:
        for p, h in zip(paths, (header, whdr, nhdr), strict=True):
            writers.append(_StreamedFits(p, h, shape_out))
        _combine_strips(inputs, boxes, wcs_out, shape_out, method, writers, stats, k or 1)
        if not math.isfinite(stats.peak):
            raise MosaicError(out_fits, "the inputs cover no valid pixels (all NaN after reprojection)")
        done = tuple(w.commit() for w in writers)
    except BaseException:
        for w in writers:
            w.abort()
        raise
    return done, stats  # type: ignore[return-value]


def mosaic_images(
    pbcor_fits: Sequence[Path],
    pb_fits: Sequence[Path],
    rms: Sequence[float],
    out_fits: Path,
    *,
    method: str = "weighted",
    qa_status: Sequence[str] | None = None,
    window: tuple[datetime, datetime] | None = None,
    preview: bool = True,
) -> MosaicResult:
    """Combine a window's pb-corrected images onto one grid (see module docstring).

    ``rms`` are the flat (not pb-corrected) image noises (ImageResult.rms_jy);
    ``qa_status`` (parallel to the inputs; None = all good) excludes every
    input not 'good'; ``window`` (start, end) sets DATE-OBS/DATE-END, else the
    inputs' time span does. Writes ``out_fits``, ``<stem>.weight.fits``,
    ``<stem>.noise.fits`` and, with ``preview``, ``<stem>.png`` beside it,
    each atomically. Raises MosaicError naming the file when an input is
    missing or unreadable, lacks a frequency, beam or celestial WCS, or
    disagrees with the others in frequency, beam or projection, and when QA
    leaves nothing to combine."""
    from reproject.mosaicking import find_optimal_celestial_wcs

    t0 = time.monotonic()
    out_fits = Path(out_fits)
    pbcor, pbs, sig = [Path(p) for p in pbcor_fits], [Path(p) for p in pb_fits], [float(s) for s in rms]
    qa = list(qa_status) if qa_status is not None else None
    _check_lists(pbcor, pbs, sig, qa, out_fits, method)
    keep, excluded = _split_by_qa(pbcor, qa)
    for path, reason in excluded:
        log.warning("mosaic: excluding %s: %s", path, reason)
    if not keep:
        raise MosaicError(out_fits, f"no inputs left to mosaic: all {len(excluded)} excluded by QA")
    inputs = [_read_input(pbcor[i], pbs[i], sig[i]) for i in keep]
    freq = _check_frequencies(inputs)
    beam = _check_beams(inputs)
    proj = _check_projections(inputs)

    wcs_out, shape_out = find_optimal_celestial_wcs([(i.shape, i.wcs) for i in inputs], projection=proj)
    shape_out = (int(shape_out[0]), int(shape_out[1]))
    boxes = [_footprint(i, wcs_out, shape_out) for i in inputs]
    header = _mosaic_header(wcs_out, inputs, excluded, method, freq, beam, window)
    k = max(1, -(-max(shape_out) // PREVIEW_MAX_PIXELS)) if preview else None
    (mosaic_path, weight_path, noise_path), stats = _write_products(
        inputs, boxes, wcs_out, shape_out, header, method, out_fits, k)

    png = None
    if preview:
        data, noise = np.vstack(stats.preview), np.vstack(stats.preview_noise)
        # Block-averaging (k > 1) lowers the displayed noise by an amount that
        # depends on its correlation, so then the stretch uses what is shown.
        sigma = float(np.nanmedian(noise)) if k == 1 and np.isfinite(noise).any() else None
        png = write_preview_png(data, wcs_out[::k, ::k] if k > 1 else wcs_out, _sibling(out_fits, ".png"),
                                title=f"{out_fits.name}: {method} of {len(inputs)} images", noise_jy=sigma)
    return _result(wcs_out, shape_out, out_fits, (mosaic_path, weight_path, noise_path), png, method, inputs,
                   excluded, stats, freq, beam, time.monotonic() - t0)


def _result(wcs_out: WCS, shape_out: tuple[int, int], out_fits: Path, paths: tuple[Path, Path, Path],
            png: Path | None, method: str, inputs: list[_Input], excluded: list[tuple[Path, str]],
            stats: _Stats, freq: float, beam: tuple[float, float, float], seconds: float) -> MosaicResult:
    """The result record, and the stage's log line in numbers."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    ny, nx = shape_out
    cra, cdec = wcs_out.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0)
    scales = np.abs(proj_plane_pixel_scales(wcs_out))  # deg / pixel
    size = (float(nx * scales[0]), float(ny * scales[1]))
    log.info("mosaic %s: %s of %d images (%d excluded) -> %dx%d px (%.2f x %.2f deg), best noise %.3g Jy/beam, "
             "peak %.4g Jy/beam, %.1f s", out_fits.name, method, len(inputs), len(excluded), nx, ny, *size,
             stats.best_noise, stats.peak, seconds)
    return MosaicResult(
        mosaic_fits=paths[0], weight_fits=paths[1], noise_fits=paths[2], preview_png=png, method=method,
        n_inputs=len(inputs), excluded=tuple((Path(p), r) for p, r in excluded), rms_jy=stats.best_noise,
        peak_jy=stats.peak, ra_deg=float(cra) % 360.0, dec_deg=float(cdec), shape=(ny, nx), size_deg=size,
        freq_hz=freq, beam_arcsec=(beam[0] * 3600.0, beam[1] * 3600.0, beam[2]), seconds=seconds,
    )
