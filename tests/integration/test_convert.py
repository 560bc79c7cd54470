"""Convert a simulated 'tiny' group to a MeasurementSet and check it with CASA.

Truth comes from the simulator's UVH5 files (read here with h5py) and from
astropy; the expected phase rotation is recomputed in this file from the MS's
own FIELD phase centre, not taken from convert.py."""
from __future__ import annotations

import math
import shutil
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import pytest
from dsa110_contimg import casa_env, geometry
from dsa110_contimg import convert as convert_mod
from dsa110_contimg.convert import POINTING_DEC_KEYWORD, ConvertResult, convert_group
from dsa110_contimg.errors import CorruptSubbandError, IncompleteGroupError
from dsa110_contimg.instrument import N_SUBBANDS, preset, subband_frequencies

PRESET = "tiny"
DEC_DEG = 54.6
START = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
C = 299792458.0


@pytest.fixture(scope="module")
def group_files(tmp_path_factory) -> list[Path]:
    from dsa110_contimg.simulate import simulate_session

    root = tmp_path_factory.mktemp("convert_sim")
    res = simulate_session(root / "incoming", PRESET, START, 1, DEC_DEG, seed=3)
    assert len(res.files) == N_SUBBANDS
    return [Path(p) for p in res.files]


@pytest.fixture(scope="module")
def converted(group_files, tmp_path_factory) -> ConvertResult:
    return convert_group(group_files, tmp_path_factory.mktemp("convert_ms"))


def copy_group(files: list[Path], dest: Path, skip=()) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for p in files:
        if any(p.name.endswith(f"_sb{sb:02d}.hdf5") for sb in skip):
            continue
        shutil.copy2(p, dest / p.name)
        out.append(dest / p.name)
    return out


def table(path, sub: str = ""):
    tb = casa_env.casatools().table()
    tb.open(str(path) + (f"/{sub}" if sub else ""))
    return tb


def read_cols(path, sub, *cols):
    tb = table(path, sub)
    try:
        return [tb.getcol(c) for c in cols]
    finally:
        tb.close()


def icrs_itrs(ra_rad: float, dec_rad: float, jd: np.ndarray) -> np.ndarray:
    """ITRS unit vectors (Nt, 3) of an ICRS direction (astropy, unit sphere)."""
    from astropy import units as u
    from astropy.coordinates import ICRS, ITRS, SkyCoord
    from astropy.time import Time

    t = Time(jd, format="jd", scale="utc")
    sc = SkyCoord(ra=np.full(t.shape, ra_rad) * u.rad, dec=np.full(t.shape, dec_rad) * u.rad, frame=ICRS())
    v = np.moveaxis(sc.transform_to(ITRS(obstime=t)).cartesian.xyz.value, 0, -1)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------


