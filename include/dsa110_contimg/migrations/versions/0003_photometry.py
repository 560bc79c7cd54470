"""Forced photometry per reference source and product (light curves).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24

One row per (product, source): the forced peak flux of a reference-catalogue
source (``name``) measured in one image or mosaic (``product_id``), with the
product's mid-time, so a source's rows across mosaics are its light curve.
``product_id`` references ``products.id``; re-measuring a product replaces
its rows (unique per product and name). Indexed by name for light curves.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from dsa110_contimg.migrations import ATTR_SCHEMA

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return context.config.attributes.get(ATTR_SCHEMA)


def upgrade() -> None:
    schema = _schema()
    products_id = f"{schema}.products.id" if schema else "products.id"
    op.create_table(
        "photometry",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("ra_deg", sa.Float, nullable=False),
        sa.Column("dec_deg", sa.Float, nullable=False),
        sa.Column("product_id", sa.Integer, sa.ForeignKey(products_id, name="fk_photometry_product"),
                  nullable=False),
        sa.Column("mid_mjd", sa.Float),
        sa.Column("flux_jy", sa.Float, nullable=False),
        sa.Column("flux_err_jy", sa.Float),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("product_id", "name", name="uq_photometry_product_name"),
        schema=schema,
    )
    op.create_index("ix_photometry_name", "photometry", ["name"], schema=schema)
    meta = sa.table("schema_meta", sa.column("key"), sa.column("value"), schema=schema)
    op.execute(meta.update().where(meta.c.key == "version").values(value="3"))


def downgrade() -> None:
    schema = _schema()
    op.drop_index("ix_photometry_name", table_name="photometry", schema=schema)
    op.drop_table("photometry", schema=schema)
    meta = sa.table("schema_meta", sa.column("key"), sa.column("value"), schema=schema)
    op.execute(meta.update().where(meta.c.key == "version").values(value="2"))
