"""Grouping rules of the ingest stage, on empty files with controlled mtimes."""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dsa110_contimg.errors import BadFileNameError
from dsa110_contimg.ingest import (
    SubbandGroup,
    find_groups,
    format_group_id,
    parse_subband_name,
    ready_groups,
    scan_incoming,
)

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
NOW = T0 + timedelta(hours=1)  # "now" for every test unless stated


def touch(d: Path, start: datetime, sb: int, age_s: float = 3600.0, suffix: str = "", now: datetime = NOW) -> Path:
    """Create an empty subband file whose mtime is ``age_s`` before ``now``."""
    p = d / f"{start.strftime('%Y-%m-%dT%H:%M:%S')}_sb{sb:02d}{suffix}.hdf5"
    p.write_bytes(b"")
    t = now.timestamp() - age_s
    os.utime(p, (t, t))
    return p


def write_group(d: Path, start: datetime, sbs=range(16), jitter_s=None, age_s: float = 3600.0):
    jitter_s = jitter_s or {}
    return [touch(d, start + timedelta(seconds=jitter_s.get(sb, 0)), sb, age_s) for sb in sbs]


def test_parse_subband_name():
    start, sb = parse_subband_name("/data/incoming/2025-03-01T12:00:07_sb15.hdf5")
    assert start == datetime(2025, 3, 1, 12, 0, 7, tzinfo=timezone.utc)
    assert start.tzinfo is not None
    assert sb == 15
    assert format_group_id(start) == "2025-03-01T12:00:07"


@pytest.mark.parametrize(
    "name, words",
    [
        ("2025-03-01T12:00:00_sb03_incomplete.hdf5", "still being written"),
        ("2025-03-01 12:00:00_sb03.hdf5", "does not match"),
        ("2025-03-01T12:00:00_sb3.hdf5", "does not match"),
        ("2025-03-01T12:00:00_sb03.h5", "does not match"),
        ("2025-13-01T12:00:00_sb03.hdf5", "not a valid date"),
        ("2025-03-01T12:00:00_sb16.hdf5", "out of range"),
    ],
)
def test_bad_names_raise_with_reason(name, words):
    with pytest.raises(BadFileNameError) as exc:
        parse_subband_name(Path("/in") / name)
    assert exc.value.path == str(Path("/in") / name)
    assert words in exc.value.reason


def test_complete_group(tmp_path):
    write_group(tmp_path, T0)
    (g,) = find_groups(tmp_path, now=NOW)
    assert isinstance(g, SubbandGroup)
    assert g.status == "complete" and g.ready
    assert g.group_id == "2025-03-01T12:00:00"
    assert g.start == T0
    assert g.subbands == tuple(range(16))
    assert [Path(f).name[-9:-5] for f in g.files] == [f"sb{i:02d}" for i in range(16)]
    assert g.missing == ()
    assert ready_groups(tmp_path, now=NOW) == [g]
    assert g.as_dict()["files"] == list(g.files)


def test_jitter_within_tolerance_groups_together(tmp_path):
    # Subband timestamps spread over +60 s from the earliest one: one group,
    # named after the earliest; the next observation (309 s later) is another.
    jit = {sb: (sb * 4) % 61 for sb in range(16)}
    jit[7] = 60
    jit[0] = 0
    write_group(tmp_path, T0 + timedelta(seconds=3), jitter_s=jit)
    write_group(tmp_path, T0 + timedelta(seconds=309), jitter_s={sb: 50 - sb for sb in range(16)})
    g1, g2 = find_groups(tmp_path, now=NOW)
    assert g1.group_id == "2025-03-01T12:00:03" and g1.status == "complete"
    assert g2.group_id == "2025-03-01T12:05:44" and g2.status == "complete"  # earliest = sb15 at +309+35


