"""The imaging proof's scoring (`dsa110 validate imaging`) on synthetic images with known truth.

The full proof needs simulated full-size data and takes ~15 minutes; these
tests check that its yardstick measures what it says: bright-source flux
ratios, offsets in beams, completeness and false detections."""
from __future__ import annotations

import math

import pytest

from dsa110_contimg.catalog import CatalogSource
from dsa110_contimg.imaging.validate import _beam_fraction, passes, score
from dsa110_contimg.sources.synthetic import ImageSpec, TrueSource, random_sources, synthetic_image

SPEC = ImageSpec(npix=400, cell_arcsec=6.0, beam_arcsec=(30.0, 20.0, 30.0), rms_jy=1e-3)


def _truth(sources: list[TrueSource]) -> list[CatalogSource]:
    """The truth as a reference catalogue at the image frequency (flat spectrum)."""
    return [CatalogSource(name=s.name, ra_deg=s.ra_deg, dec_deg=s.dec_deg, flux_jy=s.flux_jy, spectral_index=0.0)
            for s in sources]


def test_beam_fraction_follows_the_beam_ellipse():
    # Beam 30" x 20" with PA 0 (major axis north-south).
    assert _beam_fraction(0.0, 3.0, 30.0, 20.0, 0.0) == pytest.approx(0.1)  # along the major axis
    assert _beam_fraction(2.0, 0.0, 30.0, 20.0, 0.0) == pytest.approx(0.1)  # along the minor axis
    assert _beam_fraction(3.0, 0.0, 30.0, 20.0, 90.0) == pytest.approx(0.1)  # PA 90: major axis east-west
    assert _beam_fraction(3.0, 4.0, 50.0, 50.0, 17.0) == pytest.approx(0.1)  # circular: any direction


def test_a_faithful_image_passes(tmp_path):
    sources = random_sources(SPEC, 25, (0.06, 1.0), seed=4)  # S/N 60 to 1000
    fits = synthetic_image(tmp_path / "good.pbcor.fits", sources, SPEC, seed=1)
    m = score(fits, _truth(sources))
    assert m["n_bright"] == 25 and m["n_matched"] == 25
    assert abs(m["median_flux_ratio"] - 1) < 0.01
    assert m["max_flux_err_pct"] < 5.0 and m["max_offset_beam_frac"] < 0.1
    assert m["completeness_10sigma"] == 1.0 and m["false_fraction"] == 0.0
    assert m["pass"] is True


def test_flux_scale_errors_spurious_and_missed_sources_fail(tmp_path):
    """Everything 10 % bright, one source the truth does not know, one true source absent."""
    sources = random_sources(SPEC, 20, (0.06, 1.0), seed=5)
    shown = [TrueSource(s.name, s.ra_deg, s.dec_deg, 1.1 * s.flux_jy) for s in sources[1:]]
    ghost = TrueSource("ghost", SPEC.ra0_deg, SPEC.dec0_deg + 0.2, 0.2)
    fits = synthetic_image(tmp_path / "bad.pbcor.fits", shown + [ghost], SPEC, seed=2)
    m = score(fits, _truth(sources))
    assert m["median_flux_ratio"] == pytest.approx(1.1, abs=0.01)
    assert m["false_fraction"] == pytest.approx(1 / 20)
    assert m["completeness_10sigma"] == pytest.approx(19 / 20)
    assert any(math.isclose(d["dec_deg"], SPEC.dec0_deg + 0.2, abs_tol=0.01) for d in m["false_detections"])
    assert m["pass"] is False and passes({**m, "median_flux_ratio": 1.0, "max_flux_err_pct": 1.0,
                                          "false_fraction": 0.0, "completeness_10sigma": 1.0})
