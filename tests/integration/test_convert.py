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
        with h5py.File(path, "r") as f:
            h = f["Header"]
            jd, ant1, ant2 = h["time_array"][()], h["ant_1_array"][()], h["ant_2_array"][()]
            ecef = h["antenna_positions"][()]
            freqs = h["freq_array"][()][0]
            dec_app = float(h["extra_keywords/phase_center_dec"][()])
            vis = f["Data/visdata"][()][:, 0]
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


@pytest.mark.casa
def test_bright_source_images_at_true_position(converted, tmp_path):
    """One 10 Jy source ~1 deg from the phase centre (noise-free): tclean's peak
    must sit on its true ICRS position, not mirrored through the phase centre.

    Tolerance 0.2 of the restoring beam's minor axis (~15"; imfit locates the
    peak to a fraction of a 30" pixel; a 2"-pixel image puts it within 0.2")."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    from dsa110_contimg.simulate import SkyModel, simulate_group

    # The same start/dec/preset as the fixture group gives the same phase centre.
    pc = SkyCoord(converted.phase_center_ra_deg * u.deg, converted.phase_center_dec_deg * u.deg)
    src = pc.spherical_offsets_by(0.8 * u.deg, 0.6 * u.deg)
    sky = SkyModel([src.ra.deg], [src.dec.deg], [10.0], [0.0])
    files = simulate_group(tmp_path / "in", PRESET, START, DEC_DEG, sky, noise=False)
    res = convert_group(files, tmp_path / "ms")
    assert res.phase_center_ra_deg == pytest.approx(converted.phase_center_ra_deg, abs=1e-9)

    cts = casa_env.casatasks()
    img = str(tmp_path / "img")
    cts.tclean(
        vis=res.ms_path, imagename=img, imsize=[256, 256], cell="30arcsec", niter=100,
        weighting="natural", gridder="standard", specmode="mfs", datacolumn="data", stokes="I",
    )  # fmt: skip
    ia = casa_env.casatools().image()
    ia.open(img + ".image")
    try:
        pix = ia.getchunk()[:, :, 0, 0]
        beam = ia.restoringbeam()
    finally:
        ia.close()
    i, j = np.unravel_index(np.argmax(pix), pix.shape)
    fit = cts.imfit(imagename=img + ".image", box=f"{i - 6},{j - 6},{i + 6},{j + 6}")
    comp = fit["results"]["component0"]["shape"]["direction"]
    world = (comp["m0"]["value"], comp["m1"]["value"])
    peak = SkyCoord(world[0] * u.rad, world[1] * u.rad)
    minor = beam["minor"]["value"] * u.Unit(beam["minor"]["unit"])
    mirror = pc.directional_offset_by(pc.position_angle(src), -pc.separation(src))
    sep, sep_mirror = peak.separation(src), peak.separation(mirror)
    msg = (
        f"peak at {peak.to_string('decimal', precision=5)} is {sep.arcsec:.1f} arcsec from the source and "
        f"{sep_mirror.arcsec:.1f} arcsec from its mirror image through the phase centre "
        f"(beam minor {minor.to(u.arcsec):.1f}); geometry.PHASE_SIGN={geometry.PHASE_SIGN}"
    )
    print(msg)
    assert sep < 0.2 * minor, msg
