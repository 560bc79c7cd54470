"""Simulate an observing session: groups of 16 subband files, a reference
catalogue of the simulated sky and the truth (gains, sources, parameters).

The physics (geometry.py): the correlator phases every integration to HA=0 at
the apparent pointing declination, a direction p0 fixed in ITRS, so uvw are
constant in time. A source at ITRS direction s(t) contributes, on baseline
b = x[a2] - x[a1],

    S(nu) B(sep(s, p0), nu) g_a1 conj(g_a2) exp(-2 pi i nu/c b.(s - p0))

with B the Airy power pattern of a dish pointing at p0. Thermal noise has
sigma = SEFD / sqrt(2 dnu tau) per complex component on cross-correlations;
autocorrelations are |g|^2 (SEFD + sum S B) with their own radiometer noise.
Gains multiply signal and noise alike, as in a real receiver.
"""
from __future__ import annotations

import json
import logging
import math
import time as _time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from astropy.time import Time, TimeDelta

from .. import geometry
from .. import instrument as ins
from ..calibrators import get_calibrator, transit_on, transits_in
from ..catalog import write_nvss_catalog
from .corruptions import GainModel
from .sky import SkyModel, itrs_to_icrs, random_strip_sky
from .uvh5_writer import SubbandLayout, incomplete_path, write_subband

log = logging.getLogger(__name__)

BEAM_FLOOR = 1e-4
STRIP_HALF_WIDTH_DEG = 3.0
FILE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


@dataclass(frozen=True)
class SessionResult:
    files: list[Path]
    group_timestamps: list[datetime]  # true start of each group (first integration's start)
    catalog_path: Path
    truth_path: Path  # directory holding the gains npz and the sky/parameters JSON
    n_sources: int
    calibrator_transit: datetime | None
    gains_path: Path | None = None
    sky_path: Path | None = None
    files_written: int = 0

    def to_dict(self) -> dict:
        return {
            "files": [str(p) for p in self.files],
            "group_timestamps": [t.isoformat() for t in self.group_timestamps],
            "catalog_path": str(self.catalog_path),
            "truth_path": str(self.truth_path),
            "n_sources": self.n_sources,
            "calibrator_transit": self.calibrator_transit.isoformat() if self.calibrator_transit else None,
            "gains_path": str(self.gains_path) if self.gains_path else None,
            "sky_path": str(self.sky_path) if self.sky_path else None,
            "files_written": self.files_written,
        }


# --- array and geometry ---------------------------------------------------------


@dataclass(frozen=True)
class ArrayGeometry:
    """Baselines of a preset, phased to the meridian at the apparent dec."""

    antenna_numbers: np.ndarray  # numbers (pad - 1) of the antennas with data
    ecef: np.ndarray  # (117, 3) ECEF offsets from the telescope location
    ant1: np.ndarray  # (Nbls,) antenna numbers
    ant2: np.ndarray
    idx1: np.ndarray  # (Nbls,) indices into antenna_numbers
    idx2: np.ndarray
    baselines: np.ndarray  # (Nbls, 3) ecef[ant2] - ecef[ant1]
    p0: np.ndarray  # (3,) ITRS phase centre / pointing direction
    uvw: np.ndarray  # (Nbls, 3)
    dec_app_rad: float

    @property
    def auto(self) -> np.ndarray:
        return self.ant1 == self.ant2


def array_geometry(preset: ins.Preset, dec_app_deg: float) -> ArrayGeometry:
    ants = np.array(preset.pads(), dtype=int) - 1
    ecef = geometry.enu_to_ecef_offsets(ins.pad_enu())
    i1, i2 = np.triu_indices(ants.size)  # ant1 <= ant2, autos included
    a1, a2 = ants[i1], ants[i2]
    dec_app = math.radians(dec_app_deg)
    p0 = geometry.meridian_direction(dec_app)
    basis = geometry.uvw_basis(p0, np.array([0.0, 0.0, 1.0]))
    uvw = geometry.baseline_uvw(ecef, a1, a2, basis)
    return ArrayGeometry(ants, ecef, a1, a2, i1, i2, ecef[a2] - ecef[a1], p0, uvw, dec_app)


def integration_times(group_start: datetime, n_int: int) -> Time:
    """UTC times of the integration centres of a group starting at ``group_start``."""
    t0 = Time(group_start.astimezone(timezone.utc).replace(tzinfo=None), scale="utc")
    return t0 + TimeDelta((np.arange(n_int) + 0.5) * ins.INTEGRATION_S, format="sec")


# --- visibilities ----------------------------------------------------------------


