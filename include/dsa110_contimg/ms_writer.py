"""Write a converted group into a CASA MeasurementSet with python-casacore.

The converter (convert.py) decides *what* goes into the MS; this module does
the bulk I/O *fast and in bounded memory*:

- :func:`create_ms` makes the main table (fixed-shape DATA, FLAG,
  WEIGHT_SPECTRUM, WEIGHT, SIGMA in tiled storage managers, the same column
  layout pyuvdata's ``write_ms`` produces) with all its rows, plus the default
  subtables;
- :class:`BlockPlan` describes how one block of rows is assembled from the
  subband files: read the rows of every subband with h5py, put the channels in
  ascending frequency, rotate the phase, conjugate into CASA's convention;
- :func:`fill_block` does that for rows ``[r0, r1)`` into caller-provided
  arrays, and :class:`BlockProducer` runs it in worker processes that fill
  shared-memory slots while the parent writes the previous block with
  ``putcol``, so reading/rotating and writing overlap on two cores.

Memory is a few blocks (~64 MB of DATA each) regardless of the group size.
Only numpy and h5py are imported at module level so spawned workers start
quickly; casacore is imported where it is used.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections import deque
from dataclasses import dataclass, replace
from multiprocessing import shared_memory
from pathlib import Path
from typing import Self

import numpy as np

log = logging.getLogger(__name__)

_TWO_PI_OVER_C = 2.0 * np.pi / 299792458.0
BLOCK_BYTES = 64 * 2**20  # DATA bytes per block of rows
TILE_BYTES = 2**20  # DATA tile size on disk


@dataclass(frozen=True)
class BlockPlan:
    """Everything a worker needs to assemble blocks of output rows.

    ``files`` maps subband -> path; output channel ``lo(sb) + k`` holds the
    file's channel ``nchan - 1 - k`` (ascending frequency); ``pol_order``
    picks the file's polarisations in CASA order. The visibilities become
    ``conj(V * exp(sign i 2 pi f/c dpath))`` (the rotation to the ICRS phase
    centre followed by the conjugation into CASA's baseline convention)."""

    files: dict[int, str]
    n_subbands: int
    nchan: int  # channels per subband
    npol: int
    pol_order: tuple[int, ...]
    nrows: int
    dpath: np.ndarray  # (nrows,) metres, b.(p0 - p(t))
    sb_freq0: dict[int, float]  # first (highest) channel frequency of each file, Hz
    chan_offsets: np.ndarray  # (nchan,) file channel k minus channel 0, Hz (as written, descending)
    phase_sign: float
    rows_per_block: int

    @property
    def nout(self) -> int:
        return self.n_subbands * self.nchan

    def lo(self, sb: int) -> int:
        return (self.n_subbands - 1 - sb) * self.nchan

    def blocks(self) -> list[tuple[int, int]]:
        r = self.rows_per_block
        return [(lo, min(lo + r, self.nrows)) for lo in range(0, self.nrows, r)]


def rows_per_block(nout: int, npol: int, nrows: int) -> int:
    return int(max(1, min(nrows, BLOCK_BYTES // max(1, nout * npol * 8))))


class BlockError(Exception):
    """A subband file failed while reading a block (carries path and reason, picklable)."""

    def __init__(self, path: str, reason: str):
        super().__init__(path, reason)
        self.path = path
        self.reason = reason


class _Readers:
    """Open h5py files of a plan, kept open across blocks."""

    def __init__(self, plan: BlockPlan):
        self.plan = plan
        self._open: dict[int, object] = {}

    def dataset(self, sb: int, name: str):
        import h5py

        f = self._open.get(sb)
        if f is None:
            f = h5py.File(self.plan.files[sb], "r")
            self._open[sb] = f
        return f["Data"][name]

    def close(self):
        for f in self._open.values():
            try:
                f.close()
            except (OSError, RuntimeError, ValueError):  # pragma: no cover - closing a damaged file
                log.debug("could not close %s", f)
        self._open.clear()


def fill_block(plan: BlockPlan, readers: _Readers, r0: int, r1: int, vis, flags, nsamples, weight, dpath=None) -> None:
    """Fill rows [r0, r1) into vis/flags/nsamples (n, nout, npol) and weight (n, npol).

    ``dpath`` is the block's slice of ``plan.dpath`` (taken from the plan if not given)."""
    n = r1 - r0
    vis, flags, nsamples, weight = vis[:n], flags[:n], nsamples[:n], weight[:n]
    nchan = plan.nchan
    pol = list(plan.pol_order)
    a = _TWO_PI_OVER_C * (plan.dpath[r0:r1] if dpath is None else dpath)  # rad / Hz
    # exp(i s a f) for f = f0(sb) + offset_k: one (n, nchan) table shared by the
    # subbands times one (n,) factor per subband; float64 phases, so ~1e-16 error.
    # Built directly as the conjugate, channels reversed (ascending frequency).
    within = np.exp(-1j * plan.phase_sign * np.outer(a, plan.chan_offsets[::-1]))
    for sb in range(plan.n_subbands):
        lo = plan.lo(sb)
        out = slice(lo, lo + nchan)
        path = plan.files.get(sb)
        if path is None:
            vis[:, out] = 0
            flags[:, out] = True
            nsamples[:, out] = 0
            continue
        try:
            v = readers.dataset(sb, "visdata")[r0:r1, 0]
            fl = readers.dataset(sb, "flags")[r0:r1, 0]
            ns = readers.dataset(sb, "nsamples")[r0:r1, 0]
        except Exception as exc:  # noqa: BLE001 - h5py raises OSError/KeyError/ValueError/... for damaged files
            raise BlockError(path, f"cannot read visibilities of rows {r0}-{r1} (truncated or damaged file?): {exc}")
        want = (n, nchan, plan.npol)
        for name, arr in (("visdata", v), ("flags", fl), ("nsamples", ns)):
            if arr.shape != want:
                raise BlockError(path, f"/Data/{name} rows {r0}-{r1} have shape {arr.shape}, expected {want}")
        if v.dtype.kind != "c":
            raise BlockError(path, f"/Data/visdata has dtype {v.dtype}, expected complex")
        if pol != list(range(plan.npol)):
            v, fl, ns = v[:, :, pol], fl[:, :, pol], ns[:, :, pol]
        # conj(V rot) = conj(V) conj(rot), channels reversed into ascending frequency
        crot = (np.exp(-1j * plan.phase_sign * a * plan.sb_freq0[sb])[:, None] * within).astype(np.complex64)
        # (on a contiguous temporary: numpy multiplies into a strided slice at
        # half the speed)
        tmp = np.conjugate(v[:, ::-1, :])
        tmp *= crot[:, :, None]
        vis[:, out] = tmp
        flags[:, out] = fl[:, ::-1]
        nsamples[:, out] = ns[:, ::-1]
    # CASA's band-representative weight per row: the median nsamples (as
    # pyuvdata writes it). Usually every channel of a row has the same nsamples:
    # then the median is that value and the sort can be skipped.
    # (Reductions run over a contiguous (row, pol, channel) copy: numpy is
    # several times slower reducing over the middle axis in place.)
    ns_t = np.ascontiguousarray(nsamples.transpose(0, 2, 1))
    lo_w, hi_w = ns_t.min(axis=2), ns_t.max(axis=2)
    weight[:] = lo_w
    uneven = np.nonzero((hi_w != lo_w).any(axis=1))[0]
    if uneven.size:
        weight[uneven] = np.median(ns_t[uneven], axis=2)


# --------------------------------------------------------------------------
# worker processes with shared-memory slots
# --------------------------------------------------------------------------


def _slot_arrays(buf, rows: int, nout: int, npol: int):
    """Views (vis, flags, nsamples, weight) into one slot's buffer."""
    shape = (rows, nout, npol)
    n = rows * nout * npol
    off = 0
    vis = np.ndarray(shape, dtype=np.complex64, buffer=buf, offset=off)
    off += n * 8
    ns = np.ndarray(shape, dtype=np.float32, buffer=buf, offset=off)
    off += n * 4
    wt = np.ndarray((rows, npol), dtype=np.float32, buffer=buf, offset=off)
    off += rows * npol * 4
    fl = np.ndarray(shape, dtype=np.bool_, buffer=buf, offset=off)
    return vis, fl, ns, wt


def _slot_bytes(rows: int, nout: int, npol: int) -> int:
    n = rows * nout * npol
    return n * 8 + n * 4 + rows * npol * 4 + n


_W: dict = {}


def _exit_with_parent(parent_pid: int) -> None:
    """A worker must not outlive a converter that was killed (SIGKILL gives
    the parent no chance to stop it): ask Linux to kill it with the parent,
    and watch the parent id as a fallback elsewhere."""
    import os
    import signal
    import threading
    import time

    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux: the watcher below remains
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable")

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    if os.getppid() != parent_pid:  # the parent died before we got here
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _worker_init(plan: BlockPlan, slot_names: list[str], parent_pid: int) -> None:
    _exit_with_parent(parent_pid)
    _W["plan"] = plan
    _W["readers"] = _Readers(plan)
    _W["slots"] = [shared_memory.SharedMemory(name=n) for n in slot_names]


def _worker_fill(slot: int, r0: int, r1: int, dpath: np.ndarray):
    plan = _W["plan"]
    arrays = _slot_arrays(_W["slots"][slot].buf, plan.rows_per_block, plan.nout, plan.npol)
    try:
        fill_block(plan, _W["readers"], r0, r1, *arrays, dpath=dpath)
    except BlockError as exc:
        return ("error", exc.path, exc.reason)
    finally:
        del arrays
    return ("ok", r0, r1)


class BlockProducer:
    """Fills blocks of rows ``(r0, r1, vis, flags, nsamples, weight)`` in row order.

    With ``workers`` >= 1 the blocks are filled by that many spawned processes
    into ``workers + 1`` shared-memory slots, so the consumer can write one
    block while the next ones are read; with ``workers`` == 0 everything
    happens in this process. ``plan.dpath`` may be empty when the producer is
    created and :meth:`start`-ed (the workers boot while the caller computes
    the geometry); :meth:`blocks` takes the real one. A worker's BlockError is
    re-raised here. Use as a context manager: leaving it stops the workers and
    frees the shared memory."""

    def __init__(self, plan: BlockPlan, workers: int = 0):
        self.plan = plan
        self.workers = int(workers)
        self._pool = None
        self._shms: list = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        """Start the worker processes (no-op in-process)."""
        if self.workers <= 0 or self._pool is not None:
            return
        from concurrent.futures import ProcessPoolExecutor

        p = self.plan
        nslots = min(len(p.blocks()), self.workers + 1)
        size = _slot_bytes(p.rows_per_block, p.nout, p.npol)
        for _ in range(nslots):
            self._shms.append(shared_memory.SharedMemory(create=True, size=size))
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
            # the plan without its per-row array: small initargs keep starting
            # a worker from blocking this process while the worker boots
            initargs=(replace(p, dpath=np.zeros(0)), [s.name for s in self._shms], os.getpid()),
        )  # fmt: skip
        for f in [self._pool.submit(int) for _ in range(self.workers)]:  # boot them all now
            del f

    def close(self) -> None:
        if self._pool is not None:
            # Workers finish their current block and exit on their own; the
            # segments can be unlinked at once (mappings outlive the name).
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        for s in self._shms:
            try:
                s.close()
                s.unlink()
            except (FileNotFoundError, BufferError):  # pragma: no cover
                pass
        self._shms = []

    def blocks(self, dpath: np.ndarray):
        plan = replace(self.plan, dpath=np.asarray(dpath, dtype=float))
        if plan.dpath.shape != (plan.nrows,):
            raise ValueError(f"dpath has shape {plan.dpath.shape}, expected ({plan.nrows},)")
        if self.workers <= 0:
            yield from self._serial(plan)
        else:
            self.start()
            yield from self._parallel(plan)

    def _serial(self, p: BlockPlan):
        rows = p.rows_per_block
        vis = np.empty((rows, p.nout, p.npol), np.complex64)
        fl = np.empty((rows, p.nout, p.npol), np.bool_)
        ns = np.empty((rows, p.nout, p.npol), np.float32)
        wt = np.empty((rows, p.npol), np.float32)
        readers = _Readers(p)
        try:
            for r0, r1 in p.blocks():
                fill_block(p, readers, r0, r1, vis, fl, ns, wt)
                n = r1 - r0
                yield r0, r1, vis[:n], fl[:n], ns[:n], wt[:n]
        finally:
            readers.close()

    def _parallel(self, p: BlockPlan):
        pool, shms = self._pool, self._shms
        pending: deque = deque()
        todo = deque(p.blocks())
        free = deque(range(len(shms)))
        try:
            while todo or pending:
                while todo and free:
                    r0, r1 = todo.popleft()
                    slot = free.popleft()
                    pending.append((slot, pool.submit(_worker_fill, slot, r0, r1, p.dpath[r0:r1])))
                slot, fut = pending.popleft()
                res = fut.result()
                if res[0] == "error":
                    raise BlockError(res[1], res[2])
                _, r0, r1 = res
                vis, fl, ns, wt = _slot_arrays(shms[slot].buf, p.rows_per_block, p.nout, p.npol)
                n = r1 - r0
                try:
                    yield r0, r1, vis[:n], fl[:n], ns[:n], wt[:n]
                finally:
                    del vis, fl, ns, wt
                free.append(slot)
        except BaseException:
            for _, fut in pending:
                fut.cancel()
            raise


# --------------------------------------------------------------------------
# the MeasurementSet itself
# --------------------------------------------------------------------------


def _tile_rows(cell_bytes: int, nrows: int) -> int:
    return int(max(1, min(nrows, TILE_BYTES // max(1, cell_bytes))))


def create_ms(path: Path, nrows: int, nchan: int, npol: int, vis_units: str = "uncalib"):
    """Create the MS skeleton with ``nrows`` rows; returns the open main table.

    Column layout as pyuvdata's ``write_ms`` makes it (so CASA, WSClean and
    pyuvdata's reader treat it alike), with fixed cell shapes and tile shapes
    sized for the data: DATA tiles hold all channels of ~1 MB of rows."""
    from casacore import tables

    desc = tables.required_ms_desc("MAIN")
    tiled = {
        "FLAG": "TiledFlag", "WEIGHT": "TiledWgt", "SIGMA": "TiledSigma",
    }  # fmt: skip
    for col, grp in tiled.items():
        desc[col].update(dataManagerType="TiledShapeStMan", dataManagerGroup=grp)
    desc["UVW"].update(dataManagerType="TiledColumnStMan", dataManagerGroup="TiledUVW")
    desc["FLAG_CATEGORY"].update(
        dataManagerType="TiledShapeStMan", dataManagerGroup="TiledFlagCategory", keywords={"CATEGORY": np.array("")}
    )
    for key in ("ANTENNA1", "ANTENNA2", "DATA_DESC_ID", "FLAG_ROW"):
        desc[key].update(dataManagerGroup=key)
    for key in (
        "ARRAY_ID", "EXPOSURE", "FEED1", "FEED2", "FIELD_ID", "INTERVAL", "OBSERVATION_ID",
        "PROCESSOR_ID", "SCAN_NUMBER", "STATE_ID", "TIME", "TIME_CENTROID",
    ):  # fmt: skip
        desc[key].update(dataManagerType="IncrementalStMan", dataManagerGroup=key)
    for name, value, vtype, grp, comment in (
        ("DATA", 0j, "complex", "TiledData", "The data column"),
        ("WEIGHT_SPECTRUM", 0.0, "float", "TiledWgtSpectrum", "Weight for each data point"),
    ):
        cd = tables.makearrcoldesc(
            name, value, valuetype=vtype, ndim=2, datamanagertype="TiledShapeStMan",
            datamanagergroup=grp, comment=comment,
        )  # fmt: skip
        del cd["desc"]["shape"]
        desc.update(tables.maketabdesc(cd))
    ncell = nchan * npol
    spec = {
        "TiledData": [npol, nchan, _tile_rows(ncell * 8, nrows)],
        "TiledWgtSpectrum": [npol, nchan, _tile_rows(ncell * 4, nrows)],
        "TiledFlag": [npol, nchan, _tile_rows(max(1, ncell // 8), nrows)],
        "TiledWgt": [npol, _tile_rows(npol * 4 * 16, nrows)],
        "TiledSigma": [npol, _tile_rows(npol * 4 * 16, nrows)],
        "TiledUVW": [3, _tile_rows(3 * 8 * 16, nrows)],
    }
    dminfo = tables.makedminfo(desc, {k: {"DEFAULTTILESHAPE": np.int32(v)} for k, v in spec.items()})
    ms = tables.default_ms(str(path), desc, dminfo)
    ms.addrows(nrows)
    ms.putcolkeyword("DATA", "QuantumUnits", vis_units)
    return ms


SUBTABLES = (
    "ANTENNA", "DATA_DESCRIPTION", "FEED", "FIELD", "HISTORY", "OBSERVATION", "POINTING",
    "POLARIZATION", "SOURCE", "SPECTRAL_WINDOW",
)  # fmt: skip


def adopt_subtables(ms_path: Path, scratch: Path) -> None:
    """Move the SUBTABLES written into the scratch MS ``scratch`` into
    ``ms_path`` (replacing its empty defaults) and point the main table at them.

    Lets the subtables be written by another process while this one fills the
    main table: two processes never write the same table."""
    from casacore import tables

    for name in SUBTABLES:
        src = scratch / name
        if not (src / "table.dat").exists():
            raise RuntimeError(f"{scratch}: subtable {name} was not written")
        dst = ms_path / name
        if dst.exists():
            import shutil

            shutil.rmtree(dst)
        os.replace(src, dst)
    with tables.table(str(ms_path), readonly=False, ack=False) as t:
        have = t.getkeywords()
        for name in SUBTABLES:
            if name not in have:
                t.putkeyword(name, f"Table: {ms_path / name}")


def write_subtables(path: Path, uvobj, pol_order) -> None:
    """ANTENNA, DATA_DESCRIPTION, FEED, FIELD, HISTORY, OBSERVATION, POINTING,
    POLARIZATION, SOURCE and SPECTRAL_WINDOW from a metadata-only UVData, with
    pyuvdata's own MS subtable writers (the same rows its ``write_ms`` makes)."""
    from pyuvdata.utils.io import ms as ms_utils

    fp = str(path)
    ms_utils.write_ms_antenna(fp, uvobj=uvobj)
    ms_utils.write_ms_data_description(fp, uvobj=uvobj)
    ms_utils.write_ms_feed(fp, uvobj=uvobj)
    ms_utils.write_ms_field(fp, uvobj=uvobj)
    ms_utils.write_ms_history(fp, uvobj=uvobj)
    ms_utils.write_ms_observation(fp, uvobj=uvobj)
    ms_utils.write_ms_pointing(fp, uvobj=uvobj)
    ms_utils.write_ms_polarization(fp, pol_order=pol_order, uvobj=uvobj)
    ms_utils.write_ms_source(fp, uvobj=uvobj)
    ms_utils.write_ms_spectral_window(fp, uvobj=uvobj)
