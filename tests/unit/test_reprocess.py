"""Versioned reprocessing (backfill) logic: fingerprints, the reuse/remake plan, versions
and superseding only after the new version passed the publish QA gate."""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dsa110_contimg.config import PipelineConfig
from dsa110_contimg.errors import ContimgError
from dsa110_contimg.pipeline import open_registry, window_state
from dsa110_contimg.registry import head_revision, mjd_from_datetime
from dsa110_contimg.reprocess import (
    current_image,
    fingerprint_changes,
    image_fingerprint,
    next_version,
    plan_window,
    publish_version_step,
    record_image_fingerprint,
    version_dir,
    versioned_name,
)

START = datetime(2026, 1, 15, 8, 0, tzinfo=timezone.utc)
END = START + timedelta(hours=1)
GID = "2026-01-15T08:10:00"


@pytest.fixture
def env(tmp_path):
    cfg = PipelineConfig(data_dir=tmp_path / "data")
    reg = open_registry(f"sqlite:///{tmp_path / 'reg.db'}")
    raw = tmp_path / "incoming"
    raw.mkdir()
    files = []
    for sb in range(2):
        f = raw / f"{GID}_sb{sb:02d}.hdf5"
        f.write_bytes(b"x" * (100 + sb))
        files.append(str(f))
    mid = mjd_from_datetime(START + timedelta(minutes=12))
    reg.record_group(GID, mid - 0.001, files)
    reg.update_group(GID, status="imaged", mid_mjd=mid, ms_path=str(tmp_path / "g.ms"))
    reg.register_calset("bp1", "bandpass", [("B", "/cal/bp1.B"), ("G", "/cal/bp1.G")], mid - 0.5, mid + 0.5)
    applied = [{"type": "B", "path": "/cal/bp1.B", "set": "bp1"}, {"type": "G", "path": "/cal/bp1.G", "set": "bp1"}]
    return {"cfg": cfg, "reg": reg, "files": files, "mid": mid, "applied": applied, "tmp": tmp_path}


def _image(reg, version=1, good=True, fingerprint=None):
    name = versioned_name(GID.replace(":", ""), version)
    return reg.register_product("image", name, f"/img/{name}.pbcor.fits", group_id=GID,
                                qa_status="good" if good else "bad", mid_mjd=None,
                                metrics={"pb_fits": f"/img/{name}.pb.fits", "rms_jy": 1e-3},
                                version=version, fingerprint=fingerprint)


def test_migration_adds_versions_with_default_1(env):
    reg = env["reg"]
    assert reg.schema_revision() == head_revision() == "0004_versions"
    pid = reg.register_product("mosaic", "w", "/m.fits", window="w")
    (row,) = reg.products(kind="mosaic")
    assert row["id"] == pid and row["version"] == 1 and row["superseded_by"] is None and row["fingerprint"] is None


