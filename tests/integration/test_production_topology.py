"""docker-compose.yaml's production topology, run natively, with a simulated session end to end.

No Docker engine here, so the same components run as local processes
(``dsa110_contimg.topology.CeleryAirflow``): PostgreSQL (a throw-away
database on the server at 127.0.0.1:5432) holding the Airflow metadata, the
Celery result backend and the ``contimg`` registry schema; Redis (a non-zero
database index of the server at 127.0.0.1:6379) as the Celery broker; the
api-server, scheduler, dag-processor and triggerer; and two Celery workers.

Each worker runs one task at a time (concurrency 1, prefetch 1, late acks),
so while one is busy every other queued task must go to the other: the two
groups' runs, their mapped trigger tasks and the sensors of the bandpass and
mosaic runs overlap, and both workers take tasks.

While the session runs, the memory of each worker's processes is sampled
(psutil: the worker, its pool process and the task processes it runs); the
numbers are printed (``pytest -s``), not asserted on."""
from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from dsa110_contimg.localstack import free_port
from dsa110_contimg.registry import head_revision
from dsa110_contimg.topology import CeleryAirflow

from airflow_session import DEC, finished_runs, free_redis_db, simulate_transit_session, wait_for_session
from conftest import throwaway_postgres_db

pytestmark = [pytest.mark.airflow, pytest.mark.casa, pytest.mark.slow]

N_GROUPS = 2
TIMEOUT_S = 1500
MIB = 2**20


@pytest.fixture(scope="module")
def metadata_db():
    with throwaway_postgres_db("contimg_topology") as url:
        yield url


@pytest.fixture(scope="module")
def broker_url():
    with free_redis_db() as url:
        yield url


