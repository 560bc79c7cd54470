"""Calibrator table shipped with the project, and meridian-transit times.

The transit arithmetic is pure python/numpy (no astropy) because the Airflow
scheduler imports it to decide when the calibrator groups arrive. It uses:

* the Earth rotation angle and the IAU 2006 GMST polynomial (UT1 ~ UTC, so
  the result carries the |UT1-UTC| < 0.9 s error),
* IAU 1976 precession of the J2000 position to the mean equator of date,
* the dominant nutation terms (equation of the equinoxes and nutation in RA),
* annual aberration from a low-precision solar longitude.

Together these give the apparent hour angle to well under a second of time,
which is what "the source is on the meridian" means for a drift scan.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

from .errors import CatalogError
from .instrument import SITE_LON_DEG

DEFAULT_TABLE = Path(__file__).with_name("data") / "calibrators.csv"
REFERENCE_FREQ_HZ = 1.4e9

_JD_UNIX_EPOCH = 2440587.5
_J2000 = 2451545.0
_TT_MINUS_UTC_S = 69.184  # 37 leap seconds + 32.184 s (valid since 2017)
_ARCSEC = math.pi / (180.0 * 3600.0)
# Sidereal rate: radians of hour angle per second of UT.
_SIDEREAL_RATE = 2.0 * math.pi * 1.00273781191135448 / 86400.0
_SIDEREAL_DAY_S = 2.0 * math.pi / _SIDEREAL_RATE


@dataclass(frozen=True)
class Calibrator:
    """A compact calibrator: J2000 position (deg) and flux density at 1.4 GHz."""

    name: str
    ra_deg: float
    dec_deg: float
    flux_jy: float
    spectral_index: float = 0.0

    def flux_at(self, freq_hz):
        """Flux density (Jy) at ``freq_hz`` (scalar or array): S (nu/1.4 GHz)^alpha."""
        return self.flux_jy * (freq_hz / REFERENCE_FREQ_HZ) ** self.spectral_index


def load_calibrators(path: str | Path | None = None) -> list[Calibrator]:
    """Read a calibrator CSV (name, ra_deg, dec_deg, flux_jy, spectral_index, ...)."""
    path = Path(path) if path is not None else DEFAULT_TABLE
    if path == DEFAULT_TABLE:
        return list(_load_default())
    return _read_table(path)


@lru_cache(maxsize=1)
def _load_default() -> tuple[Calibrator, ...]:
    return tuple(_read_table(DEFAULT_TABLE))


def _read_table(path: Path) -> list[Calibrator]:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise CatalogError(path, f"cannot read calibrator table: {exc.strerror or exc}") from exc
    out = []
    for i, row in enumerate(rows, start=2):
        try:
            out.append(
                Calibrator(
                    name=row["name"].strip(),
                    ra_deg=float(row["ra_deg"]),
                    dec_deg=float(row["dec_deg"]),
                    flux_jy=float(row["flux_jy"]),
                    spectral_index=float(row.get("spectral_index") or 0.0),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CatalogError(path, f"line {i}: malformed calibrator row ({exc})") from exc
    return out


def get_calibrator(name: str, path: str | Path | None = None) -> Calibrator:
    """The calibrator called ``name`` (case-insensitive); KeyError if unknown."""
    for cal in load_calibrators(path):
        if cal.name.lower() == name.strip().lower():
            return cal
    known = ", ".join(c.name for c in load_calibrators(path))
    raise KeyError(f"unknown calibrator {name!r}; known: {known}")


def calibrators_in_strip(dec_deg: float, half_width_deg: float, path: str | Path | None = None) -> list[Calibrator]:
    """Calibrators whose declination is within ``half_width_deg`` of ``dec_deg``."""
    return [c for c in load_calibrators(path) if abs(c.dec_deg - dec_deg) <= half_width_deg]


STRIP_HALF_WIDTH_DEG = 1.5  # ~ the primary beam's half-power radius plus pointing slack


def bandpass_calibrator_for(name: str, dec_deg: float, half_width_deg: float = STRIP_HALF_WIDTH_DEG,
                            path: str | Path | None = None) -> Calibrator:
    """The bandpass calibrator of the strip at ``dec_deg``: ``name``, or with
    ``name='auto'`` the brightest table calibrator within ``half_width_deg``.

    Raises KeyError when ``name`` is unknown or no calibrator lies in the strip."""
    if name.strip().lower() != "auto":
        return get_calibrator(name, path)
    strip = calibrators_in_strip(dec_deg, half_width_deg, path)
    if not strip:
        raise KeyError(f"no calibrator in the table lies within {half_width_deg} deg of dec {dec_deg}; "
                       "set bandpass_calibrator explicitly")
    return max(strip, key=lambda c: c.flux_jy)


def transits_between(start: datetime, end: datetime, dec_deg: float,
                     half_width_deg: float = STRIP_HALF_WIDTH_DEG,
                     path: str | Path | None = None) -> list[tuple[Calibrator, datetime]]:
    """(calibrator, transit) for every table calibrator in the strip transiting in [start, end)."""
    out = [(c, t) for c in calibrators_in_strip(dec_deg, half_width_deg, path)
           for t in transits_in(c.ra_deg, start, end, dec_deg=c.dec_deg)]
    return sorted(out, key=lambda ct: ct[1])


# --- time and sidereal arithmetic -------------------------------------------


def _require_utc(t: datetime, what: str) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime (UTC), got naive {t!r}")
    return t.astimezone(timezone.utc)


def datetime_to_jd(t: datetime) -> float:
    """Julian date (UTC) of an aware datetime."""
    t = _require_utc(t, "time")
    return _JD_UNIX_EPOCH + t.timestamp() / 86400.0


def jd_to_datetime(jd: float) -> datetime:
    """Aware UTC datetime of a Julian date (microsecond resolution)."""
    seconds = (jd - _JD_UNIX_EPOCH) * 86400.0
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=round(seconds * 1e6))


def gmst_rad(jd_utc: float) -> float:
    """Greenwich mean sidereal time (rad), IAU 2006, taking UT1 = UTC."""
    du = jd_utc - _J2000
    era = 2.0 * math.pi * ((0.7790572732640 + 0.00273781191135448 * du + du) % 1.0)
    t = (jd_utc + _TT_MINUS_UTC_S / 86400.0 - _J2000) / 36525.0
    poly = (0.014506 + 4612.156534 * t + 1.3915817 * t**2 - 0.00000044 * t**3 - 0.000029956 * t**4) * _ARCSEC
    return (era + poly) % (2.0 * math.pi)


def _apparent_ra_and_gast(ra_deg: float, dec_deg: float, jd_utc: float) -> tuple[float, float]:
    """(apparent RA of date, Greenwich apparent sidereal time), both radians."""
    t = (jd_utc + _TT_MINUS_UTC_S / 86400.0 - _J2000) / 36525.0
    ra, dec = math.radians(ra_deg), math.radians(dec_deg)
    # IAU 1976 precession J2000 -> mean equator and equinox of date.
    zeta = (2306.2181 * t + 0.30188 * t**2 + 0.017998 * t**3) * _ARCSEC
    z = (2306.2181 * t + 1.09468 * t**2 + 0.018203 * t**3) * _ARCSEC
    theta = (2004.3109 * t - 0.42665 * t**2 - 0.041833 * t**3) * _ARCSEC
    a = math.cos(dec) * math.sin(ra + zeta)
    b = math.cos(theta) * math.cos(dec) * math.cos(ra + zeta) - math.sin(theta) * math.sin(dec)
    c = math.sin(theta) * math.cos(dec) * math.cos(ra + zeta) + math.cos(theta) * math.sin(dec)
    ra_m = math.atan2(a, b) + z
    dec_m = math.asin(max(-1.0, min(1.0, c)))
    # Dominant nutation terms (arcsec).
    omega = math.radians(125.04452 - 1934.136261 * t)
    l_sun = math.radians(280.4665 + 36000.7698 * t)
    l_moon = math.radians(218.3165 + 481267.8813 * t)
    dpsi = (-17.20 * math.sin(omega) - 1.32 * math.sin(2 * l_sun) - 0.23 * math.sin(2 * l_moon) + 0.21 * math.sin(2 * omega)) * _ARCSEC
    deps = (9.20 * math.cos(omega) + 0.57 * math.cos(2 * l_sun) + 0.10 * math.cos(2 * l_moon) - 0.09 * math.cos(2 * omega)) * _ARCSEC
    eps = math.radians(23.439291 - 0.0130042 * t)
    tan_d = math.tan(dec_m)
    d_ra_nut = (math.cos(eps) + math.sin(eps) * math.sin(ra_m) * tan_d) * dpsi - math.cos(ra_m) * tan_d * deps
    # Annual aberration (Meeus 23.3 without the e-terms).
    m_sun = math.radians(357.52911 + 35999.05029 * t)
    lam = l_sun + math.radians(1.914602 * math.sin(m_sun) + 0.019993 * math.sin(2 * m_sun))
    kappa = 20.49552 * _ARCSEC
    d_ra_ab = -kappa * (math.cos(ra_m) * math.cos(lam) * math.cos(eps) + math.sin(ra_m) * math.sin(lam)) / math.cos(dec_m)
    ra_app = ra_m + d_ra_nut + d_ra_ab
    gast = gmst_rad(jd_utc) + dpsi * math.cos(eps)
    return ra_app, gast


def hour_angle_rad(ra_deg: float, dec_deg: float, when: datetime, lon_deg: float = SITE_LON_DEG) -> float:
    """Apparent hour angle (rad, wrapped to [-pi, pi)) of a J2000 position at OVRO."""
    jd = datetime_to_jd(when)
    ra_app, gast = _apparent_ra_and_gast(ra_deg, dec_deg, jd)
    ha = gast + math.radians(lon_deg) - ra_app
    return (ha + math.pi) % (2.0 * math.pi) - math.pi


def _refine_transit(ra_deg: float, dec_deg: float, guess_jd: float, lon_deg: float) -> float:
    jd = guess_jd
    for _ in range(4):
        ra_app, gast = _apparent_ra_and_gast(ra_deg, dec_deg, jd)
        ha = (gast + math.radians(lon_deg) - ra_app + math.pi) % (2.0 * math.pi) - math.pi
        step = ha / _SIDEREAL_RATE / 86400.0
        jd -= step
        if abs(step) * 86400.0 < 1e-4:
            break
    return jd


def transits_in(
    ra_deg: float, start: datetime, end: datetime, dec_deg: float = 0.0, lon_deg: float = SITE_LON_DEG
) -> list[datetime]:
    """Meridian transits at OVRO of J2000 ``ra_deg`` (``dec_deg``) in [start, end).

    ``dec_deg`` only matters through precession/nutation/aberration (a few
    seconds of time at high declination), so pass it when you know it."""
    start = _require_utc(start, "start")
    end = _require_utc(end, "end")
    jd0 = datetime_to_jd(start)
    ra_app, gast = _apparent_ra_and_gast(ra_deg, dec_deg, jd0)
    ha0 = (gast + math.radians(lon_deg) - ra_app) % (2.0 * math.pi)  # [0, 2pi): time since last transit
    guess = jd0 + ((2.0 * math.pi - ha0) % (2.0 * math.pi)) / _SIDEREAL_RATE / 86400.0
    out: list[datetime] = []
    # Step back one day so a transit just after ``start`` is never skipped by the wrap.
    guess -= _SIDEREAL_DAY_S / 86400.0
    jd_end = datetime_to_jd(end)
    while guess < jd_end + 0.01:
        jd = _refine_transit(ra_deg, dec_deg, guess, lon_deg)
        if jd0 <= jd < jd_end and (not out or (jd - datetime_to_jd(out[-1])) * 86400.0 > 3600.0):
            out.append(jd_to_datetime(jd))
        guess = jd + _SIDEREAL_DAY_S / 86400.0
    return out


def next_transit(ra_deg: float, after: datetime, dec_deg: float = 0.0, lon_deg: float = SITE_LON_DEG) -> datetime:
    """First meridian transit at OVRO at or after ``after``."""
    after = _require_utc(after, "after")
    found = transits_in(ra_deg, after, after + timedelta(days=1.01), dec_deg=dec_deg, lon_deg=lon_deg)
    return found[0]


def calibrator_transits(name: str, start: datetime, end: datetime) -> list[datetime]:
    """Transits of the named calibrator in [start, end)."""
    cal = get_calibrator(name)
    return transits_in(cal.ra_deg, start, end, dec_deg=cal.dec_deg)


def transit_on(name: str, day: date | datetime) -> datetime:
    """The first transit of calibrator ``name`` on the UTC date ``day``."""
    if isinstance(day, datetime):
        day = _require_utc(day, "day").date()
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    return calibrator_transits(name, start, start + timedelta(days=1))[0]
