"""Bright-source subtraction: the model, the fit, the choice of sources and their restoration
(synthetic visibilities made by our own model; the real MS is tested in test_image_casa.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.wcs import WCS
from dsa110_contimg.catalog import CatalogSource
from dsa110_contimg.imaging import ImagingParams
from dsa110_contimg.imaging import subtract as sub

RA0, DEC0 = 134.5, 55.7
NT, NCHAN = 6, 96


def _geometry(nbl: int = 600, seed: int = 1) -> sub.VisGeometry:
    """uvw of random baselines up to ~1.5 km, rows sorted by time, a 96-channel band."""
    rng = np.random.default_rng(seed)
    uvw = np.concatenate([rng.normal(0, 500, (nbl, 3)) * [1, 1, 0.3]] * NT)
    tidx = np.repeat(np.arange(NT), nbl)
    times = 61055.38 + np.arange(NT) * 50.0 / 86400
    freqs = np.linspace(1.4987e9, 1.3114e9, NCHAN)
    return sub.VisGeometry(uvw, tidx, times, freqs, math.radians(RA0), math.radians(DEC0), math.radians(55.6))


def _sky(geo, sources, noise_jy: float = 0.0, seed: int = 2) -> np.ndarray:
    frames = geo.frames()
    vis = np.zeros((geo.freqs_hz.size, geo.time_index.size), np.complex64)
    for s in sources:
        vis += sub.model_visibilities(geo, sub.source_terms(geo, frames, s.ra_deg, s.dec_deg), s)
    if noise_jy:
        rng = np.random.default_rng(seed)
        vis += (noise_jy * (rng.standard_normal(vis.shape) + 1j * rng.standard_normal(vis.shape))).astype(np.complex64)
    return vis


def test_time_blocks_need_rows_sorted_by_time():
    assert sub.time_blocks(np.array([0, 0, 1, 1, 1, 3])) == [(0, slice(0, 2)), (1, slice(2, 5)), (3, slice(5, 6))]
    with pytest.raises(ValueError, match="sorted by time"):
        sub.time_blocks(np.array([0, 1, 0]))


def test_phasor_recurrence_matches_exact_exponentials():
    geo = _geometry(nbl=50)
    path = np.random.default_rng(3).normal(0, 30.0, 300)  # metres: thousands of turns at 1.4 GHz
    out = sub.phasor_into(geo, path, np.empty((NCHAN, path.size), np.complex64))
    exact = np.exp(1j * geo.phase_sign * 2 * math.pi / 299792458.0 * np.outer(geo.freqs_hz, path))
    assert np.max(np.abs(out - exact)) < 2e-5


def test_drift_beam_makes_an_off_axis_source_vary_in_time():
    """The reason for all this: 1.4 deg east the apparent flux changes by tens of percent in minutes."""
    geo = _geometry(nbl=10)
    src = sub.BrightSource("x", RA0 + 1.4 / math.cos(math.radians(DEC0)), DEC0, 1.0, -0.7)
    app = sub.apparent_flux(geo, sub.source_terms(geo, geo.frames(), src.ra_deg, src.dec_deg), src)
    assert app.shape == (NT, NCHAN)
    assert app[:, NCHAN // 2].max() / app[:, NCHAN // 2].min() > 1.05  # ~4 minutes of drift
    assert app[0, -1] > app[0, 0]  # the beam is wider at the low-frequency end (channels descend)


def test_fit_recovers_flux_alpha_and_position_from_an_offset_start():
    geo = _geometry()
    truth = [sub.BrightSource("a", RA0 + 0.5, DEC0 + 0.3, 0.8, -0.9),
             sub.BrightSource("b", RA0 - 0.8, DEC0 - 0.2, 0.3, -0.5)]
    vis = _sky(geo, truth, noise_jy=0.05)
    start = [sub.BrightSource(t.name, t.ra_deg + 4.0 / 3600, t.dec_deg - 3.0 / 3600, t.flux_jy * 1.2, -0.7)
             for t in truth]
    good = np.ones((2, vis.shape[1]), bool)
    resid, fitted = sub.fit_and_subtract(geo, vis, good, start, nblock=2, fit_alpha_min_jy=0.1)
    for f, t in zip(fitted, truth):
        off = math.hypot((f.source.ra_deg - t.ra_deg) * math.cos(math.radians(t.dec_deg)), f.source.dec_deg - t.dec_deg)
        assert off * 3600 < 0.3, (f.source.name, off * 3600)
        assert f.source.flux_jy == pytest.approx(t.flux_jy, rel=0.01)
        assert f.start is start[fitted.index(f)]
    assert fitted[0].source.spectral_index == pytest.approx(-0.9, abs=0.1)
    # what is left is the noise: 0.05 Jy per component, sqrt(2) x for the complex rms
    assert np.std(resid) == pytest.approx(0.05 * math.sqrt(2), rel=0.03)
    assert np.std(vis) > 3 * np.std(resid)


def test_faint_sources_keep_their_spectral_index_and_fixed_ones_are_not_fitted():
    geo = _geometry()
    bright = sub.BrightSource("a", RA0 + 0.2, DEC0, 0.5, -0.7)
    faint = sub.BrightSource("f", RA0 - 0.3, DEC0 + 0.2, 0.05, -0.7)
    outside = sub.BrightSource("o", RA0 + 3.0, DEC0 - 2.0, 0.4, -0.7)
    vis = _sky(geo, [bright, faint, outside])
    good = np.ones((2, vis.shape[1]), bool)
    resid, fitted = sub.fit_and_subtract(geo, vis, good, [bright, faint], [outside], nblock=2, fit_alpha_min_jy=0.1)
    assert [f.source.name for f in fitted] == ["a", "f"]
    assert fitted[1].source.spectral_index == -0.7  # apparent < 0.1 Jy: not fitted
    assert np.abs(resid).max() < 1e-3 * np.abs(vis).max()  # noise-free: all three gone


def test_flagged_blocks_do_not_pull_the_fit():
    geo = _geometry()
    src = sub.BrightSource("a", RA0 + 0.2, DEC0 + 0.1, 0.5, -0.7)
    vis = _sky(geo, [src])
    vis[:48, :400] += 50.0  # RFI in the first block of 400 rows
    good = np.ones((2, vis.shape[1]), bool)
    good[0, :400] = False
    _, fitted = sub.fit_and_subtract(geo, vis, good, [sub.BrightSource("a", src.ra_deg, src.dec_deg, 0.4, -0.7)], nblock=2)
    assert fitted[0].source.flux_jy == pytest.approx(0.5, rel=1e-3)


def _cat(name, ra, dec, flux, alpha=None):
    return CatalogSource(name=name, ra_deg=ra, dec_deg=dec, flux_jy=flux, spectral_index=alpha)


def test_plan_fits_bright_sources_and_subtracts_faint_ones_only_outside_the_image():
    geo = _geometry(nbl=20)
    cat = [
        _cat("bright_in", RA0 + 0.2, DEC0, 1.0),
        _cat("faint_in", RA0 - 0.3, DEC0 + 0.3, 0.008),  # CLEAN models it in the image
        _cat("faint_out", RA0, DEC0 - 2.1, 0.05),  # beyond the 1.75 deg half-width, PB ~0.15
        _cat("too_faint_out", RA0, DEC0 + 2.2, 0.004),
        _cat("far", RA0 + 40, DEC0, 10.0),  # beyond the radius
    ]
    fit, fixed = sub.plan_sources(geo, cat, 1.75, 0.02, 0.002, 6.0)
    assert [s.name for s in fit] == ["bright_in"]
    assert [s.name for s in fixed] == ["faint_out"]
    assert fit[0].spectral_index == -0.7  # NVSS has none: the default


def test_restore_puts_the_fitted_flux_into_the_pb_corrected_image():
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [RA0, DEC0]
    w.wcs.crpix = [101, 101]
    w.wcs.cdelt = [-6.0 / 3600, 6.0 / 3600]
    image = np.zeros((200, 200), np.float32)
    pb = np.full((200, 200), 0.5)
    src = sub.BrightSource("a", RA0 + 0.05, DEC0 + 0.02, 0.2, -0.7)
    fitted = [sub.FittedSource(src, src, 0.1, 1),
              sub.FittedSource(sub.BrightSource("off", RA0 + 5, DEC0, 1.0), src, 0.1, 1)]
    n = sub.restore_sources(image, w, (36.0, 30.0, 45.0), pb, fitted, 1.4e9)
    assert n == 1  # the second is off the image
    y, x = np.unravel_index(np.argmax(image), image.shape)
    ra, dec = w.pixel_to_world_values(x, y)
    assert abs((ra - src.ra_deg) * math.cos(math.radians(DEC0)) * 3600) < 3.5
    assert abs((dec - src.dec_deg) * 3600) < 3.5
    assert image.max() / 0.5 == pytest.approx(0.2, rel=0.03)  # peak / pb = the flux (pixel sampling)
    # the area under the Gaussian is the flux in beams: sum * pixel area / beam area
    beam_area = math.pi * 36.0 * 30.0 / (4 * math.log(2))
    assert image.sum() * 36.0 / beam_area / 0.5 == pytest.approx(0.2, rel=0.01)


def test_params_switch_and_thresholds():
    assert ImagingParams().subtract_bright is True
    assert ImagingParams.from_dict({"subtract_bright": "false"}).subtract_bright is False
    with pytest.raises(ValueError, match="subtract_min_apparent_jy"):
        ImagingParams(subtract_min_apparent_jy=0)


@pytest.mark.parametrize("nchan, blocks", [(768, 4), (96, 4), (16, 4), (3, 3), (1, 1), (1536, 8), (10, 5)])
def test_fit_blocks(nchan, blocks):
    assert sub.fit_blocks(nchan) == blocks