class MemorySampler(threading.Thread):
    """Peak memory of every component's process tree, and of each worker's processes by role,
    sampled every second with psutil: RSS, and PSS (which shares pages that forked processes
    have in common between them, so PSS adds up across processes and RSS does not)."""

    def __init__(self, stack: CeleryAirflow, interval_s: float = 1.0):
        super().__init__(daemon=True)
        self.stack, self.interval_s = stack, interval_s
        self.peaks: dict[str, tuple[int, int]] = {}  # key -> (rss, pss) bytes
        self.halt = threading.Event()

    def _keep(self, key: str, rss: int, pss: int) -> None:
        old = self.peaks.get(key, (0, 0))
        self.peaks[key] = (max(old[0], rss), max(old[1], pss))

    def sample(self, prefix: str = "") -> None:
        import psutil

        for name, popen in list(self.stack.procs.items()):
            try:
                top = psutil.Process(popen.pid)
                tree = [top, *top.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            rss_sum = pss_sum = 0
            for proc in tree:
                try:
                    mem, title = proc.memory_full_info(), " ".join(proc.cmdline())
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss_sum, pss_sum = rss_sum + mem.rss, pss_sum + mem.pss
                if name not in self.stack.worker_names:
                    continue
                if proc.pid == top.pid:
                    role = f"{name}/worker"
                elif title.startswith("airflow worker --"):  # the task runner's title: its task instance id
                    role = f"task/{title.split('--', 1)[1].strip()}"
                elif "ForkPoolWorker" in title or title.startswith("airflow supervisor:"):
                    # the Celery pool process, retitled while it supervises a task
                    role = f"{name}/pool"
                else:  # the worker's helper process (stale DAG-bundle cleanup)
                    role = f"{name}/helper"
                self._keep(prefix + role, mem.rss, mem.pss)
            self._keep(f"{prefix}{name}/tree", rss_sum, pss_sum)

    def run(self) -> None:
        while not self.halt.wait(self.interval_s):
            self.sample()

    def report(self, task_ids: dict[str, str]) -> dict:
        """MiB: per component's tree, per worker role, and per task (the largest instance of each)."""
        out: dict[str, dict] = {"idle": {}, "peak": {}, "task_peak": {}}
        for key, (rss, pss) in sorted(self.peaks.items()):
            value = {"rss_mib": round(rss / MIB), "pss_mib": round(pss / MIB)}
            if key.startswith("idle:"):
                out["idle"][key[5:]] = value
            elif key.startswith("task/"):
                task = task_ids.get(key[5:], "?")
                best = out["task_peak"].get(task)
                if best is None or value["rss_mib"] > best["rss_mib"]:
                    out["task_peak"][task] = value
            else:
                out["peak"][key] = value
        return out


@pytest.fixture(scope="module")
def run(tmp_path_factory, metadata_db, broker_url):
    root = tmp_path_factory.mktemp("topology")
    data = root / "data"
    session = simulate_transit_session(data, N_GROUPS)
    window = session.window_start
    stack = CeleryAirflow(home=root / "airflow", data_dir=data, port=free_port(8197), metadata_url=metadata_db,
                          broker_url=broker_url, n_workers=2, worker_concurrency=1, contimg_env={
                              # Airflow's default, kept by docker-compose.yaml: nothing runs before
                              # unpause(), so the workers are idle when first sampled
                              "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                              "CONTIMG_SCHEDULE_START": window.isoformat(),
                              "CONTIMG_SCHEDULE_END": (window + timedelta(minutes=59)).isoformat(),
                              "CONTIMG_CATCHUP": "true",
                              "CONTIMG_POINTING_DEC_DEG": str(DEC),
                              "CONTIMG_GROUP_TIMEOUT_S": "30",
                          })
    sampler = MemorySampler(stack)
    out: dict = {"stack": stack, "root": root}
    t0 = time.monotonic()
    try:
        stack.prepare()
        out["registry_revision_before_tasks"] = _scalar(metadata_db,
                                                        "SELECT version_num FROM contimg.contimg_alembic_version")
        stack.start()
        stack.wait_workers_ready()
        time.sleep(5)
        sampler.sample(prefix="idle:")  # both workers up, every DAG paused: no task yet
        sampler.start()
        stack.unpause()
        out["summary"] = wait_for_session(stack, N_GROUPS, TIMEOUT_S)
        token = stack.api_token()
        out["runs"] = finished_runs(stack, token, ("group", "bandpass", "mosaic"))
        out["api_task_instances"] = [
            ti for r in out["runs"]["group"] for ti in stack.api_get(
                f"/api/v2/dags/group/dagRuns/{r['dag_run_id']}/taskInstances", token)["task_instances"]]
        out["wall_s"] = round(time.monotonic() - t0, 1)
    finally:
        sampler.halt.set()
        if sampler.is_alive():
            sampler.join(timeout=30)
        stack.stop()
    task_ids = {str(i): f"{d}.{t}" for i, d, t in _rows(metadata_db, "SELECT id, dag_id, task_id FROM task_instance")}
    out["memory"] = sampler.report(task_ids)
    print(f"\nproduction topology: {out['wall_s']} s; memory (MiB): {json.dumps(out['memory'])}")
    return out


def _scalar(url: str, sql: str):
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            return c.execute(sa.text(sql)).scalar()
    finally:
        engine.dispose()


def _rows(url: str, sql: str) -> list[tuple]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            return [tuple(r) for r in c.execute(sa.text(sql))]
    finally:
        engine.dispose()


def test_every_run_succeeded(run):
    s, runs = run["summary"], run["runs"]
    assert s["groups_seen"] == N_GROUPS and s["groups_processed"] == N_GROUPS, s
    assert s["mosaics_published"] == 1, s
    assert len(runs["group"]) == N_GROUPS and {r["state"] for r in runs["group"]} == {"success"}, runs["group"]
    assert [r["state"] for r in runs["bandpass"]] == ["success"]
    assert [r["state"] for r in runs["mosaic"]] == ["success"]


def test_registry_is_the_contimg_schema_of_the_metadata_database(run, metadata_db):
    """The registry's rows, read straight from the one PostgreSQL database with SQL."""
    assert run["registry_revision_before_tasks"] == head_revision()  # migrated by prepare(), as an init would
    groups = _rows(metadata_db, "SELECT group_id, status FROM contimg.groups")
    assert len(groups) == N_GROUPS and {st for _, st in groups} == {"imaged"}, groups
    products = dict(((k, st), n) for k, st, n in _rows(
        metadata_db, "SELECT kind, status, count(*) FROM contimg.products GROUP BY kind, status"))
    assert products.get(("mosaic", "published")) == 1, products
    assert products.get(("catalog", "published")) == 1, products
    assert sum(n for (k, _), n in products.items() if k == "image") == N_GROUPS, products
    published = _scalar(metadata_db, "SELECT published_path FROM contimg.products "
                                     "WHERE kind = 'mosaic' AND status = 'published'")
    assert published.startswith(str(run["stack"].data_dir.resolve() / "products"))
    calsets = _rows(metadata_db, "SELECT DISTINCT set_name, set_kind FROM contimg.caltables WHERE status = 'active'")
    assert {k for _, k in calsets} == {"bandpass", "gains"}, calsets


def test_airflow_metadata_and_celery_results_share_that_database(run, metadata_db):
    schemas = {s for (s,) in _rows(metadata_db, "SELECT DISTINCT table_schema FROM information_schema.tables "
                                                "WHERE table_name IN ('dag_run', 'task_instance', 'products')")}
    assert schemas == {"public", "contimg"}
    runs = dict(_rows(metadata_db, "SELECT dag_id, count(*) FROM dag_run WHERE state = 'success' GROUP BY dag_id"))
    assert runs.get("group") == N_GROUPS and runs.get("mosaic") == 1, runs
    assert _scalar(metadata_db, "SELECT version_num FROM alembic_version")  # Airflow's own migrations
    # the Celery result backend (db+postgresql): one row per task the workers ran
    assert _scalar(metadata_db, "SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'") >= 10


def test_both_workers_took_tasks(run, metadata_db):
    stack = run["stack"]
    nodes = {stack.node_name(w) for w in stack.worker_names}
    per_host = dict(_rows(metadata_db, "SELECT hostname, count(*) FROM task_instance "
                                       "WHERE state = 'success' GROUP BY hostname"))
    # each worker ran tasks, and nothing else did (a task that never reached a worker has no hostname)
    assert set(per_host) - {None, ""} == nodes, per_host
    assert all(n >= 2 for n in per_host.values()), per_host
    # the REST API (what the UI shows) says the same of the group runs' tasks
    api_hosts = {ti["hostname"] for ti in run["api_task_instances"]}
    assert api_hosts <= nodes and len(run["api_task_instances"]) >= 7 * N_GROUPS, api_hosts
