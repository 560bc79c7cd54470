"""The per-stage steps as the DAGs and the CLI run them.

Each step binds a science function (convert, calibrate, image, mosaic,
cross-match, publish) to the configuration and the registry: it looks up its
inputs, calls the stage, records the outcome in one transaction and returns a
small JSON-serialisable dict (what travels through XCom). Failures are
recorded on the group with the reason before they propagate, so the operator
sees the same message in the registry and in the task log.
"""
from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from .config import PipelineConfig
from .errors import ContimgError
from .registry import Registry, mjd_from_datetime
from .results import jsonable

log = logging.getLogger(__name__)



def open_registry(url: str) -> Registry:
    reg = Registry(url)
    reg.migrate()
    return reg


# -- ingest -------------------------------------------------------------------
def new_ready_groups(cfg: PipelineConfig, known: set[str] | dict[str, list[str]],
                     now: datetime | None = None) -> list[dict]:
    """Ready groups in incoming not yet known: complete, timed-out semi-complete,
    or settled-but-invalid (so their own run fails with a readable reason).

    ``known`` is the recorded group ids, or better ``Registry.group_files()``: then a
    cluster holding a file already recorded for a group is that group, even if a late
    subband moved its earliest timestamp (it is reported by :func:`new_ingest_issues`)."""
    from .ingest import ready_groups

    groups = ready_groups(cfg.incoming_dir, now=now, tolerance_s=cfg.group_tolerance_s,
                          timeout_s=cfg.group_timeout_s, min_subbands=cfg.min_subbands)
    owned = {f for files in known.values() for f in files} if isinstance(known, dict) else set()
    ready = [g for g in groups if g.group_id not in known and not owned.intersection(g.files)]
    return [{"group_id": g.group_id, "files": list(g.files), "status": g.status,
             "start_mjd": _nominal_start_mjd(g)} for g in ready]


