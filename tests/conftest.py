"""Shared test setup: import paths, offline CASA, an isolated Airflow home."""
from __future__ import annotations

import contextlib
import email
import email.policy
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for sub in ("include", "plugins"):
    p = str(ROOT / sub)
    if p not in sys.path:
        sys.path.insert(0, p)

# Tests never touch a user's ~/airflow, and CASA never downloads.
_HOME = Path(tempfile.mkdtemp(prefix="contimg-test-airflow-"))
os.environ.setdefault("AIRFLOW_HOME", str(_HOME))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_HOME / 'airflow.db'}")
os.environ.setdefault("CONTIMG_CASA_CONFIG_DIR", str(_HOME / "casa"))

from dsa110_contimg.casa_env import ensure_casa_offline  # noqa: E402

ensure_casa_offline()


class SmtpInbox:
    """aiosmtpd handler keeping every message it accepts as (recipients, parsed message)."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), msg))
        return "250 OK"


@contextlib.contextmanager
def _local_smtp():
    """A real SMTP server on a free local port: (controller, inbox)."""
    from aiosmtpd.controller import Controller

    from dsa110_contimg.localstack import free_port

    inbox = SmtpInbox()
    ctl = Controller(inbox, hostname="127.0.0.1", port=free_port(0))
    ctl.start()
    try:
        yield ctl, inbox
    finally:
        ctl.stop()


@pytest.fixture()
def smtp_server():
    with _local_smtp() as server:
        yield server


@pytest.fixture(scope="module")
def smtp():
    with _local_smtp() as server:
        yield server


PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def throwaway_postgres_db(prefix: str = "contimg_test"):
    """A new, empty PostgreSQL database on the local server (dropped afterwards): its URL."""
    import uuid

    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:  # pragma: no cover - service down
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {exc}")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def local_webhook():
    """A stand-in for a Slack incoming webhook on a free local port: (base URL, received), where
    ``received`` collects (path, Content-Type, decoded JSON) of every POST."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append((self.path, self.headers["Content-Type"],
                             json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The fault report (tests/integration/faults.py), when fault tests ran."""
    faults = sys.modules.get("faults")
    if faults is not None and faults.REPORT:
        terminalreporter.section("fault report")
        terminalreporter.write_line(faults.report_table())
