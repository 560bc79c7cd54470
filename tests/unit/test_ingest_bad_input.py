"""Bad input at ingest: symbolic links and paths outside incoming are rejected (never
followed), unparseable names, late subbands and strays are reported once (ingest report,
the group's message for a late subband, with the way to reprocess it), and none of them
touches another group. Empty files with controlled mtimes, a SQLite registry."""
from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest

from dsa110_contimg.config import PipelineConfig
from dsa110_contimg.errors import CorruptSubbandError
from dsa110_contimg.ingest import (
    ISSUE_LATE,
    ISSUE_REJECTED,
    ISSUE_STRAY,
    check_incoming_file,
    find_groups,
    ingest_issues,
    scan_incoming,
)
from dsa110_contimg.pipeline import (
    convert_step,
    new_ingest_issues,
    new_ready_groups,
    open_registry,
    record_groups,
    record_ingest_issues,
    reported_issues,
    rerecord_group,
)

from test_ingest import NOW, T0, touch, write_group


@pytest.fixture
def setup(tmp_path):
    data = tmp_path / "data"
    incoming = data / "incoming"
    incoming.mkdir(parents=True)
    cfg = PipelineConfig(data_dir=data, group_timeout_s=600)
    reg = open_registry(f"sqlite:///{tmp_path / 'registry.db'}")
    return cfg, reg, incoming


