"""Bad input through the real ingest path (tracker issue 8, items 3 and 4).

Two good tiny groups and, next to them, at once: a truncated subband, a corrupt
(not HDF5) subband, a zero-length subband, a duplicated subband (each in a group of
its own), a subband arriving after its group was processed, a file whose timestamp
is outside every group's tolerance, a name that does not parse and a symbolic link
pointing outside the incoming directory. The embedded deployment (scheduler,
dag-processor, triggerer, api-server; only `ingest` and `group` unpaused) runs them
with a local SMTP server. Each bad case must end in its own clear state and message
with an alert, the good groups must convert (their MeasurementSets are this test's
products: no bandpass is solved here, so their runs then wait for calibration), and
the fault table must show no product lost."""
from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dsa110_contimg.localstack import LocalAirflow, free_port
from dsa110_contimg.pipeline import open_registry

from airflow_session import DEC, PRESET
from test_alerts_airflow import _connections, _try_token, _unpaused, _wait

pytestmark = [pytest.mark.airflow, pytest.mark.casa, pytest.mark.slow]

TIMEOUT_S = 600
GOOD = ("G0", "G1")
# bad groups: copies of G0's files renamed to hours later, one subband damaged
BROKEN = {  # fault -> (hours after G0, subband, how, words the group's message must hold)
    "truncated HDF5": (1, 5, "truncate", "cannot read UVH5 header (truncated or damaged file?)"),
    "corrupt HDF5": (2, 7, "garbage", "cannot read UVH5 header"),
    "zero-length file": (3, 2, "empty", "zero-length file"),
    "duplicate subband": (4, 3, "duplicate", "duplicate subband sb03 in group"),
}


def _name(t, sb: int) -> str:
    return f"{t.strftime('%Y-%m-%dT%H:%M:%S')}_sb{sb:02d}.hdf5"


