"""Read-only views of the registry for people: the sky-products pages and their API.

The Airflow UI plugin (``plugins/contimg_airflow/ui``) serves these as JSON and
HTML; the queries live here, beside the registry, so they are tested without
Airflow and the plugin stays a thin adapter (DESIGN.md section 3).

Everything returns plain JSON-able dicts. Times are given both as MJD (what the
registry stores) and as ISO 8601 UTC (what a person reads). File access goes
through :func:`confined_path`, which only ever hands out files under the
deployment's products and staging roots.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

import sqlalchemy as sa

from .catalog import angular_distance_deg
from .registry import Registry, datetime_from_mjd, mjd_from_datetime
from .sources.variability import variability

IN_FLIGHT_STATES = ("ingested", "converted", "calibrated")  # a group not yet imaged nor failed
MAX_RADIUS_DEG = 10.0  # larger than the ~3.5 deg field; a cone is a search, not a dump
MAX_PER_PAGE = 500
PRODUCT_KINDS = ("image", "mosaic", "catalog")


class ProductAccessError(ValueError):
    """A requested file is outside the allowed roots, or is not a regular file there."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


# -- times --------------------------------------------------------------------------
def iso_from_mjd(mjd: float | None) -> str | None:
    """ISO 8601 UTC (seconds) of an MJD; None stays None."""
    if mjd is None or not math.isfinite(mjd):
        return None
    dt = datetime_from_mjd(mjd) + timedelta(microseconds=500_000)  # round to the second, not truncate
    return dt.replace(microsecond=0).isoformat()


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _iso(dt: datetime | None) -> str | None:
    dt = _utc(dt)
    return None if dt is None else dt.replace(microsecond=0).isoformat()


# -- pipeline status ------------------------------------------------------------------
def pipeline_status(reg: Registry, now: datetime | None = None) -> dict[str, Any]:
    """What an operator checks first: is data flowing, is calibration in force, what broke.

    ``now`` defaults to the wall clock; passing the data's own time answers
    "was calibration in force then" for simulated or reprocessed sessions. The
    newest image's age is always measured on the wall clock."""
    wall = datetime.now(timezone.utc)
    now = _utc(now) or wall
    groups = reg.groups_between(-math.inf, math.inf)
    in_flight = [g["group_id"] for g in groups if g["status"] in IN_FLIGHT_STATES]
    since = now - timedelta(hours=24)
    failures = [{"group_id": g["group_id"], "message": g["message"], "at": _iso(g["updated_at"])}
                for g in groups if g["status"] == "failed" and _utc(g["updated_at"]) >= since]
    failures += [{"calibration_set": s["set_name"], "message": s["reason"], "at": _iso(s["created_at"])}
                 for s in reg.calsets(status="failed") if _utc(s["created_at"]) >= since]
    return {"now": _iso(now), "groups_total": len(groups), "groups_in_flight": len(in_flight),
            "groups_in_flight_ids": in_flight, "newest_image": _newest_image(reg, wall),
            "calibration": calibration_in_force(reg, now), "failures_24h": len(failures),
            "failures": failures}


def _newest_image(reg: Registry, now: datetime) -> dict[str, Any] | None:
    p = reg.t["products"]
    q = sa.select(p).where(p.c.kind == "image").order_by(p.c.created_at.desc(), p.c.id.desc()).limit(1)
    with reg.engine.connect() as conn:
        newest = conn.execute(q).mappings().first()
    if newest is None:
        return None
    made = _utc(newest["created_at"])
    return {"id": newest["id"], "name": newest["name"], "group_id": newest["group_id"], "made_at": _iso(made),
            "age_s": round((now - made).total_seconds(), 1), "qa_status": newest["qa_status"]}


def calibration_in_force(reg: Registry, when: datetime) -> dict[str, Any]:
    """The tables a group observed at ``when`` would get, and until when they stay valid."""
    tables = reg.apply_list(mjd_from_datetime(when))
    if not any(t.table_type == "B" for t in tables):
        return {"valid": False, "sets": [], "valid_until": None, "valid_until_mjd": None}
    until = min(t.valid_to_mjd for t in tables)
    return {"valid": True, "sets": sorted({t.set_name for t in tables}),
            "tables": [{"type": t.table_type, "set": t.set_name} for t in tables],
            "valid_until": iso_from_mjd(until), "valid_until_mjd": until}


