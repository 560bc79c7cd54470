"""Image a small simulated MeasurementSet with tclean and WSClean (real CASA).

The MS is made in this file with the casatools simulator: ~20 DSA-110 pads at
OVRO, a 5-min meridian transit at dec +55, 16 channels over the band, and one
point source of 1 Jy at a known offset from the phase centre whose
visibilities are attenuated by the Airy beam of the meridian pointing at each
integration and channel (as the sky would be). After our primary-beam
correction the source must read 1 Jy again. Both backends image it with one
ImagingParams; the tests check they were told the same, that every product
carries the full FITS header, and the flagged fraction and image QA."""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from dsa110_contimg import casa_env
from dsa110_contimg.crossmatch import find_sources
from dsa110_contimg.errors import ImagingError
from dsa110_contimg.geometry import angular_separation, meridian_direction
from dsa110_contimg.imaging import ImagingParams, image_ms
from dsa110_contimg.imaging.accuracy import dirty_tclean, dirty_wsclean, gridding_errors
from dsa110_contimg.imaging.image import imager_setup
from dsa110_contimg.imaging.msinfo import POINTING_DEC_KEYWORD, apparent_dec_of, icrs_to_itrs_unit, read_ms_info
from dsa110_contimg.instrument import (
    BAND_HIGH_HZ,
    BAND_LOW_HZ,
    DISH_DIAMETER_M,
    INTEGRATION_S,
    active_pads,
    airy_beam,
    pad_enu,
)

pytestmark = pytest.mark.casa

PHASE_RA_DEG, PHASE_DEC_DEG = 150.0, 55.0
SRC_DRA_DEG, SRC_DDEC_DEG = 1.0, 0.7  # on-sky offsets (RA offset is times cos dec); PB ~0.6
NCHAN, NTIMES = 16, 12


def source_position() -> tuple[float, float]:
    dec = PHASE_DEC_DEG + SRC_DDEC_DEG
    ra = PHASE_RA_DEG + SRC_DRA_DEG / math.cos(math.radians(PHASE_DEC_DEG))
    return ra, dec


def make_point_source_ms(ms: Path, with_keyword: bool = True) -> Path:
    """Simulate the MS (noise-free) and apply the drifting primary beam."""
    from astropy.time import Time

    ct = casa_env.casatools()
    me, sm, cl, tb = ct.measures(), ct.simulator(), ct.componentlist(), ct.table()
    from dsa110_contimg.geometry import enu_to_ecef_offsets, site_location

    pads = [p for p in active_pads() if p < 103][::4]
    enu = pad_enu()[np.array(pads) - 1]
    loc = site_location()
    centre = np.array([loc.x.value, loc.y.value, loc.z.value])
    xyz = centre + enu_to_ecef_offsets(enu)
    n = len(pads)
    shutil.rmtree(ms, ignore_errors=True)
    sm.open(str(ms))
    sm.setconfig(
        telescopename="OVRO_MMA", x=xyz[:, 0].tolist(), y=xyz[:, 1].tolist(), z=xyz[:, 2].tolist(),
        dishdiameter=[DISH_DIAMETER_M] * n, mount=["alt-az"] * n, antname=[str(p) for p in pads],
        padname=[f"pad{p}" for p in pads], coordsystem="global",
        referencelocation=me.position("ITRF", f"{centre[0]}m", f"{centre[1]}m", f"{centre[2]}m"),
    )
    width = (BAND_HIGH_HZ - BAND_LOW_HZ) / NCHAN
    sm.setspwindow(spwname="L", freq=f"{BAND_LOW_HZ + width / 2}Hz", deltafreq=f"{width}Hz",
                   freqresolution=f"{width}Hz", nchannels=NCHAN, stokes="XX YY")
    sm.setfeed(mode="perfect X Y", pol=[""])
    sm.setfield(sourcename="drift", sourcedirection=me.direction("J2000", f"{PHASE_RA_DEG}deg", f"{PHASE_DEC_DEG}deg"))
    sm.setlimits(shadowlimit=0.001, elevationlimit="8deg")
    sm.setauto(autocorrwt=0.0)
    sm.settimes(integrationtime=f"{INTEGRATION_S}s", usehourangle=True, referencetime=me.epoch("UTC", "2026/01/15/00:00:00"))
    half = NTIMES * INTEGRATION_S / 2
    sm.observe("drift", "L", starttime=f"{-half}s", stoptime=f"{half}s")
    ra, dec = source_position()
    clpath = str(ms) + ".cl"
    shutil.rmtree(clpath, ignore_errors=True)
    cl.addcomponent(dir=f"J2000 {ra}deg {dec}deg", flux=1.0, fluxunit="Jy", freq="1.4GHz", shape="point")
    cl.rename(clpath)
    cl.close()
    sm.setdata()
    sm.predict(complist=clpath)
    sm.close()

    # attenuate by the meridian-pointing Airy beam per integration and channel
    tb.open(str(ms), nomodify=False)
    t = tb.getcol("TIME")
    data = tb.getcol("DATA")  # (npol, nchan, nrow)
    tb.close()
    tb.open(str(ms / "SPECTRAL_WINDOW"))
    freqs = tb.getcell("CHAN_FREQ", 0)
    tb.close()
    utimes = np.unique(t)
    times = Time(utimes / 86400.0, format="mjd", scale="utc")
    mid = float(0.5 * (utimes.min() + utimes.max()) / 86400.0)
    pdec = apparent_dec_of(math.radians(PHASE_RA_DEG), math.radians(PHASE_DEC_DEG), mid)
    src = icrs_to_itrs_unit(math.radians(ra), math.radians(dec), times.mjd)  # (ntimes, 3)
    sep = angular_separation(src, meridian_direction(pdec)[None, :])  # (ntimes,)
    gain = airy_beam(sep[:, None], freqs[None, :])  # (ntimes, nchan)
    row_t = np.searchsorted(utimes, t)
    data = data * gain[row_t].T[None, :, :]
    tb.open(str(ms), nomodify=False)
    tb.putcol("DATA", data)
    # the converter's MS carries DATA only (sm adds MODEL/CORRECTED columns)
    extra = [c for c in ("MODEL_DATA", "CORRECTED_DATA") if c in tb.colnames()]
    if extra:
        tb.removecols(extra)
    if with_keyword:
        tb.putkeyword(POINTING_DEC_KEYWORD, pdec)
    tb.close()
    tb.done()
    return ms


