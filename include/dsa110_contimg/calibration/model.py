"""The calibrator's sky model for a drift scan: catalogue (or standard) flux times the beam.

The calibrator drifts through the fixed meridian beam during the ~5-minute
observation, so the model is a point source at the calibrator's ICRS position
with flux ``S(nu) * B(t, nu)``: the spectrum (from the shipped calibrator
table, or CASA's ``setjy`` with the Perley-Butler 2017 scale for the standard
flux calibrators) times the Airy power pattern of the dish evaluated at the
calibrator's separation from the meridian pointing at every integration. With
that model a bandpass solved with ``solnorm=False`` carries the absolute gain
amplitudes.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .. import casa_env
from .. import geometry
from ..errors import CalibrationError
from ..geometry import angular_separation, meridian_direction
from ..instrument import airy_beam

log = logging.getLogger(__name__)

POINTING_DEC_KEYWORD = "DSA110_POINTING_DEC_RAD"
CHUNK_ELEMENTS = 4_000_000  # visibilities per read/write chunk (~64 MB as complex128)
# Flux calibrators whose spectra CASA's setjy knows on the Perley-Butler 2017 scale.
STANDARD_CALIBRATORS = ("3C48", "3C138", "3C147", "3C286")
FLUX_STANDARD = "Perley-Butler 2017"


def icrs_to_itrs(ra_rad, dec_rad, times) -> np.ndarray:
    """geometry.icrs_to_itrs, (Ntimes, Nsrc, 3), with a broadcast-safe fallback.

    geometry.icrs_to_itrs multiplies a Time by an ndarray, which astropy 8
    rejects (TypeError); the fallback does the same transform letting astropy
    broadcast the obstime against the coordinates."""
    try:
        return geometry.icrs_to_itrs(ra_rad, dec_rad, times)
    except TypeError:
        pass
    from astropy import units as u
    from astropy.coordinates import ICRS, ITRS, SkyCoord
    from astropy.time import Time

    ra = np.atleast_1d(np.asarray(ra_rad, dtype=float))
    dec = np.atleast_1d(np.asarray(dec_rad, dtype=float))
    t = Time(np.atleast_1d(times.jd), format="jd", scale="utc")
    sc = SkyCoord(ra=ra[None, :] * u.rad, dec=dec[None, :] * u.rad, frame=ICRS())
    xyz = np.moveaxis(sc.transform_to(ITRS(obstime=t[:, None])).cartesian.xyz.value, 0, -1)
    return xyz / np.linalg.norm(xyz, axis=-1, keepdims=True)


# --------------------------------------------------------------------------
# MS helpers
# --------------------------------------------------------------------------
def read_ms_basics(ms: Path) -> dict[str, Any]:
    """Unique times (s, MJD-seconds UTC), channel frequencies, pointing dec, phase centre."""
    ct = casa_env.casatools()
    tb = ct.table()
    try:
        tb.open(str(ms))
        times = np.unique(tb.getcol("TIME"))
        kw = tb.keywordnames()
        pointing = float(tb.getkeyword(POINTING_DEC_KEYWORD)) if POINTING_DEC_KEYWORD in kw else None
        tb.close()
        tb.open(str(ms / "SPECTRAL_WINDOW"))
        freqs = np.asarray(tb.getcol("CHAN_FREQ"))[:, 0].astype(float)
        tb.close()
        tb.open(str(ms / "FIELD"))
        phase_dir = np.asarray(tb.getcol("PHASE_DIR"))[:, 0, 0].astype(float)
        tb.close()
    except RuntimeError as exc:
        raise CalibrationError(ms, f"cannot read MeasurementSet: {exc}") from exc
    finally:
        tb.done()
    if times.size == 0:
        raise CalibrationError(ms, "MeasurementSet has no rows")
    mid_mjd = float(0.5 * (times.min() + times.max()) / 86400.0)
    if pointing is None:
        # The phase centre is the ICRS position of the meridian at the mid-time,
        # so its apparent (ITRS) declination is the pointing declination.
        from astropy.time import Time

        v = icrs_to_itrs(phase_dir[:1], phase_dir[1:2], Time(mid_mjd, format="mjd", scale="utc"))[0, 0]
        pointing = float(np.arcsin(np.clip(v[2], -1.0, 1.0)))
        log.info("%s: no %s keyword; pointing dec from the phase centre = %.4f deg",
                 ms.name, POINTING_DEC_KEYWORD, np.rad2deg(pointing))
    return {"times_s": times, "freqs_hz": freqs, "pointing_dec_rad": pointing,
            "phase_dir_rad": phase_dir, "mid_mjd": mid_mjd}


def calibrator_beam(times_s: np.ndarray, freqs_hz: np.ndarray, ra_deg: float, dec_deg: float,
                    pointing_dec_rad: float) -> np.ndarray:
    """Beam power at the calibrator, shape (Ntimes, Nchan), for MS TIMEs (s).

    The dish points at the meridian at apparent declination ``pointing_dec_rad``,
    a direction fixed in ITRS; the calibrator's ITRS direction moves with time."""
    from astropy.time import Time

    t = Time(np.asarray(times_s) / 86400.0, format="mjd", scale="utc")
    src = icrs_to_itrs(np.array([np.deg2rad(ra_deg)]), np.array([np.deg2rad(dec_deg)]), t)[:, 0, :]
    point = meridian_direction(pointing_dec_rad)
    sep = angular_separation(src, point[None, :])  # (Nt,)
    return airy_beam(sep[:, None], np.asarray(freqs_hz)[None, :])



