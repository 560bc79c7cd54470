"""Linear mosaics of synthetic pointings with known sky, primary beams and noise.

Geometry: 4 x 4 deg SIN images (0.02 deg pixels) at declination 30, Gaussian
primary beams of 2.7 deg FWHM cut at PB 0.2, pointings 0.65-1.3 deg apart on
the sky as consecutive drift-scan images are. Flat-image noise is white noise
smoothed to a 2-pixel Gaussian correlation (a real restored image's noise is
correlated over the beam, which bicubic resampling then barely changes),
scaled exactly to the stated rms; pbcor = (PB x sky + noise) / PB."""
from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from dsa110_contimg import mosaic as mosaic_mod
from dsa110_contimg.errors import MosaicError
from dsa110_contimg.mosaic import MEDIAN_VARIANCE_FACTOR, METHODS, mosaic_images
from scipy.ndimage import gaussian_filter

DEC0 = 30.0
CENTRES = (100.0, 101.5)  # RA of the two pointings: 1.3 deg apart on the sky
SRC = (100.75, 30.1, 2.0, 0.15)  # ra, dec, peak Jy/beam, Gaussian sigma (deg): extended, in the overlap
CELL = 0.02
NPIX = 200
PB_FWHM = 2.7
PBLIMIT = 0.2
NOISE_CORR_PX = 2.0  # Gaussian sigma of the noise correlation (pixels)
BEAM = (40.0, 30.0, 0.0)  # arcsec, arcsec, deg


def sky(ra, dec, src=SRC):
    ra0, dec0, s0, sig = src
    d2 = ((ra - ra0) * math.cos(math.radians(dec0))) ** 2 + (dec - dec0) ** 2
    return s0 * np.exp(-0.5 * d2 / sig**2)


def pointing_wcs(ra_c, proj="SIN"):
    w = WCS(naxis=2)
    w.wcs.ctype = [f"RA---{proj}", f"DEC--{proj}"]
    w.wcs.crval = [ra_c, DEC0]
    w.wcs.crpix = [NPIX / 2 + 0.5, NPIX / 2 + 0.5]
    w.wcs.cdelt = [-CELL, CELL]
    return w


def pointing(ra_c, proj="SIN"):
    """WCS, primary beam and noise-free pbcor (= the extended sky) of one pointing."""
    w = pointing_wcs(ra_c, proj)
    yy, xx = np.mgrid[0:NPIX, 0:NPIX]
    ra, dec = w.pixel_to_world_values(xx, yy)
    d2 = ((ra - ra_c) * math.cos(math.radians(DEC0))) ** 2 + (dec - DEC0) ** 2
    pb = np.exp(-4 * math.log(2) * d2 / PB_FWHM**2)
    pbcor = np.where(pb >= PBLIMIT, sky(ra, dec), np.nan)
    return w, pb, pbcor


def correlated_noise(rng, sigma):
    """Gaussian noise of rms ``sigma`` per pixel, correlated over ~NOISE_CORR_PX."""
    white = rng.standard_normal((NPIX, NPIX))
    delta = np.zeros((33, 33))
    delta[16, 16] = 1.0
    gain = math.sqrt(float(np.sum(gaussian_filter(delta, NOISE_CORR_PX) ** 2)))
    return sigma * gaussian_filter(white, NOISE_CORR_PX) / gain


def observed(ra_c, rng, sigma, sources=(), blob=None):
    """pbcor and PB of a pointing of ``sources`` with flat-image noise ``sigma``."""
    w = pointing_wcs(ra_c)
    yy, xx = np.mgrid[0:NPIX, 0:NPIX]
    ra, dec = w.pixel_to_world_values(xx, yy)
    d2 = ((ra - ra_c) * math.cos(math.radians(DEC0))) ** 2 + (dec - DEC0) ** 2
    pb = np.exp(-4 * math.log(2) * d2 / PB_FWHM**2)
    truth = sum((sky(ra, dec, s) for s in sources), np.zeros_like(pb))
    if blob is not None:
        truth = truth + sky(ra, dec, blob)  # an artefact in this image only
    flat = pb * truth + correlated_noise(rng, sigma)
    return w, pb, np.where(pb >= PBLIMIT, flat / pb, np.nan)


