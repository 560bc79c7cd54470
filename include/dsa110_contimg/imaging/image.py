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
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import casa_env
from ..errors import ImagingError
from ..results import jsonable
from ..instrument import SPEED_OF_LIGHT
from .beam import drift_beam_for_ms
from .fitsutil import beam_deg, celestial_header, read_image_2d, robust_rms, write_fits_atomic
from .msinfo import MsInfo, read_ms_info
from .params import ImagingParams

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 25


@dataclass(frozen=True)
class ImageResult:
    """What the image stage produced (travels through XCom via ``to_dict``).

    beam_arcsec is (bmaj arcsec, bmin arcsec, bpa deg); rms_jy is the robust
    (MAD) rms of the flat image and peak_jy its maximum, both Jy/beam;
    ra_deg/dec_deg the image (phase) centre; mid_mjd the observation mid-time."""

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


def choose_cell_and_size(info: MsInfo, params: ImagingParams) -> tuple[float, int]:
    """Cell (arcsec) and image size (pixels) from the params or the MS uvw.

    Cell = (lambda_min / B_max) / oversample, rounded down to 0.1 arcsec;
    size covers fov_deg, rounded up to an FFT-friendly even number."""
    if params.cell_arcsec is not None:
        cell = float(params.cell_arcsec)
    else:
        lam_min = SPEED_OF_LIGHT / float(np.max(info.freqs_hz))
        cell = math.degrees(lam_min / info.max_uv_m) * 3600.0 / params.oversample
        cell = max(0.1, math.floor(cell * 10.0) / 10.0)
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


def _tail(path: Path | None, n: int = LOG_TAIL_LINES) -> str:
    if path is None or not Path(path).exists():
        return "(no log)"
    lines = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------
# imagers: each returns the path of the restored FITS image it wrote in work/


def _run_tclean(info: MsInfo, work: Path, name: str, cell: float, size: int, params: ImagingParams, logfile: Path) -> Path:
    cts = casa_env.casatasks()
    casalog = cts.casalog
    previous_log = casalog.logfile()
    casalog.setlogfile(str(logfile))
    imagename = str(work / name)
    threshold = f"{params.threshold_jy}Jy" if params.threshold_jy is not None else "0Jy"
    nsigma = 0.0 if params.threshold_jy is not None else params.auto_threshold_sigma
    try:
        ret = cts.tclean(
            vis=str(info.path),
            imagename=imagename,
            datacolumn=_datacolumn(info, params),
            specmode="mfs",
            nterms=1,
            stokes="I",
            imsize=[size, size],
            cell=f"{cell}arcsec",
            gridder=params.gridder,
            wprojplanes=params.wprojplanes,
            # the primary beam is ours: no tclean pb mask/normalisation
            pblimit=-1e-4,
            deconvolver="hogbom",
            weighting=params.weighting,
            robust=params.robust,
            niter=params.niter,
            gain=params.gain,
            threshold=threshold,
            nsigma=nsigma,
            interactive=False,
            savemodel="none",
            pbcor=False,
        )
        if isinstance(ret, dict) and ret.get("stopcode") is None and not Path(imagename + ".image").exists():
            raise RuntimeError(f"tclean returned {ret!r}")
        if not Path(imagename + ".image").exists():
            raise RuntimeError("tclean wrote no restored image")
        fits_out = work / f"{name}-image.fits"
        cts.exportfits(imagename=imagename + ".image", fitsimage=str(fits_out), overwrite=True, velocity=False)
        if not fits_out.exists():
            raise RuntimeError("exportfits wrote nothing")
    except ImagingError:
        raise
    except Exception as exc:
        raise ImagingError(info.path, f"tclean failed: {exc}\n--- CASA log tail ---\n{_tail(logfile)}") from exc
    finally:
        try:
            casalog.setlogfile(previous_log)
        except Exception:  # pragma: no cover
            pass
    return fits_out