def test_ms_layout(converted, group_files):
    p = preset(PRESET)
    ms = Path(converted.ms_path)
    assert ms.name == f"{converted.group_id}.ms" and ms.is_dir()
    with h5py.File(group_files[0], "r") as f:
        nblts = int(f["Header/Nblts"][()])
        ntimes = int(f["Header/Ntimes"][()])
    nchan = N_SUBBANDS * p.channels_per_subband
    assert (converted.n_rows, converted.n_channels, converted.n_times) == (nblts, nchan, ntimes)
    assert converted.n_antennas == len(p.pads())
    assert converted.missing_subbands == ()
    assert converted.start_mjd < converted.mid_mjd < converted.end_mjd
    # ~8 x 12.9 s
    assert converted.end_mjd - converted.start_mjd == pytest.approx(p.integrations_per_file * 12.884902 / 86400, rel=1e-6)
    assert converted.pointing_dec_deg == pytest.approx(DEC_DEG)
    assert abs(converted.phase_center_dec_deg - DEC_DEG) < 0.5  # J2000 vs apparent: precession + nutation
    assert converted.as_dict()["missing_subbands"] == []

    tb = table(ms)
    try:
        assert tb.nrows() == nblts
        a1, a2 = tb.getcol("ANTENNA1"), tb.getcol("ANTENNA2")
        assert sorted(set(a1) | set(a2)) == sorted(np.array(p.pads()) - 1)
        assert tb.getcol("DATA").shape == (2, nchan, nblts)
        assert tb.getkeyword(POINTING_DEC_KEYWORD) == pytest.approx(math.radians(DEC_DEG))
        assert tb.getkeyword("DSA110_GROUP_ID") == converted.group_id
    finally:
        tb.close()
    (names,) = read_cols(ms, "ANTENNA", "NAME")
    assert len(names) in (117, len(p.pads()))
    (chan_freq,) = read_cols(ms, "SPECTRAL_WINDOW", "CHAN_FREQ")
    assert chan_freq.shape == (nchan, 1)
    f = chan_freq[:, 0]
    assert np.all(np.diff(f) > 0)
    expect = np.sort(np.concatenate([subband_frequencies(sb, p.channels_per_subband) for sb in range(N_SUBBANDS)]))
    np.testing.assert_allclose(f, expect, rtol=0, atol=1.0)
    (corr,) = read_cols(ms, "POLARIZATION", "CORR_TYPE")
    assert corr[:, 0].tolist() == [9, 12]  # XX, YY
    (phase_dir,) = read_cols(ms, "FIELD", "PHASE_DIR")
    assert math.degrees(phase_dir[0, 0, 0]) % 360 == pytest.approx(converted.phase_center_ra_deg, abs=1e-9)
    assert math.degrees(phase_dir[1, 0, 0]) == pytest.approx(converted.phase_center_dec_deg, abs=1e-9)
    # the ICRS phase centre is the meridian at the pointing dec at mid-time
    p0 = geometry.meridian_direction(math.radians(DEC_DEG))
    pc = icrs_itrs(phase_dir[0, 0, 0], phase_dir[1, 0, 0], np.array([converted.mid_mjd + 2400000.5]))[0]
    assert math.degrees(geometry.angular_separation(pc, p0)) * 3600 < 0.01


def test_data_is_uvh5_times_phase_rotation(converted, group_files):
    """DATA = conj(V_uvh5 * exp(sign i 2pi nu/c b.(p0 - p(t)))), uvw = -(b in the p(t) basis).

    (write_ms conjugates and negates uvw into CASA's convention.) Tolerance:
    complex64 storage, ~1e-6 of the largest amplitude on the baseline."""
    ms = Path(converted.ms_path)
    (phase_dir,) = read_cols(ms, "FIELD", "PHASE_DIR")
    ra0, dec0 = phase_dir[0, 0, 0], phase_dir[1, 0, 0]
    time_s, a1, a2, data, uvw_ms = read_cols(ms, "", "TIME", "ANTENNA1", "ANTENNA2", "DATA", "UVW")
    (chan_freq,) = read_cols(ms, "SPECTRAL_WINDOW", "CHAN_FREQ")
    freqs_ms = chan_freq[:, 0]
    row_of = {(round(t * 1000), int(x), int(y)): i for i, (t, x, y) in enumerate(zip(time_s, a1, a2))}
    nch = preset(PRESET).channels_per_subband

    for path in (group_files[0], group_files[-1]):  # sb00 (top of the band) and sb15 (bottom)
        sb = int(path.name[-7:-5])
        jd, ant1, ant2, ecef, freqs, dec_app, vis, _, _ = _read_subband(path)
        lo = (N_SUBBANDS - 1 - sb) * nch
        np.testing.assert_allclose(freqs_ms[lo : lo + nch], freqs[::-1])
        cross = ant1 != ant2
        b = ecef[ant2] - ecef[ant1]
        blen = np.linalg.norm(b, axis=1)
        bl_long = (ant1[cross][np.argmax(blen[cross])], ant2[cross][np.argmax(blen[cross])])
        bl_short = (ant1[cross][np.argmin(blen[cross])], ant2[cross][np.argmin(blen[cross])])
        p0 = geometry.meridian_direction(dec_app)
        for bl in (bl_long, bl_short):
            sel = np.nonzero((ant1 == bl[0]) & (ant2 == bl[1]))[0]
            p_new = icrs_itrs(ra0, dec0, jd[sel])
            pole = icrs_itrs(0.0, math.pi / 2, jd[sel])
            dpath = np.einsum("ij,ij->i", b[sel], p0 - p_new)
            expect = vis[sel] * geometry.phase_factor(dpath, freqs)[:, :, None]
            rows = [row_of[(round((t - 2400000.5) * 86400.0 * 1000), bl[0], bl[1])] for t in jd[sel]]
            got = np.conj(data[:, lo : lo + nch, rows].transpose(2, 1, 0)[:, ::-1, :])
            scale = np.abs(expect).max()
            assert np.max(np.abs(got - expect)) <= 2e-6 * scale, f"baseline {bl} sb{sb:02d}"
            # the rotation is not trivial: the phase moves by radians across the group
            assert np.ptp(2 * np.pi * dpath * freqs[0] / C) > 0.1 or bl == bl_short
            uvw_expect = np.einsum("tij,tj->ti", geometry.uvw_basis(p_new, pole), b[sel])
            np.testing.assert_allclose(-uvw_ms[:, rows].T, uvw_expect, atol=1e-4)
        # autocorrelations come through (real) untouched
        auto = np.nonzero(~cross)[0][:3]
        rows = [row_of[(round((jd[i] - 2400000.5) * 86400.0 * 1000), ant1[i], ant2[i])] for i in auto]
        np.testing.assert_allclose(
            data[:, lo : lo + nch, rows].transpose(2, 1, 0)[:, ::-1, :].real, vis[auto].real, rtol=1e-6
        )


