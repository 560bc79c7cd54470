"""Reprocessing a window with `airflow backfill create`, through the real scheduler.

Simulates 2 tiny groups (the 0834+555 transit in the second), lets the
embedded deployment process them and publish the window's mosaic (version 1),
then backfills the window twice with the Airflow CLI, as the README says:
1. `reprocess` "changed" (the default): nothing changed, so both groups'
   images are reused (no new group run, no new image) and the window is
   mosaicked, cross-matched and published again as version 2, in
   products/<window>/v2/; version 1 is then superseded, its files kept;
2. `--dag-run-conf '{"reprocess": "all"}'`: both groups are remade from their
   raw files (new image versions in images/<group>/v2/) and the window is
   published as version 3, superseding version 2 and the version-1 images."""
from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest

from dsa110_contimg.localstack import LocalAirflow, free_port
from dsa110_contimg.pipeline import open_registry, summary

from airflow_session import DEC, simulate_transit_session
from conftest import throwaway_postgres_db

pytestmark = [pytest.mark.airflow, pytest.mark.casa, pytest.mark.slow]

N_GROUPS = 2
TIMEOUT_S = 1200


def _products(reg, kind):
    return sorted(reg.products(kind=kind), key=lambda p: (p["version"], p["id"]))


def _wait_for_version(stack: LocalAirflow, version: int, log: list, timeout_s: float = 900) -> None:
    """Wait until the window's mosaic ``version`` is published; meanwhile record (``log``) each
    look at the registry, to check that no version was superseded before its successor was published."""
    reg = open_registry(f"sqlite:///{stack.registry_db}")
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        stack.check_alive()
        mosaics = _products(reg, "mosaic")
        log.append([(m["id"], m["version"], m["status"], m["superseded_by"]) for m in mosaics])
        if any(m["version"] == version and m["status"] == "published" for m in mosaics):
            return
        runs = stack.list_runs("mosaic")
        if any(r["state"] == "failed" for r in runs):
            raise AssertionError(f"a mosaic run failed while waiting for version {version}: {runs}; "
                                 f"logs in {stack.home / 'logs'}")
        time.sleep(5)
    raise AssertionError(f"mosaic version {version} was not published within {timeout_s} s: {log[-1:]}")


