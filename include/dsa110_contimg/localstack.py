"""Run this project's Airflow deployment as local processes (embedded default).

Used by ``make demo`` and the integration tests: SQLite metadata database,
LocalExecutor, and the four components (scheduler, dag-processor, triggerer,
api-server) started as child processes with one shared environment. This
module only starts programs; it imports nothing from Airflow. The production
topology (PostgreSQL, Redis, Celery workers) run the same way is
``topology.CeleryAirflow``.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
CASA_POOL = "casa"  # the Airflow pool of the heavy tasks (contimg_airflow.operators.CASA_POOL)
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# SQLite allows one writer: a CLI command racing the scheduler fails with "database is
# locked" after the driver's default 5 s wait. On SQLite, every component of the embedded
# stack waits up to a minute instead (Airflow imports this dict).
SQLITE_CONNECT_ARGS = {"timeout": 60}


def free_port(preferred: int = 8080) -> int:
    """``preferred`` if nothing listens there, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is fine
            try:
                s.bind(("127.0.0.1", port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise RuntimeError("no free TCP port")


@dataclass
class LocalAirflow:
    home: Path
    data_dir: Path
    port: int = 8080
    contimg_env: dict[str, str] = field(default_factory=dict)
    project_root: Path = PROJECT_ROOT
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def registry_db(self) -> Path:
        return self.home / "contimg_registry.db"

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    def fernet_key(self) -> str:
        """This home's Fernet key (made once, kept in the home so restarts share it)."""
        path = self.home / "fernet.key"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".fernet.key.{os.getpid()}")
            tmp.write_text(base64.urlsafe_b64encode(os.urandom(32)).decode())
            tmp.replace(path)
        return path.read_text().strip()

    def env(self) -> dict[str, str]:
        home = self.home.resolve()
        env = dict(os.environ)
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        env.update({
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.project_root / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.project_root / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__API_AUTH__JWT_SECRET": "contimg-local-jwt-secret-not-for-production",
            # one key for every component: the scheduler encrypts what the triggerer decrypts (deadline
            # callbacks); without it each process under pytest would make its own
            "AIRFLOW__CORE__FERNET_KEY": self.fernet_key(),
            "AIRFLOW__API__SECRET_KEY": "contimg-local-secret-key",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "1200",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "CONTIMG_DATA_DIR": str(self.data_dir.resolve()),
            "CONTIMG_CASA_CONFIG_DIR": str(home / "casa"),
            "PYTHONPATH": os.pathsep.join([str(self.project_root / "include"), str(self.project_root / "plugins"),
                                           env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        })
        env.update(self.deployment_env(env))
        env.update(self.contimg_env)
        if env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite"):
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"] = "dsa110_contimg.localstack.SQLITE_CONNECT_ARGS"
        return env

    def deployment_env(self, base: dict[str, str]) -> dict[str, str]:
        """Executor, metadata database and registry connection: LocalExecutor, SQLite (or the
        database named by CONTIMG_AIRFLOW_DB; PostgreSQL: backfills need it) and a SQLite registry
        beside it. ``topology.CeleryAirflow`` replaces these with the production topology's."""
        metadata_url = base.get("CONTIMG_AIRFLOW_DB") or f"sqlite:///{self.home.resolve() / 'airflow.db'}"
        return {
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            "AIRFLOW_CONN_CONTIMG_DB": json.dumps({"conn_type": "sqlite", "host": str(self.registry_db)}),
        }

    @property
    def registry_url(self) -> str:
        """SQLAlchemy URL of the registry the tasks reach through the ``contimg_db`` connection."""
        return f"sqlite:///{self.registry_db}"

    def registry_exists(self) -> bool:
        """Whether a task has made the registry yet (opening it would make it)."""
        return self.registry_db.exists()

    def airflow(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "airflow", *args], env=self.env(), check=check,
                              capture_output=True, text=True, timeout=timeout)

    def list_runs(self, dag_id: str) -> list[dict]:
        """The DAG's runs as the CLI reports them (warnings it prints are skipped)."""
        out = self.airflow("dags", "list-runs", dag_id, "-o", "json").stdout
        for line in out.splitlines():
            if line.startswith("["):
                return json.loads(line)
        return []

    def unpause(self, dag_ids: tuple[str, ...] = ("ingest", "group", "bandpass", "mosaic"),
                timeout_s: float = 300) -> None:
        """Unpause the DAGs once the dag-processor has registered them (a rerun
        may find them paused by an operator)."""
        deadline = time.monotonic() + timeout_s
        pending = list(dag_ids)
        while pending:
            self.check_alive()
            dag_id = pending[0]
            if self.airflow("dags", "unpause", dag_id, "-y", check=False).returncode == 0:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise RuntimeError(f"DAG {dag_id} was not registered within {timeout_s:.0f} s; "
                                   f"see {self.home / 'dag-processor.out'}")
            time.sleep(3)

    def api_token(self, user: str = "admin", password: str = "admin") -> str:
        """Log in to the api-server as a person would; returns the access token."""
        import urllib.request

        req = urllib.request.Request(f"{self.url}/auth/token", method="POST",
                                     data=json.dumps({"username": user, "password": password}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())["access_token"]

    def api_get(self, path: str, token: str) -> dict:
        return self.api_request("GET", path, token)

    def api_request(self, method: str, path: str, token: str, body: dict | None = None) -> dict:
        """One call of Airflow's REST API (v2) as a logged-in user; the decoded JSON reply."""
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        req = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers, method=method)
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else {}

    def prepare(self) -> None:
        """Create AIRFLOW_HOME, the UI password file, the metadata database and the ``casa`` pool."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({"admin": "admin"}))
        self.airflow("db", "migrate", timeout=600)
        self.airflow("pools", "set", CASA_POOL, str(self.casa_pool_slots()),
                     "heavy tasks (convert, calibration, image, mosaic, crossmatch) running at once")

    def casa_pool_slots(self) -> int:
        """The config's ``casa_pool_slots``, as the tasks' environment sets it."""
        from .config import PipelineConfig

        return PipelineConfig.load(env=self.env()).casa_pool_slots

    def start(self) -> None:
        """Start the four components; their output goes to AIRFLOW_HOME/<name>.out."""
        env = self.env()
        for name in COMPONENTS:
            if name in self.procs and self.procs[name].poll() is None:
                continue
            out = open(self.home / f"{name}.out", "ab")
            args = [sys.executable, "-m", "airflow", name]
            if name == "api-server":
                args += ["--port", str(self.port)]
            self.procs[name] = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True, cwd=self.home)

    def check_alive(self) -> None:
        dead = [n for n, p in self.procs.items() if p.poll() is not None]
        if dead:
            tails = {n: (self.home / f"{n}.out").read_text(errors="replace")[-2000:] for n in dead}
            raise RuntimeError(f"Airflow component(s) exited: {dead}\n{tails}")

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        self.procs.clear()
