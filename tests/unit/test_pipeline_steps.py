"""Pipeline steps' own logic: QA decisions, window bookkeeping, ingest claims, summary."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dsa110_contimg.calibration.stage import calibrator_group
from dsa110_contimg.config import PipelineConfig
from dsa110_contimg.errors import ContimgError
from dsa110_contimg.pipeline import (
    new_ready_groups, open_registry, publish_step, qa_image, record_groups, summary, window_state,
)
from dsa110_contimg.registry import mjd_from_datetime

T0 = datetime(2026, 1, 15, 8, 0, tzinfo=timezone.utc)


@pytest.fixture
def env(tmp_path):
    cfg = PipelineConfig(data_dir=tmp_path / "data", qa_max_rms_jy=0.01)
    cfg.incoming_dir.mkdir(parents=True)
    return cfg, open_registry(f"sqlite:///{tmp_path / 'reg.db'}")


def _touch_group(cfg, start, n=16):
    old = (datetime.now(timezone.utc) - timedelta(hours=1)).timestamp()
    for sb in range(n):
        p = cfg.incoming_dir / f"{start:%Y-%m-%dT%H:%M:%S}_sb{sb:02d}.hdf5"
        p.write_bytes(b"x")
        import os
        os.utime(p, (old, old))


def test_qa_image_uses_the_configured_thresholds(env, tmp_path):
    """A 1 Jy source on 2 mJy noise: good with the defaults, bad when the rms limit is 1 mJy."""
    from dataclasses import replace

    from dsa110_contimg.sources.synthetic import ImageSpec, TrueSource, synthetic_image

    cfg, _ = env
    spec = ImageSpec(npix=256, rms_jy=0.002)
    img = synthetic_image(tmp_path / "g.image.fits", [TrueSource("s", 150.0, 55.0, 1.0)], spec)
    pbcor = synthetic_image(tmp_path / "g.pbcor.fits", [TrueSource("s", 150.0, 55.0, 1.0)], spec)
    image = {"image_fits": str(img), "pbcor_fits": str(pbcor), "flagged_fraction": 0.1}
    good = qa_image(cfg, image)
    assert good["qa_status"] == "good" and good["reasons"] == []
    assert abs(good["rms_jy"] / 0.002 - 1) < 0.1 and good["dynamic_range"] > 300
    assert Path(good["thumbnail"]).name == "g.thumb.png" and Path(good["thumbnail"]).exists()
    bad = qa_image(replace(cfg, qa_max_rms_jy=0.001), image)
    assert bad["qa_status"] == "bad" and "rms" in bad["reasons"][0]


def test_ingest_claims_each_group_once(env):
    cfg, reg = env
    _touch_group(cfg, T0)
    _touch_group(cfg, T0 + timedelta(seconds=309), n=11)  # too few subbands: not ready
    found = new_ready_groups(cfg, reg.known_groups())
    assert [g["group_id"] for g in found] == ["2026-01-15T08:00:00"]
    assert record_groups(reg, found) == ["2026-01-15T08:00:00"]
    assert new_ready_groups(cfg, reg.known_groups()) == []


def test_window_waits_for_unfinished_groups(env):
    cfg, reg = env
    _touch_group(cfg, T0)
    end = T0 + timedelta(hours=1)
    state = window_state(cfg, reg, T0, end)
    assert state["groups"] == ["2026-01-15T08:00:00"] and state["unfinished"] == ["2026-01-15T08:00:00"]
    record_groups(reg, new_ready_groups(cfg, set()))
    reg.update_group("2026-01-15T08:00:00", status="imaged", ms_path="/m.ms", mid_mjd=mjd_from_datetime(T0) + 0.001)
    reg.register_product("image", "g", "/g.pbcor.fits", group_id="2026-01-15T08:00:00", qa_status="good",
                         metrics={"pb_fits": "/g.pb.fits", "rms_jy": 0.001})
    state = window_state(cfg, reg, T0, end)
    assert state["unfinished"] == [] and state["images"][0]["pb"] == "/g.pb.fits"
    assert window_state(cfg, reg, end, end + timedelta(hours=1))["groups"] == []


def test_calibrator_group_uses_each_groups_own_span(env):
    cfg, reg = env
    for k in range(3):  # 103 s groups (tiny preset)
        s = T0 + timedelta(seconds=103 * k)
        reg.record_group(f"g{k}", mjd_from_datetime(s), ["f"])
        reg.update_group(f"g{k}", ms_path=f"/g{k}.ms", mid_mjd=mjd_from_datetime(s + timedelta(seconds=51)))
    assert calibrator_group(cfg, reg, T0 + timedelta(seconds=150))["group_id"] == "g1"
    assert calibrator_group(cfg, reg, T0 + timedelta(seconds=1000)) is None


def test_publish_gate_refuses_bad_crossmatch(env, tmp_path):
    cfg, reg = env
    m = tmp_path / "w.mosaic.fits"
    m.write_text("x")
    with pytest.raises(ContimgError, match="QA gate"):
        publish_step(cfg, reg, {"mosaic_fits": str(m), "window": "w", "product_id": 1},
                     {"n_matched": 10, "median_flux_ratio": 0.2, "catalog_csv": str(m)})
    assert not cfg.products_dir.exists()


def test_summary_counts(env):
    cfg, reg = env
    reg.record_group("a", 1.0, ["f"])
    reg.update_group("a", status="imaged")
    reg.record_group("b", 1.1, ["f"])
    reg.update_group("b", status="failed", message="convert: bad file")
    pid = reg.register_product("mosaic", "w", "/w.fits", status="published")
    reg.record_sources(pid, [{"ra_deg": 0, "dec_deg": 0, "flux_jy": 1.1, "ref_name": "s1", "ref_flux_jy": 1.0,
                              "offset_arcsec": 2.0},
                             {"ra_deg": 0, "dec_deg": 0, "flux_jy": 0.9, "ref_name": "s2", "ref_flux_jy": 1.0,
                              "offset_arcsec": 4.0},
                             {"ra_deg": 0, "dec_deg": 0, "flux_jy": 0.5}])
    s = summary(reg)
    assert (s["groups_seen"], s["groups_processed"], s["groups_failed"]) == (2, 1, 1)
    assert s["sources_matched"] == 2 and abs(s["median_flux_ratio"] - 1.0) < 1e-9 and s["median_offset_arcsec"] == 3.0
