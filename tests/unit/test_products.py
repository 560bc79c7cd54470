"""The registry views behind the sky-products pages: status, listings, cone search, light
curves and the confinement of file access to the products and staging roots."""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest
from conftest import throwaway_postgres_db

from dsa110_contimg.config import PipelineConfig
from dsa110_contimg.pipeline import open_registry
from dsa110_contimg.products import (
    FileRoots, ProductAccessError, calibration_timeline, check_cone, cone_search, confined_path, detection_search,
    light_curve, list_products, pipeline_status, preview_path, product_detail,
)
from dsa110_contimg.registry import mjd_from_datetime

T0 = datetime(2026, 1, 15, 8, 0, tzinfo=timezone.utc)
MJD0 = mjd_from_datetime(T0)


@pytest.fixture(params=["sqlite", "postgresql"])
def reg(request, tmp_path):
    """A migrated registry on both backends: the embedded default (SQLite) and production (PostgreSQL)."""
    if request.param == "sqlite":
        yield open_registry(f"sqlite:///{tmp_path / 'reg.db'}")
        return
    with throwaway_postgres_db() as url:
        r = open_registry(url)
        yield r
        r.engine.dispose()


def _photometry(reg, pid: int, mjd: float, sources: list[tuple[str, float, float, float]]) -> None:
    reg.record_photometry(pid, [{"name": n, "ra_deg": ra, "dec_deg": dec, "flux_jy": s, "flux_err_jy": 0.01}
                                for n, ra, dec, s in sources], mid_mjd=mjd)


def test_status_counts_in_flight_groups_failures_and_calibration(reg):
    reg.record_group("g1", MJD0, ["f"])
    reg.update_group("g1", status="imaged")
    reg.record_group("g2", MJD0 + 0.01, ["f"])
    reg.update_group("g2", status="converted")
    reg.record_group("g3", MJD0 + 0.02, ["f"])
    reg.update_group("g3", status="failed", message="convert: truncated file")
    reg.register_calset("bp", "bandpass", [("B", "/c/bp.B"), ("G", "/c/bp.G")], MJD0 - 0.5, MJD0 + 0.5)
    reg.register_product("image", "g1", "/i/g1.pbcor.fits", group_id="g1", qa_status="good", mid_mjd=MJD0)
    now = datetime.now(timezone.utc)
    s = pipeline_status(reg, now=T0)  # calibration is judged at the time asked about
    assert s["groups_total"] == 3 and s["groups_in_flight"] == 1 and s["groups_in_flight_ids"] == ["g2"]
    assert s["calibration"]["valid"] and s["calibration"]["sets"] == ["bp"]
    assert s["calibration"]["valid_until_mjd"] == pytest.approx(MJD0 + 0.5)
    assert s["calibration"]["valid_until"] == "2026-01-15T20:00:00+00:00"
    assert s["newest_image"]["name"] == "g1"
    later = pipeline_status(reg, now=now)
    assert later["failures_24h"] == 1 and later["failures"][0]["message"] == "convert: truncated file"
    assert not later["calibration"]["valid"]  # the set expired in January
    assert 0 <= later["newest_image"]["age_s"] < 60
    assert pipeline_status(reg, now=now + timedelta(days=2))["failures_24h"] == 0


def test_products_are_listed_newest_first_with_paging(reg):
    for k in range(5):
        reg.register_product("image", f"g{k}", f"/i/g{k}.fits", group_id=f"g{k}", qa_status="good" if k else "bad",
                             mid_mjd=MJD0 + k * 0.01, metrics={"rms_jy": 0.001 * (k + 1), "reasons": []})
    page1 = list_products(reg, "image", page=1, per_page=2)
    assert page1["total"] == 5 and [p["name"] for p in page1["items"]] == ["g4", "g3"]
    assert page1["items"][0]["qa"]["rms_jy"] == pytest.approx(0.005)
    assert [p["name"] for p in list_products(reg, "image", page=3, per_page=2)["items"]] == ["g0"]
    assert list_products(reg, "mosaic")["total"] == 0
    for bad in ({"kind": "spectrum"}, {"kind": "image", "page": 0}, {"kind": "image", "per_page": 10_000}):
        with pytest.raises(ValueError):
            list_products(reg, **bad)


