"""Product versions for reprocessing (backfill) and the inputs fingerprint of images.

Revision ID: 0004_versions
Revises: 0003
Create Date: 2026-11-25

products gains ``version`` (1 for everything made before; a backfill that
reprocesses a window registers version N+1 of its mosaic and catalogue, and of
each image it remakes), ``superseded_by`` (the id of the product that replaced
this one once it passed QA and was published; the old row and its files stay)
and ``fingerprint`` (JSON: the raw files' names, sizes and mtimes, the
calibration tables applied and the imaging parameters an image was made
with; a backfill reuses an image whose fingerprint equals the current one).
A superseded product has status 'superseded'. Plain ADD COLUMNs, which SQLite
and PostgreSQL both do in place.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from dsa110_contimg.migrations import ATTR_SCHEMA

revision = "0004_versions"
down_revision = "0003"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return context.config.attributes.get(ATTR_SCHEMA)


def upgrade() -> None:
    schema = _schema()
    op.add_column("products", sa.Column("version", sa.Integer, nullable=False, server_default="1"), schema=schema)
    op.add_column("products", sa.Column("superseded_by", sa.Integer), schema=schema)
    op.add_column("products", sa.Column("fingerprint", sa.Text), schema=schema)
    op.create_index("ix_products_window_kind", "products", ["window", "kind"], schema=schema)


def downgrade() -> None:
    schema = _schema()
    op.drop_index("ix_products_window_kind", table_name="products", schema=schema)
    with op.batch_alter_table("products", schema=schema) as b:
        b.drop_column("fingerprint")
        b.drop_column("superseded_by")
        b.drop_column("version")
