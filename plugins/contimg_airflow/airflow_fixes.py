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

CeleryExecutor (Airflow 3.3, Celery's prefork pool): a task's process cannot
start worker processes. The pool's processes are daemonic, Airflow forks each
task's runner from one, and the runner inherits the flag, so ``multiprocessing``
refuses it children ("daemonic processes are not allowed to have children").
PyBDSF (cross-match) always starts some, so every mosaic's cross-match failed
under Celery; the converter fell back to no block workers.
:func:`allow_task_children` clears the flag in the task's own process; every
operator calls it (``operators.fails_fast``).
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


def allow_task_children() -> None:
    """Let this task's process start worker processes, also under Celery's prefork pool.

    The flag only asks ``multiprocessing`` to refuse children of a pool process, which its pool
    may terminate without waiting for them. A task runner is not a pool process: Airflow's task
    supervisor gives it its own process group and signals that whole group when the task ends
    or is killed, so its children never outlive it. A no-op in a non-daemonic process (the
    LocalExecutor, ``airflow dags test``, the CLI)."""
    import multiprocessing

    proc = multiprocessing.current_process()
    if proc.daemon:
        proc._config["daemon"] = False  # what ``daemon`` reads; its setter refuses a started process


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
