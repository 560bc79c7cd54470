"""Provenance (registry) and lineage (asset event extras): checksums, parameters, versions."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from dsa110_contimg import __version__
from dsa110_contimg.cli import main
from dsa110_contimg.config import PipelineConfig
from dsa110_contimg.pipeline import _raw_checksums, register_image
from dsa110_contimg.provenance import (
    calset_event_extra,
    file_checksums,
    image_event_extra,
    mosaic_event_extra,
    mosaic_provenance,
    sha256_file,
    software_versions,
)
from dsa110_contimg.registry import Registry


def _sha256(path) -> str:
    """The reference: hashlib on the whole file at once."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(tmp_path, n: int, size: int) -> list:
    paths = []
    for i in range(n):
        p = tmp_path / f"2026-01-15T08:00:00_sb{i:02d}.hdf5"
        p.write_bytes(os.urandom(size + i))  # sizes differ, so a swapped entry shows
        paths.append(p)
    return paths


def test_sha256_streams_across_block_boundaries(tmp_path):
    (p,) = _files(tmp_path, 1, 10_000)
    # blocks that divide the file unevenly, one byte, and larger than the file
    for chunk in (1, 333, 4096, 1 << 20):
        assert sha256_file(p, chunk_bytes=chunk) == _sha256(p)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()


def test_file_checksums_of_a_group_match_hashlib_in_order(tmp_path):
    files = _files(tmp_path, 16, 50_000)
    sums = file_checksums(list(reversed(files)), threads=4)
    assert [s["path"] for s in sums] == [str(p) for p in reversed(files)]  # the order given
    assert all(s["sha256"] == _sha256(p) and s["bytes"] == p.stat().st_size
               for s, p in zip(sums, reversed(files)))
    # what convert hands on: sorted by path, the same numbers
    assert _raw_checksums(list(reversed(files))) == sorted(sums, key=lambda s: s["path"])
    with pytest.raises(FileNotFoundError):
        file_checksums([tmp_path / "missing.hdf5"])


def test_software_versions_from_package_metadata():
    v = software_versions()
    assert v["dsa110_contimg"] == __version__
    assert v["python"].count(".") == 2
    for pkg in ("casatools", "pyuvdata", "numpy", "astropy", "bdsf", "apache-airflow"):
        assert v[pkg][0].isdigit(), (pkg, v.get(pkg))  # all installed in this environment
    assert "wsclean" not in v
    assert "wsclean" in software_versions("wsclean")  # 'unknown' when not installed


@pytest.fixture
def registry(tmp_path):
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    reg.migrate()
    yield reg
    reg.engine.dispose()


def _image(tmp_path, name: str = "g1") -> dict:
    out = {}
    for kind in ("image", "pbcor", "pb"):
        p = tmp_path / f"{name}.{kind}.fits"
        p.write_bytes(os.urandom(2880))
        out[f"{kind}_fits"] = str(p)
    return {**out, "rms_jy": 0.002, "peak_jy": 1.5, "mid_mjd": 61055.36, "backend": "tclean",
            "beam_arcsec": [60.0, 40.0, 10.0]}


QA = {"qa_status": "good", "reasons": [], "rms_jy": 0.002, "peak_jy": 1.5, "dynamic_range": 750.0,
      "beam_arcsec": [60.0, 40.0, 10.0], "flagged_fraction": 0.05, "thumbnail": "/s/g1.thumb.png"}
APPLIED = {"calibration": [{"type": "B", "path": "/c/bp.B", "set": "bp_0834"},
                           {"type": "G", "path": "/c/g.G", "set": "g_0850"}]}


def _group(registry, tmp_path, gid: str = "2026-01-15T08:00:00") -> list:
    files = _files(tmp_path, 16, 20_000)
    registry.record_group(gid, 61055.33, [str(f) for f in files])
    registry.update_group(gid, status="calibrated", ms_path=str(tmp_path / "g1.ms"), mid_mjd=61055.36)
    return files


def test_image_provenance_records_raw_checksums_tables_params_versions(registry, tmp_path):
    gid = "2026-01-15T08:00:00"
    files = _group(registry, tmp_path, gid)
    image = _image(tmp_path)
    cfg = PipelineConfig(data_dir=tmp_path / "data", imaging_niter=2500)
    converted = {"raw_files": _raw_checksums(files)}
    res = register_image(cfg, registry, gid, image, QA, APPLIED, converted=converted)
    (row,) = registry.products(kind="image")
    prov = row["provenance"]
    assert row["id"] == res["product_id"]
    raw = {f["path"]: f["sha256"] for f in prov["inputs"]["raw_files"]}
    assert raw == {str(p): _sha256(p) for p in files} and len(raw) == 16
    assert prov["inputs"]["ms"] == str(tmp_path / "g1.ms")
    assert prov["calibration"] == APPLIED["calibration"]
    assert prov["calibration_sets"] == ["bp_0834", "g_0850"]
    assert prov["params"]["niter"] == 2500 and prov["params"]["robust"] == cfg.imaging_robust
    assert prov["params"]["backend_used"] == "tclean"
    assert prov["software"]["dsa110_contimg"] == __version__ and "casatools" in prov["software"]
    # its own files, so a mosaic's input checksums can be traced back to this image
    assert prov["outputs"]["pbcor_fits"] == {"path": image["pbcor_fits"],
                                             "sha256": _sha256(tmp_path / "g1.pbcor.fits")}
    # without the convert result (the CLI, a lost XCom) the raw files are hashed from the registry's list
    register_image(cfg, registry, gid, image, QA, APPLIED)
    again = registry.products(kind="image")[0]["provenance"]
    assert again["inputs"]["raw_files"] == prov["inputs"]["raw_files"]