def write(path, data, w, freq=1.4e9, beam=BEAM, extra=None):
    h = w.to_header()
    h["FREQ"] = freq
    h["BUNIT"] = "JY/BEAM"
    if beam:
        h["BMAJ"], h["BMIN"], h["BPA"] = beam[0] / 3600, beam[1] / 3600, beam[2]
    for k, v in (extra or {}).items():
        h[k] = v
    fits.PrimaryHDU(np.asarray(data, dtype=np.float32), h).writeto(path, overwrite=True)
    return path


def write_set(tmp_path, centres, sigma, seed, sources=(), blob_in=None, blob=None, tag="n"):
    """Write one pbcor/pb pair per pointing; returns (pbcor paths, pb paths, rms list)."""
    rng = np.random.default_rng(seed)
    pbcor, pbs = [], []
    for i, ra_c in enumerate(centres):
        w, pb, pc = observed(ra_c, rng, sigma, sources, blob if i == blob_in else None)
        pbcor.append(write(tmp_path / f"{tag}{i}.pbcor.fits", pc, w, extra={"MJD-MID": 60000.0 + i * 0.0036}))
        pbs.append(write(tmp_path / f"{tag}{i}.pb.fits", pb, w))
    return pbcor, pbs, [sigma] * len(centres)


def grid(path):
    """Data, WCS and (ra, dec) of every pixel of an output FITS."""
    data = fits.getdata(path).astype(float)
    w = WCS(fits.getheader(path))
    yy, xx = np.mgrid[0:data.shape[0], 0:data.shape[1]]
    ra, dec = w.pixel_to_world_values(xx, yy)
    return data, w, ra, dec


def pixel_of(w, ra, dec):
    x, y = w.world_to_pixel_values(ra, dec)
    return round(float(y)), round(float(x))


@pytest.fixture()
def inputs(tmp_path):
    pbcor, pbs = [], []
    for i, ra_c in enumerate(CENTRES):
        w, pb, pc = pointing(ra_c)
        pbcor.append(write(tmp_path / f"p{i}.pbcor.fits", pc, w))
        pbs.append(write(tmp_path / f"p{i}.pb.fits", pb, w))
    return pbcor, pbs


THREE = (100.0, 100.75, 101.5)  # 0.65 deg apart on the sky: pixels covered by 1, 2 and 3 images


@pytest.fixture()
def three(tmp_path):
    """Three noise-free pointings (for the checks: the odd one out is named)."""
    pbcor, pbs = [], []
    for i, ra_c in enumerate(THREE):
        w, pb, pc = pointing(ra_c)
        pbcor.append(write(tmp_path / f"t{i}.pbcor.fits", pc, w))
        pbs.append(write(tmp_path / f"t{i}.pb.fits", pb, w))
    return pbcor, pbs, [1e-3] * 3


# -- combination ------------------------------------------------------------------
def test_mosaic_recovers_sky_and_weights(inputs, tmp_path):
    pbcor, pbs = inputs
    res = mosaic_images(pbcor, pbs, [1e-3, 1e-3], tmp_path / "win.mosaic.fits")
    assert res.n_inputs == 2 and res.method == "weighted" and res.excluded == ()
    assert res.mosaic_fits.exists() and res.weight_fits.exists() and res.preview_png.exists()
    m, w, ra, dec = grid(res.mosaic_fits)
    wt = fits.getdata(res.weight_fits).astype(float)
    truth = sky(ra, dec)
    bright = np.isfinite(m) & (truth > 0.5 * SRC[2])
    assert bright.sum() > 100
    # 1%: bicubic resampling of a source 7.5 pixels wide is good to << 0.1%
    assert np.max(np.abs(m[bright] / truth[bright] - 1)) < 0.01
    assert m[pixel_of(w, SRC[0], SRC[1])] == pytest.approx(SRC[2], rel=0.01)
    # weight: highest between the pointings, where both beams contribute
    ky, kx = np.unravel_index(np.argmax(wt), wt.shape)
    ra_max, _ = w.pixel_to_world_values(kx, ky)
    assert CENTRES[0] + 0.4 < float(ra_max) < CENTRES[1] - 0.4
    for ra_c in CENTRES:
        assert wt.max() > 1.05 * wt[pixel_of(w, ra_c, DEC0)]
    # both pointings at 1 mJy: best noise ~ 1 mJy / sqrt(2 PB(0.65 deg)^2)
    assert 0.7e-3 < res.rms_jy < 1e-3
    assert res.freq_hz == pytest.approx(1.4e9)
    assert res.peak_jy == pytest.approx(SRC[2], rel=0.01)
    assert CENTRES[0] < res.ra_deg < CENTRES[1]
    # rerun replaces the products in place
    res2 = mosaic_images(pbcor, pbs, [1e-3, 1e-3], tmp_path / "win.mosaic.fits")
    assert res2.mosaic_fits == res.mosaic_fits
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_weights_follow_rms(inputs, tmp_path):
    # the noisier image gets less weight: the weight peak moves to the quiet pointing
    pbcor, pbs = inputs
    res = mosaic_images(pbcor, pbs, [1e-3, 4e-3], tmp_path / "m.fits", preview=False)
    wt = fits.getdata(res.weight_fits)
    w = WCS(fits.getheader(res.weight_fits))
    ky, kx = np.unravel_index(np.nanargmax(wt), wt.shape)
    assert abs(float(w.pixel_to_world_values(kx, ky)[0]) - CENTRES[0]) < 0.3


