"""Alerts: what a failure or a missed deadline message says, and how it is sent.

Plain values in, an :class:`Alert` (subject, body, Slack payload) out, so the
wording is testable without Airflow. Sending uses only the standard library
(smtplib for email, urllib for a Slack incoming webhook). Reading the task
context and the Airflow connections is ``contimg_airflow.notifiers``' job.
"""
from __future__ import annotations

import json
import smtplib
import socket
import ssl
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Mapping, Sequence
from urllib.parse import quote

SUBJECT_PREFIX = "[DSA-110 contimg]"
MAX_ERROR_CHARS = 4000  # the whole traceback is in the task log; the alert carries its head
MAX_SUBJECT_CHARS = 200


@dataclass(frozen=True)
class Alert:
    """One message: a one-line subject and labelled lines (label, value), in order."""

    kind: str  # "failure" or "deadline"
    dag_id: str
    subject: str
    lines: tuple[tuple[str, str], ...]
    headline: str = ""

    @property
    def body(self) -> str:
        width = max((len(label) for label, _ in self.lines), default=0) + 1
        out = [self.headline, ""] if self.headline else []
        for label, value in self.lines:
            first, *rest = str(value).splitlines() or [""]
            out.append(f"{label + ':':<{width}} {first}")
            out.extend(" " * (width + 1) + line for line in rest)
        return "\n".join(out) + "\n"

    def field(self, label: str) -> str | None:
        return next((value for name, value in self.lines if name == label), None)

    def slack_payload(self) -> dict[str, str]:
        """An incoming-webhook message: the subject in bold, then the body verbatim."""
        return {"text": f"*{self.subject}*\n```\n{self.body.rstrip()}\n```"}


def error_text(error: BaseException | str | None, limit: int = MAX_ERROR_CHARS) -> str:
    """``Type: message`` of an exception (or the text given), cut to ``limit`` characters."""
    if error is None:
        text = "no exception reached the callback (the task was stopped from outside, e.g. killed or " \
               "timed out); see the log"
    elif isinstance(error, BaseException):
        message = str(error).strip()
        text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    else:
        text = str(error).strip() or "(empty error message)"
    if len(text) > limit:
        text = text[:limit] + f" ... ({len(text) - limit} more characters in the log)"
    return text


def _iso(value: datetime | str | None) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


def run_scope(conf: Mapping[str, Any] | None, interval_start: datetime | str | None = None,
              interval_end: datetime | str | None = None,
              logical_date: datetime | str | None = None) -> tuple[str, str] | None:
    """What a run is about, as (label, value): the group of a ``group`` run (its conf's
    ``group_id``), the window of a time-scheduled run (its data interval), else its date."""
    group_id = (conf or {}).get("group_id")
    if group_id:
        return "Group", str(group_id)
    start, end = _iso(interval_start), _iso(interval_end)
    if start and end and start != end:
        return "Window", f"{start} to {end}"
    when = start or _iso(logical_date)
    return ("Date", when) if when else None


def _subject(text: str) -> str:
    line = " ".join(f"{SUBJECT_PREFIX} {text}".split())  # one line, whatever the error held
    return line if len(line) <= MAX_SUBJECT_CHARS else line[:MAX_SUBJECT_CHARS - 3] + "..."


def failure_alert(*, dag_id: str, task_id: str, run_id: str, error: BaseException | str | None,
                  log_url: str | None, conf: Mapping[str, Any] | None = None,
                  interval_start: datetime | str | None = None, interval_end: datetime | str | None = None,
                  logical_date: datetime | str | None = None, try_number: int | None = None,
                  map_index: int | None = None) -> Alert:
    """The alert for a task that failed for good (after its retries)."""
    scope = run_scope(conf, interval_start, interval_end, logical_date)
    err = error_text(error)
    task = task_id if map_index is None or map_index < 0 else f"{task_id}[{map_index}]"
    about = f" ({scope[0].lower()} {scope[1]})" if scope else ""
    lines: list[tuple[str, str]] = [("DAG", dag_id),
                                    ("Task", task + (f" (try {try_number})" if try_number else ""))]
    if scope:
        lines.append(scope)
    lines += [("Run", run_id), ("Error", err), ("Log", log_url or "(no log address: set [api] base_url)")]
    return Alert(kind="failure", dag_id=dag_id,
                 subject=_subject(f"{dag_id}.{task} failed{about}: {err.splitlines()[0]}"),
                 lines=tuple(lines), headline=f"Task {task} of DAG {dag_id} failed.")