def set_calibrator_model(ms: Path, calibrator, basics: dict[str, Any], work: Path,
                         label: str | None = None) -> str:
    """MODEL_DATA = S(nu) * beam(t, nu) * (unit point source at the calibrator).

    ``S(nu)`` comes from CASA's ``setjy`` (Perley-Butler 2017) for the standard
    flux calibrators, else from the shipped calibrator table. Returns the flux
    source used ("Perley-Butler 2017" or "calibrator table")."""
    if str(calibrator.name).upper() in STANDARD_CALIBRATORS:
        source = _model_from_setjy(ms, calibrator, basics)
        scale = calibrator_beam(basics["times_s"], basics["freqs_hz"], calibrator.ra_deg, calibrator.dec_deg,
                                basics["pointing_dec_rad"])
    else:
        _model_unit_point(ms, calibrator, work)
        source = "calibrator table"
        flux = np.array([float(calibrator.flux_at(f)) for f in basics["freqs_hz"]])
        scale = calibrator_beam(basics["times_s"], basics["freqs_hz"], calibrator.ra_deg, calibrator.dec_deg,
                                basics["pointing_dec_rad"]) * flux[None, :]
    _scale_model(ms, basics["times_s"], scale)
    log.info("%s: model %s (%s), scale %.3g-%.3g over %d integrations x %d channels",
             label or ms.name, calibrator.name, source, scale.min(), scale.max(), scale.shape[0], scale.shape[1])
    return source


def _model_unit_point(ms: Path, calibrator, work: Path) -> None:
    """MODEL_DATA = a 1 Jy flat-spectrum point source at the calibrator (CASA ``ft``)."""
    ct = casa_env.casatools()
    cl_path = work / "calibrator.cl"
    cl = ct.componentlist()
    try:
        cl.done()
        cl.addcomponent(dir=f"J2000 {calibrator.ra_deg}deg {calibrator.dec_deg}deg", flux=1.0, fluxunit="Jy",
                        freq="1.4GHz", shape="point", spectrumtype="constant", label=str(calibrator.name))
        cl.rename(str(cl_path))
        cl.close(log=False)
    finally:
        cl.done()
    casa_env.casatasks().ft(vis=str(ms), complist=str(cl_path), usescratch=True, incremental=False)


def _model_from_setjy(ms: Path, calibrator, basics: dict[str, Any]) -> str:
    """Standard flux calibrator: name the field after it, then ``setjy`` at its position.

    setjy recognises the source by field name and puts the model at the
    field's phase centre, so the MS must be phase-shifted to the calibrator
    first (:func:`dsa110_contimg.calibration.solve.solve_calibration` does)."""
    from .steps import setjy_standard

    phase = np.rad2deg(basics.get("phase_dir_rad", np.zeros(2)))
    if angular_distance_deg(phase[0], phase[1], calibrator.ra_deg, calibrator.dec_deg) > 1.0 / 60:
        raise CalibrationError(ms, f"setjy needs the MS phased to {calibrator.name}; its phase centre is "
                                   f"{phase[0]:.4f}, {phase[1]:.4f} deg")
    tb = casa_env.casatools().table()
    try:
        tb.open(str(ms / "FIELD"), nomodify=False)
        tb.putcol("NAME", np.array([str(calibrator.name)] * tb.nrows()))
        tb.close()
    finally:
        tb.done()
    setjy_standard(ms, field=str(calibrator.name), standard=FLUX_STANDARD)
    return FLUX_STANDARD


def angular_distance_deg(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    """Great-circle distance (deg) between two (RA, Dec) positions in degrees."""
    r1, d1, r2, d2 = map(np.deg2rad, (ra1, dec1, ra2, dec2))
    c = np.sin(d1) * np.sin(d2) + np.cos(d1) * np.cos(d2) * np.cos(r1 - r2)
    return float(np.rad2deg(np.arccos(np.clip(c, -1.0, 1.0))))


def _scale_model(ms: Path, times: np.ndarray, scale: np.ndarray) -> None:
    """MODEL_DATA *= scale[time index, channel], in row chunks."""
    tb = casa_env.casatools().table()
    try:
        tb.open(str(ms), nomodify=False)
        nrow = tb.nrows()
        chunk = max(1, CHUNK_ELEMENTS // (2 * scale.shape[1]))
        for start in range(0, nrow, chunk):
            n = min(chunk, nrow - start)
            idx = np.clip(np.searchsorted(times, tb.getcol("TIME", start, n)), 0, times.size - 1)
            model = tb.getcol("MODEL_DATA", start, n)  # (npol, nchan, nrow)
            model *= scale[idx].T[None, :, :]
            tb.putcol("MODEL_DATA", model, start, n)
        tb.flush()
        tb.close()
    finally:
        tb.done()
