"""Cross-matching detections to a reference catalogue, with QA numbers.

Each detection is matched to its nearest reference source within a radius
(astropy ``match_to_catalog_sky``). The reference flux is scaled from the
catalogue frequency to the image frequency with the source's spectral index
(S ~ nu^alpha; the catalogue's own alpha when it has one, else a default of
-0.7, the median for optically thin synchrotron sources at GHz frequencies).

QA, all JSON-able through :meth:`CrossmatchResult.qa`:

- ``median_flux_ratio``: median of detected / expected flux over matches;
- RA and Dec offsets (detected minus reference, arcsec, RA x cos dec): median
  and rms (root mean square, so a systematic shift shows in both);
- ``completeness_<k>sigma``: of the reference sources inside the usable area
  of the image whose expected flux is at least k x the local rms there, the
  fraction with a detection within the radius (k = 10 and 5 by default);
  needs the image's noise map, else None;
- ``false_fraction``: detections with no reference source within the radius,
  over all detections.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_SPECTRAL_INDEX = -0.7
COMPLETENESS_SIGMAS = (10.0, 5.0)


def scale_flux(flux_jy: float, from_hz: float, to_hz: float, spectral_index: float) -> float:
    """Flux density at ``to_hz`` of a power law S ~ nu^alpha through ``flux_jy`` at ``from_hz``."""
    return float(flux_jy) * (float(to_hz) / float(from_hz)) ** float(spectral_index)


def spectral_index_of(ref: Any, default: float = DEFAULT_SPECTRAL_INDEX) -> float:
    """The catalogue's alpha when the row has a finite one, else ``default``."""
    alpha = getattr(ref, "spectral_index", None)
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        return default
    return alpha if math.isfinite(alpha) else default


@dataclass(frozen=True)
class Match:
    index: int  # index into the detected list
    ref_index: int  # index into the reference list
    name: str
    ra_deg: float
    dec_deg: float
    ref_ra_deg: float
    ref_dec_deg: float
    offset_arcsec: float
    dra_arcsec: float  # detected - reference, along RA on the sky (x cos dec)
    ddec_arcsec: float
    flux_jy: float
    flux_err_jy: float
    ref_flux_jy: float  # catalogue flux at its own frequency
    spectral_index: float  # used for the scaling
    expected_flux_jy: float  # scaled to the image frequency
    flux_ratio: float  # measured / expected


