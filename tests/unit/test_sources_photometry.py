"""Forced photometry recovers injected fluxes, with errors that fit the scatter."""
from __future__ import annotations

import numpy as np
import pytest
from dsa110_contimg.catalog import CatalogSource, write_nvss_catalog
from dsa110_contimg.crossmatch import photometry_image
from dsa110_contimg.sources.find import FindParams, SourceFindingError, detect
from dsa110_contimg.sources.photometry import forced_photometry
from dsa110_contimg.sources.synthetic import ImageSpec, make_wcs, random_sources, synthetic_image


@pytest.mark.parametrize("cell", [6.0, 10.0])  # 5 and 3 pixels per beam minor axis
def test_noise_free_fluxes_have_no_subpixel_bias(tmp_path, cell):
    spec = ImageSpec(npix=400, cell_arcsec=cell, rms_jy=1e-9)
    srcs = random_sources(spec, 30, (0.01, 1.0), seed=1)
    path = synthetic_image(tmp_path / "img.fits", srcs, spec, seed=0)
    got = {m.name: m for m in forced_photometry(path, srcs)}
    assert set(got) == {s.name for s in srcs}
    for s in srcs:
        # a bilinear interpolation would be up to ~8 % low between pixel centres at 3 pixels per beam
        assert got[s.name].flux_jy == pytest.approx(s.flux_jy, rel=5e-3), s.name


def test_fluxes_and_errors_in_noise(tmp_path):
    """Three noise realisations of 100 sources at S/N 5-100: (measured - true) /
    error has unit scatter, and the error is ~ the local rms (noise correlated
    on the beam makes the peak pixel nearly the best estimate)."""
    spec = ImageSpec(npix=800, cell_arcsec=6.0, rms_jy=1e-3)
    srcs = random_sources(spec, 100, (0.005, 0.1), seed=2)
    truth = {s.name: s.flux_jy for s in srcs}
    z, err_over_rms = [], []
    for seed in range(3):
        path = synthetic_image(tmp_path / f"img{seed}.fits", srcs, spec, seed=seed)
        for m in forced_photometry(path, srcs):
            z.append((m.flux_jy - truth[m.name]) / m.flux_err_jy)
            err_over_rms.append(m.flux_err_jy / spec.rms_jy)
    assert len(z) == 300
    assert abs(np.mean(z)) < 0.2 and 0.85 < np.std(z) < 1.15, (np.mean(z), np.std(z))
    assert 0.95 < np.median(err_over_rms) < 1.2
    assert max(abs(v) for v in z) < 4.5


def test_off_image_and_blank_positions_are_left_out(tmp_path):
    spec = ImageSpec(npix=200)
    blank = np.zeros((200, 200), bool)
    blank[:, :50] = True
    path = synthetic_image(tmp_path / "img.fits", [], spec, seed=1, blank=blank)
    wcs = make_wcs(spec)
    pos = [CatalogSource(n, *map(float, wcs.pixel_to_world_values(x, 100)), 1.0)
           for n, x in (("on", 120), ("blank", 20), ("off", 260))]
    pos.append(CatalogSource("far side", (spec.ra0_deg + 180) % 360, -spec.dec0_deg, 1.0))
    assert [m.name for m in forced_photometry(path, pos)] == ["on"]
    assert [m.name for m in photometry_image(path, pos)] == ["on"]


def test_stage_reads_a_catalogue_and_uses_the_finders_noise(tmp_path):
    spec = ImageSpec(npix=300)
    srcs = random_sources(spec, 5, (0.02, 0.2), seed=3)
    path = synthetic_image(tmp_path / "img.fits", srcs, spec, seed=4)
    cat = write_nvss_catalog([CatalogSource(s.name, s.ra_deg, s.dec_deg, s.flux_jy) for s in srcs],
                             tmp_path / "ref.tsv")
    noise = detect(path, FindParams()).noise
    rows = photometry_image(path, cat, noise=noise, flux_cal_frac=0.03)
    assert sorted(r.name for r in rows) == sorted(s.name for s in srcs)
    for r, s in zip(sorted(rows, key=lambda r: r.name), sorted(srcs, key=lambda s: s.name)):
        assert r.rms_jy == pytest.approx(spec.rms_jy, rel=0.2)
        assert r.flux_err_jy > 0.03 * r.flux_jy
        assert abs(r.flux_jy - s.flux_jy) < 4 * r.flux_err_jy


def test_image_without_beam_refused(tmp_path):
    from astropy.io import fits

    path = synthetic_image(tmp_path / "nobeam.fits", [], ImageSpec(npix=64), seed=1)
    with fits.open(path, mode="update") as h:
        del h[0].header["BMAJ"]
    with pytest.raises(SourceFindingError, match="restoring beam"):
        forced_photometry(path, [])
