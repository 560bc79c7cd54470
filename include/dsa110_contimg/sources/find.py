"""Source finding with PyBDSF on images and mosaics.

PyBDSF finds islands above a threshold on its own background-rms map, fits
them with Gaussians and groups the Gaussians into sources. We read back its
source list (catalog_type 'srl') and keep its positions, fluxes and fitted
shapes, but compute every error ourselves with Condon (1997), see
:mod:`.errors`, so that the errors are the same formula for every image and
are unit-tested against hand values.

PyBDSF writes a log (and on request other files) named after its input
image, and prints to the terminal. We therefore run it on a symbolic link to
the image inside a private temporary directory with ``outdir`` there too:
nothing is ever written beside the image, and two processes working on the
same image never share a file. PyBDSF keeps one process-wide logger, so use
processes (as Airflow and our CLI do), not threads, for parallel runs.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ContimgError
from ..imaging.fitsutil import beam_deg, image_frequency, read_image_2d
from .errors import GaussianErrors, condon_errors

log = logging.getLogger(__name__)

# PyBDSF refuses an image without a frequency; the band centre stands in (it
# only affects PyBDSF's own spectral-index options, which we do not use).
FALLBACK_FREQ_HZ = 1.405e9


class SourceFindingError(ContimgError):
    """PyBDSF could not process an image (the reason includes its log's tail)."""


@dataclass(frozen=True)
class FindParams:
    """How to find sources.

    snr: peak threshold in units of the local rms (PyBDSF ``thresh_pix``), applied
        to each source's own fitted peak as well (``above_threshold``).
    island_snr: island boundary threshold (``thresh_isl``).
    box: rms box size in pixels (step box/3); None lets PyBDSF choose. Use a
        box of a few tens of beams on pb-corrected images and mosaics, whose
        noise rises towards the edges.
    rms: a fixed rms in Jy/beam instead of a map.
    flux_cal_frac: flux-scale error added in quadrature to the Condon flux
        errors. 3 % is a typical L-band absolute flux-scale uncertainty;
        set 0 to compare with thermal errors only.
    position_cal_arcsec: systematic position error added in quadrature.
    ncores: PyBDSF's Gaussian-fitting processes (it forks); 1 is safest inside
        a worker that already runs in parallel with others.
    flag_maxsize_fwhm: PyBDSF rejects a Gaussian of axis ratio > 2 whose
        contour at this many FWHM leaves its island (default there 0.5, the
        half-power contour). A faint source's 3-sigma island is smaller than
        its half-power contour, so with an elongated beam (DSA-110's can be
        3:1 and more) that check drops correct fits: 5 % of the 10-sigma
        sources of a synthetic 140"x40" beam image, 30 % on a simulated
        mosaic. 0 turns it off; the island-size and 25-beam checks remain.
    """

    snr: float = 5.0
    island_snr: float = 3.0
    box: int | None = None
    rms: float | None = None
    flux_cal_frac: float = 0.03
    position_cal_arcsec: float = 0.0
    ncores: int = 1
    flag_maxsize_fwhm: float = 0.0


@dataclass(frozen=True)
class DetectedSource:
    """One PyBDSF source. Positions ICRS deg; peak in Jy/beam; flux the
    integrated flux density in Jy; errors 1 sigma per Condon (1997);
    ``maj``/``min``/``pa`` the fitted (beam-convolved) FWHM shape and
    ``dc_maj``/``dc_min`` the deconvolved one; ``ra_err_arcsec`` is along RA
    on the sky (x cos dec). ``s_code`` is PyBDSF's: S single Gaussian, M
    several Gaussians, C single Gaussian sharing an island."""

    ra_deg: float
    dec_deg: float
    flux_jy: float
    flux_err_jy: float
    peak_jy: float
    peak_err_jy: float
    ra_err_arcsec: float
    dec_err_arcsec: float
    maj_arcsec: float
    min_arcsec: float
    pa_deg: float
    dc_maj_arcsec: float
    dc_min_arcsec: float
    snr: float  # peak / rms
    rms_jy: float  # local rms (PyBDSF island rms), Jy/beam
    x_pix: float  # 0-based pixel position of (ra, dec)
    y_pix: float
    s_code: str
    island_id: int
    freq_hz: float | None = None


@dataclass(frozen=True)
class NoiseMap:
    """Local rms (Jy/beam) on the image's pixel grid and the usable area:
    pixels with data and a positive rms, at least a beam FWHM from any edge
    or blank region (a source there cannot be fitted)."""

    rms: np.ndarray
    usable: np.ndarray
    wcs: Any  # astropy.wcs.WCS (celestial)

    def pixels(self, ra_deg, dec_deg) -> tuple[np.ndarray, np.ndarray]:
        """Nearest pixel (x, y) indices, -1 outside the image."""
        x, y = self.wcs.world_to_pixel_values(np.atleast_1d(ra_deg), np.atleast_1d(dec_deg))
        ny, nx = self.rms.shape
        bad = ~(np.isfinite(x) & np.isfinite(y))
        xi = np.round(np.where(bad, -1.0, x)).astype(int)
        yi = np.round(np.where(bad, -1.0, y)).astype(int)
        out = bad | (xi < 0) | (yi < 0) | (xi >= nx) | (yi >= ny)
        return np.where(out, -1, xi), np.where(out, -1, yi)

    def rms_at(self, ra_deg, dec_deg) -> np.ndarray:
        """Local rms at each position; NaN outside the usable area."""
        xi, yi = self.pixels(ra_deg, dec_deg)
        ok = xi >= 0
        out = np.full(xi.shape, np.nan)
        out[ok] = np.where(self.usable[yi[ok], xi[ok]], self.rms[yi[ok], xi[ok]], np.nan)
        return out


@dataclass(frozen=True)
class Detection:
    """What one PyBDSF run found, with the noise it measured."""

    fits_path: Path
    sources: tuple[DetectedSource, ...]
    noise: NoiseMap
    freq_hz: float | None
    beam_arcsec: tuple[float, float, float]
    seconds: float


# --------------------------------------------------------------------------
def _pybdsf_options(params: FindParams, workdir: Path, freq_hz: float | None) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "quiet": True, "outdir": str(workdir), "thresh": "hard", "thresh_pix": float(params.snr),
        "thresh_isl": float(min(params.island_snr, params.snr)), "ncores": int(params.ncores),
        # interferometric images have zero mean; estimating one only adds noise
        "mean_map": "zero", "frequency": float(freq_hz or FALLBACK_FREQ_HZ),
        "flag_maxsize_fwhm": float(params.flag_maxsize_fwhm),
    }
    if params.rms is not None:
        opts.update(rms_map=False, rms_value=float(params.rms))
    else:
        opts["rms_map"] = True
        if params.box:
            opts["rms_box"] = (int(params.box), max(1, int(params.box) // 3))
    return opts


def _close_pybdsf_logger() -> None:
    """PyBDSF leaves its log file open on a process-wide logger: close it."""
    logger = logging.getLogger("PyBDSF")
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()


def _log_tail(workdir: Path, lines: int = 8) -> str:
    logs = sorted(workdir.glob("*.pybdsf.log"))
    if not logs:
        return ""
    tail = logs[0].read_text(errors="replace").strip().splitlines()[-lines:]
    return " | ".join(t.strip() for t in tail)


def _run_pybdsf(fits_path: Path, params: FindParams, workdir: Path, freq_hz: float | None):
    """Process the image; return (source table or None, rms map)."""
    import bdsf
    from astropy.io import fits
    from astropy.table import Table

    link = workdir / "image.fits"
    os.symlink(fits_path.resolve(), link)
    # its own log file has every line; keep them out of the task log
    logging.getLogger("PyBDSF").propagate = False
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = bdsf.process_image(str(link), **_pybdsf_options(params, workdir, freq_hz))
            img.export_image(outfile=str(workdir / "rms.fits"), img_type="rms", clobber=True)
            table = None
            if int(getattr(img, "nsrc", 0) or 0) > 0:
                img.write_catalog(outfile=str(workdir / "srl.fits"), format="fits", catalog_type="srl",
                                  clobber=True)
                table = Table.read(workdir / "srl.fits")
        rms = np.squeeze(np.asarray(fits.getdata(workdir / "rms.fits"), dtype=float))
    except Exception as exc:  # PyBDSF raises RuntimeError and others; name the file and why
        raise SourceFindingError(fits_path, f"PyBDSF failed: {exc}. Log: {_log_tail(workdir)}") from exc
    finally:
        _close_pybdsf_logger()
    return table, rms


def _usable_area(data: np.ndarray, rms: np.ndarray, beam_fwhm_pix: float) -> np.ndarray:
    from scipy import ndimage

    with np.errstate(invalid="ignore"):
        ok = np.isfinite(data) & np.isfinite(rms) & (rms > 0)
    margin = max(1, math.ceil(beam_fwhm_pix))
    return ndimage.binary_erosion(ok, iterations=margin, border_value=0)


def _beam_fwhm_pix(header, wcs) -> float:
    bmaj = beam_deg(header)[0]
    scale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))))
    return bmaj / scale


