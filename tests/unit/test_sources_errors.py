"""Condon (1997) errors against values worked by hand."""
from __future__ import annotations

import math

import pytest
from dsa110_contimg.sources.errors import condon_errors, rho_squared, sky_position_errors

FWHM_PER_SIGMA = 2.3548200  # sqrt(8 ln 2)


def test_resolved_source_in_a_circular_beam_matches_hand_values():
    # theta_M = 30", theta_m = 24", theta_N = 20" (circular), A = 10 mJy, sigma = 1 mJy, PA 40 deg.
    # prefactor theta_M theta_m / (4 theta_N^2) = 720 / 1600 = 0.45; 1 + 400/900 = 1.444444; 1 + 400/576 = 1.694444
    #   rho^2(A)   = 0.45 * 1.444444^1.5 * 1.694444^1.5 * 100 = 0.45 * 1.736006 * 2.205672 * 100 = 172.3077
    #   rho^2(maj) = 0.45 * 1.444444^2.5 * 1.694444^0.5 * 100 = 0.45 * 2.507564 * 1.301708 * 100 = 146.8852
    #   rho^2(min) = 0.45 * 1.444444^0.5 * 1.694444^2.5 * 100 = 0.45 * 1.201850 * 3.737388 * 100 = 202.1301
    assert rho_squared(10.0, 30.0, 24.0, 20.0, 20.0, (1.5, 1.5)) == pytest.approx(172.3077, rel=1e-5)
    assert rho_squared(10.0, 30.0, 24.0, 20.0, 20.0, (2.5, 0.5)) == pytest.approx(146.8852, rel=1e-5)
    assert rho_squared(10.0, 30.0, 24.0, 20.0, 20.0, (0.5, 2.5)) == pytest.approx(202.1301, rel=1e-5)
    e = condon_errors(0.010, 0.001, 30.0, 24.0, 40.0, 20.0, 20.0)
    # sigma_A = A sqrt(2/172.3077) = 10 mJy * 0.107737
    assert e.peak == pytest.approx(1.07737e-3, rel=1e-4)
    # S = A 30*24/400 = 18 mJy; (sigma_S/S)^2 = 2/172.3077 + (400/720)(2/146.8852 + 2/202.1301)
    #   = 0.0116073 + 0.555556 * (0.0136161 + 0.0098946) = 0.0246688 -> sigma_S = 18 * 0.157063
    assert e.flux == pytest.approx(2.82713e-3, rel=1e-4)
    # along the axes: sqrt(2/rho^2) * theta / sqrt(8 ln 2)
    assert e.along_major == pytest.approx(0.116689 * 30.0 / FWHM_PER_SIGMA, rel=1e-4)  # 1.48661"
    assert e.along_minor == pytest.approx(0.0994715 * 24.0 / FWHM_PER_SIGMA, rel=1e-4)  # 1.01380"
    assert e.major == pytest.approx(0.116689 * 30.0, rel=1e-4)
    assert e.minor == pytest.approx(0.0994715 * 24.0, rel=1e-4)
    # PA: sqrt(2/rho^2(min)) * 2*30*24/(900-576) rad = 0.0994715 * 4.444444 = 0.442096 rad
    assert e.pa_deg == pytest.approx(math.degrees(0.442096), rel=1e-4)  # 25.330 deg
    # on the sky at PA 40: sin^2 = 0.413176, cos^2 = 0.586824
    #   RA^2  = 1.48661^2 * 0.413176 + 1.01380^2 * 0.586824 = 1.516253
    #   Dec^2 = 1.48661^2 * 0.586824 + 1.01380^2 * 0.413176 = 1.721544
    assert e.ra == pytest.approx(math.sqrt(1.516253), rel=1e-4)
    assert e.dec == pytest.approx(math.sqrt(1.721544), rel=1e-4)


@pytest.mark.parametrize("beam", [(20.0, 20.0), (45.0, 15.0)])
def test_unresolved_source_textbook_limits(beam):
    # theta_M = b_maj, theta_m = b_min: rho^2 = 2 (A/sigma)^2 for every parameter, so
    # sigma_A = sigma, sigma_S = sqrt(3) sigma, sigma_x0 = (theta/sqrt(8 ln 2)) / SNR.
    bmaj, bmin = beam
    snr = 50.0
    e = condon_errors(0.05, 0.001, bmaj, bmin, 0.0, bmaj, bmin)
    assert e.peak == pytest.approx(0.001, rel=1e-12)
    assert e.flux == pytest.approx(math.sqrt(3.0) * 0.001, rel=1e-12)
    assert e.along_major == pytest.approx(bmaj / FWHM_PER_SIGMA / snr, rel=1e-6)
    assert e.along_minor == pytest.approx(bmin / FWHM_PER_SIGMA / snr, rel=1e-6)
    assert e.major == pytest.approx(bmaj / snr, rel=1e-12)
    # PA 0: the major axis points north, so Dec carries the major-axis error
    assert (e.ra, e.dec) == pytest.approx((e.along_minor, e.along_major), rel=1e-12)


def test_round_source_has_no_position_angle():
    assert condon_errors(0.05, 0.001, 20.0, 20.0, 0.0, 20.0, 20.0).pa_deg == 90.0


def test_calibration_terms_add_in_quadrature():
    bare = condon_errors(0.05, 0.001, 20.0, 20.0, 0.0, 20.0, 20.0)
    cal = condon_errors(0.05, 0.001, 20.0, 20.0, 0.0, 20.0, 20.0, flux_cal_frac=0.03, position_cal=0.5)
    assert cal.peak == pytest.approx(math.hypot(0.001, 0.03 * 0.05))
    assert cal.flux == pytest.approx(0.05 * math.hypot(math.sqrt(3.0) / 50.0, 0.03))
    assert cal.ra == pytest.approx(math.hypot(bare.ra, 0.5))
    assert cal.dec == pytest.approx(math.hypot(bare.dec, 0.5))
    # a given integrated flux scales the relative error
    assert condon_errors(0.05, 0.001, 20.0, 20.0, 0.0, 20.0, 20.0, flux_jy=0.1).flux == pytest.approx(
        0.1 * math.sqrt(3.0) / 50.0)


def test_sky_position_errors_rotate_with_pa():
    assert sky_position_errors(2.0, 1.0, 0.0) == pytest.approx((1.0, 2.0))
    assert sky_position_errors(2.0, 1.0, 90.0) == pytest.approx((2.0, 1.0))
    ra, dec = sky_position_errors(2.0, 1.0, 45.0)
    assert ra == pytest.approx(math.sqrt(2.5)) and dec == pytest.approx(math.sqrt(2.5))


@pytest.mark.parametrize("args", [(0.0, 0.001), (0.01, 0.0), (-0.01, 0.001)])
def test_nonsense_inputs_refused(args):
    with pytest.raises(ValueError):
        condon_errors(*args, 20.0, 20.0, 0.0, 20.0, 20.0)
