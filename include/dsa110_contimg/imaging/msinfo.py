"""What the imaging stages need to know about a MeasurementSet (read via casatools)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import casa_env
from ..errors import ImagingError

POINTING_DEC_KEYWORD = "DSA110_POINTING_DEC_RAD"


@dataclass(frozen=True)
class MsInfo:
    path: Path
    nrows: int
    times_mjd: np.ndarray  # unique integration centres (MJD, UTC)
    freqs_hz: np.ndarray  # channel centres of the (first) spectral window
    phase_ra_rad: float
    phase_dec_rad: float
    pointing_dec_rad: float  # apparent declination of the meridian pointing
    pointing_dec_from_keyword: bool
    max_uv_m: float  # longest projected baseline (unflagged cross-correlation rows)
    has_corrected: bool
    uvw_m: np.ndarray | None = None  # (3, n) uvw of the unflagged cross-correlation rows
    interval_s: float = 0.0  # integration time (median INTERVAL)
    observer: str = ""  # OBSERVATION::OBSERVER of the first observation, if any

    @property
    def mid_mjd(self) -> float:
        return float(0.5 * (self.times_mjd.min() + self.times_mjd.max()))

    @property
    def start_mjd(self) -> float:
        """Start of the first integration (TIME is the integration centre)."""
        return float(self.times_mjd.min() - 0.5 * self.interval_s / 86400.0)

    @property
    def end_mjd(self) -> float:
        return float(self.times_mjd.max() + 0.5 * self.interval_s / 86400.0)

    @property
    def bandwidth_hz(self) -> float:
        """Total width of the imaged channels (edge to edge)."""
        f = np.sort(self.freqs_hz)
        width = float(np.median(np.diff(f))) if f.size > 1 else 0.0
        return float(f[-1] - f[0] + width)

    @property
    def freq_hz(self) -> float:
        return float(np.mean(self.freqs_hz))


def icrs_to_itrs_unit(ra_rad, dec_rad, mjd) -> np.ndarray:
    """ITRS unit vectors (..., 3) of ICRS directions at UTC MJD(s); broadcasts.

    (geometry.icrs_to_itrs does the same for (time, source) grids but fails
    on astropy 8, where ``Time * ndarray`` is no longer allowed.)"""
    from astropy import units as u
    from astropy.coordinates import ICRS, ITRS, SkyCoord
    from astropy.time import Time

    ra, dec, t = np.broadcast_arrays(np.asarray(ra_rad, float), np.asarray(dec_rad, float), np.asarray(mjd, float))
    sc = SkyCoord(ra=ra * u.rad, dec=dec * u.rad, frame=ICRS())
    xyz = np.moveaxis(sc.transform_to(ITRS(obstime=Time(t, format="mjd", scale="utc"))).cartesian.xyz.value, 0, -1)
    return xyz / np.linalg.norm(xyz, axis=-1, keepdims=True)


def apparent_dec_of(ra_rad: float, dec_rad: float, mjd: float) -> float:
    """Apparent (ITRS-pole) declination of an ICRS direction at ``mjd``.

    The converter phases to the ICRS position of the meridian at the pointing
    declination at the mid-time, so this inverts that exactly."""
    v = icrs_to_itrs_unit(ra_rad, dec_rad, mjd)
    return float(np.arcsin(np.clip(v[2], -1.0, 1.0)))


def read_ms_info(ms: Path) -> MsInfo:
    """Read times, frequencies, phase centre, pointing dec and max baseline.

    Raises ImagingError when the MS is missing, unreadable or has no rows."""
    ms = Path(ms)
    if not ms.exists():
        raise ImagingError(ms, "MeasurementSet does not exist")
    if not (ms / "table.dat").exists():
        raise ImagingError(ms, "not a MeasurementSet (no table.dat)")
    ct = casa_env.casatools()
    tb = ct.table()
    try:
        try:
            tb.open(str(ms))
        except Exception as exc:  # casatools raises RuntimeError with a message
            raise ImagingError(ms, f"cannot open MeasurementSet: {exc}") from exc
        nrows = int(tb.nrows())
        if nrows == 0:
            raise ImagingError(ms, "MeasurementSet has no rows")
        cols = set(tb.colnames())
        keywords = tb.getkeywords()
        times = np.unique(tb.getcol("TIME")) / 86400.0
        interval = float(np.median(tb.getcol("INTERVAL"))) if "INTERVAL" in cols else 0.0
        uvw = tb.getcol("UVW")  # (3, nrow)
        good = _unflagged_cross_rows(tb, nrows, cols)
        tb.close()
        uv = np.hypot(uvw[0], uvw[1])
        max_uv = float(uv[good].max()) if good.any() else float(uv.max())
        if max_uv <= 0:
            raise ImagingError(ms, "all baselines have zero length (autocorrelations only?)")

        tb.open(str(ms / "SPECTRAL_WINDOW"))
        freqs = np.asarray(tb.getcell("CHAN_FREQ", 0), dtype=float)
        tb.close()
        tb.open(str(ms / "FIELD"))
        phase_dir = np.asarray(tb.getcell("PHASE_DIR", 0), dtype=float).reshape(-1, 2)[0]
        tb.close()
        observer = _observer(tb, ms)
    finally:
        tb.done()
    ra, dec = float(phase_dir[0]), float(phase_dir[1])
    mid = float(0.5 * (times.min() + times.max()))
    if POINTING_DEC_KEYWORD in keywords:
        pdec, from_kw = float(keywords[POINTING_DEC_KEYWORD]), True
    else:
        pdec, from_kw = apparent_dec_of(ra, dec, mid), False
    return MsInfo(
        path=ms,
        nrows=nrows,
        times_mjd=times,
        freqs_hz=freqs,
        phase_ra_rad=ra,
        phase_dec_rad=dec,
        pointing_dec_rad=pdec,
        pointing_dec_from_keyword=from_kw,
        max_uv_m=max_uv,
        has_corrected="CORRECTED_DATA" in cols,
        uvw_m=uvw[:, good] if good.any() else uvw,
        interval_s=interval,
        observer=observer,
    )


def _unflagged_cross_rows(tb, nrows: int, cols: set[str], chunk: int = 20000) -> np.ndarray:
    """Rows that are cross-correlations with at least one unflagged sample.

    Reads FLAG in row chunks: an antenna flagged with flagdata has every
    FLAG set but not necessarily FLAG_ROW, and its baselines must not set
    the longest baseline or the predicted beam."""
    good = tb.getcol("ANTENNA1") != tb.getcol("ANTENNA2")
    if "FLAG_ROW" in cols:
        good &= ~tb.getcol("FLAG_ROW").astype(bool)
    if "FLAG" in cols:
        for start in range(0, nrows, chunk):
            n = min(chunk, nrows - start)
            good[start : start + n] &= ~tb.getcol("FLAG", start, n).all(axis=(0, 1))
    return good


def _observer(tb, ms: Path) -> str:
    """OBSERVER of the first OBSERVATION row ('' when absent or unreadable)."""
    try:
        tb.open(str(ms / "OBSERVATION"))
        try:
            return str(tb.getcell("OBSERVER", 0)).strip() if tb.nrows() else ""
        finally:
            tb.close()
    except Exception:  # an optional subtable: a missing one is not an error
        return ""
