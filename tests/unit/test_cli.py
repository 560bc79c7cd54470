"""The `dsa110` command: subcommands call the stages and print JSON; errors name the file."""
from __future__ import annotations

import json

from dsa110_contimg.cli import build_parser, main
from dsa110_contimg.registry import head_revision

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


# -- dsa110 registry: summary (default), list, retire ------------------------------------
def _calset_registry(tmp_path) -> str:
    """A SQLite registry holding a bandpass set, a gains set on it, and a failed set."""
    from dsa110_contimg.registry import Registry

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    reg = Registry(url)
    reg.migrate()
    reg.register_calset("bp_0834", "bandpass", [("K", "/c/bp.K"), ("B", "/c/bp.B"), ("G", "/c/bp.G")],
                        61055.0, 61056.0, calibrator="0834+555", refant="25",
                        qa={"flagged_fraction": 0.0125, "n_solutions": 4096, "status": "good"})
    reg.register_calset("g_1000", "gains", [("G", "/c/g.G")], 61055.4, 61055.45, base_set="bp_0834")
    reg.register_calset("bp_bad", "bandpass", [("B", "/c/bad.B")], 61055.0, 61056.0, status="failed",
                        reason="flagged 80%")
    reg.engine.dispose()
    return url


def test_registry_defaults_to_summary(tmp_path, capsys):
    url = _calset_registry(tmp_path)
    assert main(["registry", "--registry", url]) == 0
    assert json.loads(capsys.readouterr().out)["caltables"] == 5
    assert main(["registry", "summary", "--registry", url]) == 0
    assert json.loads(capsys.readouterr().out)["caltables"] == 5
    assert main(["registry", "migrate", "--registry", url]) == 0
    assert json.loads(capsys.readouterr().out) == {"schema_revision": head_revision()}


def test_registry_list_table_and_json(tmp_path, capsys):
    url = _calset_registry(tmp_path)
    assert main(["registry", "list", "--registry", url]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["SET", "KIND", "STATUS"] and len(lines) == 4
    bp = next(line for line in lines if line.startswith("bp_0834"))
    for text in ("bandpass", "active", "2026-01-15T00:00:00Z", "2026-01-16T00:00:00Z", "61055.00000-61056.00000",
                 "0834+555", "25", "K,B,G", "flagged=0.0125", "nsol=4096"):
        assert text in bp
    assert "base bp_0834" in next(line for line in lines if line.startswith("g_1000"))
    assert "flagged 80%" in next(line for line in lines if line.startswith("bp_bad"))
    # --registry may also come before the action; filters narrow the JSON list
    assert main(["registry", "--registry", url, "list", "--status", "active", "--kind", "gains", "--json"]) == 0
    [g] = json.loads(capsys.readouterr().out)
    assert (g["set_name"], g["kind"], g["base_set"], g["tables"]) == ("g_1000", "gains", "bp_0834", [["G", "/c/g.G"]])


def test_registry_retire(tmp_path, capsys):
    import pytest

    url = _calset_registry(tmp_path)
    assert main(["registry", "retire", "g_1000", "--reason", "phase jump", "--registry", url]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"retired": "g_1000", "kind": "gains", "rows": 1, "reason": "phase jump",
                   "tables": [["G", "/c/g.G"]]}
    assert main(["registry", "list", "--status", "retired", "--json", "--registry", url]) == 0
    assert [s["reason"] for s in json.loads(capsys.readouterr().out)] == ["phase jump"]
    with pytest.raises(SystemExit) as exc:
        main(["registry", "retire", "no_such_set", "--reason", "typo", "--registry", url])
    assert exc.value.code == 1
    err = json.loads(capsys.readouterr().err)
    assert "no calibration set named 'no_such_set'" in err["reason"]


def test_sources_lightcurve_and_variability(tmp_path, capsys):
    """Forced photometry of one source in three mosaics: its light curve and V, eta."""
    from dsa110_contimg.registry import Registry

    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    reg = Registry(url)
    reg.migrate()
    for k, flux in enumerate([1.0, 1.2, 0.8]):
        pid = reg.register_product("mosaic", f"w{k}", f"/p/w{k}.fits", mid_mjd=61055.0 + k / 24)
        reg.record_photometry(pid, [{"name": "NVSS J0834+5534", "ra_deg": 128.7, "dec_deg": 55.57,
                                     "flux_jy": flux, "flux_err_jy": 0.1}], mid_mjd=61055.0 + k / 24)
    assert main(["sources", "lightcurve", "NVSS J0834+5534", "--registry", url]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["flux_jy"] for r in out["photometry"]] == [1.0, 1.2, 0.8]
    assert abs(out["variability"]["V"] - 0.2) < 1e-9  # std (ddof 1) 0.2 over mean 1.0
    assert abs(out["variability"]["eta"] - 4.0) < 1e-9  # (0 + 0.04 + 0.04) / 0.01 / 2
    assert main(["sources", "variability", "--registry", url]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "NVSS J0834+5534" and row["n"] == 3


# -- dsa110 validate imaging --imaging KEY=VALUE ---------------------------------------------
def test_validate_imaging_overrides_reach_imaging_params():
    from dsa110_contimg.cli import _key_values
    from dsa110_contimg.imaging import ImagingParams

    a = build_parser().parse_args(["validate", "imaging", "--imaging", "weighting=uniform", "--imaging", "niter=20000"])
    params = ImagingParams.from_dict(_key_values(a.imaging))
    assert (params.weighting, params.niter, params.robust) == ("uniform", 20000, 0.0)


def test_validate_imaging_refuses_a_malformed_override():
    import pytest

    from dsa110_contimg.cli import _key_values

    with pytest.raises(SystemExit, match="KEY=VALUE"):
        _key_values(["weighting"])
    with pytest.raises(ValueError, match="unknown imaging parameters"):
        from dsa110_contimg.imaging import ImagingParams

        ImagingParams.from_dict(_key_values(["weigting=uniform"]))
