"""One set of imaging choices, two imagers; the beam fit and the cell rule (no CASA run)."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from dsa110_contimg.imaging import ImagingParams
from dsa110_contimg.imaging.backends import ImagerSetup, tclean_kwargs, wsclean_command
from dsa110_contimg.imaging.psf import ARCSEC_PER_RAD, fit_beam, predict_beam

SETUP = ImagerSetup(datacolumn="corrected", imsize=1200, cell_arcsec=10.7, weighting="briggs", robust=0.0,
                    niter=1000, gain=0.1, mgain=0.8, threshold_jy=None, nsigma=3.0,
                    restoring_beam=(162.9, 53.5, -89.8))


def _options(cmd: list[str]) -> dict[str, list[str]]:
    """WSClean's command line as {option: [values]} (values up to the next option)."""
    out: dict[str, list[str]] = {}
    key = None
    for tok in cmd[1:-1]:
        if tok.startswith("-") and not tok[1:2].isdigit():
            key = tok
            out[key] = []
        else:
            out[key].append(tok)
    return out


def test_both_backends_receive_the_same_choices():
    tc = tclean_kwargs(SETUP, Path("/d/x.ms"), Path("/w/x"))
    ws = _options(wsclean_command(SETUP, "wsclean", Path("/d/x.ms"), Path("/w/x"), threads=2))
    assert tc["deconvolver"] == "hogbom"
    assert not any("multiscale" in k for k in ws)  # WSClean's deconvolver is Hogbom unless multiscale
    assert tc["specmode"] == "mfs" and tc["nterms"] == 1 and "-channels-out" not in ws
    assert tc["stokes"] == "I" and ws["-pol"] == ["I"]
    assert tc["imsize"] == [1200, 1200] and ws["-size"] == ["1200", "1200"]
    assert tc["cell"] == "10.7arcsec" and ws["-scale"] == ["10.7asec"]
    assert (tc["weighting"], tc["robust"]) == ("briggs", 0.0) and ws["-weight"] == ["briggs", "0.0"]
    assert tc["niter"] == 1000 and ws["-niter"] == ["1000"]
    assert tc["gain"] == 0.1 and ws["-gain"] == ["0.1"]
    # automatic threshold: 3 x the residual's robust rms in both
    assert (tc["threshold"], tc["nsigma"]) == ("0Jy", 3.0) and ws["-auto-threshold"] == ["3.0"]
    assert "-threshold" not in ws
    assert tc["restoringbeam"] == ["162.9arcsec", "53.5arcsec", "-89.8deg"]
    assert ws["-beam-shape"] == ["162.9asec", "53.5asec", "-89.8deg"]
    assert tc["datacolumn"] == "corrected" and ws["-data-column"] == ["CORRECTED_DATA"]
    assert tc["gridder"] == "wproject" and tc["wprojplanes"] == -1 and "-use-wgridder" in ws
    assert tc["pbcor"] is False and tc["pblimit"] < 0  # the primary beam is ours
    assert ws["-wgridder-accuracy"] == ["0.001"]  # ImagingParams' default for a whole field (bench/gridding_accuracy.py)


def test_wgridder_accuracy_reaches_wsclean_and_is_checked():
    s = ImagerSetup(**{**SETUP.to_dict(), "wgridder_accuracy": 1e-4})
    assert _options(wsclean_command(s, "wsclean", Path("x.ms"), Path("x"), threads=1))["-wgridder-accuracy"] == ["0.0001"]
    # automatic: 1e-3 for a whole field, 1e-2 once the bright sources are subtracted (ImagingParams)
    assert ImagingParams().wgridder_accuracy is None
    assert ImagingParams().resolved_accuracy(bright_subtracted=False) == 1e-3
    assert ImagingParams().resolved_accuracy(bright_subtracted=True) == 1e-2
    given = ImagingParams.from_dict({"wgridder_accuracy": "1e-4"})
    assert given.wgridder_accuracy == 1e-4 and given.resolved_accuracy(bright_subtracted=True) == 1e-4
    with pytest.raises(ValueError, match="wgridder_accuracy"):
        ImagingParams(wgridder_accuracy=0.5)


def test_absolute_threshold_and_natural_weighting():
    s = ImagerSetup(**{**SETUP.to_dict(), "threshold_jy": 0.002, "weighting": "natural"})
    tc = tclean_kwargs(s, Path("x.ms"), Path("x"))
    ws = _options(wsclean_command(s, "wsclean", Path("x.ms"), Path("x"), threads=1))
    assert (tc["threshold"], tc["nsigma"]) == ("0.002Jy", 0.0)
    assert ws["-threshold"] == ["0.002"] and "-auto-threshold" not in ws
    assert tc["weighting"] == "natural" and ws["-weight"] == ["natural"]


def _gaussian_psf(n: int, cell: float, bmaj: float, bmin: float, bpa_deg: float) -> np.ndarray:
    """Elliptical Gaussian (FWHMs in arcsec, PA east of north) on a north-up, east-left grid."""
    yy, xx = np.mgrid[0:n, 0:n] - n // 2
    east, north = -xx * cell, yy * cell
    pa = math.radians(bpa_deg)
    a = east * math.sin(pa) + north * math.cos(pa)  # along the major axis
    b = east * math.cos(pa) - north * math.sin(pa)
    k = 4 * math.log(2)
    return np.exp(-k * (a**2 / bmaj**2 + b**2 / bmin**2))


