"""The calibration stages as the DAGs and the CLI run them.

* :func:`solve_bandpass_step` — the daily bandpass DAG: K/B/G on the group
  containing the bandpass calibrator's transit, registered for 24 h.
* :func:`solve_gains_step` — a group run whose data hold a calibrator transit:
  G on top of the bandpass in force, registered for 1 h.
* :func:`calibration_state` — may a group be calibrated yet, and if not why.
* :func:`apply_step` — applycal with the list valid at the group's mid-time.

A set that fails its QA gates is registered with status ``failed`` (so it is
visible and never applied; the previous good set stays in force) and then
:class:`~dsa110_contimg.errors.CalibrationQAError` is raised so the task
fails loudly and alerts.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

from ..calibrators import Calibrator, bandpass_calibrator_for, transits_between
from ..config import PipelineConfig
from ..errors import CalibrationQAError, ContimgError, NoCalibrationError
from ..registry import Registry, datetime_from_mjd, mjd_from_datetime
from ..results import jsonable

log = logging.getLogger(__name__)

GROUP_SPAN_S = 24 * 12.884902  # one full-size file's duration; groups tile time


def solve_params(cfg: PipelineConfig, overrides: dict | None = None):
    """The solve parameters from the configuration, with per-run overrides."""
    from .solve import CalSolveParams

    return CalSolveParams.from_dict({"flagging": cfg.calibration_flagging,
                                     "solve_delay": cfg.calibration_solve_delay, **(overrides or {})})


def bandpass_calibrator(cfg: PipelineConfig) -> Calibrator:
    """The configured bandpass calibrator, or the brightest one in the pointing's strip."""
    return bandpass_calibrator_for(cfg.bandpass_calibrator, cfg.pointing_dec_deg)


# -- which group holds a transit ---------------------------------------------------
def calibrator_group(cfg: PipelineConfig, reg: Registry, transit: datetime) -> dict | None:
    """The converted group whose time span contains ``transit``, if any.

    A group spans about mid +- (mid - start) whatever the preset's length; the
    start is the median file timestamp, so allow the +-60 s grouping tolerance
    and pick the group whose mid-time is nearest the transit."""
    t = mjd_from_datetime(transit)
    tol = cfg.group_tolerance_s / 86400
    rows = [r for r in reg.groups_between(t - 2 * GROUP_SPAN_S / 86400 - tol, t + tol)
            if r["ms_path"] and r["mid_mjd"] is not None
            and abs(t - r["mid_mjd"]) <= abs(r["mid_mjd"] - r["start_mjd"]) + tol]
    return min(rows, key=lambda r: abs(t - r["mid_mjd"])) if rows else None


def transit_in_group(cfg: PipelineConfig, row: dict) -> tuple[Calibrator, datetime] | None:
    """The calibrator of the strip transiting during the group (nearest its mid-time), if any."""
    half = abs(row["mid_mjd"] - row["start_mjd"])
    start = datetime_from_mjd(row["mid_mjd"] - half)
    end = datetime_from_mjd(row["mid_mjd"] + half) + timedelta(microseconds=1)
    dec = row.get("pointing_dec_deg") or cfg.pointing_dec_deg
    found = transits_between(start, end, dec)
    if not found:
        return None
    return min(found, key=lambda ct: abs(mjd_from_datetime(ct[1]) - row["mid_mjd"]))


# -- solves -------------------------------------------------------------------------
def solve_bandpass_step(cfg: PipelineConfig, reg: Registry, transit: datetime,
                        overrides: dict | None = None) -> dict:
    """Daily bandpass set on the group containing ``transit``; valid transit +- 12 h."""
    from .solve import solve_calibration

    row = calibrator_group(cfg, reg, transit)
    if row is None:
        raise ContimgError(cfg.incoming_dir, f"no converted group contains the transit at {transit.isoformat()}")
    cal = bandpass_calibrator(cfg)
    name = f"{cal.name}_{row['group_id']}".replace(":", "")
    res = solve_calibration(Path(row["ms_path"]), cal, cfg.caltables_dir / name, solve_params(cfg, overrides),
                            name=name, kind="bandpass")
    window = _window(transit, cfg.calibration_validity_hours)
    _register(reg, res, name, window, base_set=None)
    return {"set_name": name, "group_id": row["group_id"], "valid_mjd": list(window), **jsonable(res)}


