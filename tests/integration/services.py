"""Throw-away PostgreSQL and Redis servers for tests that restart them.

The shared servers at 127.0.0.1:5432 and :6379 must never be restarted by a
test, so a test that restarts its database or its broker gets its own: a
PostgreSQL 15 cluster (``initdb`` with trust authentication, run as the
``postgres`` OS user, since PostgreSQL refuses to run as root) and a Redis
server, each on a free port with its files in a directory of its own, each
stopped (and its files removed) when the ``with`` block ends, even if the
test failed. A restart is a real one: the server process exits and a new one
starts on the same port and files, as ``docker compose restart`` would.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dsa110_contimg.localstack import free_port

PG_DIRS = ("", "/usr/local/bin", "/usr/lib/postgresql/15/bin")  # "" = PATH


def _pg_bin(name: str) -> str:
    for d in PG_DIRS:
        path = shutil.which(name) if not d else str(Path(d) / name)
        if path and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(f"PostgreSQL's {name} is not installed (looked in PATH, {PG_DIRS[1:]})")


def _as_postgres(args: list[str]) -> list[str]:
    """Run ``args`` as the ``postgres`` OS user when we are root (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return args
    return ["runuser", "-u", "postgres", "--", *args]


@dataclass
class PostgresCluster:
    """A PostgreSQL cluster of its own: data in ``root/data``, socket and log in ``root``."""

    root: Path
    port: int
    database: str = "contimg"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{self.database}"

    def _ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(self.data), "-w", "-t", str(int(timeout)),
                                            *args]), capture_output=True, text=True, timeout=timeout + 30)

    def init(self) -> None:
        subprocess.run(_as_postgres([_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                                     "-E", "UTF8", "--no-sync"]), check=True, capture_output=True, text=True,
                       timeout=300)
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.root}'\nmax_connections = 200\nfsync = off\n")

    def start(self) -> None:
        res = self._ctl("-l", str(self.log), "start")
        if res.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {res.stdout}{res.stderr}\n{self.log_tail()}")

    def restart(self, mode: str = "fast", down_s: float = 0.0) -> float:
        """Restart the server: it exits (``fast``: open sessions are ended, as a container stop
        does), stays down ``down_s`` seconds (0: ``pg_ctl restart``), then starts again on the
        same port and data. Returns the seconds it was unreachable."""
        t0 = time.monotonic()
        if down_s > 0:
            res = self._ctl("-m", mode, "stop")
            if res.returncode == 0:
                time.sleep(down_s)
                res = self._ctl("-l", str(self.log), "start")
        else:
            res = self._ctl("-l", str(self.log), "-m", mode, "restart")
        if res.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed: {res.stdout}{res.stderr}\n{self.log_tail()}")
        return time.monotonic() - t0

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            res = self._ctl("-m", mode, "stop")
            if res.returncode != 0:
                self._ctl("-m", "immediate", "stop")

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def create_database(self) -> None:
        import sqlalchemy as sa

        admin = sa.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres",
                                 isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as c:
                c.execute(sa.text(f'CREATE DATABASE "{self.database}"'))
        finally:
            admin.dispose()


def _private_dir(prefix: str, owner: str | None) -> Path:
    """A new directory under the system temp dir (pytest's are root-only, and the server may run
    as another user), owned by ``owner``."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if owner and os.geteuid() == 0:
        pw = pwd.getpwnam(owner)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


@contextlib.contextmanager
def postgres_cluster(database: str = "contimg"):
    """A running throw-away PostgreSQL cluster with an empty database ``database``; stopped and
    deleted afterwards."""
    root = _private_dir("contimg-pg-", "postgres")
    cluster = PostgresCluster(root=root, port=free_port(0), database=database)
    try:
        cluster.init()
        cluster.start()
        cluster.create_database()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            pid = cluster.pid()
            if pid:  # pg_ctl could not stop it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(root, ignore_errors=True)


@dataclass
class RedisServer:
    """A Redis server of its own: ``redis-server`` on ``port``, files (RDB, log) in ``root``.

    Persistence as Redis's default configuration has it (RDB snapshots, ``save 3600 1 300 100
    60 10000``; Redis saves on a clean shutdown), which is what the ``redis`` image of
    docker-compose.yaml runs: a restart with SIGTERM keeps the queued messages."""

    root: Path
    port: int
    db: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{self.db}"

    @property
    def log(self) -> Path:
        return self.root / "redis.log"

    def start(self, timeout_s: float = 30) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root),
                "--dbfilename", "dump.rdb", "--save", "3600 1 300 100 60 10000", "--appendonly", "no",
                "--logfile", str(self.log), "--daemonize", "no", "--protected-mode", "yes"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {self.log_tail()}")
            time.sleep(0.2)

    def ping(self) -> bool:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.exceptions.RedisError:
            return False
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int | None:
        """Stop the server (SIGTERM: Redis saves its RDB, then exits); its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout_s)
        code, self.proc = self.proc.returncode, None
        return code

    def restart(self, sig: int = signal.SIGTERM, down_s: float = 0.0) -> float:
        """Stop (``sig``), stay down ``down_s`` seconds, start again on the same port and files.
        Returns the seconds the server was unreachable."""
        t0 = time.monotonic()
        self.stop(sig)
        time.sleep(down_s)
        self.start()
        return time.monotonic() - t0

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


@contextlib.contextmanager
def redis_server():
    """A running throw-away Redis server; stopped and its files deleted afterwards."""
    root = _private_dir("contimg-redis-", None)
    server = RedisServer(root=root, port=free_port(0))
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
