"""A tiny simulated session through the real Airflow scheduler, end to end.

Simulates 4 groups around the 0834+555 transit, starts the embedded
deployment (SQLite, LocalExecutor, scheduler, dag-processor, triggerer,
api-server), lets the ingest sensor find the groups, and asserts on the
products against the simulator's truth."""
from __future__ import annotations

import json
import math
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from dsa110_contimg.calibrators import get_calibrator
from dsa110_contimg.config import PipelineConfig
from dsa110_contimg.instrument import N_SUBBANDS, preset
from dsa110_contimg.localstack import LocalAirflow, free_port
from dsa110_contimg.pipeline import open_registry
from dsa110_contimg.simulate import simulate_session

from airflow_session import DEC, PRESET, simulate_transit_session, wait_for_session

pytestmark = [pytest.mark.airflow, pytest.mark.casa, pytest.mark.slow]

N_GROUPS = 4
TIMEOUT_S = 1500


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = root / "data"
    session = simulate_transit_session(data, N_GROUPS)  # the transit falls in group 1
    sim, start, transit = session.sim, session.start, session.transit
    stack = LocalAirflow(home=root / "airflow", data_dir=data, port=free_port(8181), contimg_env={
        "CONTIMG_SCHEDULE_START": start.isoformat(),
        "CONTIMG_SCHEDULE_END": (start + timedelta(minutes=59)).isoformat(),
        "CONTIMG_CATCHUP": "true",
        "CONTIMG_POINTING_DEC_DEG": str(DEC),
        "CONTIMG_GROUP_TIMEOUT_S": "30",
    })
    stack.prepare()
    stack.start()
    t0 = time.monotonic()
    try:
        stack.unpause()
        s = wait_for_session(stack, N_GROUPS, TIMEOUT_S)
        runs = {d: stack.list_runs(d) for d in ("ingest", "group", "bandpass", "mosaic")}
        token = stack.api_token("admin", "admin")  # the README's login
        api_dags = stack.api_get("/api/v2/dags", token)
        group_tasks = {r["run_id"]: {t["task_id"]: t["state"] for t in stack.api_get(
            f"/api/v2/dags/group/dagRuns/{r['run_id']}/taskInstances", token)["task_instances"]}
            for r in runs["group"]}
        gains_xcom = {r["run_id"]: _as_json(stack.api_get(
            f"/api/v2/dags/group/dagRuns/{r['run_id']}/taskInstances/solve_gains/xcomEntries/return_value",
            token)["value"]) for r in runs["group"]}
        # Two days and three hours later: no bandpass covers it, and the 8 Jy calibrator is out of its field
        # (two-day-old gains would leave that source's sidelobes above the image QA limits).
        late = _late_group_waits_fails_then_clears(stack, token, root, start + timedelta(days=2, hours=3))
        assets = stack.api_get("/api/v2/assets?limit=100", token)  # lineage: what the Assets page shows
        asset_events = stack.api_get("/api/v2/assets/events?limit=100", token)
    finally:
        stack.stop()
    reg = open_registry(f"sqlite:///{stack.registry_db}")
    return {"sim": sim, "stack": stack, "summary": s, "reg": reg, "runs": runs, "api_dags": api_dags, "data": data,
            "transit": transit, "late": late, "group_tasks": group_tasks,
            "gains_xcom": gains_xcom, "assets": assets, "asset_events": asset_events,
            "wall_s": time.monotonic() - t0}


def _as_json(value):
    """An XCom value as the API returns it: already decoded, or a JSON string."""
    return json.loads(value) if isinstance(value, str) else value


def _wait_run(stack: LocalAirflow, token: str, run_id: str, states: set[str], timeout_s: float = 600) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        stack.check_alive()
        run = stack.api_get(f"/api/v2/dags/group/dagRuns/{run_id}", token)
        if run["state"] in states:
            return run
        time.sleep(5)
    raise AssertionError(f"group run {run_id} did not reach {states} in {timeout_s} s")


