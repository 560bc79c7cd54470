"""The `dsa110` command: subcommands call the stages and print JSON; errors name the file."""
from __future__ import annotations

import json

from dsa110_contimg.cli import build_parser, main

STAGES = {"simulate", "ingest", "convert", "calibrate", "image", "mosaic", "crossmatch", "publish", "registry"}


def test_one_subcommand_per_stage():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert STAGES <= set(sub.choices)


def test_simulate_then_ingest(tmp_path, capsys):
    out = tmp_path / "incoming"
    assert main(["simulate", "--preset", "tiny", "--groups", "1", "--out", str(out),
                 "--start", "2026-01-15T08:00:00", "--catalog", str(tmp_path / "cat.tsv")]) == 0
    sim = json.loads(capsys.readouterr().out)
    assert sim["files"] == 16 and (tmp_path / "cat.tsv").exists()
    assert main(["ingest", "--incoming", str(out)]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert len(groups) == 1 and len(groups[0]["files"]) == 16


def test_bad_input_reports_file_and_reason(tmp_path, capsys):
    bad = tmp_path / "2026-01-15T08:00:00_sb00.hdf5"
    bad.write_bytes(b"")
    assert main(["convert", str(bad), "--out", str(tmp_path / "ms")]) == 2
    err = json.loads(capsys.readouterr().err)
    assert err["path"] and err["reason"]
