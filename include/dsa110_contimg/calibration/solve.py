"""Calibration solve: bandpass (B) and complex gains (G) on a calibrator transit.

The calibrator drifts through the fixed meridian beam during the ~5-minute
observation, so the sky model is a point source at the calibrator's ICRS
position with flux ``S(nu) * B(t, nu)``: the catalogue spectrum times the Airy
power pattern of the dish evaluated at the calibrator's separation from the
meridian pointing at every integration. With that model, a bandpass solved with
``solnorm=False`` carries the absolute gain amplitudes, and the gains solved on
top of it (``'ap'``) take out what varies in time.

The solve runs on a scratch copy of the MeasurementSet made inside a temporary
directory in ``out_dir``: the input MS is left bit-identical (no autocorrelation
flags, no MODEL_DATA column) so the ``group`` DAG can image the same
calibrator MS at the same time without fighting over table locks, and a failed
solve never leaves anything half-written. The tables are then renamed into
place as ``<name>.B`` and ``<name>.G``.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from .. import casa_env
from ..errors import CalibrationError
from .. import geometry
from ..geometry import angular_separation, meridian_direction, site_location
from ..instrument import airy_beam

log = logging.getLogger(__name__)

POINTING_DEC_KEYWORD = "DSA110_POINTING_DEC_RAD"
MIN_BEAM = 0.05  # calibrator must be at least this far up the beam at some time
MAX_FLAGGED_FRACTION = 0.5
CHUNK_ELEMENTS = 4_000_000  # visibilities per read/write chunk (~64 MB as complex128)


@dataclass(frozen=True)
class CalSolveParams:
    """Parameters of a calibration solve (defaults run the demo).

    ``refant`` None picks an antenna with data near the array centre;
    ``uvrange`` is a CASA uv-range selection ('' = all baselines)."""

    refant: str | None = None
    uvrange: str = ""
    minsnr: float = 3.0
    gain_solint: str = "inf"
    bandpass_solint: str = "inf"
    validity_hours: float = 24.0

    def __post_init__(self) -> None:
        if self.minsnr < 0:
            raise ValueError(f"minsnr {self.minsnr} must be >= 0")
        if self.validity_hours <= 0:
            raise ValueError(f"validity_hours {self.validity_hours} must be positive")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "CalSolveParams":
        """Build from a dict (config, DAG Params); unknown keys are an error."""
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown calibration parameters: {sorted(unknown)}")
        if d.get("refant") in ("", None):
            d["refant"] = None
        else:
            d["refant"] = str(d["refant"])
        for k in ("minsnr", "validity_hours"):
            if k in d:
                d[k] = float(d[k])
        for k in ("uvrange", "gain_solint", "bandpass_solint"):
            if k in d:
                d[k] = str(d[k])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CalSolveResult:
    """What a solve produced; JSON-serialisable through :meth:`to_dict`."""

    ms: str
    tables: list[tuple[str, str]]  # (type, path) in apply order
    refant: str
    calibrator: str
    mid_mjd: float
    flagged_fraction: float  # worst table: flagged / all solutions of antennas with data
    n_solutions: int  # unflagged solution values (antenna x pol x channel/time), all tables
    peak_beam: float  # largest beam attenuation at the calibrator during the MS (band centre)
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tables"] = [list(t) for t in self.tables]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CalSolveResult":
        d = dict(d)
        d["tables"] = [(str(t), str(p)) for t, p in d["tables"]]
        return cls(**d)


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
def _read_ms_basics(ms: Path) -> dict[str, Any]:
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


def antennas_with_data(ms: Path) -> dict[int, int]:
    """Unflagged cross-correlation visibility count per antenna index (autos ignored)."""
    ct = casa_env.casatools()
    tb = ct.table()
    counts: dict[int, int] = {}
    try:
        tb.open(str(ms))
        nrow = tb.nrows()
        chunk = 20000
        for start in range(0, nrow, chunk):
            n = min(chunk, nrow - start)
            a1 = tb.getcol("ANTENNA1", start, n)
            a2 = tb.getcol("ANTENNA2", start, n)
            flag = tb.getcol("FLAG", start, n)  # (npol, nchan, nrow)
            frow = tb.getcol("FLAG_ROW", start, n)
            good = (~flag).sum(axis=(0, 1))
            good[frow] = 0
            cross = a1 != a2
            for ant_col in (a1, a2):
                np_counts = np.bincount(ant_col[cross], weights=good[cross])
                for ant in np.nonzero(np_counts)[0]:
                    counts[int(ant)] = counts.get(int(ant), 0) + int(np_counts[ant])
        tb.close()
    finally:
        tb.done()
    return counts


def pick_refant(ms: Path, counts: dict[int, int] | None = None, label: str | None = None) -> str:
    """Name of the antenna with unflagged cross-correlation data nearest the array centre.

    ``counts`` (from :func:`antennas_with_data`) saves a pass over the MS.
    Raises CalibrationError when no antenna has data."""
    ms = Path(ms)
    counts = antennas_with_data(ms) if counts is None else counts
    if not counts:
        raise CalibrationError(ms, "no unflagged cross-correlation data: cannot pick a reference antenna")
    ct = casa_env.casatools()
    tb = ct.table()
    try:
        tb.open(str(ms / "ANTENNA"))
        names = list(tb.getcol("NAME"))
        pos = np.asarray(tb.getcol("POSITION")).T  # (Nant, 3) ITRF metres
        tb.close()
    finally:
        tb.done()
    loc = site_location()
    centre = np.array([loc.x.to_value("m"), loc.y.to_value("m"), loc.z.to_value("m")])
    best = max(counts.values())
    # Among antennas with at least half the best data, the one nearest the centre.
    candidates = [a for a, c in counts.items() if c >= 0.5 * best]
    dist = {a: float(np.linalg.norm(pos[a] - centre)) for a in candidates}
    ant = min(candidates, key=lambda a: (dist[a], a))
    log.info("%s: refant %s (index %d, %.1f m from the array centre, %d of %d antennas have data)",
             label or ms.name, names[ant], ant, dist[ant], len(counts), len(names))
    return str(names[ant])


def _set_model(ms: Path, calibrator, basics: dict[str, Any], work: Path, label: str | None = None) -> None:
    """MODEL_DATA = S(nu) * beam(t, nu) * (unit point source at the calibrator)."""
    ct = casa_env.casatools()
    cts = casa_env.casatasks()
    cl_path = work / "calibrator.cl"
    cl = ct.componentlist()
    try:
        cl.done()
        cl.addcomponent(
            dir=f"J2000 {calibrator.ra_deg}deg {calibrator.dec_deg}deg",
            flux=1.0, fluxunit="Jy", freq="1.4GHz", shape="point",
            spectrumtype="constant", label=str(calibrator.name),
        )
        cl.rename(str(cl_path))
        cl.close(log=False)
    finally:
        cl.done()
    cts.ft(vis=str(ms), complist=str(cl_path), usescratch=True, incremental=False)

    times = basics["times_s"]
    freqs = basics["freqs_hz"]
    beam = calibrator_beam(times, freqs, calibrator.ra_deg, calibrator.dec_deg, basics["pointing_dec_rad"])
    flux = np.array([float(calibrator.flux_at(f)) for f in freqs])
    scale = beam * flux[None, :]  # (Nt, Nchan)

    tb = ct.table()
    try:
        tb.open(str(ms), nomodify=False)
        nrow = tb.nrows()
        chunk = max(1, CHUNK_ELEMENTS // (2 * freqs.size))
        for start in range(0, nrow, chunk):
            n = min(chunk, nrow - start)
            t = tb.getcol("TIME", start, n)
            idx = np.clip(np.searchsorted(times, t), 0, times.size - 1)
            model = tb.getcol("MODEL_DATA", start, n)  # (npol, nchan, nrow)
            model *= scale[idx].T[None, :, :]
            tb.putcol("MODEL_DATA", model, start, n)
        tb.flush()
        tb.close()
    finally:
        tb.done()
    log.info("%s: model %s, flux %.2f-%.2f Jy, beam %.3f-%.3f over %d integrations x %d channels",
             label or ms.name, calibrator.name, flux.min(), flux.max(), beam.min(), beam.max(), times.size, freqs.size)


def _solution_stats(caltable: Path, ants: set[int]) -> tuple[int, int]:
    """(flagged, total) solution values of the antennas in ``ants``."""
    ct = casa_env.casatools()
    tb = ct.table()
    try:
        tb.open(str(caltable))
        ant = tb.getcol("ANTENNA1")
        flag = tb.getcol("FLAG")  # (npol, nchan, nrow)
        tb.close()
    finally:
        tb.done()
    sel = np.isin(ant, sorted(ants))
    f = flag[:, :, sel]
    return int(f.sum()), int(f.size)


def _safe_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", stem)


def _move_into_place(src: Path, dst: Path) -> None:
    """Rename a table directory over ``dst`` (old one moved aside, then removed)."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(dst, old)
    os.rename(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def solve_calibration(ms: Path, calibrator, out_dir: Path, params: CalSolveParams | None = None,
                      name: str | None = None) -> CalSolveResult:
    """Solve B then G on ``calibrator`` in ``ms``; write ``<name>.B``/``<name>.G`` in ``out_dir``.

    ``name`` defaults to the MS file stem. Raises CalibrationError when the
    calibrator is outside the beam for the whole MS, when CASA fails, or when
    more than half of the solutions are flagged."""
    t0 = time.monotonic()
    params = params or CalSolveParams()
    ms = Path(ms)
    out_dir = Path(out_dir)
    if not (ms / "table.dat").exists():
        raise CalibrationError(ms, "MeasurementSet does not exist")
    name = _safe_name(name or ms.stem)

    basics = _read_ms_basics(ms)
    mid_freq = float(np.median(basics["freqs_hz"]))
    beam_mid = calibrator_beam(basics["times_s"], np.array([mid_freq]), calibrator.ra_deg,
                               calibrator.dec_deg, basics["pointing_dec_rad"])[:, 0]
    peak_beam = float(beam_mid.max())
    if peak_beam < MIN_BEAM:
        raise CalibrationError(ms, f"calibrator {calibrator.name} is not in the field: beam at its position "
                                   f"peaks at {peak_beam:.3g} (< {MIN_BEAM}) during the MS")
    log.info("%s: calibrator %s beam %.3f-%.3f at %.1f MHz", ms.name, calibrator.name,
             beam_mid.min(), peak_beam, mid_freq / 1e6)

    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        scratch = work / "scratch.ms"
        shutil.copytree(ms, scratch, symlinks=True)
        cts = casa_env.casatasks()
        counts = antennas_with_data(scratch)
        refant = params.refant or pick_refant(scratch, counts, label=ms.name)
        ants = set(counts)
        try:
            cts.flagdata(vis=str(scratch), mode="manual", autocorr=True, flagbackup=False)
            _set_model(scratch, calibrator, basics, work, label=ms.name)
            btab = work / f"{name}.B"
            gtab = work / f"{name}.G"
            cts.bandpass(vis=str(scratch), caltable=str(btab), solint=params.bandpass_solint,
                         combine="scan", refant=refant, minsnr=params.minsnr, solnorm=False,
                         bandtype="B", uvrange=params.uvrange)
            if not btab.exists():
                raise CalibrationError(ms, "bandpass wrote no table (see the CASA log)")
            cts.gaincal(vis=str(scratch), caltable=str(gtab), solint=params.gain_solint, combine="scan",
                        refant=refant, minsnr=params.minsnr, gaintype="G", calmode="ap",
                        gaintable=[str(btab)], interp=["nearest,linear"], uvrange=params.uvrange)
            if not gtab.exists():
                raise CalibrationError(ms, "gaincal wrote no table (see the CASA log)")
        except CalibrationError:
            raise
        except Exception as exc:  # CASA raises RuntimeError/AssertionError and friends
            raise CalibrationError(ms, f"CASA calibration failed: {exc}") from exc

        n_good = 0
        worst = 0.0
        for label, tab in (("B", btab), ("G", gtab)):
            flagged, total = _solution_stats(tab, ants)
            frac = flagged / total if total else 1.0
            n_good += total - flagged
            worst = max(worst, frac)
            log.info("%s: %s table %d solutions, %d flagged (%.1f%%)", ms.name, label, total, flagged, 100 * frac)
        if worst > MAX_FLAGGED_FRACTION:
            raise CalibrationError(ms, f"{100 * worst:.0f}% of the solutions are flagged "
                                       f"(limit {100 * MAX_FLAGGED_FRACTION:.0f}%)")

        final = []
        for label, tab in (("B", btab), ("G", gtab)):
            dst = out_dir / tab.name
            _move_into_place(tab, dst)
            final.append((label, str(dst)))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    seconds = time.monotonic() - t0
    log.info("%s: solved %s on %s, refant %s, %d good solutions, worst flagged %.1f%%, %.1f s",
             ms.name, "+".join(t for t, _ in final), calibrator.name, refant, n_good, 100 * worst, seconds)
    return CalSolveResult(ms=str(ms), tables=final, refant=refant, calibrator=str(calibrator.name),
                          mid_mjd=basics["mid_mjd"], flagged_fraction=float(worst), n_solutions=int(n_good),
                          peak_beam=peak_beam, seconds=float(seconds))