def test_missing_subband_is_flagged(group_files, tmp_path):
    files = copy_group(group_files, tmp_path / "in", skip=(5,))
    assert len(files) == 15
    res = convert_group(files, tmp_path / "ms")
    assert res.missing_subbands == (5,)
    nch = preset(PRESET).channels_per_subband
    assert res.n_channels == N_SUBBANDS * nch  # same layout as a full group
    (flag,) = read_cols(res.ms_path, "", "FLAG")
    lo = (N_SUBBANDS - 1 - 5) * nch
    assert flag[:, lo : lo + nch, :].all()
    others = np.ones(flag.shape[1], dtype=bool)
    others[lo : lo + nch] = False
    assert not flag[:, others, :].any()
    tb = table(res.ms_path)
    try:
        assert tb.getkeyword("DSA110_MISSING_SUBBANDS") == "05"
    finally:
        tb.close()


def test_too_few_subbands(group_files, tmp_path):
    files = copy_group(group_files, tmp_path / "in", skip=(0, 3, 7, 9, 11))
    with pytest.raises(IncompleteGroupError) as exc:
        convert_group(files, tmp_path / "ms", min_subbands=12)
    assert "11/16" in exc.value.reason
    assert "sb00" in exc.value.reason and "sb11" in exc.value.reason
    assert not (tmp_path / "ms").exists() or not any((tmp_path / "ms").iterdir())


def test_truncated_file_names_the_file(group_files, tmp_path):
    files = copy_group(group_files, tmp_path / "in")
    bad = files[7]
    size = bad.stat().st_size
    with open(bad, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CorruptSubbandError) as exc:
        convert_group(files, tmp_path / "ms")
    assert exc.value.path == str(bad)
    assert "truncated" in str(exc.value)
    assert not any((tmp_path / "ms").glob("*")) if (tmp_path / "ms").exists() else True


def test_zero_length_and_duplicate_and_bad_name(group_files, tmp_path):
    files = copy_group(group_files, tmp_path / "in")
    files[2].write_bytes(b"")
    with pytest.raises(CorruptSubbandError, match="zero-length") as exc:
        convert_group(files, tmp_path / "ms")
    assert exc.value.path == str(files[2])

    files = copy_group(group_files, tmp_path / "in2")
    dup = files[4].with_name("2025-03-01T12:00:59_sb04.hdf5")
    shutil.copy2(files[4], dup)
    with pytest.raises(CorruptSubbandError, match="duplicate subband sb04"):
        convert_group([*files, dup], tmp_path / "ms")

    odd = files[1].with_name("sb01.hdf5")
    files[1].rename(odd)
    with pytest.raises(CorruptSubbandError, match="file name does not parse") as exc:
        convert_group([files[0], odd, *files[2:]], tmp_path / "ms")
    assert exc.value.path == str(odd)


def test_subbands_disagreeing_on_pointing(group_files, tmp_path):
    files = copy_group(group_files, tmp_path / "in")
    with h5py.File(files[9], "r+") as f:
        f["Header/extra_keywords/phase_center_dec"][()] = math.radians(DEC_DEG + 1.0)
    with pytest.raises(CorruptSubbandError, match="pointing declination") as exc:
        convert_group(files, tmp_path / "ms")
    assert exc.value.path == str(files[9])


