"""Image stage: one MeasurementSet -> flat, primary-beam and pb-corrected FITS.

Stokes I multi-frequency synthesis with CASA tclean or WSClean. The imager
makes the flat (not pb-corrected) restored image; the primary-beam correction
is ours: the drift-averaged Airy beam of the transit observation (beam.py),
pbcor = image / pb where pb >= pblimit and NaN elsewhere.

Products (``<name>`` defaults to the MS name without ``.ms``) under out_dir:
``<name>.image.fits``, ``<name>.pb.fits``, ``<name>.pbcor.fits`` and the
imager log ``<name>.<backend>.log``; each written under a temporary name and
renamed into place, so a rerun replaces them and a failure leaves none half
written."""
from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ImagingError
from ..inprogress import owner_suffix, remove_stale
from ..instrument import SPEED_OF_LIGHT
from ..results import jsonable
from .backends import ImagerSetup, run_tclean, run_wsclean, tail
from .beam import drift_beam_for_ms
from .fitsutil import beam_deg, celestial_header, read_image_2d, write_fits_atomic
from .headers import pb_header, pbcor_header, product_header
from .msinfo import MsInfo, read_ms_info
from .params import ImagingParams
from .psf import fit_beam, predict_beam
from .qa import clipped_rms
from .subtract import restore_sources

if TYPE_CHECKING:
    from .subtract import SubtractResult

log = logging.getLogger(__name__)

NYQUIST_FRACTION = 0.4  # the cell never exceeds 0.4 lambda_min/B_max (Nyquist is 0.5)
PSF_MISMATCH = 0.10  # warn when the imager's PSF and the predicted beam differ by more


@dataclass(frozen=True)
class ImageResult:
    """What the image stage produced (travels through XCom via ``to_dict``).

    beam_arcsec is the restoring beam (bmaj arcsec, bmin arcsec, bpa deg);
    rms_jy is the robust rms of the flat image (1.4826 MAD, iteratively
    clipped at 3 sigma: ``qa.clipped_rms``, the number image QA judges) and
    peak_jy its maximum, both Jy/beam; ra_deg/dec_deg the image (phase) centre; mid_mjd the
    observation mid-time; flagged_fraction the flagged share of the
    cross-correlation visibilities imaged (FLAG is shared by every data
    column); psf_beam_arcsec our Gaussian fit to the imager's own PSF (a
    check on the predicted restoring beam, None when no PSF was written)."""

    image_fits: Path
    pbcor_fits: Path
    pb_fits: Path
    rms_jy: float
    peak_jy: float
    beam_arcsec: tuple[float, float, float]
    cell_arcsec: float
    imsize: int
    freq_hz: float
    mid_mjd: float
    backend: str
    ra_deg: float
    dec_deg: float
    pbcor_peak_jy: float
    seconds: float
    log_path: Path | None = None
    flagged_fraction: float | None = None
    bandwidth_hz: float | None = None
    psf_beam_arcsec: tuple[float, float, float] | None = None
    imaging: dict[str, Any] | None = None  # the ImagerSetup both backends were given
    imager_seconds: float | None = None  # of ``seconds``, the imager's own run (tclean or wsclean)
    subtracted: list[dict[str, Any]] | None = None  # bright sources fitted, subtracted and restored (subtract.py)
    subtract_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self)


# --------------------------------------------------------------------------
# geometry of the image


def _good_fft_size(n: int) -> int:
    """Smallest even n' >= n whose prime factors are 2, 3 and 5."""
    m = max(16, int(n) + (int(n) % 2))
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1 and m % 2 == 0:
            return m
        m += 2


def predicted_beam(info: MsInfo, params: ImagingParams) -> tuple[float, float, float]:
    """The restoring beam (arcsec, arcsec, deg) this weighting gives on this MS's uv coverage."""
    uvw = info.uvw_m if info.uvw_m is not None else np.zeros((3, 0))
    try:
        return predict_beam(uvw, info.freqs_hz, params.fov_deg, params.weighting, params.robust)
    except ValueError as exc:
        raise ImagingError(info.path, f"cannot predict the synthesised beam: {exc}") from exc


