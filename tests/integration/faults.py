"""The fault suites' common parts: what counts as a lost product, and the fault report.

Every fault test injects its faults into a real deployment, lets the session
finish, then calls :func:`audit` on what the pipeline left behind and
:func:`record` one row per fault. ``tests/conftest.py`` prints the rows as a
table at the end of the run (fault, injections, survived, products lost), and
each test asserts its own rows lost nothing, so a loss fails the suite."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# Names of the in-progress copies the stages write before an atomic rename
# (convert: ``<group>.ms.tmp-<host>-<pid>``; catalogues, configs: ``.<name>.<pid>.tmp``).
PARTIAL_MARKERS = (".tmp-", ".tmp", ".partial")
CURRENT = ("staged", "published")  # product statuses that are not superseded or failed


@dataclass
class Audit:
    """What a finished session left: each list names the offending group, window or path."""

    lost: list[str] = field(default_factory=list)  # an expected product missing or unreadable
    partial: list[str] = field(default_factory=list)  # an in-progress copy left behind
    duplicates: list[str] = field(default_factory=list)  # two current rows for one product

    @property
    def ok(self) -> bool:
        return not (self.lost or self.partial or self.duplicates)


@dataclass(frozen=True)
class FaultRow:
    fault: str
    injections: int
    survived: int
    products_lost: int


REPORT: list[FaultRow] = []


def record(fault: str, injections: int, survived: int, products_lost: int) -> FaultRow:
    """Add a row to the report printed at the end of the run (``tests/conftest.py``)."""
    row = FaultRow(fault, injections, survived, products_lost)
    REPORT.append(row)
    return row


def report_table(rows: list[FaultRow] | None = None) -> str:
    rows = REPORT if rows is None else rows
    width = max([len("fault")] + [len(r.fault) for r in rows])
    lines = [f"{'fault':<{width}}  injections  survived  products lost"]
    lines += [f"{r.fault:<{width}}  {r.injections:>10}  {r.survived:>8}  {r.products_lost:>13}" for r in rows]
    total = sum(r.products_lost for r in rows)
    lines.append(f"{'total':<{width}}  {sum(r.injections for r in rows):>10}  "
                 f"{sum(r.survived for r in rows):>8}  {total:>13}")
    return "\n".join(lines)


def _readable_fits(path: Path) -> str | None:
    """None if ``path`` is a FITS image with finite pixels; else why not."""
    import numpy as np
    from astropy.io import fits

    try:
        with fits.open(path) as hdul:
            data = hdul[0].data
    except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
        return f"unreadable ({type(exc).__name__}: {exc})"
    if data is None or not np.isfinite(data).any():
        return "no finite pixels"
    return None


def _readable_ms(path: Path) -> str | None:
    """None if ``path`` is a MeasurementSet with rows; else why not."""
    from casatools import table

    tb = table()
    try:
        tb.open(str(path))
        n = tb.nrows()
    except Exception as exc:  # noqa: BLE001
        return f"unreadable ({type(exc).__name__}: {exc})"
    finally:
        tb.close()
    return None if n > 0 else "no rows"


def _check_products(reg, kind: str, key: str, expected: list[str], audit: Audit) -> None:
    """One current, readable ``kind`` product per expected group (key ``group_id``) or window."""
    current = [p for p in reg.products(kind=kind) if p["status"] in CURRENT]
    counts = Counter(p[key] for p in current)
    for value in expected:
        if counts[value] == 0:
            audit.lost.append(f"{kind} of {value}: not registered")
        elif counts[value] > 1:
            audit.duplicates.append(f"{kind} of {value}: {counts[value]} current rows")
    for p in current:
        for path in {p["path"], p["published_path"]} - {None}:
            why = _readable_fits(Path(path)) if kind in ("image", "mosaic") else (
                None if Path(path).is_file() and Path(path).stat().st_size > 0 else "missing or empty")
            if why:
                audit.lost.append(f"{kind} {p['name']} at {path}: {why}")


def audit(registry_url: str, data_dir: Path, group_ids: list[str], windows: list[str] | None = None,
          raw_files: list[str] | None = None) -> Audit:
    """Check the products of a finished session against what it should have made.

    Lost: a group not imaged or its MeasurementSet unreadable; an image of each
    group, and a published mosaic and catalogue of each of ``windows``, missing
    or unreadable; a raw file gone from where it landed. Duplicates: more than
    one current product for one group or window. Partial: an in-progress copy
    left anywhere under ``data_dir``."""
    from dsa110_contimg.pipeline import open_registry

    reg = open_registry(registry_url)
    out = Audit()
    for gid in group_ids:
        g = reg.get_group(gid)
        if g is None or g["status"] != "imaged":
            out.lost.append(f"group {gid}: {'not registered' if g is None else g['status']} "
                            f"({(g or {}).get('message')})")
        elif not g["ms_path"] or (why := _readable_ms(Path(g["ms_path"]))):
            out.lost.append(f"MeasurementSet of {gid} at {g['ms_path']}: {why if g['ms_path'] else 'no path'}")
    _check_products(reg, "image", "group_id", group_ids, out)
    for kind in ("mosaic", "catalog"):
        _check_products(reg, kind, "window", list(windows or []), out)
        for p in reg.products(kind=kind, status="staged"):
            if p["window"] in (windows or []):
                out.lost.append(f"{kind} {p['name']}: staged, never published")
    out.lost += [f"raw file {f}: gone" for f in raw_files or [] if not Path(f).is_file()]
    out.partial = sorted(str(p) for p in Path(data_dir).rglob("*")
                         if any(m in p.name for m in PARTIAL_MARKERS))
    return out
