"""Reference catalogue I/O: the NVSS (VizieR VIII/65) layout, a plain CSV and
the simulator's truth JSON.

The cross-match stage reads whatever catalogue a user points it at; the
simulator writes its sky in the NVSS layout so the same reader serves both,
and its truth file (``truth/<start>_sky.json``, which also holds each
source's spectral index) can be read as a catalogue too.

NVSS layout (tab-separated, one header line)::

    NVSS  RAJ2000  DEJ2000  e_RAJ2000  e_DEJ2000  S1.4  e_S1.4  MajAxis  MinAxis  PA

RA as "hh mm ss.ss", Dec as "+dd mm ss.s", position errors in seconds of time
(RA) and arcsec (Dec), flux densities in mJy, axes in arcsec, PA in degrees.
VizieR exports may carry a units line and a dashes line after the header,
'#' comment lines before it and more columns (l_MajAxis, Field, ...); those
are skipped. An optional ``spectral_index`` (or ``alpha``) column is read
when present; NVSS itself has none, so its rows carry ``spectral_index``
None and the cross-match uses its default.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import CatalogError

ALPHA_COLUMNS = ("spectral_index", "alpha")
NVSS_COLUMNS = ("NVSS", "RAJ2000", "DEJ2000", "e_RAJ2000", "e_DEJ2000", "S1.4", "e_S1.4", "MajAxis", "MinAxis", "PA")


@dataclass(frozen=True)
class CatalogSource:
    """One catalogue entry. Positions J2000 degrees, fluxes Jy at 1.4 GHz.

    ``e_ra_arcsec`` is the RA error in arcsec of RA (the NVSS ``e_RAJ2000``
    seconds of time x 15); axes are deconvolved sizes in arcsec."""

    name: str
    ra_deg: float
    dec_deg: float
    flux_jy: float
    e_flux_jy: float = 0.0
    e_ra_arcsec: float = 0.0
    e_dec_arcsec: float = 0.0
    major_arcsec: float = 0.0
    minor_arcsec: float = 0.0
    pa_deg: float = 0.0
    spectral_index: float | None = None  # None: the catalogue gives none


# --- sexagesimal -----------------------------------------------------------


def format_ra(ra_deg: float) -> str:
    """'hh mm ss.ss' of a right ascension in degrees."""
    total = round((ra_deg % 360.0) / 15.0 * 3600.0, 2)  # seconds of time, 0.01 s
    if total >= 86400.0:
        total -= 86400.0
    h = int(total // 3600)
    m = int((total - h * 3600) // 60)
    s = total - h * 3600 - m * 60
    return f"{h:02d} {m:02d} {s:05.2f}"


def format_dec(dec_deg: float) -> str:
    """'+dd mm ss.s' of a declination in degrees."""
    sign = "-" if dec_deg < 0 else "+"
    total = round(abs(dec_deg) * 3600.0, 1)  # arcsec, 0.1"
    d = int(total // 3600)
    m = int((total - d * 3600) // 60)
    s = total - d * 3600 - m * 60
    return f"{sign}{d:02d} {m:02d} {s:04.1f}"


def parse_ra(text: str) -> float:
    """Degrees of 'hh mm ss.ss' (also 'hh:mm:ss.ss')."""
    parts = text.replace(":", " ").split()
    if len(parts) != 3:
        raise ValueError(f"RA {text!r} is not 'hh mm ss.ss'")
    h, m, s = (float(p) for p in parts)
    if not (0 <= h < 24 and 0 <= m < 60 and 0 <= s < 60):
        raise ValueError(f"RA {text!r} out of range")
    return 15.0 * (h + m / 60.0 + s / 3600.0)


def parse_dec(text: str) -> float:
    """Degrees of '+dd mm ss.s' (also '+dd:mm:ss.s')."""
    t = text.strip()
    parts = t.replace(":", " ").split()
    if len(parts) != 3:
        raise ValueError(f"Dec {text!r} is not '+dd mm ss.s'")
    sign = -1.0 if parts[0].startswith("-") else 1.0
    d, m, s = abs(float(parts[0])), float(parts[1]), float(parts[2])
    if not (d <= 90 and 0 <= m < 60 and 0 <= s < 60):
        raise ValueError(f"Dec {text!r} out of range")
    return sign * (d + m / 60.0 + s / 3600.0)


def nvss_name(ra_deg: float, dec_deg: float) -> str:
    """NVSS-style designation 'hhmmss.s+ddmmss' (J2000)."""
    ra = format_ra(ra_deg).split()
    dec = format_dec(dec_deg).split()
    ra_s = f"{float(ra[2]):04.1f}"
    if ra_s == "60.0":  # a rounding edge; keep the name readable
        ra_s = "59.9"
    return f"{ra[0]}{ra[1]}{ra_s}{dec[0]}{dec[1]}{int(float(dec[2])):02d}"


# --- writing -----------------------------------------------------------------


def _fmt(x: float, nd: int) -> str:
    return f"{x:.{nd}f}"


def write_nvss_catalog(sources: Iterable[CatalogSource], path: str | Path) -> Path:
    """Write ``sources`` in the NVSS (VIII/65) tab-separated layout, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(NVSS_COLUMNS)]
    for s in sources:
        lines.append(
            "\t".join(
                [
                    s.name,
                    format_ra(s.ra_deg),
                    format_dec(s.dec_deg),
                    _fmt(s.e_ra_arcsec / 15.0, 2),
                    _fmt(s.e_dec_arcsec, 1),
                    _fmt(s.flux_jy * 1e3, 1),
                    _fmt(s.e_flux_jy * 1e3, 1),
                    _fmt(s.major_arcsec, 1),
                    _fmt(s.minor_arcsec, 1),
                    _fmt(s.pa_deg, 1),
                ]
            )
        )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# --- reading -----------------------------------------------------------------


