"""Variability metrics V and eta: hand values, statistics, and light curves
measured by forced photometry across synthetic mosaics and kept in the registry."""
from __future__ import annotations

import math

import numpy as np
import pytest
from dsa110_contimg.registry import Registry
from dsa110_contimg.sources.photometry import forced_photometry
from dsa110_contimg.sources.synthetic import ImageSpec, TrueSource, make_wcs, synthetic_image
from dsa110_contimg.sources.variability import variability


def test_hand_computed_values():
    rows = [{"flux_jy": s, "flux_err_jy": e} for s, e in ((1.0, 0.1), (1.2, 0.1), (0.8, 0.2), (1.0, 0.1))]
    v = variability(rows)
    # mean 1.0; sample variance (0 + 0.04 + 0.04 + 0) / 3 = 0.0266667 -> V = 0.163299
    assert v["n"] == 4
    assert v["V"] == pytest.approx(0.163299, rel=1e-5)
    assert v["mean_flux_jy"] == pytest.approx(1.0)
    # w = 100, 100, 25, 100; weighted mean 340 / 325 = 1.046154
    # eta = (100*0.046154^2 + 100*0.153846^2 + 25*0.246154^2 + 100*0.046154^2) / 3
    #     = (0.213018 + 2.366864 + 1.514793 + 0.213018) / 3 = 1.435897
    assert v["weighted_mean_flux_jy"] == pytest.approx(1.046154, rel=1e-6)
    assert v["eta"] == pytest.approx(1.435897, rel=1e-5)


def test_too_short_or_missing_errors():
    assert variability([]) == {"n": 0, "V": None, "eta": None, "mean_flux_jy": None, "weighted_mean_flux_jy": None}
    one = variability([{"flux_jy": 1.0, "flux_err_jy": 0.1}])
    assert one["n"] == 1 and one["V"] is None and one["eta"] is None and one["weighted_mean_flux_jy"] == 1.0
    v = variability([{"flux_jy": 1.0, "flux_err_jy": None}, {"flux_jy": 2.0, "flux_err_jy": 0.1},
                     {"flux_jy": float("nan"), "flux_err_jy": 0.1}])
    assert v["n"] == 2 and v["eta"] is None and v["V"] == pytest.approx(math.sqrt(0.5) / 1.5)


def test_constant_sources_with_right_errors_have_eta_one():
    rng = np.random.default_rng(7)
    etas = []
    for _ in range(4000):
        err = rng.uniform(0.05, 0.2, 8)
        flux = 1.0 + rng.normal(0.0, err)
        etas.append(variability([{"flux_jy": s, "flux_err_jy": e} for s, e in zip(flux, err)])["eta"])
    # eta is chi^2 with N-1 = 7 degrees of freedom over 7: mean 1, sd sqrt(2/7)/sqrt(4000) = 0.008
    assert np.mean(etas) == pytest.approx(1.0, abs=0.03)


def test_light_curves_across_mosaics(tmp_path):
    """Six epochs of a synthetic mosaic: one steady 50 mJy source, one that
    doubles halfway. Forced photometry per epoch -> registry -> light curve
    -> V and eta: the steady one looks steady, the other varies."""
    spec = ImageSpec(npix=256, rms_jy=1e-3)
    wcs = make_wcs(spec)
    steady_pos = tuple(map(float, wcs.pixel_to_world_values(80, 120)))
    var_pos = tuple(map(float, wcs.pixel_to_world_values(180, 140)))
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    reg.migrate()
    for epoch in range(6):
        var_flux = 0.05 if epoch < 3 else 0.10
        srcs = [TrueSource("STEADY", *steady_pos, 0.05), TrueSource("VAR", *var_pos, var_flux)]
        path = synthetic_image(tmp_path / f"w{epoch}.fits", srcs, spec, seed=100 + epoch)
        pid = reg.register_product("mosaic", f"w{epoch}", str(path), mid_mjd=61000.0 + epoch / 24)
        reg.record_photometry(pid, forced_photometry(path, srcs))
    steady, varying = reg.light_curve("STEADY"), reg.light_curve("VAR")
    assert [r["mid_mjd"] for r in steady] == pytest.approx([61000.0 + e / 24 for e in range(6)])
    vs, vv = variability(steady), variability(varying)
    assert vs["n"] == vv["n"] == 6
    assert vs["eta"] < 4.0 and vs["V"] < 0.06  # S/N 50: rms/flux 2 %
    assert vv["eta"] > 100 and vv["V"] == pytest.approx(np.std([0.05] * 3 + [0.1] * 3, ddof=1) / 0.075, rel=0.1)
    assert set(reg.light_curves()) == {"STEADY", "VAR"}
    reg.engine.dispose()
