"""Alerts through Airflow: a failing group emails (and posts to Slack) naming the DAG,
the task, the group, the error and the log address; a group run that overruns its
deadline alerts through Airflow's DeadlineAlert, sent by the triggerer.

The first tests check the wiring, then call the notifier and the deadline
callback directly with the connections in the environment. The last ones run
the embedded deployment (scheduler, dag-processor, triggerer, api-server) with
a local SMTP server (aiosmtpd) and a local webhook standing in for Slack, and
make a group fail on purpose: its 16 subband files are not HDF5."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from types import SimpleNamespace

import pytest

from dsa110_contimg.localstack import LocalAirflow, free_port

from conftest import local_webhook

pytestmark = [pytest.mark.airflow]

GROUP = "2026-01-15T08:00:00"
TO = "operators@obs.example"
DEADLINE_MIN = 0.05  # 3 s: the run is still starting its convert task then (which fails at once, unretried)


def _body(msg) -> str:
    return msg.get_content().replace("\r\n", "\n")


@pytest.fixture(scope="module")
def slack():
    """A stand-in for a Slack incoming webhook: its URL and the JSON posted to it."""
    with local_webhook() as (base, received):
        yield f"{base}/services/T000/B000/alerts", _Payloads(received)


class _Payloads:
    """The JSON bodies of the webhook's requests, as a live list."""

    def __init__(self, received):
        self._received = received

    def __len__(self):
        return len(self._received)

    def __getitem__(self, index):
        items = [r[2] for r in self._received]
        return items[index]


def _connections(smtp_port: int, slack_url: str | None) -> dict[str, str]:
    env = {"AIRFLOW_CONN_CONTIMG_SMTP": json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": smtp_port,
        "extra": {"from_email": "contimg@obs.example", "disable_ssl": True, "disable_tls": True}}),
        "CONTIMG_ALERT_EMAIL_TO": TO}
    if slack_url:
        env["AIRFLOW_CONN_CONTIMG_SLACK"] = json.dumps({"conn_type": "http", "host": slack_url})
    return env


# -- wiring -------------------------------------------------------------------------

def test_every_task_of_every_dag_alerts_and_group_has_a_deadline(monkeypatch):
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import AsyncCallback, DeadlineReference

    from contimg_airflow.notifiers import FailureNotifier

    monkeypatch.setenv("CONTIMG_GROUP_DEADLINE_MINUTES", "45")
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags"))
    assert bag.import_errors == {} and {"ingest", "group", "bandpass", "mosaic"} <= set(bag.dag_ids)
    for dag in bag.dags.values():
        for task in dag.tasks:
            callbacks = task.on_failure_callback
            callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
            assert any(isinstance(c, FailureNotifier) for c in callbacks), (dag.dag_id, task.task_id)
    (alert,) = bag.dags["group"].deadline
    assert alert.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert alert.interval.total_seconds() == 45 * 60
    assert isinstance(alert.callback, AsyncCallback)  # run by the triggerer, which must import it:
    assert alert.callback.path == "contimg_airflow.notifiers.group_deadline_missed"
    assert alert.callback.kwargs == {"deadline_minutes": 45.0}


# -- the notifier and the deadline callback, called directly ---------------------

def _context(exc: Exception) -> dict:
    ti = SimpleNamespace(dag_id="group", task_id="convert", run_id="group__2026-01-15T080000", try_number=2,
                         map_index=-1, log_url="http://ui:8080/dags/group/runs/group__2026-01-15T080000/tasks/convert"
                                                "?try_number=2")
    dag_run = SimpleNamespace(conf={"group_id": GROUP}, data_interval_start=None, data_interval_end=None,
                              logical_date=None)
    return {"ti": ti, "dag_run": dag_run, "exception": exc}


def test_missing_smtp_connection_only_warns(monkeypatch, caplog, capsys):
    from contimg_airflow.notifiers import FailureNotifier

    monkeypatch.setenv("CONTIMG_ALERT_SMTP_CONN_ID", "contimg_smtp_not_defined")
    monkeypatch.setenv("CONTIMG_ALERT_SLACK_CONN_ID", "contimg_slack_not_defined")
    with caplog.at_level(logging.INFO, logger="contimg_airflow.notifiers"):
        FailureNotifier()(_context(ValueError("boom")))  # must not raise
    logged = caplog.text + capsys.readouterr().out  # Airflow may route stdlib logging to stdout
    warning = next((line for line in logged.splitlines() if "alert not emailed" in line), "")
    assert "contimg_smtp_not_defined" in warning and "warning" in warning.lower(), logged


