"""Registry: transactions, validity windows, idempotent registration (SQLite and PostgreSQL)."""
from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from dsa110_contimg.registry import Registry, datetime_from_mjd, mjd_from_datetime


@pytest.fixture(params=["sqlite", "postgresql"])
def reg(request, tmp_path):
    if request.param == "sqlite":
        r = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
        r.migrate()
        yield r
        return
    admin = sa.create_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    name = f"contimg_test_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:  # pragma: no cover - service down
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {exc}")
    r = Registry(f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}")
    r.migrate()
    yield r
    r.engine.dispose()
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))


def test_migrate_is_idempotent(reg):
    assert reg.migrate() == reg.migrate() == 1
    if reg.schema:
        with reg.engine.connect() as c:
            tables = {r[0] for r in c.execute(sa.text(
                "select table_name from information_schema.tables where table_schema='contimg'"))}
        assert {"groups", "caltables", "products", "sources"} <= tables


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


def test_apply_list_picks_newest_set_covering_time(reg):
    reg.register_caltables("old", [("B", "/c/old.B"), ("G", "/c/old.G")], 100.0, 101.0)
    reg.register_caltables("new", [("B", "/c/new.B"), ("G", "/c/new.G")], 100.5, 101.5)
    reg.register_caltables("bad", [("B", "/c/bad.B")], 100.0, 102.0, status="failed")
    assert [t.path for t in reg.apply_list(100.2)] == ["/c/old.B", "/c/old.G"]
    assert [t.path for t in reg.apply_list(100.7)] == ["/c/new.B", "/c/new.G"]
    assert reg.apply_list(103.0) == []
    # re-registering a set replaces it rather than duplicating rows
    reg.register_caltables("new", [("B", "/c/new2.B")], 100.5, 101.5)
    assert [t.path for t in reg.apply_list(100.7)] == ["/c/new2.B"]
    assert len(reg.caltables()) == 4


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


def test_mjd_round_trip():
    from datetime import datetime, timezone

    dt = datetime(2026, 1, 15, 12, 34, 56, tzinfo=timezone.utc)
    assert abs(mjd_from_datetime(dt) - 61055.524259259) < 1e-8
    assert abs((datetime_from_mjd(mjd_from_datetime(dt)) - dt).total_seconds()) < 1e-3