def _source(row, wcs, beam_as: tuple[float, float, float], params: FindParams,
            freq_hz: float | None, floor: np.ndarray | None = None) -> DetectedSource:
    """One srl row -> DetectedSource with Condon errors (rms: the island's, or the
    noise floor at the source when that is higher)."""
    deg = 3600.0
    ra, dec = float(row["RA"]) % 360.0, float(row["DEC"])
    x, y = wcs.world_to_pixel_values(ra, dec)
    peak, rms = float(row["Peak_flux"]), max(float(row["Isl_rms"]), _floor_at(floor, x, y))
    maj, mn, pa = float(row["Maj"]) * deg, float(row["Min"]) * deg, float(row["PA"])
    # a fit can come out narrower than the beam (noise); Condon's formulas need
    # the fitted size, but not below the beam it was convolved with
    try:
        err = condon_errors(peak, rms, max(maj, beam_as[0]), max(mn, beam_as[1]), pa, beam_as[0], beam_as[1],
                            flux_jy=float(row["Total_flux"]), flux_cal_frac=params.flux_cal_frac,
                            position_cal=params.position_cal_arcsec)
    except ValueError:  # zero rms (a noise-free simulation) or a negative peak: errors unknown
        err = GaussianErrors(*([math.nan] * 9))
    return DetectedSource(
        ra_deg=ra, dec_deg=dec, flux_jy=float(row["Total_flux"]), flux_err_jy=err.flux, peak_jy=peak,
        peak_err_jy=err.peak, ra_err_arcsec=err.ra, dec_err_arcsec=err.dec, maj_arcsec=maj, min_arcsec=mn,
        pa_deg=pa, dc_maj_arcsec=float(row["DC_Maj"]) * deg, dc_min_arcsec=float(row["DC_Min"]) * deg,
        snr=peak / rms if rms > 0 else math.inf, rms_jy=rms, x_pix=float(x), y_pix=float(y), s_code=str(row["S_Code"]).strip(),
        island_id=int(row["Isl_id"]), freq_hz=freq_hz,
    )


