"""Alert wording and sending (library only, no Airflow): what an operator reads in the
email and the Slack message, and that it reaches a real SMTP server and webhook."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from dsa110_contimg.alerts import (
    MAX_SUBJECT_CHARS,
    SmtpSettings,
    deadline_alert,
    error_text,
    failure_alert,
    parse_recipients,
    post_slack,
    run_scope,
    run_url,
    send_email,
)
from dsa110_contimg.config import PipelineConfig
from dsa110_contimg.errors import CorruptSubbandError

from conftest import local_webhook

GROUP = "2026-01-15T08:00:00"
LOG_URL = "http://ui.example:8080/dags/group/runs/group__2026-01-15T080000/tasks/convert?try_number=2"
UTC = timezone.utc


def _group_failure(**kw):
    args = dict(dag_id="group", task_id="convert", run_id="group__2026-01-15T080000",
                error=CorruptSubbandError("/data/incoming/2026-01-15T08:00:00_sb03.hdf5", "cannot read UVH5 header"),
                log_url=LOG_URL, conf={"group_id": GROUP}, try_number=2)
    args.update(kw)
    return failure_alert(**args)


def test_group_failure_names_dag_task_group_error_and_log():
    a = _group_failure()
    assert a.kind == "failure" and a.dag_id == "group"
    assert a.field("DAG") == "group"
    assert a.field("Task") == "convert (try 2)"
    assert a.field("Group") == GROUP
    assert a.field("Run") == "group__2026-01-15T080000"
    assert a.field("Error") == ("CorruptSubbandError: /data/incoming/2026-01-15T08:00:00_sb03.hdf5: "
                                "cannot read UVH5 header")
    assert a.field("Log") == LOG_URL
    # the subject alone tells an operator what broke and where
    assert a.subject.startswith("[DSA-110 contimg] group.convert failed (group 2026-01-15T08:00:00): "
                                "CorruptSubbandError: /data/incoming/2026-01-15T08:00:00_sb03.hdf5")
    body = a.body
    for text in ("Task convert of DAG group failed.", "DAG:", "Group: ", GROUP, "sb03.hdf5", LOG_URL):
        assert text in body
    assert body.index("Error:") < body.index("Log:")  # the labelled lines keep their order


def test_mosaic_failure_names_its_window():
    start, end = datetime(2026, 1, 15, 8, tzinfo=UTC), datetime(2026, 1, 15, 9, tzinfo=UTC)
    a = failure_alert(dag_id="mosaic", task_id="crossmatch", run_id="scheduled__2026-01-15T08:00:00+00:00",
                      error=ValueError("no sources found"), log_url="http://x/log", conf={},
                      interval_start=start, interval_end=end, logical_date=start)
    assert a.field("Window") == "2026-01-15T08:00:00+00:00 to 2026-01-15T09:00:00+00:00"
    assert a.field("Group") is None
    assert "(window 2026-01-15T08:00:00+00:00 to 2026-01-15T09:00:00+00:00)" in a.subject
    assert a.field("Task") == "crossmatch"  # no try number given, none shown


def test_scope_of_runs_without_group_or_window():
    t = datetime(2026, 1, 15, 8, 50, 47, tzinfo=UTC)
    assert run_scope({}, t, t) == ("Date", "2026-01-15T08:50:47+00:00")  # bandpass: an event timetable
    assert run_scope(None, None, None, "2026-01-15T08:00:00") == ("Date", "2026-01-15T08:00:00")
    assert run_scope(None) is None
    assert run_scope({"group_id": GROUP}, t, t) == ("Group", GROUP)  # the group wins over the date
    a = failure_alert(dag_id="ingest", task_id="detect_groups", run_id="manual__x", error="boom",
                      log_url=None, conf=None)
    assert a.subject == "[DSA-110 contimg] ingest.detect_groups failed: boom"
    assert "set [api] base_url" in a.field("Log")


def test_mapped_task_and_multiline_error():
    err = RuntimeError("first line\nsecond line\nthird line")
    a = failure_alert(dag_id="ingest", task_id="start_group_runs", run_id="r", error=err, log_url="u",
                      map_index=3)
    assert a.field("Task") == "start_group_runs[3]"
    assert "\n" not in a.subject and a.subject.endswith("RuntimeError: first line")
    lines = a.body.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("Error:"))
    # continuation lines are indented under the value, not under the label
    assert lines[i + 1].strip() == "second line" and lines[i + 1].startswith(" " * len("Error: "))


def test_error_text():
    assert error_text(ValueError("bad value")) == "ValueError: bad value"
    assert error_text(KeyError("group_id")) == "KeyError: 'group_id'"
    assert error_text(TimeoutError()) == "TimeoutError"
    assert "stopped from outside" in error_text(None)  # a killed task still alerts
    long = error_text("x" * 10_000, limit=100)
    assert long.startswith("x" * 100) and long.endswith("(9900 more characters in the log)")
    a = failure_alert(dag_id="group", task_id="image", run_id="r", error="y" * 10_000, log_url="u")
    assert len(a.subject) == MAX_SUBJECT_CHARS and a.subject.endswith("...")


def test_deadline_alert():
    queued = datetime(2026, 1, 15, 8, 10, 0, tzinfo=UTC)
    due = datetime(2026, 1, 15, 8, 40, 0, tzinfo=UTC)
    url = run_url("http://ui.example:8080/", "group", "group__2026-01-15T080000")
    a = deadline_alert(dag_id="group", run_id="group__2026-01-15T080000", deadline_minutes=30,
                       conf={"group_id": GROUP}, queued_at=queued, deadline_time=due, state="running", run_url=url)
    assert a.kind == "deadline"
    assert a.subject == ("[DSA-110 contimg] group run not finished within 30 min of being queued "
                         "(group 2026-01-15T08:00:00)")
    assert a.field("Group") == GROUP and a.field("State") == "running"
    assert a.field("Queued at") == "2026-01-15T08:10:00+00:00"
    assert a.field("Deadline") == "2026-01-15T08:40:00+00:00"
    assert a.field("Run page") == "http://ui.example:8080/dags/group/runs/group__2026-01-15T080000"
    # times arrive as ISO strings from the scheduler's context: kept as they are
    b = deadline_alert(dag_id="group", run_id="r", deadline_minutes=0.1, queued_at="2026-01-15T08:10:00Z")
    assert "within 0.1 min" in b.subject and b.field("Queued at") == "2026-01-15T08:10:00Z"


def test_run_url_quotes_run_ids():
    assert run_url("http://h:1", "group", "manual__2026-01-15T08:00:00+00:00") == \
        "http://h:1/dags/group/runs/manual__2026-01-15T08%3A00%3A00%2B00%3A00"


def test_parse_recipients():
    assert parse_recipients("") == [] and parse_recipients(None) == []
    assert parse_recipients("a@x.org, b@y.org;c@z.org  d@w.org") == ["a@x.org", "b@y.org", "c@z.org", "d@w.org"]
    assert parse_recipients(["a@x.org", " "]) == ["a@x.org"]


def test_slack_payload_carries_subject_and_body():
    a = _group_failure()
    text = a.slack_payload()["text"]
    assert text.startswith(f"*{a.subject}*\n")
    assert GROUP in text and LOG_URL in text and "CorruptSubbandError" in text


def test_alert_settings_in_config():
    cfg = PipelineConfig()
    assert cfg.group_deadline_minutes == 30.0
    assert (cfg.alert_smtp_conn_id, cfg.alert_slack_conn_id, cfg.alert_email_to) == ("contimg_smtp",
                                                                                    "contimg_slack", "")
    cfg = PipelineConfig.load(env={"CONTIMG_GROUP_DEADLINE_MINUTES": "0.5",
                                   "CONTIMG_ALERT_EMAIL_TO": "ops@example.org"})
    assert cfg.group_deadline_minutes == 0.5 and cfg.alert_email_to == "ops@example.org"
    with pytest.raises(ValueError, match="group_deadline_minutes"):
        PipelineConfig(group_deadline_minutes=0)


# -- sending, to real local servers ---------------------------------------------

def test_send_email_reaches_an_smtp_server(smtp_server):
    ctl, inbox = smtp_server
    a = _group_failure()
    send_email(a, SmtpSettings(host=ctl.hostname, port=ctl.port, sender="contimg@obs.example"),
               ["ops@obs.example", "astro@obs.example"])
    (rcpt, msg), = inbox.messages
    assert rcpt == ["ops@obs.example", "astro@obs.example"]
    assert msg["Subject"] == a.subject
    assert msg["From"] == "contimg@obs.example"
    assert msg["X-Contimg-Alert"] == "failure" and msg["X-Contimg-DAG"] == "group"
    assert msg.get_content().replace("\r\n", "\n") == a.body  # SMTP carries CRLF line ends


def test_send_email_without_recipients_refuses():
    with pytest.raises(ValueError, match="no recipients"):
        send_email(_group_failure(), SmtpSettings(host="127.0.0.1", port=1), [])


def test_post_slack_reaches_a_webhook():
    a = _group_failure()
    with local_webhook() as (base, received):
        status = post_slack(a, f"{base}/services/T0/B0/XYZ")
    assert status == 200
    (path, ctype, payload), = received
    assert path == "/services/T0/B0/XYZ" and ctype == "application/json"
    assert payload == a.slack_payload()
