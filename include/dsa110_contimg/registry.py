"""Domain registries Airflow does not model: groups, calibration tables,
products and sources (DESIGN.md section 4).

SQLAlchemy Core tables in a ``contimg`` schema on PostgreSQL (same database as
the Airflow metadata) or in a plain SQLite file beside Airflow's in the
embedded default; the code is the same. Every state change is one
transaction. ``Registry.migrate()`` creates what is missing and records the
schema version, so it is safe to call from every task.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

SCHEMA_VERSION = 1
GROUP_STATES = ("ingested", "converted", "calibrated", "imaged", "failed")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _tables(schema: str | None) -> tuple[sa.MetaData, dict[str, sa.Table]]:
    md = sa.MetaData(schema=schema)
    t = {}
    t["meta"] = sa.Table(
        "schema_meta", md,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(256), nullable=False),
    )
    t["groups"] = sa.Table(
        "groups", md,
        sa.Column("group_id", sa.String(32), primary_key=True),
        sa.Column("start_mjd", sa.Float, nullable=False),
        sa.Column("n_subbands", sa.Integer, nullable=False),
        sa.Column("files", sa.Text, nullable=False),  # JSON list
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("ms_path", sa.Text),
        sa.Column("mid_mjd", sa.Float),
        sa.Column("pointing_dec_deg", sa.Float),
        sa.Column("message", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    t["caltables"] = sa.Table(
        "caltables", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("set_name", sa.String(128), nullable=False),
        sa.Column("table_type", sa.String(8), nullable=False),  # K, B, G
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("apply_order", sa.Integer, nullable=False),
        sa.Column("valid_from_mjd", sa.Float, nullable=False),
        sa.Column("valid_to_mjd", sa.Float, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),  # active, retired, failed
        sa.Column("calibrator", sa.String(64)),
        sa.Column("refant", sa.String(16)),
        sa.Column("source_ms", sa.Text),
        sa.Column("qa", sa.Text),  # JSON
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("set_name", "table_type", name="uq_caltable_set_type"),
    )
    t["products"] = sa.Table(
        "products", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),  # image, mosaic, catalog
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("group_id", sa.String(32)),
        sa.Column("window", sa.String(64)),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("published_path", sa.Text),
        sa.Column("status", sa.String(16), nullable=False),  # staged, published, failed
        sa.Column("qa_status", sa.String(16)),
        sa.Column("mid_mjd", sa.Float),
        sa.Column("metrics", sa.Text),  # JSON: rms, peak, beam, ...
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("kind", "name", name="uq_product_kind_name"),
    )
    t["sources"] = sa.Table(
        "sources", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("product_id", sa.Integer, nullable=False),
        sa.Column("ra_deg", sa.Float, nullable=False),
        sa.Column("dec_deg", sa.Float, nullable=False),
        sa.Column("flux_jy", sa.Float, nullable=False),
        sa.Column("flux_err_jy", sa.Float),
        sa.Column("ref_name", sa.String(64)),
        sa.Column("ref_flux_jy", sa.Float),
        sa.Column("offset_arcsec", sa.Float),
    )
    return md, t


@dataclass(frozen=True)
class CalTable:
    set_name: str
    table_type: str
    path: str
    apply_order: int
    valid_from_mjd: float
    valid_to_mjd: float
    status: str
    calibrator: str | None = None


class Registry:
    """Access to the contimg registry at a SQLAlchemy URL."""

    def __init__(self, url: str, schema: str | None = None):
        self.url = url
        if schema is None and url.startswith("postgresql"):
            schema = "contimg"
        self.schema = schema
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 60}
        self.engine: Engine = sa.create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.metadata, self.t = _tables(schema)

    # -- schema -----------------------------------------------------------
    def migrate(self) -> int:
        """Create the schema and any missing tables; return the schema version."""
        for attempt in range(5):
            try:
                with self.engine.begin() as conn:
                    if self.schema:
                        conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
                    self.metadata.create_all(conn, checkfirst=True)
                    meta = self.t["meta"]
                    row = conn.execute(sa.select(meta.c.value).where(meta.c.key == "version")).first()
                    if row is None:
                        conn.execute(meta.insert().values(key="version", value=str(SCHEMA_VERSION)))
                    return SCHEMA_VERSION
            except sa.exc.OperationalError:
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
            except sa.exc.IntegrityError:  # a concurrent migrate won the race
                return SCHEMA_VERSION
        return SCHEMA_VERSION

    # -- groups -----------------------------------------------------------
    def record_group(self, group_id: str, start_mjd: float, files: Iterable[str], status: str = "ingested") -> bool:
        """Insert a group if new; return True when it was new."""
        g = self.t["groups"]
        files = list(files)
        with self.engine.begin() as conn:
            exists = conn.execute(sa.select(g.c.group_id).where(g.c.group_id == group_id)).first()
            if exists:
                return False
            conn.execute(g.insert().values(
                group_id=group_id, start_mjd=start_mjd, n_subbands=len(files),
                files=json.dumps(files), status=status, updated_at=_now(),
            ))
            return True

    def known_groups(self) -> set[str]:
        g = self.t["groups"]
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(sa.select(g.c.group_id))}

    def update_group(self, group_id: str, **values: Any) -> None:
        if values.get("status") not in (None, *GROUP_STATES):
            raise ValueError(f"unknown group status {values['status']!r}")
        g = self.t["groups"]
        with self.engine.begin() as conn:
            n = conn.execute(g.update().where(g.c.group_id == group_id).values(updated_at=_now(), **values)).rowcount
            if n == 0:
                raise KeyError(f"group {group_id} is not registered")

    def get_group(self, group_id: str) -> dict | None:
        g = self.t["groups"]
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(g).where(g.c.group_id == group_id)).mappings().first()
        return dict(row) if row else None

    def groups_between(self, start_mjd: float, end_mjd: float) -> list[dict]:
        g = self.t["groups"]
        q = sa.select(g).where(g.c.start_mjd >= start_mjd, g.c.start_mjd < end_mjd).order_by(g.c.start_mjd)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    # -- calibration ------------------------------------------------------
    def register_caltables(self, set_name: str, tables: list[tuple[str, str]], valid_from_mjd: float,
                           valid_to_mjd: float, status: str = "active", calibrator: str | None = None,
                           refant: str | None = None, source_ms: str | None = None,
                           qa: dict | None = None) -> int:
        """Register (or replace) one calibration set: ``tables`` = [(type, path)] in apply order."""
        c = self.t["caltables"]
        with self.engine.begin() as conn:
            conn.execute(c.delete().where(c.c.set_name == set_name))
            for order, (ttype, path) in enumerate(tables):
                conn.execute(c.insert().values(
                    set_name=set_name, table_type=ttype, path=str(path), apply_order=order,
                    valid_from_mjd=valid_from_mjd, valid_to_mjd=valid_to_mjd, status=status,
                    calibrator=calibrator, refant=refant, source_ms=source_ms,
                    qa=json.dumps(qa or {}), created_at=_now(),
                ))
        return len(tables)

    def apply_list(self, mjd: float) -> list[CalTable]:
        """Ordered tables of the newest active set whose validity covers ``mjd``."""
        c = self.t["caltables"]
        q = (sa.select(c).where(c.c.status == "active", c.c.valid_from_mjd <= mjd, c.c.valid_to_mjd >= mjd)
             .order_by(c.c.created_at.desc(), c.c.id.desc()))
        with self.engine.connect() as conn:
            rows = list(conn.execute(q).mappings())
        if not rows:
            return []
        newest = rows[0]["set_name"]
        chosen = sorted((r for r in rows if r["set_name"] == newest), key=lambda r: r["apply_order"])
        return [CalTable(r["set_name"], r["table_type"], r["path"], r["apply_order"],
                         r["valid_from_mjd"], r["valid_to_mjd"], r["status"], r["calibrator"]) for r in chosen]

    def caltables(self) -> list[dict]:
        c = self.t["caltables"]
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(c).order_by(c.c.id)).mappings()]

    # -- products -----------------------------------------------------------
    def register_product(self, kind: str, name: str, path: str, *, group_id: str | None = None,
                         window: str | None = None, qa_status: str | None = None,
                         mid_mjd: float | None = None, metrics: dict | None = None,
                         status: str = "staged") -> int:
        """Insert or replace the product (kind, name); return its id."""
        p = self.t["products"]
        values = dict(kind=kind, name=name, path=str(path), group_id=group_id, window=window,
                      qa_status=qa_status, mid_mjd=mid_mjd, metrics=json.dumps(metrics or {}),
                      status=status, created_at=_now(), published_path=None)
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(p.c.id).where(p.c.kind == kind, p.c.name == name)).first()
            if row:
                conn.execute(p.update().where(p.c.id == row[0]).values(**values))
                return int(row[0])
            return int(conn.execute(p.insert().values(**values)).inserted_primary_key[0])

    def mark_published(self, product_id: int, published_path: str) -> None:
        p = self.t["products"]
        with self.engine.begin() as conn:
            conn.execute(p.update().where(p.c.id == product_id).values(status="published", published_path=str(published_path)))

    def products(self, kind: str | None = None, status: str | None = None) -> list[dict]:
        p = self.t["products"]
        q = sa.select(p).order_by(p.c.id)
        if kind:
            q = q.where(p.c.kind == kind)
        if status:
            q = q.where(p.c.status == status)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            r["metrics"] = json.loads(r["metrics"] or "{}")
        return rows

    def images_between(self, start_mjd: float, end_mjd: float) -> list[dict]:
        return [r for r in self.products(kind="image")
                if r["mid_mjd"] is not None and start_mjd <= r["mid_mjd"] < end_mjd]

    # -- sources ------------------------------------------------------------
    def record_sources(self, product_id: int, rows: Iterable[dict]) -> int:
        """Replace the source list of a product; return the number of rows."""
        s = self.t["sources"]
        cols = [c.name for c in s.columns if c.name not in ("id", "product_id")]
        rows = [{**{c: r.get(c) for c in cols}, "product_id": product_id} for r in rows]
        with self.engine.begin() as conn:
            conn.execute(s.delete().where(s.c.product_id == product_id))
            if rows:
                conn.execute(s.insert(), rows)
        return len(rows)

    def sources(self, product_id: int | None = None) -> list[dict]:
        s = self.t["sources"]
        q = sa.select(s).order_by(s.c.id)
        if product_id is not None:
            q = q.where(s.c.product_id == product_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    """WAL lets the api-server read while a task writes."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def mjd_from_datetime(dt: datetime) -> float:
    """MJD of a timezone-aware (or naive UTC) datetime."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp() / 86400.0 + 40587.0


def datetime_from_mjd(mjd: float) -> datetime:
    return datetime.fromtimestamp((mjd - 40587.0) * 86400.0, tz=timezone.utc)
