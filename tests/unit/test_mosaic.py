"""Primary-beam-weighted mosaic of two overlapping synthetic images."""
from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from dsa110_contimg.errors import MosaicError
from dsa110_contimg.mosaic import mosaic_images

DEC0 = 30.0
CENTRES = (100.0, 101.5)  # RA of the two pointings: 1.3 deg apart on the sky
SRC = (100.75, 30.1, 2.0, 0.15)  # ra, dec, peak Jy/beam, Gaussian sigma (deg): extended, in the overlap
CELL = 0.02
NPIX = 200
PB_FWHM = 2.7
PBLIMIT = 0.2


def sky(ra, dec):
    ra0, dec0, s0, sig = SRC
    d2 = ((ra - ra0) * math.cos(math.radians(dec0))) ** 2 + (dec - dec0) ** 2
    return s0 * np.exp(-0.5 * d2 / sig**2)


def pointing(ra_c):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [ra_c, DEC0]
    w.wcs.crpix = [NPIX / 2 + 0.5, NPIX / 2 + 0.5]
    w.wcs.cdelt = [-CELL, CELL]
    yy, xx = np.mgrid[0:NPIX, 0:NPIX]
    ra, dec = w.pixel_to_world_values(xx, yy)
    d2 = ((ra - ra_c) * math.cos(math.radians(DEC0))) ** 2 + (dec - DEC0) ** 2
    pb = np.exp(-4 * math.log(2) * d2 / PB_FWHM**2)
    pbcor = np.where(pb >= PBLIMIT, sky(ra, dec), np.nan)  # noise-free: pbcor = sky
    return w, pb, pbcor


def write(path, data, w, freq=1.4e9, beam=True):
    h = w.to_header()
    h["FREQ"] = freq
    if beam:
        h["BMAJ"], h["BMIN"], h["BPA"] = 40 / 3600, 30 / 3600, 0.0
    fits.PrimaryHDU(data.astype(np.float32), h).writeto(path, overwrite=True)
    return path


@pytest.fixture()
def inputs(tmp_path):
    pbcor, pbs = [], []
    for i, ra_c in enumerate(CENTRES):
        w, pb, pc = pointing(ra_c)
        pbcor.append(write(tmp_path / f"p{i}.pbcor.fits", pc, w))
        pbs.append(write(tmp_path / f"p{i}.pb.fits", pb, w))
    return pbcor, pbs


def test_mosaic_recovers_sky_and_weights(inputs, tmp_path):
    pbcor, pbs = inputs
    res = mosaic_images(pbcor, pbs, [1e-3, 1e-3], tmp_path / "win.mosaic.fits")
    assert res.n_images == 2
    assert res.mosaic_fits.exists() and res.weight_fits.exists() and res.preview_png.exists()
    m = fits.getdata(res.mosaic_fits).astype(float)
    wt = fits.getdata(res.weight_fits).astype(float)
    w = WCS(fits.getheader(res.mosaic_fits))
    yy, xx = np.mgrid[0:m.shape[0], 0:m.shape[1]]
    ra, dec = w.pixel_to_world_values(xx, yy)
    truth = sky(ra, dec)
    bright = np.isfinite(m) & (truth > 0.5 * SRC[2])
    assert bright.sum() > 100
    # 1%: bilinear resampling of a source 7.5 pixels wide is good to ~0.1%
    assert np.max(np.abs(m[bright] / truth[bright] - 1)) < 0.01
    # at the source peak
    x, y = w.world_to_pixel_values(SRC[0], SRC[1])
    assert m[int(round(float(y))), int(round(float(x)))] == pytest.approx(SRC[2], rel=0.01)
    # weight: highest between the pointings, where both beams contribute
    ky, kx = np.unravel_index(np.argmax(wt), wt.shape)
    ra_max, _ = w.pixel_to_world_values(kx, ky)
    assert CENTRES[0] + 0.4 < float(ra_max) < CENTRES[1] - 0.4
    for ra_c in CENTRES:
        cx, cy = w.world_to_pixel_values(ra_c, DEC0)
        assert wt.max() > 1.05 * wt[int(round(float(cy))), int(round(float(cx)))]
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


def test_frequency_mismatch_raises(inputs, tmp_path):
    pbcor, pbs = inputs
    w, _, pc = pointing(CENTRES[1])
    write(pbcor[1], pc, w, freq=1.5e9)
    with pytest.raises(MosaicError, match="differs"):
        mosaic_images(pbcor, pbs, [1e-3, 1e-3], tmp_path / "m.fits")


def test_missing_beam_and_bad_lists_raise(inputs, tmp_path):
    pbcor, pbs = inputs
    with pytest.raises(MosaicError, match="rms"):
        mosaic_images(pbcor, pbs, [1e-3], tmp_path / "m.fits")
    w, _, pc = pointing(CENTRES[0])
    write(pbcor[0], pc, w, beam=False)
    with pytest.raises(MosaicError, match="beam"):
        mosaic_images(pbcor, pbs, [1e-3, 1e-3], tmp_path / "m.fits")
    with pytest.raises(MosaicError, match="no images"):
        mosaic_images([], [], [], tmp_path / "m.fits")
