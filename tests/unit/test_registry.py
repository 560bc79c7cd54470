"""Registry: Alembic migrations, calibration-set rules, transactions (SQLite and PostgreSQL)."""
from __future__ import annotations

import json
import multiprocessing as mp
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from alembic import command

from dsa110_contimg import registry as registry_mod
from dsa110_contimg.calibration.registry_io import register_solution, tables_for, tables_with_sets_for
from dsa110_contimg.errors import NoCalibrationError
from dsa110_contimg.registry import Registry, datetime_from_mjd, head_revision, mjd_from_datetime

from conftest import throwaway_postgres_db

NEW_CALTABLE_COLUMNS = {"set_kind", "status_reason", "base_set", "solver_params", "casa_version"}
HEAD = "0004_versions"  # the newest migration (0004: product versions for reprocessing)


# -- fixtures -------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request, tmp_path):
    """URL of an empty registry database (a new PostgreSQL database, or a new SQLite file)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'reg.db'}"
        return
    with throwaway_postgres_db() as url:
        yield url


@pytest.fixture
def reg(fresh_url):
    r = Registry(fresh_url)
    r.migrate()
    yield r
    r.engine.dispose()


def _legacy_v1(schema: str | None) -> tuple[sa.MetaData, dict[str, sa.Table]]:
    """The tables exactly as the pre-Alembic ``Registry.migrate()`` created them (create_all)."""
    md = sa.MetaData(schema=schema)
    tz = sa.DateTime(timezone=True)
    t = {
        "meta": sa.Table("schema_meta", md, sa.Column("key", sa.String(64), primary_key=True),
                         sa.Column("value", sa.String(256), nullable=False)),
        "groups": sa.Table(
            "groups", md, sa.Column("group_id", sa.String(32), primary_key=True),
            sa.Column("start_mjd", sa.Float, nullable=False), sa.Column("n_subbands", sa.Integer, nullable=False),
            sa.Column("files", sa.Text, nullable=False), sa.Column("status", sa.String(16), nullable=False),
            sa.Column("ms_path", sa.Text), sa.Column("mid_mjd", sa.Float), sa.Column("pointing_dec_deg", sa.Float),
            sa.Column("message", sa.Text), sa.Column("updated_at", tz, nullable=False)),
        "caltables": sa.Table(
            "caltables", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("set_name", sa.String(128), nullable=False),
            sa.Column("table_type", sa.String(8), nullable=False),
            sa.Column("path", sa.Text, nullable=False), sa.Column("apply_order", sa.Integer, nullable=False),
            sa.Column("valid_from_mjd", sa.Float, nullable=False), sa.Column("valid_to_mjd", sa.Float, nullable=False),
            sa.Column("status", sa.String(16), nullable=False), sa.Column("calibrator", sa.String(64)),
            sa.Column("refant", sa.String(16)), sa.Column("source_ms", sa.Text), sa.Column("qa", sa.Text),
            sa.Column("created_at", tz, nullable=False),
            sa.UniqueConstraint("set_name", "table_type", name="uq_caltable_set_type")),
        "products": sa.Table(
            "products", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("kind", sa.String(16), nullable=False), sa.Column("name", sa.String(128), nullable=False),
            sa.Column("group_id", sa.String(32)), sa.Column("window", sa.String(64)),
            sa.Column("path", sa.Text, nullable=False), sa.Column("published_path", sa.Text),
            sa.Column("status", sa.String(16), nullable=False), sa.Column("qa_status", sa.String(16)),
            sa.Column("mid_mjd", sa.Float), sa.Column("metrics", sa.Text), sa.Column("created_at", tz, nullable=False),
            sa.UniqueConstraint("kind", "name", name="uq_product_kind_name")),
        "sources": sa.Table(
            "sources", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("product_id", sa.Integer, nullable=False), sa.Column("ra_deg", sa.Float, nullable=False),
            sa.Column("dec_deg", sa.Float, nullable=False), sa.Column("flux_jy", sa.Float, nullable=False),
            sa.Column("flux_err_jy", sa.Float), sa.Column("ref_name", sa.String(64)),
            sa.Column("ref_flux_jy", sa.Float), sa.Column("offset_arcsec", sa.Float)),
    }
    return md, t


def _make_legacy_db(url: str) -> str | None:
    """A database as the old code left it, with a few rows; returns the schema used."""
    schema = "contimg" if url.startswith("postgresql") else None
    md, t = _legacy_v1(schema)
    eng = sa.create_engine(url)
    now = datetime(2026, 1, 15, tzinfo=timezone.utc)
    with eng.begin() as conn:
        if schema:
            conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        md.create_all(conn)
        conn.execute(t["meta"].insert().values(key="version", value="1"))
        conn.execute(t["groups"].insert().values(group_id="g1", start_mjd=100.0, n_subbands=16, files="[]",
                                                 status="imaged", updated_at=now))
        conn.execute(t["caltables"].insert(), [
            dict(set_name="old", table_type=tt, path=f"/c/old.{tt}", apply_order=i, valid_from_mjd=100.0,
                 valid_to_mjd=101.0, status="active", calibrator="0834+555", refant="25", qa="{}", created_at=now)
            for i, tt in enumerate("BG")])
        conn.execute(t["caltables"].insert().values(
            set_name="odd", table_type="B", path="/c/odd.B", apply_order=0, valid_from_mjd=100.0,
            valid_to_mjd=101.0, status="superseded", qa="{}", created_at=now))
        conn.execute(t["products"].insert().values(kind="image", name="g1", path="/s/g1.fits", status="staged",
                                                   metrics='{"rms_jy": 0.001}', created_at=now))
    eng.dispose()
    return schema


def _tables_in(engine: sa.Engine, schema: str | None) -> set[str]:
    return set(sa.inspect(engine).get_table_names(schema=schema))


def _columns(engine: sa.Engine, table: str, schema: str | None) -> set[str]:
    return {c["name"] for c in sa.inspect(engine).get_columns(table, schema=schema)}


def _count_statements(engine: sa.Engine) -> list[str]:
    seen: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda conn, cur, stmt, *a: seen.append(stmt))
    return seen


# -- migrations -----------------------------------------------------------------------------
def test_migrate_empty_database_to_head_beside_airflow(fresh_url):
    # Airflow's own Alembic history lives in the same database: it must stay untouched.
    eng = sa.create_engine(fresh_url)
    with eng.begin() as c:
        c.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        c.execute(sa.text("INSERT INTO alembic_version VALUES ('airflow_head')"))
    r = Registry(fresh_url)
    assert r.schema_revision() is None
    assert r.migrate() == head_revision() == HEAD
    assert r.schema_revision() == HEAD
    assert {"groups", "caltables", "products", "sources", "schema_meta", "contimg_alembic_version"} \
        <= _tables_in(r.engine, r.schema)
    assert NEW_CALTABLE_COLUMNS <= _columns(r.engine, "caltables", r.schema)
    assert "provenance" in _columns(r.engine, "products", r.schema)
    with eng.connect() as c:
        assert c.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == ["airflow_head"]
    if r.schema:  # PostgreSQL: our version table is in contimg, not in public beside Airflow's
        assert r.schema == "contimg"
        assert "contimg_alembic_version" not in _tables_in(r.engine, "public")
    with r.engine.connect() as c:
        assert c.execute(sa.select(r.t["meta"].c.value)).scalar() == "3"
    eng.dispose()
    r.engine.dispose()


def test_legacy_v1_database_is_stamped_then_upgraded_keeping_rows(fresh_url):
    schema = _make_legacy_db(fresh_url)
    r = Registry(fresh_url)
    assert r.schema_revision() is None
    assert r.migrate() == HEAD
    assert r.schema_revision() == HEAD
    assert r.get_group("g1")["status"] == "imaged"
    assert [t.path for t in r.apply_list(100.5)] == ["/c/old.B", "/c/old.G"]
    sets = {s["set_name"]: s for s in r.calsets()}
    assert sets["old"]["kind"] == "bandpass" and sets["old"]["status"] == "active"
    # a status the apply rule does not know is kept as the reason of a failed set, not lost
    assert sets["odd"]["status"] == "failed" and "superseded" in sets["odd"]["reason"]
    [prod] = r.products()
    assert prod["metrics"] == {"rms_jy": 0.001} and prod["provenance"] is None
    uniques = {u["name"] for u in sa.inspect(r.engine).get_unique_constraints("caltables", schema=schema)}
    assert "uq_caltable_set_type" in uniques  # survived SQLite's batch table rebuild
    # the new CHECK constraints hold
    with pytest.raises(sa.exc.IntegrityError), r.engine.begin() as c:
        c.execute(r.t["caltables"].update().values(status="bogus"))
    r.engine.dispose()


def test_partial_legacy_schema_is_refused(fresh_url):
    schema = "contimg" if fresh_url.startswith("postgresql") else None
    md, _ = _legacy_v1(schema)
    eng = sa.create_engine(fresh_url)
    with eng.begin() as c:
        if schema:
            c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        md.tables[f"{schema}.groups" if schema else "groups"].create(c)
    eng.dispose()
    r = Registry(fresh_url)
    with pytest.raises(RuntimeError, match="only some of the pre-Alembic tables"):
        r.migrate()
    assert r.schema_revision() is None
    r.engine.dispose()


def test_migrate_is_idempotent_and_cheap_at_head(fresh_url):
    first = Registry(fresh_url)
    assert first.migrate() == first.migrate() == HEAD
    first.engine.dispose()
    again = Registry(fresh_url)
    seen = _count_statements(again.engine)
    assert again.migrate() == HEAD
    assert seen == []  # this process already brought the URL to head
    registry_mod._AT_HEAD.discard((again.url, again.schema))
    assert again.migrate() == HEAD
    assert seen and not any(s.lstrip().upper().startswith(("CREATE", "ALTER", "INSERT", "UPDATE")) for s in seen)
    assert not any("advisory" in s or "IMMEDIATE" in s for s in seen)  # no lock when at head
    with again.engine.connect() as c:
        version = sa.table("contimg_alembic_version", sa.column("version_num"), schema=again.schema)
        assert c.execute(sa.select(version.c.version_num)).scalars().all() == [HEAD]
    again.engine.dispose()


def _migrate_in_child(url: str, barrier, results) -> None:
    """Child process: wait for the others, then migrate at the same moment."""
    try:
        barrier.wait(timeout=60)
        results.put(("ok", Registry(url).migrate()))
    except Exception as exc:  # reported to the parent, which fails the test
        results.put(("error", repr(exc)))


def test_concurrent_migrate_from_four_processes(fresh_url):
    ctx = mp.get_context("spawn")  # no inherited connections or engine state
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_migrate_in_child, args=(fresh_url, barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes == [("ok", HEAD)] * 4
    assert [p.exitcode for p in procs] == [0] * 4
    r = Registry(fresh_url)
    with r.engine.connect() as c:
        version = sa.table("contimg_alembic_version", sa.column("version_num"), schema=r.schema)
        assert c.execute(sa.select(version.c.version_num)).scalars().all() == [HEAD]
        assert c.execute(sa.select(sa.func.count()).select_from(r.t["meta"])).scalar() == 1
    r.engine.dispose()


def test_downgrade_to_0001_and_back(reg):
    with reg.engine.begin() as c:
        command.downgrade(registry_mod._alembic_config(c, reg.schema), "0001")
    assert reg.schema_revision() == "0001"
    assert not NEW_CALTABLE_COLUMNS & _columns(reg.engine, "caltables", reg.schema)
    assert "provenance" not in _columns(reg.engine, "products", reg.schema)
    registry_mod._AT_HEAD.discard((reg.url, reg.schema))
    assert reg.migrate() == HEAD
    assert NEW_CALTABLE_COLUMNS <= _columns(reg.engine, "caltables", reg.schema)


def test_database_from_newer_code_is_refused(reg):
    with reg.engine.begin() as c:
        version = sa.table("contimg_alembic_version", sa.column("version_num"), schema=reg.schema)
        c.execute(version.update().values(version_num="9999"))
    registry_mod._AT_HEAD.discard((reg.url, reg.schema))
    with pytest.raises(RuntimeError, match="9999"):
        reg.migrate()


# -- groups, products, sources ------------------------------------------------------------
def test_group_recorded_once(reg):
    assert reg.record_group("2026-01-15T12:00:00", 61055.5, ["a", "b"]) is True
    assert reg.record_group("2026-01-15T12:00:00", 61055.5, ["a", "b"]) is False
    reg.update_group("2026-01-15T12:00:00", status="converted", ms_path="/x.ms", mid_mjd=61055.502)
    row = reg.get_group("2026-01-15T12:00:00")
    assert row["status"] == "converted" and row["ms_path"] == "/x.ms" and row["n_subbands"] == 2
    with pytest.raises(ValueError):
        reg.update_group("2026-01-15T12:00:00", status="nonsense")
    with pytest.raises(KeyError):
        reg.update_group("1999-01-01T00:00:00", status="failed")


def test_pooled_connection_closed_by_the_server_is_replaced():
    """A database restart closes the connections a task's registry keeps in its pool; the next
    statement must get a new one, not fail (tests/integration/test_faults_services.py found a
    convert task failing its try with "server closed the connection unexpectedly"). The server
    ends this test's own backends, as a restart would (the shared server itself is not restarted)."""
    with throwaway_postgres_db() as url:
        reg = Registry(url)
        reg.migrate()
        admin = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            assert reg.record_group("2026-01-15T12:00:00", 61055.5, ["a"]) is True  # a connection now pooled
            with admin.connect() as c:
                ended = c.execute(sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                          "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
            assert ended >= 1
            reg.update_group("2026-01-15T12:00:00", status="converted", ms_path="/x.ms", mid_mjd=61055.502)
            assert reg.get_group("2026-01-15T12:00:00")["status"] == "converted"
        finally:
            admin.dispose()
            reg.engine.dispose()


def test_products_and_sources_replace_not_duplicate(reg):
    pid = reg.register_product("image", "g1", "/s/g1.fits", group_id="g1", mid_mjd=10.0, metrics={"rms_jy": 1e-3})
    assert reg.register_product("image", "g1", "/s/g1b.fits", group_id="g1", mid_mjd=10.0) == pid
    assert [p["path"] for p in reg.products(kind="image")] == ["/s/g1b.fits"]
    assert len(reg.images_between(9.0, 11.0)) == 1 and reg.images_between(11.0, 12.0) == []
    rows = [{"ra_deg": 1.0, "dec_deg": 2.0, "flux_jy": 0.5}]
    assert reg.record_sources(pid, rows) == 1
    assert reg.record_sources(pid, rows * 2) == 2
    assert len(reg.sources(pid)) == 2
    reg.mark_published(pid, "/p/g1.fits")
    assert reg.products(status="published")[0]["published_path"] == "/p/g1.fits"


def test_product_provenance_round_trip(reg):
    prov = {"inputs": ["/ms/g1.ms"], "calibration": [{"type": "B", "path": "/c/bp.B", "set": "bp"}],
            "parameters": {"niter": 1000, "robust": 0.0}, "software": {"casa": "6.7.0.31"},
            "ms_dir": Path("/data/ms")}
    pid = reg.register_product("image", "g1", "/s/g1.fits", provenance=prov)
    [p] = reg.products()
    assert p["id"] == pid
    assert p["provenance"] == {**prov, "ms_dir": "/data/ms"}  # Paths are stored as text
    reg.register_product("image", "g2", "/s/g2.fits")
    assert [p["provenance"] for p in reg.products()] == [p["provenance"], None]
    # replacing a product replaces its provenance too
    reg.register_product("image", "g1", "/s/g1.fits", provenance={"inputs": []})
    assert reg.products()[0]["provenance"] == {"inputs": []}


# -- calibration sets ---------------------------------------------------------------------
BP = [("K", "/c/{}.K"), ("B", "/c/{}.B"), ("G", "/c/{}.G")]


def _bandpass(reg: Registry, name: str, start: float, end: float, **kw) -> None:
    reg.register_calset(name, "bandpass", [(t, p.format(name)) for t, p in BP], start, end, **kw)


def _gains(reg: Registry, name: str, start: float, end: float, base: str, **kw) -> None:
    reg.register_calset(name, "gains", [("G", f"/c/{name}.G")], start, end, base_set=base, **kw)


def _paths(reg: Registry, mjd: float) -> list[str]:
    return [t.path for t in reg.apply_list(mjd)]


def test_apply_list_newest_active_bandpass_wins(reg):
    _bandpass(reg, "old", 100.0, 101.0)
    _bandpass(reg, "new", 100.5, 101.5)
    _bandpass(reg, "bad", 100.0, 102.0, status="failed", reason="flagged 90%")
    assert _paths(reg, 100.2) == ["/c/old.K", "/c/old.B", "/c/old.G"]
    assert _paths(reg, 100.7) == ["/c/new.K", "/c/new.B", "/c/new.G"]
    assert _paths(reg, 101.0) == ["/c/new.K", "/c/new.B", "/c/new.G"]  # windows are inclusive
    assert reg.apply_list(101.8) == []  # only the failed set covers it
    assert reg.apply_list(103.0) == []
    assert {t.set_kind for t in reg.apply_list(100.7)} == {"bandpass"}
    assert [t.apply_order for t in reg.apply_list(100.7)] == [0, 1, 2]
    reg.retire_calset("new", "bad antenna 12")
    assert _paths(reg, 100.7) == ["/c/old.K", "/c/old.B", "/c/old.G"]  # retired never appears
    assert reg.apply_list(101.2) == []


def test_apply_list_gains_replace_g_only_when_solved_against_that_bandpass(reg):
    _bandpass(reg, "bp_old", 100.0, 101.0)
    _bandpass(reg, "bp", 100.0, 101.0)
    hour = 1 / 24
    _gains(reg, "g_on_bp", 100.5, 100.5 + hour, "bp")
    _gains(reg, "g_on_old", 100.6, 100.6 + hour, "bp_old")
    assert _paths(reg, 100.52) == ["/c/bp.K", "/c/bp.B", "/c/g_on_bp.G"]
    [g] = [t for t in reg.apply_list(100.52) if t.table_type == "G"]
    assert (g.set_name, g.set_kind) == ("g_on_bp", "gains")
    # outside the gains set's hour the bandpass set's own G applies
    assert _paths(reg, 100.5 + 2 * hour) == ["/c/bp.K", "/c/bp.B", "/c/bp.G"]
    # gains solved against another bandpass are never mixed in
    assert _paths(reg, 100.61) == ["/c/bp.K", "/c/bp.B", "/c/bp.G"]
    # the newest matching gains set wins; failed gains never appear
    _gains(reg, "g_newer", 100.51, 100.51 + hour, "bp")
    _gains(reg, "g_failed", 100.5, 100.5 + hour, "bp", status="failed", reason="low SNR")
    assert _paths(reg, 100.52) == ["/c/bp.K", "/c/bp.B", "/c/g_newer.G"]
    # once the bandpass set they belong to is retired, the old one applies with its own G
    reg.retire_calset("bp", "bandpass ripple")
    assert _paths(reg, 100.52) == ["/c/bp_old.K", "/c/bp_old.B", "/c/bp_old.G"]
    assert _paths(reg, 100.61) == ["/c/bp_old.K", "/c/bp_old.B", "/c/g_on_old.G"]


def test_apply_list_gains_without_bandpass_is_empty(reg):
    _bandpass(reg, "bp", 100.0, 100.2)
    _gains(reg, "g", 100.1, 100.4, "bp")
    assert _paths(reg, 100.15) == ["/c/bp.K", "/c/bp.B", "/c/g.G"]
    assert reg.apply_list(100.3) == []


def test_bandpass_without_g_gets_the_gains_g(reg):
    reg.register_calset("kb", "bandpass", [("K", "/c/kb.K"), ("B", "/c/kb.B")], 100.0, 101.0)
    _gains(reg, "g", 100.4, 100.6, "kb")
    assert _paths(reg, 100.5) == ["/c/kb.K", "/c/kb.B", "/c/g.G"]
    assert _paths(reg, 100.7) == ["/c/kb.K", "/c/kb.B"]


def test_reregistering_replaces_the_set_and_retires_its_gains(reg):
    _bandpass(reg, "bp", 100.0, 101.0)
    _gains(reg, "g", 100.4, 100.6, "bp")
    assert reg.register_calset("bp", "bandpass", [("B", "/c/bp2.B"), ("G", "/c/bp2.G")], 100.0, 101.0) == 2
    assert _paths(reg, 100.5) == ["/c/bp2.B", "/c/bp2.G"]  # the old gains were solved on the old B
    sets = {s["set_name"]: s for s in reg.calsets()}
    assert sets["g"]["status"] == "retired" and "bp was re-registered" in sets["g"]["reason"]
    assert len(reg.caltables()) == 3


def test_register_calset_validates(reg):
    ok = [("B", "/b"), ("G", "/g")]
    cases = [
        (("s", "daily", ok, 1.0, 2.0), {}, "kind"),
        (("s", "bandpass", ok, 1.0, 2.0), {"status": "superseded"}, "status"),
        (("s", "bandpass", ok, 2.0, 1.0), {}, "before it starts"),
        (("s", "bandpass", ok, 1.0, float("nan")), {}, "not finite"),
        (("s", "bandpass", [("X", "/x")], 1.0, 2.0), {}, "table types"),
        (("s", "bandpass", [], 1.0, 2.0), {}, "non-empty"),
        (("s", "bandpass", [("G", "/g"), ("B", "/b")], 1.0, 2.0), {}, "apply order"),
        (("s", "bandpass", [("B", "/b"), ("B", "/b2")], 1.0, 2.0), {}, "each type once"),
        (("s", "bandpass", [("G", "/g")], 1.0, 2.0), {}, "needs a B table"),
        (("s", "gains", [("G", "/g")], 1.0, 2.0), {}, "base_set"),
        (("s", "gains", ok, 1.0, 2.0), {"base_set": "bp"}, "exactly one G"),
        (("", "bandpass", ok, 1.0, 2.0), {}, "1-128 characters"),
    ]
    for args, kw, message in cases:
        with pytest.raises(ValueError, match=message):
            reg.register_calset(*args, **kw)
    assert reg.caltables() == []
    # an unknown base set fails inside the transaction: the set it would replace survives
    _bandpass(reg, "bp", 1.0, 2.0)
    _gains(reg, "g", 1.0, 1.5, "bp")
    with pytest.raises(ValueError, match="'nope' is not a registered bandpass set"):
        _gains(reg, "g", 1.0, 1.5, "nope")
    with pytest.raises(ValueError, match="it is a gains set"):
        _gains(reg, "g2", 1.0, 1.5, "g")
    assert [t.path for t in reg.apply_list(1.2)] == ["/c/bp.K", "/c/bp.B", "/c/g.G"]


def test_calsets_reports_each_set_once(reg):
    _bandpass(reg, "bp", 100.0, 101.0, calibrator="0834+555", refant="25", source_ms="/ms/cal.ms",
              solver_params={"minsnr": 3.0}, casa_version="6.7.0.31", qa={"flagged_fraction": 0.01})
    _gains(reg, "g", 100.4, 100.6, "bp")
    _bandpass(reg, "bad", 100.0, 101.0, status="failed", reason="QA: flagged 80%")
    sets = reg.calsets()
    assert [s["set_name"] for s in sets] == ["bp", "g", "bad"]
    bp = sets[0]
    assert bp == {**bp, "kind": "bandpass", "status": "active", "reason": None, "valid_from_mjd": 100.0,
                  "valid_to_mjd": 101.0, "calibrator": "0834+555", "refant": "25", "source_ms": "/ms/cal.ms",
                  "casa_version": "6.7.0.31", "base_set": None, "qa": {"flagged_fraction": 0.01},
                  "solver_params": {"minsnr": 3.0}, "tables": [("K", "/c/bp.K"), ("B", "/c/bp.B"), ("G", "/c/bp.G")]}
    assert bp["created_at"].tzinfo is not None
    assert sets[1]["base_set"] == "bp" and sets[1]["qa"] == {} and sets[1]["solver_params"] is None
    assert [s["set_name"] for s in reg.calsets(status="failed")] == ["bad"]
    assert [s["set_name"] for s in reg.calsets(kind="gains")] == ["g"]
    assert reg.calsets(status="retired") == []
    assert len(reg.caltables()) == 7  # still one row per table


def test_retire_calset(reg):
    _bandpass(reg, "bp", 100.0, 101.0)
    assert reg.retire_calset("bp", "wrong flux model") == 3
    [s] = reg.calsets()
    assert (s["status"], s["reason"]) == ("retired", "wrong flux model")
    assert reg.apply_list(100.5) == []
    with pytest.raises(KeyError, match="nope"):
        reg.retire_calset("nope", "typo")
    with pytest.raises(ValueError, match="reason"):
        reg.retire_calset("bp", " ")


# -- calibration/registry_io ------------------------------------------------------------
def test_register_solution_and_tables_for(reg):
    # only some of CalSolveResult's fields: the adapter must not need the others
    res = SimpleNamespace(ms="/ms/cal.ms", tables=[("B", "/c/x.B"), ("G", "/c/x.G")], refant="25",
                          calibrator="0834+555", flagged_fraction=0.02, n_solutions=100, params={"minsnr": 3.0},
                          qa={"status": "good"}, casa_version="6.7.0.31")
    with pytest.raises(NoCalibrationError, match="no valid bandpass at MJD 100.50000"):
        tables_for(reg, 100.5)
    assert register_solution(reg, res, 100.0, 101.0, "bp") == 2
    gains = SimpleNamespace(ms="/ms/g.ms", tables=[("G", "/c/g.G")])
    assert register_solution(reg, gains, 100.4, 100.6, "g", kind="gains", base_set="bp", qa={"snr": 20.0}) == 1
    assert tables_for(reg, 100.5) == [("B", "/c/x.B"), ("G", "/c/g.G")]
    assert tables_with_sets_for(reg, 100.5) == [("B", "/c/x.B", "bp"), ("G", "/c/g.G", "g")]
    sets = {s["set_name"]: s for s in reg.calsets()}
    assert sets["bp"]["qa"] == {"flagged_fraction": 0.02, "n_solutions": 100, "status": "good"}
    assert sets["bp"]["solver_params"] == {"minsnr": 3.0} and sets["bp"]["casa_version"] == "6.7.0.31"
    assert sets["bp"]["source_ms"] == "/ms/cal.ms" and sets["g"]["qa"] == {"snr": 20.0}
    with pytest.raises(ValueError, match="before it starts"):
        register_solution(reg, res, 101.0, 100.0, "backwards")


def test_register_solution_records_failed_set(reg):
    res = SimpleNamespace(ms="/ms/cal.ms", tables=[("B", "/c/x.B")], refant="3", calibrator="3C286")
    register_solution(reg, res, 100.0, 101.0, "bp", status="failed", reason="flagged 70%")
    assert [(s["status"], s["reason"]) for s in reg.calsets()] == [("failed", "flagged 70%")]
    with pytest.raises(NoCalibrationError):
        tables_for(reg, 100.5)


def test_mjd_round_trip():
    dt = datetime(2026, 1, 15, 12, 34, 56, tzinfo=timezone.utc)
    assert abs(mjd_from_datetime(dt) - 61055.524259259) < 1e-8
    assert abs((datetime_from_mjd(mjd_from_datetime(dt)) - dt).total_seconds()) < 1e-3
    assert json.loads(json.dumps({"mjd": mjd_from_datetime(dt)}))["mjd"] == mjd_from_datetime(dt)


# -- photometry (revision 0003) ----------------------------------------------------------------
PHOTOMETRY_COLUMNS = {"id", "name", "ra_deg", "dec_deg", "product_id", "mid_mjd", "flux_jy", "flux_err_jy",
                      "created_at"}


def test_photometry_table_migration_up_and_down(reg):
    assert _columns(reg.engine, "photometry", reg.schema) == PHOTOMETRY_COLUMNS
    insp = sa.inspect(reg.engine)
    assert "ix_photometry_name" in {i["name"] for i in insp.get_indexes("photometry", schema=reg.schema)}
    uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("photometry", schema=reg.schema)}
    assert ("product_id", "name") in uniques
    [fk] = insp.get_foreign_keys("photometry", schema=reg.schema)
    assert fk["referred_table"] == "products" and fk["constrained_columns"] == ["product_id"]
    with reg.engine.begin() as c:
        command.downgrade(registry_mod._alembic_config(c, reg.schema), "0002")
    assert reg.schema_revision() == "0002"
    assert "photometry" not in _tables_in(reg.engine, reg.schema)
    with reg.engine.connect() as c:
        assert c.execute(sa.select(reg.t["meta"].c.value)).scalar() == "2"
    registry_mod._AT_HEAD.discard((reg.url, reg.schema))
    assert reg.migrate() == HEAD
    assert _columns(reg.engine, "photometry", reg.schema) == PHOTOMETRY_COLUMNS


