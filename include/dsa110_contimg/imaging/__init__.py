"""Image stage: MeasurementSet -> flat / primary-beam / pb-corrected FITS, and image QA.

Importing this package is cheap (no CASA, no matplotlib): everything but
``ImagingParams`` loads its module on first use."""
from __future__ import annotations

from .params import ImagingParams

__all__ = ["ImageQAThresholds", "ImageResult", "ImagingParams", "image_ms", "image_qa", "write_thumbnail"]

_LAZY = {
    "ImageResult": "image",
    "image_ms": "image",
    "ImageQAThresholds": "qa",
    "image_qa": "qa",
    "write_thumbnail": "qa",
}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)
