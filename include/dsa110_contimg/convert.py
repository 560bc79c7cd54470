"""Convert: one group of UVH5 subband files -> one CASA MeasurementSet.

What the correlator writes (DESIGN.md section 2): one file per subband,
channels in descending frequency, visibilities and uvw already phased to hour
angle 0 at the apparent pointing declination every integration, although the
header says ``phase_type = "drift"``. That phase centre, p0, is a direction
fixed in the Earth (ITRS) frame; the sky drifts through it.

The MeasurementSet gets one sidereal ICRS phase centre: the ICRS position of
p0 at the group's mid-time. For every integration t the data are rotated from
p0 to that direction, p(t) (the two coincide at mid-time and differ by
~0.6 deg at the ends of a 5-minute file):

    V_new = V_old * exp(sign 2 pi i nu/c b.(p0 - p(t)))

because V_old ~ exp(sign k b.(s - p0)) and an MS phased to p(t) must hold
exp(sign k b.(s - p(t))). uvw are recomputed from the antenna positions in the
(u towards east, v towards the ICRS pole, w towards p(t)) basis. The data are
never rotated "from drift" a second time.

All 16 subbands always appear, in ascending frequency, in one spectral window;
the channels of missing subbands are present and flagged, so every MS of a
session has the same layout.

How it is written (ms_writer.py): headers of all files are read and checked
against each other first, so a bad file fails the group before anything is
written. The MS skeleton (main table with all rows, tiled storage) is made
with python-casacore, the subtables with pyuvdata's MS subtable writers from
a metadata-only UVData; then the main table is filled in blocks of rows: the
block's rows of every subband are read with h5py, put in ascending frequency,
rotated (float64 phases, complex64 result) and conjugated into CASA's
convention exactly as pyuvdata's ``write_ms`` does (DATA = conj(V_new),
UVW = -uvw), in worker processes (up to two) that fill shared memory while
this process writes the previous block; one more process writes the
subtables meanwhile. Memory stays at a few blocks (a full 96-antenna,
768-channel group peaks at ~0.6 GB per process), whatever the group size.

Written atomically: to ``<group_id>.ms.tmp-<host>-<pid>`` in ``out_dir``, then
renamed to ``<group_id>.ms`` (a previous MS is renamed away first and deleted
after the new one is in place). A conversion that was killed leaves only its
``.tmp-<host>-<pid>`` directory, which the next conversion of the group on
that host removes. A conversion the directory has no room for is refused
before anything is written (OSError ENOSPC naming the directory, which the
task retries): casacore aborts the whole process when the disk fills part way
through a table.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import geometry, iers_cache, ms_writer
from .errors import BadFileNameError, CorruptSubbandError, IncompleteGroupError
from .inprogress import owner_suffix, remove_stale
from .ingest import format_group_id, parse_subband_name
from .instrument import N_SUBBANDS

log = logging.getLogger(__name__)

POINTING_DEC_KEYWORD = "DSA110_POINTING_DEC_RAD"
GROUP_ID_KEYWORD = "DSA110_GROUP_ID"
MISSING_SUBBANDS_KEYWORD = "DSA110_MISSING_SUBBANDS"

_MJD_JD = 2400000.5
_TIME_TOL_DAYS = 1e-3 / 86400.0  # 1 ms: subbands of a group share one time grid
_DEC_TOL_RAD = 1e-8  # ~2 milliarcsec
_POS_TOL_M = 1e-3


@dataclass(frozen=True)
class ConvertResult:
    """What convert produced (JSON-serialisable through :meth:`as_dict`)."""

    ms_path: str
    group_id: str
    n_rows: int
    n_channels: int
    n_antennas: int  # antennas with data
    n_times: int
    start_mjd: float  # start of the first integration (UTC)
    mid_mjd: float  # the time the ICRS phase centre was computed for
    end_mjd: float  # end of the last integration
    phase_center_ra_deg: float  # ICRS
    phase_center_dec_deg: float  # ICRS
    pointing_dec_deg: float  # apparent declination of the meridian pointing
    missing_subbands: tuple[int, ...]
    seconds: float

    def as_dict(self) -> dict:
        d = asdict(self)
        d["missing_subbands"] = list(self.missing_subbands)
        return d


@dataclass
class _Header:
    path: Path
    subband: int
    nblts: int
    nfreqs: int
    npols: int
    freqs: np.ndarray  # as written (descending)
    channel_width: float  # Hz, positive
    pols: np.ndarray
    times_jd: np.ndarray  # (Nblts,)
    integration_time: np.ndarray  # (Nblts,) s
    ant1: np.ndarray
    ant2: np.ndarray
    antenna_numbers: np.ndarray
    antenna_positions: np.ndarray  # ECEF offsets from the telescope, m
    pointing_dec_rad: float  # apparent
    ha_phase_center: float
    latitude_deg: float
    longitude_deg: float
    altitude_m: float
    uvw: np.ndarray  # (Nblts, 3) as written


# --------------------------------------------------------------------------
# reading and validating
# --------------------------------------------------------------------------


def _scalar(v):
    v = np.asarray(v)
    return v.reshape(-1)[0].item() if v.size else None


def _read_header(path: Path, subband: int) -> _Header:
    """Header of one subband file; CorruptSubbandError for anything unreadable."""
    import h5py

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CorruptSubbandError(path, f"cannot stat file: {exc}") from exc
    if size == 0:
        raise CorruptSubbandError(path, "zero-length file")
    try:
        with h5py.File(path, "r") as f:
            if "Header" not in f or "Data" not in f:
                raise CorruptSubbandError(path, "not a UVH5 file (no /Header or /Data group)")
            h = f["Header"]
            need = [
                "Nblts", "Nfreqs", "Npols", "freq_array", "channel_width", "polarization_array",
                "time_array", "integration_time", "ant_1_array", "ant_2_array", "antenna_numbers",
                "antenna_positions", "latitude", "longitude", "altitude", "uvw_array",
            ]  # fmt: skip
            absent = [k for k in need if k not in h]
            if absent:
                raise CorruptSubbandError(path, f"header lacks {', '.join(absent)}")
            for k in ("visdata", "flags", "nsamples"):
                if k not in f["Data"]:
                    raise CorruptSubbandError(path, f"/Data/{k} is missing")
            extra = h.get("extra_keywords")
            if extra is None or "phase_center_dec" not in extra:
                raise CorruptSubbandError(path, "header lacks extra_keywords/phase_center_dec (pointing declination)")
            ha = float(_scalar(extra["ha_phase_center"][()])) if "ha_phase_center" in extra else 0.0
            cw = np.asarray(h["channel_width"][()], dtype=float).reshape(-1)
            hdr = _Header(
                path=path,
                subband=subband,
                nblts=int(_scalar(h["Nblts"][()])),
                nfreqs=int(_scalar(h["Nfreqs"][()])),
                npols=int(_scalar(h["Npols"][()])),
                freqs=np.asarray(h["freq_array"][()], dtype=float).reshape(-1),
                channel_width=float(abs(cw[0])),
                pols=np.asarray(h["polarization_array"][()]).reshape(-1),
                times_jd=np.asarray(h["time_array"][()], dtype=float),
                integration_time=np.asarray(h["integration_time"][()], dtype=float).reshape(-1),
                ant1=np.asarray(h["ant_1_array"][()], dtype=int),
                ant2=np.asarray(h["ant_2_array"][()], dtype=int),
                antenna_numbers=np.asarray(h["antenna_numbers"][()], dtype=int),
                antenna_positions=np.asarray(h["antenna_positions"][()], dtype=float),
                pointing_dec_rad=float(_scalar(extra["phase_center_dec"][()])),
                ha_phase_center=ha,
                latitude_deg=float(_scalar(h["latitude"][()])),
                longitude_deg=float(_scalar(h["longitude"][()])),
                altitude_m=float(_scalar(h["altitude"][()])),
                uvw=np.asarray(h["uvw_array"][()], dtype=float),
            )
            shape = f["Data"]["visdata"].shape
            for k in ("flags", "nsamples"):
                if f["Data"][k].shape != shape:
                    raise CorruptSubbandError(path, f"/Data/{k} has shape {f['Data'][k].shape}, /Data/visdata {shape}")
            for k in ("visdata", "flags", "nsamples"):
                _check_extent(path, size, k, f["Data"][k])
    except CorruptSubbandError:
        raise
    except (OSError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise CorruptSubbandError(path, f"cannot read UVH5 header (truncated or damaged file?): {exc}") from exc
    want = (hdr.nblts, 1, hdr.nfreqs, hdr.npols)
    if tuple(shape) != want:
        raise CorruptSubbandError(path, f"/Data/visdata has shape {tuple(shape)}, header implies {want}")
    if hdr.freqs.size != hdr.nfreqs or hdr.times_jd.size != hdr.nblts or hdr.ant1.size != hdr.nblts:
        raise CorruptSubbandError(path, "header array lengths disagree with Nblts/Nfreqs")
    if hdr.nfreqs > 1 and not np.all(np.diff(hdr.freqs) < 0):
        raise CorruptSubbandError(path, "channels are not in descending frequency as the correlator writes them")
    if abs(hdr.ha_phase_center) > 1e-9:
        raise CorruptSubbandError(path, f"ha_phase_center is {hdr.ha_phase_center}, expected 0 (meridian phasing)")
    return hdr


def _check_extent(path: Path, size: int, name: str, dset) -> None:
    """A contiguous dataset must end inside the file: catches truncated files
    before any output is written (chunked datasets fail when read instead)."""
    try:
        offset = dset.id.get_offset()
        nbytes = dset.id.get_storage_size()
    except (AttributeError, RuntimeError, TypeError, ValueError):  # pragma: no cover - layout without an offset
        return
    if offset is not None and offset + nbytes > size:
        raise CorruptSubbandError(
            path, f"truncated file: /Data/{name} ends at byte {offset + nbytes} but the file has {size} bytes"
        )


def _check_same(ref: _Header, h: _Header) -> None:
    """Raise CorruptSubbandError if ``h`` disagrees with the group's reference file."""

    def bad(reason):
        raise CorruptSubbandError(h.path, f"{reason} (reference file {ref.path.name})")

    if abs(h.pointing_dec_rad - ref.pointing_dec_rad) > _DEC_TOL_RAD:
        bad(
            f"pointing declination {np.rad2deg(h.pointing_dec_rad):.6f} deg differs from "
            f"{np.rad2deg(ref.pointing_dec_rad):.6f} deg"
        )
    if not np.array_equal(h.antenna_numbers, ref.antenna_numbers) or not np.allclose(
        h.antenna_positions, ref.antenna_positions, atol=_POS_TOL_M, rtol=0
    ):
        bad("antenna table differs")
    if h.nfreqs != ref.nfreqs or abs(h.channel_width - ref.channel_width) > 1e-6 * ref.channel_width:
        bad(f"{h.nfreqs} channels of {h.channel_width:.3f} Hz vs {ref.nfreqs} of {ref.channel_width:.3f} Hz")
    if not np.array_equal(h.pols, ref.pols):
        bad(f"polarizations {h.pols.tolist()} vs {ref.pols.tolist()}")
    if h.nblts != ref.nblts or not np.array_equal(h.ant1, ref.ant1) or not np.array_equal(h.ant2, ref.ant2):
        bad("baseline-time ordering differs")
    if np.max(np.abs(h.times_jd - ref.times_jd)) > _TIME_TOL_DAYS:
        dt = np.max(np.abs(h.times_jd - ref.times_jd)) * 86400.0
        bad(f"time grid differs by up to {dt:.3f} s")
    if (
        abs(h.latitude_deg - ref.latitude_deg) > 1e-9
        or abs(h.longitude_deg - ref.longitude_deg) > 1e-9
        or abs(h.altitude_m - ref.altitude_m) > 1e-3
    ):
        bad("telescope location differs")


