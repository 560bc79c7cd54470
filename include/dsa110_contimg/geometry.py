"""Interferometer geometry shared by the simulator and the converter.

All directions are unit vectors in the Earth-fixed ITRS frame. The correlator
phases every integration to hour angle 0 at the (apparent) pointing
declination: that direction is *fixed* in ITRS, which is why a drift-scan's
uvw are constant in time. Sky positions (ICRS) are turned into ITRS
directions with astropy, which applies precession, nutation and aberration;
so simulating and converting with the same functions keeps every source at
its true sky position.

Sign convention (pyuvdata's, which ``write_ms`` maps to CASA's by
conjugating): baseline ``b = x[ant2] - x[ant1]`` and a source in direction
``s`` contributes ``S * exp(+2j*pi*nu/c * b.(s - p))`` for phase centre ``p``.
Checked against CASA: with this sign ``ft`` of the true sky model matches
the converted data (with the opposite sign it matches its conjugate, i.e.
every source mirrored through the phase centre).
"""
from __future__ import annotations

import numpy as np
from astropy import units as u
from astropy.coordinates import ICRS, ITRS, EarthLocation, SkyCoord, UnitSphericalRepresentation
from astropy.time import Time
from astropy.utils import iers

from .instrument import SITE_HEIGHT_M, SITE_LAT_DEG, SITE_LON_DEG, SPEED_OF_LIGHT

# Nothing may download at run time: use the IERS tables astropy-iers-data ships.
iers.conf.auto_download = False
iers.conf.iers_degraded_accuracy = "warn"
iers.conf.auto_max_age = None
PHASE_SIGN = +1.0


def site_location() -> EarthLocation:
    return EarthLocation.from_geodetic(SITE_LON_DEG * u.deg, SITE_LAT_DEG * u.deg, SITE_HEIGHT_M * u.m)


def enu_to_ecef_offsets(enu: np.ndarray, lat_deg: float = SITE_LAT_DEG, lon_deg: float = SITE_LON_DEG) -> np.ndarray:
    """Rotate local east/north/up offsets (N,3) into ECEF offsets (N,3)."""
    lat, lon = np.deg2rad(lat_deg), np.deg2rad(lon_deg)
    sl, cl, so, co = np.sin(lat), np.cos(lat), np.sin(lon), np.cos(lon)
    rot = np.array(
        [
            [-so, -sl * co, cl * co],
            [co, -sl * so, cl * so],
            [0.0, cl, sl],
        ]
    )
    return enu @ rot.T


def meridian_direction(dec_app_rad: float, lon_deg: float = SITE_LON_DEG) -> np.ndarray:
    """ITRS unit vector of hour angle 0 at apparent declination ``dec_app_rad``."""
    lon = np.deg2rad(lon_deg)
    c = np.cos(dec_app_rad)
    return np.array([c * np.cos(lon), c * np.sin(lon), np.sin(dec_app_rad)])


def icrs_to_itrs(ra_rad, dec_rad, times: Time) -> np.ndarray:
    """ITRS unit vectors, shape (Ntimes, Nsrc, 3), of ICRS directions.

    Directions carry no distance, so astropy treats them as infinitely far
    (no parallax) and applies precession, nutation and aberration."""
    ra = np.atleast_1d(np.asarray(ra_rad, dtype=float))
    dec = np.atleast_1d(np.asarray(dec_rad, dtype=float))
    t = Time(np.atleast_1d(times.jd), format="jd", scale="utc").reshape(-1, 1)
    sc = SkyCoord(ra=ra[None, :] * u.rad, dec=dec[None, :] * u.rad, frame=ICRS())
    itrs = sc.transform_to(ITRS(obstime=t))
    xyz = np.moveaxis(itrs.cartesian.xyz.value, 0, -1)  # (Nt, Ns, 3)
    xyz = np.broadcast_to(xyz, (t.shape[0], ra.size, 3))
    return xyz / np.linalg.norm(xyz, axis=-1, keepdims=True)


