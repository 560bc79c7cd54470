"""Provenance and lineage: how each product was made, and what Airflow shows of it.

Two records of the same facts:

* the registry's ``products.provenance`` (JSON): the input files with their
  SHA-256 checksums, the calibration tables applied, the parameters and the
  software versions (``image_provenance``, ``mosaic_provenance``);
* the extra of the Airflow asset event each producing task emits (the Assets
  page): the group or window, the paths, the product id, the QA numbers and
  the ids of the products or calibration sets it was made from
  (``*_event_extra``). Those stay small: the checksums live in the registry.

Checksums are streamed in blocks (never a whole file in memory); a group's 16
subband files are hashed by a few threads, since hashlib releases the GIL.
"""
from __future__ import annotations

import hashlib
import platform
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Iterable

CHUNK_BYTES = 4 << 20  # 4 MiB reads: hashing runs near disk speed with little memory
HASH_THREADS = 4

# Distribution names whose installed versions a product records (when installed).
PACKAGES = ("casatools", "casatasks", "python-casacore", "pyuvdata", "numpy", "astropy", "reproject", "bdsf",
            "apache-airflow")


# -- checksums --------------------------------------------------------------------
def sha256_file(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex SHA-256 of a file, read in ``chunk_bytes`` blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def file_checksums(paths: Iterable[str | Path], threads: int = HASH_THREADS) -> list[dict]:
    """[{"path", "sha256", "bytes"}] for ``paths`` in the given order."""
    paths = [Path(p) for p in paths]

    def one(p: Path) -> dict:
        return {"path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size}

    if len(paths) <= 1 or threads <= 1:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(threads, len(paths))) as pool:
        return list(pool.map(one, paths))


# -- software versions -------------------------------------------------------------
def software_versions(backend: str | None = None) -> dict[str, str]:
    """Versions of this package, Python and the installed science packages.

    Read from package metadata (nothing is imported, so recording Airflow's
    version does not import Airflow). ``backend`` 'wsclean' adds WSClean's
    version (from ``wsclean --version``)."""
    from . import __version__

    versions = {"dsa110_contimg": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if backend == "wsclean":
        from .imaging.backends import wsclean_version

        versions["wsclean"] = wsclean_version()
    return versions


# -- registry provenance -----------------------------------------------------------
def convert_provenance(files: Iterable[str | Path], params: dict) -> dict:
    """What a group's conversion read: the raw subband files with checksums, and how."""
    return {"raw_files": file_checksums(sorted(str(f) for f in files)), "convert_params": dict(params)}


def image_provenance(group_id: str, ms_path: str, raw_files: list[dict], calibration: list[dict],
                     params: dict, image: dict) -> dict:
    """An image's provenance: raw inputs (with checksums), MS, tables applied, parameters,
    versions, and the checksums of its own FITS files (what a mosaic that uses it reads)."""
    outputs = {key: image[key] for key in ("image_fits", "pbcor_fits", "pb_fits") if image.get(key)}
    return {
        "group_id": group_id,
        "inputs": {"raw_files": raw_files, "ms": ms_path},
        "calibration": calibration,
        "calibration_sets": sorted({c["set"] for c in calibration if c.get("set")}),
        "params": params,
        "software": software_versions(image.get("backend")),
        "outputs": {key: {"path": str(p), "sha256": sha256_file(p)} for key, p in outputs.items()
                    if Path(p).is_file()},
    }


def mosaic_provenance(window: str, images: list[dict], excluded: list[int], params: dict) -> dict:
    """A mosaic's provenance: its input images (product id, files, checksums), the images left
    out for QA, its parameters and versions. ``images`` = [{"id", "pbcor", "pb"}]."""
    inputs = []
    for img in images:
        files = [f for f in (img.get("pbcor"), img.get("pb")) if f]
        inputs.append({"product_id": img["id"], "files": file_checksums(files)})
    return {"window": window, "images": [i["id"] for i in images], "inputs": inputs,
            "excluded_bad_qa": list(excluded), "params": params, "software": software_versions()}


# -- asset event extras ------------------------------------------------------------------
def _pick(d: dict, keys: Iterable[str]) -> dict:
    return {k: d.get(k) for k in keys if d.get(k) is not None}


def image_event_extra(group_id: str, image: dict, qa: dict, registered: dict) -> dict:
    """What the image asset event carries: group, product id, paths, QA and the calibration sets."""
    calibration = registered.get("calibration") or []
    return {
        "group_id": group_id,
        "product_id": registered.get("product_id"),
        "path": image.get("pbcor_fits"),
        "paths": _pick(image, ("image_fits", "pbcor_fits", "pb_fits")) | _pick(qa, ("thumbnail",)),
        "qa_status": qa.get("qa_status"),
        "qa_reasons": list(qa.get("reasons") or []),
        "qa": _pick(qa, ("rms_jy", "peak_jy", "dynamic_range", "beam_arcsec", "flagged_fraction")),
        "mid_mjd": image.get("mid_mjd"),
        "backend": image.get("backend"),
        "calibration_sets": sorted({c["set"] for c in calibration if c.get("set")}),
        "calibration": [{"type": c.get("type"), "set": c.get("set"), "path": c.get("path")} for c in calibration],
    }


def mosaic_event_extra(mosaic: dict) -> dict:
    """What the mosaic asset event carries: window, product id, paths, QA and the images combined."""
    return {
        "window": mosaic.get("window"),
        "product_id": mosaic.get("product_id"),
        "path": mosaic.get("mosaic_fits"),
        "paths": _pick(mosaic, ("mosaic_fits", "weight_fits", "noise_fits", "preview_png")),
        "qa_status": mosaic.get("qa_status", "good"),
        "qa": _pick(mosaic, ("rms_jy", "peak_jy", "n_inputs", "beam_arcsec", "freq_hz")),
        "method": mosaic.get("method"),
        "mid_mjd": mosaic.get("mid_mjd"),
        "images": list(mosaic.get("images") or []),
        "excluded_bad_qa": list(mosaic.get("excluded_bad_qa") or []),
    }


def calset_event_extra(solved: dict) -> dict:
    """What a calibration-table asset event carries: the set, its group, validity, tables and QA."""
    qa = solved.get("qa") or {}
    return {
        "set_name": solved.get("set_name"),
        "kind": solved.get("kind"),
        "group_id": solved.get("group_id"),
        "base_set": solved.get("base_set"),
        "calibrator": solved.get("calibrator"),
        "refant": solved.get("refant"),
        "valid_mjd": solved.get("valid_mjd"),
        "paths": [p for _, p in solved.get("tables") or []],
        "tables": [{"type": t, "path": p} for t, p in solved.get("tables") or []],
        "plots": list(solved.get("plots") or []),
        "source_ms": solved.get("ms"),
        "qa_status": solved.get("qa_status"),
        "qa": {**_pick(solved, ("flagged_fraction", "n_solutions", "peak_beam", "data_flagged_fraction")),
               **{k: v for k, v in qa.items() if isinstance(v, (int, float, str, bool)) and v is not None}},
        "casa_version": solved.get("casa_version"),
    }