def test_notifier_emails_and_posts_through_the_connections(monkeypatch, smtp, slack):
    from contimg_airflow.notifiers import FailureNotifier

    ctl, inbox = smtp
    url, posts = slack
    n_mail, n_posts = len(inbox.messages), len(posts)
    for key, value in _connections(ctl.port, url).items():
        monkeypatch.setenv(key, value)
    FailureNotifier()(_context(RuntimeError("imager crashed")))
    (rcpt, msg), = inbox.messages[n_mail:]
    assert rcpt == [TO] and msg["From"] == "contimg@obs.example"
    assert msg["Subject"].startswith(f"[DSA-110 contimg] group.convert failed (group {GROUP}): RuntimeError")
    assert "Log:   http://ui:8080/dags/group/runs/group__2026-01-15T080000/tasks/convert?try_number=2" \
        in _body(msg)
    (post,) = posts[n_posts:]
    assert msg["Subject"] in post["text"] and "RuntimeError: imager crashed" in post["text"]


def test_deadline_callback_emails_unless_the_run_failed(monkeypatch, smtp):
    """The callback as the triggerer calls it, with the context the scheduler builds."""
    from contimg_airflow.notifiers import group_deadline_missed

    ctl, inbox = smtp
    n_mail = len(inbox.messages)
    for key, value in _connections(ctl.port, None).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CONTIMG_ALERT_SLACK_CONN_ID", "contimg_slack_not_defined")
    run = {"dag_id": "group", "dag_run_id": "group__2026-01-15T080000", "state": "running",
           "queued_at": "2026-01-15T08:10:00Z", "conf": {"group_id": GROUP}}
    ctx = {"dag_run": run, "deadline": {"id": "x", "deadline_time": "2026-01-15T08:40:00Z"}}
    out = asyncio.run(group_deadline_missed(context=ctx, deadline_minutes=30))
    assert out.startswith(f"email to {TO}")
    (rcpt, msg), = inbox.messages[n_mail:]
    assert msg["Subject"] == (f"[DSA-110 contimg] group run not finished within 30 min of being queued "
                              f"(group {GROUP})")
    assert "Deadline:  2026-01-15T08:40:00Z" in _body(msg).splitlines()
    failed = {"dag_run": {**run, "state": "failed"}, "deadline": ctx["deadline"]}
    assert asyncio.run(group_deadline_missed(context=failed, deadline_minutes=30)).startswith("not sent")
    assert len(inbox.messages) == n_mail + 1  # its failure already alerted


# -- through the real scheduler -------------------------------------------------

TIMEOUT_S = 600


def _wait(pred, timeout_s: float, stack: LocalAirflow, what: str):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        stack.check_alive()
        value = pred()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"{what} did not happen within {timeout_s} s; see {stack.home}")


def _try_token(stack: LocalAirflow) -> str | None:
    try:
        return stack.api_token()
    except OSError:  # still starting
        return None


def _unpaused(stack: LocalAirflow, token: str, dag_id: str) -> bool:
    """Unpause through the REST API once the dag-processor has registered the DAG."""
    try:
        dag = stack.api_request("PATCH", f"/api/v2/dags/{dag_id}", token, {"is_paused": False})
    except OSError:  # 404 until it is parsed
        return False
    return dag.get("is_paused") is False