def choose_cell_and_size(info: MsInfo, params: ImagingParams,
                         beam_arcsec: tuple[float, float, float]) -> tuple[float, int]:
    """Cell (arcsec) and image size (pixels) from the params or the cell rule.

    Cell = beam minor axis / pixels_per_beam, rounded down to 0.1 arcsec (or
    3 significant figures below 1 arcsec), capped at NYQUIST_FRACTION of
    lambda_min / B_max; size covers fov_deg, rounded up to an FFT-friendly
    even number (see ImagingParams)."""
    if params.cell_arcsec is not None:
        cell = float(params.cell_arcsec)
    else:
        lam_min = SPEED_OF_LIGHT / float(np.max(info.freqs_hz))
        nyquist = math.degrees(lam_min / info.max_uv_m) * 3600.0 * NYQUIST_FRACTION
        cell = min(beam_arcsec[1] / params.pixels_per_beam, nyquist)
        cell = math.floor(cell * 10.0) / 10.0 if cell >= 1.0 else float(f"{cell:.3g}")
    if params.imsize is not None:
        size = int(params.imsize)
    else:
        size = _good_fft_size(math.ceil(params.fov_deg * 3600.0 / cell))
    return cell, size


def _datacolumn(info: MsInfo, params: ImagingParams) -> str:
    if params.datacolumn == "auto":
        return "corrected" if info.has_corrected else "data"
    if params.datacolumn == "corrected" and not info.has_corrected:
        raise ImagingError(info.path, "datacolumn 'corrected' asked for but the MS has no CORRECTED_DATA")
    return params.datacolumn


def imager_setup(info: MsInfo, params: ImagingParams) -> ImagerSetup:
    """Resolve the params against the MS into what both imagers are told."""
    beam = predicted_beam(info, params)
    cell, size = choose_cell_and_size(info, params, beam)
    return ImagerSetup(
        datacolumn=_datacolumn(info, params),
        imsize=size,
        cell_arcsec=cell,
        weighting=params.weighting,
        robust=params.robust,
        niter=params.niter,
        gain=params.gain,
        mgain=params.mgain,
        threshold_jy=params.threshold_jy,
        nsigma=params.auto_threshold_sigma,
        restoring_beam=tuple(round(float(x), 3) for x in beam),
        gridder=params.gridder,
        wprojplanes=params.wprojplanes,
        wgridder_accuracy=params.resolved_accuracy(bright_subtracted=False),
    )


def flagged_fraction(ms: Path) -> float:
    """Flagged share of the cross-correlation visibilities (calibration.apply's count)."""
    from ..calibration.apply import cross_flagged_fraction

    return float(cross_flagged_fraction(ms))


def _psf_beam(psf_fits: Path, cell: float, predicted: tuple[float, float, float]) -> tuple[float, float, float] | None:
    """Our fit to the imager's PSF; warns when it disagrees with the predicted beam."""
    if not psf_fits.exists():
        return None
    psf, _, _ = read_image_2d(psf_fits)
    try:
        fit = fit_beam(psf, cell)
    except ValueError as exc:
        log.warning("cannot fit the PSF %s: %s", psf_fits.name, exc)
        return None
    off = max(abs(fit[0] / predicted[0] - 1.0), abs(fit[1] / predicted[1] - 1.0))
    if off > PSF_MISMATCH:
        log.warning("the imager's PSF (%.1f\"x%.1f\") differs from the predicted restoring beam "
                    "(%.1f\"x%.1f\") by %.0f%% (per-channel flags or weights?)", fit[0], fit[1],
                    predicted[0], predicted[1], 100 * off)
    return fit


# --------------------------------------------------------------------------


def default_name(ms: Path) -> str:
    n = Path(ms).name.rstrip("/")
    return n.removesuffix(".ms")


def _run_imager(backend: str, setup: ImagerSetup, info: MsInfo, work: Path, name: str,
                logfile: Path, params: ImagingParams) -> tuple[np.ndarray, Any, Any, Path]:
    """Run one imager; return the restored image (data, header, wcs) and its PSF FITS."""
    if backend == "tclean":
        restored, psf = run_tclean(setup, info.path, work, name, logfile)
    else:
        restored, psf = run_wsclean(setup, info.path, work, name, logfile, params.threads)
    data, hdr_in, wcs = read_image_2d(restored)
    if not np.isfinite(data).any() or float(np.nanmax(np.abs(data))) == 0.0:
        raise ImagingError(info.path, f"{backend} made an all-zero/NaN image (all data flagged or zero?)"
                                      f"\n--- log tail ---\n{tail(logfile)}")
    return data, hdr_in, wcs, psf