# --------------------------------------------------------------------------
# geometry helpers
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Rephasing:
    """Per-row quantities to move data phased at p0 (ITRS) to an ICRS centre."""

    ra0: float
    dec0: float
    uvw: np.ndarray  # (Nblts, 3) metres, new phase centre
    dpath: np.ndarray  # (Nblts,) metres, b.(p0 - p(t))
    w_old: np.ndarray  # (Nblts,) b.p0, what the file's w should be


def compute_rephasing(
    times_jd: np.ndarray,
    ant1: np.ndarray,
    ant2: np.ndarray,
    antenna_numbers: np.ndarray,
    antenna_positions: np.ndarray,
    pointing_dec_rad: float,
    longitude_deg: float,
    mid_jd: float,
) -> Rephasing:
    """uvw and path differences to rephase meridian-phased rows to ICRS.

    Exposed so tests can check the MS against the UVH5 data independently of
    how the MS was written."""
    from astropy.time import Time

    p0 = geometry.meridian_direction(pointing_dec_rad, lon_deg=longitude_deg)
    ra0, dec0 = geometry.itrs_to_icrs(p0, Time(mid_jd, format="jd", scale="utc"))
    utimes, tidx = np.unique(times_jd, return_inverse=True)
    t = Time(utimes, format="jd", scale="utc")
    p_new = geometry.icrs_to_itrs(ra0, dec0, t)[:, 0, :]  # (Nt, 3)
    pole = geometry.icrs_pole_itrs(t)  # (Nt, 3)
    basis = geometry.uvw_basis(p_new, pole)  # (Nt, 3, 3)
    row = {int(n): i for i, n in enumerate(antenna_numbers)}
    try:
        i1 = np.array([row[int(a)] for a in ant1])
        i2 = np.array([row[int(a)] for a in ant2])
    except KeyError as exc:
        raise ValueError(f"antenna {exc.args[0]} in the data is not in the antenna table") from None
    ecef = np.asarray(antenna_positions, dtype=float)
    uvw = geometry.baseline_uvw(ecef, i1, i2, basis[tidx])
    b = ecef[i2] - ecef[i1]
    dpath = np.einsum("ij,ij->i", b, p0[None, :] - p_new[tidx])
    return Rephasing(ra0=ra0, dec0=dec0, uvw=uvw, dpath=dpath, w_old=b @ p0)