COMPACT = (100.45, 29.9, 1.0, 0.06)  # 1 Jy/beam peak, 3-pixel sigma; PB 0.93 and 0.61 in the two images


@pytest.mark.parametrize("method", METHODS)
def test_compact_source_flux_in_overlap(method, tmp_path):
    pbcor, pbs, rms = write_set(tmp_path, CENTRES, 3e-4, seed=1, sources=[COMPACT])
    res = mosaic_images(pbcor, pbs, rms, tmp_path / "m.fits", method=method, preview=False)
    m, w, ra, dec = grid(res.mosaic_fits)
    assert fits.getdata(res.weight_fits)[pixel_of(w, *COMPACT[:2])] > (0 if method == "weighted" else 1.5)
    y, x = pixel_of(w, *COMPACT[:2])
    box = (slice(y - 15, y + 16), slice(x - 15, x + 16))  # +-5 source sigmas
    # Integrated flux (sum over the box against the true sky on the same grid):
    # linear interpolation preserves integrals to << 0.1%, and the noise in a
    # 31x31 sum is <= 0.3% (1 sigma), so 1% is a >= 3 sigma bound.
    assert np.sum(m[box]) / np.sum(sky(ra, dec, COMPACT)[box]) == pytest.approx(1.0, abs=0.01)
    # Peak, against the true sky at the same pixel: bilinear resampling of a
    # 3-pixel-sigma Gaussian would lower it by up to 2.7% (grids offset by half
    # a pixel in both axes); the bicubic spline's error is ~0.1%, noise adds 0.03%.
    truth = sky(ra, dec, COMPACT)
    k = np.unravel_index(np.argmax(truth), truth.shape)
    assert m[k] == pytest.approx(truth[k], rel=0.005)


@pytest.mark.parametrize("method", METHODS)
def test_noise_map_predicts_measured_rms(method, tmp_path):
    pbcor, pbs, rms = write_set(tmp_path, THREE, 1e-3, seed=2)
    res = mosaic_images(pbcor, pbs, rms, tmp_path / "m.fits", method=method, preview=False)
    m = fits.getdata(res.mosaic_fits).astype(float)
    noise = fits.getdata(res.noise_fits).astype(float)
    assert fits.getheader(res.noise_fits)["BUNIT"] == "JY/BEAM"
    ok = np.isfinite(m) & np.isfinite(noise)
    assert ok.sum() > 30000
    # ~1000 independent samples (2-px correlation) -> std known to ~2%;
    # resampling the correlated noise changes it by ~2%; 10% bound.
    assert np.std(m[ok] / noise[ok]) == pytest.approx(1.0, abs=0.10)
    assert res.rms_jy == pytest.approx(np.min(noise[ok]), rel=1e-5)
    if method != "weighted":  # count map; where all three images overlap, the median has rejected nothing
        n = fits.getdata(res.weight_fits)
        deep = ok & (n == 3)
        assert deep.sum() > 5000
        assert np.std(m[deep] / noise[deep]) == pytest.approx(1.0, abs=0.10)


