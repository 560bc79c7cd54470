"""Calibration quality gates and diagnostic plots for CASA caltables.

A solve that "succeeded" can still be useless (RFI, a dead antenna, the
calibrator far down the beam), and bad tables quietly ruin every image they
are applied to. :func:`table_qa` measures a few numbers per table,
:func:`assess` compares them with :class:`CalQAThresholds`, and the plot
functions give the operator something to look at when a gate fails.

Definitions
-----------
Solution
    One value of the table's parameter column (CPARAM for B/G, FPARAM for K)
    for one antenna, polarisation, channel and time row.

Which antennas count (``antennas``)
    CASA writes a row for every antenna in the MeasurementSet's ANTENNA
    table, including pads with no data (for DSA-110 most of the 117 pads in a
    small configuration): those rows are flagged with SNR 0. Counting them as
    flagged solutions would fail every table, so by default only antennas
    with at least one unflagged solution *in this table* count. That cannot
    tell an antenna that had data but whose solve failed completely from an
    empty pad, so a caller that knows which antennas had data (the keys of
    :func:`dsa110_contimg.calibration.solve.antennas_with_data`) should pass
    them: then exactly those antennas count, all-flagged or not. A table with
    no unflagged solution at all counts every antenna (flagged fraction 1).

``flagged_fraction``
    Flagged solutions / all solutions of the counted antennas.
    ``n_solutions`` is that denominator.

``median_snr``
    Median of the SNR column over the unflagged solutions of the counted
    antennas. NaN when there are none (the flagged gate fails such a table)
    and when the table records no SNR: CASA 6.7's delay (K) solver leaves the
    SNR column at 0 for every solution, and a gate on it would reject every
    K table. An SNR that is not known is not gated.

Scatter (B and G only)
    The gate must catch noisy solutions without punishing the legitimate
    smooth structure of a real bandpass (ripples of about +-10 % across the
    band, a residual delay of a few ns that makes the phase a straight line in
    frequency). So scatter is measured from first differences between
    *adjacent* solutions along the solution axis -- channels for B, time rows
    for G -- using only pairs where both are unflagged: a slow ripple or a
    linear phase slope barely changes from one channel to the next, while
    independent noise of sigma in every solution makes the differences
    scatter by sigma*sqrt(2). The estimate is
    ``1.4826 * MAD(diff) / sqrt(2)``; the MAD takes out the median
    difference (a delay's constant phase step) and ignores a few outliers
    such as a single RFI channel. Phase differences are taken as the angle of
    ``g[i+1] * conj(g[i])`` in degrees, which wraps them into (-180, 180].
    Amplitude differences are divided by the median amplitude of that
    antenna and polarisation, so the amplitude scatter is fractional and
    independent of the absolute gain scale (B is solved with
    ``solnorm=False``). What smooth structure still leaks in: a sinusoidal
    ripple of fractional amplitude A and period P channels adds about
    ``0.74 * A * 2*pi/P``. With the full 768 channels and the simulator's
    ripples (at most 3 cycles of +-10 % across the band) that is < 0.2 %;
    on the 32-channel 'tiny' test preset it roughly doubles the estimate
    (measured 1.2 % against 0.6 % true noise), still far below the 10 % gate.

    Per antenna the larger of its polarisations' values is reported (one dead
    polarisation makes the antenna bad); the table value is the median over
    the counted antennas, so a single bad antenna shows up in
    ``worst_antennas`` and ``per_antenna`` without failing the table.
    At least three adjacent unflagged solutions (two differences) are needed.
    A G table solved with one solution per antenna (``solint='inf'``) has no
    axis to difference along: its scatter is NaN and :func:`assess` does not
    gate on it. (Differences between polarisations were considered and
    rejected: they measure the legitimate X/Y gain difference, not noise.)

K tables
    Delays (FPARAM, ns) have no amplitude: only the flagged fraction and the
    SNR (NaN, see above, with CASA 6.7) are reported; the scatter fields are NaN.

Importing this module imports neither CASA nor matplotlib; the functions do,
lazily, and the plots use an explicit Agg canvas (no pyplot state), so they
are safe in Airflow worker processes.
"""
from __future__ import annotations

import logging
import math
import os
import uuid
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from .. import casa_env
from ..errors import CalibrationError

