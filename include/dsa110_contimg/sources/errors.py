"""Errors of elliptical Gaussian fits, after Condon (1997, PASP 109, 166).

Condon gives, for a Gaussian of peak A and FWHM axes theta_M >= theta_m fitted
to an image of rms sigma whose noise is correlated on a Gaussian of FWHM
theta_N, one effective signal-to-noise per parameter (his eq. 41)::

    rho^2 = (theta_M theta_m / (4 theta_N^2))
            * (1 + theta_N^2/theta_M^2)^a_M * (1 + theta_N^2/theta_m^2)^a_m
            * A^2 / sigma^2

with (a_M, a_m) = (3/2, 3/2) for the amplitude, (5/2, 1/2) for the position
along the major axis and theta_M, (1/2, 5/2) for the position along the
minor axis, theta_m and the position angle. Then (his eq. 21)::

    var(A)/A^2 = var(theta_M)/theta_M^2 = var(theta_m)/theta_m^2 = 2/rho^2
    var(x0) = 2 s_M^2/rho^2,  var(y0) = 2 s_m^2/rho^2   (s = FWHM/sqrt(8 ln 2))
    var(phi) = (2/rho^2) (2 theta_M theta_m / (theta_M^2 - theta_m^2))^2

and for the integrated flux S = A theta_M theta_m / theta_N^2 (eq. 42)::

    var(S)/S^2 = var(A)/A^2 + theta_N^2/(theta_M theta_m)
                 * (var(theta_M)/theta_M^2 + var(theta_m)/theta_m^2)

Radio synthesis images have noise correlated on the restoring beam, so
theta_N is the beam. Condon writes it circular; for an elliptical beam we
pair the beam's major axis with the source's major axis and minor with minor
(theta_N^2 -> b_maj b_min in the prefactor and in eq. 42), which is exact for
a circular beam and, for an unresolved source (theta_M = b_maj, theta_m =
b_min), gives the textbook results var(A) = sigma^2 and var(S) = 3 sigma^2.

A fractional flux-scale (calibration) error is added in quadrature to the
peak and integrated fluxes, and a systematic position error to RA and Dec,
because the fit errors alone describe only the thermal noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

FWHM_PER_SIGMA = math.sqrt(8.0 * math.log(2.0))

AMPLITUDE = (1.5, 1.5)
MAJOR = (2.5, 0.5)  # position along the major axis and theta_M
MINOR = (0.5, 2.5)  # position along the minor axis, theta_m and the PA


@dataclass(frozen=True)
class GaussianErrors:
    """1-sigma errors of one fitted Gaussian.

    Angles in the unit the axes were given in (arcsec in this package);
    ``ra`` is the error along the RA direction on the sky (already x cos dec),
    ``dec`` along Dec."""

    peak: float  # Jy/beam, with the flux-scale term
    flux: float  # Jy (integrated), with the flux-scale term
    major: float  # FWHM of the fitted major axis
    minor: float
    pa_deg: float  # capped at 90: a round source has no position angle
    along_major: float  # position, along the fitted major axis
    along_minor: float
    ra: float  # with the systematic position term
    dec: float


def rho_squared(snr: float, major: float, minor: float, noise_major: float, noise_minor: float,
                exponents: tuple[float, float]) -> float:
    """Condon's effective (S/N)^2 for one parameter; ``snr`` = peak / rms.

    ``noise_major``/``noise_minor`` are the FWHM axes of the noise correlation
    (the restoring beam); equal values give Condon's eq. 41 exactly."""
    a_major, a_minor = exponents
    return (major * minor / (4.0 * noise_major * noise_minor)
            * (1.0 + (noise_major / major) ** 2) ** a_major
            * (1.0 + (noise_minor / minor) ** 2) ** a_minor
            * snr ** 2)


def sky_position_errors(along_major: float, along_minor: float, pa_deg: float) -> tuple[float, float]:
    """(RA, Dec) errors of a position known to ``along_major``/``along_minor``
    on axes at position angle ``pa_deg`` (north through east): Condon eq. 45
    without the calibration terms."""
    t = math.radians(pa_deg)
    s2, c2 = math.sin(t) ** 2, math.cos(t) ** 2
    ra = math.sqrt(along_major ** 2 * s2 + along_minor ** 2 * c2)
    dec = math.sqrt(along_major ** 2 * c2 + along_minor ** 2 * s2)
    return ra, dec


def _relative_errors(snr: float, major: float, minor: float, beam_major: float,
                     beam_minor: float) -> tuple[float, float, float]:
    """sqrt(2/rho^2) for the amplitude, the major-axis and the minor-axis parameters."""
    rel = []
    for exponents in (AMPLITUDE, MAJOR, MINOR):
        rho2 = rho_squared(snr, major, minor, beam_major, beam_minor, exponents)
        rel.append(math.sqrt(2.0 / rho2) if rho2 > 0 else math.inf)
    return rel[0], rel[1], rel[2]


def _pa_error_deg(rel_minor: float, major: float, minor: float) -> float:
    if major <= minor:
        return 90.0
    rad = rel_minor * 2.0 * major * minor / (major ** 2 - minor ** 2)
    return min(90.0, math.degrees(rad))


def condon_errors(peak_jy: float, rms_jy: float, major: float, minor: float, pa_deg: float,
                  beam_major: float, beam_minor: float, *, flux_jy: float | None = None,
                  flux_cal_frac: float = 0.0, position_cal: float = 0.0) -> GaussianErrors:
    """Errors of a Gaussian of peak ``peak_jy`` (Jy/beam) and fitted FWHM axes
    ``major``/``minor`` (convolved sizes, the unit of the beam axes) in an
    image of local rms ``rms_jy``.

    The integrated flux error is relative to ``flux_jy``, by default S = peak
    x major x minor / (beam_major x beam_minor). ``flux_cal_frac`` (e.g. 0.03) and ``position_cal`` (same unit
    as the axes) are added in quadrature."""
    if rms_jy <= 0 or peak_jy <= 0 or min(major, minor, beam_major, beam_minor) <= 0:
        raise ValueError(f"Condon errors need positive peak, rms and axes (peak {peak_jy}, rms {rms_jy}, "
                         f"axes {major}x{minor}, beam {beam_major}x{beam_minor})")
    major, minor = max(major, minor), min(major, minor)
    rel_a, rel_major, rel_minor = _relative_errors(peak_jy / rms_jy, major, minor, beam_major, beam_minor)
    flux = peak_jy * major * minor / (beam_major * beam_minor) if flux_jy is None else flux_jy
    rel_flux2 = rel_a ** 2 + beam_major * beam_minor / (major * minor) * (rel_major ** 2 + rel_minor ** 2)
    along_major = rel_major * major / FWHM_PER_SIGMA
    along_minor = rel_minor * minor / FWHM_PER_SIGMA
    ra, dec = sky_position_errors(along_major, along_minor, pa_deg)
    return GaussianErrors(
        peak=math.hypot(rel_a * peak_jy, flux_cal_frac * peak_jy),
        flux=flux * math.hypot(math.sqrt(rel_flux2), flux_cal_frac),
        major=rel_major * major,
        minor=rel_minor * minor,
        pa_deg=_pa_error_deg(rel_minor, major, minor),
        along_major=along_major,
        along_minor=along_minor,
        ra=math.hypot(ra, position_cal),
        dec=math.hypot(dec, position_cal),
    )


__all__ = ["FWHM_PER_SIGMA", "GaussianErrors", "condon_errors", "rho_squared", "sky_position_errors"]