def test_weighted_beats_mean_where_pb_differs(tmp_path):
    pbcor, pbs, rms = write_set(tmp_path, CENTRES, 1e-3, seed=3)
    out = {meth: mosaic_images(pbcor, pbs, rms, tmp_path / f"{meth}.fits", method=meth, preview=False)
           for meth in ("weighted", "mean")}
    mw, _, ra, dec = grid(out["weighted"].mosaic_fits)
    mm = fits.getdata(out["mean"].mosaic_fits).astype(float)
    nw = fits.getdata(out["weighted"].noise_fits).astype(float)
    nm = fits.getdata(out["mean"].noise_fits).astype(float)
    n = fits.getdata(out["mean"].weight_fits)
    ok = np.isfinite(nw)
    assert np.all(nw[ok] <= nm[ok] * (1 + 1e-5))  # minimum variance, everywhere
    # overlap pixels where one beam is > 3x the other: weighted/mean noise
    # = 2 / sqrt((1 + r^2)(1 + 1/r^2)) <= 0.6 for PB ratio r >= 3
    pb = [np.exp(-4 * math.log(2) * (((ra - c) * math.cos(math.radians(DEC0))) ** 2 + (dec - DEC0) ** 2)
                 / PB_FWHM**2) for c in CENTRES]
    unequal = ok & (n == 2) & (np.maximum(*pb) > 3 * np.minimum(*pb))
    assert unequal.sum() > 1000
    assert np.median(nw[unequal] / nm[unequal]) < 0.6
    assert np.std(mw[unequal]) < 0.7 * np.std(mm[unequal])  # and measured so


BLOB = (100.8, 30.3, 5.0, 0.08)  # spurious 5 Jy blob in one image only, where all three overlap
REAL = (100.7, 29.8, 1.0, 0.08)  # a real source in all three


def test_median_rejects_an_outlier_image(tmp_path):
    pbcor, pbs, rms = write_set(tmp_path, THREE, 1e-3, seed=4, sources=[REAL], blob_in=1, blob=BLOB)
    res = {meth: mosaic_images(pbcor, pbs, rms, tmp_path / f"{meth}.fits", method=meth, preview=False)
           for meth in ("median", "mean")}
    med, w, _, _ = grid(res["median"].mosaic_fits)
    mean = fits.getdata(res["mean"].mosaic_fits).astype(float)
    noise = fits.getdata(res["median"].noise_fits).astype(float)
    at_blob = pixel_of(w, *BLOB[:2])
    assert fits.getdata(res["median"].weight_fits)[at_blob] == 3
    assert mean[at_blob] > 0.25 * BLOB[2]  # the mean carries a third of it
    assert abs(med[at_blob]) < 5 * noise[at_blob]  # the median: noise only
    # the real source survives the median (3%: resampling of the peak, noise 0.2%)
    assert med[pixel_of(w, *REAL[:2])] == pytest.approx(REAL[2], rel=0.03)


def test_strips_give_the_same_mosaic(tmp_path, monkeypatch):
    pbcor, pbs, rms = write_set(tmp_path, THREE, 1e-3, seed=5, sources=[REAL])
    whole = {m: mosaic_images(pbcor, pbs, rms, tmp_path / f"w_{m}.fits", method=m, preview=False)
             for m in ("weighted", "median")}
    monkeypatch.setattr(mosaic_mod, "STRIP_BUDGET_BYTES", 1)  # one row per strip
    for m, ref in whole.items():
        res = mosaic_images(pbcor, pbs, rms, tmp_path / f"s_{m}.fits", method=m, preview=False)
        for a, b in ((res.mosaic_fits, ref.mosaic_fits), (res.noise_fits, ref.noise_fits),
                     (res.weight_fits, ref.weight_fits)):
            np.testing.assert_allclose(fits.getdata(a), fits.getdata(b), rtol=1e-5, atol=1e-9, equal_nan=True)


def test_median_variance_table_matches_monte_carlo():
    rng = np.random.default_rng(6)
    for n in (3, 4, 5, 8):
        draws = rng.standard_normal((200_000, n))
        # 200k draws: the variance is known to 0.3%
        assert n * np.var(np.median(draws, axis=1)) == pytest.approx(MEDIAN_VARIANCE_FACTOR[n], rel=0.015)


# -- outputs ----------------------------------------------------------------------
def test_outputs_headers_and_preview(three, tmp_path):
    pbcor, pbs, rms = three
    start = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    end = datetime(2025, 3, 1, 13, 0, tzinfo=UTC)
    res = mosaic_images(pbcor, pbs, rms, tmp_path / "out" / "w.mosaic.fits", method="median", window=(start, end))
    assert res.noise_fits.name == "w.mosaic.noise.fits" and res.weight_fits.name == "w.mosaic.weight.fits"
    assert res.preview_png.name == "w.mosaic.png"
    h = fits.getheader(res.mosaic_fits)
    assert h["BMAJ"] == pytest.approx(BEAM[0] / 3600) and h["FREQ"] == pytest.approx(1.4e9)
    assert h["BUNIT"] == "JY/BEAM" and h["MOSMETH"] == "median" and h["NINPUTS"] == 3
    assert h["DATE-OBS"] == "2025-03-01T12:00:00" and h["DATE-END"] == "2025-03-01T13:00:00"
    history = "".join(str(c) for c in h["HISTORY"])
    assert "median" in history and all(p.name in history for p in pbcor)
    assert fits.getheader(res.weight_fits)["BUNIT"] == ""
    png = res.preview_png.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(res.preview_png)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "w.mosaic.fits", "w.mosaic.noise.fits", "w.mosaic.png", "w.mosaic.weight.fits"]
    d = res.to_dict()
    assert d["method"] == "median" and d["n_inputs"] == 3 and d["excluded"] == []
    assert isinstance(d["noise_fits"], str)