# -- products -------------------------------------------------------------------------
def product_summary(p: dict) -> dict[str, Any]:
    """The fields a gallery or table row needs (no provenance, a few QA numbers)."""
    m = p["metrics"] or {}
    qa = {k: m.get(k) for k in ("rms_jy", "peak_jy", "dynamic_range", "median_flux_ratio", "n_matched",
                               "n_detected", "completeness_10sigma", "false_fraction", "n_inputs")
          if m.get(k) is not None}
    return {"id": p["id"], "kind": p["kind"], "name": p["name"], "group_id": p["group_id"], "window": p["window"],
            "status": p["status"], "qa_status": p["qa_status"], "qa_reasons": m.get("reasons") or [],
            "mid_mjd": p["mid_mjd"], "mid_time": iso_from_mjd(p["mid_mjd"]), "version": p["version"],
            "created_at": _iso(p["created_at"]), "qa": qa, "beam_arcsec": m.get("beam_arcsec"),
            "has_preview": preview_path(p) is not None}


def list_products(reg: Registry, kind: str, status: str | None = None, page: int = 1,
                  per_page: int = 50) -> dict[str, Any]:
    """One page of products of a kind, newest observation first."""
    _check_kind(kind)
    _check_page(page, per_page)
    p = reg.t["products"]
    where = [p.c.kind == kind] + ([p.c.status == status] if status else [])
    q = (sa.select(p).where(*where).order_by(p.c.mid_mjd.desc().nulls_last(), p.c.id.desc())
         .limit(per_page).offset((page - 1) * per_page))  # paged in the database: ~300 images a day
    with reg.engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(p).where(*where)).scalar_one()
        rows = [_parsed(r) for r in conn.execute(q).mappings()]
    return {"total": total, "page": page, "per_page": per_page, "items": [product_summary(r) for r in rows]}


def get_product(reg: Registry, product_id: int) -> dict | None:
    """The registry row of one product (metrics and provenance parsed), or None."""
    p = reg.t["products"]
    with reg.engine.connect() as conn:
        row = conn.execute(sa.select(p).where(p.c.id == product_id)).mappings().first()
    return None if row is None else _parsed(row)


def _parsed(row: Any) -> dict:
    """A products row with its JSON columns parsed, as ``Registry.products`` gives them."""
    r = dict(row)
    r["metrics"] = json.loads(r["metrics"] or "{}")
    for key in ("provenance", "fingerprint"):
        r[key] = json.loads(r[key]) if r.get(key) else None
    return r


def product_detail(reg: Registry, product_id: int) -> dict | None:
    """A product with its QA numbers, provenance and cross-match table (mosaics: its sources)."""
    p = get_product(reg, product_id)
    if p is None:
        return None
    sources = [{**s, "matched": s["ref_name"] is not None,
                "flux_ratio": (s["flux_jy"] / s["ref_flux_jy"]) if s.get("ref_flux_jy") else None}
               for s in reg.sources(product_id)]
    return {**product_summary(p), "path": p["path"], "published_path": p["published_path"],
            "metrics": p["metrics"], "provenance": p["provenance"], "superseded_by": p["superseded_by"],
            "sources": sources, "inputs": _mosaic_inputs(reg, p)}


def _mosaic_inputs(reg: Registry, p: dict) -> list[dict]:
    """The images a mosaic combined (the ids its provenance lists), as summaries."""
    ids = {i for i in ((p.get("provenance") or {}).get("images") or []) if isinstance(i, int)}
    if not ids:
        return []
    t = reg.t["products"]
    with reg.engine.connect() as conn:
        rows = conn.execute(sa.select(t).where(t.c.id.in_(sorted(ids))).order_by(t.c.mid_mjd, t.c.id)).mappings()
        return [product_summary(_parsed(r)) for r in rows]


def fits_path(p: dict) -> Path:
    """The product's FITS file: the published copy when there is one (staging may be cleaned)."""
    return Path(p["published_path"] or p["path"])


def preview_path(p: dict) -> Path | None:
    """The PNG preview of an image (QA thumbnail) or mosaic, preferring the published copy."""
    m = p["metrics"] or {}
    staged = m.get("preview_png") or m.get("thumbnail")
    if not staged:
        return None
    staged = Path(staged)
    if p.get("published_path"):
        published = Path(p["published_path"]).parent / staged.name
        if published.exists():
            return published
    return staged if staged.exists() else None


# -- calibration ------------------------------------------------------------------------
def calibration_timeline(reg: Registry) -> list[dict]:
    """Every calibration set, newest first, with its validity window and QA plots found beside it."""
    out = []
    for s in reversed(reg.calsets()):
        out.append({"set_name": s["set_name"], "kind": s["kind"], "status": s["status"], "reason": s["reason"],
                    "valid_from_mjd": s["valid_from_mjd"], "valid_to_mjd": s["valid_to_mjd"],
                    "valid_from": iso_from_mjd(s["valid_from_mjd"]), "valid_to": iso_from_mjd(s["valid_to_mjd"]),
                    "calibrator": s["calibrator"], "refant": s["refant"], "base_set": s["base_set"],
                    "created_at": _iso(s["created_at"]), "qa": s["qa"],
                    "tables": [{"type": t, "path": p} for t, p in s["tables"]],
                    "plots": sorted(calibration_plots(s))})
    return out


