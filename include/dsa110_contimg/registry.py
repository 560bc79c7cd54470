"""Domain registries Airflow does not model: groups, calibration sets,
products, sources and forced photometry (DESIGN.md section 4).

SQLAlchemy Core tables in a ``contimg`` schema on PostgreSQL (same database as
the Airflow metadata) or in a plain SQLite file beside Airflow's in the
embedded default; the code is the same. Every state change is one
transaction.

The schema is versioned with Alembic (``dsa110_contimg/migrations``), in its
own version table ``contimg_alembic_version`` so it never meets Airflow's
``public.alembic_version``. ``Registry.migrate()`` is called by every task, so
it is cheap when the schema is current and safe when several task processes
call it at once.
"""
from __future__ import annotations

import json
import logging
import math
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Iterable, Iterator

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

from .migrations import ATTR_CONNECTION, ATTR_SCHEMA, SCRIPT_LOCATION, VERSION_TABLE

log = logging.getLogger(__name__)

GROUP_STATES = ("ingested", "converted", "calibrated", "imaged", "failed")
CALSET_KINDS = ("bandpass", "gains")  # daily K/B/G set; hourly G-only set
CALSET_STATES = ("active", "retired", "failed")
CALTABLE_TYPES = ("K", "B", "G")  # also the order CASA must apply them in
_APPLY_RANK = {t: i for i, t in enumerate(CALTABLE_TYPES)}
LEGACY_REVISION = "0001"  # what the pre-Alembic create_all schema (schema_meta version 1) is
LEGACY_TABLES = ("schema_meta", "groups", "caltables", "products", "sources")
_SQLITE_LOCK_RETRIES = 8
_AT_HEAD: set[tuple[str, str | None]] = set()  # (url, schema) already migrated by this process


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _tables(schema: str | None) -> tuple[sa.MetaData, dict[str, sa.Table]]:
    """The schema at the head revision, for queries (migrations create it, not this)."""
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
        sa.Column("set_kind", sa.String(16), nullable=False, server_default="bandpass"),
        sa.Column("status_reason", sa.Text),
        sa.Column("base_set", sa.String(128)),  # gains set: the bandpass set it was solved against
        sa.Column("solver_params", sa.Text),  # JSON
        sa.Column("casa_version", sa.String(64)),
        sa.UniqueConstraint("set_name", "table_type", name="uq_caltable_set_type"),
        sa.CheckConstraint("status IN ('active', 'retired', 'failed')", name="ck_caltables_status"),
        sa.CheckConstraint("set_kind IN ('bandpass', 'gains')", name="ck_caltables_set_kind"),
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
        sa.Column("provenance", sa.Text),  # JSON: inputs, caltables applied, parameters, versions
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),  # reprocessing makes N+1
        sa.Column("superseded_by", sa.Integer),  # the product that replaced it (status 'superseded')
        sa.Column("fingerprint", sa.Text),  # JSON: the inputs and parameters an image was made from
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
    t["photometry"] = sa.Table(
        "photometry", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),  # reference-catalogue source name
        sa.Column("ra_deg", sa.Float, nullable=False),
        sa.Column("dec_deg", sa.Float, nullable=False),
        sa.Column("product_id", sa.Integer, sa.ForeignKey(t["products"].c.id), nullable=False),
        sa.Column("mid_mjd", sa.Float),
        sa.Column("flux_jy", sa.Float, nullable=False),
        sa.Column("flux_err_jy", sa.Float),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("product_id", "name", name="uq_photometry_product_name"),
    )
    return md, t


@dataclass(frozen=True)
class CalTable:
    """One table of an apply list; ``set_name``/``set_kind`` say which set it came from."""

    set_name: str
    table_type: str
    path: str
    apply_order: int
    valid_from_mjd: float
    valid_to_mjd: float
    status: str
    calibrator: str | None = None
    set_kind: str = "bandpass"


