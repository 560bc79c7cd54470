"""Small FITS helpers shared by the image, mosaic and cross-match stages."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning


def write_fits_atomic(path: Path, data: np.ndarray, header: fits.Header) -> Path:
    """Write a primary-HDU FITS file under a temporary name, then rename it in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fits.PrimaryHDU(data=np.asarray(data, dtype=np.float32), header=header).writeto(tmp, overwrite=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def robust_rms(data: np.ndarray) -> float:
    """1.4826 x median absolute deviation of the finite values (0 if none)."""
    v = np.asarray(data, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def image_frequency(header: fits.Header) -> float | None:
    """Frequency (Hz) of an image: our ``FREQ`` keyword or a spectral axis."""
    if "FREQ" in header:
        return float(header["FREQ"])
    for i in range(1, int(header.get("NAXIS", 0)) + 1):
        if str(header.get(f"CTYPE{i}", "")).upper().startswith("FREQ"):
            return float(header[f"CRVAL{i}"])
    if "RESTFRQ" in header:
        return float(header["RESTFRQ"])
    return None


def read_image_2d(path: Path) -> tuple[np.ndarray, fits.Header, WCS]:
    """Data (2-D float64), the full header and the celestial WCS of a FITS image.

    Degenerate frequency/Stokes axes (as written by CASA or WSClean) are dropped."""
    with fits.open(path) as hdul:
        header = hdul[0].header.copy()
        data = np.asarray(hdul[0].data, dtype=float)
    while data.ndim > 2:
        if data.shape[0] != 1:
            raise ValueError(f"{path}: cannot reduce image of shape {data.shape} to 2-D")
        data = data[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header).celestial
    return data, header, wcs


def celestial_header(header: fits.Header) -> fits.Header:
    """A 2-D header: the celestial WCS of ``header`` plus its beam/time/freq keys."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        out = WCS(header).celestial.to_header()
    freq = image_frequency(header)
    if freq is not None:
        out["FREQ"] = (freq, "[Hz] image (MFS reference) frequency")
    for key in ("BMAJ", "BMIN", "BPA", "BUNIT", "DATE-OBS", "MJD-OBS", "TELESCOP", "OBJECT"):
        if key in header:
            out[key] = header[key]
    return out


def beam_deg(header: fits.Header) -> tuple[float, float, float] | None:
    """(bmaj, bmin, bpa) in degrees from the header, or None when absent/zero."""
    try:
        bmaj, bmin = float(header["BMAJ"]), float(header["BMIN"])
    except KeyError:
        return None
    if not (np.isfinite(bmaj) and np.isfinite(bmin)) or bmaj <= 0 or bmin <= 0:
        return None
    return bmaj, bmin, float(header.get("BPA", 0.0))