def test_rerun_replaces_atomically(group_files, tmp_path, monkeypatch):
    out = tmp_path / "ms"
    r1 = convert_group(group_files, out, group_id="g1")
    ms = Path(r1.ms_path)
    assert ms == out / "g1.ms"
    (ms / "marker").write_text("first run")
    r2 = convert_group(group_files, out, group_id="g1")
    assert r2.ms_path == r1.ms_path
    assert not (ms / "marker").exists()  # a new MS, not the old one patched
    assert sorted(p.name for p in out.iterdir()) == ["g1.ms"]  # no tmp/old left behind

    # a failure while writing leaves the previous MS in place and no debris
    (ms / "marker").write_text("second run")

    def boom(*a, **k):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(convert_mod, "_put_keywords", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_group(group_files, out, group_id="g1")
    assert (ms / "marker").read_text() == "second run"
    assert sorted(p.name for p in out.iterdir()) == ["g1.ms"]
    assert r2.n_rows == r1.n_rows


def test_disk_full_is_a_transient_error_naming_the_directory(group_files, tmp_path, monkeypatch):
    """A staging disk without room for the MS: refused before writing (casacore aborts the process when
    the disk fills part way through a table), as OSError ENOSPC, which the task retries; a casacore write
    error for a full disk is turned into the same OSError. Nothing is left in the directory either way."""
    import errno

    from dsa110_contimg.errors import is_transient

    out = tmp_path / "ms"
    pre = preset(PRESET)
    n_ant = len(pre.pads())
    need = convert_mod._ms_bytes(pre.integrations_per_file * n_ant * (n_ant + 1) // 2,
                                 N_SUBBANDS * pre.channels_per_subband, 2)
    assert 2.4e6 < need < 8e6  # its MS takes 2.3 MB
    monkeypatch.setattr(convert_mod, "_free_bytes", lambda path: need - 1)
    with pytest.raises(OSError) as err:
        convert_group(group_files, out, group_id="full")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(out) and is_transient(err.value)
    assert "No space left on device for full.ms" in str(err.value)
    assert list(out.iterdir()) == []
    monkeypatch.setattr(convert_mod, "_free_bytes", lambda path: need)

    def full(*a, **k):
        raise RuntimeError("FilebufIO: write error for file x/table.dat_tmp: No space left on device")

    monkeypatch.setattr(convert_mod, "_put_keywords", full)
    with pytest.raises(OSError) as err:
        convert_group(group_files, out, group_id="full")
    assert err.value.errno == errno.ENOSPC and "full.ms.tmp-" in err.value.filename and is_transient(err.value)
    assert list(out.iterdir()) == []


@pytest.mark.casa
def test_sources_image_at_true_positions(converted, tmp_path):
    """Two bright sources (10 Jy ~1 deg and 5 Jy ~0.3 deg from the phase
    centre, noise-free): tclean with w-projection must find each on its true
    ICRS position, not mirrored through the phase centre.

    Tolerance 0.1 of the restoring beam's minor axis (~7" here): w-projection
    removes the w-term shift at 1 deg, and imfit on 10" pixels locates a
    noise-free point source to well under an arcsecond."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    from dsa110_contimg.simulate import SkyModel, simulate_group

    # The same start/dec/preset as the fixture group gives the same phase centre.
    pc = SkyCoord(converted.phase_center_ra_deg * u.deg, converted.phase_center_dec_deg * u.deg)
    srcs = [pc.spherical_offsets_by(0.8 * u.deg, 0.6 * u.deg), pc.spherical_offsets_by(-0.25 * u.deg, 0.15 * u.deg)]
    sky = SkyModel([s.ra.deg for s in srcs], [s.dec.deg for s in srcs], [10.0, 5.0], [0.0, 0.0])
    files = simulate_group(tmp_path / "in", PRESET, START, DEC_DEG, sky, noise=False)
    res = convert_group(files, tmp_path / "ms")
    assert res.phase_center_ra_deg == pytest.approx(converted.phase_center_ra_deg, abs=1e-9)

    cts = casa_env.casatasks()
    img = str(tmp_path / "img")
    cts.tclean(
        vis=res.ms_path, imagename=img, imsize=[1024, 1024], cell="10arcsec", niter=300,
        weighting="natural", gridder="wproject", wprojplanes=-1, specmode="mfs", datacolumn="data", stokes="I",
    )  # fmt: skip
    ia = casa_env.casatools().image()
    ia.open(img + ".image")
    try:
        beam = ia.restoringbeam()
        cs = ia.coordsys()
        pixels = []
        for s in srcs:
            world = cs.referencevalue()["numeric"]
            world[0], world[1] = s.ra.rad, s.dec.rad
            pixels.append(cs.topixel(world)["numeric"][:2])
        cs.done()
    finally:
        ia.close()
    minor = beam["minor"]["value"] * u.Unit(beam["minor"]["unit"])
    for src, (x, y) in zip(srcs, pixels):
        i, j = int(np.rint(x)), int(np.rint(y))
        fit = cts.imfit(imagename=img + ".image", box=f"{i - 8},{j - 8},{i + 8},{j + 8}")
        comp = fit["results"]["component0"]["shape"]["direction"]
        peak = SkyCoord(comp["m0"]["value"] * u.rad, comp["m1"]["value"] * u.rad)
        mirror = pc.directional_offset_by(pc.position_angle(src), -pc.separation(src))
        sep, sep_mirror = peak.separation(src), peak.separation(mirror)
        msg = (
            f"source {pc.separation(src).deg:.2f} deg from the phase centre found at "
            f"{peak.to_string('decimal', precision=5)}: {sep.arcsec:.2f} arcsec from its true position, "
            f"{sep_mirror.arcsec:.1f} arcsec from its mirror image (beam minor {minor.to(u.arcsec):.1f}); "
            f"geometry.PHASE_SIGN={geometry.PHASE_SIGN}"
        )
        print(msg)
        assert sep < 0.1 * minor, msg


# ---------------------------------------------------------------------------
# fidelity, parallel path, readers (issue #3)
# ---------------------------------------------------------------------------


def _perturb_flags_weights(files: list[Path], seed: int = 7) -> None:
    """Random flags and nsamples in every file, so FLAG/WEIGHT_SPECTRUM are tested."""
    rng = np.random.default_rng(seed)
    for p in files:
        with h5py.File(p, "r+") as f:
            shape = f["Data/flags"].shape
            f["Data/flags"][...] = rng.random(shape) < 0.1
            f["Data/nsamples"][...] = rng.uniform(0.25, 1.0, shape).astype(np.float32)


def _read_subband(path: Path):
    """(jd, ant1, ant2, antenna ECEF, freqs, apparent dec, vis, flags, nsamples) as the file holds them."""
    with h5py.File(path, "r") as f:
        h = f["Header"]
        return (h["time_array"][()], h["ant_1_array"][()], h["ant_2_array"][()], h["antenna_positions"][()],
                h["freq_array"][()][0], float(h["extra_keywords/phase_center_dec"][()]),
                f["Data/visdata"][()][:, 0], f["Data/flags"][()][:, 0], f["Data/nsamples"][()][:, 0])


def _expected_ms_rows(path: Path, ra0: float, dec0: float):
    """(time_s, ant1, ant2, V rotated to the ICRS centre, flags, nsamples) of one
    file, channels in ascending frequency, computed here with astropy."""
    jd, ant1, ant2, ecef, freqs, dec_app, vis, flags, ns = _read_subband(path)
    ut, idx = np.unique(jd, return_inverse=True)
    p_new = icrs_itrs(ra0, dec0, ut)[idx]
    p0 = geometry.meridian_direction(dec_app)
    dpath = np.einsum("ij,ij->i", ecef[ant2] - ecef[ant1], p0 - p_new)
    expect = vis * geometry.phase_factor(dpath, freqs)[:, :, None]
    time_s = (jd - 2400000.5) * 86400.0
    return time_s, ant1, ant2, expect[:, ::-1], flags[:, ::-1], ns[:, ::-1]


def _row_index(time_s, a1, a2):
    return {(round(float(t) * 1000), int(x), int(y)): i for i, (t, x, y) in enumerate(zip(time_s, a1, a2))}


def test_fidelity_every_sample_casacore_and_pyuvdata(group_files, tmp_path, monkeypatch):
    """Every sample of every subband: MS DATA = conj(rotated UVH5 visdata), FLAG
    = flags, WEIGHT_SPECTRUM = nsamples, read back with casacore tables and with
    pyuvdata's MS reader (which undoes the conjugation). Written through the
    worker-process path in many row blocks, and bit-identical to the in-process
    path. Tolerance: complex64 storage of a rotation computed in float64,
    2e-6 of the row's largest amplitude."""
    from casacore import tables
    from dsa110_contimg import ms_writer
    from pyuvdata import UVData

    files = copy_group(group_files, tmp_path / "in")
    _perturb_flags_weights(files)
    monkeypatch.setattr(ms_writer, "BLOCK_BYTES", 60_000)  # ~100 rows a block: many blocks
    res = convert_group(files, tmp_path / "ms2", workers=2)
    serial = convert_group(files, tmp_path / "ms0", workers=0)
    nch = preset(PRESET).channels_per_subband

    with tables.table(res.ms_path, ack=False) as t:
        data, flag, wspec = t.getcol("DATA"), t.getcol("FLAG"), t.getcol("WEIGHT_SPECTRUM")
        weight, sigma = t.getcol("WEIGHT"), t.getcol("SIGMA")
        rows = _row_index(t.getcol("TIME"), t.getcol("ANTENNA1"), t.getcol("ANTENNA2"))
        flag_row = t.getcol("FLAG_ROW")
    with tables.table(serial.ms_path, ack=False) as t:
        assert np.array_equal(t.getcol("DATA"), data)
        assert np.array_equal(t.getcol("FLAG"), flag)
        assert np.array_equal(t.getcol("WEIGHT_SPECTRUM"), wspec)
    with tables.table(res.ms_path + "/FIELD", ack=False) as t:
        ra0, dec0 = t.getcol("PHASE_DIR")[0, 0]
    np.testing.assert_allclose(weight, np.median(wspec, axis=1), rtol=1e-6)
    np.testing.assert_allclose(sigma, weight**-0.5, rtol=1e-6)
    assert not flag_row.any()

    uv = UVData.from_file(res.ms_path, file_type="ms", run_check=False)
    uv_freq = np.asarray(uv.freq_array).reshape(-1)
    assert np.all(np.diff(uv_freq) > 0)
    uv_rows = _row_index((uv.time_array - 2400000.5) * 86400.0, uv.ant_1_array, uv.ant_2_array)

    for p in files:
        sb = int(p.name[-7:-5])
        lo = (N_SUBBANDS - 1 - sb) * nch
        chans = slice(lo, lo + nch)
        time_s, a1, a2, expect, fl, ns = _expected_ms_rows(p, ra0, dec0)
        keys = [(round(float(t) * 1000), int(x), int(y)) for t, x, y in zip(time_s, a1, a2)]
        r = np.array([rows[k] for k in keys])
        tol = 2e-6 * np.abs(expect).max(axis=(1, 2))[:, None, None] + 1e-30
        assert np.all(np.abs(np.conj(data[r, chans]) - expect) <= tol), f"DATA sb{sb:02d}"
        assert np.array_equal(flag[r, chans], fl), f"FLAG sb{sb:02d}"
        assert np.array_equal(wspec[r, chans], ns), f"WEIGHT_SPECTRUM sb{sb:02d}"
        # pyuvdata's reader: unconjugated, same samples
        u = np.array([uv_rows[k] for k in keys])
        assert np.all(np.abs(uv.data_array[u, chans] - expect) <= tol), f"pyuvdata data sb{sb:02d}"
        assert np.array_equal(uv.flag_array[u, chans], fl)
        np.testing.assert_array_equal(uv.nsample_array[u, chans], ns)
        np.testing.assert_allclose(uv_freq[chans], subband_frequencies(sb, nch)[::-1], atol=1.0)


def test_missing_subband_parallel_path(group_files, tmp_path, monkeypatch):
    """A semi-complete group through the worker processes: the gap is zeros,
    flagged, with zero weight; the rest is as the in-process path writes it."""
    from casacore import tables
    from dsa110_contimg import ms_writer

    files = copy_group(group_files, tmp_path / "in", skip=(3, 12))
    monkeypatch.setattr(ms_writer, "BLOCK_BYTES", 60_000)
    res = convert_group(files, tmp_path / "ms", workers=2)
    assert res.missing_subbands == (3, 12)
    nch = preset(PRESET).channels_per_subband
    with tables.table(res.ms_path, ack=False) as t:
        data, flag, wspec = t.getcol("DATA"), t.getcol("FLAG"), t.getcol("WEIGHT_SPECTRUM")
    for sb in (3, 12):
        lo = (N_SUBBANDS - 1 - sb) * nch
        assert flag[:, lo : lo + nch].all() and not wspec[:, lo : lo + nch].any() and not data[:, lo : lo + nch].any()
    assert flag.sum() == 2 * nch * flag.shape[0] * flag.shape[2]


@pytest.mark.casa
def test_listobs_and_wsclean_read_the_ms(converted, tmp_path):
    import subprocess

    cts = casa_env.casatasks()
    summary = cts.listobs(vis=converted.ms_path, listfile=str(tmp_path / "listobs.txt"), overwrite=True)
    assert summary["nfields"] == 1 and summary["numrecords"] == converted.n_rows
    assert summary["BeginTime"] == pytest.approx(converted.start_mjd, abs=1e-6)  # start of the first integration
    text = (tmp_path / "listobs.txt").read_text()
    assert "Observation: OVRO_MMA" in text and "1 unique spectral windows" in text
    assert f"Antennas: {converted.n_antennas}" in text
    wsclean = shutil.which("wsclean") or "/usr/bin/wsclean"
    if not Path(wsclean).exists():
        pytest.skip("wsclean is not installed")
    name = tmp_path / "ws"
    proc = subprocess.run(
        [wsclean, "-size", "128", "128", "-scale", "60asec", "-niter", "0", "-j", "1", "-name", str(name),
         converted.ms_path],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    from astropy.io import fits

    img = fits.getdata(str(name) + "-dirty.fits")
    assert np.isfinite(img).all() and np.abs(img).max() > 0


_KILL_SCRIPT = r"""
import sys, time
from pathlib import Path
from dsa110_contimg import convert, ms_writer
workers = int(sys.argv[4])
real = ms_writer.BlockProducer.blocks
def slow_blocks(self, dpath):
    for k, block in enumerate(real(self, dpath)):
        yield block
        if k == 1:  # two blocks written, the rest to come: stop here
            Path(sys.argv[2]).write_text("half-way")
            time.sleep(120)
ms_writer.BlockProducer.blocks = slow_blocks
ms_writer.BLOCK_BYTES = 60_000
files = [Path(p) for p in Path(sys.argv[1]).glob("*.hdf5")]
convert.convert_group(files, Path(sys.argv[3]), group_id="killed", workers=workers)
"""


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_mid_write_leaves_nothing_at_final_path(group_files, tmp_path, workers):
    """A conversion SIGKILLed half-way through writing leaves no MS at the
    final path (a previous MS stays intact), no worker process behind, and the
    next run cleans its debris."""
    import os
    import signal
    import subprocess
    import sys
    import time

    src = tmp_path / "in"
    copy_group(group_files, src)
    out = tmp_path / "ms"
    marker = tmp_path / "marker"

    def killed_run():
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILL_SCRIPT, str(src), str(marker), str(out), str(workers)],
            env={**os.environ, "PYTHONPATH": str(Path(convert_mod.__file__).parents[1])},
        )
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "converter exited before reaching the middle of the write"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        kids = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        marker.unlink()
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{k}").exists() and "spawn" in Path(f"/proc/{k}/cmdline").read_text() for k in kids):
            assert time.monotonic() < deadline, "worker processes outlived the killed converter"
            time.sleep(0.1)
        return proc.pid

    pid = killed_run()
    assert not (out / "killed.ms").exists()
    debris = list(out.glob("killed.ms.tmp-*"))
    assert len(debris) == 1 and debris[0].name.endswith(f"-{pid}")  # half-written, under the temporary name

    res = convert_group(list(src.glob("*.hdf5")), out, group_id="killed")
    assert sorted(p.name for p in out.iterdir()) == ["killed.ms"]  # debris of the dead run removed
    (Path(res.ms_path) / "marker").write_text("good MS")
    killed_run()
    assert (out / "killed.ms" / "marker").read_text() == "good MS"  # previous MS untouched