def _late_group_waits_fails_then_clears(stack: LocalAirflow, token: str, root: Path, when) -> dict:
    """A group two days after the only bandpass: it waits, gives up with the reason; once a
    bandpass covers it, clearing the sensor task reprocesses it through the real scheduler."""
    from dsa110_contimg.pipeline import new_ready_groups, record_groups

    # This group is started by hand, as an operator would: written aside, recorded with its paths in
    # incoming (so the continuous ingest sees a known group and starts no run of its own), then moved
    # into incoming, the only directory convert reads from.
    late_dir = root / "late_incoming"
    simulate_session(late_dir, PRESET, when, 1, DEC, seed=5, catalog_path=root / "late_catalog.tsv")
    reg = open_registry(f"sqlite:///{stack.registry_db}")
    cfg = PipelineConfig(data_dir=root, incoming_dir=late_dir, group_timeout_s=0)
    settled = datetime.now(timezone.utc) + timedelta(minutes=1)  # the files were written a moment ago
    (group,) = new_ready_groups(cfg, set(), now=settled)
    incoming = stack.data_dir.resolve() / "incoming"  # spelt as the deployment spells it
    (gid,) = record_groups(reg, [{**group, "files": [str(incoming / Path(f).name) for f in group["files"]]}])
    for f in group["files"]:
        shutil.move(f, incoming / Path(f).name)
    run_id = f"group__late_{gid.replace(':', '')}"
    stack.api_request("POST", "/api/v2/dags/group/dagRuns", token, {
        "dag_run_id": run_id, "logical_date": None,
        "conf": {"group_id": gid, "calibration_wait_hours": 0.01}})  # 36 s instead of the default 6 h
    failed = _wait_run(stack, token, run_id, {"failed", "success"})
    tis = {t["task_id"]: t["state"] for t in stack.api_get(
        f"/api/v2/dags/group/dagRuns/{run_id}/taskInstances", token)["task_instances"]}
    message = reg.get_group(gid)["message"]
    # A bandpass now covers the late group: the daily set's tables, registered as a new set.
    daily = next(c for c in reg.calsets(status="active", kind="bandpass"))
    row = reg.get_group(gid)
    reg.register_calset("manual_late", "bandpass", daily["tables"], row["mid_mjd"] - 0.5, row["mid_mjd"] + 0.5,
                        calibrator=daily["calibrator"], refant=daily["refant"], source_ms=daily["source_ms"])
    stack.api_request("POST", "/api/v2/dags/group/clearTaskInstances", token, {
        "dry_run": False, "dag_run_id": run_id, "task_ids": ["wait_for_calibration"], "include_downstream": True,
        "only_failed": False, "reset_dag_runs": True})
    final = _wait_run(stack, token, run_id, {"failed", "success"})
    return {"group_id": gid, "first_state": failed["state"], "first_tasks": tis, "first_message": message,
            "final_state": final["state"]}


def test_every_group_processed_through_airflow(run):
    s = run["summary"]
    assert s["groups_seen"] == N_GROUPS, s
    assert s["groups_processed"] == N_GROUPS, s
    group_runs = run["runs"]["group"]
    assert len(group_runs) == N_GROUPS  # one run per group, never two
    assert {r["state"] for r in group_runs} == {"success"}
    assert all(r["run_id"].startswith("group__") for r in group_runs)
    assert [r["state"] for r in run["runs"]["bandpass"]] == ["success"]


def test_ui_login_shows_the_dags_unpaused(run):
    dags = {d["dag_id"]: d for d in run["api_dags"]["dags"]}
    pipeline = {"ingest", "group", "bandpass", "mosaic"}
    assert set(dags) == pipeline | {"housekeeping"}
    assert not any(dags[d]["is_paused"] for d in pipeline)
    assert dags["housekeeping"]["is_paused"]  # deletes files: an operator turns it on