log = logging.getLogger(__name__)

MAD_TO_SIGMA = 1.4826  # MAD of Gaussian noise x this = its standard deviation
MIN_DIFFS = 2  # at least three adjacent solutions before a scatter means anything
N_WORST = 5
MJD_EPOCH = datetime(1858, 11, 17, tzinfo=UTC)


# --------------------------------------------------------------------------
# thresholds and results
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class CalQAThresholds:
    """Limits a calibration table must meet to be used (see the module docstring)."""

    max_flagged_fraction: float = 0.30  # of solutions of the counted antennas
    min_median_snr: float = 5.0
    max_amp_scatter: float = 0.10  # fractional, median over antennas
    max_phase_scatter_deg: float = 10.0  # median over antennas

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_flagged_fraction <= 1.0:
            raise ValueError(f"max_flagged_fraction {self.max_flagged_fraction} must be in [0, 1]")
        for name in ("min_median_snr", "max_amp_scatter", "max_phase_scatter_deg"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)} must be >= 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> CalQAThresholds:
        """Build from a dict (config, DAG Params); unknown keys are an error."""
        d = dict(d or {})
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown calibration QA thresholds: {sorted(unknown)}")
        return cls(**{k: float(v) for k, v in d.items()})

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class TableQA:
    """QA numbers of one caltable; NaN where a number is undefined (see module docstring)."""

    table_type: str
    path: str
    n_solutions: int  # solutions of the counted antennas, flagged or not
    flagged_fraction: float
    median_snr: float
    amp_scatter: float  # median over antennas, fractional
    phase_scatter_deg: float  # median over antennas
    worst_antennas: list[str]  # up to 5 names, worst first
    per_antenna: dict[str, dict[str, float]]  # name -> amp_scatter, phase_scatter_deg, flagged_fraction, median_amp

    def summary(self) -> dict[str, Any]:
        """JSON-safe numbers without the per-antenna detail (NaN -> None)."""
        return {
            "table_type": self.table_type,
            "path": self.path,
            "n_solutions": self.n_solutions,
            "flagged_fraction": _json_float(self.flagged_fraction),
            "median_snr": _json_float(self.median_snr),
            "amp_scatter": _json_float(self.amp_scatter),
            "phase_scatter_deg": _json_float(self.phase_scatter_deg),
            "worst_antennas": list(self.worst_antennas),
        }


def _json_float(x: float) -> float | None:
    """JSON has no NaN: undefined numbers become null."""
    return float(x) if math.isfinite(x) else None


# --------------------------------------------------------------------------
# reading caltables
# --------------------------------------------------------------------------
@dataclass
class _CalTable:
    """The columns of a caltable the QA needs; arrays are (npol, nchan, nrow)."""

    path: Path
    values: np.ndarray  # complex CPARAM or float FPARAM
    flag: np.ndarray
    snr: np.ndarray
    antenna: np.ndarray  # (nrow,)
    spw: np.ndarray  # (nrow,)
    time_s: np.ndarray  # (nrow,) MJD seconds, UTC
    names: list[str]  # by antenna index
    chan_freq_hz: list[np.ndarray]  # by spectral window

    @property
    def is_complex(self) -> bool:
        return np.iscomplexobj(self.values)


def _read_caltable(path: Path) -> _CalTable:
    """Read a caltable; CalibrationError names it when it is missing or unreadable."""
    path = Path(path)
    if not (path / "table.dat").exists():
        raise CalibrationError(path, "calibration table is missing")
    tb = casa_env.casatools().table()
    try:
        tb.open(str(path))
        col = "CPARAM" if "CPARAM" in tb.colnames() else "FPARAM"
        main = {c: tb.getcol(c) for c in (col, "FLAG", "SNR", "ANTENNA1", "SPECTRAL_WINDOW_ID", "TIME")}
        tb.close()
        tb.open(str(path / "ANTENNA"))
        names = [str(n) for n in tb.getcol("NAME")]
        tb.close()
        tb.open(str(path / "SPECTRAL_WINDOW"))
        freqs = [np.asarray(tb.getcell("CHAN_FREQ", i), dtype=float) for i in range(tb.nrows())]
        tb.close()
    except RuntimeError as exc:
        raise CalibrationError(path, f"cannot read calibration table: {exc}") from exc
    finally:
        tb.done()
    return _CalTable(path=path, values=np.asarray(main[col]), flag=np.asarray(main["FLAG"], dtype=bool),
                     snr=np.asarray(main["SNR"], dtype=float), antenna=np.asarray(main["ANTENNA1"]),
                     spw=np.asarray(main["SPECTRAL_WINDOW_ID"]), time_s=np.asarray(main["TIME"], dtype=float),
                     names=names, chan_freq_hz=freqs)


