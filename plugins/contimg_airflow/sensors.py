"""Sensors: new subband groups (deferrable) and registry conditions."""
from __future__ import annotations

from typing import Any

from airflow.sdk import BaseSensorOperator

from contimg_airflow.registry_conn import get_config, get_registry
from contimg_airflow.triggers import IncomingGroupsTrigger


class IncomingGroupsSensor(BaseSensorOperator):
    """Waits, in the triggerer, for complete subband groups not yet claimed.

    Returns the list of new groups (id, files, start MJD) for XCom; the files that
    no run will read (``pipeline.new_ingest_issues``) go to XCom key ``issues``."""

    def __init__(self, *, conn_id: str = "contimg_db", poll_interval: float = 10.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self.poll_interval = poll_interval

    def execute(self, context) -> list[dict]:
        from dsa110_contimg.pipeline import new_ingest_issues, new_ready_groups

        cfg = get_config(context["params"])
        reg = get_registry(self.conn_id)
        groups, issues = new_ready_groups(cfg, reg.group_files()), new_ingest_issues(cfg, reg)
        if groups or issues:
            context["ti"].xcom_push(key="issues", value=issues)
            return groups
        self.defer(trigger=IncomingGroupsTrigger(self.conn_id, self.poll_interval, dict(context["params"])),
                   method_name="execute_complete")
        return []

    def execute_complete(self, context, event: dict | None = None) -> list[dict]:
        context["ti"].xcom_push(key="issues", value=list((event or {}).get("issues", [])))
        return list((event or {}).get("groups", []))
