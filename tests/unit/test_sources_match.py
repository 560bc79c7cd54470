"""Cross-match QA on a synthetic image whose truth is known, spectral-index
scaling, and the reference-catalogue readers (NVSS layout, simulator)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
from dsa110_contimg.catalog import CatalogSource, read_catalog, write_nvss_catalog
from dsa110_contimg.crossmatch import CrossmatchParams, crossmatch_image, in_footprint
from dsa110_contimg.sources.find import FindParams, detect
from dsa110_contimg.sources.match import crossmatch, scale_flux, spectral_index_of
from dsa110_contimg.sources.synthetic import ImageSpec, TrueSource, make_wcs, random_sources, synthetic_image

IMG_FREQ, REF_FREQ = 1.3e9, 1.4e9
SPEC = ImageSpec(npix=640, cell_arcsec=6.0, rms_jy=1e-3, freq_hz=IMG_FREQ)
SHIFT_E, SHIFT_N = 3.0, -2.0  # arcsec: where the image puts each source relative to the catalogue
RADIUS = 15.0
BLANK_COLS = 40


def _shifted(ra: float, dec: float) -> tuple[float, float]:
    return ra + SHIFT_E / 3600.0 / math.cos(math.radians(dec)), dec + SHIFT_N / 3600.0


@dataclass
class Truth:
    reference: list[CatalogSource]
    injected: list[TrueSource]


def _sky(x: float, y: float) -> tuple[float, float]:
    ra, dec = make_wcs(SPEC).pixel_to_world_values(x, y)
    return float(ra), float(dec)


def _truth() -> Truth:
    """Roles by position index (expected S/N = flux at 1.3 GHz / 1 mJy rms):
    0-19 bright (S/N 15-100) in image and catalogue; 20-25 S/N 8-8.5 in both;
    26-29 catalogue only, S/N 6-8.5; 30-31 catalogue only, S/N 20-50; 32-35
    image only, S/N 20 (false detections by definition); 36-37 catalogue
    only, S/N 2; and three bright catalogue rows off the usable area."""
    rng = np.random.default_rng(21)
    pos = random_sources(SPEC, 38, (1.0, 1.0), seed=22, margin_pix=BLANK_COLS + 20)
    snr = np.concatenate([rng.uniform(15, 100, 20), rng.uniform(8, 8.5, 6), rng.uniform(6, 8.5, 4),
                          rng.uniform(20, 50, 2), np.full(4, 20.0), np.full(2, 2.0)])
    alpha = rng.uniform(-1.2, 0.0, 38)
    ref, inj = [], []
    for i, p in enumerate(pos):
        s_img = snr[i] * SPEC.rms_jy
        s_ref = s_img / (IMG_FREQ / REF_FREQ) ** alpha[i]
        if i < 32 or i >= 36:
            ref.append(CatalogSource(f"R{i:02d}", p.ra_deg, p.dec_deg, s_ref, spectral_index=float(alpha[i])))
        if i < 26 or 32 <= i < 36:
            inj.append(TrueSource(f"R{i:02d}", *_shifted(p.ra_deg, p.dec_deg), s_img))
    off = [_sky(BLANK_COLS / 2, SPEC.npix / 2), _sky(SPEC.npix + 50, SPEC.npix / 2)]
    off.append(((SPEC.ra0_deg + 180.0) % 360.0, -SPEC.dec0_deg))
    ref += [CatalogSource(f"OFF{k}", ra, dec, 0.5) for k, (ra, dec) in enumerate(off)]
    return Truth(ref, inj)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("match")
    truth = _truth()
    blank = np.zeros((SPEC.npix, SPEC.npix), bool)
    blank[:, :BLANK_COLS] = True
    path = synthetic_image(d / "img.fits", truth.injected, SPEC, seed=8, blank=blank)
    return path, truth, detect(path, FindParams(flux_cal_frac=0.0))


@pytest.fixture(scope="module")
def result(scene):
    path, truth, det = scene
    return crossmatch(det.sources, truth.reference, RADIUS, ref_freq_hz=REF_FREQ, noise=det.noise,
                      out_csv=path.with_name("matches.csv"))


def test_detections_matches_and_false_fraction(result):
    assert result.n_detected == 30
    assert result.n_matched == 26
    assert {m.name for m in result.matches} == {f"R{i:02d}" for i in range(26)}
    assert result.false_fraction == pytest.approx(4 / 30)
    assert result.extra["image_freq_hz"] == IMG_FREQ  # taken from the detections


def test_completeness_counts_only_usable_sources_above_k_sigma(result):
    # 10 sigma: 20 bright found + 2 bright catalogue-only; 5 sigma adds 6 found + 4 not
    assert result.n_reference_usable == {"10sigma": 22, "5sigma": 32}
    assert result.completeness_10sigma == pytest.approx(20 / 22)
    assert result.completeness_5sigma == pytest.approx(26 / 32)


def test_flux_ratio_uses_each_sources_spectral_index(result):
    assert result.median_flux_ratio == pytest.approx(1.0, abs=0.02)
    for m in result.matches:
        assert m.expected_flux_jy == pytest.approx(m.ref_flux_jy * (IMG_FREQ / REF_FREQ) ** m.spectral_index)
        assert m.flux_ratio == pytest.approx(1.0, abs=6 * m.flux_err_jy / m.expected_flux_jy)


def test_offsets_in_ra_and_dec(scene, result):
    assert result.median_dra_arcsec == pytest.approx(SHIFT_E, abs=0.3)
    assert result.median_ddec_arcsec == pytest.approx(SHIFT_N, abs=0.3)
    # rms about zero: the shift in quadrature with the scatter, which at S/N 8
    # is ~2" (PyBDSF's scatter is ~1.3x the Condon errors, see test_sources_find)
    det = scene[2].sources
    for rms, shift, attr in ((result.rms_dra_arcsec, SHIFT_E, "ra_err_arcsec"),
                             (result.rms_ddec_arcsec, SHIFT_N, "dec_err_arcsec")):
        scatter2 = np.mean([(1.3 * getattr(det[m.index], attr)) ** 2 for m in result.matches])
        assert rms == pytest.approx(math.sqrt(shift ** 2 + scatter2), rel=0.2)
    assert result.median_offset_arcsec == pytest.approx(math.hypot(SHIFT_E, SHIFT_N), abs=0.4)


def test_qa_is_strict_json(result):
    qa = result.qa()
    text = json.dumps(qa, allow_nan=False)
    assert json.loads(text)["completeness_10sigma"] == pytest.approx(20 / 22)
    assert {"n_detected", "n_matched", "median_flux_ratio", "median_dra_arcsec", "rms_ddec_arcsec",
            "completeness_5sigma", "false_fraction"} <= set(qa)
    empty = crossmatch([], [], RADIUS).qa()
    assert empty["median_flux_ratio"] is None and empty["false_fraction"] is None
    assert empty["completeness_10sigma"] is None  # no noise map: not computable
    json.dumps(empty, allow_nan=False)


def test_stage_reads_the_catalogue_and_cuts_it_to_the_image(scene, tmp_path):
    path, truth, det = scene
    cat = write_nvss_catalog(truth.reference, tmp_path / "ref.tsv")  # no alpha column: NVSS has none
    params = CrossmatchParams(radius_arcsec=RADIUS, ref_freq_hz=REF_FREQ, flux_cal_frac=0.0)
    res = crossmatch_image(path, cat, params, out_csv=tmp_path / "m.csv", detection=det)
    assert res.n_reference == len(truth.reference) - 2  # off the edge and the far side are cut
    assert res.n_matched == 26 and res.completeness_5sigma == pytest.approx(26 / 32)
    assert all(m.spectral_index == -0.7 for m in res.matches)  # the default, for every row
    assert res.csv_path.exists() and len(res.csv_path.read_text().splitlines()) == 31
    names = {r.name for r in in_footprint(truth.reference, det.noise.wcs, det.noise.rms.shape)}
    assert "OFF0" in names and not {"OFF1", "OFF2"} & names


def test_scale_flux_hand_value():
    # (1.3/1.4)^-0.7 = exp(-0.7 ln 0.928571) = exp(0.0518756) = 1.053245
    assert scale_flux(1.0, 1.4e9, 1.3e9, -0.7) == pytest.approx(1.053245, rel=1e-6)
    assert scale_flux(2.0, 1.4e9, 1.4e9, -3.0) == 2.0
    assert scale_flux(1.0, 1.0e9, 2.0e9, 1.0) == pytest.approx(2.0)


def test_spectral_index_from_the_catalogue_else_the_default():
    @dataclass
    class Bare:
        name: str = "x"

    assert spectral_index_of(CatalogSource("a", 0, 0, 1, spectral_index=0.3)) == 0.3
    assert spectral_index_of(CatalogSource("a", 0, 0, 1)) == -0.7
    assert spectral_index_of(CatalogSource("a", 0, 0, 1, spectral_index=float("nan")), -0.8) == -0.8
    assert spectral_index_of(Bare(), -0.5) == -0.5


def test_a_catalogue_without_alpha_uses_the_given_default(scene):
    _, truth, det = scene
    flat = [replace(r, spectral_index=None) for r in truth.reference]
    res = crossmatch(det.sources, flat, RADIUS, ref_freq_hz=REF_FREQ, spectral_index=-0.3)
    assert {m.spectral_index for m in res.matches} == {-0.3}


# -- readers -----------------------------------------------------------------------------------
VIZIER_NVSS = (
    "#RESOURCE=yCat_8065\n#Name: VIII/65\n#Title: 1.4GHz NRAO VLA Sky Survey (NVSS) (Condon+ 1998)\n"
    "#Column\tRAJ2000\t(a11)\tRight ascension (J2000)\n\n"
    "Field\tXpos\tYpos\tNVSS\tRAJ2000\tDEJ2000\te_RAJ2000\te_DEJ2000\tS1.4\te_S1.4\tl_MajAxis\tMajAxis\t"
    "l_MinAxis\tMinAxis\tPA\tf_resFlux\n"
    "\t\t\t\t\"h:m:s\"\t\"d:m:s\"\ts\tarcsec\tmJy\tmJy\t\tarcsec\t\tarcsec\tdeg\t\n"
    "--------\t------\t------\t--------------\t-----------\t-----------\t-----\t----\t--------\t------\t-\t"
    "-----\t-\t-----\t-----\t--\n"
    "C0836P56\t 512.3\t 780.1\t083454+553421\t08 34 54.90\t+55 34 21.1\t 0.03\t 0.4\t  8120.5\t 243.6\t"
    "\t 12.3\t<\t 10.1\t -45.2\t  \n"
    "C0836P56\t 100.0\t 200.0\t083012+551002\t08 30 12.34\t+55 10 02.5\t 0.62\t 7.1\t     3.2\t   0.4\t"
    "<\t 52.0\t<\t 44.0\t      \t  \n"
)


def test_vizier_nvss_layout(tmp_path):
    path = tmp_path / "nvss.tsv"
    path.write_text(VIZIER_NVSS)
    a, b = read_catalog(path)
    assert a.name == "083454+553421" and b.name == "083012+551002"
    assert a.ra_deg == pytest.approx(15 * (8 + 34 / 60 + 54.90 / 3600))
    assert a.dec_deg == pytest.approx(55 + 34 / 60 + 21.1 / 3600)
    assert (a.flux_jy, a.e_flux_jy) == pytest.approx((8.1205, 0.2436))
    assert b.e_ra_arcsec == pytest.approx(0.62 * 15) and b.e_dec_arcsec == pytest.approx(7.1)
    assert (a.major_arcsec, a.minor_arcsec, a.pa_deg) == pytest.approx((12.3, 10.1, -45.2))
    assert b.pa_deg == 0.0 and a.spectral_index is None and b.spectral_index is None


def test_nvss_layout_with_an_alpha_column(tmp_path):
    path = tmp_path / "alpha.tsv"
    path.write_text("NVSS\tRAJ2000\tDEJ2000\tS1.4\talpha\nJ1\t01 00 00.00\t+10 00 00.0\t12.0\t-0.25\n"
                    "J2\t02 00 00.00\t+10 00 00.0\t5.0\t\n")
    a, b = read_catalog(path)
    assert a.spectral_index == -0.25 and b.spectral_index is None


def test_simulator_catalogue_and_truth_file(tmp_path):
    from dsa110_contimg.simulate.sky import random_strip_sky

    sky = random_strip_sky(120.0, 130.0, 55.0, 1.5, n_sources=12, seed=3, include_calibrators=False)
    tsv = write_nvss_catalog(sky.to_catalog_sources(), tmp_path / "reference_catalog.tsv")
    rows = read_catalog(tsv)
    assert [r.name for r in rows] == sky.names
    assert np.allclose([r.flux_jy for r in rows], sky.flux_jy, atol=5e-5)  # the layout keeps 0.1 mJy
    truth = tmp_path / "2026-01-01T00:00:00_sky.json"
    truth.write_text(json.dumps({"preset": "x", "sources": sky.to_json()}))
    rows = read_catalog(truth)
    assert [r.spectral_index for r in rows] == pytest.approx(list(sky.spectral_index))
    assert [r.ra_deg for r in rows] == pytest.approx(list(sky.ra_deg))