def test_date_from_inputs_without_window(tmp_path):
    pbcor, pbs, rms = write_set(tmp_path, CENTRES, 1e-3, seed=7)
    res = mosaic_images(pbcor, pbs, rms, tmp_path / "m.fits", preview=False)
    h = fits.getheader(res.mosaic_fits)
    assert h["MJD-OBS"] == pytest.approx(60000.0) and h["DATE-END"].startswith("2023-02-25T00:05")


def test_degenerate_casa_axes_accepted(inputs, tmp_path):
    pbcor, pbs = inputs
    ref = mosaic_images(pbcor, pbs, [1e-3, 1e-3], tmp_path / "ref.fits", preview=False)
    w, _, pc = pointing(CENTRES[0])
    h = w.to_header()
    h.update(FREQ=1.4e9, BMAJ=BEAM[0] / 3600, BMIN=BEAM[1] / 3600, BPA=0.0)
    h4 = fits.PrimaryHDU(pc[None, None].astype(np.float32)).header
    h4.update(h)
    h4.update(CTYPE3="FREQ", CRVAL3=1.4e9, CDELT3=1e8, CRPIX3=1.0, CTYPE4="STOKES", CRVAL4=1.0, CDELT4=1.0, CRPIX4=1.0)
    fits.PrimaryHDU(pc[None, None].astype(np.float32), h4).writeto(pbcor[0], overwrite=True)
    res = mosaic_images(pbcor, pbs, [1e-3, 1e-3], tmp_path / "m.fits", preview=False)
    np.testing.assert_allclose(fits.getdata(res.mosaic_fits), fits.getdata(ref.mosaic_fits), equal_nan=True)


# -- checks -----------------------------------------------------------------------
def test_frequency_mismatch_raises(inputs, tmp_path):
    pbcor, pbs = inputs
    w, _, pc = pointing(CENTRES[1])
    write(pbcor[1], pc, w, freq=1.5e9)
    with pytest.raises(MosaicError, match="differs"):
        mosaic_images(pbcor, pbs, [1e-3, 1e-3], tmp_path / "m.fits")


def test_frequency_checks_name_the_file(three, tmp_path):
    pbcor, pbs, rms = three
    w, _, pc = pointing(THREE[1])
    write(pbcor[1], pc, w, freq=1.4e9 * 1.015)  # 1.5%: a 12/16-subband image, accepted
    assert mosaic_images(pbcor, pbs, rms, tmp_path / "m.fits", preview=False).n_inputs == 3
    write(pbcor[1], pc, w, freq=1.4e9 * 1.03)
    with pytest.raises(MosaicError, match="frequency .* differs") as err:
        mosaic_images(pbcor, pbs, rms, tmp_path / "m.fits")
    assert err.value.path == str(pbcor[1])


def test_beam_checks_name_the_file(three, tmp_path):
    pbcor, pbs, rms = three
    w, _, pc = pointing(THREE[2])
    write(pbcor[2], pc, w, beam=(42.0, 31.0, 0.0))  # +8.5% in area: accepted
    assert mosaic_images(pbcor, pbs, rms, tmp_path / "m.fits", preview=False).n_inputs == 3
    write(pbcor[2], pc, w, beam=(60.0, 45.0, 0.0))
    with pytest.raises(MosaicError, match="restoring beam .* area") as err:
        mosaic_images(pbcor, pbs, rms, tmp_path / "m.fits")
    assert err.value.path == str(pbcor[2])
    write(pbcor[2], pc, w, beam=(BEAM[0], BEAM[1], 45.0))  # same area, rotated elongated beam
    with pytest.raises(MosaicError, match="position angle") as err:
        mosaic_images(pbcor, pbs, rms, tmp_path / "m.fits")
    assert err.value.path == str(pbcor[2])


