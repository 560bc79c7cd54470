"""Bright-source subtraction with the time- and frequency-dependent beam.

Why: a DSA-110 dish stays pointed at the meridian while the sky drifts by
~0.7 deg (at dec +55) during a 5-minute group, so an off-axis source's
apparent flux changes by up to a factor two within the group, and across the
13 % band as well. One image has one point-spread function, which cannot
describe such a source: CLEAN leaves, and then models, its mismatch as lines
of false components along the array's E-W and N-S arms at ~0.5-1 % of the
source's apparent flux. Subtracting each bright source from the visibilities
with its exact apparent flux per integration and channel (the same Airy
beam as the primary-beam correction) removes that structure at its origin;
the imager then sees only the fainter sky, and the subtracted sources are
restored into the image at their fitted positions and fluxes.

The geometry is the converter's (convert.compute_rephasing): the MS is
phased to a fixed ICRS centre whose ITRS direction p(t) moves, and a source
at ITRS direction s(t) has the path difference b.(s - p) = u l + v m +
w (n - 1) with (l, m, n) the coordinates of s in the (east, north, p) basis
of each integration (north = the ICRS pole), so the MS's own UVW serve.

Each source's flux density at 1.4 GHz, spectral index and position are
fitted to the visibilities (Gauss-Newton on the Stokes I data phased to the
source and averaged over each subband's channels); a catalogue gives only
the starting point and the choice of which sources are bright enough."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import geometry
from ..calibrators import REFERENCE_FREQ_HZ
from ..instrument import SPEED_OF_LIGHT, airy_beam

log = logging.getLogger(__name__)

ARCSEC = math.pi / (180.0 * 3600.0)
FIT_CHANNELS = 192  # channels averaged per fit sample (a quarter of the band); the source is at the phase centre then


@dataclass(frozen=True)
class BrightSource:
    """A point source: J2000 position (deg), flux density at 1.4 GHz (Jy), spectral index."""

    name: str
    ra_deg: float
    dec_deg: float
    flux_jy: float
    spectral_index: float = -0.7


@dataclass(frozen=True)
class VisGeometry:
    """What the model needs of one MS: per-row uvw and time index, channel frequencies."""

    uvw_m: np.ndarray  # (Nrow, 3)
    time_index: np.ndarray  # (Nrow,) index into times_mjd
    times_mjd: np.ndarray  # (Nt,)
    freqs_hz: np.ndarray  # (Nchan,)
    phase_ra_rad: float
    phase_dec_rad: float
    pointing_dec_rad: float
    phase_sign: float = 1.0  # exp(sign 2 pi i nu/c (u l + v m + w (n - 1))): the converter's MS (measured)

    def frames(self) -> tuple[np.ndarray, np.ndarray]:
        """(Nt, 3, 3) uvw bases in ITRS per time and the (3,) pointing direction."""
        from astropy.time import Time

        t = Time(self.times_mjd, format="mjd", scale="utc")
        p = geometry.icrs_to_itrs(self.phase_ra_rad, self.phase_dec_rad, t)[:, 0, :]
        basis = geometry.uvw_basis(p, geometry.icrs_pole_itrs(t))
        return basis, geometry.meridian_direction(self.pointing_dec_rad)


@dataclass
class SourceTerms:
    """One source's per-row path (m) and per-(time, channel) apparent-flux shape."""

    path_m: np.ndarray  # (Nrow,) b.(s - p)
    dpath_m: np.ndarray  # (2, Nrow) d path / d(ra cos dec, dec) per radian
    beam: np.ndarray  # (Nt, Nchan) Airy power beam