def _nominal_start_mjd(group) -> float:
    """The median of the subband files' timestamps.

    The group id is the earliest timestamp, but the correlator's per-subband
    jitter goes both ways; the median is the robust observation start, and it
    decides which mosaic window the group belongs to."""
    from .ingest import parse_subband_name

    times = sorted(mjd_from_datetime(parse_subband_name(f)[0]) for f in group.files)
    return times[len(times) // 2] if times else mjd_from_datetime(group.start)


def record_groups(reg: Registry, groups: list[dict]) -> list[str]:
    """Record newly found groups; return the ids (new or already known) to run."""
    for g in groups:
        if reg.record_group(g["group_id"], g["start_mjd"], g["files"]):
            log.info("ingest: group %s recorded with %d subbands (%s)", g["group_id"], len(g["files"]), g["status"])
    return [g["group_id"] for g in groups]


INGEST_REPORT = "ingest_issues.jsonl"  # in data_dir: every file ingest could not use, and why


def ingest_report_path(cfg: PipelineConfig) -> Path:
    return Path(cfg.data_dir) / INGEST_REPORT


def reported_issues(cfg: PipelineConfig) -> list[dict]:
    """The ingest report: one JSON object per line (time, path, kind, group_id, reason)."""
    path = ingest_report_path(cfg)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def new_ingest_issues(cfg: PipelineConfig, reg: Registry, now: datetime | None = None) -> list[dict]:
    """Files in incoming that no run will read (bad names, symbolic links, paths outside incoming,
    late subbands, strays: ``ingest.ingest_issues``) not yet in the ingest report."""
    from .ingest import ingest_issues

    seen = {(r["path"], r["kind"], r.get("group_id")) for r in reported_issues(cfg)}
    issues = ingest_issues(cfg.incoming_dir, reg.group_files(), now=now, tolerance_s=cfg.group_tolerance_s,
                           timeout_s=cfg.group_timeout_s, min_subbands=cfg.min_subbands)
    return [i for i in issues if (i["path"], i["kind"], i["group_id"]) not in seen]


def record_ingest_issues(cfg: PipelineConfig, reg: Registry, issues: list[dict]) -> list[dict]:
    """Append new issues to the ingest report and log each; a late subband is also noted in its
    group's message in the registry (its status stays as it is). Returns the issues recorded."""
    seen = {(r["path"], r["kind"], r.get("group_id")) for r in reported_issues(cfg)}
    new = [i for i in issues if (i["path"], i["kind"], i.get("group_id")) not in seen]
    if not new:
        return []
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path = ingest_report_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        for i in new:
            fh.write(json.dumps({"time": stamp, **i}) + "\n")
            log.warning("ingest: %s %s: %s", i["kind"], i["path"], i["reason"])
    for i in new:
        row = reg.get_group(i["group_id"]) if i["kind"] == "late" else None
        if row is not None:
            note = f"ingest: late subband {Path(i['path']).name}: {i['reason']}"
            reg.update_group(i["group_id"], message="\n".join(m for m in (row["message"], note) if m))
    return new


def rerecord_group(cfg: PipelineConfig, reg: Registry, group_id: str, now: datetime | None = None) -> dict:
    """Record a group again with every file in incoming that belongs to it now (late subbands
    included), so that clearing its ``convert`` reprocesses it with them."""
    from .ingest import find_groups

    row = reg.get_group(group_id)
    if row is None:
        raise ContimgError(cfg.incoming_dir, f"group {group_id} is not registered; was it ingested?")
    recorded = json.loads(row["files"])
    # the incoming directory spelt as when the group was recorded (ingest compares paths as strings)
    base = os.path.dirname(recorded[0]) if recorded else str(cfg.incoming_dir)
    old = {os.path.basename(f) for f in recorded}
    groups = find_groups(Path(cfg.incoming_dir), now=now, tolerance_s=cfg.group_tolerance_s,
                         timeout_s=cfg.group_timeout_s, min_subbands=cfg.min_subbands)
    g = next((g for g in groups if old.intersection(map(os.path.basename, g.files)) or g.group_id == group_id), None)
    if g is None:
        raise ContimgError(cfg.incoming_dir, f"no files of group {group_id} are left in the incoming directory")
    files = [os.path.join(base, os.path.basename(f)) for f in g.files]
    added = sorted(f for f in files if os.path.basename(f) not in old)
    reg.update_group(group_id, files=json.dumps(files), n_subbands=len(files), status="ingested",
                     message=f"re-recorded with {len(files)} subbands (added {', '.join(added) or 'none'})")
    log.info("ingest: group %s re-recorded with %d files (added %s)", group_id, len(files), added)
    return {"group_id": group_id, "files": files, "added": added, "status": g.status, "reason": g.reason}


# -- convert --------------------------------------------------------------------
def convert_step(cfg: PipelineConfig, reg: Registry, group_id: str) -> dict:
    from .convert import convert_group
    from .ingest import check_incoming_file

    row = reg.get_group(group_id)
    if row is None:
        raise ContimgError(cfg.incoming_dir, f"group {group_id} is not registered; was it ingested?")
    files = [Path(f) for f in json.loads(row["files"])]
    with _failure_recorded(reg, group_id, "convert"):
        for f in files:  # symbolic links and paths outside incoming are never read
            check_incoming_file(f, cfg.incoming_dir)
        res = convert_group(files, cfg.ms_dir, group_id=group_id, min_subbands=cfg.min_subbands,
                            tolerance_s=cfg.group_tolerance_s)
    reg.update_group(group_id, status="converted", ms_path=str(res.ms_path), mid_mjd=res.mid_mjd,
                     pointing_dec_deg=res.pointing_dec_deg, message=None)
    log.info("convert: %s -> %s (%d rows, %d channels, %d antennas, %.1f s)", group_id, res.ms_path,
             res.n_rows, res.n_channels, res.n_antennas, res.seconds)
    return {**jsonable(res), "raw_files": _raw_checksums(files)}


def _raw_checksums(files: list[Path]) -> list[dict]:
    """SHA-256 of the raw subband files, hashed right after conversion read them (page cache warm);
    they travel to the image's provenance through XCom (``register_image(converted=...)``)."""
    from .provenance import file_checksums

    t0 = time.monotonic()
    sums = sorted(file_checksums(files), key=lambda f: f["path"])
    log.info("convert: sha256 of %d raw files (%.1f MB) in %.1f s", len(sums),
             sum(f["bytes"] for f in sums) / 1e6, time.monotonic() - t0)
    return sums


# -- image / QA / register -----------------------------------------------------
def image_step(cfg: PipelineConfig, reg: Registry, group_id: str, overrides: dict | None = None) -> dict:
    from .imaging import image_ms

    row = _converted(reg, group_id)
    params = _imaging_params(cfg, overrides)
    with _failure_recorded(reg, group_id, "image"):
        res = image_ms(Path(row["ms_path"]), cfg.images_dir / _safe(group_id), params, name=_safe(group_id),
                       catalog=imaging_catalog(cfg))
    log.info("image: %s rms %.4g Jy peak %.4g Jy", group_id, res.rms_jy, res.peak_jy)
    return jsonable(res)


def imaging_catalog(cfg: PipelineConfig) -> Path | None:
    """The reference catalogue the image stage fits bright sources from (None: there is none)."""
    path = cfg.reference_catalog
    if path is None or not Path(path).exists():
        log.warning("image: no reference catalogue at %s: bright sources are not subtracted", path)
        return None
    return Path(path)


def _imaging_params(cfg: PipelineConfig, overrides: dict | None = None):
    """The imaging parameters of a run: the configuration (with the run's Params), then overrides."""
    from .imaging import ImagingParams

    return ImagingParams.from_dict({"backend": cfg.imaging_backend, "niter": cfg.imaging_niter,
                                    "robust": cfg.imaging_robust, "fov_deg": cfg.imaging_fov_deg,
                                    "subtract_bright": cfg.imaging_subtract_bright, **(overrides or {})})


def qa_image(cfg: PipelineConfig, image: dict) -> dict:
    """The image's QA (robust rms, peak, dynamic range, beam, flagged fraction, thumbnail)
    and its status against the configured thresholds, with the reasons."""
    from .imaging import ImageQAThresholds, image_qa

    thresholds = ImageQAThresholds(max_rms_jy=cfg.qa_max_rms_jy, min_dynamic_range=cfg.qa_min_dynamic_range,
                                   max_flagged_fraction=cfg.qa_max_flagged_fraction,
                                   max_beam_arcsec=cfg.qa_max_beam_arcsec)
    pbcor = Path(image["pbcor_fits"])
    return image_qa(Path(image["image_fits"]), pbcor, image.get("flagged_fraction"), thresholds,
                    thumbnail_png=pbcor.with_name(pbcor.name.replace(".pbcor.fits", ".thumb.png")))


def register_image(cfg: PipelineConfig, reg: Registry, group_id: str, image: dict, qa: dict,
                   applied: dict | None = None, converted: dict | None = None) -> dict:
    """Record the image with its QA and its provenance: the raw files with their SHA-256 (from
    the convert result ``converted``, else hashed now), the MS, the calibration tables that were
    applied to its data, the imaging parameters and the software versions."""
    from .provenance import file_checksums, image_provenance

    calibration = (applied or {}).get("calibration", [])
    row = reg.get_group(group_id) or {}
    raw = (converted or {}).get("raw_files") or file_checksums(sorted(json.loads(row.get("files") or "[]")))
    params = {**_imaging_params(cfg).to_dict(), "backend_used": image.get("backend")}
    provenance = image_provenance(group_id, row.get("ms_path"), raw, calibration, params, image)
    pid = reg.register_product("image", _safe(group_id), image["pbcor_fits"], group_id=group_id,
                               qa_status=qa["qa_status"], mid_mjd=image.get("mid_mjd"),
                               metrics={**image, **qa}, provenance=provenance)
    reg.update_group(group_id, status="imaged" if qa["qa_status"] == "good" else "failed",
                     message=None if qa["qa_status"] == "good" else "; ".join(qa["reasons"]))
    return {"product_id": pid, "qa_status": qa["qa_status"], "calibration": calibration}


# -- mosaic windows ---------------------------------------------------------------
def window_name(start: datetime) -> str:
    return start.astimezone(timezone.utc).strftime("%Y-%m-%dT%H%M")


def window_state(cfg: PipelineConfig, reg: Registry, start: datetime, end: datetime) -> dict:
    """Which groups belong to a window and whether all have finished.

    Expected groups are those in the registry plus the ready groups still in
    the incoming directory (so a window never closes before ingest saw them)."""
    s, e = mjd_from_datetime(start), mjd_from_datetime(end)
    rows = {r["group_id"]: r for r in reg.groups_between(s, e)}
    pending = [g["group_id"] for g in new_ready_groups(cfg, set(rows), now=None)
               if s <= g["start_mjd"] < e]
    unfinished = [gid for gid, r in rows.items() if r["status"] not in ("imaged", "failed")] + pending
    # superseded image versions (a reprocessing replaced them) stay registered but never mosaic again
    images = [p for p in reg.products(kind="image") if p["group_id"] in rows and p["status"] != "superseded"]
    return {"groups": sorted(rows) + pending, "unfinished": sorted(unfinished),
            "images": [{"id": p["id"], "pbcor": p["path"], "pb": p["metrics"].get("pb_fits"),
                        "rms": p["metrics"].get("rms_jy"), "qa_status": p["qa_status"]} for p in images
                       if p["qa_status"] == "good"],
            "bad_images": [{"id": p["id"], "pbcor": p["path"], "qa_status": p["qa_status"]} for p in images
                           if p["qa_status"] != "good"]}


def mosaic_step(cfg: PipelineConfig, reg: Registry, start: datetime, end: datetime) -> dict:
    from .mosaic import mosaic_images
    from .provenance import mosaic_provenance

    state = window_state(cfg, reg, start, end)
    imgs = state["images"]
    if not imgs:
        raise ContimgError(cfg.images_dir, f"window {window_name(start)} has no good images to mosaic")
    name = window_name(start)
    res = mosaic_images([Path(i["pbcor"]) for i in imgs], [Path(i["pb"]) for i in imgs],
                        [float(i["rms"]) for i in imgs], cfg.mosaics_dir / f"{name}.mosaic.fits",
                        method=cfg.mosaic_method, qa_status=[i["qa_status"] for i in imgs], window=(start, end))
    mid_mjd = (mjd_from_datetime(start) + mjd_from_datetime(end)) / 2
    excluded = [i["id"] for i in state["bad_images"]]
    provenance = {**mosaic_provenance(name, imgs, excluded, {"method": res.method, "window": [start, end]}),
                  "method": res.method}
    pid = reg.register_product("mosaic", name, str(res.mosaic_fits), window=name, mid_mjd=mid_mjd,
                               qa_status="good", metrics=jsonable(res), provenance=jsonable(provenance))
    log.info("mosaic: %s (%s) from %d images, %d left out for QA, rms %.4g Jy", name, res.method, res.n_inputs,
             len(state["bad_images"]), res.rms_jy)
    return {"product_id": pid, "window": name, "mid_mjd": mid_mjd, **jsonable(res),
            "images": [i["id"] for i in imgs], "excluded_bad_qa": excluded}


def crossmatch_step(cfg: PipelineConfig, reg: Registry, mosaic: dict) -> dict:
    """Find sources (PyBDSF) in the window's mosaic, cross-match them to the reference
    catalogue with the QA numbers, and measure every reference source (forced photometry),
    which builds each source's light curve across windows."""
    from .catalog import read_catalog
    from .crossmatch import CrossmatchParams, crossmatch_image, detect, photometry_image

    fits = Path(mosaic["mosaic_fits"])
    # PyBDSF sizes its rms box to the image (a fixed 96-pixel box left boxes with no valid pixel on the
    # demo's mosaic edges, and bdsf then divides by zero); its rms map still follows the noise's rise.
    params = CrossmatchParams(snr=cfg.detection_snr, radius_arcsec=cfg.crossmatch_radius_arcsec)
    noise = mosaic.get("noise_fits")  # the mosaic's expected noise: a floor under PyBDSF's rms (find.detect)
    det = detect(fits, params.find_params(), noise_floor=Path(noise) if noise else None)
    ref = read_catalog(cfg.reference_catalog)
    out_csv = fits.with_name(fits.name.replace(".mosaic.fits", ".sources.csv"))
    res = crossmatch_image(fits, ref, params, out_csv=out_csv, detection=det)
    reg.record_sources(mosaic["product_id"], _source_rows(det.sources, res.matches))
    n_phot = reg.record_photometry(mosaic["product_id"], photometry_image(fits, ref, noise=det.noise),
                                   mid_mjd=mosaic.get("mid_mjd"))
    qa = res.qa()
    cid = reg.register_product("catalog", mosaic["window"], str(out_csv), window=mosaic["window"],
                               qa_status="good", metrics={**qa, "n_photometry": n_phot})
    log.info("crossmatch: %d detected, %d matched, median flux ratio %s, completeness(10 sigma) %s, false %s; "
             "forced photometry of %d reference sources", res.n_detected, res.n_matched, qa["median_flux_ratio"],
             qa.get("completeness_10sigma"), qa["false_fraction"], n_phot)
    return {"catalog_product_id": cid, "catalog_csv": str(out_csv), "n_photometry": n_phot, **qa}


def _source_rows(found, matches) -> list[dict]:
    """Registry rows of a product's detections with their reference match, if any."""
    by_index = {m.index: m for m in matches}
    rows = []
    for i, d in enumerate(found):
        m = by_index.get(i)
        rows.append({"ra_deg": d.ra_deg, "dec_deg": d.dec_deg, "flux_jy": d.flux_jy, "flux_err_jy": d.flux_err_jy,
                     "ref_name": m.name if m else None, "ref_flux_jy": m.expected_flux_jy if m else None,
                     "offset_arcsec": m.offset_arcsec if m else None})
    return rows


def publish_step(cfg: PipelineConfig, reg: Registry, mosaic: dict, match: dict) -> dict:
    """QA-gated move of a window's products from staging to products."""
    from .publish import publish_products

    problems = []
    if match["n_matched"] == 0:
        problems.append("no source matched the reference catalogue")
    elif not 0.5 <= (match["median_flux_ratio"] or 0) <= 2.0:
        problems.append(f"median flux ratio {match['median_flux_ratio']:.3f} outside [0.5, 2]")
    if problems:
        raise ContimgError(mosaic["mosaic_fits"], "QA gate refused publication: " + "; ".join(problems))
    staged = [Path(mosaic["mosaic_fits"]), Path(match["catalog_csv"])]
    staged += [Path(p) for p in (mosaic.get("weight_fits"), mosaic.get("noise_fits"), mosaic.get("preview_png"))
               if p and Path(p).exists()]
    dest = cfg.products_dir / mosaic["window"]
    published = publish_products(staged, dest)
    reg.mark_published(mosaic["product_id"], str(published[0]))
    reg.mark_published(match["catalog_product_id"], str(published[1]))
    log.info("publish: %d files to %s", len(published), dest)
    return {"published": [str(p) for p in published]}


# -- summary --------------------------------------------------------------------
def summary(reg: Registry) -> dict:
    groups = reg.known_groups()
    rows = [reg.get_group(g) for g in sorted(groups)]
    mosaics = reg.products(kind="mosaic", status="published")
    srcs = [s for m in mosaics for s in reg.sources(m["id"]) if s["ref_name"]]
    ratios = sorted(s["flux_jy"] / s["ref_flux_jy"] for s in srcs if s["ref_flux_jy"])
    offs = sorted(s["offset_arcsec"] for s in srcs if s["offset_arcsec"] is not None)
    return {
        "groups_seen": len(groups),
        "groups_processed": sum(1 for r in rows if r and r["status"] == "imaged"),
        "groups_failed": sum(1 for r in rows if r and r["status"] == "failed"),
        "caltables": len(reg.caltables()),
        "images": len(reg.products(kind="image")),
        "mosaics": len(reg.products(kind="mosaic")),
        "mosaics_published": len(mosaics),
        "sources_matched": len(srcs),
        "median_flux_ratio": _median(ratios),
        "median_offset_arcsec": _median(offs),
    }


# -- helpers --------------------------------------------------------------------
class _failure_recorded:
    """Context manager: record a stage failure on the group, then re-raise."""

    def __init__(self, reg: Registry, group_id: str, stage: str):
        self.reg, self.group_id, self.stage = reg, group_id, stage

    def __enter__(self):
        self.t0 = time.monotonic()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is not None:
            try:
                self.reg.update_group(self.group_id, status="failed", message=f"{self.stage}: {exc}")
            except Exception:  # the original error matters more
                log.exception("could not record the failure of %s", self.group_id)
        return False


def _converted(reg: Registry, group_id: str) -> dict:
    row = reg.get_group(group_id)
    if not row or not row["ms_path"]:
        raise ContimgError(None, f"group {group_id} has no MeasurementSet yet; convert it first")
    return row


def _safe(group_id: str) -> str:
    return group_id.replace(":", "")


def _median(xs: list[float]) -> float | None:
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