def test_mosaic_provenance_checksums_its_input_images(tmp_path):
    imgs = []
    for i, name in enumerate(("g1", "g2")):
        im = _image(tmp_path, name)
        imgs.append({"id": 10 + i, "pbcor": im["pbcor_fits"], "pb": im["pb_fits"]})
    prov = mosaic_provenance("2026-01-15T0800", imgs, [12], {"method": "weighted"})
    assert prov["images"] == [10, 11] and prov["excluded_bad_qa"] == [12]
    assert [i["product_id"] for i in prov["inputs"]] == [10, 11]
    for entry, img in zip(prov["inputs"], imgs):
        assert {f["path"]: f["sha256"] for f in entry["files"]} == {
            img["pbcor"]: _sha256(tmp_path / os.path.basename(img["pbcor"])),
            img["pb"]: _sha256(tmp_path / os.path.basename(img["pb"]))}
    assert prov["params"] == {"method": "weighted"} and prov["software"]["dsa110_contimg"] == __version__


def test_event_extras_carry_group_or_window_paths_qa_and_lineage(tmp_path):
    image = _image(tmp_path)
    ex = image_event_extra("2026-01-15T08:00:00", image, QA, {"product_id": 7, **APPLIED})
    assert ex["group_id"] == "2026-01-15T08:00:00" and ex["product_id"] == 7
    assert ex["path"] == image["pbcor_fits"] and ex["paths"]["pb_fits"] == image["pb_fits"]
    assert ex["qa_status"] == "good" and ex["qa"]["dynamic_range"] == 750.0 and ex["qa"]["rms_jy"] == 0.002
    assert ex["calibration_sets"] == ["bp_0834", "g_0850"]

    mosaic = {"window": "2026-01-15T0800", "product_id": 9, "mosaic_fits": "/s/m.mosaic.fits",
              "weight_fits": "/s/m.weight.fits", "rms_jy": 0.001, "peak_jy": 2.0, "n_inputs": 2,
              "method": "weighted", "images": [7, 8], "excluded_bad_qa": []}
    mx = mosaic_event_extra(mosaic)
    assert mx["window"] == "2026-01-15T0800" and mx["product_id"] == 9 and mx["images"] == [7, 8]
    assert mx["path"] == "/s/m.mosaic.fits" and mx["qa"] == {"rms_jy": 0.001, "peak_jy": 2.0, "n_inputs": 2}

    solved = {"set_name": "0834+555_g", "group_id": "2026-01-15T08:50:00", "kind": "bandpass",
              "tables": [["B", "/c/x.B"], ["G", "/c/x.G"]], "valid_mjd": [61055.0, 61056.0],
              "qa_status": "good", "flagged_fraction": 0.01, "n_solutions": 4096,
              "qa": {"status": "good", "median_snr": 40.0, "reasons": []}, "ms": "/m/g.ms", "plots": ["/c/x.B.png"]}
    cx = calset_event_extra(solved)
    assert cx["set_name"] == "0834+555_g" and cx["group_id"] == "2026-01-15T08:50:00"
    assert cx["paths"] == ["/c/x.B", "/c/x.G"] and cx["valid_mjd"] == [61055.0, 61056.0]
    assert cx["qa"]["median_snr"] == 40.0 and cx["qa"]["flagged_fraction"] == 0.01 and "reasons" not in cx["qa"]
    for extra in (ex, mx, cx):  # asset event extras must be plain JSON
        assert json.loads(json.dumps(extra)) == extra


def test_registry_show_prints_provenance_and_users(registry, tmp_path, capsys):
    gid = "2026-01-15T08:00:00"
    files = _group(registry, tmp_path, gid)
    cfg = PipelineConfig(data_dir=tmp_path / "data")
    pid = register_image(cfg, registry, gid, _image(tmp_path), QA, APPLIED)["product_id"]
    mid = registry.register_product("mosaic", "2026-01-15T0800", "/s/m.fits", window="2026-01-15T0800",
                                    provenance={"images": [pid]})
    url = str(registry.engine.url)
    assert main(["registry", "show", str(pid), "--json", "--registry", url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == pid and shown["kind"] == "image"
    assert {f["sha256"] for f in shown["provenance"]["inputs"]["raw_files"]} == {_sha256(p) for p in files}
    assert shown["used_by"] == [{"id": mid, "kind": "mosaic", "name": "2026-01-15T0800"}]
    assert main(["registry", "show", "2026-01-15T080000", "--registry", url]) == 0  # by name, as text
    text = capsys.readouterr().out
    assert f"sha256 {_sha256(files[0])}" in text and "from set bp_0834" in text and "used by    mosaic" in text
    with pytest.raises(SystemExit):
        main(["registry", "show", "999", "--registry", url])
    assert "no product with id or name '999'" in capsys.readouterr().err
