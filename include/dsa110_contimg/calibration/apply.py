"""Calibration apply: CORRECTED_DATA = DATA corrected by the valid tables.

Gains are solved on a calibrator transit, often an hour or more away from the
data, so every table is interpolated in time with ``'nearest'`` (CASA applies
the nearest solution however far away it is). Bandpass tables use
``'nearest,linearflag'``: nearest in time, linear in frequency, and channels
whose bandpass solution is flagged are flagged rather than invented.

Idempotent: the first run saves the MS's flags as the flag version
``contimg_pre_applycal``; every run restores that version before applying, so
flags from an earlier application (``applymode='calflag'``) never accumulate,
and CORRECTED_DATA is always recomputed from DATA.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import casa_env
from ..errors import CalibrationError, NoCalibrationError

log = logging.getLogger(__name__)

FLAG_VERSION = "contimg_pre_applycal"
INTERP = {"K": "nearest", "B": "nearest,linearflag", "G": "nearest", "T": "nearest"}
ROW_CHUNK = 20000


@dataclass(frozen=True)
class ApplyResult:
    ms: str
    tables: list[tuple[str, str]]  # (type, path) as applied, in order
    flagged_fraction_before: float  # cross-correlations, before applycal
    flagged_fraction_after: float  # cross-correlations, after applycal
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tables"] = [list(t) for t in self.tables]
        return d


def cross_flagged_fraction(ms: Path) -> float:
    """Fraction of flagged cross-correlation visibilities (autocorrelations ignored)."""
    ct = casa_env.casatools()
    tb = ct.table()
    flagged = total = 0
    try:
        tb.open(str(ms))
        nrow = tb.nrows()
        for start in range(0, nrow, ROW_CHUNK):
            n = min(ROW_CHUNK, nrow - start)
            cross = tb.getcol("ANTENNA1", start, n) != tb.getcol("ANTENNA2", start, n)
            flag = tb.getcol("FLAG", start, n)[:, :, cross]
            frow = tb.getcol("FLAG_ROW", start, n)[cross]
            flag = flag | frow[None, None, :]
            flagged += int(flag.sum())
            total += int(flag.size)
        tb.close()
    finally:
        tb.done()
    return flagged / total if total else 1.0


def _flag_version_exists(ms: Path, version: str) -> bool:
    return (Path(f"{ms}.flagversions") / f"flags.{version}").exists()


def apply_calibration(ms: Path, tables: list[tuple[str, str]] | list[list[str]]) -> ApplyResult:
    """Apply ``tables`` ([(type, path)] in apply order) to ``ms`` into CORRECTED_DATA.

    Raises NoCalibrationError when ``tables`` is empty, CalibrationError when a
    table or the MS is missing, when CASA fails, or when every
    cross-correlation ends up flagged."""
    t0 = time.monotonic()
    ms = Path(ms)
    tables = [(str(t), str(p)) for t, p in tables]
    if not tables:
        raise NoCalibrationError(ms, "no calibration tables to apply")
    if not (ms / "table.dat").exists():
        raise CalibrationError(ms, "MeasurementSet does not exist")
    for ttype, path in tables:
        if not (Path(path) / "table.dat").exists():
            raise CalibrationError(path, f"{ttype} calibration table is missing")

    cts = casa_env.casatasks()
    try:
        if _flag_version_exists(ms, FLAG_VERSION):
            cts.flagmanager(vis=str(ms), mode="restore", versionname=FLAG_VERSION, merge="replace")
        else:
            cts.flagmanager(vis=str(ms), mode="save", versionname=FLAG_VERSION,
                            comment="flags before the first contimg applycal")
    except Exception as exc:
        raise CalibrationError(ms, f"cannot save/restore flag version {FLAG_VERSION}: {exc}") from exc

    before = cross_flagged_fraction(ms)
    interp = [INTERP.get(t.upper(), "nearest") for t, _ in tables]
    try:
        cts.applycal(vis=str(ms), gaintable=[p for _, p in tables], interp=interp, calwt=[False] * len(tables),
                     applymode="calflag", flagbackup=False)
    except Exception as exc:
        raise CalibrationError(ms, f"applycal failed: {exc}") from exc
    after = cross_flagged_fraction(ms)
    seconds = time.monotonic() - t0
    log.info("%s: applied %s; cross-correlations flagged %.1f%% before, %.1f%% after; %.1f s",
             ms.name, ", ".join(f"{t}={Path(p).name}" for t, p in tables), 100 * before, 100 * after, seconds)
    if after >= 1.0 - 1e-12:
        raise CalibrationError(ms, "applycal flagged every cross-correlation (no usable solutions for this MS)")
    if not np.isfinite(after):  # pragma: no cover - defensive
        raise CalibrationError(ms, "cannot compute the flagged fraction after applycal")
    return ApplyResult(ms=str(ms), tables=tables, flagged_fraction_before=float(before),
                       flagged_fraction_after=float(after), seconds=float(seconds))