def _inject(incoming: Path, root: Path, g0_files: list[Path], g0_start) -> dict:
    """The bad inputs; returns what each should produce."""
    out = {}
    for fault, (hours, sb, how, words) in BROKEN.items():
        t = g0_start + timedelta(hours=hours)
        for f in g0_files:
            shutil.copyfile(f, incoming / _name(t, int(f.name[-7:-5])))
        bad = incoming / _name(t, sb)
        if how == "truncate":
            os.truncate(bad, bad.stat().st_size // 2)
        elif how == "garbage":
            with open(bad, "r+b") as fh:
                fh.write(os.urandom(4096))  # the HDF5 superblock is gone
        elif how == "empty":
            os.truncate(bad, 0)
        elif how == "duplicate":
            bad = incoming / _name(t + timedelta(seconds=5), sb)
            shutil.copyfile(g0_files[sb], bad)
        out[fault] = {"group_id": t.strftime("%Y-%m-%dT%H:%M:%S"), "file": str(bad), "words": words}
    stray = incoming / _name(g0_start + timedelta(hours=5), 0)  # alone: no group within 60 s
    shutil.copyfile(g0_files[0], stray)
    badname = incoming / (g0_files[1].name.replace("_sb01", "_sb1"))
    shutil.copyfile(g0_files[1], badname)
    outside = root / "outside.hdf5"
    shutil.copyfile(g0_files[2], outside)
    link = incoming / _name(g0_start + timedelta(hours=6), 2)
    link.symlink_to(outside)
    out["timestamp outside tolerance"] = {"file": str(stray), "kind": "stray", "words": "never be converted"}
    out["unparseable name"] = {"file": str(badname), "kind": "rejected", "words": "name does not match"}
    out["symlink outside incoming"] = {"file": str(link), "kind": "rejected", "words": "symbolic link: rejected"}
    return out


@pytest.fixture(scope="module")
def bad_input(tmp_path_factory, smtp):
    from dsa110_contimg.ingest import find_groups
    from dsa110_contimg.simulate import simulate_session

    ctl, inbox = smtp
    n_mail = len(inbox.messages)
    root = tmp_path_factory.mktemp("badinput")
    data = root / "data"
    incoming = data / "incoming"

    start = datetime(2026, 1, 15, 6, 0, 0, tzinfo=timezone.utc)
    sim = simulate_session(incoming, PRESET, start, 2, DEC, seed=7, catalog_path=data / "reference_catalog.tsv")
    groups = find_groups(incoming, now=datetime.now(timezone.utc) + timedelta(hours=1))
    assert [g.status for g in groups] == ["complete", "complete"] and sim.files
    g0, g1 = ([Path(f) for f in g.files] for g in groups)  # sorted by subband
    g0_start = groups[0].start
    held = root / "held"
    held.mkdir()
    late_src = g1[15]  # G1's sb15 arrives after G1 is processed
    shutil.move(late_src, held / late_src.name)
    expect = _inject(incoming, root, g0, g0_start)

    stack = LocalAirflow(home=root / "airflow", data_dir=data, port=free_port(8201), contimg_env={
        **_connections(ctl.port, None),
        "CONTIMG_POINTING_DEC_DEG": str(DEC),
        "CONTIMG_GROUP_TIMEOUT_S": "30",  # G1 (15/16) is semi-complete, the stray reported, after 30 s
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # only ingest and group run here
    })
    stack.prepare()
    stack.start()
    t0 = time.monotonic()
    try:
        token = _wait(lambda: _try_token(stack), 300, stack, "the api-server accepting a login")
        for dag_id in ("group", "ingest"):
            _wait(lambda: _unpaused(stack, token, dag_id), 300, stack, f"the {dag_id} DAG registered and unpaused")
        reg = lambda: open_registry(stack.registry_url)  # noqa: E731
        good_ids = {"G0": groups[0].group_id, "G1": min(f.name[:19] for f in g1[:15])}
        bad_ids = [e["group_id"] for e in expect.values() if "group_id" in e]

        def settled():
            if not stack.registry_exists():
                return False
            r = reg()
            rows = {g: r.get_group(g) for g in [*good_ids.values(), *bad_ids]}
            return all(rows[g] and rows[g]["status"] == "converted" for g in good_ids.values()) and all(
                rows[g] and rows[g]["status"] == "failed" for g in bad_ids)

        _wait(settled, TIMEOUT_S, stack, "good groups converted and bad groups failed")
        shutil.copyfile(held / late_src.name, incoming / late_src.name)  # the late subband
        expect["late subband"] = {"file": str(incoming / late_src.name), "kind": "late", "group_id": good_ids["G1"],
                                  "words": "--rerecord"}
        report = data / "ingest_issues.jsonl"
        kinds = lambda: {(json.loads(line)["path"], json.loads(line)["kind"])  # noqa: E731
                         for line in (report.read_text().splitlines() if report.exists() else [])}
        wanted = {(e["file"], e["kind"]) for e in expect.values() if "kind" in e}
        _wait(lambda: wanted <= kinds(), 180, stack, "every ingest issue in the report")
        _wait(lambda: len([m for _, m in inbox.messages[n_mail:] if m["X-Contimg-Alert"] == "failure"])
              >= len(BROKEN) and all(any(e["file"] in m.get_content() for _, m in inbox.messages[n_mail:])
                                     for e in expect.values()), 120, stack, "an alert for every fault")
        runs = {r["dag_run_id"]: r for r in stack.api_get("/api/v2/dags/group/dagRuns?limit=100", token)["dag_runs"]}
        tis = {run_id: {t["task_id"]: t["state"] for t in stack.api_get(
            f"/api/v2/dags/group/dagRuns/{run_id}/taskInstances", token)["task_instances"]} for run_id in runs}
    finally:
        stack.stop()
    r = open_registry(stack.registry_url)
    return {"expect": expect, "good_ids": good_ids, "reg": r, "runs": runs, "tis": tis, "report": kinds(),
            "report_rows": [json.loads(x) for x in report.read_text().splitlines()],
            "mails": inbox.messages[n_mail:], "wall_s": time.monotonic() - t0}


def _run_id(group_id: str) -> str:
    return "group__" + group_id.replace(":", "")


def test_bad_input_fault_table(bad_input):
    b = bad_input
    reg, mails = b["reg"], b["mails"]
    bodies = [(m["X-Contimg-Alert"], m["Subject"], m.get_content()) for _, m in mails]
    good = {name: reg.get_group(g) for name, g in b["good_ids"].items()}
    lost = sum(1 for row in good.values() if not (row["status"] == "converted" and Path(row["ms_path"]).is_dir()))
    rows, problems = [], []
    for fault, e in b["expect"].items():
        ok = []
        if "group_id" in e and e.get("kind") != "late":  # a group of its own: failed in convert, alerted
            row = reg.get_group(e["group_id"])
            ok.append(row["status"] == "failed" and row["message"].startswith(f"convert: ")
                      and e["file"] in row["message"] and e["words"] in row["message"])
            ok.append(b["tis"][_run_id(e["group_id"])]["convert"] == "failed")
            ok.append(b["runs"][_run_id(e["group_id"])]["state"] == "failed")
            ok.append(any(kind == "failure" and f"(group {e['group_id']})" in subj and e["file"] in body
                          for kind, subj, body in bodies))
        else:  # reported in the ingest report and alerted; a late one also on its group
            ok.append((e["file"], e["kind"]) in b["report"])
            ok.append(any(r["path"] == e["file"] and e["words"] in r["reason"] for r in b["report_rows"]))
            ok.append(any(kind == "ingest" and e["file"] in body for kind, subj, body in bodies))
            if e["kind"] == "late":
                row = reg.get_group(e["group_id"])
                ok.append(row["status"] == "converted" and "late subband" in row["message"]
                          and e["words"] in row["message"])
        if not all(ok):
            problems.append((fault, ok))
        rows.append((fault, 1, int(all(ok)), lost))
    print("\nfault                          injections  survived  products lost")
    for fault, n, s, l in rows:
        print(f"{fault:<30} {n:>10} {s:>9} {l:>14}")
    print(f"(good groups {sorted(b['good_ids'].values())}: MeasurementSets kept; {b['wall_s']:.0f} s)")
    for e in b["expect"].values():  # what an operator reads
        if "group_id" in e:
            print(f"group {e['group_id']}: {reg.get_group(e['group_id'])['message']}")
    for kind, subj, _ in bodies:
        print(f"alert ({kind}): {subj}")
    # nothing else affected: the good groups' runs have no failed task, no other group failed
    for g in b["good_ids"].values():
        assert "failed" not in b["tis"][_run_id(g)].values(), b["tis"][_run_id(g)]
    bad_runs = {_run_id(e["group_id"]) for e in b["expect"].values() if "group_id" in e and e.get("kind") != "late"}
    assert {rid for rid, r in b["runs"].items() if r["state"] == "failed"} == bad_runs
    assert set(b["runs"]) == bad_runs | {_run_id(g) for g in b["good_ids"].values()}  # no run for a stray
    assert not problems, problems
    assert lost == 0