def _log_plan(info: MsInfo, backend: str, flagged: float, setup: ImagerSetup) -> None:
    log.info(
        "image %s: backend=%s %d rows (%.1f%% of cross-correlations flagged), %d chan %.1f-%.1f MHz, %d times, "
        "B_max=%.0f m, predicted beam %.1f\"x%.1f\" pa %.0f, cell=%.2f\" size=%d, pointing dec=%.4f deg (%s)",
        info.path, backend, info.nrows, 100 * flagged, info.freqs_hz.size, info.freqs_hz.min() / 1e6,
        info.freqs_hz.max() / 1e6, info.times_mjd.size, info.max_uv_m, *setup.restoring_beam, setup.cell_arcsec,
        setup.imsize, math.degrees(info.pointing_dec_rad),
        "keyword" if info.pointing_dec_from_keyword else "from phase centre",
    )


def _write_products(out_dir: Path, name: str, data: np.ndarray, pb: np.ndarray, pbcor: np.ndarray,
                    header: Any, pblimit: float) -> tuple[Path, Path, Path]:
    """The three FITS products, each written atomically, with their headers."""
    return (
        write_fits_atomic(out_dir / f"{name}.image.fits", data, header),
        write_fits_atomic(out_dir / f"{name}.pb.fits", pb, pb_header(header, pblimit)),
        write_fits_atomic(out_dir / f"{name}.pbcor.fits", pbcor, pbcor_header(header, pblimit)),
    )


_WORK_INFIX = ".work-"


def _remove_stale_work(out_dir: Path, name: str) -> None:
    """Delete ``.<name>.<backend>.work-<host>-<pid>`` work directories left by an imaging of
    ``name`` on this host that was killed (``inprogress.remove_stale``)."""
    remove_stale(out_dir, f".{name}.*{_WORK_INFIX}*", _WORK_INFIX, f"image {name}")


def subtract_copy(info: MsInfo, setup: ImagerSetup, params: ImagingParams, catalog,
                  copy: Path) -> SubtractResult | None:
    """Copy ``info.path`` to ``copy`` and fit and subtract the catalogue's bright sources there.

    Returns the SubtractResult, or None when there is nothing to do (no
    catalogue, or ``params.subtract_bright`` off); the copy is removed again
    when no source qualified. The input MS is never changed."""
    from ..catalog import read_catalog
    from .subtract import subtract_bright_sources

    if not params.subtract_bright or catalog is None:
        return None
    rows = read_catalog(catalog) if isinstance(catalog, (str, Path)) else list(catalog)
    shutil.copytree(info.path, copy)
    column = "CORRECTED_DATA" if setup.datacolumn == "corrected" else "DATA"
    half = setup.imsize * setup.cell_arcsec / 3600.0 / 2.0
    res = subtract_bright_sources(copy, column, rows, info, half, params)
    if not res.fitted and not res.n_fixed:
        shutil.rmtree(copy, ignore_errors=True)
    return res


def subtract_for_imaging(ms: Path, copy: Path, params: ImagingParams, catalog) -> SubtractResult | None:
    """The image stage's bright-source subtraction alone, into ``copy``: for a
    caller that images one subtracted MS several times (``bench/image.py``
    gives both imagers the same one), passing the result to ``image_ms``."""
    info = read_ms_info(Path(ms).resolve())
    return subtract_copy(info, imager_setup(info, params), params, catalog, Path(copy))


def _subtract(info: MsInfo, setup: ImagerSetup, params: ImagingParams, catalog, work: Path, name: str):
    """(MsInfo of what to image, SubtractResult or None): a working copy with the
    catalogue's bright sources subtracted, or the input itself."""
    copy = work / f"{name}.subtracted.ms"
    res = subtract_copy(info, setup, params, catalog, copy)
    if res is None or (not res.fitted and not res.n_fixed):
        return info, res
    return replace(info, path=copy), res


