"""Alerts from Airflow: a task that fails, a group run that misses its deadline.

Both go out by email through the SMTP connection (``alert_smtp_conn_id``,
default ``contimg_smtp``) to ``alert_email_to``, and to Slack when the
connection ``alert_slack_conn_id`` (default ``contimg_slack``) exists. The
words come from ``dsa110_contimg.alerts``; this module only reads the task
context and the connections. An alert that cannot be sent (no connection, no
recipients, server down) logs a warning and never raises: a broken mail
server must not change what happened to the task.

- :class:`FailureNotifier` is every task's ``on_failure_callback``
  (``PIPELINE_DEFAULTS``). It runs where the task ran, after the last try.
- :func:`group_deadline_missed` is the ``AsyncCallback`` of the group DAG's
  ``DeadlineAlert``; the scheduler hands it to the triggerer when a run is
  still unfinished at its deadline.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Mapping

from airflow.sdk import BaseNotifier, Connection

from dsa110_contimg.alerts import (
    Alert,
    SmtpSettings,
    deadline_alert,
    failure_alert,
    parse_recipients,
    post_slack,
    run_url,
    send_email,
)
from dsa110_contimg.config import PipelineConfig

log = logging.getLogger(__name__)


# -- connections ---------------------------------------------------------------

def _flag(extra: Mapping[str, Any], key: str) -> bool | None:
    value = extra.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def smtp_settings(conn: Any) -> SmtpSettings:
    """An SMTP connection as Airflow's smtp provider reads it: host, port, login/password;
    extras ``from_email``, ``disable_ssl``, ``disable_tls``, ``timeout``. SSL is used on
    port 465 unless ``disable_ssl``; STARTTLS whenever the server offers it unless ``disable_tls``."""
    extra = conn.extra_dejson or {}
    port = int(conn.port or 25)
    no_ssl = _flag(extra, "disable_ssl")
    return SmtpSettings(
        host=conn.host or "localhost",
        port=port,
        sender=str(extra.get("from_email") or (conn.login if conn.login and "@" in conn.login else "")),
        login=conn.login or None,
        password=conn.password or None,
        use_ssl=(port == 465) if no_ssl is None else not no_ssl,
        starttls=not _flag(extra, "disable_tls"),
        timeout_s=float(extra.get("timeout", 30)),
    )


def webhook_url(conn: Any) -> str | None:
    """The Slack incoming-webhook URL of a connection: extra ``webhook_url``, else the
    password (where the Slack provider keeps it), else the host, whichever is a full URL."""
    extra = conn.extra_dejson or {}
    for candidate in (extra.get("webhook_url"), conn.password, conn.host):
        if isinstance(candidate, str) and candidate.startswith(("https://", "http://")):
            return candidate
    return None


def _missing(conn_id: str, exc: Exception, required: bool) -> None:
    if required:
        log.warning("alert not emailed: connection %r unavailable (%s: %s)", conn_id, type(exc).__name__, exc)
    else:
        log.info("no Slack alert: connection %r not configured (%s)", conn_id, type(exc).__name__)


def _get_connection(conn_id: str, required: bool) -> Any | None:
    try:
        return Connection.get(conn_id)
    except Exception as exc:  # AirflowNotFoundException, or no way to reach the API server
        _missing(conn_id, exc, required)
        return None


async def _aget_connection(conn_id: str, required: bool) -> Any | None:
    try:
        return await Connection.async_get(conn_id)
    except Exception as exc:
        _missing(conn_id, exc, required)
        return None


def _config() -> PipelineConfig:
    try:
        return PipelineConfig.load()
    except Exception as exc:  # a broken YAML must not also silence the alert
        log.warning("alert settings: configuration unreadable (%s); using the defaults", exc)
        return PipelineConfig()


# -- delivery ------------------------------------------------------------------

def _send(alert: Alert, cfg: PipelineConfig, smtp_conn: Any | None, slack_conn: Any | None) -> list[str]:
    """Email and Slack, each on its own: one failing does not stop the other."""
    done: list[str] = []
    to = parse_recipients(cfg.alert_email_to)
    if smtp_conn is not None and not to:
        log.warning("alert not emailed: no recipients (set alert_email_to, e.g. CONTIMG_ALERT_EMAIL_TO)")
    elif smtp_conn is not None:
        try:
            settings = smtp_settings(smtp_conn)
            send_email(alert, settings, to)
            done.append(f"email to {', '.join(to)} via {settings.host}:{settings.port}")
        except Exception as exc:
            log.warning("alert not emailed through %r: %s: %s", cfg.alert_smtp_conn_id, type(exc).__name__, exc)
    if slack_conn is not None:
        url = webhook_url(slack_conn)
        if url is None:
            log.warning("no Slack alert: connection %r has no webhook URL (extra webhook_url, password or host)",
                        cfg.alert_slack_conn_id)
        else:
            try:
                post_slack(alert, url)
                done.append(f"slack via {cfg.alert_slack_conn_id}")
            except Exception as exc:
                log.warning("Slack alert through %r failed: %s: %s", cfg.alert_slack_conn_id,
                            type(exc).__name__, exc)
    log.info("%s alert %r sent: %s", alert.kind, alert.subject, "; ".join(done) or "nowhere")
    return done


def deliver(alert: Alert) -> list[str]:
    """Send from a task or the dag-processor (synchronous); returns where it went."""
    cfg = _config()
    return _send(alert, cfg, _get_connection(cfg.alert_smtp_conn_id, True),
                 _get_connection(cfg.alert_slack_conn_id, False))


async def adeliver(alert: Alert) -> list[str]:
    """Send from the triggerer: connections through the async API, the blocking I/O in a thread."""
    cfg = _config()
    smtp_conn = await _aget_connection(cfg.alert_smtp_conn_id, True)
    slack_conn = await _aget_connection(cfg.alert_slack_conn_id, False)
    return await asyncio.to_thread(_send, alert, cfg, smtp_conn, slack_conn)


# -- task failures -------------------------------------------------------------

def _reported_error(exc: BaseException | None) -> BaseException | None:
    """The library's error behind an AirflowFailException that the operators raised to fail a task
    at once (operators.fails_fast), so the alert names it (e.g. CorruptSubbandError)."""
    from airflow.sdk.exceptions import AirflowFailException

    if isinstance(exc, AirflowFailException) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


def failure_alert_from_context(context: Mapping[str, Any]) -> Alert:
    """The alert for the failed task instance of a callback context."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    try:
        url = ti.log_url
    except Exception:  # an incomplete task instance (e.g. from the dag-processor) still alerts
        url = None
    return failure_alert(
        dag_id=getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?"),
        task_id=getattr(ti, "task_id", None) or getattr(context.get("task"), "task_id", "?"),
        run_id=getattr(ti, "run_id", None) or context.get("run_id") or "?",
        error=_reported_error(context.get("exception")),
        log_url=url,
        conf=getattr(dag_run, "conf", None) or {},
        interval_start=getattr(dag_run, "data_interval_start", None) or context.get("data_interval_start"),
        interval_end=getattr(dag_run, "data_interval_end", None) or context.get("data_interval_end"),
        logical_date=getattr(dag_run, "logical_date", None) or context.get("logical_date"),
        try_number=getattr(ti, "try_number", None),
        map_index=getattr(ti, "map_index", None),
    )