@pytest.fixture(scope="module")
def point_ms(tmp_path_factory) -> Path:
    # casatools' simulator can spin forever in setdata when other CASA tools
    # already ran in this process (seen after tclean in earlier tests), so
    # the MS is made in a fresh interpreter.
    import multiprocessing

    ms = tmp_path_factory.mktemp("sim") / "point.ms"
    proc = multiprocessing.get_context("spawn").Process(target=make_point_source_ms, args=(ms,))
    proc.start()
    proc.join(300)
    assert proc.exitcode == 0, f"simulating {ms} failed (exit {proc.exitcode})"
    return ms


HAVE_WSCLEAN = shutil.which("wsclean") is not None
BACKENDS = ["tclean", pytest.param("wsclean", marks=pytest.mark.skipif(not HAVE_WSCLEAN, reason="no wsclean"))]
NITER = 500


@pytest.fixture(scope="module")
def images(point_ms, tmp_path_factory) -> dict[str, object]:
    """The point-source MS imaged once per available backend with one ImagingParams."""
    out = {}
    for backend in ["tclean"] + (["wsclean"] if HAVE_WSCLEAN else []):
        t0 = time.monotonic()
        res = image_ms(point_ms, tmp_path_factory.mktemp(backend), ImagingParams(backend=backend, niter=NITER))
        print(f"{backend}: {time.monotonic() - t0:.1f} s, size {res.imsize} cell {res.cell_arcsec}\" "
              f"beam {res.beam_arcsec} psf fit {res.psf_beam_arcsec} rms {res.rms_jy:.3g} peak {res.peak_jy:.4f} "
              f"pbcor peak {res.pbcor_peak_jy:.4f}")
        out[backend] = res
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_point_source_flux_and_position(images, backend):
    res = images[backend]
    for p in (res.image_fits, res.pb_fits, res.pbcor_fits):
        assert p.exists()
    assert res.backend == backend
    # the imager's own run is timed apart from the stage around it (bench/image.py reports both)
    assert 0 < res.imager_seconds < res.seconds
    assert 1311e6 < res.freq_hz < 1499e6
    bmaj, bmin, _ = res.beam_arcsec
    assert 0 < bmin <= bmaj < 600
    ra, dec = source_position()
    found = find_sources(res.pbcor_fits, snr=10.0)
    assert found, "no source found in the pb-corrected image"
    src = found[0]
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    off = SkyCoord(src.ra_deg * u.deg, src.dec_deg * u.deg).separation(SkyCoord(ra * u.deg, dec * u.deg)).arcsec
    # position within 0.2 of the synthesised beam (noise-free data, S/N >> 100)
    assert off < 0.2 * math.sqrt(bmaj * bmin), (off, bmaj, bmin)
    # 1 Jy after our drift-beam correction: 5% covers MFS averaging of the
    # frequency-dependent beam and the CLEAN residual at this niter
    assert abs(src.flux_jy - 1.0) < 0.05, src
    # the flat image holds the beam-attenuated flux (PB ~0.6 there), not 1 Jy
    flat = find_sources(res.image_fits, snr=10.0)[0]
    assert 0.45 < flat.flux_jy < 0.8, flat


