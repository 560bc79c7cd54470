"""Alembic migrations of the contimg registry schema (used programmatically).

There is no alembic.ini: :meth:`dsa110_contimg.registry.Registry.migrate`
builds the :class:`alembic.config.Config` itself and hands ``env.py`` the open
connection and the schema name through ``Config.attributes``. The version
table has its own name (and, on PostgreSQL, lives in the ``contimg`` schema)
because the registry shares its database with Airflow, whose own Alembic keeps
``public.alembic_version``; the two histories must never see each other.
"""
from __future__ import annotations

from pathlib import Path

SCRIPT_LOCATION = Path(__file__).resolve().parent
VERSION_TABLE = "contimg_alembic_version"
# Config.attributes keys env.py reads.
ATTR_CONNECTION = "connection"
ATTR_SCHEMA = "contimg_schema"