def test_fingerprint_equal_until_an_input_changes(env):
    cfg, reg = env["cfg"], env["reg"]
    at_imaging = image_fingerprint(cfg, reg, GID, calibration=env["applied"])
    # What a backfill computes now (tables valid at the group's time) equals what was applied.
    now = image_fingerprint(cfg, reg, GID)
    assert fingerprint_changes(at_imaging, now) == []
    # The stored (JSON) form compares equal too.
    pid = _image(reg)
    record_image_fingerprint(cfg, reg, GID, pid, env["applied"])
    assert fingerprint_changes(current_image(reg, GID)["fingerprint"], now) == []

    # A raw file rewritten (size and mtime differ).
    Path(env["files"][1]).write_bytes(b"y" * 500)
    changed = fingerprint_changes(at_imaging, image_fingerprint(cfg, reg, GID))
    assert len(changed) == 1 and changed[0].startswith("raw files changed") and "sb01" in changed[0]
    # A file only touched: its mtime is part of the fingerprint.
    st = os.stat(env["files"][0])
    os.utime(env["files"][0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert "sb00" in fingerprint_changes(at_imaging, image_fingerprint(cfg, reg, GID))[0]


def test_fingerprint_sees_new_calibration_and_imaging_params(env):
    cfg, reg = env["cfg"], env["reg"]
    before = image_fingerprint(cfg, reg, GID, calibration=env["applied"])
    reg.register_calset("bp2", "bandpass", [("B", "/cal/bp2.B"), ("G", "/cal/bp2.G")], env["mid"] - 0.5,
                        env["mid"] + 0.5)  # newer set covering the group: it is what applies now
    changes = fingerprint_changes(before, image_fingerprint(cfg, reg, GID))
    assert changes == ["calibration changed: ['bp1'] -> ['bp2']"]
    reg.retire_calset("bp2", "bad antenna")
    assert fingerprint_changes(before, image_fingerprint(cfg, reg, GID)) == []
    other = cfg.with_overrides({"imaging_niter": cfg.imaging_niter + 1})
    changes = fingerprint_changes(before, image_fingerprint(other, reg, GID))
    assert len(changes) == 1 and changes[0].startswith("imaging parameters changed: niter")


def test_missing_raw_file_is_named(env):
    os.unlink(env["files"][0])
    with pytest.raises(ContimgError, match="raw subband file is missing"):
        image_fingerprint(env["cfg"], env["reg"], GID)


def test_plan_reuses_unchanged_and_remakes_changed_or_all(env):
    cfg, reg = env["cfg"], env["reg"]
    fp = image_fingerprint(cfg, reg, GID, calibration=env["applied"])
    pid = _image(reg, fingerprint=fp)
    plan = plan_window(cfg, reg, START, END, "changed")
    assert plan["reuse"] == [{"group_id": GID, "image_id": pid, "version": 1}] and plan["reprocess"] == []
    assert plan["mosaic_version"] == 1 and plan["window"] == "2026-01-15T0800"
    plan = plan_window(cfg, reg, START, END, "all")
    assert plan["reuse"] == [] and plan["reprocess"] == [{"group_id": GID, "version": 2, "reasons": ["reprocess=all"]}]
    # No fingerprint recorded: nothing says how it was made, so it is remade.
    reg.set_product_fields(pid, fingerprint={})
    (redo,) = plan_window(cfg, reg, START, END, "changed")["reprocess"]
    assert redo["reasons"] == ["no fingerprint recorded for the current image"]
    # A window outside the group's time plans nothing.
    later = plan_window(cfg, reg, END, END + timedelta(hours=1))
    assert later["reuse"] == later["reprocess"] == []
    with pytest.raises(ValueError):
        plan_window(cfg, reg, START, END, "some")


def test_current_image_is_newest_unsuperseded_and_window_state_skips_superseded(env):
    cfg, reg = env["cfg"], env["reg"]
    v1 = _image(reg, 1)
    v2 = _image(reg, 2)
    assert current_image(reg, GID)["id"] == v2 and next_version(reg, "image", group_id=GID) == 3
    reg.supersede({v1: v2})
    assert [i["id"] for i in window_state(cfg, reg, START, END)["images"]] == [v2]
    old = next(p for p in reg.products(kind="image") if p["id"] == v1)
    assert old["status"] == "superseded" and old["superseded_by"] == v2
    with pytest.raises(ValueError):
        reg.supersede({v2: v2})


def test_version_names_and_dirs(tmp_path):
    assert versioned_name("2026-01-15T0800", 1) == "2026-01-15T0800"
    assert versioned_name("2026-01-15T0800", 3) == "2026-01-15T0800.v3"
    assert version_dir(tmp_path, "w", 1) == tmp_path / "w"
    assert version_dir(tmp_path, "w", 2) == tmp_path / "w" / "v2"


def _staged_version(env, version, ratio):
    """A window's mosaic and catalogue of ``version`` as the mosaic and crossmatch tasks leave them."""
    reg, tmp = env["reg"], env["tmp"]
    name = versioned_name("2026-01-15T0800", version)
    stage = tmp / "staging"
    stage.mkdir(exist_ok=True)
    fits, csv = stage / f"{name}.mosaic.fits", stage / f"{name}.sources.csv"
    fits.write_text(f"mosaic v{version}")
    csv.write_text(f"catalogue v{version}")
    img = _image(reg, version)
    mid = reg.register_product("mosaic", name, str(fits), window="2026-01-15T0800", qa_status="good",
                               version=version, provenance={"images": [img]})
    cid = reg.register_product("catalog", name, str(csv), window="2026-01-15T0800", qa_status="good",
                               version=version)
    mosaic = {"product_id": mid, "window": "2026-01-15T0800", "version": version, "mosaic_fits": str(fits)}
    match = {"catalog_product_id": cid, "catalog_csv": str(csv), "n_matched": 5, "median_flux_ratio": ratio}
    return mosaic, match


def test_publish_supersedes_only_after_the_new_version_passes_qa(env):
    cfg, reg = env["cfg"], env["reg"]
    m1, c1 = _staged_version(env, 1, 1.0)
    first = publish_version_step(cfg, reg, m1, c1)
    v1_files = [Path(p) for p in first["published"]]
    assert all(p.parent == cfg.products_dir / "2026-01-15T0800" for p in v1_files)

    # Version 2 fails the QA gate: nothing is published, version 1 stays current.
    m2, c2 = _staged_version(env, 2, 5.0)
    with pytest.raises(ContimgError, match="QA gate refused publication of version 2.*previous version stays"):
        publish_version_step(cfg, reg, m2, c2)
    rows = {p["id"]: p for p in reg.products()}
    assert rows[m1["product_id"]]["status"] == "published" and rows[m2["product_id"]]["status"] == "staged"
    assert not (cfg.products_dir / "2026-01-15T0800" / "v2").exists()

    # Version 3 passes: published beside version 1, which is then superseded, its files kept.
    m3, c3 = _staged_version(env, 3, 1.02)
    res = publish_version_step(cfg, reg, m3, c3)
    assert all(Path(p).parent == cfg.products_dir / "2026-01-15T0800" / "v3" for p in res["published"])
    rows = {p["id"]: p for p in reg.products()}
    assert rows[m3["product_id"]]["status"] == "published" and rows[c3["catalog_product_id"]]["status"] == "published"
    for old, new in ((m1["product_id"], m3["product_id"]), (c1["catalog_product_id"], c3["catalog_product_id"]),
                     (m2["product_id"], m3["product_id"])):
        assert rows[old]["status"] == "superseded" and rows[old]["superseded_by"] == new
    assert all(p.read_text().endswith("v1") for p in v1_files)  # never deleted, never overwritten
    # The image versions the new mosaic replaced are superseded too (v1, v2 by v3's image).
    images = sorted((p for p in rows.values() if p["kind"] == "image"), key=lambda p: p["version"])
    assert [p["status"] for p in images] == ["superseded", "superseded", "staged"]
    assert {p["superseded_by"] for p in images[:2]} == {images[2]["id"]}
    assert json.loads(json.dumps(res))  # XCom-serialisable