def calibration_plots(calset: dict) -> dict[str, Path]:
    """QA plots of a set, by table type: ``<set>.B.png``/``<set>.G.png`` in the tables' directory."""
    found = {}
    for ttype, path in calset["tables"]:
        png = Path(path).parent / f"{calset['set_name']}.{ttype}.png"
        if png.exists():
            found[ttype] = png
    return found


def get_calset(reg: Registry, set_name: str) -> dict | None:
    return next((s for s in reg.calsets() if s["set_name"] == set_name), None)


# -- sources -------------------------------------------------------------------------
def cone_search(reg: Registry, ra_deg: float, dec_deg: float, radius_deg: float, page: int = 1,
                per_page: int = 50) -> dict[str, Any]:
    """Sources measured by the pipeline within ``radius_deg`` of (ra, dec), nearest first, paged.

    A source is a reference-catalogue entry with forced photometry (so it has
    a light curve); each result says how far it is, how often it was measured
    and its mean flux."""
    check_cone(ra_deg, dec_deg, radius_deg)
    _check_page(page, per_page)
    ph = reg.t["photometry"]
    q = (sa.select(ph.c.name, sa.func.avg(ph.c.ra_deg).label("ra_deg"), sa.func.avg(ph.c.dec_deg).label("dec_deg"),
                   sa.func.count().label("n_measurements"), sa.func.avg(ph.c.flux_jy).label("mean_flux_jy"),
                   sa.func.max(ph.c.mid_mjd).label("last_mjd"))
         .where(_in_box(ph.c.ra_deg, ph.c.dec_deg, ra_deg, dec_deg, radius_deg)).group_by(ph.c.name))
    with reg.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings()]
    for r in rows:
        r["n_measurements"] = int(r["n_measurements"])
        r["last_time"] = iso_from_mjd(r["last_mjd"])
    return _paged(_within(rows, ra_deg, dec_deg, radius_deg), ra_deg, dec_deg, radius_deg, page, per_page)


def detection_search(reg: Registry, ra_deg: float, dec_deg: float, radius_deg: float, page: int = 1,
                     per_page: int = 50) -> dict[str, Any]:
    """Sources found (PyBDSF) in the products within the cone, nearest first, paged.

    Unlike :func:`cone_search` this includes detections with no reference
    match: the candidates for new or transient sources. Each carries the
    product (window) it was found in and its match, if any."""
    check_cone(ra_deg, dec_deg, radius_deg)
    _check_page(page, per_page)
    s, p = reg.t["sources"], reg.t["products"]
    q = (sa.select(s.c.ra_deg, s.c.dec_deg, s.c.flux_jy, s.c.flux_err_jy, s.c.ref_name, s.c.ref_flux_jy,
                   s.c.offset_arcsec, s.c.product_id, p.c.name.label("product_name"), p.c.kind.label("product_kind"),
                   p.c.status.label("product_status"), p.c.mid_mjd)
         .join(p, p.c.id == s.c.product_id)
         .where(_in_box(s.c.ra_deg, s.c.dec_deg, ra_deg, dec_deg, radius_deg)))
    with reg.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings()]
    for r in rows:
        r["matched"] = r["ref_name"] is not None
        r["time"] = iso_from_mjd(r["mid_mjd"])
    return _paged(_within(rows, ra_deg, dec_deg, radius_deg), ra_deg, dec_deg, radius_deg, page, per_page)


def _in_box(ra_col, dec_col, ra: float, dec: float, radius: float):
    """A SQL condition holding the cone (dec band, and an RA range away from the poles): an
    index-friendly first cut; the exact great-circle cut is made afterwards in Python."""
    cond = dec_col.between(dec - radius, dec + radius)
    window = _ra_window(ra, dec, radius)
    if window is not None:
        lo, hi = window
        cond = sa.and_(cond, ra_col.between(lo, hi) if lo <= hi else sa.or_(ra_col >= lo, ra_col <= hi))
    return cond


def _paged(hits: list[dict], ra: float, dec: float, radius: float, page: int, per_page: int) -> dict[str, Any]:
    start = (page - 1) * per_page
    return {"ra_deg": ra, "dec_deg": dec, "radius_deg": radius, "total": len(hits), "page": page,
            "per_page": per_page, "pages": max(1, math.ceil(len(hits) / per_page)),
            "items": hits[start:start + per_page]}