# --------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------


def _resolve_subbands(files: list[Path], tolerance_s: float | None) -> dict[int, Path]:
    """Subband -> file, with ingest's naming and grouping rules (ingest.py)."""
    by_sb: dict[int, list[Path]] = {}
    starts = {}
    for p in files:
        try:
            starts[p], sb = parse_subband_name(p)
        except BadFileNameError as exc:
            raise CorruptSubbandError(p, f"file name does not parse: {exc.reason}") from None
        by_sb.setdefault(sb, []).append(p)
    dups = {sb: ps for sb, ps in by_sb.items() if len(ps) > 1}
    if dups:
        sb, ps = min(dups.items())
        raise CorruptSubbandError(
            ps[1], f"duplicate subband sb{sb:02d} in group: " + ", ".join(p.name for p in ps) + " (remove one)"
        )
    first = min(starts.values())
    for p, t in sorted(starts.items(), key=lambda kv: kv[1]):
        if tolerance_s is not None and (t - first).total_seconds() > tolerance_s:
            raise CorruptSubbandError(
                p,
                f"file time {format_group_id(t)} is {(t - first).total_seconds():.0f} s after the group's first file "
                f"({format_group_id(first)}); a group spans at most {tolerance_s:g} s (another observation?)",
            )
    return {sb: ps[0] for sb, ps in sorted(by_sb.items())}