def test_record_photometry_replaces_and_light_curve_is_time_ordered(reg):
    late = reg.register_product("mosaic", "w2", "/m/w2.fits", window="w2", mid_mjd=61001.0)
    early = reg.register_product("mosaic", "w1", "/m/w1.fits", window="w1", mid_mjd=61000.0)
    rows = [{"name": "J1", "ra_deg": 10.0, "dec_deg": 55.0, "flux_jy": 0.10, "flux_err_jy": 0.001},
            {"name": "J2", "ra_deg": 11.0, "dec_deg": 55.5, "flux_jy": 0.02, "flux_err_jy": 0.001}]
    assert reg.record_photometry(late, rows) == 2
    obj = SimpleNamespace(name="J1", ra_deg=10.0, dec_deg=55.0, flux_jy=0.12, flux_err_jy=0.002)
    assert reg.record_photometry(early, [obj]) == 1  # objects (e.g. ForcedMeasurement) work too
    lc = reg.light_curve("J1")
    assert [(r["product_id"], r["mid_mjd"], r["flux_jy"]) for r in lc] == [(early, 61000.0, 0.12),
                                                                           (late, 61001.0, 0.10)]
    assert set(lc[0]) == PHOTOMETRY_COLUMNS - {"id"}
    assert lc[0]["created_at"].tzinfo is not None
    # rerunning a product's photometry replaces its rows; an explicit mid_mjd wins over the product's
    assert reg.record_photometry(late, rows[:1], mid_mjd=61001.5) == 1
    assert [r["mid_mjd"] for r in reg.light_curve("J1")] == [61000.0, 61001.5]
    assert reg.light_curve("J2") == []
    assert reg.light_curve("nobody") == []
    assert {k: len(v) for k, v in reg.light_curves().items()} == {"J1": 2}
    assert set(reg.light_curves(["J2"])) == set()


def test_record_photometry_refuses_bad_rows(reg):
    pid = reg.register_product("mosaic", "w1", "/m/w1.fits", mid_mjd=61000.0)
    row = {"name": "J1", "ra_deg": 10.0, "dec_deg": 55.0, "flux_jy": 0.1, "flux_err_jy": 0.001}
    with pytest.raises(KeyError, match="product 999"):
        reg.record_photometry(999, [row])
    with pytest.raises(ValueError, match="given twice"):
        reg.record_photometry(pid, [row, row])
    with pytest.raises(ValueError, match="flux nan"):
        reg.record_photometry(pid, [{**row, "flux_jy": float("nan")}])
    assert reg.light_curve("J1") == []  # nothing half-written
    with pytest.raises(sa.exc.IntegrityError), reg.engine.begin() as c:  # the unique constraint holds
        c.execute(reg.t["photometry"].insert(),
                  [{**row, "product_id": pid, "created_at": datetime.now(timezone.utc)}] * 2)