def _float_or_zero(text: str) -> float:
    text = text.strip()
    return float(text) if text else 0.0


def _read_nvss(path: Path, lines: list[str], header_idx: int) -> list[CatalogSource]:
    header = [h.strip() for h in lines[header_idx].split("\t")]
    col = {name: i for i, name in enumerate(header)}
    missing = [c for c in ("RAJ2000", "DEJ2000", "S1.4") if c not in col]
    if missing:
        raise CatalogError(path, f"NVSS header lacks column(s) {', '.join(missing)}")
    out = []
    for lineno, line in enumerate(lines[header_idx + 1 :], start=header_idx + 2):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.rstrip("\n").split("\t")
        if set(fields[0].strip()) <= {"-", ""} and len(fields) > 1 and set(fields[1].strip()) <= {"-"}:
            continue  # VizieR dashes line
        if len(fields) < len(header):
            raise CatalogError(path, f"line {lineno}: {len(fields)} fields, header has {len(header)}")
        if fields[col["RAJ2000"]].strip() in ("h:m:s", '"h:m:s"') or fields[col["S1.4"]].strip() == "mJy":
            continue  # VizieR units line
        try:
            ra = parse_ra(fields[col["RAJ2000"]])
            dec = parse_dec(fields[col["DEJ2000"]])

            def get(name: str) -> float:
                return _float_or_zero(fields[col[name]]) if name in col else 0.0

            name = fields[col["NVSS"]].strip() if "NVSS" in col else nvss_name(ra, dec)
            alpha_col = next((c for c in ALPHA_COLUMNS if c in col), None)
            alpha = fields[col[alpha_col]].strip() if alpha_col else ""
            out.append(
                CatalogSource(
                    name=name or nvss_name(ra, dec),
                    ra_deg=ra,
                    dec_deg=dec,
                    flux_jy=float(fields[col["S1.4"]]) / 1e3,
                    e_flux_jy=get("e_S1.4") / 1e3,
                    e_ra_arcsec=get("e_RAJ2000") * 15.0,
                    e_dec_arcsec=get("e_DEJ2000"),
                    major_arcsec=get("MajAxis"),
                    minor_arcsec=get("MinAxis"),
                    pa_deg=get("PA"),
                    spectral_index=float(alpha) if alpha else None,
                )
            )
        except ValueError as exc:
            raise CatalogError(path, f"line {lineno}: {exc}") from exc
    return out