def solve_gains_step(cfg: PipelineConfig, reg: Registry, group_id: str, overrides: dict | None = None) -> dict:
    """Hourly gains when a calibrator transits during the group; ``{"skipped": reason}`` otherwise."""
    from ..pipeline import _converted
    from .solve import solve_calibration

    row = _converted(reg, group_id)
    found = transit_in_group(cfg, row)
    if found is None:
        return {"skipped": True, "reason": f"no calibrator of the strip transits during group {group_id}"}
    cal, transit = found
    base = _bandpass_in_force(reg, row["mid_mjd"])
    prior = [(t.table_type, t.path) for t in base if t.table_type in ("K", "B")]
    name = f"{cal.name}_{group_id}_gains".replace(":", "")
    # A failed gains solve fails this task (it alerts) but not the group: the
    # group is then calibrated with the sets still in force.
    res = solve_calibration(Path(row["ms_path"]), cal, cfg.caltables_dir / name, solve_params(cfg, overrides),
                            name=name, kind="gains", prior=prior)
    window = _window(transit, cfg.gains_validity_hours)
    _register(reg, res, name, window, base_set=base[0].set_name)
    return {"skipped": False, "set_name": name, "base_set": base[0].set_name, "transit": transit.isoformat(),
            "valid_mjd": list(window), **jsonable(res)}


def _bandpass_in_force(reg: Registry, mjd: float):
    tables = reg.apply_list(mjd)
    if not any(t.table_type == "B" for t in tables):
        raise NoCalibrationError(None, f"no valid bandpass at MJD {mjd:.5f}")
    return tables


def _window(transit: datetime, hours: float) -> tuple[float, float]:
    t = mjd_from_datetime(transit)
    return t - hours / 48.0, t + hours / 48.0


def _register(reg: Registry, res, name: str, window: tuple[float, float], base_set: str | None) -> None:
    """Register the set (failed when QA failed), then fail loudly if it did."""
    from .registry_io import register_solution

    failed = res.qa_status != "good"
    reasons = "; ".join(res.qa.get("reasons", [])) or "QA failed"
    register_solution(reg, res, window[0], window[1], name, kind=res.kind, status="failed" if failed else "active",
                      reason=reasons if failed else None, qa=res.qa, solver_params=res.params,
                      casa_version=res.casa_version, base_set=base_set)
    log.info("calibration: %s set %s registered %s, valid MJD %.5f-%.5f", res.kind, name,
             "FAILED" if failed else "active", *window)
    if failed:
        raise CalibrationQAError(res.ms, f"calibration set {name} failed QA and was not put in force: {reasons}")


# -- waiting and applying --------------------------------------------------------------
def calibration_state(reg: Registry, group_id: str) -> tuple[bool, str]:
    """(ready, reason): ready when a good bandpass covers the group's mid-time."""
    row = reg.get_group(group_id)
    if not row or row["mid_mjd"] is None:
        return False, f"group {group_id} is not converted yet"
    if any(t.table_type == "B" for t in reg.apply_list(row["mid_mjd"])):
        return True, ""
    return False, f"no valid bandpass at MJD {row['mid_mjd']:.5f}"


def record_wait_failure(reg: Registry, group_id: str, reason: str) -> None:
    """A group gave up waiting for calibration: say why on the group."""
    reg.update_group(group_id, status="failed", message=f"wait for calibration: {reason}")


def apply_step(cfg: PipelineConfig, reg: Registry, group_id: str) -> dict:
    """applycal with the tables valid at the group's mid-time; returns which were applied."""
    from ..pipeline import _converted, _failure_recorded
    from .apply import apply_calibration
    from .registry_io import tables_with_sets_for

    row = _converted(reg, group_id)
    with _failure_recorded(reg, group_id, "apply calibration"):
        applied = tables_with_sets_for(reg, row["mid_mjd"])
        res = apply_calibration(Path(row["ms_path"]), [(t, p) for t, p, _ in applied])
    reg.update_group(group_id, status="calibrated", message=None)
    log.info("apply: %s with %s", group_id, ", ".join(f"{t} from {s}" for t, _, s in applied))
    return {**jsonable(res), "calibration": [{"type": t, "path": p, "set": s} for t, p, s in applied]}