def _antenna_name(cal: _CalTable, ant: int) -> str:
    return cal.names[ant] if 0 <= ant < len(cal.names) else str(ant)


def _counted_antennas(cal: _CalTable, antennas: set[int] | None) -> list[int]:
    """Antenna indices whose solutions count (see 'Which antennas count')."""
    present = sorted({int(a) for a in cal.antenna})
    if antennas is not None:
        missing = sorted(set(antennas) - set(present))
        if missing:
            log.warning("%s: antennas %s have no rows in the table; not counted", cal.path.name, missing)
        return [a for a in present if a in antennas]
    with_data = [a for a in present if not cal.flag[:, :, cal.antenna == a].all()]
    return with_data or present


# --------------------------------------------------------------------------
# scatter
# --------------------------------------------------------------------------
def robust_sigma(x: np.ndarray) -> float:
    """1.4826 * MAD: the standard deviation of Gaussian noise, unmoved by a few outliers."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < MIN_DIFFS:
        return math.nan
    return MAD_TO_SIGMA * float(np.median(np.abs(x - np.median(x))))


Series = list[tuple[np.ndarray, np.ndarray]]  # 1-D (values, flags) along the solution axis


def _adjacent_diffs(series: Series, median_amp: float) -> tuple[np.ndarray, np.ndarray]:
    """Fractional amplitude and phase (deg) differences of adjacent unflagged samples.

    Differences never span a flagged sample, nor run from one series into the next."""
    d_amp, d_phase = [], []
    for vals, flags in series:
        ok = ~flags[1:] & ~flags[:-1]
        a, b = vals[:-1][ok], vals[1:][ok]
        d_amp.append((np.abs(b) - np.abs(a)) / median_amp)
        d_phase.append(np.degrees(np.angle(b * np.conj(a))))
    return np.concatenate(d_amp), np.concatenate(d_phase)


def series_scatter(series: Series) -> tuple[float, float, float]:
    """(fractional amp scatter, phase scatter deg, median amp) of one antenna and polarisation.

    ``series`` holds complex 1-D solutions along the solution axis with their
    flags; the noise estimate is robust_sigma(first differences) / sqrt(2),
    pooling the differences of all series."""
    good = np.concatenate([v[~f] for v, f in series]) if series else np.array([])
    if not good.size:
        return math.nan, math.nan, math.nan
    median_amp = float(np.median(np.abs(good)))
    if median_amp <= 0:
        return math.nan, math.nan, median_amp
    d_amp, d_phase = _adjacent_diffs(series, median_amp)
    return robust_sigma(d_amp) / math.sqrt(2), robust_sigma(d_phase) / math.sqrt(2), median_amp


def _antenna_series(cal: _CalTable, ant: int, pol: int, axis: str) -> Series:
    """One antenna's solutions of polarisation ``pol`` as series along ``axis``.

    'channel' (B): each row's channels are one series. 'time' (G): for each
    spectral window and channel, that antenna's rows in time order."""
    rows = np.nonzero(cal.antenna == ant)[0]
    if axis == "channel":
        return [(cal.values[pol, :, r], cal.flag[pol, :, r]) for r in rows]
    out = []
    for spw in np.unique(cal.spw[rows]):
        r = rows[cal.spw[rows] == spw]
        r = r[np.argsort(cal.time_s[r], kind="stable")]
        out += [(cal.values[pol, c, r], cal.flag[pol, c, r]) for c in range(cal.values.shape[1])]
    return out