@pytest.mark.parametrize("backend", BACKENDS)
def test_fits_headers_complete_and_sane(images, point_ms, backend):
    from astropy.time import Time
    from dsa110_contimg import __version__
    from dsa110_contimg.imaging.backends import casatools_version
    from dsa110_contimg.imaging.headers import REQUIRED_KEYS

    res = images[backend]
    for path in (res.image_fits, res.pb_fits, res.pbcor_fits):
        h = fits.getheader(path)
        missing = [k for k in REQUIRED_KEYS if k not in h]
        assert not missing, f"{path.name} lacks {missing}"
        assert h["NAXIS"] == 2 and h["CTYPE1"] == "RA---SIN" and h["CTYPE2"] == "DEC--SIN"
        assert h["BUNIT"] == ("" if path == res.pb_fits else "JY/BEAM")
        # the restoring beam is the predicted one, in degrees, identical for both backends
        assert [h["BMAJ"] * 3600, h["BMIN"] * 3600, h["BPA"]] == pytest.approx(list(res.beam_arcsec))
        assert 0 < h["BMIN"] <= h["BMAJ"] < 600 / 3600
        assert 1311.25e6 < h["FREQ"] < 1498.75e6 and h["BANDWID"] == pytest.approx(187.5e6)
        start = Time(h["DATE-OBS"], format="isot", scale="utc").mjd
        assert start == pytest.approx(h["MJD-OBS"], abs=1e-8)
        # NTIMES integrations: start half an integration before the first centre
        assert (h["MJD-MID"] - h["MJD-OBS"]) * 86400 == pytest.approx(NTIMES * INTEGRATION_S / 2, abs=0.01)
        assert h["MJD-MID"] == pytest.approx(res.mid_mjd)
        # the meridian at mid-time: the simulator's hour-angle clock puts it
        # within a degree of the phase centre; the pointing declination is
        # the phase centre's (apparent_dec_of inverts the ICRS->apparent step)
        assert abs(h["OBSRA"] - PHASE_RA_DEG) < 1.0 and h["OBSDEC"] == pytest.approx(PHASE_DEC_DEG, abs=0.01)
        assert h["TELESCOP"] == "DSA-110" and h["ORIGIN"] == "dsa110_contimg" and h["OBSERVER"]
        assert h["CONTIMGV"] == __version__ and h["CASAVER"] == casatools_version()
        if backend == "wsclean":
            assert h["WSCLNVER"].startswith("3.")
        assert h["IMAGER"] == backend and h["DECONV"] == "hogbom" and h["STOKES"] == "I"
        assert h["WEIGHTNG"] == "briggs" and h["ROBUST"] == 0.0 and h["NITER"] == NITER
        assert h["CELL"] == res.cell_arcsec and h["IMSIZE"] == res.imsize == h["NAXIS1"]
        assert h["CDELT2"] * 3600 == pytest.approx(res.cell_arcsec)
        assert h["FLAGFRAC"] == 0.0
        assert any("ImagingParams" in str(c) for c in h["HISTORY"])
    assert fits.getheader(res.pbcor_fits)["PBLIMIT"] == 0.2


