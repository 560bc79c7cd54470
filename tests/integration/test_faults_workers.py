"""Worker crashes and a scheduler crash on the production topology (tracker issue 8, items 2 and 4).

One tiny simulated session (two groups, the calibrator transit in the second)
runs through ``CeleryAirflow`` (CeleryExecutor, PostgreSQL, Redis, two Celery
workers of one process each), and three faults are injected into it, each at
a moment read from the metadata database and the staging directory:

1. **Worker SIGKILL during convert.** Once a group's ``convert`` try runs on a
   worker and its in-progress MeasurementSet (``<group>.ms.tmp-<host>-<pid>``,
   written by a process of that worker) exists, the worker is killed with
   SIGKILL: its process group and every process below it, tasks included, as a
   crashed host. The task instance stops heartbeating; the scheduler fails it
   after ``task_instance_heartbeat_timeout`` and Airflow's retry (a new try)
   must run on the other worker, which is the only one alive: the killed worker
   is started again only once the retry runs elsewhere. The dead try's Celery
   message is never acknowledged (late acks), and Redis would hand it out again
   only after its visibility timeout (6 h), long after this test: nothing here
   relies on it.
2. **Scheduler SIGKILL**, while that retry runs (a task queued by the
   scheduler that dies), then the scheduler started again with the same command
   and environment. The tasks in flight must finish in the try they had (the new
   scheduler adopts them rather than resetting them), and no run, task try or
   registry row may be duplicated.
3. **Worker SIGKILL during imaging**, once the first killed worker was
   started again: the worker running a group's ``image`` try while its imager
   work directory exists. Same expectations as 1, for ``image``; the killed
   imager's work directory must be gone at the end too.

The session must then finish with every product complete (``faults.audit``:
each group imaged with a readable MeasurementSet and image, one published
mosaic and catalogue, no in-progress copy left, no duplicate row), each
killed task ``success`` in a later try whose host is the other worker (the
REST API's task-instance tries, as the UI shows them), and the fault report
rows recorded. The heartbeat timeout is shortened so a dead task is noticed
in under a minute; the retry delay is the DAGs' own (1 minute)."""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

import faults
from dsa110_contimg.localstack import free_port
from dsa110_contimg.pipeline import open_registry, window_name
from dsa110_contimg.topology import CeleryAirflow

from airflow_session import DEC, finished_runs, free_redis_db, simulate_transit_session, wait_for_session
from conftest import throwaway_postgres_db

pytestmark = [pytest.mark.airflow, pytest.mark.casa, pytest.mark.slow]

N_GROUPS = 2
TIMEOUT_S = 1800  # the whole session, faults and retries included
INJECT_TIMEOUT_S = 900  # waiting for one injection moment
HEARTBEAT_TIMEOUT_S = 40

# Airflow 3.3 option names (airflow/config_templates/config.yml). A task's supervisor heartbeats
# every [workers] min_heartbeat_interval (5 s); a task silent for 40 s is failed by the scheduler,
# which looks every 5 s, instead of after the default 300 s. A scheduler that died unhealthy (no
# heartbeat for [scheduler] scheduler_health_check_threshold, 30 s) has its queued and running
# tasks adopted by the new one at its start or at the next orphan check, here every 20 s instead
# of 300 s: until then nobody watches those tasks' heartbeats.
TIGHT = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "20",
}


@dataclass
class Kill:
    """One worker SIGKILL: which task try it interrupted, and what the worker was writing."""

    task_id: str
    run_id: str
    group_id: str
    worker: str
    node: str
    try_number: int
    writer_pid: int  # the process writing the in-progress copy
    in_progress: list[str]  # the in-progress copies present at the kill
    writer_was_the_workers: bool  # writer_pid was a process of the killed worker
    exit_code: int | None
    at: float
    retry_host: str | None = None  # where the next try ran
    restarted_at: float | None = None


@dataclass
class SchedulerCrash:
    old_job_id: int | None
    in_flight: dict = field(default_factory=dict)  # (dag_id, run_id, task_id, map_index) -> (try, state)
    exit_code: int | None = None
    at: float = 0.0


