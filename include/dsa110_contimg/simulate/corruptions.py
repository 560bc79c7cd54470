"""Known per-antenna, per-polarisation complex gains for the simulator.

g(ant, t, nu, pol) = bandpass(ant, nu, pol) x drift(ant, t, pol):

* bandpass amplitude 1 + a smooth ripple (1-3 cycles across the band) of at
  most +-10 %; phase 2 pi nu tau + phi0 with a delay tau of a few ns;
* drift: slow sinusoids in amplitude and phase of absolute time with rates of
  at most 2 %/hour and 5 deg/hour.

Everything follows from (antenna numbers, seed); the truth is saved as npz.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..instrument import BAND_HIGH_HZ, BAND_LOW_HZ

N_RIPPLE = 3
MAX_RIPPLE = 0.10
MAX_DELAY_NS = 3.0
MAX_AMP_RATE_PER_H = 0.02
MAX_PHASE_RATE_DEG_PER_H = 5.0

_PARAM_NAMES = (
    "ripple_coef", "ripple_phase", "delay_ns", "phase0_rad",
    "amp_drift", "amp_period_h", "amp_phase", "ph_drift_rad", "ph_period_h", "ph_phase",
)


@dataclass(frozen=True)
class GainModel:
    """Per-antenna gain parameters; arrays are (Nant, Npol[, N_RIPPLE])."""

    antenna_numbers: np.ndarray
    ripple_coef: np.ndarray
    ripple_phase: np.ndarray
    delay_ns: np.ndarray
    phase0_rad: np.ndarray
    amp_drift: np.ndarray
    amp_period_h: np.ndarray
    amp_phase: np.ndarray
    ph_drift_rad: np.ndarray
    ph_period_h: np.ndarray
    ph_phase: np.ndarray
    seed: int = -1

    @classmethod
    def random(cls, antenna_numbers, seed: int, npol: int = 2) -> "GainModel":
        ants = np.asarray(antenna_numbers, dtype=int)
        n = ants.size
        rng = np.random.default_rng([int(seed), 31337])
        shape = (n, npol)
        raw = rng.normal(size=shape + (N_RIPPLE,))
        total = rng.uniform(0.5, 1.0, size=shape) * MAX_RIPPLE
        coef = raw / np.abs(raw).sum(axis=-1, keepdims=True) * total[..., None]
        amp_period = rng.uniform(3.0, 8.0, size=shape)
        ph_period = rng.uniform(3.0, 8.0, size=shape)
        amp_rate = rng.uniform(0.5, 1.0, size=shape) * MAX_AMP_RATE_PER_H
        ph_rate = rng.uniform(0.5, 1.0, size=shape) * np.radians(MAX_PHASE_RATE_DEG_PER_H)
        return cls(
            antenna_numbers=ants,
            ripple_coef=coef,
            ripple_phase=rng.uniform(0, 2 * np.pi, size=shape + (N_RIPPLE,)),
            delay_ns=rng.uniform(-MAX_DELAY_NS, MAX_DELAY_NS, size=shape),
            phase0_rad=rng.uniform(-np.pi, np.pi, size=shape),
            # a sinusoid A sin(2 pi t / P) changes at most at 2 pi A / P per hour
            amp_drift=amp_rate * amp_period / (2 * np.pi),
            amp_period_h=amp_period,
            amp_phase=rng.uniform(0, 2 * np.pi, size=shape),
            ph_drift_rad=ph_rate * ph_period / (2 * np.pi),
            ph_period_h=ph_period,
            ph_phase=rng.uniform(0, 2 * np.pi, size=shape),
            seed=int(seed),
        )

    @classmethod
    def unity(cls, antenna_numbers, npol: int = 2) -> "GainModel":
        """All gains exactly 1 (for tests and a corruption-free sky)."""
        ants = np.asarray(antenna_numbers, dtype=int)
        z = np.zeros((ants.size, npol))
        one = np.ones((ants.size, npol))
        zr = np.zeros((ants.size, npol, N_RIPPLE))
        return cls(ants, zr, zr, z, z, z, one, z, z, one, z, seed=-1)

    @property
    def nant(self) -> int:
        return int(self.antenna_numbers.size)

    def bandpass(self, freqs_hz) -> np.ndarray:
        """Complex bandpass (Nant, Nfreq, Npol)."""
        f = np.asarray(freqs_hz, dtype=float)
        x = (f - BAND_LOW_HZ) / (BAND_HIGH_HZ - BAND_LOW_HZ)  # 0..1 across the band
        k = np.arange(1, N_RIPPLE + 1)
        # (Nant, Npol, Nk, Nf)
        arg = 2 * np.pi * k[None, None, :, None] * x[None, None, None, :] + self.ripple_phase[..., None]
        amp = 1.0 + np.sum(self.ripple_coef[..., None] * np.sin(arg), axis=2)
        phase = 2 * np.pi * f[None, None, :] * self.delay_ns[..., None] * 1e-9 + self.phase0_rad[..., None]
        return np.moveaxis(amp * np.exp(1j * phase), 1, 2)

    def drift(self, times_mjd) -> np.ndarray:
        """Complex slow drift (Nant, Ntime, Npol), a function of absolute time."""
        t_h = np.asarray(times_mjd, dtype=float) * 24.0
        amp = 1.0 + self.amp_drift[:, None, :] * np.sin(
            2 * np.pi * t_h[None, :, None] / self.amp_period_h[:, None, :] + self.amp_phase[:, None, :]
        )
        ph = self.ph_drift_rad[:, None, :] * np.sin(
            2 * np.pi * t_h[None, :, None] / self.ph_period_h[:, None, :] + self.ph_phase[:, None, :]
        )
        return amp * np.exp(1j * ph)

    def gains(self, times_mjd, freqs_hz) -> np.ndarray:
        """Complex gains (Nant, Ntime, Nfreq, Npol)."""
        return self.bandpass(freqs_hz)[:, None, :, :] * self.drift(times_mjd)[:, :, None, :]

    def save(self, path: str | Path, times_mjd=None, freqs_hz=None) -> Path:
        """Write parameters (and, if given, the evaluated bandpass and drift) as npz.

        The evaluated factors are small (bandpass x drift is separable), so
        the truth of a whole session fits in a few MB."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {name: getattr(self, name) for name in _PARAM_NAMES}
        arrays["antenna_numbers"] = self.antenna_numbers
        arrays["seed"] = np.array(self.seed)
        if freqs_hz is not None:
            arrays["freqs_hz"] = np.asarray(freqs_hz, dtype=float)
            arrays["bandpass"] = self.bandpass(freqs_hz)
        if times_mjd is not None:
            arrays["times_mjd"] = np.asarray(times_mjd, dtype=float)
            arrays["drift"] = self.drift(times_mjd)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "GainModel":
        with np.load(path) as z:
            kw = {name: z[name] for name in _PARAM_NAMES}
            return cls(antenna_numbers=z["antenna_numbers"], seed=int(z["seed"]), **kw)