@pytest.mark.skipif(not HAVE_WSCLEAN, reason="no wsclean")
def test_backends_use_the_same_parameters(images):
    """What each imager was told (its own log) and what it did (its PSF)."""
    tc, ws = images["tclean"], images["wsclean"]
    assert tc.imaging == ws.imaging
    s = tc.imaging
    bmaj, bmin, bpa = s["restoring_beam"]
    # tclean: CASA logs the call with every argument
    call = next(line for line in tc.log_path.read_text().splitlines() if "tclean( vis=" in line)
    for arg in ("deconvolver='hogbom'", "specmode='mfs'", "nterms=1", "stokes='I'", "weighting='briggs'",
                f"robust={s['robust']}", f"niter={NITER}", "gain=0.1", "threshold='0Jy'", f"nsigma={s['nsigma']}",
                f"imsize=[{s['imsize']}, {s['imsize']}]", f"cell='{s['cell_arcsec']}arcsec'", "gridder='wproject'",
                f"restoringbeam=['{bmaj}arcsec', '{bmin}arcsec', '{bpa}deg']"):
        assert arg in call, arg
    # WSClean: the first line of its log is the command
    cmd = ws.log_path.read_text().splitlines()[0]
    for arg in ("-weight briggs 0.0", f"-niter {NITER}", "-gain 0.1", f"-auto-threshold {s['nsigma']}",
                f"-size {s['imsize']} {s['imsize']}", f"-scale {s['cell_arcsec']}asec", "-pol I", "-use-wgridder",
                f"-beam-shape {bmaj}asec {bmin}asec {bpa}deg"):
        assert arg in cmd, arg
    assert "multiscale" not in cmd and "-channels-out" not in cmd
    # the same weighting gives the same PSF: both fits within 3 % of the predicted beam
    for res in (tc, ws):
        assert res.psf_beam_arcsec[0] == pytest.approx(bmaj, rel=0.03)
        assert res.psf_beam_arcsec[1] == pytest.approx(bmin, rel=0.03)
    # cell rule: five pixels across the minor axis
    assert bmin / s["cell_arcsec"] == pytest.approx(5.0, abs=0.1)
    htc, hws = fits.getheader(tc.image_fits), fits.getheader(ws.image_fits)
    for key in ("CELL", "IMSIZE", "ROBUST", "WEIGHTNG", "NITER", "DECONV", "STOKES", "NSIGMA", "SPECMODE"):
        assert htc[key] == hws[key], key
    for key in ("BMAJ", "BMIN", "BPA"):  # CASA rounds the beam it writes in its last digits
        assert htc[key] == pytest.approx(hws[key], rel=1e-9), key


@pytest.mark.skipif(not HAVE_WSCLEAN, reason="no wsclean")
def test_wsclean_grids_at_least_as_exactly_as_tclean(point_ms, tmp_path):
    """The premise of bench/image.py's like-for-like comparison: at both of the
    pipeline's automatic w-gridder accuracies (1e-3 for a whole field, 1e-2
    once the bright sources are subtracted), WSClean's dirty image is no
    further from the exact Fourier transform than tclean's (errors in units
    of the source's exact dirty peak, at the peak and 100 random pixels).
    Measured here: tclean 3.4e-3 rms, 1.0e-2 at worst; WSClean 6.6e-4 and
    4.5e-3 at every accuracy from 1e-5 to 1e-3, so the test's transform and
    WSClean differ by that much for another reason, and tclean's own error
    is the larger by a factor of 5 in rms. The test asks for a factor of 2."""
    setup = imager_setup(read_ms_info(point_ms), ImagingParams(weighting="natural"))
    images = {"tclean": dirty_tclean(setup, point_ms, tmp_path, NCHAN)}
    for subtracted in (False, True):
        acc = ImagingParams().resolved_accuracy(bright_subtracted=subtracted)
        images[f"wsclean {acc:g}"] = dirty_wsclean(setup, point_ms, tmp_path, NCHAN, acc)
    peak, err = gridding_errors(images, point_ms, setup.datacolumn, NCHAN, npix=100)
    print("exact peak", peak, "errors", err)
    assert 0.3 < peak < 1.0  # the 1 Jy source seen through a primary beam of ~0.6
    for key in ("wsclean 0.001", "wsclean 0.01"):
        assert err[key]["rms"] <= 0.5 * err["tclean"]["rms"], key
        assert err[key]["max"] <= err["tclean"]["max"], key