@pytest.fixture(scope="module")
def failed_group(tmp_path_factory, smtp, slack):
    """One group run through the real scheduler; its files are not HDF5, so convert fails at its
    first try (a corrupt input is not retried) while the run overruns its 3 s deadline."""
    from dsa110_contimg.pipeline import open_registry

    ctl, inbox = smtp
    url, posts = slack
    n_mail, n_posts = len(inbox.messages), len(posts)
    root = tmp_path_factory.mktemp("alerts")
    data = root / "data"
    incoming = data / "incoming"
    incoming.mkdir(parents=True)
    files = []
    for sb in range(16):
        f = incoming / f"{GROUP}_sb{sb:02d}.hdf5"
        f.write_bytes(b"this is not an HDF5 file\n")
        files.append(str(f))
    stack = LocalAirflow(home=root / "airflow", data_dir=data, port=free_port(8191), contimg_env={
        **_connections(ctl.port, url),
        "CONTIMG_GROUP_DEADLINE_MINUTES": str(DEADLINE_MIN),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # only the group DAG runs here
        # (LocalAirflow gives every component one Fernet key, so the triggerer can decrypt the
        # deadline callback the scheduler wrote)
    })
    stack.prepare()
    reg = open_registry(f"sqlite:///{stack.registry_db}")
    reg.record_group(GROUP, 61055.3333, files)  # as ingest would have
    run_id = "group__alerts_" + GROUP.replace(":", "")
    stack.start()
    try:
        token = _wait(lambda: _try_token(stack), 300, stack, "the api-server accepting a login")
        _wait(lambda: _unpaused(stack, token, "group"), 300, stack, "the group DAG registered and unpaused")
        stack.api_request("POST", "/api/v2/dags/group/dagRuns", token,
                          {"dag_run_id": run_id, "logical_date": None, "conf": {"group_id": GROUP}})
        run = _wait(lambda: (r := stack.api_get(f"/api/v2/dags/group/dagRuns/{run_id}", token))["state"]
                    in ("failed", "success") and r, TIMEOUT_S, stack, "the group run finishing")
        # both alerts, by mail and by Slack (the deadline one is sent by the triggerer)
        _wait(lambda: len(inbox.messages) - n_mail >= 2 and len(posts) - n_posts >= 2, 120, stack,
              "two alert emails and two Slack posts")
        time.sleep(5)  # anything sent twice would arrive now
        tis = {t["task_id"]: t for t in stack.api_get(f"/api/v2/dags/group/dagRuns/{run_id}/taskInstances",
                                                        token)["task_instances"]}
        log = stack.api_get(f"/api/v2/dags/group/dagRuns/{run_id}/taskInstances/convert/logs/"
                            f"{tis['convert']['try_number']}", token)
    finally:
        stack.stop()
    mails = {msg["X-Contimg-Alert"]: (rcpt, msg) for rcpt, msg in inbox.messages[n_mail:]}
    return {"stack": stack, "run": run, "run_id": run_id, "tis": tis, "log": json.dumps(log),
            "mails": mails, "n_mails": len(inbox.messages) - n_mail, "posts": posts[n_posts:]}


def test_failed_group_emails_dag_task_group_error_and_log_url(failed_group):
    r = failed_group
    assert r["run"]["state"] == "failed"
    # a corrupt input fails at once: one try, no retry (operators.fails_fast)
    assert r["tis"]["convert"]["state"] == "failed" and r["tis"]["convert"]["try_number"] == 1
    assert r["n_mails"] == 2, [m["Subject"] for _, m in r["mails"].values()]  # one per alert, not per try
    rcpt, msg = r["mails"]["failure"]
    body = _body(msg)
    assert rcpt == [TO]
    assert msg["Subject"].startswith(f"[DSA-110 contimg] group.convert failed (group {GROUP}): "
                                     f"CorruptSubbandError: ")
    log_url = f"{r['stack'].url}/dags/group/runs/{r['run_id']}/tasks/convert?try_number=1"
    for line in ("DAG:   group", "Task:  convert (try 1)", f"Group: {GROUP}", f"Run:   {r['run_id']}",
                 f"Log:   {log_url}"):
        assert line in body.splitlines(), (line, body)
    error = next(line for line in body.splitlines() if line.startswith("Error:"))
    assert "CorruptSubbandError" in error and f"{GROUP}_sb" in error and ".hdf5" in error, error
    assert "cannot read UVH5 header" in error
    # the address is the task try whose log holds the same error
    assert "CorruptSubbandError" in r["log"] and "cannot read UVH5 header" in r["log"]


def test_group_over_its_deadline_alerts(failed_group):
    r = failed_group
    rcpt, msg = r["mails"]["deadline"]
    body = _body(msg)
    assert rcpt == [TO]
    assert msg["Subject"] == (f"[DSA-110 contimg] group run not finished within {DEADLINE_MIN:g} min of being "
                              f"queued (group {GROUP})")
    assert f"Group:     {GROUP}" in body.splitlines()
    assert f"Run:       {r['run_id']}" in body.splitlines()
    assert f"Run page:  {r['stack'].url}/dags/group/runs/{r['run_id']}" in body.splitlines()
    # noticed while the run was still going (before convert had failed)
    state = next(line for line in body.splitlines() if line.startswith("State:"))
    assert state.split()[-1] in ("queued", "running"), state


def test_slack_gets_both_alerts(failed_group):
    texts = [p["text"] for p in failed_group["posts"]]
    assert len(texts) == 2
    subjects = {kind: m["Subject"] for kind, (_, m) in failed_group["mails"].items()}
    assert any(subjects["failure"] in t and "CorruptSubbandError" in t for t in texts)
    assert any(subjects["deadline"] in t for t in texts)
