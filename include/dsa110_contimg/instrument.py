"""DSA-110 instrument facts (DESIGN.md section 2) and simulation presets.

Everything that describes the telescope lives here so the simulator, the
converter and the imager agree by construction."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# --- site (OVRO) ---------------------------------------------------------
SITE_LAT_DEG = 37.2334
SITE_LON_DEG = -118.2830
SITE_HEIGHT_M = 1188.0
TELESCOPE_NAME = "OVRO_MMA"
INSTRUMENT = "DSA"

# --- dish / beam ----------------------------------------------------------
DISH_DIAMETER_M = 4.65
SEFD_JY = 6500.0

# --- band -----------------------------------------------------------------
N_SUBBANDS = 16
CHANNELS_PER_SUBBAND = 48
CHANNEL_WIDTH_HZ = 244140.625
BAND_LOW_HZ = 1311.25e6
BAND_HIGH_HZ = 1498.75e6
# --- time -----------------------------------------------------------------
INTEGRATION_S = 12.884902
INTEGRATIONS_PER_FILE = 24
POLARIZATIONS = ("XX", "YY")
POL_CODES = (-5, -6)  # AIPS/pyuvdata codes for XX, YY

# --- array ----------------------------------------------------------------
N_PADS = 117
EW_SPACING_M = 5.75
NS_SPACING_M = 8.653
INACTIVE_PADS = frozenset([10, 21, 22, 23, *range(52, 68), 117])
SPEED_OF_LIGHT = 299792458.0


def pad_enu() -> np.ndarray:
    """East/north/up offsets (m) of the 117 pads, pad numbers 1..117 in order.

    Pads 1-51 form the E-W arm (5.75 m spacing, centred on the array
    centre), pads 52-102 the N-S arm going north (8.653 m spacing, to ~441 m),
    pads 103-117 the outriggers out to ~1.3 km. The outrigger positions are a
    representative spread (the real coordinates are not public here)."""
    enu = np.zeros((N_PADS, 3))
    for i in range(51):
        enu[i] = [(i - 25) * EW_SPACING_M, 0.0, 0.0]
    for k in range(51):
        enu[51 + k] = [0.0, (k + 1) * NS_SPACING_M, 0.0]
    radii = np.linspace(450.0, 1300.0, 15)
    angles = np.deg2rad(np.linspace(-150.0, 170.0, 15) + 17.0)
    for j in range(15):
        enu[102 + j] = [radii[j] * np.cos(angles[j]), radii[j] * np.sin(angles[j]), 0.0]
    return enu


def active_pads() -> list[int]:
    """Pad numbers (1-based) of the 96 correlated antennas."""
    return [p for p in range(1, N_PADS + 1) if p not in INACTIVE_PADS]


def subband_frequencies(sb: int, nchan: int = CHANNELS_PER_SUBBAND) -> np.ndarray:
    """Channel centre frequencies (Hz) of subband ``sb``, descending as written.

    sb00 is the highest subband. With ``nchan`` < 48 the channels are wider so
    the subband still covers its full 11.72 MHz (presets change sizes, never
    the band)."""
    sb_width = CHANNELS_PER_SUBBAND * CHANNEL_WIDTH_HZ
    top = BAND_HIGH_HZ - sb * sb_width
    width = sb_width / nchan
    return top - width * (np.arange(nchan) + 0.5)


@dataclass(frozen=True)
class Preset:
    """Sizes of a simulated observation; the physics never changes with it."""

    name: str
    antenna_stride: int  # take every n-th active pad
    outriggers: bool
    channels_per_subband: int
    integrations_per_file: int
    n_sources: int  # sky density (sources per group field of view)

    def pads(self) -> list[int]:
        pads = [p for p in active_pads() if self.outriggers or p < 103]
        return pads[:: self.antenna_stride]

    @property
    def channel_width_hz(self) -> float:
        return CHANNELS_PER_SUBBAND * CHANNEL_WIDTH_HZ / self.channels_per_subband


PRESETS: dict[str, Preset] = {
    "full": Preset("full", 1, True, 48, 24, 40),
    "demo": Preset("demo", 2, False, 4, 24, 25),
    "tiny": Preset("tiny", 4, False, 2, 8, 12),
}


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def airy_beam(sep_rad: np.ndarray, freq_hz: np.ndarray | float) -> np.ndarray:
    """Power pattern of a uniformly illuminated 4.65 m dish: (2 J1(x)/x)^2.

    ``x = pi D sin(theta) / lambda``; FWHM ~ 1.03 lambda/D (2.7 deg at 1.4 GHz)."""
    from scipy.special import j1

    lam = SPEED_OF_LIGHT / np.asarray(freq_hz, dtype=float)
    x = np.pi * DISH_DIAMETER_M * np.sin(np.asarray(sep_rad, dtype=float)) / lam
    out = np.ones(np.broadcast(x).shape)
    nz = np.abs(x) > 1e-9
    xx = np.asarray(x)[nz] if np.ndim(x) else x
    if np.ndim(x):
        out[nz] = (2.0 * j1(xx) / xx) ** 2
        return out
    return float((2.0 * j1(x) / x) ** 2) if abs(x) > 1e-9 else 1.0