# ---------------------------------------------------------------------------
# bad input: each fails its own group, naming the file and the reason
# ---------------------------------------------------------------------------


def test_corrupt_hdf5_names_the_file(group_files, tmp_path):
    files = copy_group(group_files, tmp_path / "in")
    with open(files[6], "r+b") as f:  # scribble over the superblock
        f.write(b"\x00garbage" * 64)
    files[11].write_text("this is not an HDF5 file\n")
    with pytest.raises(CorruptSubbandError) as exc:
        convert_group(files, tmp_path / "ms")
    assert exc.value.path == str(files[6])
    assert "cannot read UVH5 header" in exc.value.reason
    assert not (tmp_path / "ms").exists() or not any((tmp_path / "ms").iterdir())


def test_damaged_data_names_the_file(group_files, tmp_path, monkeypatch):
    """Data arrays that do not fit the header fail the group, naming the file,
    and leave no MS: a wrong shape is caught with the headers, a wrong dtype
    while the rows are read (in a worker process)."""
    from dsa110_contimg import ms_writer

    files = copy_group(group_files, tmp_path / "in")
    with h5py.File(files[8], "r+") as f:
        del f["Data/nsamples"]
        f["Data/nsamples"] = np.ones((2, 2), dtype=np.float32)
    with pytest.raises(CorruptSubbandError, match="nsamples has shape") as exc:
        convert_group(files, tmp_path / "ms")
    assert exc.value.path == str(files[8])

    files = copy_group(group_files, tmp_path / "in2")
    with h5py.File(files[13], "r+") as f:
        real = f["Data/visdata"][()].real
        del f["Data/visdata"]
        f["Data/visdata"] = real
    monkeypatch.setattr(ms_writer, "BLOCK_BYTES", 60_000)
    with pytest.raises(CorruptSubbandError, match="expected complex") as exc:
        convert_group(files, tmp_path / "ms", workers=2)
    assert exc.value.path == str(files[13])
    assert not (tmp_path / "ms").exists() or not any((tmp_path / "ms").iterdir())


