"""Calibration sets in the contimg registry: register a solve, find what applies.

The selection rule (newest active bandpass set covering the time, its G
replaced by the newest active gains set solved against that same bandpass)
lives in :meth:`Registry.apply_list`; this module adapts solve results to it
and turns "nothing applies" into the pipeline's retryable error."""
from __future__ import annotations

import logging
from typing import Any

from ..errors import NoCalibrationError
from ..registry import Registry
from .solve import CalSolveResult

log = logging.getLogger(__name__)

# CalSolveResult numbers worth keeping as the set's QA (read only when present).
_QA_FIELDS = ("flagged_fraction", "n_solutions", "mid_mjd", "peak_beam")


def register_solution(registry: Registry, result: CalSolveResult, valid_from_mjd: float, valid_to_mjd: float,
                      set_name: str, *, kind: str = "bandpass", status: str = "active", reason: str | None = None,
                      qa: dict | None = None, solver_params: dict | None = None, casa_version: str | None = None,
                      base_set: str | None = None) -> int:
    """Register ``result``'s tables as calibration set ``set_name`` (replacing it); return the table count.

    ``result`` is read with getattr: CalSolveResult is growing fields (QA,
    parameters, CASA version), and a missing one must not break registration.
    Explicit arguments win over what the result carries."""
    n = registry.register_calset(
        set_name, kind, list(getattr(result, "tables", [])), valid_from_mjd, valid_to_mjd,
        status=status, reason=reason, calibrator=getattr(result, "calibrator", None),
        refant=getattr(result, "refant", None), source_ms=getattr(result, "ms", None),
        solver_params=solver_params if solver_params is not None else _result_params(result),
        casa_version=casa_version or getattr(result, "casa_version", None) or None,
        qa={**_result_qa(result), **(qa or {})}, base_set=base_set,
    )
    log.info("registered %s calibration set %s (%d tables, %s) valid MJD %.5f-%.5f", kind, set_name, n, status,
             valid_from_mjd, valid_to_mjd)
    return n


def _result_qa(result: Any) -> dict:
    """The QA numbers the result has: the fixed fields plus any ``qa`` dict it carries."""
    qa = {k: getattr(result, k) for k in _QA_FIELDS if getattr(result, k, None) is not None}
    extra = getattr(result, "qa", None)
    return {**qa, **(extra if isinstance(extra, dict) else {})}


def _result_params(result: Any) -> dict | None:
    """Solver parameters carried by the result, as a dict, if any."""
    params = getattr(result, "solver_params", None) or getattr(result, "params", None)
    if params is None or isinstance(params, dict):
        return params
    to_dict = getattr(params, "to_dict", None)
    return to_dict() if callable(to_dict) else {"value": str(params)}


def tables_for(registry: Registry, mjd: float) -> list[tuple[str, str]]:
    """[(type, path)] to apply at ``mjd``, in apply order (see Registry.apply_list for the rule).

    Raises NoCalibrationError (retryable: the solve may not have run yet)
    when no bandpass set covers ``mjd``."""
    return [(t, p) for t, p, _ in tables_with_sets_for(registry, mjd)]


def tables_with_sets_for(registry: Registry, mjd: float) -> list[tuple[str, str, str]]:
    """[(type, path, set_name)] to apply at ``mjd``: what a product's provenance records."""
    rows = registry.apply_list(mjd)
    if not rows:
        raise NoCalibrationError(None, f"no valid bandpass at MJD {mjd:.5f}")
    return [(r.table_type, r.path, r.set_name) for r in rows]
