"""Image stage: MeasurementSet -> flat / primary-beam / pb-corrected FITS.

Importing this package is cheap (no CASA): ``image_ms`` and ``ImageResult``
load their module on first use."""
from __future__ import annotations

from .params import ImagingParams

__all__ = ["ImagingParams", "ImageResult", "image_ms"]


def __getattr__(name: str):
    if name in ("ImageResult", "image_ms"):
        from . import image

        return getattr(image, name)
    raise AttributeError(name)