def _backfill(stack: LocalAirflow, start, conf: dict | None = None) -> str:
    """`airflow backfill create` over the window's logical date, rerunning its completed run."""
    args = ["backfill", "create", "--dag-id", "mosaic", "--from-date", start.isoformat(),
            "--to-date", start.isoformat(), "--reprocess-behavior", "completed"]
    if conf is not None:
        args += ["--dag-run-conf", json.dumps(conf)]
    t0 = time.monotonic()
    while True:  # the previous backfill is marked complete by the scheduler a moment after its run ends
        res = stack.airflow(*args, check=False)
        if res.returncode == 0:
            return res.stdout
        if "AlreadyRunningBackfill" not in res.stderr or time.monotonic() - t0 > 120:
            raise AssertionError(f"airflow {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
        time.sleep(10)


def _plan(stack: LocalAirflow) -> dict:
    """The window's reprocessing plan (XCom ``plan`` of ``plan_reprocessing``), through the REST API."""
    run_id = stack.list_runs("mosaic")[0]["run_id"]
    value = stack.api_get(f"/api/v2/dags/mosaic/dagRuns/{run_id}/taskInstances/plan_reprocessing/xcomEntries/plan",
                          stack.api_token())["value"]
    return json.loads(value) if isinstance(value, str) else value


@pytest.fixture(scope="module")
def metadata_db():
    """Backfills need a metadata database that takes concurrent writers: on SQLite, Airflow 3.3
    refuses `backfill create` while the scheduler writes ("database is locked"; its API says to use
    PostgreSQL) and can leave a half-made backfill behind. Production runs on PostgreSQL; so does this."""
    with throwaway_postgres_db("contimg_backfill") as url:
        yield url


@pytest.fixture(scope="module")
def run(tmp_path_factory, metadata_db):
    root = tmp_path_factory.mktemp("backfill")
    data = root / "data"
    session = simulate_transit_session(data, N_GROUPS)  # the transit falls in group 1
    start = session.start
    window = session.window_start  # opens a minute early: it holds every group's earliest file
    stack = LocalAirflow(home=root / "airflow", data_dir=data, port=free_port(8191), contimg_env={
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_db,
        "CONTIMG_SCHEDULE_START": window.isoformat(),
        "CONTIMG_SCHEDULE_END": (window + timedelta(minutes=59)).isoformat(),
        "CONTIMG_CATCHUP": "true",
        "CONTIMG_POINTING_DEC_DEG": str(DEC),
        "CONTIMG_GROUP_TIMEOUT_S": "30",
    })
    stack.prepare()
    stack.start()
    out: dict = {"data": data, "stack": stack, "start": start}
    log1: list = []
    log2: list = []
    try:
        stack.unpause()
        _wait_for_version(stack, 1, [], timeout_s=TIMEOUT_S)
        reg = open_registry(f"sqlite:///{stack.registry_db}")
        deadline = time.monotonic() + 300
        while any(r["state"] != "success" for r in stack.list_runs("mosaic")) and time.monotonic() < deadline:
            time.sleep(5)  # publish has registered; let the run finish before backfilling it
        out["first"] = {"summary": summary(reg), "images": _products(reg, "image"),
                        "group_runs": stack.list_runs("group"), "mosaics": _products(reg, "mosaic")}

        out["backfill_changed_cli"] = _backfill(stack, window)
        _wait_for_version(stack, 2, log1)
        out["second"] = {"images": _products(reg, "image"), "group_runs": stack.list_runs("group"),
                         "mosaics": _products(reg, "mosaic"), "catalogs": _products(reg, "catalog"),
                         "plan": _plan(stack)}

        _backfill(stack, window, {"reprocess": "all"})
        _wait_for_version(stack, 3, log2)
        out["third"] = {"images": _products(reg, "image"), "group_runs": stack.list_runs("group"),
                        "mosaics": _products(reg, "mosaic"), "catalogs": _products(reg, "catalog"),
                        "mosaic_runs": stack.list_runs("mosaic")}
    finally:
        stack.stop()
    out["logs"] = (log1, log2)
    return out


def test_first_pass_publishes_version_1(run):
    first = run["first"]
    assert first["summary"]["groups_processed"] == N_GROUPS, first["summary"]
    assert len(first["group_runs"]) == N_GROUPS
    (m1,) = first["mosaics"]
    assert m1["version"] == 1 and m1["status"] == "published"
    assert Path(m1["published_path"]).parent == run["data"] / "products" / m1["window"]
    # every image records the inputs it was made from, so a backfill can decide to reuse it
    assert all(i["fingerprint"] and i["fingerprint"]["calibration"] and len(i["fingerprint"]["files"]) == 16
               for i in first["images"])


def test_unchanged_groups_are_reused_and_version_2_published(run):
    first, second, plan = run["first"], run["second"], run["second"]["plan"]
    assert len(second["group_runs"]) == N_GROUPS  # no new group runs
    # The transit group solved gains valid +-30 min; its image's inputs are unchanged, so it is reused.
    # The other group is remade only if it was imaged before those gains existed (its fingerprint then
    # names older calibration): which one happened depends on the order the two runs took.
    v1 = {i["group_id"]: i for i in first["images"]}
    transit_gid = max(v1)  # the transit falls in the second group
    reused = {r["group_id"]: r["image_id"] for r in plan["reuse"]}
    assert reused.get(transit_gid) == v1[transit_gid]["id"]
    for r in plan["reprocess"]:
        assert any("calibration" in reason for reason in r["reasons"]), r
    now = {i["group_id"]: max((j for j in second["images"] if j["group_id"] == gid), key=lambda j: j["version"])
           for gid, i in v1.items()}
    for gid, img in now.items():
        if gid in reused:  # the same image row, still version 1, not superseded
            assert (img["id"], img["version"], img["status"] != "superseded") == (v1[gid]["id"], 1, True)
        else:
            assert img["version"] == 2 and Path(img["path"]).parent.name == "v2"
    m1, m2 = second["mosaics"]
    window = m1["window"]
    assert (m2["version"], m2["window"], m2["status"]) == (2, window, "published")
    assert m2["name"] == f"{window}.v2"
    # both groups are in the window, and the new mosaic takes each group's current image
    assert len(m1["provenance"]["images"]) == N_GROUPS
    assert set(m2["provenance"]["images"]) == {i["id"] for i in now.values() if i["qa_status"] == "good"}
    v2 = Path(m2["published_path"])
    assert v2.parent == run["data"] / "products" / window / "v2" and v2.exists()
    # version 1 is kept, files and all, and points at its successor
    assert m1["status"] == "superseded" and m1["superseded_by"] == m2["id"]
    assert Path(m1["published_path"]).exists() and Path(m1["published_path"]).parent.name == window
    c1, c2 = second["catalogs"]
    assert c2["version"] == 2 and c2["window"] == window and c2["status"] == "published"
    assert c1["status"] == "superseded" and c1["superseded_by"] == c2["id"] and Path(c1["published_path"]).exists()


def test_previous_version_superseded_only_after_the_new_one_passed_qa(run):
    """In every look at the registry during the backfills, a superseded mosaic's successor was
    already published (the publish task supersedes only after the QA gate and the copy)."""
    for log in run["logs"]:
        assert log, "the registry was never looked at"
        for snapshot in log:
            status = {pid: st for pid, _, st, _ in snapshot}
            for pid, _, st, succ in snapshot:
                if st == "superseded":
                    assert status.get(succ) in ("published", "superseded"), snapshot
    # before its publish, version 2 existed while version 1 was still current at some look (or it was fast)
    assert all(st == "published" for _, v, st, _ in run["logs"][0][0] if v == 1)


def test_reprocess_all_remakes_every_group_as_new_image_versions(run):
    first, third = run["first"], run["third"]
    assert len(third["group_runs"]) == N_GROUPS  # remade inside the backfill run, not by new group runs
    old = {i["group_id"]: i for i in first["images"]}
    by_group: dict[str, list] = {}
    for i in third["images"]:
        by_group.setdefault(i["group_id"], []).append(i)
    assert set(by_group) == set(old)
    for gid, versions in by_group.items():  # the last two versions: before and after `reprocess=all`
        v1, v2 = sorted(versions, key=lambda i: i["version"])[-2:]
        assert v2["version"] == v1["version"] + 1 and len(versions) == v2["version"]
        assert Path(v2["path"]).exists() and Path(v2["path"]).parent.name == f"v{v2['version']}"
        assert Path(v1["path"]).exists() and v1["path"] != v2["path"]
        assert v2["qa_status"] == v1["qa_status"]  # same inputs, same verdict
        if v2["qa_status"] == "good":  # used by the new mosaic: it replaces version 1
            assert v1["status"] == "superseded" and v1["superseded_by"] == v2["id"]
        else:  # not in any mosaic: nothing replaced
            assert v1["status"] != "superseded"
        assert v2["fingerprint"]["files"] == v1["fingerprint"]["files"]  # same raw files, remade
    m1, m2, m3 = third["mosaics"]
    assert (m3["version"], m3["status"]) == (3, "published")
    newest = [max(v, key=lambda i: i["version"]) for v in by_group.values()]
    assert set(m3["provenance"]["images"]) == {i["id"] for i in newest if i["qa_status"] == "good"}
    assert m2["status"] == "superseded" and m2["superseded_by"] == m3["id"]
    assert m1["superseded_by"] == m2["id"]  # history stays as it was
    assert all(Path(m["published_path"]).exists() for m in (m1, m2, m3))
    assert Path(m3["published_path"]).parent.name == "v3"
    runs = third["mosaic_runs"]
    assert len(runs) == 1 and runs[0]["state"] == "success"  # the window's run, rerun by each backfill
