"""Simulator: correlator file layout, physics against known truth."""
from __future__ import annotations

import math
import re
import warnings
from datetime import datetime, timedelta, timezone

import h5py
import numpy as np
import pytest
from astropy.time import Time

from dsa110_contimg import catalog, geometry
from dsa110_contimg import instrument as ins
from dsa110_contimg.simulate import GainModel, SkyModel, random_strip_sky, session_start_around_transit, simulate_group, simulate_session
from dsa110_contimg.simulate.session import array_geometry, integration_times
from dsa110_contimg.simulate.sky import itrs_to_icrs

START = datetime(2026, 11, 24, 12, 0, 0, tzinfo=timezone.utc)
DEC = 55.0
TINY = ins.preset("tiny")
NAME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d_sb(\d\d)\.hdf5$")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    res = simulate_session(root / "incoming", "tiny", START, 1, DEC, seed=3, calibrator="0834+555")
    return root, res


def test_session_files_named_and_complete(session):
    root, res = session
    assert len(res.files) == 16
    sbs = sorted(int(NAME_RE.match(p.name).group(1)) for p in res.files)
    assert sbs == list(range(16))
    assert all(p.exists() for p in res.files)
    assert not list((root / "incoming").glob("*_incomplete.hdf5"))
    for p in res.files:  # file-name timestamps jittered within +-20 s of the group start
        ts = datetime.strptime(p.name[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
        assert abs((ts - START).total_seconds()) <= 20
    assert len({p.name[:19] for p in res.files}) > 1  # they do differ
    assert res.group_timestamps == [START]
    assert res.catalog_path == root / "reference_catalog.tsv"
    assert len(catalog.read_catalog(res.catalog_path)) == res.n_sources
    assert (res.truth_path / "2026-11-24T12:00:00_gains.npz").exists()
    assert res.sky_path.exists()
    # 0834+555 (dec 55.57) lies in the strip: it is in the sky and the catalogue
    assert "0834+555" in [s.name for s in catalog.read_catalog(res.catalog_path)]


def test_session_idempotent(session):
    root, res = session
    mtimes = [p.stat().st_mtime_ns for p in res.files]
    again = simulate_session(root / "incoming", "tiny", START, 1, DEC, seed=3, calibrator="0834+555")
    assert again.files == res.files
    assert again.files_written == 0
    assert [p.stat().st_mtime_ns for p in res.files] == mtimes


def test_file_layout(session):
    _, res = session
    path = next(p for p in res.files if p.name.endswith("_sb03.hdf5"))
    nant = len(TINY.pads())
    nbls = nant * (nant + 1) // 2
    nt, nf = TINY.integrations_per_file, TINY.channels_per_subband
    with h5py.File(path, "r") as f:
        h, d = f["Header"], f["Data"]
        assert h["telescope_name"][()] == b"OVRO_MMA"
        assert h["instrument"][()] == b"DSA"
        assert h["phase_type"][()] == b"drift"
        assert h["Nants_telescope"][()] == 117 and h["Nants_data"][()] == nant
        assert [x.decode() for x in h["antenna_names"][:]] == [str(i) for i in range(1, 118)]
        assert list(h["antenna_numbers"][:]) == list(range(117))
        assert h["antenna_positions"].shape == (117, 3)
        assert np.allclose(h["antenna_diameters"][:], 4.65)
        assert h["Nbls"][()] == nbls and h["Nblts"][()] == nbls * nt and h["Ntimes"][()] == nt
        assert h["Nspws"][()] == 1 and list(h["spw_array"][:]) == [0]
        assert list(h["polarization_array"][:]) == [-5, -6]
        freq = h["freq_array"][:]
        assert freq.shape == (1, nf) and np.all(np.diff(freq[0]) < 0)
        assert np.allclose(freq[0], ins.subband_frequencies(3, nf))
        assert h["uvw_array"].dtype == np.float32 and h["uvw_array"].shape == (nbls * nt, 3)
        a1, a2, t = h["ant_1_array"][:], h["ant_2_array"][:], h["time_array"][:]
        assert np.all(a1 <= a2) and np.sum(a1 == a2) == nant * nt
        assert set(a1) | set(a2) == {p - 1 for p in TINY.pads()}
        assert np.all(t[:nbls] == t[0]) and np.all(np.diff(t.reshape(nt, nbls)[:, 0]) > 0)  # time-major
        dt_s = np.diff(t.reshape(nt, nbls)[:, 0]) * 86400
        assert np.allclose(dt_s, ins.INTEGRATION_S, atol=1e-3)
        ek = h["extra_keywords"]
        assert ek["phase_center_dec"][()] == pytest.approx(math.radians(DEC))
        assert ek["ha_phase_center"][()] == 0.0
        for name, dtype in (("visdata", np.complex64), ("flags", np.bool_), ("nsamples", np.float32)):
            assert d[name].dtype == dtype and d[name].shape == (nbls * nt, 1, nf, 2)
        # uvw constant in time (phased to a direction fixed in ITRS)
        uvw = h["uvw_array"][:].reshape(nt, nbls, 3)
        assert np.all(uvw == uvw[0])


def test_pyuvdata_reads_file(session):
    from pyuvdata import UVData

    _, res = session
    path = next(p for p in res.files if p.name.endswith("_sb00.hdf5"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uvw do not match zenith-drift uvw: expected for DSA-110 files
        # .hdf5 is not auto-detected; float32 uvw (as the correlator writes them)
        # fail pyuvdata 3.2's type check, so a reader casts before checking.
        uv = UVData.from_file(path, file_type="uvh5", run_check=False)
        uv.uvw_array = uv.uvw_array.astype(np.float64)
        uv.check()
    assert uv.telescope.Nants == 117
    assert uv.Nants_data == len(TINY.pads())
    assert np.allclose(uv.freq_array, ins.subband_frequencies(0, TINY.channels_per_subband))
    cat = uv.phase_center_catalog[uv.phase_center_id_array[0]]
    assert cat["cat_type"] == "unprojected"
    assert uv.extra_keywords["phase_center_dec"] == pytest.approx(math.radians(DEC))


def _vis(path):
    with h5py.File(path, "r") as f:
        return (f["Data/visdata"][:, 0], f["Header/ant_1_array"][:], f["Header/ant_2_array"][:],
                int(f["Header/Nbls"][()]))


def test_blank_sky_noise_matches_sefd(tmp_path):
    ants = array_geometry(TINY, DEC).antenna_numbers
    (path,) = simulate_group(tmp_path, TINY, START, DEC, SkyModel.empty(), GainModel.unity(ants), subbands=[5], seed=9)
    vis, a1, a2, _ = _vis(path)
    cross = vis[a1 != a2]
    sigma = ins.SEFD_JY / math.sqrt(2 * TINY.channel_width_hz * ins.INTEGRATION_S)
    # ~6700 samples per component: the std is known to ~1 %; allow 5 %
    assert abs(np.std(cross.real) / sigma - 1) < 0.05
    assert abs(np.std(cross.imag) / sigma - 1) < 0.05
    assert abs(np.mean(cross.real)) < 5 * sigma / math.sqrt(cross.size)
    auto = vis[a1 == a2]
    assert np.allclose(auto.imag, 0) and abs(np.mean(auto.real) / ins.SEFD_JY - 1) < 0.01


def test_point_source_at_phase_centre(tmp_path):
    geo = array_geometry(TINY, DEC)
    times = integration_times(START, TINY.integrations_per_file)
    mid = TINY.integrations_per_file // 2
    ra, dec = itrs_to_icrs(geo.p0, times[mid])
    sky = SkyModel(np.degrees([ra]), np.degrees([dec]), [1.0], [0.0], ["centre"])
    (path,) = simulate_group(tmp_path, TINY, START, DEC, sky, GainModel.unity(geo.antenna_numbers),
                             subbands=[0], noise=False)
    vis, a1, a2, nbls = _vis(path)
    v = vis.reshape(TINY.integrations_per_file, nbls, -1, 2)[mid]
    cross = v[a1[:nbls] != a2[:nbls]]
    # beam at zero separation is 1: visibility 1 Jy, phase 0 (complex64 + astropy round trip)
    assert np.allclose(np.abs(cross), 1.0, atol=1e-4)
    assert np.max(np.abs(np.angle(cross))) < 1e-3
    auto = v[a1[:nbls] == a2[:nbls]]
    assert np.allclose(auto.real, ins.SEFD_JY + 1.0, rtol=1e-6)
    # away from transit the source drifts: the first integration has fringes on long baselines
    v0 = vis.reshape(TINY.integrations_per_file, nbls, -1, 2)[0][a1[:nbls] != a2[:nbls]]
    assert np.max(np.abs(np.angle(v0))) > 0.5


def test_gain_model_bounds_and_round_trip(tmp_path):
    ants = np.arange(10)
    g = GainModel.random(ants, seed=4)
    freqs = np.linspace(ins.BAND_LOW_HZ, ins.BAND_HIGH_HZ, 400)
    bp = g.bandpass(freqs)
    assert bp.shape == (10, 400, 2)
    assert np.max(np.abs(np.abs(bp) - 1)) <= 0.1 + 1e-12
    t = 61000.0 + np.arange(0, 2, 1 / 3600) / 24  # two hours at 1 s
    dr = g.drift(t)
    per_h = np.abs(np.diff(np.abs(dr), axis=1)) * 3600
    assert per_h.max() <= 0.02 + 1e-6
    assert np.degrees(np.abs(np.diff(np.angle(dr), axis=1)) * 3600).max() <= 5.0 + 1e-6
    full = g.gains(t[:3], freqs[:5])
    assert full.shape == (10, 3, 5, 2)
    path = g.save(tmp_path / "g.npz", times_mjd=t[:3], freqs_hz=freqs[:5])
    g2 = GainModel.load(path)
    assert np.allclose(g2.gains(t[:3], freqs[:5]), full)
    with np.load(path) as z:
        assert np.allclose(z["bandpass"][:, None] * z["drift"][:, :, None], full)
    assert np.allclose(GainModel.random(ants, seed=4).gains(t[:3], freqs[:5]), full)  # deterministic


def test_random_strip_sky():
    sky = random_strip_sky(120.0, 135.0, 55.0, 3.0, 60, seed=2)
    assert "0834+555" in sky.names
    assert len(sky) == 61
    assert np.all(np.abs(sky.dec_deg - 55.0) <= 3.0)
    assert np.all((sky.ra_deg >= 120.0) & (sky.ra_deg <= 135.0))
    assert np.all((sky.flux_jy >= 0.02) & (sky.flux_jy <= 8.0))
    d = catalog.angular_distance_deg(sky.ra_deg[:, None], sky.dec_deg[:, None], sky.ra_deg[None], sky.dec_deg[None])
    d[np.diag_indices_from(d)] = 99
    assert d.min() * 60 >= 10.0
    wrap = random_strip_sky(355.0, 5.0, 16.0, 3.0, 20, seed=2)
    assert np.all((wrap.ra_deg >= 355.0) | (wrap.ra_deg <= 5.0))


def test_session_start_around_transit():
    day = datetime(2026, 11, 24, tzinfo=timezone.utc)
    start = session_start_around_transit("0834+555", day, duration=timedelta(hours=1))
    assert start.minute == 0 and start.second == 0 and start.microsecond == 0
    from dsa110_contimg.calibrators import calibrator_transits

    (transit,) = calibrator_transits("0834+555", start, start + timedelta(hours=1))
    assert start <= transit < start + timedelta(hours=1)


def test_source_directions_consistent_with_geometry():
    """The meridian at the apparent dec maps back to ICRS near that dec and the current LST."""
    geo = array_geometry(TINY, DEC)
    t = Time("2026-11-24T12:00:00", scale="utc")
    ra, dec = itrs_to_icrs(geo.p0, t)
    lst = t.sidereal_time("apparent", longitude=ins.SITE_LON_DEG).deg
    assert abs((math.degrees(ra) - lst + 180) % 360 - 180) < 0.6  # precession since J2000
    assert abs(math.degrees(dec) - DEC) < 0.3
    back = geometry.angular_separation(
        __import__("dsa110_contimg.simulate.sky", fromlist=["icrs_to_itrs"]).icrs_to_itrs(ra, dec, t)[0, 0], geo.p0)
    assert back < 1e-8


@pytest.mark.parametrize("freqs", [1.4e9 - np.arange(70) * 244140.625, np.array([1.3e9, 1.35e9, 1.41e9, 1.49e9])],
                         ids=["even-channels", "uneven-channels"])
def test_point_source_sum_equals_the_direct_sum(freqs):
    """The channel recurrence (with reseeding) gives the same visibilities as one exponential each."""
    from dsa110_contimg import geometry

    rng = np.random.default_rng(7)
    paths = rng.uniform(-1300.0, 1300.0, size=(500, 9))
    amps = rng.uniform(0.0, 3.0, size=(9, freqs.size))
    direct = sum(geometry.phase_factor(paths[:, k], freqs) * amps[k][None, :] for k in range(9))
    fast = geometry.point_source_sum(paths, freqs, amps)
    assert np.abs(fast - direct).max() < 1e-9 * np.abs(direct).max()
