"""`dsa110`: one subcommand per stage, printing the stage's result as JSON.

The same library functions the Airflow operators call, for scripting,
debugging one group by hand, or reprocessing outside Airflow."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import date, datetime, timezone
from pathlib import Path

from .config import PipelineConfig
from .errors import ContimgError
from .results import jsonable


def _dt(s: str) -> datetime:
    d = datetime.fromisoformat(s.replace("Z", "+00:00"))
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)


def cmd_simulate(a, cfg):
    from .simulate import session_start_around_transit, simulate_session

    start = _dt(a.start) if a.start else session_start_around_transit(a.calibrator, date.fromisoformat(a.date))
    out = Path(a.out or cfg.incoming_dir)
    res = simulate_session(out, a.preset, start, a.groups, a.dec, seed=a.seed, calibrator=a.calibrator,
                           catalog_path=Path(a.catalog) if a.catalog else None)
    return {"files": len(res.files), "groups": [str(g) for g in res.group_timestamps], "catalog": res.catalog_path,
            "truth": res.truth_path, "n_sources": res.n_sources}


def cmd_ingest(a, cfg):
    from .ingest import find_groups, scan_incoming

    incoming = Path(a.incoming or cfg.incoming_dir)
    if a.rerecord:  # a group with its late subbands: clear its convert afterwards
        from dataclasses import replace

        from .pipeline import open_registry, rerecord_group

        reg = open_registry(a.registry or cfg.default_registry_url())
        return rerecord_group(replace(cfg, incoming_dir=incoming), reg, a.rerecord)
    groups = find_groups(incoming, tolerance_s=cfg.group_tolerance_s, timeout_s=cfg.group_timeout_s,
                         min_subbands=cfg.min_subbands)
    _, rejected = scan_incoming(incoming)
    return {"groups": groups, "rejected": [{"path": p, "reason": r} for p, r in rejected]}


def cmd_convert(a, cfg):
    from .convert import convert_group

    return convert_group([Path(f) for f in a.files], Path(a.out or cfg.ms_dir), group_id=a.group_id,
                         min_subbands=cfg.min_subbands, tolerance_s=cfg.group_tolerance_s)


def cmd_calibrate(a, cfg):
    if a.action == "solve":
        from .calibration import solve_calibration
        from .calibration.stage import solve_params
        from .calibrators import bandpass_calibrator_for

        cal = bandpass_calibrator_for(a.calibrator or cfg.bandpass_calibrator, cfg.pointing_dec_deg)
        return solve_calibration(Path(a.ms), cal, Path(a.out or cfg.caltables_dir),
                                 solve_params(cfg, {"refant": a.refant}))
    from .calibration import apply_calibration

    tables = [(Path(t).suffix.lstrip(".").upper()[:1] or "G", t) for t in a.tables]
    return apply_calibration(Path(a.ms), tables)


def cmd_image(a, cfg):
    from .imaging import ImagingParams, image_ms

    params = ImagingParams.from_dict({"backend": a.backend or cfg.imaging_backend,
                                      "niter": a.niter if a.niter is not None else cfg.imaging_niter})
    from .pipeline import imaging_catalog

    return image_ms(Path(a.ms), Path(a.out or cfg.images_dir), params, catalog=imaging_catalog(cfg))


def cmd_mosaic(a, cfg):
    from .pipeline import mosaic_step, open_registry

    return mosaic_step(cfg, open_registry(a.registry or cfg.default_registry_url()), _dt(a.start), _dt(a.end))


def cmd_crossmatch(a, cfg):
    from .crossmatch import CrossmatchParams, crossmatch_image

    out = Path(a.out) if a.out else None
    params = CrossmatchParams(snr=a.snr or cfg.detection_snr, radius_arcsec=a.radius or cfg.crossmatch_radius_arcsec)
    res = crossmatch_image(Path(a.fits), Path(a.catalog or cfg.reference_catalog), params, out_csv=out)
    return {**res.qa(), "catalog_csv": out}


def cmd_publish(a, cfg):
    from .publish import publish_products

    return {"published": publish_products([Path(f) for f in a.files], Path(a.to or cfg.products_dir))}


def cmd_registry(a, cfg):
    """Registry summary (the default), raw tables, migration, calibration sets: list and retire."""
    from .pipeline import open_registry, summary

    reg = open_registry(a.registry or cfg.default_registry_url())
    action = a.action or "summary"
    if action == "summary":
        return summary(reg)
    if action == "caltables":
        return reg.caltables()
    if action == "products":
        return reg.products()
    if action == "list":
        sets = reg.calsets(status=a.status, kind=a.kind)
        if a.json:
            return sets
        print(_calset_table(sets))
        return None
    if action == "retire":
        return _retire(reg, a.set_name, a.reason)
    if action == "show":
        shown = _show(reg, a.product)
        if a.json:
            return shown
        print(_product_text(shown))
        return None
    return {"schema_revision": reg.migrate()}


def _show(reg, product: str) -> dict:
    """One product (by id, or by name when unique) with its provenance and the products made from it."""
    rows = reg.products()
    found = [r for r in rows if str(r["id"]) == product] or [r for r in rows if r["name"] == product]
    if len(found) != 1:
        why = (f"no product with id or name {product!r}" if not found else
               f"{len(found)} products are named {product!r} (ids {[r['id'] for r in found]}); give the id")
        print(json.dumps({"error": "KeyError", "path": None,
                          "reason": f"{why}; `dsa110 registry products` lists them"}), file=sys.stderr)
        raise SystemExit(1)
    row = found[0]
    used_by = [{"id": r["id"], "kind": r["kind"], "name": r["name"]} for r in rows
               if row["id"] in ((r["provenance"] or {}).get("images") or [])]
    return {**row, "used_by": used_by}


def _product_text(p: dict) -> str:
    """A product and its provenance for people: what, where, QA, made from what, with what."""
    prov = p.get("provenance") or {}
    m = p.get("metrics") or {}
    lines = [f"product {p['id']}: {p['kind']} {p['name']} ({p['status']}, QA {p.get('qa_status') or '-'})",
             f"  path       {p['path']}"]
    if p.get("published_path"):
        lines.append(f"  published  {p['published_path']}")
    lines.append(f"  group      {p['group_id']}" if p.get("group_id") else f"  window     {p.get('window') or '-'}")
    qa = [f"{k}={m[k]:.4g}" for k in ("rms_jy", "peak_jy", "dynamic_range") if isinstance(m.get(k), (int, float))]
    if qa:
        lines.append("  QA         " + " ".join(qa))
    inputs = prov.get("inputs")
    if isinstance(inputs, dict):  # an image: the raw subband files and the MS made from them
        lines += [f"  raw        {f['path']}  sha256 {f['sha256']}" for f in inputs.get("raw_files") or []]
        if inputs.get("ms"):
            lines.append(f"  ms         {inputs['ms']}")
    elif isinstance(inputs, list):  # a mosaic: its input images' files
        lines += [f"  image {img['product_id']:<4} {f['path']}  sha256 {f['sha256']}"
                  for img in inputs for f in img.get("files") or []]
    for c in prov.get("calibration") or []:
        lines.append(f"  calibration {c.get('type')} from set {c.get('set')}: {c.get('path')}")
    if prov.get("params"):
        lines.append("  params     " + json.dumps(prov["params"], sort_keys=True, default=str))
    if prov.get("software"):
        lines.append("  software   " + " ".join(f"{k}={v}" for k, v in sorted(prov["software"].items())))
    for u in p.get("used_by") or []:
        lines.append(f"  used by    {u['kind']} {u['name']} (product {u['id']})")
    return "\n".join(lines)


def _retire(reg, set_name: str, reason: str) -> dict:
    """Retire one calibration set; an unknown name (or empty reason) exits 1 with the reason on stderr."""
    try:
        n = reg.retire_calset(set_name, reason)
    except (KeyError, ValueError) as exc:
        why = exc.args[0] if exc.args else str(exc)
        print(json.dumps({"error": type(exc).__name__, "path": None,
                          "reason": f"{why}; `dsa110 registry list` shows the registered sets"}), file=sys.stderr)
        raise SystemExit(1) from None
    retired = next(s for s in reg.calsets() if s["set_name"] == set_name)
    return {"retired": set_name, "kind": retired["kind"], "rows": n, "reason": reason,
            "tables": retired["tables"]}


def _calset_table(sets: list[dict]) -> str:
    """Calibration sets as an aligned text table, one line per set, for people."""
    from .registry import datetime_from_mjd

    def utc(mjd: float) -> str:
        return datetime_from_mjd(mjd).strftime("%Y-%m-%dT%H:%M:%SZ")

    def qa(q: dict) -> str:
        keys = (("flagged_fraction", "flagged"), ("n_solutions", "nsol"), ("peak_beam", "beam"))
        parts = [f"{label}={q[k]}" if isinstance(q[k], int) else f"{label}={q[k]:.3g}"
                 for k, label in keys if isinstance(q.get(k), (int, float))]
        return " ".join(parts + ([f"qa={q['status']}"] if q.get("status") else []))

    head = ("SET", "KIND", "STATUS", "VALID FROM (UTC)", "VALID TO (UTC)", "MJD", "CALIBRATOR", "REFANT",
            "TABLES", "QA", "NOTE")
    rows = [(s["set_name"], s["kind"], s["status"], utc(s["valid_from_mjd"]), utc(s["valid_to_mjd"]),
             f"{s['valid_from_mjd']:.5f}-{s['valid_to_mjd']:.5f}", s["calibrator"] or "-", s["refant"] or "-",
             ",".join(t for t, _ in s["tables"]), qa(s["qa"]) or "-",
             "; ".join(x for x in (s["base_set"] and f"base {s['base_set']}", s["reason"]) if x) or "")
            for s in sets]
    if not rows:
        return "no calibration sets registered"
    widths = [max(len(str(r[i])) for r in (head, *rows)) for i in range(len(head))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in (head, *rows))


def cmd_sources(a, cfg):
    """Forced-photometry light curves with their variability metrics (V, eta)."""
    from .pipeline import open_registry
    from .sources.variability import variability

    reg = open_registry(a.registry or cfg.default_registry_url())
    if a.action == "lightcurve":
        rows = reg.light_curve(a.name)
        return {"name": a.name, "variability": variability(rows), "photometry": rows}
    curves = reg.light_curves()
    out = [{"name": name, **variability(rows)} for name, rows in curves.items()]
    out = [r for r in out if r["n"] >= a.min_points]
    return sorted(out, key=lambda r: -(r["eta"] or 0.0))


def cmd_validate(a, cfg):
    """Run a proof against known truth; print each number next to its limit, then the JSON."""
    import tempfile

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="dsa110-validate-"))
    if a.what == "calibration":
        from .calibration.validate import report_lines, validate_calibration

        result = validate_calibration(work, preset=a.preset, real=not a.skip_real)
    else:
        from .imaging.validate import report_lines, validate_imaging

        result = validate_imaging(work, preset=a.preset, imaging=_key_values(a.imaging))
    for line in report_lines(result):
        print(line)
    print(f"overall: {'PASS' if result['pass'] else 'FAIL'} (work directory {work})")
    if not a.json:
        return None
    if a.what == "imaging":  # the per-product detail is in the lines above; the JSON carries the headline
        result = {k: v for k, v in result.items() if k != "products"}
    return result


def _key_values(items: list[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}`` (ImagingParams.from_dict converts the types)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--imaging wants KEY=VALUE, not {item!r}")
        out[key.strip()] = value.strip()
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dsa110", description=__doc__)
    p.add_argument("--config", help="YAML configuration file (else $CONTIMG_CONFIG, then defaults)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="write correlator-format subband files for a simulated session")
    s.add_argument("--out", help="directory for the files (default: the incoming directory)")
    s.add_argument("--preset", default="demo", choices=["tiny", "demo", "full"])
    s.add_argument("--groups", type=int, default=12)
    s.add_argument("--dec", type=float, default=55.6, help="pointing declination, degrees")
    s.add_argument("--calibrator", default="0834+555")
    s.add_argument("--date", default="2026-01-15", help="day whose calibrator transit the session covers")
    s.add_argument("--start", help="explicit session start (ISO, UTC) instead of --date")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--catalog", help="where to write the reference catalogue")
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("ingest", help="list the subband groups found in the incoming directory")
    s.add_argument("--incoming")
    s.add_argument("--rerecord", metavar="GROUP_ID",
                   help="record the group again with every file of it now in incoming (late subbands); "
                        "then clear its run's convert task to reprocess it")
    s.add_argument("--registry", help="registry URL (default: the configuration's)")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("convert", help="convert one group's subband files to a MeasurementSet")
    s.add_argument("files", nargs="+")
    s.add_argument("--out")
    s.add_argument("--group-id")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("calibrate", help="solve calibration on a calibrator MS, or apply tables")
    s.add_argument("action", choices=["solve", "apply"])
    s.add_argument("ms")
    s.add_argument("--calibrator")
    s.add_argument("--refant")
    s.add_argument("--out")
    s.add_argument("--tables", nargs="*", default=[], help="tables to apply, in order (apply)")
    s.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("image", help="image one MeasurementSet (primary-beam corrected FITS)")
    s.add_argument("ms")
    s.add_argument("--out")
    s.add_argument("--backend", choices=["auto", "tclean", "wsclean"])
    s.add_argument("--niter", type=int)
    s.set_defaults(func=cmd_image)

    s = sub.add_parser("mosaic", help="mosaic the registered images of a time window")
    s.add_argument("--start", required=True)
    s.add_argument("--end", required=True)
    s.add_argument("--registry", help="SQLAlchemy URL of the registry")
    s.set_defaults(func=cmd_mosaic)

    s = sub.add_parser("crossmatch", help="find sources in a FITS image and match the reference catalogue")
    s.add_argument("fits")
    s.add_argument("--catalog")
    s.add_argument("--radius", type=float)
    s.add_argument("--snr", type=float)
    s.add_argument("--out", help="CSV of matches")
    s.set_defaults(func=cmd_crossmatch)

    s = sub.add_parser("publish", help="move staged products into the products directory")
    s.add_argument("files", nargs="+")
    s.add_argument("--to")
    s.set_defaults(func=cmd_publish)

    s = sub.add_parser("sources", help="light curves of reference sources across mosaics; variability")
    s.add_argument("action", choices=["lightcurve", "variability"])
    s.add_argument("name", nargs="?", help="reference source name (lightcurve)")
    s.add_argument("--min-points", type=int, default=2, help="variability: sources measured at least this often")
    s.add_argument("--registry", help="SQLAlchemy URL of the registry")
    s.set_defaults(func=cmd_sources)

    s = sub.add_parser("validate", help="measure a stage against known truth (simulated and real data)")
    s.add_argument("what", choices=["calibration", "imaging"])
    s.add_argument("--preset", default="full", choices=["tiny", "demo", "full"],
                   help="simulator preset of the simulated proof (full = the real instrument's size)")
    s.add_argument("--work", help="work directory (default: a new temporary directory)")
    s.add_argument("--skip-real", action="store_true", help="calibration: skip the real-data (NGC5921) proof")
    s.add_argument("--imaging", action="append", default=[], metavar="KEY=VALUE",
                   help="imaging: an ImagingParams field other than its default (repeatable), e.g. weighting=uniform")
    s.add_argument("--json", action="store_true", help="print the numbers as one JSON object, last line")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("registry", help="inspect the registry (default: summary); list or retire calibration sets")
    s.add_argument("--registry", help="SQLAlchemy URL of the registry")
    s.set_defaults(func=cmd_registry)
    url = argparse.ArgumentParser(add_help=False)  # --registry also after the action; SUPPRESS keeps one given before
    url.add_argument("--registry", default=argparse.SUPPRESS, help="SQLAlchemy URL of the registry")
    rsub = s.add_subparsers(dest="action", metavar="ACTION")
    for name, text in (("summary", "counts and median QA numbers (the default)"), ("caltables", "every table, raw"),
                       ("products", "every product, raw"), ("migrate", "upgrade the schema; print its revision")):
        rsub.add_parser(name, parents=[url], help=text)
    r = rsub.add_parser("list", parents=[url], help="calibration sets, oldest first")
    r.add_argument("--status", choices=["active", "retired", "failed"])
    r.add_argument("--kind", choices=["bandpass", "gains"])
    r.add_argument("--json", action="store_true", help="print a JSON list instead of the table")
    r = rsub.add_parser("show", parents=[url], help="one product with its provenance (inputs and their "
                        "sha256, calibration applied, parameters, software versions) and what used it")
    r.add_argument("product", help="product id (or its name, when unique)")
    r.add_argument("--json", action="store_true", help="print the JSON instead of text")
    r = rsub.add_parser("retire", parents=[url], help="take a calibration set out of use")
    r.add_argument("set_name")
    r.add_argument("--reason", required=True, help="why (recorded with the set)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = PipelineConfig.load(args.config)
        result = args.func(args, cfg)
    except ContimgError as exc:
        print(json.dumps({"error": type(exc).__name__, "path": exc.path, "reason": exc.reason}), file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user named does not exist or cannot be read
        print(json.dumps({"error": type(exc).__name__, "path": exc.filename, "reason": exc.strerror}),
              file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(jsonable(result), indent=None, default=str))
    if isinstance(result, dict) and result.get("pass") is False:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
