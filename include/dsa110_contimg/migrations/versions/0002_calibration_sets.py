"""Calibration sets (kind, status reason, base set, solver provenance) and product provenance.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-15

caltables gains ``set_kind`` ('bandpass' daily K/B/G set, 'gains' hourly G-only
set), ``status_reason``, ``base_set`` (the bandpass set a gains set was solved
against), ``solver_params`` (JSON) and ``casa_version``; CHECK constraints pin
``status`` and ``set_kind`` to the values the apply rule understands. Existing
rows become bandpass sets; a status the apply rule does not know becomes
'failed' (with the old value kept in the reason) rather than blocking the
upgrade. products gains ``provenance`` (JSON).

The CHECK constraints go through ``batch_alter_table`` so SQLite (which cannot
ALTER a constraint) rebuilds the table; PostgreSQL gets plain ALTERs.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from dsa110_contimg.migrations import ATTR_SCHEMA

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NEW_CALTABLE_COLUMNS = ("set_kind", "status_reason", "base_set", "solver_params", "casa_version")
CK_STATUS = "ck_caltables_status"
CK_KIND = "ck_caltables_set_kind"


def _schema() -> str | None:
    return context.config.attributes.get(ATTR_SCHEMA)


def upgrade() -> None:
    schema = _schema()
    with op.batch_alter_table("caltables", schema=schema) as b:
        b.add_column(sa.Column("set_kind", sa.String(16), nullable=False, server_default="bandpass"))
        b.add_column(sa.Column("status_reason", sa.Text))
        b.add_column(sa.Column("base_set", sa.String(128)))
        b.add_column(sa.Column("solver_params", sa.Text))
        b.add_column(sa.Column("casa_version", sa.String(64)))
    caltables = sa.table("caltables", sa.column("status"), sa.column("status_reason"), schema=schema)
    op.execute(
        caltables.update()
        .where(caltables.c.status.not_in(("active", "retired", "failed")))
        .values(status_reason=sa.literal("status before migration 0002: ") + caltables.c.status,
                status="failed")
    )
    with op.batch_alter_table("caltables", schema=schema) as b:
        b.create_check_constraint(CK_STATUS, "status IN ('active', 'retired', 'failed')")
        b.create_check_constraint(CK_KIND, "set_kind IN ('bandpass', 'gains')")
    op.add_column("products", sa.Column("provenance", sa.Text), schema=schema)
    meta = sa.table("schema_meta", sa.column("key"), sa.column("value"), schema=schema)
    op.execute(meta.update().where(meta.c.key == "version").values(value="2"))


def downgrade() -> None:
    schema = _schema()
    with op.batch_alter_table("products", schema=schema) as b:
        b.drop_column("provenance")
    with op.batch_alter_table("caltables", schema=schema) as b:
        b.drop_constraint(CK_KIND, type_="check")
        b.drop_constraint(CK_STATUS, type_="check")
        for name in reversed(NEW_CALTABLE_COLUMNS):
            b.drop_column(name)
    meta = sa.table("schema_meta", sa.column("key"), sa.column("value"), schema=schema)
    op.execute(meta.update().where(meta.c.key == "version").values(value="1"))