@pytest.mark.parametrize(
    "what, edit, words",
    [
        ("antennas", lambda h: h["antenna_positions"].__setitem__((5, 0), h["antenna_positions"][5, 0] + 1.0),
         "antenna table differs"),
        ("channel width", lambda h: h["channel_width"].write_direct(np.array(2 * h["channel_width"][()])),
         "channels of"),
        ("time grid", lambda h: h["time_array"].__setitem__(slice(None), h["time_array"][()] + 1.0 / 86400),
         "time grid differs"),
    ],
)
def test_subbands_that_disagree(group_files, tmp_path, what, edit, words):
    files = copy_group(group_files, tmp_path / "in")
    with h5py.File(files[10], "r+") as f:
        edit(f["Header"])
    with pytest.raises(CorruptSubbandError) as exc:
        convert_group(files, tmp_path / "ms")
    assert exc.value.path == str(files[10]), what
    assert words in exc.value.reason and files[0].name in exc.value.reason, exc.value.reason


def test_file_from_another_observation(group_files, tmp_path):
    """A file whose name puts it beyond ingest's 60 s grouping tolerance is named."""
    files = copy_group(group_files, tmp_path / "in")
    stray = files[14].with_name("2025-03-01T12:05:09_sb14.hdf5")
    files[14].rename(stray)
    files[14] = stray
    with pytest.raises(CorruptSubbandError, match="a group spans at most 60 s") as exc:
        convert_group(files, tmp_path / "ms", tolerance_s=60)
    assert exc.value.path == str(stray)