def _visibility_blocks(
    geo: ArrayGeometry,
    src_dirs: np.ndarray,  # (Ntimes, Nsrc, 3)
    sky: SkyModel,
    gains: np.ndarray,  # (Nant, Ntimes, Nfreq, Npol)
    freqs: np.ndarray,
    channel_width: float,
    noise_rng: np.random.Generator | None,
) -> Iterator[np.ndarray]:
    """Yield (Nbls, Nfreq, Npol) complex128 visibilities per integration."""
    nbl, nf, npol = geo.ant1.size, freqs.size, gains.shape[-1]
    auto = geo.auto
    cross = ~auto
    flux = sky.flux_at(freqs) if len(sky) else np.zeros((0, nf))
    sigma = ins.SEFD_JY / math.sqrt(2.0 * channel_width * ins.INTEGRATION_S)
    for it in range(src_dirs.shape[0]):
        model = np.zeros((nbl, nf), dtype=np.complex128)
        if len(sky):
            s = src_dirs[it]  # (Nsrc, 3)
            sep = geometry.angular_separation(s, geo.p0[None, :])  # (Nsrc,)
            beam = ins.airy_beam(sep[:, None] * np.ones((1, nf)), freqs[None, :])  # (Nsrc, Nf)
            # Beyond 90 deg the sin() in the Airy formula folds back: nothing there is seen.
            beam[sep > math.pi / 2] = 0.0
            keep = np.nonzero(beam.max(axis=1) >= BEAM_FLOOR)[0]
            if keep.size:
                path = geo.baselines @ (s[keep] - geo.p0[None, :]).T  # (Nbl, Nkeep) metres
                model += geometry.point_source_sum(path, freqs, flux[keep] * beam[keep])
        vis = np.repeat(model[:, :, None], npol, axis=2)
        if noise_rng is not None:
            noise = noise_rng.standard_normal((nbl, nf, npol, 2))
            vis[cross] += sigma * (noise[cross, ..., 0] + 1j * noise[cross, ..., 1])
        # autocorrelations: total power SEFD + sky, real, radiometer noise
        power = ins.SEFD_JY + model[auto].real[:, :, None]
        auto_vis = power * np.ones((1, 1, npol))
        if noise_rng is not None:
            auto_vis = auto_vis + power / math.sqrt(channel_width * ins.INTEGRATION_S) * noise[auto, ..., 0]
        vis[auto] = auto_vis
        g = gains[:, it]  # (Nant, Nf, Npol)
        vis *= g[geo.idx1] * np.conj(g[geo.idx2])
        yield vis


def simulate_group(
    out_dir: Path,
    preset: str | ins.Preset,
    group_start: datetime,
    dec_deg: float,
    sky: SkyModel,
    gains: GainModel | None = None,
    *,
    seed: int = 1,
    group_index: int = 0,
    subbands: Sequence[int] = range(ins.N_SUBBANDS),
    file_timestamps: Sequence[datetime] | None = None,
    noise: bool = True,
) -> list[Path]:
    """Write the subband files of one group (skipping complete ones).

    ``dec_deg`` is the apparent pointing declination. ``file_timestamps``
    (one per subband) name the files; default: ``group_start`` rounded down
    to the second. Returns the final paths in subband order."""
    p = ins.preset(preset) if isinstance(preset, str) else preset
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    subbands = list(subbands)
    if file_timestamps is None:
        file_timestamps = [group_start.replace(microsecond=0)] * len(subbands)
    names = [out_dir / f"{ts.astimezone(timezone.utc).strftime(FILE_TIME_FORMAT)}_sb{sb:02d}.hdf5"
             for ts, sb in zip(file_timestamps, subbands)]
    todo = [i for i, path in enumerate(names) if not path.exists()]
    if not todo:
        return names

    geo = array_geometry(p, dec_deg)
    gains = gains if gains is not None else GainModel.unity(geo.antenna_numbers)
    if not np.array_equal(gains.antenna_numbers, geo.antenna_numbers):
        raise ValueError("gain model antennas differ from the preset's antennas")
    times = integration_times(group_start, p.integrations_per_file)
    src_dirs = sky.itrs_directions(times)
    for i in todo:
        sb, path = subbands[i], names[i]
        t0 = _time.monotonic()
        freqs = ins.subband_frequencies(sb, p.channels_per_subband)
        g = gains.gains(times.mjd, freqs)
        rng = np.random.default_rng([int(seed), 104729, int(group_index), int(sb)]) if noise else None
        layout = SubbandLayout(
            times_jd=times.jd,
            freqs_hz=freqs,
            channel_width_hz=p.channel_width_hz,
            integration_s=ins.INTEGRATION_S,
            ant1=geo.ant1,
            ant2=geo.ant2,
            uvw_m=geo.uvw,
            antenna_positions=geo.ecef,
            nants_data=geo.antenna_numbers.size,
            phase_center_dec_rad=geo.dec_app_rad,
        )
        blocks = _visibility_blocks(geo, src_dirs, sky, g, freqs, p.channel_width_hz, rng)
        write_subband(path, layout, blocks)
        log.info("simulate: wrote %s (%d baselines x %d times x %d channels, %d sources) in %.1f s",
                 path.name, geo.ant1.size, times.size, freqs.size, len(sky), _time.monotonic() - t0)
    return names


