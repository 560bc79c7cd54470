"""Calibration tables in the contimg registry: register a solve, find what applies."""
from __future__ import annotations

import logging

from ..errors import NoCalibrationError
from ..registry import Registry
from .solve import CalSolveResult

log = logging.getLogger(__name__)


def register_solution(registry: Registry, result: CalSolveResult, valid_from_mjd: float,
                      valid_to_mjd: float, set_name: str) -> int:
    """Register ``result``'s tables as calibration set ``set_name`` (replacing it); return the table count."""
    if valid_to_mjd < valid_from_mjd:
        raise ValueError(f"validity window ends ({valid_to_mjd}) before it starts ({valid_from_mjd})")
    qa = {"flagged_fraction": result.flagged_fraction, "n_solutions": result.n_solutions,
          "mid_mjd": result.mid_mjd, "peak_beam": result.peak_beam}
    n = registry.register_caltables(set_name, list(result.tables), valid_from_mjd, valid_to_mjd,
                                    calibrator=result.calibrator, refant=result.refant,
                                    source_ms=result.ms, qa=qa)
    log.info("registered calibration set %s (%d tables) valid MJD %.5f-%.5f", set_name, n,
             valid_from_mjd, valid_to_mjd)
    return n


def tables_for(registry: Registry, mjd: float) -> list[tuple[str, str]]:
    """[(type, path)] in apply order of the newest active set covering ``mjd``.

    Raises NoCalibrationError when no set covers it."""
    rows = registry.apply_list(mjd)
    if not rows:
        raise NoCalibrationError(None, f"no valid calibration at MJD {mjd:.5f}")
    return [(r.table_type, r.path) for r in rows]
