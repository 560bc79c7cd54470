"""Image QA on synthetic FITS images whose noise and sources the test knows."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from dsa110_contimg.imaging.qa import ImageQAThresholds, clipped_rms, image_qa, write_thumbnail

NPIX = 512
SIGMA = 1e-3  # Jy/beam, the noise put in
BEAM_PX = 4.0  # FWHM of the restoring beam in pixels
CELL_ARCSEC = 10.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _header() -> fits.Header:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [150.0, 55.0]
    w.wcs.crpix = [NPIX / 2 + 1, NPIX / 2 + 1]
    w.wcs.cdelt = [-CELL_ARCSEC / 3600, CELL_ARCSEC / 3600]
    h = w.to_header()
    beam_deg = BEAM_PX * CELL_ARCSEC / 3600
    h["BMAJ"], h["BMIN"], h["BPA"] = beam_deg, beam_deg, 0.0
    h["BUNIT"] = "JY/BEAM"
    h["FREQ"] = 1.405e9
    h["DATE-OBS"] = "2026-01-15T08:46:07.000"
    h["OBJECT"] = "2026-01-15T08:46:07"
    return h


def _gaussian(x0: float, y0: float, peak: float) -> np.ndarray:
    yy, xx = np.mgrid[0:NPIX, 0:NPIX]
    s = BEAM_PX / (2 * math.sqrt(2 * math.log(2)))
    return peak * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s**2))


def _write(path: Path, data: np.ndarray, **keys) -> Path:
    h = _header()
    for k, v in keys.items():
        h[k] = v
    fits.PrimaryHDU(data.astype(np.float32), h).writeto(path)
    return path


@pytest.fixture
def noise() -> np.ndarray:
    return np.random.default_rng(42).normal(0.0, SIGMA, (NPIX, NPIX))


@pytest.fixture
def one_source(tmp_path, noise) -> Path:
    """Noise of SIGMA plus one 0.5 Jy/beam point source: dynamic range 500."""
    return _write(tmp_path / "one.image.fits", noise + _gaussian(200, 300, 0.5))


def test_rms_peak_dynamic_range_and_good_verdict(one_source):
    qa = image_qa(one_source, flagged_fraction=0.1)
    json.dumps(qa)  # travels through XCom and into the registry
    # 262k noise pixels: the MAD estimate scatters by ~0.2 %; 5 % is the stated requirement
    assert qa["rms_jy"] == pytest.approx(SIGMA, rel=0.05)
    assert qa["peak_jy"] == pytest.approx(0.5, abs=5 * SIGMA)
    assert qa["dynamic_range"] == pytest.approx(500, rel=0.05)
    assert qa["beam_arcsec"] == pytest.approx([40.0, 40.0, 0.0])
    assert qa["flagged_fraction"] == 0.1
    assert qa["qa_status"] == "good" and qa["reasons"] == []
    assert "thumbnail" not in qa


def test_clipping_keeps_crowded_sources_out_of_the_noise(tmp_path, noise):
    """400 sources of 20-200 sigma cover ~15 % of the pixels: an unclipped MAD is
    inflated by them, the clipped estimate still recovers the noise put in."""
    rng = np.random.default_rng(7)
    sky = np.zeros((NPIX, NPIX))
    for x, y, s in zip(rng.uniform(10, NPIX - 10, 400), rng.uniform(10, NPIX - 10, 400),
                       rng.uniform(20, 200, 400) * SIGMA):
        sky += _gaussian(x, y, s)
    data = noise + sky
    plain = 1.4826 * np.median(np.abs(data - np.median(data)))
    assert plain > 1.1 * SIGMA  # the test is only meaningful if sources do inflate a plain MAD
    assert clipped_rms(data) == pytest.approx(SIGMA, rel=0.05)


def test_rms_above_limit_is_bad_and_says_why(one_source):
    qa = image_qa(one_source, thresholds=ImageQAThresholds(max_rms_jy=0.5e-3))
    assert qa["qa_status"] == "bad"
    assert len(qa["reasons"]) == 1
    m = re.fullmatch(r"rms ([0-9.]+) mJy/beam above the limit 0.5 mJy/beam", qa["reasons"][0])
    assert m, qa["reasons"]
    assert float(m.group(1)) == pytest.approx(SIGMA * 1e3, rel=0.05)  # the measured number, in mJy


def test_each_limit_gives_its_reason(tmp_path, noise, one_source):
    qa = image_qa(one_source, flagged_fraction=0.8)
    assert qa["reasons"] == ["flagged fraction 0.800 of the visibilities above the limit 0.5"]
    qa = image_qa(one_source, thresholds=ImageQAThresholds(max_beam_arcsec=30.0))
    assert qa["reasons"] == ["beam major axis 40.0 arcsec above the limit 30 arcsec"]
    # pure noise: peak/rms ~ 4.5-5 sigma, far below 20
    qa = image_qa(_write(tmp_path / "noise.fits", noise))
    assert qa["qa_status"] == "bad"
    assert len(qa["reasons"]) == 1 and qa["reasons"][0].startswith("dynamic range ")
    assert "below the limit 20" in qa["reasons"][0]


def test_flagged_fraction_from_header_and_pbcor_numbers(tmp_path, noise):
    img = _write(tmp_path / "g.image.fits", noise + _gaussian(256, 256, 0.5), FLAGFRAC=0.25)
    inside = np.hypot(*(np.mgrid[0:NPIX, 0:NPIX] - 256)) < 200  # pb above pblimit within 200 px
    pbcor_data = np.where(inside, noise + _gaussian(256, 256, 0.5), np.nan)
    pbcor = _write(tmp_path / "g.pbcor.fits", pbcor_data)
    qa = image_qa(img, pbcor)
    assert qa["flagged_fraction"] == 0.25
    assert qa["pbcor_peak_jy"] == pytest.approx(0.5, abs=5 * SIGMA)
    assert qa["pbcor_valid_fraction"] == pytest.approx(math.pi * 200**2 / NPIX**2, rel=0.01)
    assert qa["qa_status"] == "good"
    empty = _write(tmp_path / "e.pbcor.fits", np.full((NPIX, NPIX), np.nan))
    qa = image_qa(img, empty)
    assert qa["qa_status"] == "bad" and "no valid pixel" in qa["reasons"][0]


def test_blank_image_is_bad(tmp_path):
    qa = image_qa(_write(tmp_path / "zero.fits", np.zeros((NPIX, NPIX))))
    json.dumps(qa)
    assert qa["qa_status"] == "bad"
    assert any("not a positive number" in r for r in qa["reasons"])


def test_thumbnail_is_a_png_and_leaves_no_temporary_file(tmp_path, one_source):
    from matplotlib.image import imread

    out = tmp_path / "thumbs"
    qa = image_qa(one_source, thumbnail_png=out / "one.png")
    png = Path(qa["thumbnail"])
    assert png == out / "one.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    pixels = imread(png)
    assert pixels.shape[:2] == (512, 512)
    assert pixels[..., :3].std() > 0.05  # an image, not a blank canvas
    assert sorted(p.name for p in out.iterdir()) == ["one.png"]
    # rewriting replaces in place, at the asked size
    write_thumbnail(one_source, png, size_px=256)
    assert imread(png).shape[:2] == (256, 256)
    assert sorted(p.name for p in out.iterdir()) == ["one.png"]


def test_thresholds_round_trip_and_validation():
    t = ImageQAThresholds.from_dict({"max_rms_jy": "0.002", "min_dynamic_range": None})
    assert t.max_rms_jy == 0.002 and t.min_dynamic_range == 20.0
    assert ImageQAThresholds.from_dict(t.to_dict()) == t
    with pytest.raises(ValueError, match="unknown image QA thresholds"):
        ImageQAThresholds.from_dict({"max_noise": 1})
    with pytest.raises(ValueError, match="max_rms_jy"):
        ImageQAThresholds(max_rms_jy=-1)
    with pytest.raises(ValueError, match="max_flagged_fraction"):
        ImageQAThresholds(max_flagged_fraction=1.5)