def test_measurement_set_has_expected_layout(run):
    from dsa110_contimg.casa_env import casatools

    p = preset(PRESET)
    n_ant = len(p.pads())
    row = run["reg"].get_group(sorted(run["reg"].known_groups())[1])
    tb = casatools().table()
    tb.open(row["ms_path"])
    try:
        ant1, ant2 = tb.getcol("ANTENNA1"), tb.getcol("ANTENNA2")
        n_rows = tb.nrows()
    finally:
        tb.close()
    assert len(set(ant1) | set(ant2)) == n_ant
    assert n_rows == p.integrations_per_file * n_ant * (n_ant + 1) // 2
    tb.open(row["ms_path"] + "/SPECTRAL_WINDOW")
    try:
        freqs = tb.getcol("CHAN_FREQ")[:, 0]
    finally:
        tb.close()
    assert freqs.size == N_SUBBANDS * p.channels_per_subband
    assert np.all(np.diff(freqs) > 0)
    assert 1.311e9 < freqs.min() < freqs.max() < 1.499e9


def test_calibration_registered_and_applied(run):
    """The daily bandpass set (24 h) and the hourly gains solved by the transit group's run (1 h)."""
    reg = run["reg"]
    transit_mjd = run["transit"].timestamp() / 86400 + 40587
    daily = [c for c in reg.calsets(kind="bandpass") if c["set_name"] != "manual_late"]
    hourly = reg.calsets(kind="gains")
    assert len(daily) == 1 and len(hourly) == 1, (daily, hourly)
    (d,), (h,) = daily, hourly
    assert d["status"] == "active" and [t for t, _ in d["tables"]] == ["B", "G"]
    assert d["valid_from_mjd"] == pytest.approx(transit_mjd - 0.5, abs=1e-6)
    assert d["valid_to_mjd"] == pytest.approx(transit_mjd + 0.5, abs=1e-6)
    assert d["qa"]["status"] == "good" and d["casa_version"].startswith("6.7")
    assert d["refant"] and d["source_ms"] and d["solver_params"]["flagging"] == "auto"
    assert h["status"] == "active" and h["base_set"] == d["set_name"] and [t for t, _ in h["tables"]] == ["G"]
    assert h["valid_to_mjd"] - h["valid_from_mjd"] == pytest.approx(1 / 24, abs=1e-6)
    assert all(Path(p).exists() for c in (d, h) for _, p in c["tables"])
    plots = [Path(p + ".png") for _, p in d["tables"]]
    assert all(p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    # Each image records what was applied: the daily B, and the G in force when its group ran. The
    # transit group solves the hourly G before applying; its neighbours may have run before it existed.
    transit_group = d["set_name"].split("_", 1)[1]
    for img in reg.products(kind="image"):
        cal = {c["type"]: c["set"] for c in img["provenance"]["calibration"]}
        if img["group_id"] == run["late"]["group_id"]:
            assert cal == {"B": "manual_late", "G": "manual_late"}
        elif img["group_id"].replace(":", "") == transit_group:
            assert cal == {"B": d["set_name"], "G": h["set_name"]}, (img["group_id"], cal)
        else:
            assert cal["B"] == d["set_name"] and cal["G"] in (d["set_name"], h["set_name"]), (img["group_id"], cal)


def test_hourly_gains_solved_only_by_the_transit_group(run):
    states = run["group_tasks"]
    assert all(set(s.values()) == {"success"} for s in states.values()), states
    solved = [run_id for run_id, x in run["gains_xcom"].items() if not x["skipped"]]
    assert len(solved) == 1, run["gains_xcom"]  # only the group containing the 0834+555 transit
    assert all("no calibrator of the strip transits" in x["reason"] for x in run["gains_xcom"].values()
               if x["skipped"])


def test_group_without_calibration_waits_fails_with_reason_then_clears(run):
    late = run["late"]
    assert late["first_state"] == "failed"
    assert late["first_tasks"]["wait_for_calibration"] == "failed"
    assert late["first_tasks"]["image"] in ("upstream_failed", None)
    assert "no valid bandpass at MJD" in late["first_message"] and "gave up after waiting" in late["first_message"]
    assert late["final_state"] == "success"
    group = run["reg"].get_group(late["group_id"])
    assert group["status"] in ("imaged", "failed") and "no valid bandpass" not in (group["message"] or "")


def test_brightest_source_flux_after_pbcor(run):
    """The calibrator (the brightest simulated source) in its group's image.

    20% is the issue's tolerance: it covers the beam model at the source
    position, the tiny preset's clean depth and pixelisation of the peak."""
    from astropy.io import fits
    from astropy.wcs import WCS

    cal = get_calibrator("0834+555")
    reg = run["reg"]
    gid = sorted(reg.known_groups())[1]
    image = next(p for p in reg.products(kind="image") if p["group_id"] == gid)
    with fits.open(image["path"]) as hdul:
        data = np.squeeze(hdul[0].data)
        wcs = WCS(hdul[0].header).celestial
        freq = float(image["metrics"]["freq_hz"])
    x, y = (float(v) for v in wcs.world_to_pixel_values(cal.ra_deg, cal.dec_deg))
    cell = abs(wcs.wcs.cdelt[0]) * 3600
    r = int(math.ceil(60.0 / cell))
    box = data[int(round(y)) - r:int(round(y)) + r + 1, int(round(x)) - r:int(round(x)) + r + 1]
    peak = np.nanmax(box)
    truth = cal.flux_at(freq)
    assert abs(peak / truth - 1) < 0.20, (peak, truth)


def test_mosaic_published_with_crossmatched_bright_sources(run):
    from astropy.io import fits
    from astropy.wcs import WCS

    from dsa110_contimg.catalog import read_catalog

    reg = run["reg"]
    mosaics = reg.products(kind="mosaic", status="published")
    assert len(mosaics) == 1
    published = Path(mosaics[0]["published_path"])
    assert published.exists() and published.parent.parent == run["data"] / "products"
    catalogs = reg.products(kind="catalog", status="published")
    assert len(catalogs) == 1 and Path(catalogs[0]["published_path"]).exists()

    with fits.open(published) as hdul:
        img = np.squeeze(hdul[0].data)
        wcs = WCS(hdul[0].header).celestial
    rms = float(mosaics[0]["metrics"]["rms_jy"])
    matched = {s["ref_name"] for s in reg.sources(mosaics[0]["id"]) if s["ref_name"]}
    bright = []
    for src in read_catalog(run["data"] / "reference_catalog.tsv"):
        x, y = wcs.world_to_pixel_values(src.ra_deg, src.dec_deg)
        xi, yi = int(round(float(x))), int(round(float(y)))
        if 10 <= xi < img.shape[1] - 10 and 10 <= yi < img.shape[0] - 10 and np.isfinite(img[yi, xi]):
            local_rms = rms  # the mosaic's best-weight noise; noise rises towards the edges
            if src.flux_jy > 30 * local_rms and np.isfinite(img[yi - 10:yi + 11, xi - 10:xi + 11]).all():
                bright.append(src.name)
    assert bright, "the simulated sky should put bright sources inside the mosaic"
    recovered = [n for n in bright if n in matched]
    assert len(recovered) / len(bright) >= 0.9, (sorted(set(bright) - matched), len(bright))


# -- lineage: asset events and registry provenance ----------------------------------------------
def _events(run, name: str) -> list[dict]:
    return [e for e in run["asset_events"]["asset_events"] if e["name"] == name]


def test_products_are_asset_events_with_group_paths_qa_and_lineage(run):
    """The Assets page lists one asset per product kind; each product made is one event whose
    extra says which group or window, where the files are, its QA, and what it was made from."""
    reg = run["reg"]
    assets = {a["name"]: a for a in run["assets"]["assets"]}
    kinds = {"contimg_image", "contimg_mosaic", "contimg_caltable_bandpass", "contimg_caltable_gains"}
    assert kinds <= set(assets) and {assets[k]["group"] for k in kinds} == {"dsa110_contimg"}
    assert {(t["dag_id"], t["task_id"]) for k in kinds for t in assets[k]["producing_tasks"]} == {
        ("group", "register"), ("group", "solve_gains"), ("bandpass", "solve"), ("mosaic", "mosaic")}
    assert not any(assets[k]["scheduled_dags"] for k in kinds)  # lineage only: no DAG runs on them
    assert run["asset_events"]["total_entries"] <= 100  # all of them were read

    images = {p["id"]: p for p in reg.products(kind="image")}
    events = _events(run, "contimg_image")
    assert {e["extra"]["product_id"] for e in events} == set(images)  # every image, from its group's run
    for e in events:
        x, img = e["extra"], images[e["extra"]["product_id"]]
        assert e["source_dag_id"] == "group" and e["source_task_id"] == "register"
        assert x["group_id"] == img["group_id"] and x["path"] == img["path"] and Path(x["path"]).exists()
        assert x["qa_status"] == img["qa_status"] and x["qa"]["rms_jy"] > 0 and x["qa"]["dynamic_range"] > 0
        assert x["calibration_sets"] == img["provenance"]["calibration_sets"] and "B" in {
            c["type"] for c in x["calibration"]}

    daily = [c for c in reg.calsets(kind="bandpass") if c["set_name"] != "manual_late"]
    (bp,) = _events(run, "contimg_caltable_bandpass")
    assert bp["source_dag_id"] == "bandpass" and bp["extra"]["set_name"] == daily[0]["set_name"]
    assert bp["extra"]["group_id"] and bp["extra"]["qa_status"] == "good"
    assert bp["extra"]["paths"] == [p for _, p in daily[0]["tables"]] and "flagged_fraction" in bp["extra"]["qa"]
    # only the transit group solved gains: the groups that skipped emitted no (empty) event
    (gains,) = _events(run, "contimg_caltable_gains")
    (hourly,) = reg.calsets(kind="gains")
    assert gains["extra"]["set_name"] == hourly["set_name"] and gains["extra"]["base_set"] == daily[0]["set_name"]
    assert gains["extra"]["group_id"].replace(":", "") in hourly["set_name"]

    mosaics = {p["id"]: p for p in reg.products(kind="mosaic")}
    mevents = _events(run, "contimg_mosaic")
    assert {e["extra"]["product_id"] for e in mevents} == set(mosaics)
    for e in mevents:
        x, m = e["extra"], mosaics[e["extra"]["product_id"]]
        assert e["source_dag_id"] == "mosaic" and x["window"] == m["window"] and x["path"] == m["path"]
        assert x["images"] == m["provenance"]["images"] and set(x["images"]) <= set(images)
        assert x["qa"]["rms_jy"] > 0 and x["qa"]["n_inputs"] == len(x["images"])


def test_image_provenance_holds_raw_checksums_params_and_versions(run):
    """Each image records the SHA-256 of its 16 raw subband files (equal to hashlib's), its
    parameters and software versions; a mosaic records the checksums of the image files it read,
    which are the checksums its images recorded of themselves."""
    import hashlib

    reg = run["reg"]
    images = reg.products(kind="image")
    assert images
    for img in images:
        prov = img["provenance"]
        group = reg.get_group(img["group_id"])
        raw = {f["path"]: f["sha256"] for f in prov["inputs"]["raw_files"]}
        assert sorted(raw) == sorted(json.loads(group["files"])) and len(raw) == N_SUBBANDS
        for path, digest in raw.items():
            assert digest == hashlib.sha256(Path(path).read_bytes()).hexdigest(), path
        assert prov["inputs"]["ms"] == group["ms_path"]
        assert prov["params"]["backend_used"] == img["metrics"]["backend"] and prov["params"]["niter"] > 0
        assert {"dsa110_contimg", "casatools", "pyuvdata", "apache-airflow"} <= set(prov["software"])
    own = {img["id"]: img["provenance"]["outputs"]["pbcor_fits"]["sha256"] for img in images}
    (mosaic,) = reg.products(kind="mosaic", status="published")
    for entry in mosaic["provenance"]["inputs"]:
        pbcor = next(f for f in entry["files"] if f["path"].endswith(".pbcor.fits"))
        assert pbcor["sha256"] == own[entry["product_id"]]