def source_terms(geo: VisGeometry, frames: tuple[np.ndarray, np.ndarray], ra_deg: float,
                 dec_deg: float) -> SourceTerms:
    """Path differences, their position derivatives and the beam of one source."""
    from astropy.time import Time

    basis, p0 = frames
    t = Time(geo.times_mjd, format="mjd", scale="utc")
    ra, dec = math.radians(ra_deg), math.radians(dec_deg)
    eps = 1.0 * ARCSEC
    s = geometry.icrs_to_itrs(np.array([ra, ra + eps / math.cos(dec), ra]), np.array([dec, dec, dec + eps]), t)
    lmn = np.einsum("tij,tkj->tki", basis, s)  # (Nt, 3 directions, 3 coords)
    paths = []
    for k in range(3):
        c = lmn[geo.time_index, k]  # (Nrow, 3)
        paths.append(geo.uvw_m[:, 0] * c[:, 0] + geo.uvw_m[:, 1] * c[:, 1] + geo.uvw_m[:, 2] * (c[:, 2] - 1.0))
    sep = geometry.angular_separation(s[:, 0, :], p0[None, :])  # (Nt,)
    beam = airy_beam(sep[:, None] * np.ones((1, geo.freqs_hz.size)), geo.freqs_hz[None, :])
    beam[sep > math.pi / 2] = 0.0
    dpath = np.stack([(paths[1] - paths[0]) / eps, (paths[2] - paths[0]) / eps])
    return SourceTerms(paths[0], dpath, beam)


def spectral_beam(geo: VisGeometry, terms: SourceTerms, alpha: float) -> np.ndarray:
    """(Nt, Nchan) apparent flux per Jy at 1.4 GHz: (nu/1.4 GHz)^alpha B(t, nu)."""
    return terms.beam * ((geo.freqs_hz / REFERENCE_FREQ_HZ) ** alpha)[None, :]


def apparent_flux(geo: VisGeometry, terms: SourceTerms, src: BrightSource) -> np.ndarray:
    """(Nt, Nchan) apparent flux density: S (nu/1.4 GHz)^alpha B(t, nu)."""
    return src.flux_jy * spectral_beam(geo, terms, src.spectral_index)


RESEED = 32  # exact phasors every this many channels bound the recurrence's float32 rounding


def time_blocks(time_index: np.ndarray) -> list[tuple[int, slice]]:
    """(time, rows) of each run of rows with one time; the rows must be sorted by time."""
    if time_index.size == 0:
        return []
    if np.any(np.diff(time_index) < 0):
        raise ValueError("rows must be sorted by time")
    edges = np.flatnonzero(np.diff(time_index)) + 1
    starts = np.concatenate([[0], edges])
    stops = np.concatenate([edges, [time_index.size]])
    return [(int(time_index[a]), slice(int(a), int(b))) for a, b in zip(starts, stops)]


def phasor_into(geo: VisGeometry, path_m: np.ndarray, out: np.ndarray) -> np.ndarray:
    """exp(sign 2 pi i nu/c path) into ``out`` (Nchan, len(path)), complex64: the MS's axis order.

    Evenly spaced channels: channel c+1 is channel c times one per-row step,
    a complex multiply instead of a sine and a cosine (reseeded exactly every
    RESEED channels)."""
    k = geo.phase_sign * 2.0 * math.pi / SPEED_OF_LIGHT
    f = geo.freqs_hz
    step = np.diff(f)
    even = f.size > 2 and np.allclose(step, step[0], rtol=1e-9, atol=0.0)
    rot = np.exp(1j * k * step[0] * path_m).astype(np.complex64) if even else None
    for c in range(f.size):
        if rot is None or c % RESEED == 0:
            out[c] = np.exp(1j * k * f[c] * path_m)
        else:
            np.multiply(out[c - 1], rot, out=out[c])
    return out


def model_visibilities(geo: VisGeometry, terms: SourceTerms, src: BrightSource) -> np.ndarray:
    """(Nchan, Nrow) complex64 visibilities of one source (each polarisation gets the same)."""
    amp = apparent_flux(geo, terms, src).astype(np.float32)  # (Nt, Nchan)
    out = np.empty((geo.freqs_hz.size, geo.time_index.size), dtype=np.complex64)
    for t, rows in time_blocks(geo.time_index):
        phasor_into(geo, terms.path_m[rows], out[:, rows])
        out[:, rows] *= amp[t][:, None]
    return out


# --------------------------------------------------------------------------
# fitting


@dataclass(frozen=True)
class FittedSource:
    """A subtracted source: fitted J2000 position, flux at 1.4 GHz and spectral index.

    ``start`` is where the fit began (the catalogue); ``apparent_jy`` the mean
    apparent flux over the group's integrations and channels."""

    source: BrightSource
    start: BrightSource
    apparent_jy: float
    iterations: int


