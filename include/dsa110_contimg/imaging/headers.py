"""FITS headers of the image products: what, when, where, how and with what.

Every product (flat image, primary beam, pb-corrected image) carries the
same observation and provenance keys, so any one file can be interpreted on
its own: a 2-D celestial WCS plus the keys in ``REQUIRED_KEYS``."""
from __future__ import annotations

import json
import math

from astropy.io import fits
from astropy.time import Time

from ..geometry import site_location
from .backends import ImagerSetup, casatools_version, contimg_version, wsclean_version
from .beam import beam_centres_icrs
from .msinfo import MsInfo
from .params import ImagingParams

TELESCOPE = "DSA-110"
ORIGIN = "dsa110_contimg"

# spectral-axis and site keys the imagers leave in the celestial header: the
# spectral axis is gone (FREQ/BANDWID describe it) and the site is ours
_DROPPED = ("RESTFRQ", "RESTFREQ", "SPECSYS", "VELREF", "OBSGEO-X", "OBSGEO-Y", "OBSGEO-Z")

# keys every product header carries (tests and downstream stages rely on them)
REQUIRED_KEYS = (
    "BMAJ", "BMIN", "BPA", "FREQ", "BANDWID", "DATE-OBS", "MJD-OBS", "MJD-MID", "OBSRA", "OBSDEC",
    "BUNIT", "TELESCOP", "INSTRUME", "OBSERVER", "ORIGIN", "CONTIMGV", "CASAVER", "IMAGER",
    "DECONV", "WEIGHTNG", "ROBUST", "NITER", "CELL", "IMSIZE", "STOKES", "FLAGFRAC",
)


def _iso(mjd: float) -> str:
    return Time(mjd, format="mjd", scale="utc").isot


def _site_cards() -> list[tuple[str, object, str]]:
    site = site_location()
    return [(f"OBSGEO-{axis}", float(getattr(site, axis.lower()).to_value("m")), f"[m] array centre, ITRF {axis}")
            for axis in "XYZ"]


def observation_cards(info: MsInfo, freq_hz: float) -> list[tuple[str, object, str]]:
    """When, where and at what frequency: times, pointing, band, telescope."""
    ra, dec = beam_centres_icrs(info.pointing_dec_rad, Time([info.mid_mjd], format="mjd", scale="utc"))
    return [
        ("FREQ", freq_hz, "[Hz] MFS reference frequency"),
        ("BANDWID", info.bandwidth_hz, "[Hz] total bandwidth imaged"),
        ("NCHAN", int(info.freqs_hz.size), "channels imaged (MFS)"),
        ("TIMESYS", "UTC", "time scale of DATE-* and MJD-*"),
        ("DATE-OBS", _iso(info.start_mjd), "start of the first integration"),
        ("MJD-OBS", info.start_mjd, "[d] start of the first integration"),
        ("DATE-AVG", _iso(info.mid_mjd), "observation mid-time"),
        ("MJD-AVG", info.mid_mjd, "[d] observation mid-time"),
        ("MJD-MID", info.mid_mjd, "[d] mid-time (as MJD-AVG)"),
        ("DATE-END", _iso(info.end_mjd), "end of the last integration"),
        ("TELAPSE", (info.end_mjd - info.start_mjd) * 86400.0, "[s] end minus start"),
        ("OBSRA", math.degrees(float(ra[0])) % 360.0, "[deg] ICRS RA of the pointing at mid-time"),
        ("OBSDEC", math.degrees(float(dec[0])), "[deg] ICRS Dec of the pointing at mid-time"),
        ("PBDEC", math.degrees(info.pointing_dec_rad), "[deg] apparent pointing declination"),
        ("TELESCOP", TELESCOPE, "meridian drift-scan array at OVRO"),
        *_site_cards(),
        ("INSTRUME", "DSA", "correlator"),
        ("OBSERVER", info.observer or TELESCOPE, "from the MS OBSERVATION table"),
        ("ORIGIN", ORIGIN, "pipeline that made this file"),
    ]


