"""Work-arounds for Airflow defects that operators would otherwise hit.

Airflow 3.3.2: clearing a task of a run that has a pending deadline measured
from ``queued_at`` (our ``group`` DAG's latency alert) fails with HTTP 500 in
the API server. Clearing moves the run's ``queued_at`` and Airflow
recomputes those deadlines with ``timedelta(seconds=alert.interval)``, but it
stores the interval as a serialized dict (``{"__type": ..., "__data__":
seconds}``), so ``timedelta`` raises ``TypeError``. Retrying a group from the
UI ("Clear") would be impossible while its deadline is pending.

:func:`install` replaces that recomputation with one that reads both forms.
The ``contimg`` Airflow plugin calls it when a component loads plugins (the
API server does at start). Remove once Airflow reads its own format.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)

QUEUED_AT_REFERENCE = "DagRunQueuedAtDeadline"


def interval_seconds(raw: Any) -> float:
    """Seconds of a deadline interval stored as a number or as Airflow's serialized dict."""
    if isinstance(raw, dict):
        raw = raw.get("__data__", raw.get("seconds"))
    if isinstance(raw, dict):  # a nested {"seconds": ...}
        raw = raw.get("seconds")
    if isinstance(raw, timedelta):
        return raw.total_seconds()
    if isinstance(raw, (int, float)):
        return float(raw)
    raise TypeError(f"cannot read a deadline interval from {raw!r}")


def _recalculate_queued_at_deadlines(dagrun, new_queued_at: datetime, session) -> None:
    """Move the run's pending queued_at-based deadlines to ``new_queued_at + interval``."""
    from sqlalchemy import false, select

    from airflow.models.deadline import Deadline
    from airflow.models.deadline_alert import DeadlineAlert as DeadlineAlertModel

    rows = session.execute(
        select(Deadline, DeadlineAlertModel)
        .join(DeadlineAlertModel, Deadline.deadline_alert_id == DeadlineAlertModel.id)
        .where(Deadline.dagrun_id == dagrun.id, Deadline.missed == false())
    ).all()
    for deadline, alert in rows:
        if (alert.reference or {}).get("reference_type") != QUEUED_AT_REFERENCE:
            continue
        deadline.deadline_time = new_queued_at + timedelta(seconds=interval_seconds(alert.interval))


def install() -> bool:
    """Patch Airflow in this process (idempotent); False when its internals moved."""
    try:
        import airflow.models.taskinstance as ti_module
    except ImportError:  # pragma: no cover - not an Airflow process
        return False
    current = getattr(ti_module, "_recalculate_dagrun_queued_at_deadlines", None)
    if current is None:
        log.warning("contimg: Airflow has no _recalculate_dagrun_queued_at_deadlines; fix not installed")
        return False
    if current is not _recalculate_queued_at_deadlines:
        ti_module._recalculate_dagrun_queued_at_deadlines = _recalculate_queued_at_deadlines
    return True