def fit_blocks(nchan: int) -> int:
    """How many channel blocks the fit averages into: at least 4 (so the spectral index is
    constrained), at most FIT_CHANNELS channels each, a divisor of ``nchan``."""
    n = max(min(4, nchan), math.ceil(nchan / FIT_CHANNELS))
    while nchan % n:
        n += 1
    return n


def _block_mean(a: np.ndarray, nblock: int) -> np.ndarray:
    """Mean over consecutive channel blocks: (Nchan, ...) -> (nblock, ...)."""
    return a.reshape(nblock, a.shape[0] // nblock, *a.shape[1:]).mean(axis=1)


def _fit_params(geo: VisGeometry, terms: SourceTerms, dbar: np.ndarray, good: np.ndarray, src: BrightSource,
                nblock: int, fit_alpha: bool, iterations: int = 6) -> tuple[float, float, float, float]:
    """Gauss-Newton for (S, alpha, dx, dy) on block-averaged data phased to ``src``.

    ``dbar`` (nblock, Nrow) is the data with every other source removed,
    multiplied by the conjugate phasor of ``src``'s starting position and
    averaged over each block of channels; dx, dy (radians, RA*cos(dec) and
    Dec) move the source from there. Only fully unflagged samples (``good``)
    count. The spectral index stays at its start unless ``fit_alpha``: a
    faint source cannot constrain it, and a wild one would spoil the
    subtraction across the band."""
    k = geo.phase_sign * 2.0 * math.pi / SPEED_OF_LIGHT
    lnf = np.log(geo.freqs_hz / REFERENCE_FREQ_HZ)
    nu = np.broadcast_to(_block_mean(geo.freqs_hz, nblock)[:, None], dbar.shape)[good]
    t = np.broadcast_to(geo.time_index[None, :], dbar.shape)[good]
    blk = np.broadcast_to(np.arange(nblock)[:, None], dbar.shape)[good]
    gx = np.broadcast_to(terms.dpath_m[0][None, :], dbar.shape)[good]
    gy = np.broadcast_to(terms.dpath_m[1][None, :], dbar.shape)[good]
    data = dbar[good]
    s, alpha, dx, dy = src.flux_jy, src.spectral_index, 0.0, 0.0
    for _ in range(iterations):
        sb = spectral_beam(geo, terms, alpha)  # (Nt, Nchan)
        m = _block_mean(sb.T, nblock)[blk, t]
        ph = np.exp(1j * k * nu * (gx * dx + gy * dy))
        model = s * m * ph
        cols = [m * ph, 1j * k * nu * gx * model, 1j * k * nu * gy * model]
        if fit_alpha:
            cols.append(s * _block_mean((sb * lnf[None, :]).T, nblock)[blk, t] * ph)
        jac = np.stack(cols, axis=1)
        r = data - model
        jr = np.concatenate([jac.real, jac.imag])
        step = np.linalg.solve(jr.T @ jr, jr.T @ np.concatenate([r.real, r.imag]))
        s, dx, dy = s + step[0], dx + step[1], dy + step[2]
        if fit_alpha:
            alpha += step[3]
        if abs(step[1]) + abs(step[2]) < 1e-3 * ARCSEC and abs(step[0]) < 1e-6 * abs(s):
            break
    return s, alpha, dx, dy


def _add_model(geo: VisGeometry, resid: np.ndarray, path_m: np.ndarray, amp: np.ndarray, sign: float,
               blocks, buf: np.ndarray, dbar: np.ndarray | None = None, nblock: int = 1) -> None:
    """resid += sign * model, per time block; with ``dbar``, first store the block-averaged
    resid * conj(phasor) + amp (the data with this source alone left in, phased to it)."""
    for t, rows in blocks:
        b = buf[:, : rows.stop - rows.start]
        phasor_into(geo, path_m[rows], b)
        if dbar is not None:
            rot = resid[:, rows] * np.conj(b)
            dbar[:, rows] = _block_mean(rot, nblock) + _block_mean(amp[t], nblock)[:, None]
        b *= amp[t][:, None] * np.float32(sign)
        resid[:, rows] += b


def fit_and_subtract(geo: VisGeometry, stokes_i: np.ndarray, good: np.ndarray, sources: Sequence[BrightSource],
                     fixed: Sequence[BrightSource] = (), sweeps: int = 1, nblock: int | None = None,
                     fit_alpha_min_jy: float = 0.1) -> tuple[np.ndarray, list[FittedSource]]:
    """Fit ``sources`` to the Stokes I visibilities and subtract them; subtract ``fixed`` as given.

    ``stokes_i`` (Nchan, Nrow) complex64 with rows sorted by time; ``good``
    (nblock, Nrow) marks the channel blocks with no flagged sample. Every
    starting model is subtracted first, then each fitted source in turn
    (brightest first) is put back, refitted and subtracted again, so each
    fit sees the others already removed. The spectral index is fitted for
    sources of at least ``fit_alpha_min_jy`` mean apparent flux. Returns the
    residual and the fitted sources."""
    nchan = geo.freqs_hz.size
    nblock = nblock or fit_blocks(nchan)
    frames = geo.frames()
    blocks = time_blocks(geo.time_index)
    width = max((r.stop - r.start for _, r in blocks), default=0)
    buf = np.empty((nchan, width), dtype=np.complex64)
    dbar = np.empty((nblock, stokes_i.shape[1]), dtype=np.complex128)
    resid = stokes_i.copy()
    for src in fixed:
        tm = source_terms(geo, frames, src.ra_deg, src.dec_deg)
        _add_model(geo, resid, tm.path_m, apparent_flux(geo, tm, src).astype(np.float32), -1.0, blocks, buf)
    current = list(sources)
    terms = [source_terms(geo, frames, s.ra_deg, s.dec_deg) for s in current]
    amps = [apparent_flux(geo, tm, s).astype(np.float32) for s, tm in zip(current, terms)]
    for tm, amp in zip(terms, amps):
        _add_model(geo, resid, tm.path_m, amp, -1.0, blocks, buf)
    for _ in range(sweeps):
        for i, src in enumerate(current):
            _add_model(geo, resid, terms[i].path_m, amps[i], +1.0, blocks, buf, dbar, nblock)
            s, alpha, dx, dy = _fit_params(geo, terms[i], dbar, good, src, nblock,
                                           fit_alpha=nblock > 1 and float(amps[i].mean()) >= fit_alpha_min_jy)
            ra = src.ra_deg + math.degrees(dx / math.cos(math.radians(src.dec_deg)))
            new = replace(src, ra_deg=ra, dec_deg=src.dec_deg + math.degrees(dy), flux_jy=float(s),
                          spectral_index=float(alpha))
            terms[i] = source_terms(geo, frames, new.ra_deg, new.dec_deg)
            amps[i] = apparent_flux(geo, terms[i], new).astype(np.float32)
            _add_model(geo, resid, terms[i].path_m, amps[i], -1.0, blocks, buf)
            current[i] = new
    fitted = [FittedSource(new, old, float(amp.mean()), sweeps) for new, old, amp in zip(current, sources, amps)]
    return resid, fitted


# --------------------------------------------------------------------------
# choosing the sources


def select_bright(geo: VisGeometry, catalog: Sequence, min_apparent_jy: float, radius_deg: float,
                  max_sources: int) -> list[tuple[BrightSource, float]]:
    """Catalogue sources whose mean apparent flux over the group exceeds ``min_apparent_jy``.

    Only sources within ``radius_deg`` of the phase centre are considered
    (the Airy beam's sidelobes beyond ~5 deg are below 0.3 %); the brightest
    ``max_sources`` apparent are kept, brightest first, each with its apparent flux."""
    from ..catalog import angular_distance_deg

    ra0, dec0 = math.degrees(geo.phase_ra_rad), math.degrees(geo.phase_dec_rad)
    near = [c for c in catalog if angular_distance_deg(c.ra_deg, c.dec_deg, ra0, dec0) <= radius_deg]
    if not near:
        return []
    from astropy.time import Time

    t = Time(geo.times_mjd, format="mjd", scale="utc")
    dirs = geometry.icrs_to_itrs(np.radians([c.ra_deg for c in near]), np.radians([c.dec_deg for c in near]), t)
    p0 = geometry.meridian_direction(geo.pointing_dec_rad)
    sep = geometry.angular_separation(dirs, p0[None, None, :])  # (Nt, Nsrc)
    band = np.array([geo.freqs_hz.min(), geo.freqs_hz.mean(), geo.freqs_hz.max()])
    beam = airy_beam(sep[:, :, None] * np.ones((1, 1, band.size)), band[None, None, :])
    beam[sep > math.pi / 2] = 0.0
    scored = []
    for j, c in enumerate(near):
        alpha = c.spectral_index if c.spectral_index is not None else -0.7
        app = float(np.mean(c.flux_jy * (band / REFERENCE_FREQ_HZ) ** alpha * beam[:, j, :]))
        if app >= min_apparent_jy:
            scored.append((app, BrightSource(c.name, c.ra_deg, c.dec_deg, c.flux_jy, alpha)))
    scored.sort(key=lambda x: -x[0])
    return [(s, app) for app, s in scored[:max_sources]]


# --------------------------------------------------------------------------
# restoring


def restore_sources(image: np.ndarray, wcs, beam_arcsec: tuple[float, float, float], pb: np.ndarray,
                    fitted: Sequence[FittedSource], freq_hz: float, half_width_beams: float = 6.0) -> int:
    """Add each subtracted source back into the flat image, in place.

    Each becomes the restoring beam (a Gaussian, peak in Jy/beam) at its
    fitted position with its fitted flux at the image frequency times the
    primary beam there, so the pb-corrected image reads the fitted flux.
    Returns how many landed on the image."""
    bmaj, bmin, bpa = beam_arcsec
    sig = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    pa = math.radians(bpa)
    ny, nx = image.shape
    from astropy.wcs.utils import proj_plane_pixel_scales

    cel = wcs.celestial
    cell = float(np.mean(np.abs(proj_plane_pixel_scales(cel)))) * 3600.0
    half = int(math.ceil(half_width_beams * bmaj / cell))
    n = 0
    for f in fitted:
        s = f.source
        x, y = (float(v) for v in cel.world_to_pixel_values(s.ra_deg, s.dec_deg))
        ix, iy = int(round(x)), int(round(y))
        if not (0 <= ix < nx and 0 <= iy < ny) or not np.isfinite(pb[iy, ix]):
            continue
        y0, y1, x0, x1 = max(iy - half, 0), min(iy + half + 1, ny), max(ix - half, 0), min(ix + half + 1, nx)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        ra, dec = cel.pixel_to_world_values(xx.ravel(), yy.ravel())
        dx = ((ra - s.ra_deg + 180.0) % 360.0 - 180.0) * math.cos(math.radians(s.dec_deg)) * 3600.0  # east
        dy = (dec - s.dec_deg) * 3600.0
        d_maj = dx * math.sin(pa) + dy * math.cos(pa)
        d_min = dx * math.cos(pa) - dy * math.sin(pa)
        g = np.exp(-0.5 * ((d_maj / (bmaj * sig)) ** 2 + (d_min / (bmin * sig)) ** 2)).reshape(yy.shape)
        flux = s.flux_jy * (freq_hz / REFERENCE_FREQ_HZ) ** s.spectral_index
        image[y0:y1, x0:x1] += (flux * float(pb[iy, ix]) * g).astype(image.dtype)
        n += 1
    return n


# --------------------------------------------------------------------------
# the MeasurementSet


@dataclass(frozen=True)
class SubtractResult:
    """What was subtracted from one MS: the fitted sources and how many were taken as catalogued."""

    fitted: list[FittedSource]
    n_fixed: int
    seconds: float

    def summary(self) -> list[dict]:
        """The fitted sources as small JSON-able rows (what the image stage records)."""
        return [{"name": f.source.name, "ra_deg": round(f.source.ra_deg, 7), "dec_deg": round(f.source.dec_deg, 7),
                 "flux_jy": round(f.source.flux_jy, 6), "spectral_index": round(f.source.spectral_index, 3),
                 "apparent_jy": round(f.apparent_jy, 6), "catalog_flux_jy": round(f.start.flux_jy, 6)}
                for f in self.fitted]


def _in_image(geo: VisGeometry, src: BrightSource, half_size_deg: float) -> bool:
    """Whether the source falls inside a square image of half-width ``half_size_deg`` (SIN)."""
    ra, dec = math.radians(src.ra_deg), math.radians(src.dec_deg)
    d_ra = ra - geo.phase_ra_rad
    l = math.cos(dec) * math.sin(d_ra)
    m = math.sin(dec) * math.cos(geo.phase_dec_rad) - math.cos(dec) * math.sin(geo.phase_dec_rad) * math.cos(d_ra)
    lim = math.sin(math.radians(half_size_deg))
    return abs(l) < lim and abs(m) < lim


def plan_sources(geo: VisGeometry, catalog: Sequence, half_size_deg: float, min_apparent_jy: float,
                 edge_min_apparent_jy: float, radius_deg: float,
                 max_sources: int = 200) -> tuple[list[BrightSource], list[BrightSource]]:
    """(to fit, to subtract as catalogued): bright sources, and fainter ones outside the image."""
    candidates = select_bright(geo, catalog, min(min_apparent_jy, edge_min_apparent_jy), radius_deg, max_sources)
    fit, fixed = [], []
    for src, app in candidates:
        if app >= min_apparent_jy:
            fit.append(src)
        elif app >= edge_min_apparent_jy and not _in_image(geo, src, half_size_deg):
            fixed.append(src)
    return fit, fixed


def _read_rows(tb, column: str):
    """Cross-correlation rows sorted by time: (row numbers, uvw, times, data, flags)."""
    a1, a2 = tb.getcol("ANTENNA1"), tb.getcol("ANTENNA2")
    rows = np.flatnonzero(a1 != a2)
    times = tb.getcol("TIME")[rows]
    order = np.argsort(times, kind="stable")
    rows = rows[order]
    return rows, tb.getcol("UVW")[:, rows].T, times[order] / 86400.0


def subtract_bright_sources(ms: Path, column: str, catalog: Sequence, info, half_size_deg: float,
                            params) -> SubtractResult:
    """Fit and subtract the catalogue's bright sources from ``column`` of ``ms``, in place.

    ``ms`` is the image stage's own working copy: the stage's input is never
    changed. ``info`` is its MsInfo; ``params`` the ImagingParams (the
    subtract_* thresholds). Both polarisations lose the same Stokes I model."""
    import time as _time

    from .. import casa_env

    t0 = _time.monotonic()
    tb = casa_env.casatools().table()
    tb.open(str(ms), nomodify=False)
    try:
        rows, uvw, times = _read_rows(tb, column)
        utimes, tidx = np.unique(times, return_inverse=True)
        geo = VisGeometry(uvw, tidx, utimes, np.asarray(info.freqs_hz, float), info.phase_ra_rad,
                          info.phase_dec_rad, info.pointing_dec_rad)
        fit, fixed = plan_sources(geo, catalog, half_size_deg, params.subtract_min_apparent_jy,
                                  params.subtract_edge_min_apparent_jy, params.subtract_radius_deg)
        if not fit and not fixed:
            return SubtractResult([], 0, _time.monotonic() - t0)
        data = tb.getcol(column)  # (npol, nchan, nrow) complex64
        flags = tb.getcol("FLAG")
        pols = [0, data.shape[0] - 1]
        stokes_i = (0.5 * (data[pols[0]][:, rows] + data[pols[1]][:, rows])).astype(np.complex64)
        bad = flags[pols[0]][:, rows] | flags[pols[1]][:, rows]
        nblock = fit_blocks(geo.freqs_hz.size)
        good = ~_block_any(bad, nblock)
        del flags, bad
        resid, fitted = fit_and_subtract(geo, stokes_i, good, fit, fixed, nblock=nblock)
        model = stokes_i - resid
        del stokes_i, resid
        for p in range(data.shape[0]):
            data[p][:, rows] -= model
        tb.putcol(column, data)
    finally:
        tb.close()
        tb.done()
    res = SubtractResult(fitted, len(fixed), _time.monotonic() - t0)
    log.info("subtract %s: %d sources fitted (%.3f-%.3f Jy apparent), %d fainter ones outside the image "
             "subtracted as catalogued, %.1f s", Path(ms).name, len(fitted),
             min((f.apparent_jy for f in fitted), default=0.0), max((f.apparent_jy for f in fitted), default=0.0),
             len(fixed), res.seconds)
    return res


def _block_any(a: np.ndarray, nblock: int) -> np.ndarray:
    """Any over consecutive channel blocks: (Nchan, Nrow) bool -> (nblock, Nrow)."""
    return a.reshape(nblock, a.shape[0] // nblock, *a.shape[1:]).any(axis=1)