def _floor_at(floor: np.ndarray | None, x: float, y: float) -> float:
    """The noise floor at the nearest pixel (0 without a floor, outside it, or where it is NaN)."""
    if floor is None or not (np.isfinite(x) and np.isfinite(y)):
        return 0.0
    xi, yi = int(round(float(x))), int(round(float(y)))
    if not (0 <= yi < floor.shape[0] and 0 <= xi < floor.shape[1]):
        return 0.0
    v = float(floor[yi, xi])
    return v if math.isfinite(v) else 0.0


def _read_floor(noise_floor: Path | np.ndarray | None, shape: tuple[int, ...], fits_path: Path) -> np.ndarray | None:
    """The expected-noise map on the image's grid (a FITS path or an array), or None."""
    if noise_floor is None:
        return None
    if isinstance(noise_floor, np.ndarray):
        floor = np.asarray(noise_floor, dtype=float)
    else:
        try:
            floor, _, _ = read_image_2d(Path(noise_floor))
        except Exception as exc:
            raise SourceFindingError(fits_path, f"cannot read the noise map {noise_floor}: {exc}") from exc
    floor = np.squeeze(np.asarray(floor, dtype=float))
    if floor.shape != tuple(shape):
        raise SourceFindingError(fits_path, f"noise map shape {floor.shape} differs from the image's {tuple(shape)}")
    return floor


