"""Simulated skies: point sources in a declination strip, plus calibrators."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.time import Time
from astropy.utils import iers

from .. import geometry
from ..calibrators import REFERENCE_FREQ_HZ, calibrators_in_strip
from ..catalog import CatalogSource, angular_distance_deg, nvss_name

# Offline: use the bundled IERS-A table even when its predictions are older
# than astropy's 30-day limit (geometry.py disables downloads but not the age
# check, which otherwise raises for dates after the bundled table).
iers.conf.auto_max_age = None

NVSS_RMS_JY = 0.45e-3


@dataclass
class SkyModel:
    """Unresolved sources: J2000 positions (deg), flux at 1.4 GHz (Jy), alpha."""

    ra_deg: np.ndarray
    dec_deg: np.ndarray
    flux_jy: np.ndarray
    spectral_index: np.ndarray
    names: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.ra_deg = np.atleast_1d(np.asarray(self.ra_deg, dtype=float)) % 360.0
        self.dec_deg = np.atleast_1d(np.asarray(self.dec_deg, dtype=float))
        self.flux_jy = np.atleast_1d(np.asarray(self.flux_jy, dtype=float))
        self.spectral_index = np.broadcast_to(np.asarray(self.spectral_index, dtype=float), self.ra_deg.shape).copy()
        if not self.names:
            self.names = [nvss_name(r, d) for r, d in zip(self.ra_deg, self.dec_deg)]
        n = self.ra_deg.size
        if not (self.dec_deg.size == self.flux_jy.size == len(self.names) == n):
            raise ValueError("SkyModel arrays must have equal lengths")

    def __len__(self) -> int:
        return int(self.ra_deg.size)

    @classmethod
    def empty(cls) -> "SkyModel":
        return cls(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), [])

    def flux_at(self, freqs_hz: np.ndarray) -> np.ndarray:
        """Flux densities (Nsrc, Nfreq) in Jy."""
        f = np.asarray(freqs_hz, dtype=float)[None, :] / REFERENCE_FREQ_HZ
        return self.flux_jy[:, None] * f ** self.spectral_index[:, None]

    def itrs_directions(self, times: Time) -> np.ndarray:
        """ITRS unit vectors (Ntimes, Nsrc, 3) of the sources at ``times``."""
        if len(self) == 0:
            return np.zeros((np.atleast_1d(times.jd).size, 0, 3))
        return icrs_to_itrs(np.radians(self.ra_deg), np.radians(self.dec_deg), times)

    def to_catalog_sources(self) -> list[CatalogSource]:
        """The sky as reference-catalogue rows (NVSS-like nominal errors)."""
        out = []
        for name, ra, dec, s, a in zip(self.names, self.ra_deg, self.dec_deg, self.flux_jy, self.spectral_index):
            e_s = float(np.hypot(NVSS_RMS_JY, 0.03 * s))
            e_pos = float(np.clip(45.0 * NVSS_RMS_JY / s, 0.5, 10.0))  # arcsec: ~beam / SNR
            out.append(
                CatalogSource(
                    name=name, ra_deg=float(ra), dec_deg=float(dec), flux_jy=float(s), e_flux_jy=e_s,
                    e_ra_arcsec=e_pos, e_dec_arcsec=e_pos, spectral_index=float(a),
                )
            )
        return out

    def to_json(self) -> list[dict]:
        return [
            {"name": n, "ra_deg": float(r), "dec_deg": float(d), "flux_jy": float(s), "spectral_index": float(a)}
            for n, r, d, s, a in zip(self.names, self.ra_deg, self.dec_deg, self.flux_jy, self.spectral_index)
        ]

    @classmethod
    def from_json(cls, rows: list[dict]) -> "SkyModel":
        return cls(
            [r["ra_deg"] for r in rows], [r["dec_deg"] for r in rows], [r["flux_jy"] for r in rows],
            [r.get("spectral_index", -0.7) for r in rows], [r["name"] for r in rows],
        )

    def save_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))


def icrs_to_itrs(ra_rad: np.ndarray, dec_rad: np.ndarray, times: Time) -> np.ndarray:
    """ITRS unit vectors (Ntimes, Nsrc, 3): geometry.icrs_to_itrs."""
    return geometry.icrs_to_itrs(ra_rad, dec_rad, times)


def itrs_to_icrs(vec: np.ndarray, time: Time) -> tuple[float, float]:
    """ICRS (ra, dec) radians of an ITRS direction: geometry.itrs_to_icrs."""
    return geometry.itrs_to_icrs(vec, time)


def _in_ra_range(ra_deg, ra_min_deg: float, ra_max_deg: float) -> np.ndarray:
    span = (ra_max_deg - ra_min_deg) % 360.0
    if span == 0.0 and ra_max_deg != ra_min_deg:
        span = 360.0
    return ((np.asarray(ra_deg) - ra_min_deg) % 360.0) <= span


def random_strip_sky(
    ra_min_deg: float,
    ra_max_deg: float,
    dec_deg: float,
    half_width_deg: float,
    n_sources: int,
    seed: int,
    flux_min_jy: float = 0.02,
    flux_max_jy: float = 2.0,
    count_slope: float = 2.0,
    min_sep_arcmin: float = 10.0,
    include_calibrators: bool = True,
) -> SkyModel:
    """``n_sources`` random point sources in RA [min, max] (may wrap through 0)
    and Dec ``dec_deg +- half_width_deg``, uniform on the sphere.

    Fluxes follow dN/dS ~ S^-count_slope between the limits, spectral indices
    N(-0.7, 0.2). Sources are at least ``min_sep_arcmin`` apart (and that far
    from the calibrators, which are added when they lie in the strip)."""
    rng = np.random.default_rng([int(seed), 5381])
    span = (ra_max_deg - ra_min_deg) % 360.0 or 360.0
    d_lo = np.radians(max(dec_deg - half_width_deg, -90.0))
    d_hi = np.radians(min(dec_deg + half_width_deg, 90.0))

    ras: list[float] = []
    decs: list[float] = []
    fluxes: list[float] = []
    alphas: list[float] = []
    names: list[str] = []
    if include_calibrators:
        for cal in calibrators_in_strip(dec_deg, half_width_deg):
            if _in_ra_range(cal.ra_deg, ra_min_deg, ra_max_deg):
                ras.append(cal.ra_deg)
                decs.append(cal.dec_deg)
                fluxes.append(cal.flux_jy)
                alphas.append(cal.spectral_index)
                names.append(cal.name)
    n_cal = len(ras)
    min_sep = min_sep_arcmin / 60.0
    attempts = 0
    while len(ras) - n_cal < n_sources:
        attempts += 1
        if attempts > 200 * max(n_sources, 1) + 1000:
            raise ValueError(f"cannot place {n_sources} sources {min_sep_arcmin} arcmin apart in the strip")
        ra = (ra_min_deg + rng.uniform(0.0, span)) % 360.0
        dec = float(np.degrees(np.arcsin(rng.uniform(np.sin(d_lo), np.sin(d_hi)))))
        if ras and np.min(angular_distance_deg(ras, decs, ra, dec)) < min_sep:
            continue
        u = rng.uniform()
        g = 1.0 - count_slope
        if abs(g) < 1e-9:
            s = flux_min_jy * (flux_max_jy / flux_min_jy) ** u
        else:
            s = (flux_min_jy**g + u * (flux_max_jy**g - flux_min_jy**g)) ** (1.0 / g)
        ras.append(ra)
        decs.append(dec)
        fluxes.append(float(s))
        alphas.append(float(rng.normal(-0.7, 0.2)))
        names.append(nvss_name(ra, dec))
    return SkyModel(np.array(ras), np.array(decs), np.array(fluxes), np.array(alphas), names)