def image_ms(ms: Path, out_dir: Path, params: ImagingParams | None = None, name: str | None = None,
             catalog: Path | str | list | None = None, subtracted: SubtractResult | None = None) -> ImageResult:
    """Image one MeasurementSet (Stokes I MFS) and primary-beam correct it.

    With a reference ``catalog`` (a path or CatalogSource rows) and
    ``params.subtract_bright``, its bright sources are first fitted and
    subtracted with the drift beam (subtract.py), the rest imaged, and the
    fitted sources restored into the image. ``subtracted`` is the
    SubtractResult of a subtraction already made into ``ms``
    (``subtract_for_imaging``): it is not repeated, and its sources are
    restored. WSClean's gridding accuracy follows (ImagingParams.resolved_accuracy).

    Raises ImagingError (naming the MS) when the MS is missing or empty,
    every cross-correlation is flagged, the imager fails (the reason carries
    the tail of the imager's log), or the image has no restoring beam."""
    t0 = time.monotonic()
    ms = Path(ms).resolve()  # the imagers run in a work directory of their own
    out_dir = Path(out_dir).resolve()
    params = params or ImagingParams()
    name = name or default_name(ms)
    backend = params.resolved_backend()
    info = read_ms_info(ms)
    flagged = flagged_fraction(ms)
    if flagged >= 1.0:
        raise ImagingError(ms, "every cross-correlation visibility is flagged: nothing to image")
    setup = imager_setup(info, params)
    _log_plan(info, backend, flagged, setup)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_work(out_dir, name)
    work = out_dir / f".{name}.{backend}{_WORK_INFIX}{owner_suffix()}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    logfile = work / f"{name}.{backend}.log"
    try:
        if subtracted is not None:
            img_info, sub = info, subtracted
        else:
            img_info, sub = _subtract(info, setup, params, catalog, work, name)
        setup = replace(setup, wgridder_accuracy=params.resolved_accuracy(bright_subtracted=sub is not None))
        t_img = time.monotonic()
        data, hdr_in, wcs, psf_fits = _run_imager(backend, setup, img_info, work, name, logfile, params)
        t_img = time.monotonic() - t_img
        psf_beam = _psf_beam(psf_fits, setup.cell_arcsec, setup.restoring_beam)
        celestial = celestial_header(hdr_in)
        bm = beam_deg(celestial)
        if bm is None:
            raise ImagingError(ms, f"{backend} image has no restoring beam (BMAJ/BMIN missing or zero)")
        freq = float(celestial.get("FREQ", info.freq_hz))
        header = product_header(celestial, info, setup, backend=backend, params=params, name=name,
                                freq_hz=freq, flagged_fraction=flagged, psf_beam=psf_beam)

        t_pb = time.monotonic()
        pb = drift_beam_for_ms(info, wcs, data.shape, nfreq=params.beam_nfreq)
        t_pb = time.monotonic() - t_pb
        if sub is not None and sub.fitted:
            n_back = restore_sources(data, wcs, (bm[0] * 3600.0, bm[1] * 3600.0, bm[2]), pb, sub.fitted, freq)
            log.info("image %s: %d of %d fitted sources restored on the image", name, n_back, len(sub.fitted))
        with np.errstate(invalid="ignore", divide="ignore"):
            pbcor = np.where(pb >= params.pblimit, data / pb, np.nan)

        image_fits, pb_fits, pbcor_fits = _write_products(out_dir, name, data, pb, pbcor, header, params.pblimit)
        log_path = out_dir / f"{name}.{backend}.log"
        if logfile.exists():
            os.replace(logfile, log_path)
        else:
            log_path = None
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rms = clipped_rms(data)
    peak = float(np.nanmax(data))
    pc_peak = float(np.nanmax(pbcor)) if np.isfinite(pbcor).any() else float("nan")
    beam_arcsec = (bm[0] * 3600.0, bm[1] * 3600.0, bm[2])
    seconds = time.monotonic() - t0
    log.info(
        "image %s done: rms=%.3g Jy/beam peak=%.4g Jy/beam (S/N %.0f) pbcor peak=%.4g, beam=%.1f\"x%.1f\" pa=%.1f, "
        "imager %.1f s, pb %.1f s, total %.1f s",
        name, rms, peak, peak / rms if rms > 0 else float("inf"), pc_peak, *beam_arcsec, t_img, t_pb, seconds,
    )
    return ImageResult(
        image_fits=image_fits,
        pbcor_fits=pbcor_fits,
        pb_fits=pb_fits,
        rms_jy=rms,
        peak_jy=peak,
        beam_arcsec=beam_arcsec,
        cell_arcsec=setup.cell_arcsec,
        imsize=setup.imsize,
        freq_hz=freq,
        mid_mjd=info.mid_mjd,
        backend=backend,
        ra_deg=math.degrees(info.phase_ra_rad) % 360.0,
        dec_deg=math.degrees(info.phase_dec_rad),
        pbcor_peak_jy=pc_peak,
        seconds=seconds,
        imager_seconds=t_img,
        log_path=log_path,
        flagged_fraction=flagged,
        bandwidth_hz=info.bandwidth_hz,
        psf_beam_arcsec=psf_beam,
        imaging=setup.to_dict(),
        subtracted=sub.summary() if sub is not None else None,
        subtract_seconds=sub.seconds if sub is not None else None,
    )