def test_mosaic_detail_has_sources_inputs_and_published_preview(reg, tmp_path):
    staged = tmp_path / "staging" / "w.mosaic.png"
    published = tmp_path / "products" / "w" / "w.mosaic.png"
    for p in (staged, published):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\x89PNG")
    img = reg.register_product("image", "g0", "/i/g0.fits", qa_status="good", mid_mjd=MJD0)
    mid = reg.register_product("mosaic", "w", str(tmp_path / "staging" / "w.mosaic.fits"), window="w",
                               qa_status="good", mid_mjd=MJD0, metrics={"preview_png": str(staged)},
                               provenance={"images": [img], "inputs": [{"product_id": img, "files": []}]})
    reg.mark_published(mid, str(published.with_name("w.mosaic.fits")))
    reg.record_sources(mid, [{"ra_deg": 120.0, "dec_deg": 55.0, "flux_jy": 1.1, "ref_name": "A", "ref_flux_jy": 1.0,
                              "offset_arcsec": 2.0}, {"ra_deg": 121.0, "dec_deg": 55.5, "flux_jy": 0.2}])
    d = product_detail(reg, mid)
    assert d["status"] == "published" and d["has_preview"]
    assert [s["matched"] for s in d["sources"]] == [True, False]
    assert d["sources"][0]["flux_ratio"] == pytest.approx(1.1)
    assert [i["id"] for i in d["inputs"]] == [img]
    assert preview_path(reg.products(kind="mosaic")[0]) == published  # the published copy wins
    assert product_detail(reg, 999) is None


def test_calibration_timeline_lists_windows_status_and_plots(reg, tmp_path):
    d = tmp_path / "cal" / "bp"
    d.mkdir(parents=True)
    (d / "bp.B.png").write_bytes(b"\x89PNG")
    reg.register_calset("bp", "bandpass", [("B", str(d / "bp.B")), ("G", str(d / "bp.G"))], MJD0, MJD0 + 1,
                        calibrator="0834+555")
    reg.register_calset("bad", "bandpass", [("B", "/x/bad.B")], MJD0 + 1, MJD0 + 2, status="failed",
                        reason="median SNR 2 < 5")
    sets = calibration_timeline(reg)
    assert [s["set_name"] for s in sets] == ["bad", "bp"]  # newest first
    assert sets[0]["status"] == "failed" and sets[0]["reason"] == "median SNR 2 < 5"
    assert sets[1]["plots"] == ["B"] and sets[1]["valid_from"] == "2026-01-15T08:00:00+00:00"


def test_cone_search_is_exact_nearest_first_and_paged(reg):
    pid = reg.register_product("mosaic", "w", "/m.fits", mid_mjd=MJD0)
    _photometry(reg, pid, MJD0, [("near", 120.0, 55.0, 1.0), ("mid", 120.5, 55.0, 2.0), ("edge", 121.74, 55.0, 3.0),
                                 ("far", 125.0, 55.0, 4.0), ("pole", 10.0, 89.9, 1.0), ("wrap", 359.9, 10.0, 1.0)])
    res = cone_search(reg, 120.0, 55.0, 1.0)
    # 1.74 deg of RA at dec 55 is 0.998 deg on the sky: inside, though a naive RA box of 1 deg misses it
    assert [r["name"] for r in res["items"]] == ["near", "mid", "edge"]
    assert res["items"][1]["separation_arcsec"] == pytest.approx(0.5 * 3600 * 0.5736, rel=2e-3)
    paged = cone_search(reg, 120.0, 55.0, 1.0, page=2, per_page=2)
    assert paged["total"] == 3 and paged["pages"] == 2 and [r["name"] for r in paged["items"]] == ["edge"]
    assert [r["name"] for r in cone_search(reg, 0.05, 10.0, 0.5)["items"]] == ["wrap"]  # across RA 0
    assert [r["name"] for r in cone_search(reg, 200.0, 89.7, 0.5)["items"]] == ["pole"]  # 0.4 deg away, across the pole