def test_wcs_checks_name_the_file(three, tmp_path):
    pbcor, pbs, rms = three
    _, _, pc = pointing(THREE[0])
    lin = WCS(naxis=2)
    lin.wcs.ctype = ["LINEAR", "LINEAR"]
    write(pbcor[0], pc, lin)
    with pytest.raises(MosaicError, match="no celestial WCS") as err:
        mosaic_images(pbcor, pbs, rms, tmp_path / "m.fits")
    assert err.value.path == str(pbcor[0])
    fits.PrimaryHDU(pc.astype(np.float32)).writeto(pbcor[0], overwrite=True)  # no WCS at all
    with pytest.raises(MosaicError, match="no celestial WCS"):
        mosaic_images(pbcor, pbs, rms, tmp_path / "m.fits")
    w, pb, pc = pointing(THREE[0], proj="TAN")
    write(pbcor[0], pc, w)
    write(pbs[0], pb, w)
    with pytest.raises(MosaicError, match="RA---TAN/DEC--TAN differs .* RA---SIN/DEC--SIN") as err:
        mosaic_images(pbcor, pbs, rms, tmp_path / "m.fits")
    assert err.value.path == str(pbcor[0])
    w_s, _, pc_s = pointing(THREE[0])
    write(pbcor[0], pc_s, w_s)  # image back to SIN, its primary beam still TAN
    with pytest.raises(MosaicError, match="primary beam grid") as err:
        mosaic_images(pbcor, pbs, rms, tmp_path / "m.fits")
    assert err.value.path == str(pbs[0])


def test_bad_qa_excluded_and_listed(three, tmp_path):
    pbcor, pbs, rms = three
    pbcor[1].unlink()  # a bad image need not even be readable
    res = mosaic_images(pbcor, pbs, rms, tmp_path / "m.fits", qa_status=["good", "bad", "good"], preview=False)
    assert res.n_inputs == 2
    assert len(res.excluded) == 1 and res.excluded[0][0] == pbcor[1] and "bad" in res.excluded[0][1]
    history = "".join(str(c) for c in fits.getheader(res.mosaic_fits)["HISTORY"])
    assert f"excluded {pbcor[1]}" in history
    with pytest.raises(MosaicError, match="no inputs left"):
        mosaic_images(pbcor, pbs, rms, tmp_path / "m.fits", qa_status=["bad", "failed", None])
    with pytest.raises(MosaicError, match="QA statuses"):
        mosaic_images(pbcor, pbs, rms, tmp_path / "m.fits", qa_status=["good"])


def test_missing_beam_and_bad_lists_raise(inputs, tmp_path):
    pbcor, pbs = inputs
    with pytest.raises(MosaicError, match="rms"):
        mosaic_images(pbcor, pbs, [1e-3], tmp_path / "m.fits")
    with pytest.raises(MosaicError, match="unknown mosaic method"):
        mosaic_images(pbcor, pbs, [1e-3, 1e-3], tmp_path / "m.fits", method="max")
    w, _, pc = pointing(CENTRES[0])
    write(pbcor[0], pc, w, beam=None)
    with pytest.raises(MosaicError, match="beam") as err:
        mosaic_images(pbcor, pbs, [1e-3, 1e-3], tmp_path / "m.fits")
    assert err.value.path == str(pbcor[0])
    with pytest.raises(MosaicError, match="no images"):
        mosaic_images([], [], [], tmp_path / "m.fits")
    assert not list(tmp_path.glob("m.*"))  # nothing written by a refused mosaic


def test_preview_of_a_large_mosaic_is_block_averaged(inputs, tmp_path, monkeypatch):
    pbcor, pbs = inputs
    monkeypatch.setattr(mosaic_mod, "PREVIEW_MAX_PIXELS", 64)  # mosaic ~200x270 px -> 5x5 blocks
    res = mosaic_images(pbcor, pbs, [1e-3, 1e-3], tmp_path / "m.fits")
    import matplotlib.image

    assert matplotlib.image.imread(res.preview_png).ndim == 3
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_truncated_input_named(three, tmp_path):
    pbcor, pbs, rms = three
    raw = pbs[2].read_bytes()
    pbs[2].write_bytes(raw[: len(raw) // 2])  # header intact, data cut short
    with pytest.raises(MosaicError, match="cannot read image data") as err:
        mosaic_images(pbcor, pbs, rms, tmp_path / "m.fits")
    assert err.value.path == str(pbs[2])
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name or p.name.startswith("m.")]