def _read_csv(path: Path, text: str) -> list[CatalogSource]:
    reader = csv.DictReader(text.splitlines())
    fields = set(reader.fieldnames or [])
    need = {"ra_deg", "dec_deg", "flux_jy"}
    if not need <= fields:
        raise CatalogError(path, f"CSV catalogue lacks column(s) {', '.join(sorted(need - fields))}")
    out = []
    for lineno, row in enumerate(reader, start=2):
        try:
            ra, dec = float(row["ra_deg"]), float(row["dec_deg"])
            if not (-90.0 <= dec <= 90.0):
                raise ValueError(f"dec_deg {dec} out of range")
            out.append(
                CatalogSource(
                    name=(row.get("name") or "").strip() or nvss_name(ra, dec),
                    ra_deg=ra % 360.0,
                    dec_deg=dec,
                    flux_jy=float(row["flux_jy"]),
                    e_flux_jy=_float_or_zero(row.get("e_flux_jy") or ""),
                    spectral_index=float(row["spectral_index"]) if row.get("spectral_index") else None,
                )
            )
        except (TypeError, ValueError) as exc:
            raise CatalogError(path, f"line {lineno}: {exc}") from exc
    return out


def _read_json(path: Path, text: str) -> list[CatalogSource]:
    """The simulator's truth file: {"sources": [{name, ra_deg, dec_deg, flux_jy, spectral_index}]}
    (or the bare list)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(path, f"not valid JSON: {exc}") from exc
    rows = doc.get("sources") if isinstance(doc, dict) else doc
    if not isinstance(rows, list):
        raise CatalogError(path, "JSON catalogue has no 'sources' list")
    out = []
    for i, row in enumerate(rows):
        try:
            ra, dec = float(row["ra_deg"]), float(row["dec_deg"])
            if not (-90.0 <= dec <= 90.0):
                raise ValueError(f"dec_deg {dec} out of range")
            alpha = row.get("spectral_index")
            out.append(CatalogSource(name=str(row.get("name") or nvss_name(ra, dec)), ra_deg=ra % 360.0,
                                     dec_deg=dec, flux_jy=float(row["flux_jy"]),
                                     spectral_index=None if alpha is None else float(alpha)))
        except (KeyError, TypeError, ValueError) as exc:
            raise CatalogError(path, f"source {i}: {exc!r}") from exc
    return out


def read_catalog(path: str | Path) -> list[CatalogSource]:
    """Read an NVSS-layout TSV, a CSV (name, ra_deg, dec_deg, flux_jy[,
    spectral_index]) or the simulator's truth JSON.

    Raises :class:`CatalogError` naming the file for a missing, empty or
    malformed catalogue."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CatalogError(path, "catalogue file does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(path, f"cannot read catalogue: {exc}") from exc
    if text.lstrip().startswith(("{", "[")):
        return _read_json(path, text)
    lines = text.splitlines()
    header_idx = next((i for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#")), None)
    if header_idx is None:
        raise CatalogError(path, "catalogue file is empty")
    header = lines[header_idx]
    if "\t" in header and "RAJ2000" in header:
        return _read_nvss(path, lines, header_idx)
    if "," in header and "ra_deg" in header:
        return _read_csv(path, "\n".join(lines[header_idx:]))
    raise CatalogError(
        path, "unrecognised catalogue layout (expected an NVSS tab-separated header or a CSV with ra_deg,dec_deg,flux_jy)"
    )


# --- selection -----------------------------------------------------------------


def angular_distance_deg(ra1, dec1, ra2, dec2):
    """Great-circle distance (deg) between positions in degrees (broadcasts)."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(x, dtype=float)) for x in (ra1, dec1, ra2, dec2))
    sdlat = np.sin((dec2 - dec1) / 2.0)
    sdlon = np.sin((ra2 - ra1) / 2.0)
    a = sdlat**2 + np.cos(dec1) * np.cos(dec2) * sdlon**2
    return np.degrees(2.0 * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0))))


def cone(sources: Sequence[CatalogSource], ra: float, dec: float, radius_deg: float) -> list[CatalogSource]:
    """Sources within ``radius_deg`` of (ra, dec) degrees, nearest first."""
    if not sources:
        return []
    d = angular_distance_deg([s.ra_deg for s in sources], [s.dec_deg for s in sources], ra, dec)
    order = np.argsort(d, kind="stable")
    return [sources[i] for i in order if d[i] <= radius_deg]


def separation_arcsec(a: CatalogSource, b: CatalogSource) -> float:
    return float(angular_distance_deg(a.ra_deg, a.dec_deg, b.ra_deg, b.dec_deg) * 3600.0)


__all__ = [
    "CatalogSource",
    "NVSS_COLUMNS",
    "angular_distance_deg",
    "cone",
    "format_dec",
    "format_ra",
    "nvss_name",
    "parse_dec",
    "parse_ra",
    "read_catalog",
    "write_nvss_catalog",
]
