"""Reference antenna choice: an antenna with data near the array centre.

Near the centre its baselines to everyone are short to medium, so it sees the
calibrator well on all of them, and a central pad is rarely an outrigger
under maintenance."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .. import casa_env
from ..errors import CalibrationError
from ..geometry import site_location

log = logging.getLogger(__name__)


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