_META: dict = {}  # header-only UVData read ahead by _meta_prepare, by path


def _read_metadata(ref_path: str):
    from pyuvdata import UVData

    return UVData.from_file(ref_path, file_type="uvh5", read_data=False, run_check=False)


def _meta_prepare(ref_path: str) -> None:
    """Import pyuvdata and read the reference header ahead of time (in the
    subtable process, while the converter computes the geometry)."""
    iers_cache.install()
    _META[ref_path] = _read_metadata(ref_path)


def _metadata_uvdata(ref_path: Path, pointing_dec_rad: float, group_id: str, freqs, chw: float, reph: Rephasing):
    """A metadata-only pyuvdata UVData (one sidereal ICRS phase centre, the full
    band in one spectral window) from which the MS subtables are written."""
    uv = _META.pop(str(ref_path), None) or _read_metadata(str(ref_path))
    uv.Nfreqs = freqs.size
    uv.Nspws = 1
    uv.spw_array = np.array([0])
    uv.freq_array = freqs.astype(float)
    uv.channel_width = np.full(freqs.size, chw, dtype=float)
    uv.flex_spw_id_array = np.zeros(freqs.size, dtype=int)
    uv.uvw_array = reph.uvw
    uv.phase_center_catalog = {}
    cat_id = uv._add_phase_center(
        f"DSA110_{group_id}", cat_type="sidereal", cat_lon=reph.ra0, cat_lat=reph.dec0, cat_frame="icrs"
    )
    uv.phase_center_id_array = np.full(uv.Nblts, cat_id, dtype=int)
    uv.Nphase = 1
    uv._set_app_coords_helper()
    uv.extra_keywords = {}
    uv.history = (uv.history or "") + (
        f"\ndsa110_contimg.convert: group {group_id}; {uv.Nblts} rows rephased from HA=0 at apparent dec "
        f"{np.rad2deg(pointing_dec_rad):.6f} deg to ICRS ({np.rad2deg(reph.ra0):.6f}, "
        f"{np.rad2deg(reph.dec0):.6f}) deg.\n"
    )
    return uv