# --- sessions ----------------------------------------------------------------------


def _require_utc(t: datetime) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"start must be a timezone-aware UTC datetime, got {t!r}")
    return t.astimezone(timezone.utc)


def _meridian_icrs(p0: np.ndarray, when: datetime) -> tuple[float, float]:
    ra, dec = itrs_to_icrs(p0, Time(when.replace(tzinfo=None), scale="utc"))
    return math.degrees(ra) % 360.0, math.degrees(dec)


def _beam_fwhm_deg(freq_hz: float = 1.4e9) -> float:
    return math.degrees(1.03 * ins.SPEED_OF_LIGHT / freq_hz / ins.DISH_DIAMETER_M)


def session_sky(
    preset: ins.Preset, start: datetime, end: datetime, dec_deg: float, seed: int,
    half_width_deg: float = STRIP_HALF_WIDTH_DEG,
) -> tuple[SkyModel, dict]:
    """The random sky of a session's strip and the strip's parameters.

    The strip spans the J2000 RA swept by the meridian, +-``half_width_deg``
    on the sky (so +-half_width/cos(dec) in RA) and dec +-``half_width_deg``.
    The source count keeps ``preset.n_sources`` per group field of view
    (FWHM x (FWHM + sweep of one file)) at 1.4 GHz."""
    p0 = geometry.meridian_direction(math.radians(dec_deg))
    ra0, dec_mid = _meridian_icrs(p0, start)
    ra1, _ = _meridian_icrs(p0, end)
    cosd = max(math.cos(math.radians(dec_mid)), 0.05)
    margin = min(half_width_deg / cosd, 90.0)
    sweep = (ra1 - ra0) % 360.0
    ra_min, ra_max = (ra0 - margin) % 360.0, (ra1 + margin) % 360.0
    span_ra = min(sweep + 2 * margin, 360.0)
    d_lo, d_hi = math.radians(dec_mid - half_width_deg), math.radians(dec_mid + half_width_deg)
    strip_area = math.radians(span_ra) * (math.sin(d_hi) - math.sin(d_lo)) * (180 / math.pi) ** 2
    fwhm = _beam_fwhm_deg()
    file_sweep = preset.integrations_per_file * ins.INTEGRATION_S / 86164.0905 * 360.0 * cosd
    field_area = fwhm * (fwhm + file_sweep)
    n_random = max(1, round(preset.n_sources * strip_area / field_area))
    sky = random_strip_sky(ra_min, ra_max, dec_mid, half_width_deg, n_random, seed)
    params = {
        "ra_min_deg": ra_min, "ra_max_deg": ra_max, "dec_center_j2000_deg": dec_mid,
        "half_width_deg": half_width_deg, "n_random_sources": n_random, "strip_area_deg2": strip_area,
        "field_area_deg2": field_area,
    }
    return sky, params


def file_jitter_s(seed: int, group_index: int, jitter_s: float, n: int = ins.N_SUBBANDS) -> np.ndarray:
    """Whole-second offsets of the file-name timestamps of one group."""
    if jitter_s <= 0:
        return np.zeros(n, dtype=int)
    rng = np.random.default_rng([int(seed), 7919, int(group_index)])
    return np.rint(rng.uniform(-jitter_s, jitter_s, n)).astype(int)


