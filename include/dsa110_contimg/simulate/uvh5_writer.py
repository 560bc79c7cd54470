"""Write one subband file in the DSA-110 correlator's UVH5 layout (h5py).

This is the old-style UVH5 that pyuvdata 2.x wrote (pyuvdata 3.x still reads
it): a (Nblts, 1, Nfreq, Npol) data shape with the spectral-window axis,
``freq_array`` (1, Nfreq) in descending frequency, a scalar
``channel_width``, ``phase_type`` "drift" although the data are phased to
HA=0 at the pointing declination, and ``uvw_array`` stored as float32.
The file is written as ``<stem>_incomplete.hdf5`` and renamed to
``<stem>.hdf5`` when complete, as the correlator does.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np
from astropy import units as u
from astropy.time import Time

from .. import instrument as ins

UVH5_VERSION = "1.0"


@dataclass(frozen=True)
class SubbandLayout:
    """Everything the header needs; arrays per baseline are in data order."""

    times_jd: np.ndarray  # (Ntimes,) integration centres, UTC JD
    freqs_hz: np.ndarray  # (Nfreq,) descending
    channel_width_hz: float
    integration_s: float
    ant1: np.ndarray  # (Nbls,) antenna numbers, ant1 <= ant2
    ant2: np.ndarray  # (Nbls,)
    uvw_m: np.ndarray  # (Nbls, 3) constant in time (phased to the meridian)
    antenna_positions: np.ndarray  # (117, 3) ECEF offsets from the telescope
    nants_data: int
    phase_center_dec_rad: float  # apparent
    history: str = "DSA-110 correlator output (simulated by dsa110_contimg.simulate)"

    @property
    def nbls(self) -> int:
        return int(self.ant1.size)

    @property
    def ntimes(self) -> int:
        return int(self.times_jd.size)


def incomplete_path(final_path: Path) -> Path:
    """``<stem>_incomplete.hdf5`` for ``<stem>.hdf5``."""
    return final_path.with_name(f"{final_path.stem}_incomplete.hdf5")


def apparent_lst_rad(times_jd: np.ndarray) -> np.ndarray:
    """Local apparent sidereal time (rad) at OVRO (what pyuvdata checks against)."""
    t = Time(np.asarray(times_jd, dtype=float), format="jd", scale="utc")
    return t.sidereal_time("apparent", longitude=ins.SITE_LON_DEG * u.deg).rad


def _s(text: str) -> np.bytes_:
    return np.bytes_(text.encode("utf8"))


def write_subband(final_path: str | Path, layout: SubbandLayout, blocks: Iterable[np.ndarray]) -> Path:
    """Write a subband file; ``blocks`` yields one (Nbls, Nfreq, Npol) complex
    array per integration, in time order. Returns the final path."""
    final_path = Path(final_path)
    tmp = incomplete_path(final_path)
    nbls, ntimes, nfreq = layout.nbls, layout.ntimes, layout.freqs_hz.size
    npol = len(ins.POL_CODES)
    nblts = nbls * ntimes
    lst = apparent_lst_rad(layout.times_jd)
    try:
        with h5py.File(tmp, "w") as f:
            h = f.create_group("Header")
            h["telescope_name"] = _s(ins.TELESCOPE_NAME)
            h["instrument"] = _s(ins.INSTRUMENT)
            h["latitude"] = float(ins.SITE_LAT_DEG)
            h["longitude"] = float(ins.SITE_LON_DEG)
            h["altitude"] = float(ins.SITE_HEIGHT_M)
            h["Nants_data"] = int(layout.nants_data)
            h["Nants_telescope"] = int(ins.N_PADS)
            h["antenna_names"] = np.array([str(p).encode() for p in range(1, ins.N_PADS + 1)], dtype="S")
            h["antenna_numbers"] = np.arange(ins.N_PADS, dtype=np.int64)
            h["antenna_positions"] = np.asarray(layout.antenna_positions, dtype=np.float64)
            h["antenna_diameters"] = np.full(ins.N_PADS, ins.DISH_DIAMETER_M)
            h["Nbls"] = nbls
            h["Nblts"] = nblts
            h["Nfreqs"] = nfreq
            h["Npols"] = npol
            h["Ntimes"] = ntimes
            h["Nspws"] = 1
            h["spw_array"] = np.array([0], dtype=np.int64)
            h["channel_width"] = float(layout.channel_width_hz)
            h["freq_array"] = np.asarray(layout.freqs_hz, dtype=np.float64)[None, :]
            h["polarization_array"] = np.array(ins.POL_CODES, dtype=np.int64)
            h["time_array"] = np.repeat(np.asarray(layout.times_jd, dtype=np.float64), nbls)
            h["integration_time"] = np.full(nblts, float(layout.integration_s))
            h["lst_array"] = np.repeat(lst, nbls)
            h["ant_1_array"] = np.tile(np.asarray(layout.ant1, dtype=np.int64), ntimes)
            h["ant_2_array"] = np.tile(np.asarray(layout.ant2, dtype=np.int64), ntimes)
            h["uvw_array"] = np.tile(np.asarray(layout.uvw_m, dtype=np.float32), (ntimes, 1))
            h["phase_type"] = _s("drift")
            h["vis_units"] = _s("uncalib")
            h["history"] = _s(layout.history)
            h["version"] = _s(UVH5_VERSION)
            ek = h.create_group("extra_keywords")
            ek["phase_center_dec"] = float(layout.phase_center_dec_rad)
            ek["ha_phase_center"] = 0.0

            d = f.create_group("Data")
            vis = d.create_dataset("visdata", (nblts, 1, nfreq, npol), dtype=np.complex64)
            flags = d.create_dataset("flags", (nblts, 1, nfreq, npol), dtype=bool)
            nsamples = d.create_dataset("nsamples", (nblts, 1, nfreq, npol), dtype=np.float32)
            no_flags = np.zeros((nbls, 1, nfreq, npol), dtype=bool)
            ones = np.ones((nbls, 1, nfreq, npol), dtype=np.float32)
            n_written = 0
            for it, block in enumerate(blocks):
                if it >= ntimes:
                    raise ValueError(f"{tmp}: more than {ntimes} integrations supplied")
                block = np.asarray(block)
                if block.shape != (nbls, nfreq, npol):
                    raise ValueError(f"{tmp}: block shape {block.shape}, expected {(nbls, nfreq, npol)}")
                rows = slice(it * nbls, (it + 1) * nbls)
                # exact shapes: h5py broadcasts element-wise (slowly) otherwise
                vis[rows] = block.astype(np.complex64)[:, None, :, :]
                flags[rows] = no_flags
                nsamples[rows] = ones
                n_written += 1
            if n_written != ntimes:
                raise ValueError(f"{tmp}: {n_written} integrations supplied, expected {ntimes}")
        os.rename(tmp, final_path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return final_path
