"""Trigger that watches the incoming directory from the triggerer.

It holds no worker slot: it polls the directory (and the registry, for the
groups already claimed) every ``poll_interval`` seconds in the triggerer's
event loop, and fires once new complete groups exist or files appear that no
run will read (bad names, symbolic links, late subbands, strays: not yet in
the ingest report), so that those are reported and alerted too."""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent


class IncomingGroupsTrigger(BaseTrigger):
    def __init__(self, conn_id: str = "contimg_db", poll_interval: float = 10.0, overrides: dict | None = None):
        super().__init__()
        self.conn_id = conn_id
        self.poll_interval = poll_interval
        self.overrides = overrides or {}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("contimg_airflow.triggers.IncomingGroupsTrigger",
                {"conn_id": self.conn_id, "poll_interval": self.poll_interval, "overrides": self.overrides})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.sdk import BaseHook

        from contimg_airflow.registry_conn import get_config, url_from_connection
        from dsa110_contimg.pipeline import new_ingest_issues, new_ready_groups, open_registry

        conn = await BaseHook.aget_connection(self.conn_id)
        url = url_from_connection(conn)
        cfg = get_config(self.overrides)
        while True:
            groups, issues = await asyncio.to_thread(_scan, cfg, url, new_ready_groups, new_ingest_issues,
                                                     open_registry)
            if groups or issues:
                self.log.info("ingest: %d new complete group(s): %s; %d file(s) to report", len(groups),
                              [g["group_id"] for g in groups], len(issues))
                yield TriggerEvent({"groups": groups, "issues": issues})
                return
            await asyncio.sleep(self.poll_interval)


def _scan(cfg, url, new_ready_groups, new_ingest_issues, open_registry) -> tuple[list[dict], list[dict]]:
    reg = open_registry(url)
    return new_ready_groups(cfg, reg.group_files()), new_ingest_issues(cfg, reg)