def test_detection_search_includes_unmatched_sources(reg):
    pid = reg.register_product("mosaic", "w", "/m.fits", mid_mjd=MJD0, status="published")
    reg.record_sources(pid, [{"ra_deg": 120.0, "dec_deg": 55.0, "flux_jy": 1.1, "ref_name": "A", "ref_flux_jy": 1.0},
                             {"ra_deg": 120.2, "dec_deg": 55.1, "flux_jy": 0.05},  # no reference: a candidate
                             {"ra_deg": 140.0, "dec_deg": 55.0, "flux_jy": 0.5}])
    res = detection_search(reg, 120.0, 55.0, 0.5)
    assert res["total"] == 2 and [d["matched"] for d in res["items"]] == [True, False]
    assert res["items"][1]["product_name"] == "w" and res["items"][1]["time"] == "2026-01-15T08:00:00+00:00"
    assert detection_search(reg, 120.0, 55.0, 0.5, page=2, per_page=1)["items"][0]["flux_jy"] == 0.05
    with pytest.raises(ValueError):
        detection_search(reg, 120.0, 95.0, 0.5)


@pytest.mark.parametrize("ra, dec, radius", [(-1, 0, 1), (360, 0, 1), (0, 91, 1), (0, -90.5, 1), (0, 0, 0),
                                             (0, 0, 11), (float("nan"), 0, 1), (0, 0, float("inf"))])
def test_cone_rejects_bad_inputs(ra, dec, radius):
    with pytest.raises(ValueError):
        check_cone(ra, dec, radius)


def test_light_curve_in_time_order_with_variability(reg):
    for k, flux in enumerate((1.0, 1.2, 0.8)):
        pid = reg.register_product("mosaic", f"w{k}", f"/m{k}.fits", mid_mjd=MJD0 + k / 24)
        _photometry(reg, pid, MJD0 + k / 24, [("S1", 120.0, 55.0, flux)])
    lc = light_curve(reg, "S1")
    assert [p["flux_jy"] for p in lc["points"]] == [1.0, 1.2, 0.8]
    assert lc["points"][1]["time"] == "2026-01-15T09:00:00+00:00"
    assert lc["variability"]["n"] == 3 and lc["variability"]["V"] == pytest.approx(0.2)
    assert light_curve(reg, "nobody") is None


@pytest.fixture
def roots(tmp_path):
    cfg = PipelineConfig(data_dir=tmp_path / "data")
    (cfg.products_dir / "w").mkdir(parents=True)
    (cfg.products_dir / "w" / "w.mosaic.fits").write_bytes(b"SIMPLE")
    cfg.staging_dir.mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("outside")
    os.symlink(tmp_path / "secret.txt", cfg.products_dir / "w" / "escape.fits")
    os.symlink(tmp_path, cfg.products_dir / "up")
    return FileRoots.from_config(cfg), tmp_path


def test_files_inside_the_roots_are_served(roots):
    fr, tmp = roots
    assert fr.resolve("products", "w/w.mosaic.fits").read_bytes() == b"SIMPLE"
    assert fr.check(tmp / "data" / "products" / "w" / "w.mosaic.fits").name == "w.mosaic.fits"


@pytest.mark.parametrize("root, rel", [
    ("products", "../secret.txt"),  # parent traversal
    ("products", "w/../../../secret.txt"),
    ("products", "/etc/passwd"),  # absolute
    ("staging", "../products/../../secret.txt"),
    ("products", "w/escape.fits"),  # symlink to a file outside
    ("products", "up/secret.txt"),  # symlinked directory outside
    ("products", "w"),  # a directory, not a file
    ("products", "w/missing.fits"),
    ("products", "%2e%2e/secret.txt"),  # still encoded: a name that does not exist
    ("products", "w/w.mosaic.fits\x00.png"),
    ("incoming", "x.hdf5"),  # not a root
])
def test_paths_outside_the_roots_are_refused(roots, root, rel):
    fr, _ = roots
    with pytest.raises(ProductAccessError):
        fr.resolve(root, rel)


def test_registry_paths_are_confined_too(roots):
    fr, tmp = roots
    with pytest.raises(ProductAccessError, match="outside"):
        fr.check(tmp / "secret.txt")
    with pytest.raises(ProductAccessError, match="outside"):
        confined_path("/etc/hostname", [tmp / "data" / "products"])
