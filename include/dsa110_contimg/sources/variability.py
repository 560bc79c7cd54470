"""Variability metrics of one source's light curve (its measurements across mosaics).

- V, the modulation index: std(S) / mean(S), sample standard deviation
  (ddof=1); the fractional rms variation, independent of the errors.
- eta, the reduced chi-square about the weighted mean:
  eta = 1/(N-1) sum_i w_i (S_i - S_w)^2, w_i = 1/sigma_i^2,
  S_w = sum w_i S_i / sum w_i. A constant source whose errors are right has
  eta ~ 1; a variable one (or one with underestimated errors) has eta >> 1.

Both need at least two measurements; with fewer they are None.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np


def _series(rows: Iterable[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Fluxes and errors of the rows with a finite flux (error NaN when missing)."""
    flux, err = [], []
    for r in rows:
        s = r.get("flux_jy")
        if s is None or not math.isfinite(float(s)):
            continue
        e = r.get("flux_err_jy")
        flux.append(float(s))
        err.append(float(e) if e is not None else math.nan)
    return np.asarray(flux, dtype=float), np.asarray(err, dtype=float)


def modulation_index(flux: np.ndarray) -> float | None:
    """V = std(S, ddof=1) / mean(S); None for fewer than 2 points or a zero mean."""
    if flux.size < 2:
        return None
    mean = float(flux.mean())
    return float(flux.std(ddof=1)) / mean if mean != 0 else None


def eta_statistic(flux: np.ndarray, err: np.ndarray) -> float | None:
    """Weighted reduced chi-square about the weighted mean; None unless N >= 2
    and every error is finite and positive."""
    if flux.size < 2 or not np.all(np.isfinite(err) & (err > 0)):
        return None
    w = 1.0 / err ** 2
    mean_w = float((w * flux).sum() / w.sum())
    return float((w * (flux - mean_w) ** 2).sum() / (flux.size - 1))


def variability(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """{"n", "V", "eta", "mean_flux_jy", "weighted_mean_flux_jy"} of a light
    curve: rows with ``flux_jy`` and ``flux_err_jy`` (e.g.
    ``Registry.light_curve(name)``)."""
    flux, err = _series(rows)
    out: dict[str, Any] = {"n": int(flux.size), "V": modulation_index(flux), "eta": eta_statistic(flux, err),
                           "mean_flux_jy": float(flux.mean()) if flux.size else None,
                           "weighted_mean_flux_jy": None}
    if flux.size and np.all(np.isfinite(err) & (err > 0)):
        w = 1.0 / err ** 2
        out["weighted_mean_flux_jy"] = float((w * flux).sum() / w.sum())
    return out


__all__ = ["eta_statistic", "modulation_index", "variability"]