# -- migrations -------------------------------------------------------------------
@lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    return ScriptDirectory(str(SCRIPT_LOCATION))


def head_revision() -> str:
    """The newest migration this code knows (what ``migrate()`` upgrades to)."""
    head = _script().get_current_head()
    if head is None:
        raise RuntimeError(f"no migration scripts in {SCRIPT_LOCATION}")
    return head


def _alembic_config(conn: Connection, schema: str | None) -> Config:
    """An in-memory Alembic config that runs env.py on ``conn`` (no alembic.ini)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION).replace("%", "%%"))
    cfg.attributes[ATTR_CONNECTION] = conn
    cfg.attributes[ATTR_SCHEMA] = schema
    return cfg


def _current_revision(conn: Connection, schema: str | None) -> str | None:
    ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE,
                                                 "version_table_schema": schema})
    return ctx.get_current_revision()


def _is_sqlite_locked(exc: sa.exc.OperationalError) -> bool:
    return "locked" in str(getattr(exc, "orig", exc)).lower()


def _sqlite_immediate_engine(url: str) -> Engine:
    """A throwaway engine whose transactions start with BEGIN IMMEDIATE.

    pysqlite otherwise starts no transaction before DDL, so two processes
    migrating one file would interleave their CREATE TABLEs; BEGIN IMMEDIATE
    takes SQLite's write lock up front and the others wait (busy timeout)."""
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"timeout": 60})

    @sa.event.listens_for(eng, "connect")
    def _connect(dbapi_conn, record) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        _sqlite_pragmas(dbapi_conn, record)

    @sa.event.listens_for(eng, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return eng


class Registry:
    """Access to the contimg registry at a SQLAlchemy URL."""

    def __init__(self, url: str, schema: str | None = None):
        self.url = url
        if schema is None and url.startswith("postgresql"):
            schema = "contimg"
        self.schema = schema
        # pool_pre_ping: a pooled connection is tested before use, so one that a database restart
        # closed is replaced rather than failing the task's next statement
        kwargs: dict[str, Any] = {"future": True, "pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 60}
        self.engine: Engine = sa.create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.metadata, self.t = _tables(schema)

    # -- schema -----------------------------------------------------------
    def migrate(self) -> str:
        """Upgrade the schema to the newest revision; return that revision.

        Every task calls this, so the common case costs nothing: a process
        remembers the URLs it has brought to head, and otherwise a plain read
        of the version table decides. Only a real upgrade takes the lock
        (PostgreSQL advisory lock, SQLite write lock), and it re-reads the
        version under it, so concurrent callers serialise and all but the
        first find nothing to do. A database made by the pre-Alembic code is
        stamped at revision 0001 first, keeping its rows."""
        key = (self.url, self.schema)
        head = head_revision()
        if key in _AT_HEAD:
            return head
        if self.schema_revision() != head:
            self._upgrade_with_retry()
        _AT_HEAD.add(key)
        return head

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at (None before the first migrate)."""
        with self.engine.connect() as conn:
            return _current_revision(conn, self.schema)

    def _upgrade_with_retry(self) -> None:
        """SQLite can still report 'database is locked' past the busy timeout; try again."""
        for attempt in range(_SQLITE_LOCK_RETRIES):
            try:
                with self._migration_transaction() as conn:
                    self._upgrade_locked(conn)
                return
            except sa.exc.OperationalError as exc:
                if self.engine.dialect.name != "sqlite" or not _is_sqlite_locked(exc) \
                        or attempt == _SQLITE_LOCK_RETRIES - 1:
                    raise
                log.info("registry migration: database is locked, retrying (%d)", attempt + 1)
                time.sleep(0.25 * (attempt + 1))

    @contextmanager
    def _migration_transaction(self) -> Iterator[Connection]:
        """One transaction holding the database-wide migration lock."""
        if self.engine.dialect.name == "postgresql":
            lock_key = zlib.crc32(f"dsa110_contimg.registry.migrate:{self.schema}".encode())
            with self.engine.begin() as conn:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_key)))
                yield conn
            return
        if self.engine.dialect.name == "sqlite" and self.engine.url.database not in (None, "", ":memory:"):
            eng = _sqlite_immediate_engine(self.url)
            try:
                with eng.begin() as conn:
                    yield conn
            finally:
                eng.dispose()
            return
        with self.engine.begin() as conn:
            yield conn

    def _upgrade_locked(self, conn: Connection) -> None:
        if self.schema and not sa.inspect(conn).has_schema(self.schema):
            conn.execute(sa.schema.CreateSchema(self.schema))
        cfg = _alembic_config(conn, self.schema)
        current = _current_revision(conn, self.schema)
        if current is None and self._is_legacy_v1(conn):
            log.info("registry: pre-Alembic schema (version 1) found; stamping revision %s", LEGACY_REVISION)
            command.stamp(cfg, LEGACY_REVISION)
        elif current is not None:
            _require_known(current)
        command.upgrade(cfg, "head")

    def _is_legacy_v1(self, conn: Connection) -> bool:
        """True when the tables of the pre-Alembic create_all path are all here.

        Some but not all of them, or a schema_meta version other than 1, is
        a database this code cannot reason about: refuse rather than guess."""
        present = set(sa.inspect(conn).get_table_names(schema=self.schema)) & set(LEGACY_TABLES)
        if not present:
            return False
        if present != set(LEGACY_TABLES):
            raise RuntimeError(f"registry {self.engine.url.render_as_string(hide_password=True)} has only some of "
                               f"the pre-Alembic tables ({sorted(present)}); repair it by hand before migrating")
        meta = self.t["meta"]
        version = conn.execute(sa.select(meta.c.value).where(meta.c.key == "version")).scalar()
        if version not in (None, "1"):
            raise RuntimeError(f"registry has no Alembic version table but schema_meta version {version!r}; "
                               "only version 1 can be adopted")
        return True

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

    def group_files(self) -> dict[str, list[str]]:
        """Group id -> the subband files recorded for it (what ingest handed on)."""
        g = self.t["groups"]
        with self.engine.connect() as conn:
            return {r[0]: json.loads(r[1]) for r in conn.execute(sa.select(g.c.group_id, g.c.files))}

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
    def register_calset(self, set_name: str, kind: str, tables: list[tuple[str, str]], valid_from_mjd: float,
                        valid_to_mjd: float, *, status: str = "active", reason: str | None = None,
                        calibrator: str | None = None, refant: str | None = None, source_ms: str | None = None,
                        solver_params: dict | None = None, casa_version: str | None = None,
                        qa: dict | None = None, base_set: str | None = None) -> int:
        """Register calibration set ``set_name``, replacing any set of that name; return its table count.

        ``tables`` = [(type, path)] in apply order (K, B, G). A 'bandpass' set
        (daily) must hold a B table; a 'gains' set (hourly) holds exactly one
        G table and names in ``base_set`` the registered bandpass set it was
        solved against. Replacing a set also retires the active gains sets
        solved against it: their G matched tables that no longer exist under
        that name. All of it is one transaction. Bad arguments raise
        ValueError saying what is wrong."""
        tables = _checked_calset(set_name, kind, tables, valid_from_mjd, valid_to_mjd, status, base_set)
        c = self.t["caltables"]
        common = dict(set_name=set_name, set_kind=kind, valid_from_mjd=float(valid_from_mjd),
                      valid_to_mjd=float(valid_to_mjd), status=status, status_reason=reason,
                      calibrator=calibrator, refant=refant, source_ms=None if source_ms is None else str(source_ms),
                      solver_params=_dumps(solver_params), casa_version=casa_version, qa=_dumps(qa or {}),
                      base_set=base_set, created_at=_now())
        rows = [{**common, "table_type": ttype, "path": path, "apply_order": order}
                for order, (ttype, path) in enumerate(tables)]
        with self.engine.begin() as conn:
            if base_set is not None:
                self._require_bandpass_set(conn, base_set)
            if conn.execute(c.delete().where(c.c.set_name == set_name)).rowcount:
                self._retire_dependents(conn, set_name)
            conn.execute(c.insert(), rows)
        return len(rows)

    def _require_bandpass_set(self, conn: Connection, name: str) -> None:
        c = self.t["caltables"]
        kind = conn.execute(sa.select(c.c.set_kind).where(c.c.set_name == name).limit(1)).scalar()
        if kind != "bandpass":
            raise ValueError(f"base_set {name!r} is not a registered bandpass set"
                             + (f" (it is a {kind} set)" if kind else ""))

    def _retire_dependents(self, conn: Connection, set_name: str) -> None:
        c = self.t["caltables"]
        n = conn.execute(c.update().where(c.c.base_set == set_name, c.c.status == "active").values(
            status="retired", status_reason=f"base set {set_name} was re-registered")).rowcount
        if n:
            log.info("calibration: retired %d gains table(s) solved against the replaced set %s", n, set_name)

    def apply_list(self, mjd: float) -> list[CalTable]:
        """The tables to apply to data at ``mjd``, in apply order.

        The rule: among ACTIVE sets whose validity window covers ``mjd``
        (inclusive), take the newest (created_at, then id) 'bandpass' set and
        its tables in apply order (K, B, G). If an active 'gains' set covers
        ``mjd`` and was solved against that very bandpass set (``base_set``),
        the newest such set's G replaces the bandpass set's G: a G is only
        meaningful on top of the B it was solved with, so gains solved against
        another bandpass are never mixed in. Failed and retired sets never
        appear. No bandpass set covering ``mjd`` gives []."""
        c = self.t["caltables"]
        q = sa.select(c).where(c.c.status == "active", c.c.valid_from_mjd <= mjd, c.c.valid_to_mjd >= mjd)
        with self.engine.connect() as conn:  # one statement: one consistent snapshot
            rows = list(conn.execute(q).mappings())
        bandpass = _newest_set([r for r in rows if r["set_kind"] == "bandpass"])
        if bandpass is None:
            return []
        chosen = [r for r in rows if r["set_name"] == bandpass]
        gains = _newest_set([r for r in rows if r["set_kind"] == "gains" and r["base_set"] == bandpass])
        if gains is not None:
            chosen = [r for r in chosen if r["table_type"] != "G"]
            chosen += [r for r in rows if r["set_name"] == gains and r["table_type"] == "G"]
        chosen.sort(key=lambda r: (_APPLY_RANK.get(r["table_type"], len(_APPLY_RANK)), r["apply_order"]))
        return [_caltable(r) for r in chosen]

    def calsets(self, status: str | None = None, kind: str | None = None) -> list[dict]:
        """One dict per calibration set, oldest first, with its tables [(type, path)] in apply order.

        ``qa`` is a dict ({} when none was recorded), ``solver_params`` a dict
        or None (sets registered before it was recorded)."""
        c = self.t["caltables"]
        q = sa.select(c).order_by(c.c.created_at, c.c.id)
        if status is not None:
            q = q.where(c.c.status == status)
        if kind is not None:
            q = q.where(c.c.set_kind == kind)
        with self.engine.connect() as conn:
            rows = list(conn.execute(q).mappings())
        sets: dict[str, dict] = {}
        for r in rows:
            sets.setdefault(r["set_name"], _calset(r))["tables"].append((r["apply_order"], r["table_type"], r["path"]))
        for s in sets.values():
            s["tables"] = [(ttype, path) for _, ttype, path in sorted(s["tables"])]
        return list(sets.values())

    def retire_calset(self, set_name: str, reason: str) -> int:
        """Take a set out of use (status 'retired', with the reason); return the rows changed.

        The rows stay, so what was applied to earlier data remains on record.
        KeyError when no set has that name."""
        if not reason or not reason.strip():
            raise ValueError("retiring a calibration set needs a reason")
        c = self.t["caltables"]
        with self.engine.begin() as conn:
            n = conn.execute(c.update().where(c.c.set_name == set_name).values(
                status="retired", status_reason=reason)).rowcount
        if n == 0:
            raise KeyError(f"no calibration set named {set_name!r}")
        log.info("calibration: set %s retired (%s)", set_name, reason)
        return n

    def caltables(self) -> list[dict]:
        """Every registered table, one row each, as stored (JSON columns as text)."""
        c = self.t["caltables"]
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(c).order_by(c.c.id)).mappings()]

    # -- products -----------------------------------------------------------
    def register_product(self, kind: str, name: str, path: str, *, group_id: str | None = None,
                         window: str | None = None, qa_status: str | None = None,
                         mid_mjd: float | None = None, metrics: dict | None = None,
                         status: str = "staged", provenance: dict | None = None,
                         version: int | None = None, fingerprint: dict | None = None) -> int:
        """Insert or replace the product (kind, name); return its id.

        ``provenance`` records how it was made (input files, calibration
        tables applied, parameters, software versions) as JSON. ``version``
        (default 1 for a new row, unchanged on replace) numbers reprocessed
        versions of the same window or group, each under its own ``name``;
        ``fingerprint`` is an image's inputs (see ``dsa110_contimg.reprocess``)."""
        p = self.t["products"]
        values = dict(kind=kind, name=name, path=str(path), group_id=group_id, window=window,
                      qa_status=qa_status, mid_mjd=mid_mjd, metrics=json.dumps(metrics or {}),
                      status=status, created_at=_now(), published_path=None, provenance=_dumps(provenance))
        if version is not None:
            values["version"] = int(version)
        if fingerprint is not None:
            values["fingerprint"] = json.dumps(fingerprint, sort_keys=True, default=str)
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

    def set_product_fields(self, product_id: int, *, window: str | None = None, version: int | None = None,
                           fingerprint: dict | None = None) -> None:
        """Set a product's window, version and/or fingerprint (those given)."""
        p = self.t["products"]
        values: dict[str, Any] = {}
        if window is not None:
            values["window"] = window
        if version is not None:
            values["version"] = int(version)
        if fingerprint is not None:
            values["fingerprint"] = json.dumps(fingerprint, sort_keys=True, default=str)
        if not values:
            return
        with self.engine.begin() as conn:
            if conn.execute(p.update().where(p.c.id == product_id).values(**values)).rowcount == 0:
                raise KeyError(f"product {product_id} is not registered")

    def supersede(self, replaced: dict[int, int]) -> int:
        """Mark products superseded: {old id: id of the product that replaced it}; one transaction.

        Their rows, paths and published files stay; only status and
        ``superseded_by`` change. Returns the number of rows changed."""
        p = self.t["products"]
        n = 0
        with self.engine.begin() as conn:
            for old, new in replaced.items():
                if old == new:
                    raise ValueError(f"product {old} cannot supersede itself")
                n += conn.execute(p.update().where(p.c.id == old).values(
                    status="superseded", superseded_by=int(new))).rowcount
        return n

    def products(self, kind: str | None = None, status: str | None = None) -> list[dict]:
        """Products in id order; ``metrics`` parsed ({} if none), ``provenance`` and
        ``fingerprint`` parsed (None if none)."""
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
            r["provenance"] = _loads(r["provenance"])
            r["fingerprint"] = _loads(r.get("fingerprint"))
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

    # -- photometry -----------------------------------------------------------
    def record_photometry(self, product_id: int, rows: Iterable[Any], mid_mjd: float | None = None) -> int:
        """Replace the forced photometry of a product; return the number of rows.

        ``rows`` are dicts or objects (e.g. ForcedMeasurement) with ``name``,
        ``ra_deg``, ``dec_deg``, ``flux_jy``, ``flux_err_jy`` and optionally
        ``mid_mjd``; a row without one takes ``mid_mjd``, else the product's.
        Rerunning a product's photometry replaces its rows (one transaction).
        Raises KeyError for an unregistered product, ValueError for a source
        given twice or a non-finite flux."""
        p, ph = self.t["products"], self.t["photometry"]
        with self.engine.begin() as conn:
            product_mjd = conn.execute(sa.select(p.c.mid_mjd).where(p.c.id == product_id)).first()
            if product_mjd is None:
                raise KeyError(f"product {product_id} is not registered")
            values = _photometry_rows(product_id, rows, mid_mjd if mid_mjd is not None else product_mjd[0])
            conn.execute(ph.delete().where(ph.c.product_id == product_id))
            if values:
                conn.execute(ph.insert(), values)
        return len(values)

    def light_curve(self, name: str) -> list[dict]:
        """One source's forced photometry across products, in time order
        (mid_mjd, then id); each row has the fields of the photometry table."""
        ph = self.t["photometry"]
        q = (sa.select(*[ph.c[f] for f in PHOTOMETRY_FIELDS]).where(ph.c.name == name)
             .order_by(ph.c.mid_mjd, ph.c.id))
        with self.engine.connect() as conn:
            return [_photometry_row(r) for r in conn.execute(q).mappings()]

    def light_curves(self, names: Iterable[str] | None = None) -> dict[str, list[dict]]:
        """Light curves of ``names`` (all sources when None), keyed by name."""
        ph = self.t["photometry"]
        q = sa.select(*[ph.c[f] for f in PHOTOMETRY_FIELDS]).order_by(ph.c.name, ph.c.mid_mjd, ph.c.id)
        if names is not None:
            q = q.where(ph.c.name.in_(list(names)))
        out: dict[str, list[dict]] = {}
        with self.engine.connect() as conn:
            for r in conn.execute(q).mappings():
                out.setdefault(r["name"], []).append(_photometry_row(r))
        return out


PHOTOMETRY_FIELDS = ("name", "ra_deg", "dec_deg", "product_id", "mid_mjd", "flux_jy", "flux_err_jy", "created_at")


def _field(row: Any, key: str) -> Any:
    return row.get(key) if isinstance(row, dict) else getattr(row, key, None)


def _photometry_rows(product_id: int, rows: Iterable[Any], mid_mjd: float | None) -> list[dict]:
    """Rows (dicts or objects with name, ra_deg, dec_deg, flux_jy, flux_err_jy[, mid_mjd]) as table values."""
    now = _now()
    out, seen = [], set()
    for r in rows:
        name = str(_field(r, "name"))
        if name in seen:
            raise ValueError(f"photometry for product {product_id}: source {name!r} given twice")
        seen.add(name)
        flux = float(_field(r, "flux_jy"))
        if not math.isfinite(flux):
            raise ValueError(f"photometry for product {product_id}: source {name!r} has flux {flux}")
        err, row_mjd = _field(r, "flux_err_jy"), _field(r, "mid_mjd")
        out.append({"name": name, "ra_deg": float(_field(r, "ra_deg")), "dec_deg": float(_field(r, "dec_deg")),
                    "product_id": int(product_id), "mid_mjd": mid_mjd if row_mjd is None else float(row_mjd),
                    "flux_jy": flux, "flux_err_jy": None if err is None else float(err), "created_at": now})
    return out


def _photometry_row(r: Any) -> dict:
    return {**dict(r), "created_at": _as_utc(r["created_at"])}


def _checked_calset(set_name: str, kind: str, tables: list[tuple[str, str]], valid_from_mjd: float,
                    valid_to_mjd: float, status: str, base_set: str | None) -> list[tuple[str, str]]:
    """Validate a calibration set's arguments; return its tables as [(type, path)] strings."""
    if not set_name or len(set_name) > 128:
        raise ValueError(f"calibration set name {set_name!r} must be 1-128 characters")
    if kind not in CALSET_KINDS:
        raise ValueError(f"calibration set kind {kind!r} is not one of {CALSET_KINDS}")
    if status not in CALSET_STATES:
        raise ValueError(f"calibration set status {status!r} is not one of {CALSET_STATES}")
    _check_window(valid_from_mjd, valid_to_mjd)
    tables = [(str(t), str(p)) for t, p in tables]
    types = [t for t, _ in tables]
    bad = [t for t in types if t not in CALTABLE_TYPES]
    if not tables or bad:
        raise ValueError(f"set {set_name}: table types {types} must be a non-empty list of {CALTABLE_TYPES}")
    if types != sorted(set(types), key=CALTABLE_TYPES.index):
        raise ValueError(f"set {set_name}: tables {types} must be in apply order K, B, G, each type once")
    if kind == "bandpass" and ("B" not in types or base_set is not None):
        raise ValueError(f"bandpass set {set_name} needs a B table and no base_set (got {types}, {base_set!r})")
    if kind == "gains" and (types != ["G"] or not base_set or base_set == set_name):
        raise ValueError(f"gains set {set_name} needs exactly one G table and the name of the bandpass set "
                         f"it was solved against in base_set (got {types}, {base_set!r})")
    return tables


def _check_window(valid_from_mjd: float, valid_to_mjd: float) -> None:
    if not (math.isfinite(valid_from_mjd) and math.isfinite(valid_to_mjd)):
        raise ValueError(f"validity window MJD {valid_from_mjd}-{valid_to_mjd} is not finite")
    if valid_to_mjd <= valid_from_mjd:
        raise ValueError(f"validity window ends (MJD {valid_to_mjd}) at or before it starts (MJD {valid_from_mjd})")


def _newest_set(rows: list[Any]) -> str | None:
    """Name of the most recently registered set among ``rows`` (created_at, then id)."""
    if not rows:
        return None
    return max(rows, key=lambda r: (r["created_at"], r["id"]))["set_name"]


def _caltable(r: Any) -> CalTable:
    return CalTable(r["set_name"], r["table_type"], r["path"], r["apply_order"], r["valid_from_mjd"],
                    r["valid_to_mjd"], r["status"], r["calibrator"], r["set_kind"])


def _calset(r: Any) -> dict:
    """The set-level fields of one caltables row (they are the same on every row of a set)."""
    return {"set_name": r["set_name"], "kind": r["set_kind"], "status": r["status"], "reason": r["status_reason"],
            "valid_from_mjd": r["valid_from_mjd"], "valid_to_mjd": r["valid_to_mjd"],
            "calibrator": r["calibrator"], "refant": r["refant"], "source_ms": r["source_ms"],
            "casa_version": r["casa_version"], "base_set": r["base_set"], "qa": _loads(r["qa"]) or {},
            "solver_params": _loads(r["solver_params"]), "created_at": _as_utc(r["created_at"]), "tables": []}


def _as_utc(dt: datetime) -> datetime:
    """SQLite hands timestamps back naive; they were written in UTC."""
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _dumps(obj: dict | None) -> str | None:
    """JSON text of a dict column; None stays NULL. Paths and the like become strings."""
    return None if obj is None else json.dumps(obj, default=str)


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


def _require_known(revision: str) -> None:
    """A database migrated by newer code must not be touched by older code."""
    try:
        _script().get_revision(revision)
    except CommandError as exc:
        raise RuntimeError(f"registry schema is at revision {revision!r}, which this code does not know "
                           f"(newest known: {head_revision()}); is it newer software's database?") from exc


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
