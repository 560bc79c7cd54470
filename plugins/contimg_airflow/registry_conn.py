"""Reach the contimg registry through the Airflow Connection ``contimg_db``.

Tasks may not touch Airflow's metadata ORM, so the registry has its own
connection: a ``sqlite`` connection (host = path of the file) in the embedded
default, a ``postgres`` one in production (schema ``contimg`` in the same
database as the Airflow metadata)."""
from __future__ import annotations

from functools import lru_cache

from dsa110_contimg.config import PipelineConfig
from dsa110_contimg.pipeline import open_registry
from dsa110_contimg.registry import Registry

CONN_ID = "contimg_db"


def url_from_connection(conn) -> str:
    """SQLAlchemy URL for an Airflow Connection object (sqlite or postgres)."""
    ctype = (conn.conn_type or "").lower()
    if ctype == "sqlite":
        path = conn.host or conn.schema
        if not path:
            raise ValueError(f"connection {conn.conn_id}: sqlite connection needs the file path as host")
        return f"sqlite:///{path}"
    if ctype in ("postgres", "postgresql"):
        auth = conn.login or "postgres"
        if conn.password:
            auth += f":{conn.password}"
        port = conn.port or 5432
        return f"postgresql+psycopg2://{auth}@{conn.host or '127.0.0.1'}:{port}/{conn.schema or 'airflow'}"
    raise ValueError(f"connection {conn.conn_id}: unsupported type {ctype!r} (use sqlite or postgres)")


def registry_url(conn_id: str = CONN_ID) -> str:
    from airflow.sdk import BaseHook

    return url_from_connection(BaseHook.get_connection(conn_id))


@lru_cache(maxsize=4)
def _registry(url: str) -> Registry:
    return open_registry(url)


def get_registry(conn_id: str = CONN_ID) -> Registry:
    return _registry(registry_url(conn_id))


def get_config(overrides: dict | None = None) -> PipelineConfig:
    """The deployment's config, with a run's Params applied on top."""
    return PipelineConfig.load().with_overrides(overrides)