def imaging_cards(setup: ImagerSetup, backend: str, flagged_fraction: float,
                  psf_beam: tuple[float, float, float] | None) -> list[tuple[str, object, str]]:
    """How: the imager, its choices, the software versions, the data flagged."""
    cards: list[tuple[str, object, str]] = [
        ("CONTIMGV", contimg_version(), "dsa110_contimg version"),
        ("CASAVER", casatools_version(), "casatools version"),
    ]
    if backend == "wsclean":
        cards.append(("WSCLNVER", wsclean_version(), "WSClean version"))
    cards += [
        ("IMAGER", backend, "imager that made the flat image"),
        ("GRIDDER", "wgridder" if backend == "wsclean" else setup.gridder, "w-term correction"),
        ("DECONV", setup.deconvolver, "CLEAN algorithm"),
        ("SPECMODE", setup.specmode.upper(), "one multi-frequency-synthesis image"),
        ("STOKES", setup.stokes, "polarisation imaged"),
        ("WEIGHTNG", setup.weighting, "visibility weighting"),
        ("ROBUST", setup.robust, "Briggs robustness"),
        ("NITER", setup.niter, "maximum CLEAN components"),
        ("GAIN", setup.gain, "CLEAN loop gain"),
        ("THRESH", setup.threshold_jy if setup.threshold_jy is not None else 0.0, "[Jy] CLEAN threshold (0 = auto)"),
        ("NSIGMA", setup.nsigma if setup.threshold_jy is None else 0.0, "auto threshold in residual rms"),
        ("CELL", setup.cell_arcsec, "[arcsec] pixel size"),
        ("IMSIZE", setup.imsize, "[pixel] image side"),
        ("DATACOL", setup.datacolumn.upper(), "MS column imaged"),
        ("FLAGFRAC", flagged_fraction, "flagged share of cross-correlations"),
    ]
    if backend == "wsclean":
        cards.append(("MGAIN", setup.mgain, "WSClean major-cycle gain"))
    if psf_beam is not None:
        cards += [
            ("PSFMAJ", psf_beam[0] / 3600.0, "[deg] fit to the imager's PSF"),
            ("PSFMIN", psf_beam[1] / 3600.0, "[deg] fit to the imager's PSF"),
            ("PSFPA", psf_beam[2], "[deg] fit to the imager's PSF"),
        ]
    return cards


def product_header(celestial: fits.Header, info: MsInfo, setup: ImagerSetup, *, backend: str,
                   params: ImagingParams, name: str, freq_hz: float, flagged_fraction: float,
                   psf_beam: tuple[float, float, float] | None) -> fits.Header:
    """The flat image's header: ``celestial`` (WCS and restoring beam) plus every key above."""
    header = celestial.copy()
    for key in _DROPPED:
        header.remove(key, ignore_missing=True)
    header["BUNIT"] = ("JY/BEAM", "not primary-beam corrected")
    header["BTYPE"] = "Intensity"
    header["OBJECT"] = (name, "group / MS name")
    for key, value, comment in observation_cards(info, freq_hz) + imaging_cards(setup, backend,
                                                                                flagged_fraction, psf_beam):
        header[key] = (value, comment)
    header.add_history(f"{ORIGIN} {contimg_version()} image stage, {backend}, MS {info.path.name}")
    header.add_history("ImagingParams " + json.dumps(params.to_dict(), sort_keys=True))
    header.add_history("ImagerSetup " + json.dumps(setup.to_dict(), sort_keys=True))
    return header


def pb_header(header: fits.Header, pblimit: float) -> fits.Header:
    """Header of the primary-beam file: unitless gain, same provenance."""
    out = header.copy()
    out["BUNIT"] = ("", "primary-beam power gain")
    out["BTYPE"] = "Beam"
    out["PBLIMIT"] = (pblimit, "pbcor is NaN below this beam level")
    out.add_history("drift-averaged 4.65 m Airy power beam over the observation's hour angles")
    return out


def pbcor_header(header: fits.Header, pblimit: float) -> fits.Header:
    """Header of the primary-beam-corrected image."""
    out = header.copy()
    out["BUNIT"] = ("JY/BEAM", "primary-beam corrected intensity")
    out["PBCOR"] = (True, "divided by the drift-averaged beam")
    out["PBLIMIT"] = (pblimit, "NaN below this beam level")
    return out