def itrs_to_icrs(vec: np.ndarray, time: Time) -> tuple[float, float]:
    """ICRS (ra, dec) in radians of one ITRS unit vector (a direction) at ``time``."""
    x, y, z = (float(c) for c in vec)
    rep = UnitSphericalRepresentation(lon=np.arctan2(y, x) * u.rad, lat=np.arcsin(z / np.sqrt(x * x + y * y + z * z)) * u.rad)
    sc = SkyCoord(ITRS(rep, obstime=time)).transform_to(ICRS())
    return float(sc.ra.rad), float(sc.dec.rad)


def uvw_basis(p: np.ndarray, pole: np.ndarray) -> np.ndarray:
    """Rows (u_hat, v_hat, w_hat) for phase centre ``p`` with ``pole`` as north.

    Broadcasts over leading axes: ``p`` and ``pole`` shaped (..., 3)."""
    east = np.cross(pole, p)
    east /= np.linalg.norm(east, axis=-1, keepdims=True)
    north = np.cross(p, east)
    return np.stack([east, north, p], axis=-2)


def baseline_uvw(ecef_offsets: np.ndarray, ant1: np.ndarray, ant2: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """uvw (metres) of baselines ant1->ant2 in ``basis`` (3,3) or (Nrow,3,3)."""
    b = ecef_offsets[ant2] - ecef_offsets[ant1]
    if basis.ndim == 2:
        return b @ basis.T
    return np.einsum("rij,rj->ri", basis, b)


def phase_factor(b_dot_ds: np.ndarray, freqs_hz: np.ndarray) -> np.ndarray:
    """exp(sign 2 pi i nu/c b.(s-p)) for path differences (m) and freqs (Hz).

    ``b_dot_ds`` shaped (Nrow,), result (Nrow, Nfreq) complex128."""
    arg = (2.0 * np.pi / SPEED_OF_LIGHT) * np.outer(b_dot_ds, freqs_hz)
    return np.exp(1j * PHASE_SIGN * arg)


RESEED_CHANNELS = 32  # exact exponentials every this many channels bound the recurrence's rounding


def point_source_sum(b_dot_ds: np.ndarray, freqs_hz: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """sum_k amps[k, f] phase_factor(b_dot_ds[:, k], f): visibilities of point sources.

    ``b_dot_ds`` (Nrow, Nsrc) path differences (m), ``freqs_hz`` (Nfreq,),
    ``amps`` (Nsrc, Nfreq) apparent fluxes; result (Nrow, Nfreq) complex128.
    For evenly spaced channels the phase factor of channel c+1 is that of
    channel c times one per-(row, source) step, so each channel costs a complex
    multiply and a matrix-vector product instead of Nrow x Nsrc exponentials
    (the exponentials dominate simulating a full-size subband)."""
    b = np.asarray(b_dot_ds, dtype=float)
    f = np.asarray(freqs_hz, dtype=float)
    out = np.empty((b.shape[0], f.size), dtype=np.complex128)
    step = np.diff(f)
    if f.size < 3 or not np.allclose(step, step[0], rtol=1e-9, atol=0.0):
        for c in range(f.size):
            out[:, c] = phase_factor(b.ravel(), f[c:c + 1]).reshape(b.shape) @ amps[:, c]
        return out
    k = (2.0 * np.pi / SPEED_OF_LIGHT) * PHASE_SIGN
    rot = np.exp(1j * k * step[0] * b)
    for c in range(f.size):
        if c % RESEED_CHANNELS == 0:
            cur = np.exp(1j * k * f[c] * b)
        else:
            cur *= rot
        out[:, c] = cur @ amps[:, c]
    return out


def angular_separation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle (rad) between unit vectors, broadcasting over leading axes."""
    dot = np.clip(np.sum(a * b, axis=-1), -1.0, 1.0)
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    return np.arctan2(cross, dot)


def icrs_pole_itrs(times: Time) -> np.ndarray:
    """ITRS direction of the ICRS north pole at each time, shape (Nt, 3)."""
    return icrs_to_itrs(np.array([0.0]), np.array([np.pi / 2]), times)[:, 0, :]
