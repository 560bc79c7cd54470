"""Cross-match stage: source finding, match to a reference catalogue, photometry.

The science lives in :mod:`dsa110_contimg.sources`:

- :mod:`.sources.find`: PyBDSF on an image or mosaic, errors per Condon (1997)
  (:mod:`.sources.errors`);
- :mod:`.sources.match`: nearest reference within a radius, reference flux
  scaled to the image frequency by the spectral index, QA (flux ratio,
  RA/Dec offsets, completeness at 10 and 5 sigma, false fraction);
- :mod:`.sources.photometry`: forced peak flux at the reference positions,
  recorded per product so each source has a light curve across mosaics
  (:meth:`Registry.record_photometry`, :meth:`Registry.light_curve`), with
  the variability metrics of :mod:`.sources.variability`.

This module strings them together for one image: :func:`crossmatch_image`
and :func:`photometry_image` take paths and parameters and return small
results, as every stage does.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .catalog import CatalogSource, angular_distance_deg, read_catalog
from .sources.find import DetectedSource, Detection, FindParams, NoiseMap, SourceFindingError, detect, find_sources
from .sources.match import CrossmatchResult, Match, crossmatch, scale_flux
from .sources.photometry import ForcedMeasurement, forced_photometry
from .sources.variability import variability

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrossmatchParams:
    """Parameters of the cross-match stage (see FindParams for the finder's)."""

    snr: float = 5.0
    box: int | None = None  # rms box (pixels); None: PyBDSF chooses
    radius_arcsec: float = 60.0
    ref_freq_hz: float = 1.4e9  # NVSS
    spectral_index: float = -0.7  # for reference sources without their own
    flux_cal_frac: float = 0.03
    completeness_sigmas: tuple[float, ...] = (10.0, 5.0)

    def find_params(self) -> FindParams:
        return FindParams(snr=self.snr, box=self.box, flux_cal_frac=self.flux_cal_frac)


def _reference(reference: Path | str | Sequence[Any]) -> list[Any]:
    return read_catalog(reference) if isinstance(reference, (str, Path)) else list(reference)


def _image_grid(fits_path: Path) -> tuple[Any, tuple[int, int]]:
    """Celestial WCS and (ny, nx) of a FITS image, from its header alone."""
    import warnings

    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    header = fits.getheader(fits_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header).celestial
    return wcs, (int(header["NAXIS2"]), int(header["NAXIS1"]))


def in_footprint(reference: Sequence[Any], wcs: Any, shape: tuple[int, int], pad_arcsec: float = 0.0) -> list[Any]:
    """The reference rows that fall on an image of celestial ``wcs`` and
    ``shape`` (ny, nx), within ``pad_arcsec`` of its pixel grid, so a
    whole-sky catalogue costs one vectorised cut."""
    if not reference:
        return []
    ny, nx = shape
    ra = np.array([r.ra_deg for r in reference], dtype=float)
    dec = np.array([r.dec_deg for r in reference], dtype=float)
    ra0, dec0 = wcs.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0)
    corners = wcs.pixel_to_world_values([0, nx - 1, 0, nx - 1], [0, 0, ny - 1, ny - 1])
    reach = np.nanmax(angular_distance_deg(corners[0], corners[1], ra0, dec0)) + pad_arcsec / 3600.0
    near = angular_distance_deg(ra, dec, ra0, dec0) <= reach  # also drops the far side of a SIN projection
    x, y = wcs.world_to_pixel_values(ra, dec)
    scale = math.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0
    pad = pad_arcsec / scale
    with np.errstate(invalid="ignore"):
        on = near & (x >= -0.5 - pad) & (x <= nx - 0.5 + pad) & (y >= -0.5 - pad) & (y <= ny - 0.5 + pad)
    return [reference[i] for i in np.flatnonzero(on)]


def crossmatch_image(fits_path: Path, reference: Path | str | Sequence[Any],
                     params: CrossmatchParams = CrossmatchParams(), out_csv: Path | None = None,
                     detection: Detection | None = None) -> CrossmatchResult:
    """Find sources in an image or mosaic and cross-match them to the reference
    catalogue (a path, or rows), with the full QA: completeness uses the
    finder's rms map and usable area. ``detection`` reuses a finder run."""
    det = detection or detect(Path(fits_path), params.find_params())
    refs = in_footprint(_reference(reference), det.noise.wcs, det.noise.rms.shape,
                        pad_arcsec=params.radius_arcsec)
    res = crossmatch(det.sources, refs, params.radius_arcsec, ref_freq_hz=params.ref_freq_hz,
                     image_freq_hz=det.freq_hz or params.ref_freq_hz, spectral_index=params.spectral_index,
                     out_csv=out_csv, noise=det.noise, completeness_sigmas=params.completeness_sigmas)
    res.extra.update(fits_path=str(fits_path), find_seconds=round(det.seconds, 2))
    return res


def photometry_image(fits_path: Path, reference: Path | str | Sequence[Any], *, noise: NoiseMap | None = None,
                     flux_cal_frac: float = 0.0) -> list[ForcedMeasurement]:
    """Forced peak flux at every reference position on the image; rows for
    :meth:`Registry.record_photometry`."""
    refs = in_footprint(_reference(reference), *_image_grid(Path(fits_path)))
    return forced_photometry(Path(fits_path), refs, noise=noise, flux_cal_frac=flux_cal_frac)


__all__ = [
    "CatalogSource", "CrossmatchParams", "CrossmatchResult", "DetectedSource", "Detection", "FindParams",
    "ForcedMeasurement", "Match", "NoiseMap", "SourceFindingError", "crossmatch", "crossmatch_image", "detect",
    "find_sources", "forced_photometry", "in_footprint", "photometry_image", "scale_flux", "variability",
]