def test_symlink_rejected_never_followed(tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    write_group(incoming, T0, sbs=range(15))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = touch(elsewhere, T0, 15)
    link = incoming / target.name
    link.symlink_to(target)
    (incoming / "2025-03-01T12:00:00_sb99.hdf5").symlink_to("/etc/passwd")  # also a bad name: a link first
    valid, rejected = scan_incoming(incoming)
    assert len(valid) == 15 and str(link) not in [f.path for f in valid]
    why = "symbolic link: rejected, never followed (the correlator writes regular files)"
    assert {Path(p).name: r for p, r in rejected} == {link.name: why, "2025-03-01T12:00:00_sb99.hdf5": why}
    (g,) = find_groups(incoming, now=NOW)  # the group is 15/16 without it: semi-complete after the timeout
    assert g.status == "semi-complete" and g.missing == (15,)


def test_check_incoming_file(tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    ok = touch(incoming, T0, 0)
    check_incoming_file(ok, incoming)
    outside = touch(tmp_path, T0, 1)
    with pytest.raises(CorruptSubbandError, match="outside the incoming directory"):
        check_incoming_file(incoming / ".." / outside.name, incoming)
    link = incoming / "2025-03-01T12:00:00_sb02.hdf5"
    link.symlink_to(outside)
    with pytest.raises(CorruptSubbandError, match="symbolic link") as exc:
        check_incoming_file(link, incoming)
    assert exc.value.path == str(link)


def test_convert_refuses_a_recorded_symlink_and_records_why(setup, tmp_path):
    cfg, reg, incoming = setup
    files = [str(p) for p in write_group(incoming, T0, sbs=range(15))]
    outside = touch(tmp_path, T0, 15)
    link = incoming / outside.name
    link.symlink_to(outside)
    reg.record_group("2025-03-01T12:00:00", 60735.5, [*files, str(link)])  # e.g. recorded by hand
    with pytest.raises(CorruptSubbandError, match="symbolic link"):
        convert_step(cfg, reg, "2025-03-01T12:00:00")
    row = reg.get_group("2025-03-01T12:00:00")
    assert row["status"] == "failed"
    assert row["message"].startswith(f"convert: {link}: symbolic link: rejected, never followed")


def test_unparseable_name_reported_once_and_other_groups_untouched(setup):
    cfg, reg, incoming = setup
    write_group(incoming, T0)
    bad = incoming / "2025-03-01T12:00:00_sb3.hdf5"
    bad.write_bytes(b"")
    issues = new_ingest_issues(cfg, reg, now=NOW)
    assert issues == [{"path": str(bad), "kind": ISSUE_REJECTED, "group_id": None,
                       "reason": "name does not match YYYY-MM-DDTHH:MM:SS_sbNN.hdf5"}]
    (g,) = new_ready_groups(cfg, reg.group_files(), now=NOW)
    assert g["status"] == "complete" and len(g["files"]) == 16
    assert record_ingest_issues(cfg, reg, issues) == issues
    assert [r["path"] for r in reported_issues(cfg)] == [str(bad)]
    # reported once: neither found nor recorded again
    assert new_ingest_issues(cfg, reg, now=NOW) == []
    assert record_ingest_issues(cfg, reg, issues) == []
    assert len(reported_issues(cfg)) == 1


def test_late_subband_recorded_on_its_group_with_how_to_reprocess(setup):
    cfg, reg, incoming = setup
    write_group(incoming, T0, sbs=range(14))  # semi-complete after the timeout: handed on with 14
    (gid,) = record_groups(reg, new_ready_groups(cfg, reg.group_files(), now=NOW))
    reg.update_group(gid, status="imaged")
    late = touch(incoming, T0 - timedelta(seconds=3), 14, age_s=60)  # earlier timestamp: would move the anchor
    # not a new group, even though the cluster's earliest timestamp changed
    assert new_ready_groups(cfg, reg.group_files(), now=NOW) == []
    issues = new_ingest_issues(cfg, reg, now=NOW)
    assert [(i["path"], i["kind"], i["group_id"]) for i in issues] == [(str(late), ISSUE_LATE, gid)]
    assert issues[0]["reason"] == (
        f"sb14 arrived after group {gid} was recorded with 14 subband(s) and was not used; to reprocess the group "
        f"with it: `dsa110 ingest --rerecord {gid}`, then clear `convert` (with Downstream) of run "
        f"group__2025-03-01T120000")
    record_ingest_issues(cfg, reg, issues)
    row = reg.get_group(gid)
    assert row["status"] == "imaged"  # the products stand; the operator decides
    assert f"late subband {late.name}" in row["message"] and "--rerecord" in row["message"]
    assert new_ingest_issues(cfg, reg, now=NOW) == []
    # what the message offers: record it again with the late file, then its convert reads 15
    res = rerecord_group(cfg, reg, gid, now=NOW)
    assert res["added"] == [str(late)]
    row = reg.get_group(gid)
    assert row["status"] == "ingested" and len(json.loads(row["files"])) == 15 and str(late) in row["files"]
    # and nothing about it is reported again, nor is it a new group
    assert ingest_issues(incoming, reg.group_files(), now=NOW) == []
    assert new_ready_groups(cfg, reg.group_files(), now=NOW) == []


def test_timestamp_outside_tolerance_is_a_stray_reported_after_the_timeout(setup):
    cfg, reg, incoming = setup
    write_group(incoming, T0, sbs=range(15))
    stray = touch(incoming, T0 + timedelta(seconds=90), 15)  # outside the 60 s tolerance
    groups = find_groups(incoming, now=NOW)
    assert [(g.group_id, g.status) for g in groups] == [("2025-03-01T12:00:00", "semi-complete"),
                                                       ("2025-03-01T12:01:30", "pending")]
    (ready,) = new_ready_groups(cfg, reg.group_files(), now=NOW)  # the group goes on without it
    assert ready["group_id"] == "2025-03-01T12:00:00" and str(stray) not in ready["files"]
    (issue,) = new_ingest_issues(cfg, reg, now=NOW)
    assert issue["kind"] == ISSUE_STRAY and issue["path"] == str(stray)
    assert issue["group_id"] == "2025-03-01T12:01:30"
    assert "1/16 subbands" in issue["reason"] and "never be converted" in issue["reason"]
    assert "nearest group, 2025-03-01T12:00:00, starts +90 s away (tolerance 60 s)" in issue["reason"]
    # not before the timeout: it may still be the start of an observation
    assert ingest_issues(incoming, {}, now=T0 + timedelta(seconds=120), timeout_s=600) == []


def test_zero_length_and_duplicates_stay_with_their_group(setup):
    """Handed on (their own run fails in convert with the file named); not ingest issues."""
    cfg, reg, incoming = setup
    write_group(incoming, T0)
    touch(incoming, T0 + timedelta(seconds=5), 3)  # a second sb03
    write_group(incoming, T0 + timedelta(minutes=5))
    groups = new_ready_groups(cfg, reg.group_files(), now=NOW)
    assert [(g["group_id"], g["status"]) for g in groups] == [("2025-03-01T12:00:00", "invalid"),
                                                              ("2025-03-01T12:05:00", "complete")]
    assert new_ingest_issues(cfg, reg, now=NOW) == []
    assert os.path.getsize(groups[1]["files"][0]) == 0  # zero-length: convert says so (tests/integration)


def test_ingest_alert_names_every_file_and_reason():
    from dsa110_contimg.alerts import ingest_alert

    issues = [{"path": "/in/2025-03-01T12:00:00_sb3.hdf5", "kind": "rejected", "group_id": None,
               "reason": "name does not match YYYY-MM-DDTHH:MM:SS_sbNN.hdf5"},
              {"path": "/in/2025-03-01T12:00:09_sb14.hdf5", "kind": "late", "group_id": "2025-03-01T12:00:00",
               "reason": "sb14 arrived after group 2025-03-01T12:00:00 was recorded"}]
    alert = ingest_alert(run_id="manual__1", issues=issues, report="/data/ingest_issues.jsonl")
    assert alert.kind == "ingest"
    assert alert.subject == ("[DSA-110 contimg] ingest: 2 file(s) not used (late, rejected): "
                             "2025-03-01T12:00:00_sb3.hdf5: name does not match YYYY-MM-DDTHH:MM:SS_sbNN.hdf5")
    body = alert.body.splitlines()
    assert "Rejected: /in/2025-03-01T12:00:00_sb3.hdf5: name does not match YYYY-MM-DDTHH:MM:SS_sbNN.hdf5" in body
    assert any(line.startswith("Late:") and "sb14 arrived after group" in line for line in body)
    assert alert.field("Report") == "/data/ingest_issues.jsonl"