class FailureNotifier(BaseNotifier):
    """``on_failure_callback``: email (and Slack) naming the DAG, the task, the group or
    window, the error and the log address. Never raises."""

    def notify(self, context) -> None:
        try:
            deliver(failure_alert_from_context(context))
        except Exception:
            log.exception("failure alert could not be built or sent")


# -- deadlines -----------------------------------------------------------------

async def group_deadline_missed(context: Mapping[str, Any] | None = None, deadline_minutes: float | None = None,
                                **_: Any) -> str:
    """``AsyncCallback`` of the group DAG's ``DeadlineAlert``, run by the triggerer.

    ``context`` is what the scheduler passes: ``dag_run`` (the REST API's run
    fields) and ``deadline``. A run that already failed is not alerted again:
    its failed task sent the failure alert."""
    from airflow.sdk import conf

    context = context or {}
    run = context.get("dag_run") or {}
    deadline = context.get("deadline") or {}
    dag_id, run_id = run.get("dag_id") or "group", run.get("dag_run_id") or run.get("run_id") or "?"
    if run.get("state") == "failed":
        log.info("run %s of %s missed its deadline after it had failed; its failure was alerted", run_id, dag_id)
        return "not sent: the run had already failed"
    base = conf.get("api", "base_url", fallback="http://localhost:8080/")
    alert = deadline_alert(dag_id=dag_id, run_id=run_id, deadline_minutes=deadline_minutes, conf=run.get("conf"),
                           queued_at=run.get("queued_at"), deadline_time=deadline.get("deadline_time"),
                           state=run.get("state"), run_url=run_url(base, dag_id, run_id))
    try:
        done = await adeliver(alert)
    except Exception as exc:
        log.exception("deadline alert could not be sent")
        return f"not sent: {type(exc).__name__}: {exc}"
    return "; ".join(done) or "not sent (see the triggerer log)"