def _run_wsclean(info: MsInfo, work: Path, name: str, cell: float, size: int, params: ImagingParams, logfile: Path) -> Path:
    exe = shutil.which("wsclean")
    if exe is None:
        raise ImagingError(info.path, "wsclean is not on PATH")
    col = {"data": "DATA", "corrected": "CORRECTED_DATA"}[_datacolumn(info, params)]
    cmd = [exe, "-name", str(work / name), "-size", str(size), str(size), "-scale", f"{cell}asec",
           "-pol", "I", "-use-wgridder", "-data-column", col, "-niter", str(params.niter),
           "-mgain", str(params.mgain), "-gain", str(params.gain), "-no-update-model-required"]
    if params.weighting == "briggs":
        cmd += ["-weight", "briggs", str(params.robust)]
    else:
        cmd += ["-weight", params.weighting]
    if params.threshold_jy is not None:
        cmd += ["-threshold", str(params.threshold_jy)]
    else:
        cmd += ["-auto-threshold", str(params.auto_threshold_sigma)]
    cmd += ["-j", str(params.threads or os.cpu_count() or 1)]
    cmd.append(str(info.path))
    log.info("running %s", " ".join(cmd))
    with open(logfile, "w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=work)
    fits_out = work / f"{name}-image.fits"
    if proc.returncode != 0 or not fits_out.exists():
        raise ImagingError(
            info.path,
            f"wsclean failed (exit {proc.returncode}){'' if fits_out.exists() else ', no image written'}"
            f"\n--- wsclean log tail ---\n{_tail(logfile)}",
        )
    return fits_out


# --------------------------------------------------------------------------


def default_name(ms: Path) -> str:
    n = Path(ms).name.rstrip("/")
    return n[:-3] if n.endswith(".ms") else n


def image_ms(ms: Path, out_dir: Path, params: ImagingParams | None = None, name: str | None = None) -> ImageResult:
    """Image one MeasurementSet (Stokes I MFS) and primary-beam correct it.

    Raises ImagingError (naming the MS) when the MS is missing or empty, the
    imager fails (the reason carries the tail of the imager's log), or the
    image has no restoring beam."""
    t0 = time.monotonic()
    ms = Path(ms).resolve()  # the imagers run in a work directory of their own
    out_dir = Path(out_dir).resolve()
    params = params or ImagingParams()
    name = name or default_name(ms)
    backend = params.resolved_backend()
    info = read_ms_info(ms)
    cell, size = choose_cell_and_size(info, params)
    log.info(
        "image %s: backend=%s %d rows, %d chan %.1f-%.1f MHz, %d times, B_max=%.0f m, cell=%.1f\" size=%d, "
        "pointing dec=%.4f deg (%s)",
        ms, backend, info.nrows, info.freqs_hz.size, info.freqs_hz.min() / 1e6, info.freqs_hz.max() / 1e6,
        info.times_mjd.size, info.max_uv_m, cell, size, math.degrees(info.pointing_dec_rad),
        "keyword" if info.pointing_dec_from_keyword else "from phase centre",
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / f".{name}.{backend}.work-{os.getpid()}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    logfile = work / f"{name}.{backend}.log"
    try:
        t_img = time.monotonic()
        if backend == "tclean":
            restored = _run_tclean(info, work, name, cell, size, params, logfile)
        else:
            restored = _run_wsclean(info, work, name, cell, size, params, logfile)
        t_img = time.monotonic() - t_img

        data, hdr_in, wcs = read_image_2d(restored)
        if not np.isfinite(data).any() or float(np.nanmax(np.abs(data))) == 0.0:
            raise ImagingError(ms, f"{backend} made an all-zero/NaN image (all data flagged or zero?)"
                                   f"\n--- log tail ---\n{_tail(logfile)}")
        header = celestial_header(hdr_in)
        bm = beam_deg(header)
        if bm is None:
            raise ImagingError(ms, f"{backend} image has no restoring beam (BMAJ/BMIN missing or zero)")
        freq = float(header.get("FREQ", info.freq_hz))
        header["FREQ"] = (freq, "[Hz] image (MFS reference) frequency")
        header["BUNIT"] = "JY/BEAM"
        header["MJD-MID"] = (info.mid_mjd, "observation mid-time (MJD UTC)")
        header["IMAGER"] = (backend, "imager that made the flat image")
        header["PBDEC"] = (math.degrees(info.pointing_dec_rad), "[deg] apparent pointing declination")

        t_pb = time.monotonic()
        pb = drift_beam_for_ms(info, wcs, data.shape, nfreq=params.beam_nfreq)
        t_pb = time.monotonic() - t_pb
        with np.errstate(invalid="ignore", divide="ignore"):
            pbcor = np.where(pb >= params.pblimit, data / pb, np.nan)

        image_fits = write_fits_atomic(out_dir / f"{name}.image.fits", data, header)
        pb_header = header.copy()
        pb_header["BUNIT"] = ""
        pb_header["PBLIMIT"] = params.pblimit
        pb_fits = write_fits_atomic(out_dir / f"{name}.pb.fits", pb, pb_header)
        pc_header = header.copy()
        pc_header["PBLIMIT"] = (params.pblimit, "pbcor is NaN where pb < PBLIMIT")
        pbcor_fits = write_fits_atomic(out_dir / f"{name}.pbcor.fits", pbcor, pc_header)
        log_path = out_dir / f"{name}.{backend}.log"
        if logfile.exists():
            os.replace(logfile, log_path)
        else:
            log_path = None
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rms = robust_rms(data)
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
        cell_arcsec=cell,
        imsize=size,
        freq_hz=freq,
        mid_mjd=info.mid_mjd,
        backend=backend,
        ra_deg=math.degrees(info.phase_ra_rad) % 360.0,
        dec_deg=math.degrees(info.phase_dec_rad),
        pbcor_peak_jy=pc_peak,
        seconds=seconds,
        log_path=log_path,
    )
