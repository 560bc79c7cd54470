"""Storage and concurrency faults on the embedded deployment (tracker issue 8, items 2 and 4).

One tiny simulated session (three groups, the 0834+555 transit in the second) through the
real scheduler (SQLite, LocalExecutor, scheduler, dag-processor, triggerer, api-server; the
`mosaic` DAG paused until the groups are imaged), with two faults injected at different
moments:

1. The staging disk fills during conversion. The directory conversion writes MeasurementSets
   to (``PipelineConfig.ms_dir``) is a small tmpfs mounted by this test. Groups 0 and 1 are
   converted, calibrated and imaged; then a filler file leaves less room than one of their
   MeasurementSets takes, and only then does group 2 arrive in the incoming directory. Its
   `convert` try must fail with ENOSPC naming the directory, be retried (OSError is
   transient) rather than failed for good, and leave nothing at the final path and no
   ``.tmp-`` copy; the test then frees the space as an operator would, and the retry
   completes the group. Groups 0 and 1 never see a failed try.
2. Two overlapping mosaic windows run at once: the scheduled hourly window (all three
   groups) and an operator's run of the window starting at group 1 (groups 1 and 2),
   triggered through the REST API before `mosaic` is unpaused so both start together. Both
   must succeed with one current, published mosaic and catalogue each, made from the
   groups in their own window, in files of their own, and the runs must have overlapped.

The session must end with every product complete (``faults.audit``); the rows go to the
fault report."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import faults
from airflow_session import DEC, simulate_transit_session
from dsa110_contimg.config import PipelineConfig
from dsa110_contimg.localstack import LocalAirflow, free_port
from dsa110_contimg.pipeline import open_registry, window_name
from test_alerts_airflow import _try_token, _unpaused, _wait

pytestmark = [pytest.mark.airflow, pytest.mark.casa, pytest.mark.slow]

N_GROUPS = 3
TMPFS_SIZE = "64m"  # three tiny MeasurementSets (~2.3 MB each as converted, more once calibrated)
STEP_TIMEOUT_S = 600


def _run_id(group_id: str) -> str:
    return "group__" + group_id.replace(":", "")


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _when(text: str | None) -> datetime | None:
    """An ISO time (the API's, or a FITS DATE-OBS, which is UTC without a zone) as an aware datetime."""
    if not text:
        return None
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _tis(stack: LocalAirflow, token: str, dag_id: str, run_id: str) -> dict[str, dict]:
    return {t["task_id"]: t for t in stack.api_get(
        f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100", token)["task_instances"]}


def _mosaic_tis(stack: LocalAirflow, token: str) -> dict[str, dict | None]:
    """Each mosaic run's ``mosaic`` task instance (None before it exists)."""
    runs = stack.api_get("/api/v2/dags/mosaic/dagRuns?limit=100", token)["dag_runs"]
    return {r["dag_run_id"]: _tis(stack, token, "mosaic", r["dag_run_id"]).get("mosaic") for r in runs}


def _hold_first_mosaic(stack: LocalAirflow, token: str) -> dict:
    """Make the two windows' ``mosaic`` tasks overlap for certain.

    Each is a few seconds of work at the end of a chain of short tasks, so on a loaded
    machine the two chains can drift apart by more than that and the tasks run one after
    the other (CI saw it). So the first ``mosaic`` task seen running is frozen (SIGSTOP on
    its task process, whose pid Airflow records) until the other one runs too, then
    resumed (SIGCONT). Returns what was held and for how long."""
    result: dict = {"both_running": False}
    held: dict | None = None
    deadline = time.monotonic() + STEP_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            tis = _mosaic_tis(stack, token)
            running = {r: t for r, t in tis.items() if t and t["state"] == "running" and t.get("pid")}
            finished = [r for r, t in tis.items() if t and t["state"] in ("success", "failed", "upstream_failed")]
            if len(running) == 2:
                result["both_running"] = True
                break
            if finished:  # one ended before the other was seen running: no overlap to show
                result["finished_first"] = finished
                break
            if held is None and len(running) == 1:
                run_id, ti = next(iter(running.items()))
                os.kill(ti["pid"], signal.SIGSTOP)
                held = {"run_id": run_id, "pid": ti["pid"], "t0": time.monotonic()}
            time.sleep(0.2)
        else:
            result["timed_out"] = True
    finally:
        if held is not None:
            try:
                os.kill(held["pid"], signal.SIGCONT)
            except ProcessLookupError:
                pass
            result.update(held_run=held["run_id"], held_pid=held["pid"],
                          held_s=round(time.monotonic() - held["t0"], 1))
    return result


def _mount_tmpfs(path: Path) -> None:
    """A tmpfs of TMPFS_SIZE at ``path``; skips the module where mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the staging disk needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {path}: {done.stderr.strip()}")


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)  # a straggler still holds a file


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    from dsa110_contimg.ingest import find_groups

    root = tmp_path_factory.mktemp("faults_storage")
    data = root / "data"
    session = simulate_transit_session(data, N_GROUPS)
    found = find_groups(data / "incoming", now=datetime.now(timezone.utc) + timedelta(hours=1))
    assert [g.status for g in found] == ["complete"] * N_GROUPS
    gids = [g.group_id for g in found]
    held = root / "held"  # group 2 arrives once the disk is full (same filesystem: renamed in at once)
    held.mkdir()
    late_files = [Path(f) for f in found[2].files]
    for f in late_files:
        f.rename(held / f.name)

    sched_start = session.window_start  # the scheduled hourly window: every group
    op_start = found[1].start - timedelta(seconds=5)  # the operator's window: groups 1 and 2
    windows = {"scheduled": (sched_start, sched_start + timedelta(minutes=60)),
               "operator": (op_start, op_start + timedelta(minutes=60))}
    assert window_name(sched_start) != window_name(op_start)
    stack = LocalAirflow(home=root / "airflow", data_dir=data, port=free_port(8231), contimg_env={
        "CONTIMG_SCHEDULE_START": sched_start.isoformat(),
        "CONTIMG_SCHEDULE_END": (sched_start + timedelta(minutes=59)).isoformat(),
        "CONTIMG_CATCHUP": "true",
        "CONTIMG_POINTING_DEC_DEG": str(DEC),
        "CONTIMG_GROUP_TIMEOUT_S": "30",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # mosaic waits until every group is imaged
    })
    ms_dir = PipelineConfig.load(env=stack.env()).ms_dir
    assert ms_dir == data / "staging" / "ms"
    _mount_tmpfs(ms_dir)
    out: dict = {"gids": gids, "ms_dir": ms_dir, "data": data, "stack": stack, "windows": windows,
                 "raw_files": [str(f) for f in session.sim.files]}
    try:
        stack.prepare()
        stack.start()
        t0 = time.monotonic()
        try:
            token = _wait(lambda: _try_token(stack), 300, stack, "the api-server accepting a login")
            for dag_id in ("group", "bandpass", "ingest"):
                _wait(lambda: _unpaused(stack, token, dag_id), 300, stack, f"the {dag_id} DAG unpaused")
            reg = lambda: open_registry(stack.registry_url)  # noqa: E731

            def run_state(gid):
                try:
                    return stack.api_get(f"/api/v2/dags/group/dagRuns/{_run_id(gid)}", token)["state"]
                except OSError:  # 404: not started yet
                    return None

            _wait(lambda: all(run_state(g) in ("success", "failed") for g in gids[:2]), STEP_TIMEOUT_S, stack,
                  "groups 0 and 1 processed")
            out["t_first_groups_s"] = time.monotonic() - t0

            # -- fault 1: the staging disk full when group 2 is converted -------------------------------
            ms_bytes = _tree_bytes(Path(reg().get_group(gids[0])["ms_path"]))
            filler = ms_dir / "filler"
            with open(filler, "wb") as fh:
                os.posix_fallocate(fh.fileno(), 0, _free_bytes(ms_dir) - ms_bytes // 2)
            out["free_at_injection"], out["ms_bytes"] = _free_bytes(ms_dir), ms_bytes
            for f in late_files:
                (held / f.name).rename(f)

            def convert_tried():
                try:
                    ti = _tis(stack, token, "group", _run_id(gids[2])).get("convert")
                except OSError:
                    return None
                return ti if ti and ti["state"] in ("up_for_retry", "failed", "success") else None

            out["convert_first"] = _wait(convert_tried, 300, stack, "group 2's first convert try")
            out["group_after_failure"] = reg().get_group(gids[2])
            out["ms_dir_after_failure"] = sorted(p.name for p in ms_dir.iterdir())
            logs = sorted((stack.home / "logs").rglob("attempt=1.log"))
            out["convert_log"] = "".join(p.read_text(errors="replace") for p in logs
                                         if f"run_id={_run_id(gids[2])}" in str(p) and "task_id=convert" in str(p))
            filler.unlink()  # the operator frees the space; the retry (1 min later) converts the group
            t_freed = time.monotonic()
            _wait(lambda: run_state(gids[2]) in ("success", "failed"), STEP_TIMEOUT_S, stack, "group 2 processed")
            out["recovery_s"] = time.monotonic() - t_freed
            out["group_tis"] = {g: _tis(stack, token, "group", _run_id(g)) for g in gids}
            out["group_runs"] = {g: run_state(g) for g in gids}

            # -- fault 2: two overlapping mosaic windows at once -----------------------------------------
            start, end = windows["operator"]
            stack.api_request("POST", "/api/v2/dags/mosaic/dagRuns", token, {
                "dag_run_id": "mosaic__operator_overlap", "logical_date": start.isoformat(),
                "data_interval_start": start.isoformat(), "data_interval_end": end.isoformat()})
            _wait(lambda: _unpaused(stack, token, "mosaic"), 60, stack, "the mosaic DAG unpaused")
            out["overlap_hold"] = _hold_first_mosaic(stack, token)

            def mosaic_runs():
                runs = stack.api_get("/api/v2/dags/mosaic/dagRuns?limit=100", token)["dag_runs"]
                done = len(runs) == 2 and all(r["state"] in ("success", "failed") for r in runs)
                return runs if done else None

            out["mosaic_runs"] = _wait(mosaic_runs, STEP_TIMEOUT_S, stack, "both mosaic runs finished")
            out["mosaic_tis"] = {r["dag_run_id"]: _tis(stack, token, "mosaic", r["dag_run_id"])
                                 for r in out["mosaic_runs"]}
            out["wall_s"] = time.monotonic() - t0
        finally:
            stack.stop()
        yield out
    finally:
        _umount(ms_dir)


def _audit(s: dict) -> faults.Audit:
    return faults.audit(s["stack"].registry_url, s["data"], s["gids"],
                        [window_name(w[0]) for w in s["windows"].values()], s["raw_files"])


def test_staging_disk_full_during_conversion(storage):
    s = storage
    gids, ms_dir = s["gids"], s["ms_dir"]
    first, row = s["convert_first"], s["group_after_failure"]
    audit = _audit(s)
    reg = open_registry(s["stack"].registry_url)
    final_row = reg.get_group(gids[2])
    tis = s["group_tis"]
    survived = int(audit.ok and final_row["status"] == "imaged" and s["group_runs"][gids[2]] == "success")
    faults.record("staging disk full during conversion", 1, survived, len(audit.lost))
    print(f"\nstaging disk full: {s['free_at_injection'] / 1e6:.2f} MB free for a {s['ms_bytes'] / 1e6:.2f} MB "
          f"MeasurementSet; first try: {first['state']}; message: {row['message']}; "
          f"recovered {s['recovery_s']:.0f} s after the space was freed; groups 0-1 took "
          f"{s['t_first_groups_s']:.0f} s, whole session {s['wall_s']:.0f} s")
    assert s["free_at_injection"] < s["ms_bytes"]  # the disk really could not hold group 2's MS
    # the try failed with ENOSPC naming the directory, and is retried rather than failed for good
    assert first["state"] == "up_for_retry" and first["try_number"] == 1, first
    assert row["status"] == "failed" and row["message"].startswith("convert: [Errno 28] No space left on device")
    assert str(ms_dir) in row["message"], row["message"]
    assert "No space left on device" in s["convert_log"] and "not retrying" not in s["convert_log"]
    # nothing at the final path, no in-progress copy left behind: the filler and groups 0 and 1's MSs
    # (with the flag backups calibration keeps beside them)
    left = s["ms_dir_after_failure"]
    assert "filler" in left and {f"{gids[0]}.ms", f"{gids[1]}.ms"} <= set(left), left
    assert not [n for n in left if n.startswith(gids[2]) or ".tmp" in n], left
    # once the space was freed the retry completed the group; the other groups never failed a try
    assert tis[gids[2]]["convert"]["state"] == "success" and tis[gids[2]]["convert"]["try_number"] == 2
    assert final_row["status"] == "imaged" and final_row["ms_path"] == str(ms_dir / f"{gids[2]}.ms")
    assert s["group_runs"] == {g: "success" for g in gids}
    for g in gids[:2]:
        tries = {k: (t["state"], t["try_number"]) for k, t in tis[g].items() if t["state"] != "skipped"}
        assert set(tries.values()) == {("success", 1)}, (g, tries)
    assert audit.ok, (audit.lost, audit.partial, audit.duplicates)
    assert len(audit.lost) == 0


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_two_overlapping_mosaic_windows(storage):
    import numpy as np
    from astropy.io import fits

    s = storage
    gids = s["gids"]
    audit = _audit(s)
    reg = open_registry(s["stack"].registry_url)
    runs = {("operator" if r["run_type"] == "manual" else "scheduled"): r for r in s["mosaic_runs"]}
    tis = {k: s["mosaic_tis"][r["dag_run_id"]] for k, r in runs.items()}
    expect = {"scheduled": set(gids), "operator": set(gids[1:])}
    image_group = {p["id"]: p["group_id"] for p in reg.products(kind="image")}
    ok, checks = True, {}
    for key, (start, end) in s["windows"].items():
        name = window_name(start)
        mosaics = [p for p in reg.products(kind="mosaic") if p["window"] == name]
        cats = [p for p in reg.products(kind="catalog") if p["window"] == name]
        checks[key] = {"name": name, "mosaics": mosaics, "catalogs": cats,
                       "groups": {image_group[i] for m in mosaics for i in m["provenance"]["images"]}}
        ok &= (runs[key]["state"] == "success" and len(mosaics) == 1 and len(cats) == 1
               and checks[key]["groups"] == expect[key])
    survived = int(ok and audit.ok)
    faults.record("two overlapping mosaic windows", 1, survived, len(audit.lost))
    spans = {k: (_when(t["mosaic"]["start_date"]), _when(t["mosaic"]["end_date"])) for k, t in tis.items()}
    run_spans = {k: (_when(r["start_date"]), _when(r["end_date"])) for k, r in runs.items()}
    print(f"\nheld to make the mosaic tasks overlap: {s['overlap_hold']}")
    print(f"mosaic runs: { {k: (r['dag_run_id'], r['state']) for k, r in runs.items()} }")
    print(f"mosaic tasks: { {k: (a.isoformat(), b.isoformat()) for k, (a, b) in spans.items()} }")
    print(f"runs: { {k: (a.isoformat(), b.isoformat()) for k, (a, b) in run_spans.items()} }")

    assert {k: r["state"] for k, r in runs.items()} == {"scheduled": "success", "operator": "success"}, runs
    assert {k: {t: ti["state"] for t, ti in v.items()} for k, v in tis.items()} == {
        k: {"wait_for_images": "success", "plan_reprocessing": "success", "reprocess_group": "skipped",
            "mosaic": "success", "crossmatch": "success", "publish": "success"} for k in tis}
    # they really ran at once: each run started before the other ended, and so did their mosaic tasks
    assert s["overlap_hold"]["both_running"], s["overlap_hold"]
    (a0, a1), (b0, b1) = run_spans["scheduled"], run_spans["operator"]
    assert a0 < b1 and b0 < a1, run_spans
    (m0, m1), (n0, n1) = spans["scheduled"], spans["operator"]
    assert m0 < n1 and n0 < m1, spans
    files = {}
    for key, c in checks.items():
        (mosaic,), (cat,) = c["mosaics"], c["catalogs"]
        assert mosaic["status"] == "published" and cat["status"] == "published", (mosaic, cat)
        assert c["groups"] == expect[key], (key, c["groups"])  # the groups of its own window, no other
        assert mosaic["provenance"]["window"] == c["name"]
        pub = Path(mosaic["published_path"])
        assert pub.parent.name == c["name"] and Path(cat["published_path"]).parent.name == c["name"]
        # its own file, not the other window's: the header's window and the pixels of its own inputs
        with fits.open(pub) as hdul:
            head, pix = hdul[0].header, hdul[0].data
        assert _when(head["DATE-OBS"]) == s["windows"][key][0], (key, head["DATE-OBS"])
        assert _sha256(mosaic["path"]) == _sha256(str(pub))  # the staged copy is the published one
        assert mosaic["metrics"]["n_inputs"] == len(expect[key])
        files[key] = (str(pub), cat["published_path"], float(np.nansum(pix)), _sha256(str(pub)),
                      _sha256(cat["published_path"]))
    assert files["scheduled"][0] != files["operator"][0] and files["scheduled"][1] != files["operator"][1]
    assert files["scheduled"][2] != files["operator"][2] and files["scheduled"][3] != files["operator"][3]
    assert files["scheduled"][4] != files["operator"][4]
    assert audit.ok, (audit.lost, audit.partial, audit.duplicates)
    assert survived == 1 and len(audit.lost) == 0