def _put_keywords(ms: Path, keywords: dict) -> None:
    from casacore import tables

    t = tables.table(str(ms), readonly=False, ack=False)
    try:
        for k, v in keywords.items():
            t.putkeyword(k, v)
    finally:
        t.close()
    # The dishes steer in elevation on a fixed azimuth: an alt-az mount as
    # far as CASA is concerned (it warns per row for a mount it cannot model).
    ant = tables.table(str(ms / "ANTENNA"), readonly=False, ack=False)
    try:
        ant.putcol("MOUNT", ["ALT-AZ"] * ant.nrows())
    finally:
        ant.close()


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is moved aside first."""
    old = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except Exception:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def convert_group(
    files: list[Path],
    out_dir: Path,
    group_id: str | None = None,
    min_subbands: int = 12,
    workers: int | None = None,
    tolerance_s: float | None = None,
) -> ConvertResult:
    """Convert one subband group to ``out_dir/<group_id>.ms``.

    ``files`` are the group's finished subband files (any order). ``group_id``
    defaults to the earliest file's timestamp. Raises CorruptSubbandError
    naming the file for unreadable/truncated/zero-length files, names that do
    not parse, duplicate subbands and files that disagree with the rest of the
    group (pointing, antennas, channels, time grid); IncompleteGroupError when
    fewer than ``min_subbands`` subbands are present.

    ``tolerance_s``: if given, the largest spread of file-name timestamps in
    one group (pass ingest's grouping tolerance, ``cfg.group_tolerance_s``).
    ``workers``: processes that read and rotate subband data while this one
    writes the MS (0: everything in this process; default for large groups:
    one per core, at most 2)."""
    t_start = time.perf_counter()
    files = [Path(p) for p in files]
    out_dir = Path(out_dir)
    if not files:
        raise IncompleteGroupError(out_dir, "no subband files given")
    by_sb = _resolve_subbands(files, tolerance_s)
    if group_id is None:
        group_id = format_group_id(min(parse_subband_name(p)[0] for p in files))
    missing = tuple(sb for sb in range(N_SUBBANDS) if sb not in by_sb)
    if len(by_sb) < min_subbands:
        raise IncompleteGroupError(
            files[0].parent,
            f"group {group_id} has {len(by_sb)}/{N_SUBBANDS} subbands (need {min_subbands}); missing "
            + ", ".join(f"sb{sb:02d}" for sb in missing),
        )

    headers = {sb: _read_header(p, sb) for sb, p in by_sb.items()}
    ref = headers[min(headers)]
    for h in headers.values():
        if h is not ref:
            _check_same(ref, h)

    # Channel layout of the full band, from the reference subband: subband k's
    # channels are subband ref's shifted down by (k - ref) subband widths.
    nchan, chw = ref.nfreqs, ref.channel_width
    sb_width = nchan * chw
    for sb, h in headers.items():
        expect = ref.freqs - (sb - ref.subband) * sb_width
        if np.max(np.abs(h.freqs - expect)) > 1e-3 * chw:
            raise CorruptSubbandError(
                h.path,
                f"frequencies {h.freqs[0] / 1e6:.4f}..{h.freqs[-1] / 1e6:.4f} MHz do not fit subband sb{sb:02d} "
                f"of the band implied by {ref.path.name}",
            )
    nout = N_SUBBANDS * nchan
    freqs = np.empty(nout)
    for k in range(N_SUBBANDS):
        lo = (N_SUBBANDS - 1 - k) * nchan
        freqs[lo : lo + nchan] = (ref.freqs - (k - ref.subband) * sb_width)[::-1]

    nblts, npol = ref.nblts, ref.npols
    half = 0.5 * ref.integration_time / 86400.0
    start_jd = float(np.min(ref.times_jd - half))
    end_jd = float(np.max(ref.times_jd + half))
    mid_jd = 0.5 * (float(ref.times_jd.min()) + float(ref.times_jd.max()))
    try:
        pol_order = _casa_pol_order(ref.pols)
    except ValueError as exc:
        raise CorruptSubbandError(ref.path, str(exc)) from None
    plan = ms_writer.BlockPlan(
        files={sb: str(h.path) for sb, h in headers.items()},
        n_subbands=N_SUBBANDS,
        nchan=nchan,
        npol=npol,
        pol_order=tuple(int(i) for i in pol_order),
        nrows=int(nblts),
        dpath=np.zeros(0),  # known once the geometry is computed
        sb_freq0={sb: float(ref.freqs[0] - (sb - ref.subband) * sb_width) for sb in headers},
        chan_offsets=ref.freqs - ref.freqs[0],
        phase_sign=float(geometry.PHASE_SIGN),
        rows_per_block=ms_writer.rows_per_block(nout, npol, int(nblts)),
    )
    if workers is None:
        # Worker processes pay off once a group is large (process start ~0.5 s);
        # a daemonic process (some executors) may not start children at all.
        import multiprocessing

        big = nblts * nout * npol * 8 > 2 * ms_writer.BLOCK_BYTES
        can_fork = not multiprocessing.current_process().daemon and _spawn_safe()
        # Two block workers (measured on 2 cores: ~5 % faster than one, the
        # writer and the subtable process sharing the cores with them).
        workers = min(2, os.cpu_count() or 1) if big and can_fork else 0

    with ms_writer.BlockProducer(plan, workers) as producer, _SubtableWriter(workers > 0) as subtables:
        producer.start()  # the workers boot while the geometry is computed
        subtables.prepare(str(ref.path))
        iers_cache.install()  # the parsed IERS table: ~1 s less in a fresh process
        try:
            reph = compute_rephasing(
                ref.times_jd, ref.ant1, ref.ant2, ref.antenna_numbers, ref.antenna_positions,
                ref.pointing_dec_rad, ref.longitude_deg, mid_jd,
            )  # fmt: skip
        except ValueError as exc:
            raise CorruptSubbandError(ref.path, str(exc)) from exc
        # The file's w must be b.p0 if it is phased to HA=0 at the pointing dec.
        w_err = float(np.max(np.abs(ref.uvw[:, 2] - reph.w_old))) if nblts else 0.0
        if w_err > 0.05:
            log.warning(
                "convert %s: file w differs from b.p0 by up to %.3f m: data may not be phased to HA=0 at dec %.4f",
                group_id, w_err, np.rad2deg(ref.pointing_dec_rad),
            )  # fmt: skip
        meta_args = (str(ref.path), float(ref.pointing_dec_rad), group_id, freqs, float(chw), reph, pol_order)
        t_prep = time.perf_counter() - t_start

        out_dir.mkdir(parents=True, exist_ok=True)
        final = out_dir / f"{group_id}.ms"
        remove_stale(out_dir, f"{group_id}{_TMP_INFIX}*", _TMP_INFIX, f"convert {group_id}")
        tmp = out_dir / f"{group_id}{_TMP_INFIX}{owner_suffix()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        _check_free_space(out_dir, group_id, _ms_bytes(int(nblts), nout, npol))
        n_flagged = 0
        try:
            n_flagged = _write_ms(tmp, producer, subtables, ref, reph, meta_args, group_id)
            t_write = time.perf_counter() - t_start - t_prep
            _put_keywords(
                tmp,
                {
                    POINTING_DEC_KEYWORD: float(ref.pointing_dec_rad),
                    GROUP_ID_KEYWORD: group_id,
                    MISSING_SUBBANDS_KEYWORD: ",".join(f"{sb:02d}" for sb in missing),
                },
            )
            _swap_into_place(tmp, final)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, RuntimeError) and "No space left on device" in str(exc):  # casacore's AipsError
                raise OSError(errno.ENOSPC, f"No space left on device writing {final.name} ({exc})", str(tmp)) from exc
            raise
    seconds = time.perf_counter() - t_start
    n_ants = int(np.unique(np.concatenate([ref.ant1, ref.ant2])).size)
    result = ConvertResult(
        ms_path=str(final),
        group_id=group_id,
        n_rows=int(nblts),
        n_channels=int(nout),
        n_antennas=n_ants,
        n_times=int(np.unique(ref.times_jd).size),
        start_mjd=start_jd - _MJD_JD,
        mid_mjd=mid_jd - _MJD_JD,
        end_mjd=end_jd - _MJD_JD,
        phase_center_ra_deg=float(np.rad2deg(reph.ra0)),
        phase_center_dec_deg=float(np.rad2deg(reph.dec0)),
        pointing_dec_deg=float(np.rad2deg(ref.pointing_dec_rad)),
        missing_subbands=missing,
        seconds=round(seconds, 3),
    )
    log.info(
        "convert %s: %d subbands (missing %s), %d rows x %d channels x %d pols, %d antennas, %d times, "
        "%.1f%% flagged; phase centre ICRS (%.5f, %+.5f) deg; headers+geometry %.1f s, read/rotate/write %.1f s "
        "(%d worker processes), total %.1f s -> %s",
        group_id, len(headers), ",".join(f"sb{s:02d}" for s in missing) or "none", nblts, nout, npol, n_ants,
        result.n_times, 100.0 * n_flagged / max(1, nblts * nout * npol), result.phase_center_ra_deg,
        result.phase_center_dec_deg, t_prep, t_write, workers, seconds, final,
    )  # fmt: skip
    return result


def _casa_pol_order(pols: np.ndarray) -> np.ndarray:
    """Indices that put the file's polarisations in CASA's correlation order
    (XX XY YX YY, RR RL LR LL, I Q U V; AIPS codes -5 -7 -8 -6, -1 -3 -4 -2, 1-4)."""
    order = {-5: 0, -7: 1, -8: 2, -6: 3, -1: 0, -3: 1, -4: 2, -2: 3, 1: 0, 2: 1, 3: 2, 4: 3}
    try:
        return np.argsort([order[int(p)] for p in pols], kind="stable")
    except KeyError as exc:
        raise ValueError(f"unsupported polarization code {exc.args[0]}") from None


def _spawn_safe() -> bool:
    """Spawned workers re-import ``__main__`` from its file: impossible when
    the program came from stdin (``<stdin>``) and the like."""
    import sys

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return path is None or getattr(main, "__spec__", None) is not None or Path(path).is_file()


_SCRATCH = "_subtables_scratch"


def _subtables_job(scratch: str, ref_path, pointing_dec_rad, group_id, freqs, chw, reph, pol_order) -> str:
    """Write the MS subtables into a scratch MS (run beside the main-table
    writer, in another process for large groups); returns the data units."""
    from casacore import tables

    tables.default_ms(scratch).close()
    uv = _metadata_uvdata(Path(ref_path), pointing_dec_rad, group_id, freqs, chw, reph)
    ms_writer.write_subtables(Path(scratch), uv, pol_order)
    return str(uv.vis_units)


def _meta_worker_init(parent_pid: int) -> None:
    # pyuvdata JIT-compiles its baseline-number helpers with numba on first
    # use (~1 s in every fresh process); plain Python is faster for one call.
    os.environ["NUMBA_DISABLE_JIT"] = "1"
    ms_writer._exit_with_parent(parent_pid)


class _SubtableWriter:
    """Writes the MS subtables with pyuvdata's writers, in a process of its own
    when ``separate`` (it starts importing pyuvdata and reading the reference
    header at once, while the converter computes the geometry), otherwise in
    this process at the end."""

    def __init__(self, separate: bool):
        self._pool = None
        self._prepared = None
        if separate:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_meta_worker_init, initargs=(os.getpid(),),
            )  # fmt: skip

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            # wait: the job must not touch the MS directory after we return
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def prepare(self, ref_path: str) -> None:
        if self._pool is not None:
            self._prepared = self._pool.submit(_meta_prepare, ref_path)

    def submit(self, scratch: Path, meta_args: tuple):
        if self._pool is None:
            return None
        return self._pool.submit(_subtables_job, str(scratch), *meta_args)

    def result(self, future, scratch: Path, meta_args: tuple) -> str:
        """The data units; runs the job here if there is no process."""
        if future is None:
            return _subtables_job(str(scratch), *meta_args)
        if self._prepared is not None:
            self._prepared.result()
        return future.result()


def _write_ms(tmp: Path, producer, subtables: _SubtableWriter, ref: _Header, reph: Rephasing, meta_args: tuple,
              group_id: str) -> int:  # fmt: skip
    """Create the MS at ``tmp`` and fill it block by block; returns the number of flagged samples.

    With worker processes, the subtables (pyuvdata's writers, ~2 s of imports
    and JIT compilation in a fresh process) are written by one more process
    into a scratch MS inside ``tmp`` while this one writes the main table,
    then moved into place."""
    from astropy.time import Time

    t_begin = time.perf_counter()
    plan = producer.plan
    ms = ms_writer.create_ms(tmp, plan.nrows, plan.nout, plan.npol)
    scratch = tmp / _SCRATCH
    meta_future = subtables.submit(scratch, meta_args)
    n_flagged = 0
    try:
        utimes, tidx = np.unique(ref.times_jd, return_inverse=True)
        time_s = (Time(utimes, format="jd", scale="utc").mjd * 86400.0)[tidx]
        nrows = plan.nrows
        ms.putcol("ANTENNA1", ref.ant1.astype(np.int32))
        ms.putcol("ANTENNA2", ref.ant2.astype(np.int32))
        ms.putcol("INTERVAL", ref.integration_time)
        ms.putcol("EXPOSURE", ref.integration_time)
        ms.putcol("TIME", time_s)
        ms.putcol("TIME_CENTROID", time_s)
        ms.putcol("UVW", -reph.uvw)  # CASA's baseline convention (as pyuvdata's write_ms)
        zeros = np.zeros(nrows, dtype=np.int32)
        for col in ("DATA_DESC_ID", "FIELD_ID", "ARRAY_ID", "OBSERVATION_ID", "PROCESSOR_ID", "STATE_ID",
                    "FEED1", "FEED2"):  # fmt: skip
            ms.putcol(col, zeros)
        ms.putcol("SCAN_NUMBER", np.ones(nrows, dtype=np.int32))
        ms.putkeyword("pyuvdata_flip_conj", True)
        flag_row = np.zeros(nrows, dtype=bool)
        done = 0
        for r0, r1, vis, flags, nsamples, weight in producer.blocks(reph.dpath):
            n = r1 - r0
            ms.putcol("DATA", vis, startrow=r0, nrow=n)
            ms.putcol("FLAG", flags, startrow=r0, nrow=n)
            ms.putcol("WEIGHT_SPECTRUM", nsamples, startrow=r0, nrow=n)
            ms.putcol("WEIGHT", weight, startrow=r0, nrow=n)
            sigma = np.zeros_like(weight)
            np.power(weight, -0.5, where=weight > 0, out=sigma)
            ms.putcol("SIGMA", sigma, startrow=r0, nrow=n)
            fl = flags.reshape(n, -1)
            flag_row[r0:r1] = fl.all(axis=1)
            n_flagged += int(np.count_nonzero(fl))
            done += n
            log.debug("convert %s: %d/%d rows written", group_id, done, nrows)
        ms.putcol("FLAG_ROW", flag_row)
        ms.close()
        t_main = time.perf_counter()
        vis_units = subtables.result(meta_future, scratch, meta_args)
        log.info(
            "convert %s: main table written in %.1f s, subtables ready %.1f s later",
            group_id, t_main - t_begin, time.perf_counter() - t_main,
        )  # fmt: skip
        ms_writer.adopt_subtables(tmp, scratch)
        with _open_rw(tmp) as t:
            t.putcolkeyword("DATA", "QuantumUnits", vis_units)
        shutil.rmtree(scratch, ignore_errors=True)
    except ms_writer.BlockError as exc:
        raise CorruptSubbandError(exc.path, exc.reason) from None
    finally:
        ms.close()
    return n_flagged


def _open_rw(path: Path):
    from casacore import tables

    return tables.table(str(path), readonly=False, ack=False)


_TMP_INFIX = ".ms.tmp-"


def _ms_bytes(nrows: int, nchan: int, npol: int) -> int:
    """What the MeasurementSet will take on disk, a little over: DATA (complex64), WEIGHT_SPECTRUM
    (float32) and FLAG (bits) per sample, UVW, WEIGHT, SIGMA and the scalar columns per row, 10 % for
    tile padding and 4 MiB for the subtables (a tiny group's MS: 2.3 MB, estimated 5.9 MB)."""
    data = nrows * nchan * npol * (8 + 4 + 1 / 8) + nrows * (24 + 8 * npol + 64)
    return int(1.1 * data) + (4 << 20)


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _check_free_space(out_dir: Path, group_id: str, need: int) -> None:
    """OSError(ENOSPC) naming ``out_dir`` unless ``need`` bytes are free there.

    casacore cannot fail cleanly when the disk fills part way through a write: the table's
    destructor throws and the process aborts (leaving its tmp copy behind), so a conversion
    that cannot fit is refused before it starts. ENOSPC is an OSError, a transient error:
    the task is retried once an operator has freed space."""
    free = _free_bytes(out_dir)
    if free < need:
        raise OSError(errno.ENOSPC, f"No space left on device for {group_id}.ms: needs about "
                      f"{need / 1e6:.1f} MB, {free / 1e6:.1f} MB free", str(out_dir))