def test_flagged_fraction_and_image_qa(point_ms, tmp_path):
    """One antenna flagged: the result and header report the fraction, QA passes, thumbnail written."""
    from dsa110_contimg.imaging import image_qa

    ms = tmp_path / "flagged.ms"
    shutil.copytree(point_ms, ms)
    tb = casa_env.casatools().table()
    tb.open(str(ms), nomodify=False)
    a1, a2 = tb.getcol("ANTENNA1"), tb.getcol("ANTENNA2")
    flag = tb.getcol("FLAG")
    cross = a1 != a2
    hit = cross & ((a1 == 3) | (a2 == 3))
    flag[:, :, hit] = True
    tb.putcol("FLAG", flag)
    tb.close()
    tb.done()
    expected = hit.sum() / cross.sum()
    backend = "wsclean" if HAVE_WSCLEAN else "tclean"
    res = image_ms(ms, tmp_path / "out", ImagingParams(backend=backend, niter=200))
    assert res.flagged_fraction == pytest.approx(expected)
    assert fits.getheader(res.image_fits)["FLAGFRAC"] == pytest.approx(expected)
    qa = image_qa(res.image_fits, res.pbcor_fits, res.flagged_fraction, thumbnail_png=tmp_path / "thumb.png")
    print(qa)
    assert qa["qa_status"] == "good", qa["reasons"]
    assert qa["flagged_fraction"] == pytest.approx(expected)
    assert qa["dynamic_range"] > 100 and qa["beam_arcsec"][0] < 300
    assert (tmp_path / "thumb.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_and_empty_ms(tmp_path):
    with pytest.raises(ImagingError, match="does not exist"):
        image_ms(tmp_path / "nope.ms", tmp_path / "out", ImagingParams(backend="tclean"))
    (tmp_path / "empty.ms").mkdir()
    with pytest.raises(ImagingError, match="not a MeasurementSet"):
        image_ms(tmp_path / "empty.ms", tmp_path / "out", ImagingParams(backend="tclean"))


def test_bright_source_fitted_subtracted_and_restored(point_ms, images, tmp_path):
    """casatools' simulator made this MS with its own geometry, so our model of the
    source (converter's conventions, drifting Airy beam per integration and
    channel) is checked against an independent one: the fit must find the
    source from a catalogue entry 5" and 20 % off, take it out of the
    visibilities, and the restored image must read 1 Jy at the true position."""
    from dsa110_contimg.catalog import CatalogSource

    ra, dec = source_position()
    start = CatalogSource(name="src", ra_deg=ra + 4.0 / 3600 / math.cos(math.radians(dec)), dec_deg=dec - 3.0 / 3600,
                          flux_jy=0.8)
    backend = "wsclean" if HAVE_WSCLEAN else "tclean"
    res = image_ms(point_ms, tmp_path, ImagingParams(backend=backend, niter=NITER), catalog=[start])
    assert res.subtracted is not None and len(res.subtracted) == 1
    row = res.subtracted[0]
    assert row["flux_jy"] == pytest.approx(1.0, rel=0.005)  # noise-free: only the model's precision
    assert row["spectral_index"] == pytest.approx(0.0, abs=0.02)  # the componentlist's flat spectrum
    off = math.hypot((row["ra_deg"] - ra) * math.cos(math.radians(dec)), row["dec_deg"] - dec) * 3600
    assert off < 0.2, off
    with fits.open(res.pbcor_fits) as h:
        data = np.squeeze(h[0].data)
    assert float(np.nanmax(data)) == pytest.approx(1.0, rel=0.02)
    without = images[backend]
    print(f"rms with subtraction {res.rms_jy:.3g}, without {without.rms_jy:.3g}; {res.subtract_seconds:.1f} s")
    assert res.rms_jy < 0.5 * without.rms_jy  # the drift's mismatch is gone with the source


def test_subtraction_made_beforehand_gives_the_same_image(point_ms, tmp_path):
    """bench/image.py subtracts once and gives both imagers that MS: image_ms with the
    ready SubtractResult must make the image the stage makes on its own, with the
    fitted source restored, and both record WSClean's accuracy for a subtracted
    field (1e-2); without a catalogue the stage grids at 1e-3."""
    from dsa110_contimg.catalog import CatalogSource
    from dsa110_contimg.imaging.image import subtract_for_imaging

    ra, dec = source_position()
    cat = [CatalogSource(name="src", ra_deg=ra, dec_deg=dec, flux_jy=0.9)]
    backend = "wsclean" if HAVE_WSCLEAN else "tclean"
    params = ImagingParams(backend=backend, niter=NITER)
    own = image_ms(point_ms, tmp_path / "own", params, catalog=cat)
    sub = subtract_for_imaging(point_ms, tmp_path / "sub.ms", params, cat)
    assert sub is not None and [f.source.name for f in sub.fitted] == ["src"]
    ready = image_ms(tmp_path / "sub.ms", tmp_path / "ready", params, subtracted=sub)
    assert ready.subtracted == own.subtracted
    assert own.imaging["wgridder_accuracy"] == ready.imaging["wgridder_accuracy"] == 1e-2
    a, b = (np.squeeze(fits.getdata(r.image_fits)) for r in (own, ready))
    assert float(np.nanmax(np.abs(a - b))) <= 1e-3 * float(np.nanmax(a))
    assert float(np.nanmax(b)) > 0.3  # the restored source (1 Jy through a primary beam of ~0.6)
    bare = image_ms(point_ms, tmp_path / "bare", params)
    assert bare.subtracted is None and bare.imaging["wgridder_accuracy"] == 1e-3