def deadline_alert(*, dag_id: str, run_id: str, deadline_minutes: float | None,
                   conf: Mapping[str, Any] | None = None, queued_at: datetime | str | None = None,
                   deadline_time: datetime | str | None = None, state: str | None = None,
                   run_url: str | None = None) -> Alert:
    """The alert for a run that had not finished ``deadline_minutes`` after it was queued."""
    scope = run_scope(conf)
    limit = f"{deadline_minutes:g} min" if deadline_minutes is not None else "its"
    about = f" ({scope[0].lower()} {scope[1]})" if scope else f" (run {run_id})"
    lines: list[tuple[str, str]] = [("DAG", dag_id)]
    if scope:
        lines.append(scope)
    lines += [("Run", run_id), ("State", state or "unknown"), ("Queued at", _iso(queued_at) or "unknown"),
              ("Deadline", _iso(deadline_time) or "unknown"), ("Run page", run_url or "unknown")]
    return Alert(kind="deadline", dag_id=dag_id,
                 subject=_subject(f"{dag_id} run not finished within {limit} of being queued{about}"),
                 lines=tuple(lines),
                 headline=f"A {dag_id} run had not finished {limit} after it was queued.")


def ingest_alert(*, run_id: str, issues: Sequence[Mapping[str, Any]], report: str | None = None) -> Alert:
    """The alert for files in the incoming directory that no run will read
    (``ingest.ingest_issues``: bad names, symbolic links, late subbands, strays)."""
    kinds = sorted({str(i["kind"]) for i in issues})
    first = issues[0]
    lines: list[tuple[str, str]] = [("DAG", "ingest"), ("Run", run_id)]
    lines += [(str(i["kind"]).capitalize(), f"{i['path']}: {i['reason']}") for i in issues]
    if report:
        lines.append(("Report", report))
    return Alert(kind="ingest", dag_id="ingest",
                 subject=_subject(f"ingest: {len(issues)} file(s) not used ({', '.join(kinds)}): "
                                  f"{str(first['path']).rsplit('/', 1)[-1]}: {first['reason']}"),
                 lines=tuple(lines),
                 headline=f"Ingest could not use {len(issues)} file(s) in the incoming directory.")


def run_url(base_url: str, dag_id: str, run_id: str) -> str:
    """The run's page in the Airflow UI (its grid, with every task's log)."""
    return f"{base_url.rstrip('/')}/dags/{quote(dag_id)}/runs/{quote(run_id)}"


def parse_recipients(value: str | Sequence[str] | None) -> list[str]:
    """Addresses from a comma/semicolon/space separated string or a list."""
    if not value:
        return []
    items = value.replace(";", ",").replace(" ", ",").split(",") if isinstance(value, str) else value
    return [a.strip() for a in items if a and a.strip()]


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to hand mail over; built from the SMTP connection."""

    host: str
    port: int = 25
    sender: str = ""
    login: str | None = None
    password: str | None = None
    use_ssl: bool = False  # SMTP over TLS from the first byte (port 465)
    starttls: bool = True  # upgrade a plain connection when the server offers it
    timeout_s: float = 30.0


def email_message(alert: Alert, sender: str, to: Sequence[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = alert.subject
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg["X-Contimg-Alert"] = alert.kind  # for mail filters
    msg["X-Contimg-DAG"] = alert.dag_id
    msg.set_content(alert.body)
    return msg


def send_email(alert: Alert, smtp: SmtpSettings, to: Sequence[str]) -> None:
    """Send the alert to ``to``; raises (smtplib/OSError) when the server refuses or is unreachable."""
    if not to:
        raise ValueError("no recipients")
    sender = smtp.sender or f"contimg@{socket.getfqdn()}"
    msg = email_message(alert, sender, to)
    tls = ssl.create_default_context()
    if smtp.use_ssl:
        server: smtplib.SMTP = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout_s, context=tls)
    else:
        server = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_s)
    with server:
        server.ehlo()
        if not smtp.use_ssl and smtp.starttls and server.has_extn("starttls"):
            server.starttls(context=tls)
            server.ehlo()
        if smtp.login:
            server.login(smtp.login, smtp.password or "")
        server.send_message(msg, from_addr=sender, to_addrs=list(to))


def post_slack(alert: Alert, webhook_url: str, timeout_s: float = 15.0) -> int:
    """POST the alert to a Slack incoming webhook; returns the HTTP status (raises on 4xx/5xx)."""
    req = urllib.request.Request(webhook_url, data=json.dumps(alert.slack_payload()).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return resp.status