def _rows(engine, sql: str, **params) -> list[tuple]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(sa.text(sql), params)]


def _run_id(group_id: str) -> str:
    """The ``group`` run of a group (``RecordGroupsOperator``'s deterministic run id)."""
    return "group__" + group_id.replace(":", "")


def _in_progress(stack: CeleryAirflow, task_id: str, group_id: str) -> list[Path]:
    """The stage's in-progress copy of the group, present only while the stage writes it."""
    staging = stack.data_dir.resolve() / "staging"
    if task_id == "convert":  # convert_group: <group>.ms.tmp-<host>-<pid>
        return sorted((staging / "ms").glob(f"{group_id}.ms.tmp-*"))
    safe = group_id.replace(":", "")  # image_ms: .<name>.<backend>.work-<host>-<pid>
    return sorted((staging / "images" / safe).glob(f".{safe}.*.work-*"))


def _writer_pid(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


def _kill_during(stack: CeleryAirflow, engine, task_id: str, groups: dict[str, str],
                 timeout_s: float = INJECT_TIMEOUT_S) -> Kill:
    """Wait until a first try of ``task_id`` runs on a worker, its in-progress copy exists and
    the other worker's process exists (it may still be starting), then SIGKILL that worker.
    Polled every 0.1 s: a tiny group's stage writes for seconds. ``groups``: run id -> group id."""
    deadline = time.monotonic() + timeout_s
    last_check = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() - last_check > 5:
            stack.check_alive()
            last_check = time.monotonic()
        alive = [w for w in stack.worker_names if w in stack.procs]
        running = _rows(engine, "SELECT run_id, try_number, hostname FROM task_instance WHERE dag_id = 'group' "
                                "AND task_id = :t AND state = 'running' AND try_number = 1", t=task_id)
        for run_id, try_number, host in running:
            worker = (host or "").split("@")[0]
            if len(alive) < 2 or worker not in alive or run_id not in groups:
                continue  # the retry must have another worker to go to
            copies = _in_progress(stack, task_id, groups[run_id])
            if not copies:
                continue
            pid = _writer_pid(copies[-1])
            workers_pids = {p.pid for p in psutil.Process(stack.procs[worker].pid).children(recursive=True)}
            code = stack.stop_worker(worker, signal.SIGKILL)
            return Kill(task_id, run_id, groups[run_id], worker, stack.node_name(worker), try_number, pid,
                        [c.name for c in copies], pid in workers_pids, code, time.monotonic())
        time.sleep(0.1)
    raise AssertionError(f"no first try of {task_id} seen writing on a worker within {timeout_s:.0f} s")


def _restart_after_retry(stack: CeleryAirflow, engine, kill: Kill, timeout_s: float = INJECT_TIMEOUT_S) -> None:
    """Wait until a later try of the killed task runs (or ran) elsewhere, then start the killed
    worker again: before that, the retry could only go to the other worker; after, the restarted
    worker cannot take a try that already started. Not waited for: the next kill may take the
    other worker while this one is still starting (its retry then waits for this one), so the
    next injection never races the start (the session's readiness is checked at its end)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack.check_alive()
        rows = _rows(engine, "SELECT try_number, state, hostname FROM task_instance WHERE dag_id = 'group' "
                             "AND run_id = :r AND task_id = :t", r=kill.run_id, t=kill.task_id)
        if rows and rows[0][0] > kill.try_number and rows[0][1] in ("running", "success") and rows[0][2]:
            kill.retry_host = rows[0][2]
            break
        time.sleep(1)
    else:
        raise AssertionError(f"{kill.task_id} of {kill.run_id} was not retried within {timeout_s:.0f} s: {rows}")
    stack.start_worker(kill.worker)
    kill.restarted_at = time.monotonic()


def _kill_and_recover(stack: CeleryAirflow, engine, task_id: str, groups: dict[str, str], t0: float) -> Kill:
    """``_kill_during`` then ``_restart_after_retry``, each step printed (``pytest -s``)."""
    kill = _kill_during(stack, engine, task_id, groups)
    print(f"\nkilled {kill.worker} (exit {kill.exit_code}) at {kill.at - t0:.0f} s during {task_id} of "
          f"{kill.group_id}: {kill.in_progress}")
    _restart_after_retry(stack, engine, kill)
    print(f"{task_id} of {kill.group_id} retried on {kill.retry_host}; {kill.worker} restarted at "
          f"{kill.restarted_at - t0:.0f} s")
    return kill


def _crash_scheduler(stack: CeleryAirflow, engine) -> SchedulerCrash:
    """SIGKILL the scheduler (nothing of it survives to finish its loop or mark its job ended),
    wait 5 s, start it again."""
    jobs = _rows(engine, "SELECT id FROM job WHERE job_type = 'SchedulerJob' AND state = 'running' ORDER BY id")
    in_flight = {tuple(r[:4]): tuple(r[4:]) for r in _rows(
        engine, "SELECT dag_id, run_id, task_id, map_index, try_number, state FROM task_instance "
                "WHERE state IN ('queued', 'running')")}
    crash = SchedulerCrash(old_job_id=jobs[-1][0] if jobs else None, in_flight=in_flight, at=time.monotonic())
    crash.exit_code = stack.restart("scheduler", signal.SIGKILL, down_s=5)
    return crash


@pytest.fixture(scope="module")
def metadata_db():
    with throwaway_postgres_db("contimg_faults_workers") as url:
        yield url


@pytest.fixture(scope="module")
def broker_url():
    with free_redis_db() as url:
        yield url


@pytest.fixture(scope="module")
def crashed(tmp_path_factory, metadata_db, broker_url):
    from dsa110_contimg.ingest import find_groups

    root = tmp_path_factory.mktemp("faults_workers")
    data = root / "data"
    session = simulate_transit_session(data, N_GROUPS)
    groups = find_groups(data / "incoming", now=datetime.now(timezone.utc) + timedelta(hours=1))
    group_ids = [g.group_id for g in groups]
    assert len(group_ids) == N_GROUPS, group_ids
    window = session.window_start
    stack = CeleryAirflow(home=root / "airflow", data_dir=data, port=free_port(8211), metadata_url=metadata_db,
                          broker_url=broker_url, n_workers=2, worker_concurrency=1, contimg_env={
                              **TIGHT,
                              "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # housekeeping stays paused
                              "CONTIMG_SCHEDULE_START": window.isoformat(),
                              "CONTIMG_SCHEDULE_END": (window + timedelta(minutes=59)).isoformat(),
                              "CONTIMG_CATCHUP": "true",
                              "CONTIMG_POINTING_DEC_DEG": str(DEC),
                              "CONTIMG_GROUP_TIMEOUT_S": "30",
                          })
    engine = sa.create_engine(metadata_db, poolclass=sa.pool.NullPool)
    by_run = {_run_id(g): g for g in group_ids}
    out: dict = {"stack": stack, "session": session, "group_ids": group_ids, "window": window_name(window)}
    t0 = time.monotonic()
    try:
        stack.prepare()
        stack.start()
        stack.wait_workers_ready()
        stack.unpause()
        out["convert_kill"] = k1 = _kill_and_recover(stack, engine, "convert", by_run, t0)
        out["scheduler_crash"] = crash = _crash_scheduler(stack, engine)
        print(f"scheduler killed (exit {crash.exit_code}) and restarted at {crash.at - t0:.0f} s; "
              f"in flight: {crash.in_flight}")
        out["image_kill"] = k2 = _kill_and_recover(stack, engine, "image", by_run, t0)
        out["summary"] = wait_for_session(stack, N_GROUPS, TIMEOUT_S - (time.monotonic() - t0))
        stack.wait_workers_ready()  # both killed workers came back
        token = stack.api_token()
        out["runs"] = finished_runs(stack, token, ("group", "bandpass", "mosaic"))
        out["tries"] = {(k.run_id, k.task_id): stack.api_get(
            f"/api/v2/dags/group/dagRuns/{k.run_id}/taskInstances/{k.task_id}/tries", token)["task_instances"]
            for k in (k1, k2)}
        out["wall_s"] = round(time.monotonic() - t0, 1)
        print(f"session finished at {out['wall_s']} s: {out['summary']}")
    finally:
        stack.stop()
    out["task_instances"] = {tuple(r[:4]): r[4:] for r in _rows(
        engine, "SELECT dag_id, run_id, task_id, map_index, try_number, state, hostname FROM task_instance")}
    out["history"] = _rows(engine, "SELECT dag_id, run_id, task_id, map_index, try_number, state, hostname "
                                   "FROM task_instance_history ORDER BY dag_id, run_id, task_id, try_number")
    out["scheduler_jobs"] = _rows(engine, "SELECT id, state FROM job WHERE job_type = 'SchedulerJob' ORDER BY id")
    out["dag_runs"] = _rows(engine, "SELECT dag_id, run_id, state FROM dag_run ORDER BY dag_id, run_id")
    out["audit"] = faults.audit(stack.registry_url, data, group_ids, [out["window"]],
                                [str(f) for f in session.sim.files])
    out["work_dirs"] = sorted(str(p) for p in data.rglob("*") if ".work-" in p.name)
    engine.dispose()
    return out


def _kill_outcome(c: dict, kill: Kill) -> list[str]:
    """What is wrong with the killed task's recovery (empty: recovered as required)."""
    problems = []
    if not kill.writer_was_the_workers:
        problems.append(f"the writer pid {kill.writer_pid} of {kill.in_progress} was not the killed worker's")
    ti = c["task_instances"][("group", kill.run_id, kill.task_id, -1)]
    try_number, state, host = ti
    if state != "success" or try_number <= kill.try_number or host == kill.node:
        problems.append(f"task instance ended {state} in try {try_number} on {host}")
    tries = {t["try_number"]: t for t in c["tries"][(kill.run_id, kill.task_id)]}
    killed = tries.get(kill.try_number, {})
    if killed.get("hostname") != kill.node or killed.get("state") == "success":
        problems.append(f"the killed try shows {killed.get('state')} on {killed.get('hostname')}")
    good = [t for t in tries.values() if t["state"] == "success"]
    if len(good) != 1 or good[0]["hostname"] == kill.node or good[0]["try_number"] <= kill.try_number:
        problems.append(f"successful tries {[(t['try_number'], t['hostname']) for t in good]}")
    return problems


def _crash_outcome(c: dict) -> list[str]:
    crash: SchedulerCrash = c["scheduler_crash"]
    problems = []
    # no run made twice: one per group, one bandpass (the transit), one mosaic (the window)
    runs: dict[str, list] = {}
    for dag_id, run_id, state in c["dag_runs"]:
        runs.setdefault(dag_id, []).append((run_id, state))
    if sorted(r for r, _ in runs.get("group", [])) != sorted(_run_id(g) for g in c["group_ids"]):
        problems.append(f"group runs {runs.get('group')}")
    if len(runs.get("bandpass", [])) != 1 or len(runs.get("mosaic", [])) != 1:
        problems.append(f"bandpass/mosaic runs {runs.get('bandpass')} {runs.get('mosaic')}")
    if any(state != "success" for d in ("group", "bandpass", "mosaic") for _, state in runs.get(d, [])):
        problems.append(f"runs not successful: {runs}")
    # the tasks running at the crash finished in the try they had: adopted, not reset and run again
    for key, (try_number, state) in crash.in_flight.items():
        final = c["task_instances"].get(key)
        if state == "running" and (final is None or final[1] != "success" or final[0] != try_number):
            problems.append(f"{key} running in try {try_number} at the crash ended {final}")
    # no task ran to success twice (a try reset and run again while its first run went on)
    successes: dict = {}
    for dag_id, run_id, task_id, map_index, _try, state, _host in c["history"]:
        if state == "success":
            successes.setdefault((dag_id, run_id, task_id, map_index), []).append(_try)
    for key, (try_number, state, _host) in c["task_instances"].items():
        if state == "success" and key in successes:
            problems.append(f"{key} succeeded in tries {successes[key]} and {try_number}")
    # the crashed scheduler's job was found dead and marked so by its successor
    jobs = dict(c["scheduler_jobs"])
    if crash.old_job_id is None or jobs.get(crash.old_job_id) != "failed" or len(jobs) < 2:
        problems.append(f"scheduler jobs {c['scheduler_jobs']} (crashed: {crash.old_job_id})")
    return problems


def _lost_for(audit: faults.Audit, group_id: str) -> int:
    return sum(1 for item in audit.lost if group_id in item or group_id.replace(":", "") in item)


def test_faults_recovered_with_every_product_complete(crashed):
    c = crashed
    audit: faults.Audit = c["audit"]
    k1, k2 = c["convert_kill"], c["image_kill"]
    s = c["summary"]
    complete = (audit.ok and not c["work_dirs"] and s["groups_processed"] == N_GROUPS
                and s["mosaics_published"] == 1)
    checks = {"worker SIGKILL during convert": _kill_outcome(c, k1),
              "worker SIGKILL during imaging": _kill_outcome(c, k2),
              "scheduler restart": _crash_outcome(c)}
    # a killed task's losses are its group's; the scheduler's crash touched every run: all losses
    by_fault = {"worker SIGKILL during convert": _lost_for(audit, k1.group_id),
                "worker SIGKILL during imaging": _lost_for(audit, k2.group_id),
                "scheduler restart": len(audit.lost)}
    for fault, problems in checks.items():
        faults.record(fault, 1, int(complete and not problems), by_fault[fault])
    print("\n" + faults.report_table([r for r in faults.REPORT if r.fault in checks]))
    print("tries: " + "; ".join(f"{task_id} of {run_id}: " + ", ".join(
        f"try {t['try_number']} {t['state']} on {t['hostname']}" for t in tries)
        for (run_id, task_id), tries in c["tries"].items()))
    assert audit.ok, f"lost {audit.lost}; partial {audit.partial}; duplicates {audit.duplicates}"
    assert not c["work_dirs"], f"imager work directories left behind: {c['work_dirs']}"
    assert s["groups_processed"] == N_GROUPS and s["mosaics_published"] == 1, s
    assert not any(checks.values()), checks
    assert len(audit.lost) == 0


def test_each_kill_hit_its_stage_on_a_worker_and_the_retry_ran_on_the_other(crashed):
    """The injections were what they claim: a first try killed while its stage wrote its
    in-progress copy from a process of that worker; the next try on the other worker."""
    for kill in (crashed["convert_kill"], crashed["image_kill"]):
        assert kill.writer_was_the_workers, kill
        assert kill.try_number == 1 and kill.in_progress, kill
        assert kill.exit_code == -signal.SIGKILL, kill  # it died of the signal, with no chance to clean up
        assert kill.retry_host and kill.retry_host != kill.node, kill
        assert kill.retry_host in {crashed["stack"].node_name(w) for w in crashed["stack"].worker_names}, kill


def test_measurement_sets_are_whole(crashed):
    """The MeasurementSet converted after the kill has as many rows as the other group's (same
    preset, same number of integrations): a half-written table would have fewer or none."""
    from casatools import table

    reg = open_registry(crashed["stack"].registry_url)
    nrows = {}
    for gid in crashed["group_ids"]:
        ms = reg.get_group(gid)["ms_path"]
        assert ms and ".tmp-" not in ms and Path(ms).name == f"{gid}.ms", ms
        tb = table()
        tb.open(ms)
        try:
            nrows[gid] = tb.nrows()
        finally:
            tb.close()
    assert len(set(nrows.values())) == 1 and min(nrows.values()) > 0, nrows