def test_iers_cache_gives_identical_geometry(tmp_path):
    """The cached IERS table is the one astropy parses: the rephasing of a fresh
    process with and without the cache agrees bit for bit."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from dsa110_contimg import convert, geometry, iers_cache\n"
        "if sys.argv[1] == 'cache': iers_cache.install()\n"
        "jd = 2460736.0 + np.arange(24) * 12.884902 / 86400\n"
        "ecef = geometry.enu_to_ecef_offsets(np.array([[0.0, 0, 0], [1300.0, 200.0, 0]]))\n"
        "r = convert.compute_rephasing(np.repeat(jd, 1), np.zeros(24, int), np.ones(24, int), np.arange(2), ecef,"
        " np.radians(54.6), -118.283, jd.mean())\n"
        "np.save(sys.argv[2], np.concatenate([[r.ra0, r.dec0], r.dpath, r.uvw.ravel()]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(convert_mod.__file__).parents[1]),
           "CONTIMG_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    out = {}
    for mode in ("plain", "cache", "cache"):  # the second "cache" run reads the pickle
        out[mode] = tmp_path / f"{mode}.npy"
        subprocess.run([sys.executable, "-c", code, mode, str(out[mode])], env=env, check=True, timeout=120)
    assert any((tmp_path / "cache").glob("iers-*.pkl"))
    assert np.array_equal(np.load(out["plain"]), np.load(out["cache"]))