@dataclass(frozen=True)
class CrossmatchResult:
    matches: tuple[Match, ...]
    unmatched: tuple[int, ...]  # indices of detections without a reference counterpart
    n_detected: int
    n_reference: int
    n_matched: int
    median_flux_ratio: float
    median_offset_arcsec: float
    median_dra_arcsec: float = float("nan")
    median_ddec_arcsec: float = float("nan")
    rms_dra_arcsec: float = float("nan")
    rms_ddec_arcsec: float = float("nan")
    false_fraction: float = float("nan")
    completeness: dict[str, float | None] = field(default_factory=dict)  # "10sigma" -> fraction
    n_reference_usable: dict[str, int] = field(default_factory=dict)  # "10sigma" -> denominator
    csv_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def completeness_10sigma(self) -> float | None:
        return self.completeness.get("10sigma")

    @property
    def completeness_5sigma(self) -> float | None:
        return self.completeness.get("5sigma")

    def qa(self) -> dict[str, Any]:
        """The QA numbers alone, NaN as None (strict JSON)."""
        out: dict[str, Any] = {
            "n_detected": self.n_detected, "n_reference": self.n_reference, "n_matched": self.n_matched,
            "median_flux_ratio": self.median_flux_ratio, "median_offset_arcsec": self.median_offset_arcsec,
            "median_dra_arcsec": self.median_dra_arcsec, "median_ddec_arcsec": self.median_ddec_arcsec,
            "rms_dra_arcsec": self.rms_dra_arcsec, "rms_ddec_arcsec": self.rms_ddec_arcsec,
            "false_fraction": self.false_fraction,
        }
        for key, value in self.completeness.items():
            out[f"completeness_{key}"] = value
            out[f"n_reference_{key}"] = self.n_reference_usable.get(key)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}

    def to_dict(self, include_rows: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["csv_path"] = str(self.csv_path) if self.csv_path else None
        d["unmatched"] = list(self.unmatched)
        if not include_rows:
            d.pop("matches")
        return d


# --------------------------------------------------------------------------
def _coords(rows: Sequence[Any]):
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    return SkyCoord(np.array([r.ra_deg for r in rows], dtype=float) * u.deg,
                    np.array([r.dec_deg for r in rows], dtype=float) * u.deg)


def _nearest(a, b) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``a``, the index of the nearest of ``b`` and the separation (arcsec)."""
    idx, sep, _ = a.match_to_catalog_sky(b)
    return np.atleast_1d(idx), np.atleast_1d(sep.arcsec)


def _make_match(i: int, j: int, d: Any, r: Any, dra: float, ddec: float, sep: float, image_freq_hz: float,
                ref_freq_hz: float, default_alpha: float) -> Match:
    alpha = spectral_index_of(r, default_alpha)
    expected = scale_flux(r.flux_jy, ref_freq_hz, image_freq_hz, alpha)
    return Match(
        index=i, ref_index=j, name=str(r.name), ra_deg=float(d.ra_deg), dec_deg=float(d.dec_deg),
        ref_ra_deg=float(r.ra_deg), ref_dec_deg=float(r.dec_deg), offset_arcsec=sep, dra_arcsec=dra,
        ddec_arcsec=ddec, flux_jy=float(d.flux_jy), flux_err_jy=float(getattr(d, "flux_err_jy", float("nan"))),
        ref_flux_jy=float(r.flux_jy), spectral_index=alpha, expected_flux_jy=expected,
        flux_ratio=float(d.flux_jy) / expected if expected > 0 else float("nan"),
    )


def _match_detections(detected, reference, radius_arcsec, image_freq_hz, ref_freq_hz, default_alpha):
    if not (detected and reference):
        return [], list(range(len(detected)))
    det, ref = _coords(detected), _coords(reference)
    idx, sep = _nearest(det, ref)
    ok = sep <= radius_arcsec
    if not ok.any():
        return [], list(range(len(detected)))
    dlon, dlat = ref[idx[ok]].spherical_offsets_to(det[ok])
    matches = [
        _make_match(int(i), int(idx[i]), detected[i], reference[int(idx[i])], float(a), float(b), float(sep[i]),
                    image_freq_hz, ref_freq_hz, default_alpha)
        for i, a, b in zip(np.flatnonzero(ok), dlon.arcsec, dlat.arcsec)
    ]
    return matches, [int(i) for i in np.flatnonzero(~ok)]


def completeness(detected: Sequence[Any], reference: Sequence[Any], noise: Any, radius_arcsec: float,
                 image_freq_hz: float, ref_freq_hz: float, sigmas: Sequence[float] = COMPLETENESS_SIGMAS,
                 default_alpha: float = DEFAULT_SPECTRAL_INDEX) -> tuple[dict[str, float | None], dict[str, int]]:
    """Per k in ``sigmas``: the detected fraction of the reference sources in
    the usable area with expected flux >= k x local rms (None if there are
    none), and how many such sources there were."""
    frac: dict[str, float | None] = {}
    count: dict[str, int] = {}
    keys = [f"{k:g}sigma" for k in sigmas]
    if not reference:
        return dict.fromkeys(keys), dict.fromkeys(keys, 0)
    ref = _coords(reference)
    rms = noise.rms_at(ref.ra.deg, ref.dec.deg)
    expected = np.array([scale_flux(r.flux_jy, ref_freq_hz, image_freq_hz, spectral_index_of(r, default_alpha))
                         for r in reference])
    found = np.zeros(len(reference), bool)
    if detected:
        _, sep = _nearest(ref, _coords(detected))
        found = sep <= radius_arcsec
    with np.errstate(invalid="ignore"):
        snr = expected / rms  # NaN outside the usable area
    for key, k in zip(keys, sigmas):
        sel = snr >= k
        count[key] = int(sel.sum())
        frac[key] = float(found[sel].mean()) if sel.any() else None
    return frac, count


def _median(values: Sequence[float]) -> float:
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    return float(np.median(v)) if v.size else float("nan")


def _rms(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=float)
    return float(np.sqrt(np.mean(v ** 2))) if v.size else float("nan")


def crossmatch(
    detected: Sequence[Any],
    reference: Sequence[Any],
    radius_arcsec: float,
    ref_freq_hz: float = 1.4e9,
    image_freq_hz: float | None = None,
    spectral_index: float = DEFAULT_SPECTRAL_INDEX,
    out_csv: Path | None = None,
    noise: Any = None,
    completeness_sigmas: Sequence[float] = COMPLETENESS_SIGMAS,
) -> CrossmatchResult:
    """Match each detection to its nearest reference source within the radius.

    ``reference`` holds objects with ``name``, ``ra_deg``, ``dec_deg``,
    ``flux_jy`` (at ``ref_freq_hz``) and optionally ``spectral_index``;
    ``spectral_index`` here is the default for rows without one. The image
    frequency defaults to the detections' ``freq_hz`` (else no scaling).
    ``noise`` (a :class:`~.find.NoiseMap`) enables the completeness numbers.
    With ``out_csv`` every detection is written with its match (if any)."""
    detected, reference = list(detected), list(reference)
    if image_freq_hz is None:
        freqs = [d.freq_hz for d in detected if getattr(d, "freq_hz", None)]
        image_freq_hz = float(np.median(freqs)) if freqs else ref_freq_hz
    matches, unmatched = _match_detections(detected, reference, radius_arcsec, image_freq_hz, ref_freq_hz,
                                           spectral_index)
    if noise is not None:
        compl, n_usable = completeness(detected, reference, noise, radius_arcsec, image_freq_hz, ref_freq_hz,
                                       completeness_sigmas, spectral_index)
    else:
        compl, n_usable = {f"{k:g}sigma": None for k in completeness_sigmas}, {}
    csv_path = write_matches_csv(Path(out_csv), detected, matches) if out_csv is not None else None
    res = CrossmatchResult(
        matches=tuple(matches), unmatched=tuple(unmatched), n_detected=len(detected),
        n_reference=len(reference), n_matched=len(matches),
        median_flux_ratio=_median([m.flux_ratio for m in matches]),
        median_offset_arcsec=_median([m.offset_arcsec for m in matches]),
        median_dra_arcsec=_median([m.dra_arcsec for m in matches]),
        median_ddec_arcsec=_median([m.ddec_arcsec for m in matches]),
        rms_dra_arcsec=_rms([m.dra_arcsec for m in matches]), rms_ddec_arcsec=_rms([m.ddec_arcsec for m in matches]),
        false_fraction=len(unmatched) / len(detected) if detected else float("nan"),
        completeness=compl, n_reference_usable=n_usable, csv_path=csv_path,
        extra={"image_freq_hz": image_freq_hz, "ref_freq_hz": ref_freq_hz, "spectral_index": spectral_index,
               "radius_arcsec": radius_arcsec},
    )
    _log_summary(res, radius_arcsec)
    return res


def _log_summary(res: CrossmatchResult, radius_arcsec: float) -> None:
    q = res.qa()
    log.info("crossmatch: %d detected, %d reference, %d matched within %.1f\"; median flux ratio %s; "
             "offsets RA %s\" (rms %s), Dec %s\" (rms %s); completeness %s; false fraction %s",
             res.n_detected, res.n_reference, res.n_matched, radius_arcsec, _fmt(q["median_flux_ratio"]),
             _fmt(q["median_dra_arcsec"]), _fmt(q["rms_dra_arcsec"]), _fmt(q["median_ddec_arcsec"]),
             _fmt(q["rms_ddec_arcsec"]), {k: _fmt(v) for k, v in res.completeness.items()},
             _fmt(q["false_fraction"]))


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


# --------------------------------------------------------------------------
CSV_FIELDS = [
    "index", "ra_deg", "dec_deg", "ra_err_arcsec", "dec_err_arcsec", "flux_jy", "flux_err_jy", "peak_jy",
    "peak_err_jy", "snr", "matched", "name", "ref_ra_deg", "ref_dec_deg", "offset_arcsec", "dra_arcsec",
    "ddec_arcsec", "ref_flux_jy", "spectral_index", "expected_flux_jy", "flux_ratio",
]


def _detection_row(i: int, d: Any) -> dict[str, Any]:
    def g(name: str, fmt: str) -> str:
        v = getattr(d, name, None)
        return format(v, fmt) if v is not None else ""

    return {"index": i, "ra_deg": g("ra_deg", ".6f"), "dec_deg": g("dec_deg", ".6f"),
            "ra_err_arcsec": g("ra_err_arcsec", ".3f"), "dec_err_arcsec": g("dec_err_arcsec", ".3f"),
            "flux_jy": g("flux_jy", ".6g"), "flux_err_jy": g("flux_err_jy", ".3g"), "peak_jy": g("peak_jy", ".6g"),
            "peak_err_jy": g("peak_err_jy", ".3g"), "snr": g("snr", ".1f")}


def write_matches_csv(path: Path, detected: Sequence[Any], matches: Sequence[Match]) -> Path:
    """Every detection with its match (if any), written atomically."""
    by_index = {m.index: m for m in matches}
    rows = []
    for i, d in enumerate(detected):
        row = _detection_row(i, d)
        m = by_index.get(i)
        row["matched"] = int(m is not None)
        if m is not None:
            row.update(name=m.name, ref_ra_deg=f"{m.ref_ra_deg:.6f}", ref_dec_deg=f"{m.ref_dec_deg:.6f}",
                       offset_arcsec=f"{m.offset_arcsec:.2f}", dra_arcsec=f"{m.dra_arcsec:.2f}",
                       ddec_arcsec=f"{m.ddec_arcsec:.2f}", ref_flux_jy=f"{m.ref_flux_jy:.6g}",
                       spectral_index=f"{m.spectral_index:.3f}", expected_flux_jy=f"{m.expected_flux_jy:.6g}",
                       flux_ratio=f"{m.flux_ratio:.4f}")
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


__all__ = [
    "COMPLETENESS_SIGMAS",
    "DEFAULT_SPECTRAL_INDEX",
    "CrossmatchResult",
    "Match",
    "completeness",
    "crossmatch",
    "scale_flux",
    "spectral_index_of",
    "write_matches_csv",
]