def _antenna_qa(cal: _CalTable, ant: int, axis: str | None) -> dict[str, float]:
    """Per-antenna numbers; scatter is the worse polarisation (NaN without an axis)."""
    sel = cal.antenna == ant
    out = {"amp_scatter": math.nan, "phase_scatter_deg": math.nan,
           "flagged_fraction": float(cal.flag[:, :, sel].mean()), "median_amp": math.nan}
    if not cal.is_complex:
        return out
    per_pol = [series_scatter(_antenna_series(cal, ant, p, axis or "time")) for p in range(cal.values.shape[0])]
    amp, phase, med = (np.array(x, dtype=float) for x in zip(*per_pol))
    out["median_amp"] = _nanmedian(med)
    if axis is not None:
        out["amp_scatter"] = _nanmax(amp)
        out["phase_scatter_deg"] = _nanmax(phase)
    return out


def _nanmax(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.max()) if x.size else math.nan


def _nanmedian(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else math.nan


def _median_snr(snr: np.ndarray) -> float:
    """Median SNR of unflagged solutions; NaN when there are none or none has an SNR recorded."""
    if not snr.size or not np.any(snr > 0):
        return math.nan
    return _nanmedian(snr)


def _scatter_axis(table_type: str, cal: _CalTable) -> str | None:
    """Axis the scatter is measured along, or None when there is none (K, one G per antenna)."""
    kind = table_type.upper()
    if kind.startswith("K") or not cal.is_complex:
        return None
    if kind.startswith("B"):
        return "channel"
    n_times = np.unique(cal.time_s).size
    return "time" if n_times >= MIN_DIFFS + 1 else None


def _worst(per_antenna: dict[str, dict[str, float]]) -> list[str]:
    """Up to N_WORST names: all-flagged antennas first, then the largest amplitude scatter.

    Antennas with neither (no scatter measured, some solutions good) are not listed."""
    def badness(q: dict[str, float]) -> float:
        return math.inf if q["flagged_fraction"] >= 1.0 else q["amp_scatter"]

    ranked = [(badness(q), name) for name, q in per_antenna.items() if not math.isnan(badness(q))]
    ranked.sort(key=lambda bn: bn[0], reverse=True)
    return [name for _, name in ranked[:N_WORST]]


# --------------------------------------------------------------------------
# public QA API
# --------------------------------------------------------------------------
def table_qa(caltable: Path, table_type: str, antennas: set[int] | None = None) -> TableQA:
    """Measure one caltable (definitions in the module docstring).

    ``table_type`` is 'B', 'G' or 'K' (anything else is treated like G).
    Raises CalibrationError naming the table when it is missing or unreadable."""
    cal = _read_caltable(Path(caltable))
    counted = _counted_antennas(cal, antennas)
    sel = np.isin(cal.antenna, counted)
    flag, snr = cal.flag[:, :, sel], cal.snr[:, :, sel]
    axis = _scatter_axis(table_type, cal)
    per_antenna = {_antenna_name(cal, a): _antenna_qa(cal, a, axis) for a in counted}
    amp = np.array([q["amp_scatter"] for q in per_antenna.values()], dtype=float)
    phase = np.array([q["phase_scatter_deg"] for q in per_antenna.values()], dtype=float)
    qa = TableQA(
        table_type=str(table_type), path=str(caltable), n_solutions=int(flag.size),
        flagged_fraction=float(flag.mean()) if flag.size else 1.0,
        median_snr=_median_snr(snr[~flag]),
        amp_scatter=_nanmedian(amp), phase_scatter_deg=_nanmedian(phase),
        worst_antennas=_worst(per_antenna), per_antenna=per_antenna,
    )
    log.info("%s: %s QA over %d antennas: %d solutions, %.1f%% flagged, median SNR %.1f, "
             "amp scatter %.2f%%, phase scatter %.2f deg, worst %s", cal.path.name, table_type, len(counted),
             qa.n_solutions, 100 * qa.flagged_fraction, qa.median_snr, 100 * qa.amp_scatter,
             qa.phase_scatter_deg, ",".join(qa.worst_antennas) or "-")
    return qa


def _table_reasons(t: TableQA, th: CalQAThresholds) -> list[str]:
    """Why one table fails, in words an operator can act on (empty when it passes)."""
    reasons = []
    worst = f" (worst antennas: {', '.join(t.worst_antennas)})" if t.worst_antennas else ""
    # A table with nothing unflagged is useless whatever the limit says.
    if t.flagged_fraction > th.max_flagged_fraction or t.flagged_fraction >= 1.0:
        reasons.append(f"{t.table_type}: {100 * t.flagged_fraction:.1f}% of solutions flagged "
                       f"(limit {100 * th.max_flagged_fraction:g}%)")
    if math.isfinite(t.median_snr) and t.median_snr < th.min_median_snr:
        reasons.append(f"{t.table_type}: median SNR {t.median_snr:.1f} (limit {th.min_median_snr:g})")
    if math.isfinite(t.amp_scatter) and t.amp_scatter > th.max_amp_scatter:
        reasons.append(f"{t.table_type}: amplitude scatter {100 * t.amp_scatter:.1f}% "
                       f"(limit {100 * th.max_amp_scatter:g}%){worst}")
    if math.isfinite(t.phase_scatter_deg) and t.phase_scatter_deg > th.max_phase_scatter_deg:
        reasons.append(f"{t.table_type}: phase scatter {t.phase_scatter_deg:.1f} deg "
                       f"(limit {th.max_phase_scatter_deg:g} deg){worst}")
    return reasons


def assess(tables: list[TableQA], thresholds: CalQAThresholds) -> tuple[str, list[str]]:
    """("good", []) when every table meets ``thresholds``, else ("failed", reasons).

    NaN numbers are not gated: scatter of K tables and of one G solution per
    antenna, SNR a table does not record. A table with every solution
    flagged, or no tables at all, is a failure: there is nothing to
    calibrate with."""
    if not tables:
        return "failed", ["no calibration tables to assess"]
    reasons = [r for t in tables for r in _table_reasons(t, thresholds)]
    return ("failed" if reasons else "good"), reasons


def qa_summary(tables: list[TableQA], thresholds: CalQAThresholds) -> dict[str, Any]:
    """JSON-serialisable status, reasons, per-table numbers and the thresholds used."""
    status, reasons = assess(tables, thresholds)
    return {"status": status, "reasons": reasons, "tables": [t.summary() for t in tables],
            "thresholds": thresholds.to_dict()}


# --------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------
POL_STYLES = (("-", "solid"), ("--", "dashed"), (":", "dotted"), ("-.", "dash-dot"))
POL_MARKERS = (("o", "circles"), ("s", "squares"), ("^", "triangles"), ("D", "diamonds"))


def _new_figure(height: float = 7.5) -> Any:
    """A Figure on its own Agg canvas: no pyplot, no global backend state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _antenna_colours(n: int) -> list[Any]:
    """Distinct colours for up to 20 antennas, a smooth colour ramp beyond."""
    import matplotlib

    if n <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(n)]
    return [matplotlib.colormaps["turbo"](i / (n - 1)) for i in range(n)]


def _save_atomic(fig: Any, out_png: Path) -> Path:
    """Write the PNG to a temporary name in the same directory, then rename it into place,
    so a reader (web page, publisher) never sees half a file."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out_png)
    finally:
        tmp.unlink(missing_ok=True)
    return out_png


def _plottable_antennas(cal: _CalTable, max_antennas: int | None = None) -> tuple[list[int], int]:
    """Antennas with any unflagged solution (the first ``max_antennas``) and how many there are."""
    ants = [a for a in sorted({int(x) for x in cal.antenna}) if not cal.flag[:, :, cal.antenna == a].all()]
    return (ants if max_antennas is None else ants[:max_antennas]), len(ants)


def _require_complex(cal: _CalTable, what: str) -> None:
    if not cal.is_complex:
        raise CalibrationError(cal.path, f"cannot plot {what}: not a complex gain table (FPARAM)")


def _finish(fig: Any, axes: Any, title: str, xlabel: str, n_ants: int) -> None:
    """Labels, phase range (never beyond +-180 deg), title and the antenna legend (outside, right)."""
    ax_amp, ax_ph = axes
    ax_amp.set_ylabel("amplitude")
    ax_amp.ticklabel_format(axis="y", useOffset=False)
    ax_ph.set_ylabel("phase (deg)")
    lo, hi = ax_ph.get_ylim()  # autoscaled, so small phase wander stays visible
    ax_ph.set_ylim(max(lo, -185.0), min(hi, 185.0))
    ax_ph.set_xlabel(xlabel)
    ax_amp.grid(alpha=0.3)
    ax_ph.grid(alpha=0.3)
    fig.suptitle(title, fontsize="medium")
    if n_ants:
        fig.legend(*ax_amp.get_legend_handles_labels(), loc="outside right upper", fontsize="small",
                   title="antenna", ncols=1 if n_ants <= 30 else 2)


def plot_bandpass(caltable: Path, out_png: Path, max_antennas: int = 24) -> Path:
    """Amplitude and phase vs frequency (MHz): colour = antenna, line style = polarisation.

    Flagged solutions are left out (gaps in the lines). Antennas without any
    unflagged solution (empty pads) are not drawn; of the others, the first
    ``max_antennas`` by index are, to keep the plot readable. Written
    atomically; returns ``out_png``."""
    cal = _read_caltable(Path(caltable))
    _require_complex(cal, "a bandpass")
    ants, n_with = _plottable_antennas(cal, max_antennas)
    fig = _new_figure()
    axes = fig.subplots(2, 1, sharex=True)
    npol = cal.values.shape[0]
    for colour, ant in zip(_antenna_colours(len(ants)), ants):
        for k, row in enumerate(np.nonzero(cal.antenna == ant)[0]):
            freq = cal.chan_freq_hz[int(cal.spw[row])] / 1e6
            for p in range(npol):
                v = np.where(cal.flag[p, :, row], np.nan, cal.values[p, :, row])
                style = {"color": colour, "lw": 1, "ls": POL_STYLES[p % 4][0]}
                axes[0].plot(freq, np.abs(v), label=_antenna_name(cal, ant) if k == p == 0 else None, **style)
                axes[1].plot(freq, np.degrees(np.angle(v)), **style)
    pols = ", ".join(f"pol {p} {POL_STYLES[p % 4][1]}" for p in range(npol))
    _finish(fig, axes, f"{cal.path.name}: bandpass of {len(ants)} of {n_with} antennas with solutions ({pols})",
            "frequency (MHz)", len(ants))
    return _save_atomic(fig, out_png)


def _time_axis(time_s: np.ndarray) -> tuple[np.ndarray, str]:
    """Times as minutes (spans under 3 h) or hours since the first solution, and the axis label."""
    t0 = float(np.min(time_s)) if time_s.size else 0.0
    start = (MJD_EPOCH + timedelta(seconds=t0)).strftime("%Y-%m-%d %H:%M:%S")
    if time_s.size and float(np.ptp(time_s)) >= 3 * 3600:
        return (time_s - t0) / 3600.0, f"hours since {start} UTC"
    return (time_s - t0) / 60.0, f"minutes since {start} UTC"


def plot_gains(caltable: Path, out_png: Path) -> Path:
    """Amplitude and phase vs time per antenna: colour = antenna, marker = polarisation.

    Every solution is a marker (lines join consecutive solutions), so a table
    with one solution per antenna (``solint='inf'``) still shows every
    antenna's gain. Only the first channel is drawn (G tables have one).
    Written atomically; returns ``out_png``."""
    cal = _read_caltable(Path(caltable))
    _require_complex(cal, "gains")
    ants, _ = _plottable_antennas(cal)
    x, xlabel = _time_axis(cal.time_s)
    fig = _new_figure()
    axes = fig.subplots(2, 1, sharex=True)
    npol = cal.values.shape[0]
    for colour, ant in zip(_antenna_colours(len(ants)), ants):
        rows = np.nonzero(cal.antenna == ant)[0]
        rows = rows[np.argsort(cal.time_s[rows], kind="stable")]
        for p in range(npol):
            v = np.where(cal.flag[p, 0, rows], np.nan, cal.values[p, 0, rows])
            style = {"color": colour, "marker": POL_MARKERS[p % 4][0], "ms": 5, "lw": 1,
                         "ls": POL_STYLES[p % 4][0] if rows.size > 1 else "none"}
            axes[0].plot(x[rows], np.abs(v), label=_antenna_name(cal, ant) if p == 0 else None, **style)
            axes[1].plot(x[rows], np.degrees(np.angle(v)), **style)
    pols = ", ".join(f"pol {p} {POL_MARKERS[p % 4][1]}" for p in range(npol))
    _finish(fig, axes, f"{cal.path.name}: gains of {len(ants)} antennas with solutions ({pols})",
            xlabel, len(ants))
    return _save_atomic(fig, out_png)