@pytest.mark.parametrize("bpa", [0.0, 30.0, -60.0, 90.0])
def test_fit_beam_recovers_a_gaussian_on_a_plateau(bpa):
    """The half-power fit ignores a 0.4 plateau around the lobe (as DSA-110's
    E-W arm puts around the full array's PSF), which a 0.35 cut would swallow."""
    psf = _gaussian_psf(129, 2.0, 40.0, 20.0, bpa)
    psf = np.maximum(psf, 0.4 * (psf > 0.01))
    bmaj, bmin, pa = fit_beam(psf, 2.0)
    assert bmaj == pytest.approx(40.0, rel=0.03) and bmin == pytest.approx(20.0, rel=0.03)
    assert ((pa - bpa + 90) % 180) - 90 == pytest.approx(0.0, abs=1.0)


def test_predicted_beam_of_a_gaussian_uv_distribution():
    """Natural weighting of Gaussian-distributed uv samples (sigma_u, sigma_v)
    gives a Gaussian PSF with sigma_l = 1 / (2 pi sigma_u): FWHM known exactly."""
    rng = np.random.default_rng(3)
    freq = np.array([1.4e9])
    lam = 299792458.0 / freq[0]
    su, sv = 1000.0, 500.0  # wavelengths
    uvw = np.stack([rng.normal(0, su, 200_000) * lam, rng.normal(0, sv, 200_000) * lam, np.zeros(200_000)])
    fwhm = lambda s: 2 * math.sqrt(2 * math.log(2)) / (2 * math.pi * s) * ARCSEC_PER_RAD
    bmaj, bmin, bpa = predict_beam(uvw, freq, 3.5, "natural", 0.0)
    assert bmaj == pytest.approx(fwhm(sv), rel=0.03)  # short v spacings: the beam is long north-south
    assert bmin == pytest.approx(fwhm(su), rel=0.03)
    assert abs(bpa) < 2.0


def _info(max_uv_m: float, uvw: np.ndarray | None = None):
    from dsa110_contimg.imaging.msinfo import MsInfo

    return MsInfo(path=Path("/d/x.ms"), nrows=10, times_mjd=np.array([61055.0, 61055.001]),
                  freqs_hz=np.linspace(1.3125e9, 1.4975e9, 16), phase_ra_rad=2.6, phase_dec_rad=0.96,
                  pointing_dec_rad=0.96, pointing_dec_from_keyword=True, max_uv_m=max_uv_m,
                  has_corrected=True, uvw_m=uvw, interval_s=12.884902)


def test_cell_rule_five_pixels_across_the_minor_axis_capped_by_nyquist():
    from dsa110_contimg.imaging.image import choose_cell_and_size

    params = ImagingParams()
    cell, size = choose_cell_and_size(_info(437.0), params, (162.9, 53.5, -89.8))
    assert cell == 10.7 and size == 1200  # 53.5 / 5 rounded down; 3.5 deg / 10.7" = 1178 -> 1200
    # a broad beam on long baselines: the cell stays below 0.4 lambda_min / B_max
    cell, _ = choose_cell_and_size(_info(2000.0), params, (300.0, 200.0, 0.0))
    nyquist = 299792458.0 / 1.4975e9 / 2000.0 * ARCSEC_PER_RAD
    assert cell <= 0.4 * nyquist + 1e-9 and cell == pytest.approx(0.4 * nyquist, abs=0.1)
    cell, size = choose_cell_and_size(_info(437.0), ImagingParams(cell_arcsec=12.0, imsize=256), (1, 1, 0))
    assert (cell, size) == (12.0, 256)


def test_params_round_trip_and_reject_unknown():
    p = ImagingParams.from_dict({"backend": "tclean", "pixels_per_beam": "4", "robust": -0.5, "imsize": None})
    assert p.pixels_per_beam == 4.0 and p.robust == -0.5 and p.imsize is None
    assert ImagingParams.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="unknown imaging parameters"):
        ImagingParams.from_dict({"oversample": 8})


def test_product_header_is_complete_and_valid_fits(tmp_path):
    from astropy.wcs import WCS
    from dsa110_contimg.imaging.headers import REQUIRED_KEYS, pb_header, pbcor_header, product_header

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [150.0, 55.0]
    w.wcs.cdelt = [-10.7 / 3600, 10.7 / 3600]
    cel = w.to_header()
    cel["BMAJ"], cel["BMIN"], cel["BPA"] = 162.9 / 3600, 53.5 / 3600, -89.8
    h = product_header(cel, _info(437.0), SETUP, backend="wsclean", params=ImagingParams(), name="g",
                       freq_hz=1.405e9, flagged_fraction=0.125, psf_beam=(163.0, 53.3, -89.8))
    for header in (h, pb_header(h, 0.2), pbcor_header(h, 0.2)):
        assert [k for k in REQUIRED_KEYS if k not in header] == []
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. a card too long for 80 characters
            fits.PrimaryHDU(np.zeros((4, 4), np.float32), header).writeto(tmp_path / "h.fits", overwrite=True)
    assert h["TELESCOP"] == "DSA-110" and h["BUNIT"] == "JY/BEAM" and h["IMAGER"] == "wsclean"
    assert h["ROBUST"] == 0.0 and h["NITER"] == 1000 and h["CELL"] == 10.7 and h["DECONV"] == "hogbom"
    assert h["FLAGFRAC"] == 0.125 and h["BANDWID"] == pytest.approx(1.85e8 + 1.85e8 / 15)
    assert h["MJD-OBS"] == pytest.approx(61055.0 - 12.884902 / 2 / 86400)
    assert h["DATE-OBS"].startswith("2026-01-14T23:59:53.5")  # MJD 61055.0 less half an integration
    assert pb_header(h, 0.2)["BUNIT"] == "" and pbcor_header(h, 0.2)["PBCOR"] is True
