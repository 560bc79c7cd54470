"""The cross-match stage as pipeline.py and the CLI use it: find_sources
(PyBDSF) and crossmatch on a synthetic image made here (white noise, 6x4
pixels per beam). The science is tested in tests/unit/test_sources_*.py."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from dsa110_contimg.crossmatch import crossmatch, find_sources

CELL_AS = 10.0
BMAJ_AS, BMIN_AS, BPA_DEG = 60.0, 40.0, 30.0
RMS = 1e-3  # Jy/beam
NPIX = 400
RA0, DEC0 = 150.0, 55.0
FREQ = 1.4e9
# (name, dRA cos(dec) arcmin, dDec arcmin, flux Jy); offsets put sources off
# pixel centres. S/N >= 100 so the 2% / 0.1-beam tolerances are > 10 sigma
# of the fit errors.
TRUTH = [
    ("A", -20.3, 11.7, 1.0),
    ("B", 15.55, -25.1, 0.5),
    ("C", 5.12, 30.43, 0.2),
    ("D", -30.77, -28.9, 0.1),
    ("E", 28.4, 20.2, 0.3),
]


@dataclass(frozen=True)
class Ref:
    name: str
    ra_deg: float
    dec_deg: float
    flux_jy: float


def truth_positions():
    out = []
    for name, dx, dy, s in TRUTH:
        dec = DEC0 + dy / 60.0
        ra = RA0 + dx / 60.0 / math.cos(math.radians(dec))
        out.append(Ref(name, ra, dec, s))
    return out


def make_image(path, freq=FREQ, seed=1):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [RA0, DEC0]
    w.wcs.crpix = [NPIX / 2 + 1, NPIX / 2 + 1]
    w.wcs.cdelt = [-CELL_AS / 3600, CELL_AS / 3600]
    yy, xx = np.mgrid[0:NPIX, 0:NPIX]
    ra, dec = w.pixel_to_world_values(xx, yy)
    img = np.random.default_rng(seed).normal(0.0, RMS, (NPIX, NPIX))
    pa = math.radians(BPA_DEG)
    k = 4 * math.log(2)
    for src in truth_positions():
        # Gaussian restoring beam written in sky coordinates (east, north),
        # PA from north through east: independent of the finder's pixel maths
        east = (ra - src.ra_deg) * np.cos(np.radians(src.dec_deg)) * 3600
        north = (dec - src.dec_deg) * 3600
        a = north * math.cos(pa) + east * math.sin(pa)
        b = east * math.cos(pa) - north * math.sin(pa)
        img += src.flux_jy * np.exp(-k * ((a / BMAJ_AS) ** 2 + (b / BMIN_AS) ** 2))
    h = w.to_header()
    h["BMAJ"], h["BMIN"], h["BPA"] = BMAJ_AS / 3600, BMIN_AS / 3600, BPA_DEG
    h["FREQ"] = freq
    fits.PrimaryHDU(img.astype(np.float32), h).writeto(path)
    return path


@pytest.fixture(scope="module")
def detected(tmp_path_factory):
    return find_sources(make_image(tmp_path_factory.mktemp("xm") / "img.fits"), snr=6.0)


def test_sources_recovered_in_flux_and_position(detected):
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    assert len(detected) == len(TRUTH)  # no false islands at 6 sigma in 160k pixels
    beam = math.sqrt(BMAJ_AS * BMIN_AS)
    for ref in truth_positions():
        c = SkyCoord(ref.ra_deg * u.deg, ref.dec_deg * u.deg)
        d = min(detected, key=lambda s: c.separation(SkyCoord(s.ra_deg * u.deg, s.dec_deg * u.deg)).arcsec)
        sep = c.separation(SkyCoord(d.ra_deg * u.deg, d.dec_deg * u.deg)).arcsec
        assert sep < 0.1 * beam, (ref.name, sep)
        assert d.flux_jy == pytest.approx(ref.flux_jy, rel=0.02), ref.name
        assert d.rms_jy == pytest.approx(RMS, rel=0.1)
        assert d.freq_hz == FREQ
        # Condon errors with the default 3 % flux scale term; positions to a small fraction of the beam
        assert 0.03 * d.flux_jy < d.flux_err_jy < 0.04 * d.flux_jy
        assert 0 < d.ra_err_arcsec < 0.02 * beam and 0 < d.dec_err_arcsec < 0.02 * beam
        assert d.snr == pytest.approx(d.peak_jy / d.rms_jy)
    assert [s.flux_jy for s in detected] == sorted((s.flux_jy for s in detected), reverse=True)


def test_crossmatch_ratio_and_unmatched(detected, tmp_path):
    refs = [r for r in truth_positions() if r.name != "C"]  # C is absent from the reference
    out = tmp_path / "matches.csv"
    res = crossmatch(detected, refs, radius_arcsec=30.0, out_csv=out)
    assert res.n_detected == 5 and res.n_reference == 4 and res.n_matched == 4
    assert res.median_flux_ratio == pytest.approx(1.0, abs=0.01)
    assert res.median_offset_arcsec < 3.0
    assert {m.name for m in res.matches} == {"A", "B", "D", "E"}
    for m in res.matches:  # what pipeline.crossmatch_step reads
        assert detected[m.index].flux_jy / m.expected_flux_jy == pytest.approx(m.flux_ratio)
        assert m.offset_arcsec == pytest.approx(math.hypot(m.dra_arcsec, m.ddec_arcsec), rel=1e-3)
    assert res.false_fraction == pytest.approx(1 / 5)
    assert res.completeness_10sigma is None  # needs the image's noise map: crossmatch_image supplies it
    (i,) = res.unmatched
    assert detected[i].flux_jy == pytest.approx(0.2, rel=0.02)  # source C
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5 and sum(int(r["matched"]) for r in rows) == 4
    assert {"flux_err_jy", "ra_err_arcsec", "dra_arcsec", "ddec_arcsec", "spectral_index"} <= set(rows[0])
    assert res.to_dict()["csv_path"] == str(out)


def test_crossmatch_scales_reference_flux_to_the_image_frequency(detected):
    # the same sky seen at 1.3 GHz by a source with alpha = -0.7: the
    # catalogue (1.4 GHz) holds the fainter 1.4 GHz flux
    f_img = 1.3e9
    refs = [replace(r, flux_jy=r.flux_jy * (1.4e9 / f_img) ** -0.7) for r in truth_positions()]
    res = crossmatch(detected, refs, 30.0, ref_freq_hz=1.4e9, image_freq_hz=f_img, spectral_index=-0.7)
    assert res.median_flux_ratio == pytest.approx(1.0, abs=0.01)
    # without the scaling the ratio would be off by (1.3/1.4)^-0.7 = 1.053
    res0 = crossmatch(detected, refs, 30.0, image_freq_hz=1.4e9)
    assert res0.median_flux_ratio == pytest.approx((f_img / 1.4e9) ** -0.7, abs=0.01)


def test_radius_and_empty_inputs(detected):
    far = [Ref("far", RA0 + 3.0, DEC0, 1.0)]
    res = crossmatch(detected, far, 30.0)
    assert res.n_matched == 0 and len(res.unmatched) == len(detected)
    assert math.isnan(res.median_flux_ratio)
    assert crossmatch([], far, 30.0).n_detected == 0


def test_mosaic_noise_box_as_the_pipeline_passes_it(tmp_path):
    found = find_sources(make_image(tmp_path / "img.fits"), snr=6.0, box=96)
    assert len(found) == len(TRUTH)
