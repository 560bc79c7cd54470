"""The work-around for Airflow 3.3.2's deadline recomputation on clear (see airflow_fixes)."""
from __future__ import annotations

from datetime import timedelta

import pytest

from contimg_airflow import airflow_fixes


@pytest.mark.parametrize("raw, seconds", [
    ({"__type": "timedelta", "__data__": 1800.0}, 1800.0),  # how Airflow 3.3 stores it
    ({"__data__": {"seconds": 90}}, 90.0),
    (42, 42.0),
    (timedelta(minutes=2), 120.0),
])
def test_interval_seconds_reads_both_forms(raw, seconds):
    assert airflow_fixes.interval_seconds(raw) == seconds


def test_interval_seconds_rejects_garbage():
    with pytest.raises(TypeError, match="deadline interval"):
        airflow_fixes.interval_seconds({"__data__": "soon"})


def test_install_replaces_airflows_recalculation_idempotently():
    import airflow.models.taskinstance as ti_module

    assert airflow_fixes.install() and airflow_fixes.install()
    assert ti_module._recalculate_dagrun_queued_at_deadlines is airflow_fixes._recalculate_queued_at_deadlines


class _Row:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class _Session:
    def __init__(self, rows):
        self.rows = rows

    def execute(self, _query):
        return self

    def all(self):
        return self.rows


def test_recalculation_moves_only_queued_at_deadlines():
    from datetime import datetime, timezone

    t0 = datetime(2026, 1, 15, 12, tzinfo=timezone.utc)
    queued = (_Row(deadline_time=None), _Row(reference={"reference_type": "DagRunQueuedAtDeadline"},
                                             interval={"__type": "timedelta", "__data__": 1800.0}))
    fixed = (_Row(deadline_time="unchanged"), _Row(reference={"reference_type": "FixedDatetimeDeadline"},
                                                   interval={"__data__": 60.0}))
    airflow_fixes._recalculate_queued_at_deadlines(_Row(id=7), t0, _Session([queued, fixed]))
    assert queued[0].deadline_time == t0 + timedelta(minutes=30)
    assert fixed[0].deadline_time == "unchanged"


def _noop():
    pass


def _start_a_child(fix: bool, out) -> None:
    """In a daemonic process (as a task forked from a Celery pool process is): start one child."""
    import multiprocessing

    if fix:
        airflow_fixes.allow_task_children()
    try:
        child = multiprocessing.get_context("fork").Process(target=_noop)
        child.start()
        child.join(30)
        out.put(child.exitcode)
    except AssertionError as exc:
        out.put(str(exc))


@pytest.mark.parametrize("fix, outcome", [(False, "daemonic processes are not allowed to have children"),
                                          (True, 0)])
def test_allow_task_children_lets_a_daemonic_process_start_processes(fix, outcome):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    proc = ctx.Process(target=_start_a_child, args=(fix, out), daemon=True)
    proc.start()
    try:
        assert out.get(timeout=60) == outcome
    finally:
        proc.join(30)
