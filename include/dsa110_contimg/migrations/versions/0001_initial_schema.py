"""Initial registry schema: what ``Registry.migrate()`` created before Alembic.

Revision ID: 0001
Revises:
Create Date: 2026-01-15

Frozen copy of the pre-Alembic ``_tables()`` (schema_meta version 1): groups,
caltables, products, sources. Databases created by that code are stamped at
this revision by ``Registry.migrate()`` instead of running it.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from dsa110_contimg.migrations import ATTR_SCHEMA

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES = ("schema_meta", "groups", "caltables", "products", "sources")


def _schema() -> str | None:
    return context.config.attributes.get(ATTR_SCHEMA)


def upgrade() -> None:
    schema = _schema()
    tz = sa.DateTime(timezone=True)
    meta = op.create_table(
        "schema_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(256), nullable=False),
        schema=schema,
    )
    op.create_table(
        "groups",
        sa.Column("group_id", sa.String(32), primary_key=True),
        sa.Column("start_mjd", sa.Float, nullable=False),
        sa.Column("n_subbands", sa.Integer, nullable=False),
        sa.Column("files", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("ms_path", sa.Text),
        sa.Column("mid_mjd", sa.Float),
        sa.Column("pointing_dec_deg", sa.Float),
        sa.Column("message", sa.Text),
        sa.Column("updated_at", tz, nullable=False),
        schema=schema,
    )
    op.create_table(
        "caltables",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("set_name", sa.String(128), nullable=False),
        sa.Column("table_type", sa.String(8), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("apply_order", sa.Integer, nullable=False),
        sa.Column("valid_from_mjd", sa.Float, nullable=False),
        sa.Column("valid_to_mjd", sa.Float, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("calibrator", sa.String(64)),
        sa.Column("refant", sa.String(16)),
        sa.Column("source_ms", sa.Text),
        sa.Column("qa", sa.Text),
        sa.Column("created_at", tz, nullable=False),
        sa.UniqueConstraint("set_name", "table_type", name="uq_caltable_set_type"),
        schema=schema,
    )
    op.create_table(
        "products",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("group_id", sa.String(32)),
        sa.Column("window", sa.String(64)),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("published_path", sa.Text),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("qa_status", sa.String(16)),
        sa.Column("mid_mjd", sa.Float),
        sa.Column("metrics", sa.Text),
        sa.Column("created_at", tz, nullable=False),
        sa.UniqueConstraint("kind", "name", name="uq_product_kind_name"),
        schema=schema,
    )
    op.create_table(
        "sources",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("product_id", sa.Integer, nullable=False),
        sa.Column("ra_deg", sa.Float, nullable=False),
        sa.Column("dec_deg", sa.Float, nullable=False),
        sa.Column("flux_jy", sa.Float, nullable=False),
        sa.Column("flux_err_jy", sa.Float),
        sa.Column("ref_name", sa.String(64)),
        sa.Column("ref_flux_jy", sa.Float),
        sa.Column("offset_arcsec", sa.Float),
        schema=schema,
    )
    # The pre-Alembic code recorded its version here; keep doing so for old readers.
    op.bulk_insert(meta, [{"key": "version", "value": "1"}])


def downgrade() -> None:
    schema = _schema()
    for name in reversed(TABLES):
        op.drop_table(name, schema=schema)