def test_outside_tolerance_splits(tmp_path):
    write_group(tmp_path, T0, sbs=range(15))
    touch(tmp_path, T0 + timedelta(seconds=61), 15)
    groups = find_groups(tmp_path, now=NOW, tolerance_s=60)
    assert [len(g.files) for g in groups] == [15, 1]
    assert groups[0].missing == (15,)


def test_incomplete_files_ignored(tmp_path):
    write_group(tmp_path, T0, sbs=range(15))
    touch(tmp_path, T0, 15, age_s=1.0, suffix="_incomplete")
    (g,) = find_groups(tmp_path, now=NOW)
    assert g.subbands == tuple(range(15))
    assert all("_incomplete" not in Path(f).name for f in g.files)
    assert g.status == "pending"  # sb15 is on its way: wait for it, do not time out
    assert "still being written" in g.reason
    valid, rejected = scan_incoming(tmp_path)
    assert rejected == []
    assert sum(f.incomplete for f in valid) == 1


def test_still_growing_file_holds_group(tmp_path):
    write_group(tmp_path, T0, sbs=range(15))
    touch(tmp_path, T0, 15, age_s=2.0)  # renamed 2 s ago: may still be flushing
    (g,) = find_groups(tmp_path, now=NOW, settle_s=5)
    assert g.status == "pending"
    assert "may still be growing" in g.reason
    assert ready_groups(tmp_path, now=NOW, settle_s=5) == []
    (g,) = find_groups(tmp_path, now=NOW + timedelta(seconds=10), settle_s=5)
    assert g.status == "complete"


def test_semi_complete_after_timeout(tmp_path):
    write_group(tmp_path, T0, sbs=range(12), age_s=100.0)
    (g,) = find_groups(tmp_path, now=NOW, timeout_s=600)
    assert g.status == "pending"
    assert g.missing == (12, 13, 14, 15)
    (g,) = find_groups(tmp_path, now=NOW + timedelta(seconds=501), timeout_s=600)
    assert g.status == "semi-complete" and g.ready
    assert g.missing == (12, 13, 14, 15)
    assert "sb12" in g.reason


def test_fewer_than_min_stays_pending(tmp_path):
    write_group(tmp_path, T0, sbs=range(11), age_s=10_000.0)
    (g,) = find_groups(tmp_path, now=NOW, timeout_s=600, min_subbands=12)
    assert g.status == "pending"
    assert len(g.missing) == 5
    assert "need 12" in g.reason
    assert ready_groups(tmp_path, now=NOW) == []


def test_bad_name_rejected_with_reason(tmp_path, caplog):
    write_group(tmp_path, T0)
    bad = tmp_path / "2025-03-01T12:00:00_sbXX.hdf5"
    bad.write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "subdir").mkdir()
    valid, rejected = scan_incoming(tmp_path)
    assert len(valid) == 16
    assert sorted(Path(p).name for p, _ in rejected) == [bad.name, "notes.txt"]
    assert all("does not match" in r for _, r in rejected)
    with caplog.at_level("WARNING"):
        (g,) = find_groups(tmp_path, now=NOW)
    assert g.status == "complete"
    assert bad.name in caplog.text


def test_duplicate_subband_flagged(tmp_path):
    write_group(tmp_path, T0)
    dup = touch(tmp_path, T0 + timedelta(seconds=20), 3)
    (g,) = find_groups(tmp_path, now=NOW)
    assert g.status == "invalid" and not g.ready
    assert g.subbands.count(3) == 2 and str(dup) in g.files
    assert "duplicate" in g.reason and "sb03" in g.reason and dup.name in g.reason
    # handed on (so its run fails loudly in convert) unless asked not to
    assert ready_groups(tmp_path, now=NOW) == [g]
    assert ready_groups(tmp_path, now=NOW, include_invalid=False) == []


def test_missing_directory_is_empty(tmp_path):
    assert find_groups(tmp_path / "nope", now=NOW) == []
    assert scan_incoming(tmp_path / "nope") == ([], [])