def _ra_window(ra: float, dec: float, radius: float) -> tuple[float, float] | None:
    """RA range (deg, may wrap through 0) holding the cone; None when it reaches a pole."""
    if abs(dec) + radius >= 89.0:
        return None
    half = math.degrees(math.asin(min(1.0, math.sin(math.radians(radius)) / math.cos(math.radians(abs(dec) + radius)))))
    if half >= 180.0:
        return None
    return (ra - half) % 360.0, (ra + half) % 360.0


def _within(rows: list[dict], ra: float, dec: float, radius: float) -> list[dict]:
    if not rows:
        return []
    d = angular_distance_deg([r["ra_deg"] for r in rows], [r["dec_deg"] for r in rows], ra, dec)
    hits = [{**r, "separation_arcsec": float(x) * 3600.0} for r, x in zip(rows, d) if x <= radius]
    return sorted(hits, key=lambda r: (r["separation_arcsec"], r.get("name") or "", r.get("product_id") or 0))


def check_cone(ra_deg: float, dec_deg: float, radius_deg: float) -> None:
    """ValueError saying which of ra/dec/radius is out of range (or not a number)."""
    for name, v in (("ra", ra_deg), ("dec", dec_deg), ("radius", radius_deg)):
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number (got {v!r})")
    if not 0.0 <= ra_deg < 360.0:
        raise ValueError(f"ra {ra_deg} deg outside [0, 360)")
    if not -90.0 <= dec_deg <= 90.0:
        raise ValueError(f"dec {dec_deg} deg outside [-90, 90]")
    if not 0.0 < radius_deg <= MAX_RADIUS_DEG:
        raise ValueError(f"radius {radius_deg} deg outside (0, {MAX_RADIUS_DEG}]")


def light_curve(reg: Registry, name: str) -> dict[str, Any] | None:
    """A source's forced photometry over time with its variability (V, eta); None if never measured."""
    rows = reg.light_curve(name)
    if not rows:
        return None
    points = [{"product_id": r["product_id"], "mid_mjd": r["mid_mjd"], "time": iso_from_mjd(r["mid_mjd"]),
               "flux_jy": r["flux_jy"], "flux_err_jy": r["flux_err_jy"]} for r in rows]
    return {"name": name, "ra_deg": rows[0]["ra_deg"], "dec_deg": rows[0]["dec_deg"], "points": points,
            "variability": variability(rows)}


# -- files ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FileRoots:
    """The directories whose files may be handed out, by name (products, staging)."""

    roots: dict[str, Path]

    @classmethod
    def from_config(cls, cfg) -> "FileRoots":
        return cls({"products": Path(cfg.products_dir), "staging": Path(cfg.staging_dir)})

    def resolve(self, root: str, relative: str) -> Path:
        """The file ``relative`` under the named root, confined to that root."""
        if root not in self.roots:
            raise ProductAccessError(root, f"unknown root (one of {sorted(self.roots)})")
        if not relative or "\x00" in relative or Path(relative).is_absolute():
            raise ProductAccessError(relative, "must be a relative path inside the root")
        return confined_path(self.roots[root] / relative, [self.roots[root]])

    def check(self, path: str | Path) -> Path:
        """A registry path, confined to any of the roots (a registry row is not trusted blindly)."""
        return confined_path(path, self.roots.values())


def confined_path(path: str | Path, roots: Iterable[str | Path]) -> Path:
    """The real path of an existing regular file that lies under one of ``roots``.

    Symlinks and ``..`` are resolved first, so neither can lead outside; a
    missing file, a directory or anything outside raises ProductAccessError."""
    try:
        real = Path(path).resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError, RuntimeError, OSError):
        raise ProductAccessError(path, "no such file") from None
    for root in roots:
        try:
            real_root = Path(root).resolve(strict=True)
        except (FileNotFoundError, OSError):
            continue
        if real.is_relative_to(real_root):
            if not real.is_file():
                raise ProductAccessError(path, "not a regular file")
            return real
    raise ProductAccessError(path, "outside the products and staging directories")


# -- validation -------------------------------------------------------------------------
def _check_kind(kind: str) -> None:
    if kind not in PRODUCT_KINDS:
        raise ValueError(f"product kind {kind!r} not one of {PRODUCT_KINDS}")


def _check_page(page: int, per_page: int) -> None:
    if page < 1:
        raise ValueError(f"page {page} must be 1 or more")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise ValueError(f"per_page {per_page} outside [1, {MAX_PER_PAGE}]")
