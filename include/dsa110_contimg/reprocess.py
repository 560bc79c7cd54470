"""Reprocessing a mosaic window (what an Airflow backfill of the mosaic DAG does).

A backfill run of a window:
1. plans: for each group observed in the window, compares the inputs its
   current image was made from (its *fingerprint*: the raw files' names,
   sizes and mtimes, the calibration tables applied, the imaging
   parameters) with the inputs it would be made from now (the calibration
   valid at the group's time may have changed, a raw file may have been
   replaced, the run's imaging Params may differ). Equal fingerprints are
   reused, unless the backfill asks for ``reprocess="all"``; an image with no
   recorded fingerprint is reprocessed, since nothing says how it was made;
2. reprocesses the others from their raw files: convert, apply the
   calibration valid at that time, image, QA, register as a new image version
   (its own files under ``images/<group>/v<N>/``);
3. mosaics the window's current images, cross-matches and publishes the
   result as version N+1 of the window's products, to
   ``products/<window>/v<N+1>/``;
4. only once that version has passed the publish QA gate and its files are
   in place, marks the previous versions (mosaic, catalogue and the images it
   replaced) ``superseded``, pointing at their successors. Nothing is deleted:
   a version that fails QA leaves the previous one current.

Version 1 is what the normal (scheduled) runs make: product name = the
window (or the group), files in ``products/<window>/``. Version N >= 2 is
named ``<window>.v<N>`` (``<group>.v<N>`` for images).

Plain functions of the configuration and the registry, like ``pipeline``;
the Airflow operators only call them.
"""
from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime
from pathlib import Path

from .config import PipelineConfig
from .errors import ContimgError
from .registry import Registry, mjd_from_datetime
from .results import jsonable

log = logging.getLogger(__name__)

REPROCESS_CHOICES = ("changed", "all")


# -- fingerprints -----------------------------------------------------------------
def imaging_choices(cfg: PipelineConfig) -> dict:
    """The imaging parameters a run images with (exactly what ``pipeline.image_step`` uses), as JSON values."""
    from .pipeline import _imaging_params

    return json.loads(json.dumps(_imaging_params(cfg).to_dict(), sort_keys=True, default=str))


def raw_files_state(files: list[str]) -> list[list]:
    """[[name, size, mtime_ns]] of a group's raw files, by name. A missing file is an error:
    a group cannot be reprocessed from raw files that are gone."""
    out = []
    for f in files:
        p = Path(f)
        try:
            st = p.stat()
        except FileNotFoundError as exc:
            raise ContimgError(p, "raw subband file is missing; the group cannot be reprocessed") from exc
        out.append([p.name, int(st.st_size), int(st.st_mtime_ns)])
    return sorted(out)


def _calibration_list(calibration: list[dict]) -> list[list[str]]:
    """[[type, set, path]] in apply order, from [{"type", "set", "path"}] as apply_step reports it."""
    return [[str(c["type"]), str(c["set"]), str(c["path"])] for c in calibration]


def image_fingerprint(cfg: PipelineConfig, reg: Registry, group_id: str,
                      calibration: list[dict] | None = None) -> dict:
    """The inputs an image of ``group_id`` is (or would now be) made from.

    ``calibration`` is what was applied ([{"type", "set", "path"}]); None
    looks up the tables valid at the group's mid-time now (raises
    NoCalibrationError when none is)."""
    row = reg.get_group(group_id)
    if row is None:
        raise ContimgError(None, f"group {group_id} is not registered")
    if calibration is None:
        from .calibration.registry_io import tables_with_sets_for

        if row["mid_mjd"] is None:
            raise ContimgError(None, f"group {group_id} was never converted; its mid-time is unknown")
        calibration = [{"type": t, "path": p, "set": s} for t, p, s in tables_with_sets_for(reg, row["mid_mjd"])]
    return {"files": raw_files_state(json.loads(row["files"])), "calibration": _calibration_list(calibration),
            "imaging": imaging_choices(cfg)}


