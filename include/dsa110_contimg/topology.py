"""The production topology of docker-compose.yaml, run as local processes.

Same components and settings as the compose file, without a Docker engine:
the CeleryExecutor with a Redis broker, the Airflow metadata database, the
Celery result backend and the ``contimg`` registry schema all in one
PostgreSQL database, the api-server, scheduler, dag-processor and triggerer,
and N Celery workers (``airflow celery worker``), each its own process
(``procs["worker1"]``, ...) so a test can stop or kill one. Used by the
integration tests; PostgreSQL and Redis must already be running. Like
``localstack``, this module only starts programs and imports nothing from
Airflow.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from .localstack import COMPONENTS, LocalAirflow

HOSTNAME_ENV = "CONTIMG_WORKER_HOSTNAME"


def worker_hostname() -> str:
    """Airflow's ``[core] hostname_callable`` in this topology's workers: the worker's Celery
    node name (``worker1@<host>``). Several workers share this host, so the task instances
    record which worker ran them, as separate hosts would record their own names."""
    return os.environ.get(HOSTNAME_ENV) or socket.getfqdn()


@dataclass
class CeleryAirflow(LocalAirflow):
    """``LocalAirflow`` with docker-compose's topology: CeleryExecutor, Redis broker, PostgreSQL
    for the metadata, the Celery results and the registry (schema ``contimg``), and Celery workers.

    ``metadata_url`` is a ``postgresql+psycopg2://`` URL of an existing database; ``broker_url``
    a Redis URL whose database index the caller picks (tests use a non-zero one so they never
    meet another user of the server)."""

    metadata_url: str = ""
    broker_url: str = "redis://127.0.0.1:6379/0"
    n_workers: int = 2
    worker_concurrency: int = 1

    def __post_init__(self) -> None:
        if not self.metadata_url.startswith("postgresql"):
            raise ValueError(f"CeleryAirflow needs a PostgreSQL metadata URL, got {self.metadata_url!r}")

    @property
    def worker_names(self) -> tuple[str, ...]:
        return tuple(f"worker{i}" for i in range(1, self.n_workers + 1))

    @staticmethod
    def node_name(worker: str) -> str:
        """The Celery node name of a worker (``--celery-hostname``), also its task instances' hostname."""
        return f"{worker}@{socket.gethostname()}"

    @property
    def registry_url(self) -> str:
        """The registry lives in the metadata database itself, schema ``contimg``."""
        return self.metadata_url

    def registry_exists(self) -> bool:
        return True  # ``prepare()`` migrates it

    @property
    def result_backend(self) -> str:
        """Celery's database result backend on the metadata database (``db+postgresql://``)."""
        from sqlalchemy.engine import make_url

        url = make_url(self.metadata_url).set(drivername="postgresql")
        return "db+" + url.render_as_string(hide_password=False)

    def registry_connection(self) -> str:
        """``AIRFLOW_CONN_CONTIMG_DB``: a postgres connection to the metadata database."""
        from sqlalchemy.engine import make_url

        url = make_url(self.metadata_url)
        conn = {"conn_type": "postgres", "host": url.host or "127.0.0.1", "port": url.port or 5432,
                "login": url.username or "postgres", "schema": url.database}
        if url.password:
            conn["password"] = url.password
        return json.dumps(conn)

    def deployment_env(self, base: dict[str, str]) -> dict[str, str]:
        return {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.metadata_url,
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": self.result_backend,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
            # Airflow's defaults, stated because the tests rely on them: a worker holds (prefetches)
            # no more messages than it has free processes, and acknowledges a task only when it ends.
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
            "AIRFLOW_CONN_CONTIMG_DB": self.registry_connection(),
        }

    def worker_env(self, worker: str) -> dict[str, str]:
        env = self.env()
        env[HOSTNAME_ENV] = self.node_name(worker)
        env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] = f"{__name__}.worker_hostname"
        return env

    def prepare(self) -> None:
        """``LocalAirflow.prepare()`` (``airflow db migrate``, the ``casa`` pool), then the registry's
        migrations in the same database, with the project's CLI (``dsa110 registry migrate``)."""
        super().prepare()
        subprocess.run([sys.executable, "-m", "dsa110_contimg.cli", "registry", "migrate",
                        "--registry", self.registry_url], env=self.env(), check=True,
                       capture_output=True, text=True, timeout=300)

    def start(self) -> None:
        """The four components, then every worker."""
        super().start()
        for worker in self.worker_names:
            self.start_worker(worker)

    def start_worker(self, worker: str) -> None:
        """Start one Celery worker (``procs[worker]``, output in AIRFLOW_HOME/<worker>.out).

        Its own process group, so ``stop_worker`` reaches its pool processes. It serves no logs
        over HTTP (``--skip-serve-logs``): every process here writes to one log folder, which the
        api-server reads directly, and two log servers on one host would want the same port."""
        if worker in self.procs and self.procs[worker].poll() is None:
            return
        out = open(self.home / f"{worker}.out", "ab")
        args = [sys.executable, "-m", "airflow", "celery", "worker", "--celery-hostname", self.node_name(worker),
                "--concurrency", str(self.worker_concurrency), "--skip-serve-logs"]
        self.procs[worker] = subprocess.Popen(args, env=self.worker_env(worker), stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True, cwd=self.home)

    def wait_workers_ready(self, workers: tuple[str, ...] | None = None, timeout_s: float = 300) -> None:
        """Wait until every named worker answers a Celery ping through the broker."""
        pending = {self.node_name(w) for w in (workers or self.worker_names)}
        deadline = time.monotonic() + timeout_s
        while pending:
            self.check_alive()
            res = subprocess.run([sys.executable, "-m", "celery", "-b", self.broker_url, "inspect", "ping",
                                  "-d", ",".join(sorted(pending)), "-t", "3", "-j"],
                                 env=self.env(), capture_output=True, text=True, timeout=120)
            try:
                replies = json.loads(res.stdout.strip().splitlines()[-1]) if res.stdout.strip() else {}
            except json.JSONDecodeError:
                replies = {}
            pending -= {node for node, reply in replies.items() if reply.get("ok") == "pong"}
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"Celery worker(s) {sorted(pending)} did not answer within {timeout_s:.0f} s; "
                                   f"see {self.home}/worker*.out")
            if pending:
                time.sleep(3)

    def stop_worker(self, worker: str, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int | None:
        """Send ``sig`` to one worker (its process group and the tasks it runs); wait for it to exit.

        SIGTERM is Celery's warm shutdown (running tasks finish first); SIGKILL kills it and its
        tasks at once, as a crashed host would. A worker that exited leaves ``procs`` (so
        ``check_alive`` does not count it; ``start_worker`` starts it again). Returns its exit
        code, or None if it outlived the wait."""
        return self.stop_process(worker, sig, timeout_s)

    def stop_process(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int | None:
        """``stop_worker`` for any process of ``procs`` (a worker or one of the four components).

        The task SDK's supervisor puts each task in a process group of its own, which ``killpg``
        does not reach; with SIGKILL every process below ``name`` is killed too (psutil handles
        taken before the signal), so nothing of a "crashed" process lives on to heartbeat."""
        proc = self.procs[name]
        tree = _descendants(proc.pid)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            if sig == signal.SIGKILL:
                _kill_all(tree)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        del self.procs[name]
        return code

    def restart(self, component: str, sig: int = signal.SIGTERM, down_s: float = 0.0) -> int | None:
        """Stop one of the four components (``scheduler``, ...) with ``sig``, wait ``down_s``, and
        start it again with ``LocalAirflow.start``'s command and environment, as a supervisor
        (systemd, Docker's restart policy) would after a crash or a redeploy. Returns the old
        process's exit code.

        ``LocalAirflow.start`` starts every component that is not running, so the others are
        checked alive first: this restarts ``component`` and nothing else."""
        if component not in COMPONENTS:
            raise ValueError(f"not an Airflow component: {component!r} (workers: stop_worker/start_worker)")
        self.check_alive()
        code = self.stop_process(component, sig)
        if code is None:
            raise RuntimeError(f"{component} did not exit after signal {sig}")
        time.sleep(down_s)
        LocalAirflow.start(self)
        return code

    def stop(self) -> None:
        """Stop everything, including task processes that run in their own process groups
        (the task SDK's supervisor gives each task one): nothing started here outlives it."""
        tree = [c for p in self.procs.values() if p.poll() is None for c in _descendants(p.pid)]
        super().stop()
        _kill_all(tree)


def _descendants(pid: int) -> list:
    """The processes below ``pid`` (psutil handles: killing one later never hits a reused pid)."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill_all(procs: list) -> None:
    """SIGKILL those of ``procs`` (psutil handles) still alive."""
    import psutil

    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