def above_threshold(rows: list[DetectedSource], snr: float) -> tuple[list[DetectedSource], int]:
    """The sources whose own fitted peak reaches ``snr`` x their rms, and how many did not.

    Why: PyBDSF's ``thresh_pix`` applies to an island's brightest pixel, not
    to each Gaussian it fits there. An island around a real source also
    holds the noise and residual bumps beside it, above the 3-sigma island
    boundary; PyBDSF may fit one of them as a Gaussian of its own, too far
    from the source to be grouped with it, and report it as a source at 4
    sigma. A catalogue said to be complete to ``snr`` sigma keeps only the
    sources that reach it themselves (on the imaging proof's images, 3 of the
    4 false detections were such components, at S/N 4.0-4.9, 1-2 beams from
    a real source)."""
    kept = [r for r in rows if r.snr >= snr]
    return kept, len(rows) - len(kept)


def detect(fits_path: Path, params: FindParams = FindParams(),
           noise_floor: Path | np.ndarray | None = None) -> Detection:
    """Run PyBDSF on a FITS image or mosaic; sources brightest (flux) first.

    ``noise_floor`` is the noise each pixel is known to have at least, on the
    image's grid (a FITS path or an array): a mosaic's ``.noise.fits``, or a
    pb-corrected image's flat rms / PB. The rms used for the threshold, the
    errors and the noise map is then the higher of PyBDSF's estimate and that
    floor. Why: PyBDSF estimates the rms in boxes of tens of beams, and where
    a pb-corrected image's noise rises steeply towards its edge (as 1/PB) the
    box averages over the rise and reads it low: on the imaging proof's mosaic
    0.6 mJy/beam against 1.0 expected near the northern edge, so noise peaks
    there passed as 5-sigma sources. Where residual sidelobes raise the noise
    above the floor, PyBDSF's higher estimate still counts.

    Raises :class:`SourceFindingError` naming the file when the image has no
    restoring beam, PyBDSF fails or the noise map does not fit the image."""
    t0 = time.monotonic()
    fits_path = Path(fits_path)
    if not fits_path.exists():
        raise SourceFindingError(fits_path, "image does not exist")
    data, header, wcs = read_image_2d(fits_path)
    beam = beam_deg(header)
    if beam is None:
        raise SourceFindingError(fits_path, "no restoring beam (BMAJ/BMIN) in the header")
    freq = image_frequency(header)
    with tempfile.TemporaryDirectory(prefix="contimg-pybdsf-") as tmp:
        table, rms = _run_pybdsf(fits_path, params, Path(tmp), freq)
    if rms.shape != data.shape:
        raise SourceFindingError(fits_path, f"PyBDSF rms map shape {rms.shape} differs from image {data.shape}")
    floor = _read_floor(noise_floor, data.shape, fits_path)
    if floor is not None:
        rms = np.fmax(rms, floor)
    beam_as = (beam[0] * 3600.0, beam[1] * 3600.0, beam[2])
    rows = [] if table is None else [_source(r, wcs, beam_as, params, freq, floor) for r in table]
    rows, n_faint = above_threshold(rows, params.snr)
    rows.sort(key=lambda s: -s.flux_jy)
    noise = NoiseMap(rms=rms, usable=_usable_area(data, rms, _beam_fwhm_pix(header, wcs)), wcs=wcs)
    dt = time.monotonic() - t0
    log.info("find_sources %s: %d sources above %.1f sigma (%d fitted components below it dropped; "
             "median rms %.3g Jy/beam%s, %.0f%% usable) in %.1f s", fits_path.name, len(rows), params.snr, n_faint,
             float(np.nanmedian(rms)), " with the noise floor" if floor is not None else "",
             100.0 * noise.usable.mean(), dt)
    return Detection(fits_path, tuple(rows), noise, freq, beam_as, dt)


def find_sources(fits_path: Path, *, snr: float = 5.0, box: int | None = None, rms: float | None = None,
                 **params: Any) -> list[DetectedSource]:
    """Sources in a FITS image or mosaic, brightest first (:func:`detect` with
    ``FindParams(snr=snr, box=box, rms=rms, **params)``)."""
    return list(detect(fits_path, FindParams(snr=snr, box=box, rms=rms, **params)).sources)


__all__ = ["DetectedSource", "Detection", "FindParams", "NoiseMap", "SourceFindingError", "detect", "find_sources"]