def simulate_session(
    out_dir: Path,
    preset: str,
    start: datetime,
    n_groups: int,
    dec_deg: float,
    seed: int = 1,
    calibrator: str | None = None,
    jitter_s: float = 20.0,
    catalog_path: Path | None = None,
) -> SessionResult:
    """Write ``n_groups`` consecutive groups of 16 subband files into ``out_dir``.

    ``dec_deg`` is the apparent pointing declination. The reference catalogue
    (NVSS layout) goes to ``catalog_path`` (default
    ``out_dir.parent / "reference_catalog.tsv"``), the truth to
    ``out_dir.parent / "truth"``. Deterministic in ``seed``; files that
    already exist complete are not rewritten."""
    p = ins.preset(preset)
    start = _require_utc(start)
    if n_groups < 1:
        raise ValueError("n_groups must be >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    file_s = p.integrations_per_file * ins.INTEGRATION_S
    group_starts = [start + timedelta(seconds=k * file_s) for k in range(n_groups)]
    end = start + timedelta(seconds=n_groups * file_s)

    t0 = _time.monotonic()
    sky, strip = session_sky(p, start, end, dec_deg, seed)
    transit = None
    if calibrator is not None:
        cal = get_calibrator(calibrator)
        if abs(cal.dec_deg - strip["dec_center_j2000_deg"]) > strip["half_width_deg"]:
            raise ValueError(
                f"calibrator {cal.name} (dec {cal.dec_deg:+.2f}) is outside the strip at dec {dec_deg:+.2f}"
            )
        found = transits_in(cal.ra_deg, start, end, dec_deg=cal.dec_deg)
        transit = found[0] if found else None
        if transit is None:
            log.warning("simulate: calibrator %s does not transit between %s and %s", cal.name, start, end)

    catalog_path = Path(catalog_path) if catalog_path is not None else out_dir.parent / "reference_catalog.tsv"
    write_nvss_catalog(sky.to_catalog_sources(), catalog_path)

    truth_dir = out_dir.parent / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    stem = start.strftime(FILE_TIME_FORMAT)
    geo_ants = np.array(p.pads(), dtype=int) - 1
    gains = GainModel.random(geo_ants, seed)
    all_times = np.concatenate([integration_times(g, p.integrations_per_file).mjd for g in group_starts])
    all_freqs = np.concatenate([ins.subband_frequencies(sb, p.channels_per_subband) for sb in range(ins.N_SUBBANDS)])
    gains_path = gains.save(truth_dir / f"{stem}_gains.npz", times_mjd=all_times, freqs_hz=all_freqs)

    files: list[Path] = []
    n_before = 0
    for k, gstart in enumerate(group_starts):
        offsets = file_jitter_s(seed, k, jitter_s)
        nominal = gstart.replace(microsecond=0)
        stamps = [nominal + timedelta(seconds=int(o)) for o in offsets]
        expected = [out_dir / f"{ts.strftime(FILE_TIME_FORMAT)}_sb{sb:02d}.hdf5" for sb, ts in enumerate(stamps)]
        n_before += sum(path.exists() for path in expected)
        files += simulate_group(out_dir, p, gstart, dec_deg, sky, gains, seed=seed, group_index=k,
                                file_timestamps=stamps)
        log.info("simulate: group %d/%d (%s) done, %.1f s elapsed", k + 1, n_groups, nominal.isoformat(),
                 _time.monotonic() - t0)

    sky_path = truth_dir / f"{stem}_sky.json"
    truth = {
        "preset": p.name, "start": start.isoformat(), "n_groups": n_groups, "dec_app_deg": dec_deg, "seed": seed,
        "jitter_s": jitter_s, "calibrator": calibrator,
        "calibrator_transit": transit.isoformat() if transit else None,
        "group_timestamps": [g.isoformat() for g in group_starts],
        "integration_s": ins.INTEGRATION_S, "integrations_per_file": p.integrations_per_file,
        "sefd_jy": ins.SEFD_JY, "beam_floor": BEAM_FLOOR, "strip": strip,
        "gains_npz": gains_path.name, "catalog_path": str(catalog_path),
        "sources": sky.to_json(),
    }
    tmp = sky_path.with_name(f".{sky_path.name}.tmp")
    tmp.write_text(json.dumps(truth, indent=1))
    tmp.replace(sky_path)
    return SessionResult(
        files=files, group_timestamps=group_starts, catalog_path=catalog_path, truth_path=truth_dir,
        n_sources=len(sky), calibrator_transit=transit, gains_path=gains_path, sky_path=sky_path,
        files_written=len(files) - n_before,
    )


def session_start_around_transit(
    calibrator_name: str, day: date | datetime, duration: timedelta | None = None
) -> datetime:
    """A whole-hour UTC start so the calibrator transits inside the session.

    Without ``duration`` this is the hour in which the calibrator transits on
    ``day`` (UTC), so any session longer than the minutes past the hour
    contains it. With ``duration``, the whole hour that puts the transit
    nearest the middle of the session while still inside it."""
    transit = transit_on(calibrator_name, day)
    floor = transit.replace(minute=0, second=0, microsecond=0)
    if duration is None:
        return floor
    best = floor
    best_off = None
    for h in range(-int(duration.total_seconds() // 3600) - 1, 1):
        s = floor + timedelta(hours=h)
        if s <= transit < s + duration:
            off = abs((transit - (s + duration / 2)).total_seconds())
            if best_off is None or off < best_off:
                best, best_off = s, off
    return best


__all__ = [
    "ArrayGeometry",
    "SessionResult",
    "array_geometry",
    "file_jitter_s",
    "integration_times",
    "session_sky",
    "session_start_around_transit",
    "simulate_group",
    "simulate_session",
    "incomplete_path",
]