def fingerprint_digest(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint_changes(old: dict | None, new: dict) -> list[str]:
    """What differs between two fingerprints, in words ([] when equal)."""
    if not old:
        return ["no fingerprint recorded for the current image"]
    out = []
    if old.get("files") != new["files"]:
        before = {f[0]: f[1:] for f in old.get("files", [])}
        after = {f[0]: f[1:] for f in new["files"]}
        names = sorted(n for n in set(before) | set(after) if before.get(n) != after.get(n))
        out.append(f"raw files changed: {', '.join(names)}")
    if old.get("calibration") != new["calibration"]:
        sets = lambda fp: sorted({c[1] for c in fp.get("calibration", [])})  # noqa: E731
        out.append(f"calibration changed: {sets(old)} -> {sets(new)}")
    if old.get("imaging") != new["imaging"]:
        keys = sorted(k for k in set(old.get("imaging", {})) | set(new["imaging"])
                      if old.get("imaging", {}).get(k) != new["imaging"].get(k))
        out.append("imaging parameters changed: " + ", ".join(
            f"{k} {old.get('imaging', {}).get(k)!r} -> {new['imaging'].get(k)!r}" for k in keys))
    return out


# -- versions -------------------------------------------------------------------
def versioned_name(base: str, version: int) -> str:
    """Product name of a version: version 1 keeps the plain name."""
    return base if version == 1 else f"{base}.v{version}"


def version_dir(base_dir: Path, window: str, version: int) -> Path:
    """Where a window's version is published: products/<window>/ for 1, products/<window>/v<N>/ after."""
    return Path(base_dir) / window if version == 1 else Path(base_dir) / window / f"v{version}"


def current_image(reg: Registry, group_id: str) -> dict | None:
    """The group's image in force: the newest version not superseded."""
    imgs = [p for p in reg.products(kind="image") if p["group_id"] == group_id and p["status"] != "superseded"]
    return max(imgs, key=lambda p: (p["version"], p["id"])) if imgs else None


def next_version(reg: Registry, kind: str, window: str | None = None, group_id: str | None = None) -> int:
    rows = [p for p in reg.products(kind=kind)
            if (window is None or p["window"] == window) and (group_id is None or p["group_id"] == group_id)]
    return max((p["version"] for p in rows), default=0) + 1


def window_name(start: datetime) -> str:
    from .pipeline import window_name as name

    return name(start)


# -- plan -------------------------------------------------------------------------
def plan_window(cfg: PipelineConfig, reg: Registry, start: datetime, end: datetime, reprocess: str = "changed") -> dict:
    """Decide, per group of the window, whether its current image is reused or remade.

    Returns {"window", "mosaic_version", "reuse": [{group_id, image_id, version}],
    "reprocess": [{group_id, version, reasons}]}."""
    if reprocess not in REPROCESS_CHOICES:
        raise ValueError(f"reprocess must be one of {REPROCESS_CHOICES}, not {reprocess!r}")
    name = window_name(start)
    groups = reg.groups_between(mjd_from_datetime(start), mjd_from_datetime(end))
    reuse, redo = [], []
    for g in groups:
        gid = g["group_id"]
        img = current_image(reg, gid)
        if img is None:
            reasons = ["no image"]
        elif reprocess == "all":
            reasons = ["reprocess=all"]
        else:
            try:
                reasons = fingerprint_changes(img["fingerprint"], image_fingerprint(cfg, reg, gid))
            except ContimgError as exc:
                reasons = [str(exc)]
        if reasons:
            redo.append({"group_id": gid, "version": next_version(reg, "image", group_id=gid), "reasons": reasons})
        else:
            reuse.append({"group_id": gid, "image_id": img["id"], "version": img["version"]})
    plan = {"window": name, "mosaic_version": next_version(reg, "mosaic", window=name), "reprocess_mode": reprocess,
            "reuse": reuse, "reprocess": redo}
    log.info("reprocess plan for window %s (reprocess=%s): %d groups reused, %d to reprocess %s; "
             "mosaic version %d", name, reprocess, len(reuse), len(redo),
             {r["group_id"]: r["reasons"] for r in redo}, plan["mosaic_version"])
    return plan


# -- group ------------------------------------------------------------------------
def reprocess_group(cfg: PipelineConfig, reg: Registry, group_id: str, version: int) -> dict:
    """Remake one group's image from its raw files as image version ``version``:
    convert, apply the calibration valid at its time, image, QA, register with
    its fingerprint. Gains are not solved again; the sets in force are applied."""
    from .calibration.stage import apply_step
    from .imaging import image_ms
    from .pipeline import _failure_recorded, _imaging_params, _safe, convert_step, imaging_catalog, qa_image

    convert_step(cfg, reg, group_id)
    applied = apply_step(cfg, reg, group_id)
    row = reg.get_group(group_id)
    params = _imaging_params(cfg)
    safe = _safe(group_id)
    with _failure_recorded(reg, group_id, "image"):
        res = image_ms(Path(row["ms_path"]), cfg.images_dir / safe / f"v{version}", params, name=safe,
                       catalog=imaging_catalog(cfg))
    image = jsonable(res)
    qa = qa_image(cfg, image)
    fp = image_fingerprint(cfg, reg, group_id, calibration=applied["calibration"])
    pid = reg.register_product("image", versioned_name(safe, version), image["pbcor_fits"], group_id=group_id,
                               qa_status=qa["qa_status"], mid_mjd=image.get("mid_mjd"), metrics={**image, **qa},
                               provenance={"calibration": applied["calibration"]}, version=version, fingerprint=fp)
    reg.update_group(group_id, status="imaged" if qa["qa_status"] == "good" else "failed",
                     message=None if qa["qa_status"] == "good" else "; ".join(qa["reasons"]))
    log.info("reprocess: %s image version %d (%s), rms %.4g Jy, fingerprint %s", group_id, version, qa["qa_status"],
             image["rms_jy"], fingerprint_digest(fp))
    return {"group_id": group_id, "product_id": pid, "version": version, "qa_status": qa["qa_status"],
            "pbcor_fits": image["pbcor_fits"], "fingerprint": fingerprint_digest(fp)}


# -- mosaic / crossmatch / publish of a new version ---------------------------------------
def mosaic_version_step(cfg: PipelineConfig, reg: Registry, start: datetime, end: datetime) -> dict:
    """Mosaic the window's current images (each group's newest version) as the window's next version."""
    from .mosaic import mosaic_images

    name = window_name(start)
    version = next_version(reg, "mosaic", window=name)
    groups = reg.groups_between(mjd_from_datetime(start), mjd_from_datetime(end))
    current = [img for img in (current_image(reg, g["group_id"]) for g in groups) if img is not None]
    good = [i for i in current if i["qa_status"] == "good"]
    if not good:
        raise ContimgError(cfg.images_dir, f"window {name} has no good images to mosaic")
    product = versioned_name(name, version)
    res = mosaic_images([Path(i["path"]) for i in good], [Path(i["metrics"]["pb_fits"]) for i in good],
                        [float(i["metrics"]["rms_jy"]) for i in good], cfg.mosaics_dir / f"{product}.mosaic.fits",
                        method=cfg.mosaic_method, qa_status=[i["qa_status"] for i in good], window=(start, end))
    mid_mjd = (mjd_from_datetime(start) + mjd_from_datetime(end)) / 2
    pid = reg.register_product("mosaic", product, str(res.mosaic_fits), window=name, mid_mjd=mid_mjd,
                               qa_status="good", metrics=jsonable(res), version=version,
                               provenance={"images": [i["id"] for i in good], "method": res.method,
                                           "image_versions": {i["group_id"]: i["version"] for i in good},
                                           "excluded_bad_qa": [i["id"] for i in current if i["qa_status"] != "good"]})
    log.info("mosaic: %s version %d (%s) from %d images", name, version, res.method, res.n_inputs)
    return {"product_id": pid, "window": name, "version": version, "product_name": product, "mid_mjd": mid_mjd,
            **jsonable(res), "images": [i["id"] for i in good],
            "excluded_bad_qa": [i["id"] for i in current if i["qa_status"] != "good"]}


def crossmatch_version_step(cfg: PipelineConfig, reg: Registry, mosaic: dict) -> dict:
    """Cross-match a mosaic version; its catalogue is registered as the same version."""
    from .pipeline import crossmatch_step

    # crossmatch_step names the catalogue after mosaic["window"]: give it the versioned name, then file
    # the row under the real window with its version.
    res = crossmatch_step(cfg, reg, {**mosaic, "window": mosaic["product_name"]})
    reg.set_product_fields(res["catalog_product_id"], window=mosaic["window"], version=mosaic["version"])
    return {**res, "version": mosaic["version"]}


def publish_version_step(cfg: PipelineConfig, reg: Registry, mosaic: dict, match: dict) -> dict:
    """QA-gate, publish the version to products/<window>/v<N>/, then supersede the older versions.

    The QA gate is the one of ``pipeline.publish_step``. Only after the new
    files are in place and registered as published are the previous
    versions marked superseded (one transaction); their files stay."""
    from .publish import publish_products, publication_problems

    problems = publication_problems(match)
    if problems:
        raise ContimgError(mosaic["mosaic_fits"], "QA gate refused publication of version "
                           f"{mosaic['version']}: " + "; ".join(problems) + "; the previous version stays current")
    staged = [Path(mosaic["mosaic_fits"]), Path(match["catalog_csv"])]
    staged += [Path(p) for p in (mosaic.get("weight_fits"), mosaic.get("noise_fits"), mosaic.get("preview_png"))
               if p and Path(p).exists()]
    dest = version_dir(cfg.products_dir, mosaic["window"], mosaic["version"])
    published = publish_products(staged, dest)
    reg.mark_published(mosaic["product_id"], str(published[0]))
    reg.mark_published(match["catalog_product_id"], str(published[1]))
    replaced = superseded_by_version(reg, mosaic["window"], mosaic["product_id"], match["catalog_product_id"])
    n = reg.supersede(replaced)
    log.info("publish: %s version %d, %d files to %s; %d older products superseded", mosaic["window"],
             mosaic["version"], len(published), dest, n)
    return {"published": [str(p) for p in published], "version": mosaic["version"],
            "superseded": {str(k): v for k, v in replaced.items()}}


def superseded_by_version(reg: Registry, window: str, mosaic_id: int, catalog_id: int) -> dict[int, int]:
    """{old product id: new id}: the window's older mosaics and catalogues, and the older
    image versions of the groups whose image the new mosaic used."""
    out: dict[int, int] = {}
    products = reg.products()
    by_id = {p["id"]: p for p in products}
    for p in products:
        if p["window"] == window and p["status"] != "superseded":
            if p["kind"] == "mosaic" and p["id"] != mosaic_id:
                out[p["id"]] = mosaic_id
            elif p["kind"] == "catalog" and p["id"] != catalog_id:
                out[p["id"]] = catalog_id
    used = [by_id[i] for i in (by_id[mosaic_id]["provenance"] or {}).get("images", []) if i in by_id]
    for img in used:
        for p in products:
            if p["kind"] == "image" and p["group_id"] == img["group_id"] and p["status"] != "superseded" \
                    and p["version"] < img["version"]:
                out[p["id"]] = img["id"]
    return out


def record_image_fingerprint(cfg: PipelineConfig, reg: Registry, group_id: str, product_id: int,
                             calibration: list[dict]) -> dict | None:
    """Record on a just-registered image the inputs it was made from (the normal group run's
    register step), so a later backfill can reuse it. A raw file gone missing since the image
    was made is logged, not raised: the image itself is fine."""
    try:
        fp = image_fingerprint(cfg, reg, group_id, calibration=calibration)
    except ContimgError as exc:
        log.warning("no fingerprint recorded for the image of %s: %s", group_id, exc)
        return None
    reg.set_product_fields(product_id, fingerprint=fp)
    return fp
