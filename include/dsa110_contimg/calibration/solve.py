"""Calibration solve on a calibrator transit: delay (K, optional), bandpass (B), gains (G).

Two kinds of solve share one recipe:

* ``bandpass`` (daily, the bandpass DAG): K (when asked) -> B -> G;
* ``gains`` (hourly, a group run whose data hold a calibrator transit): G
  only, on top of the K/B of the bandpass set in force (``prior``).

The recipe, on a scratch copy so the input MS stays bit-identical (the
``group`` DAG may image the same MS at the same time, and a failed solve never
leaves anything half-written):

1. phase-shift to the calibrator (``phaseshift``) — the copy is the shifted MS;
2. flag autocorrelations, then RFI (AOFlagger when installed, else tfcrop+rflag);
3. set the drift-scan model (:mod:`.model`);
4. solve, measure QA (:mod:`.qa`), draw the QA plots;
5. rename tables and plots into ``out_dir``.

A set whose QA fails is still written (an operator wants to look at it) but
its result says ``qa_status='failed'``; the caller registers it as failed so
it never enters an apply list.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import casa_env
from ..errors import CalibrationError
from . import steps
from .apply import cross_flagged_fraction
from .model import POINTING_DEC_KEYWORD, calibrator_beam, read_ms_basics, set_calibrator_model
from .qa import CalQAThresholds, assess, plot_bandpass, plot_gains, qa_summary, table_qa
from .refant import antennas_with_data, pick_refant

log = logging.getLogger(__name__)

MIN_BEAM = 0.05  # calibrator must be at least this far up the beam at some time
KINDS = ("bandpass", "gains")
FLAGGING = ("auto", "aoflagger", "casa", "none")


@dataclass(frozen=True)
class CalSolveParams:
    """Parameters of a calibration solve (defaults run the demo).

    ``refant`` None picks an antenna with data near the array centre;
    ``uvrange`` is a CASA uv-range selection ('' = all baselines);
    ``flagging`` chooses the RFI flagger; the ``max_*``/``min_*`` fields are
    the QA gates (:class:`.qa.CalQAThresholds`)."""

    refant: str | None = None
    uvrange: str = ""
    minsnr: float = 3.0
    gain_solint: str = "inf"
    bandpass_solint: str = "inf"
    validity_hours: float = 24.0
    solve_delay: bool = False
    flagging: str = "auto"
    phase_shift: bool = True
    max_flagged_fraction: float = 0.30
    min_median_snr: float = 5.0
    max_amp_scatter: float = 0.10
    max_phase_scatter_deg: float = 10.0

    def __post_init__(self) -> None:
        if self.minsnr < 0:
            raise ValueError(f"minsnr {self.minsnr} must be >= 0")
        if self.validity_hours <= 0:
            raise ValueError(f"validity_hours {self.validity_hours} must be positive")
        if self.flagging not in FLAGGING:
            raise ValueError(f"flagging {self.flagging!r} not one of {', '.join(FLAGGING)}")
        if not 0.0 <= self.max_flagged_fraction <= 1.0:
            raise ValueError(f"max_flagged_fraction {self.max_flagged_fraction} outside [0, 1]")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "CalSolveParams":
        """Build from a dict (config, DAG Params); unknown keys are an error."""
        d = dict(d or {})
        types = {f.name: f.type for f in fields(cls)}
        unknown = set(d) - set(types)
        if unknown:
            raise ValueError(f"unknown calibration parameters: {sorted(unknown)}")
        d["refant"] = None if d.get("refant") in ("", None) else str(d["refant"])
        for k, v in list(d.items()):
            if k == "refant":
                continue
            kind = types[k]
            d[k] = _as_bool(v) if kind == "bool" else float(v) if kind == "float" else str(v)
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def thresholds(self) -> CalQAThresholds:
        return CalQAThresholds(max_flagged_fraction=self.max_flagged_fraction, min_median_snr=self.min_median_snr,
                               max_amp_scatter=self.max_amp_scatter,
                               max_phase_scatter_deg=self.max_phase_scatter_deg)


def _as_bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


@dataclass(frozen=True)
class CalSolveResult:
    """What a solve produced; JSON-serialisable through :meth:`to_dict`."""

    ms: str
    tables: list[tuple[str, str]]  # (type, path) in apply order
    refant: str
    calibrator: str
    mid_mjd: float
    flagged_fraction: float  # worst table: flagged / all solutions of antennas with data
    n_solutions: int  # unflagged solution values (antenna x pol x channel/time), all tables
    peak_beam: float  # largest beam attenuation at the calibrator during the MS (band centre)
    seconds: float
    kind: str = "bandpass"
    qa_status: str = "good"
    qa: dict = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    casa_version: str = ""
    flag_method: str = ""
    data_flagged_fraction: float = 0.0  # cross-correlations flagged before solving
    model_flux: str = ""  # where the calibrator's spectrum came from

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tables"] = [list(t) for t in self.tables]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CalSolveResult":
        d = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        d["tables"] = [(str(t), str(p)) for t, p in d["tables"]]
        return cls(**d)


def solve_calibration(ms: Path, calibrator, out_dir: Path, params: CalSolveParams | None = None,
                      name: str | None = None, *, kind: str = "bandpass",
                      prior: Sequence[tuple[str, str]] = ()) -> CalSolveResult:
    """Solve ``kind`` ('bandpass': [K] B G; 'gains': G on ``prior``) on ``calibrator`` in ``ms``.

    Writes ``<name>.<type>`` tables and ``<name>.<type>.png`` QA plots in
    ``out_dir`` (``name`` defaults to the MS stem). Raises CalibrationError
    when the calibrator is outside the beam for the whole MS, when a prior
    table is missing, or when CASA fails; a solve that runs but fails QA
    returns ``qa_status='failed'`` with the reasons in ``qa``."""
    t0 = time.monotonic()
    params = params or CalSolveParams()
    ms, out_dir = Path(ms), Path(out_dir)
    _check_inputs(ms, kind, prior)
    name = _safe_name(name or ms.stem)
    basics = read_ms_basics(ms)
    peak_beam = _calibrator_peak_beam(ms, calibrator, basics)

    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        scratch = _scratch_copy(ms, work / "scratch.ms", calibrator, params.phase_shift)
        counts = antennas_with_data(scratch)
        refant = params.refant or pick_refant(scratch, counts, label=ms.name)
        flag_method, data_flagged = _flag(scratch, params.flagging)
        model_flux = set_calibrator_model(scratch, calibrator, read_ms_basics(scratch), work, label=ms.name)
        made = _solve_tables(scratch, work, name, kind, refant, params, prior)
        qas = [table_qa(path, ttype, set(counts)) for ttype, path in made]
        status, reasons = assess(qas, params.thresholds())
        plots = _plots(made, work)
        final = [(t, str(_move_into_place(p, out_dir / p.name))) for t, p in made]
        final_plots = [str(_move_into_place(p, out_dir / p.name)) for p in plots]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    qa = qa_summary(qas, params.thresholds())
    worst = max((q.flagged_fraction for q in qas), default=1.0)
    n_good = sum(int(round(q.n_solutions * (1.0 - q.flagged_fraction))) for q in qas)
    seconds = time.monotonic() - t0
    log.info("%s: %s solve %s on %s, refant %s, %d good solutions, worst flagged %.1f%%, QA %s%s, %.1f s",
             ms.name, kind, "+".join(t for t, _ in final), calibrator.name, refant, n_good, 100 * worst, status,
             f" ({'; '.join(reasons)})" if reasons else "", seconds)
    return CalSolveResult(ms=str(ms), tables=final, refant=refant, calibrator=str(calibrator.name),
                          mid_mjd=basics["mid_mjd"], flagged_fraction=float(worst), n_solutions=int(n_good),
                          peak_beam=peak_beam, seconds=float(seconds), kind=kind, qa_status=status, qa=qa,
                          plots=final_plots, params=params.to_dict(), casa_version=casa_version(),
                          flag_method=flag_method, data_flagged_fraction=float(data_flagged),
                          model_flux=model_flux)


def casa_version() -> str:
    """The casatools version string, recorded with every calibration set."""
    return str(casa_env.casatools().version_string())


# --------------------------------------------------------------------------
# the recipe's steps
# --------------------------------------------------------------------------
def _check_inputs(ms: Path, kind: str, prior: Sequence[tuple[str, str]]) -> None:
    if kind not in KINDS:
        raise ValueError(f"calibration kind {kind!r} not one of {', '.join(KINDS)}")
    if not (ms / "table.dat").exists():
        raise CalibrationError(ms, "MeasurementSet does not exist")
    if kind == "gains" and not any(t == "B" for t, _ in prior):
        raise CalibrationError(ms, "a gains solve needs the bandpass in force (no B table in prior)")
    for ttype, path in prior:
        if not (Path(path) / "table.dat").exists():
            raise CalibrationError(path, f"prior {ttype} calibration table is missing")


def _calibrator_peak_beam(ms: Path, calibrator, basics: dict[str, Any]) -> float:
    """Largest beam response at the calibrator during the MS; an error when it never enters the beam."""
    mid_freq = float(np.median(basics["freqs_hz"]))
    beam = calibrator_beam(basics["times_s"], np.array([mid_freq]), calibrator.ra_deg, calibrator.dec_deg,
                           basics["pointing_dec_rad"])[:, 0]
    peak = float(beam.max())
    if peak < MIN_BEAM:
        raise CalibrationError(ms, f"calibrator {calibrator.name} is not in the field: beam at its position "
                                   f"peaks at {peak:.3g} (< {MIN_BEAM}) during the MS")
    log.info("%s: calibrator %s beam %.3f-%.3f at %.1f MHz", ms.name, calibrator.name, beam.min(), peak,
             mid_freq / 1e6)
    return peak


def _scratch_copy(ms: Path, scratch: Path, calibrator, phase_shift: bool) -> Path:
    """A private copy of ``ms``, phase-shifted to the calibrator when asked."""
    if not phase_shift:
        shutil.copytree(ms, scratch, symlinks=True)
        return scratch
    try:
        casa_env.casatasks().phaseshift(vis=str(ms), outputvis=str(scratch), datacolumn="data",
                                        phasecenter=f"J2000 {calibrator.ra_deg}deg {calibrator.dec_deg}deg")
    except Exception as exc:  # CASA raises RuntimeError and friends
        raise CalibrationError(ms, f"phaseshift to {calibrator.name} failed: {exc}") from exc
    if not (scratch / "table.dat").exists():
        raise CalibrationError(ms, f"phaseshift to {calibrator.name} wrote no MeasurementSet")
    _copy_keywords(ms, scratch, (POINTING_DEC_KEYWORD,))
    return scratch


def _copy_keywords(src: Path, dst: Path, names: Sequence[str]) -> None:
    """Main-table keywords phaseshift does not carry over (the pointing declination)."""
    tb = casa_env.casatools().table()
    try:
        tb.open(str(src))
        values = {k: tb.getkeyword(k) for k in names if k in tb.keywordnames()}
        tb.close()
        tb.open(str(dst), nomodify=False)
        for k, v in values.items():
            tb.putkeyword(k, v)
        tb.close()
    finally:
        tb.done()


def _flag(scratch: Path, method: str) -> tuple[str, float]:
    """Autocorrelations, then RFI; returns (method used, cross-correlation flagged fraction)."""
    steps.flag_autocorrelations(scratch)
    used = steps.flag_rfi(scratch, method)
    return used, cross_flagged_fraction(scratch)


def _solve_tables(scratch: Path, work: Path, name: str, kind: str, refant: str, params: CalSolveParams,
                  prior: Sequence[tuple[str, str]]) -> list[tuple[str, Path]]:
    """Run the solvers of ``kind``; each uses the tables before it (and ``prior``) on the fly."""
    common = dict(refant=refant, minsnr=params.minsnr, uvrange=params.uvrange)
    made: list[tuple[str, Path]] = []
    applied = [(str(t), str(p)) for t, p in prior]
    if kind == "bandpass":
        if params.solve_delay:
            made.append(("K", steps.solve_delay(scratch, work / f"{name}.K", prior=list(applied), **common)))
            applied.append(("K", str(made[-1][1])))
        made.append(("B", steps.solve_bandpass(scratch, work / f"{name}.B", solint=params.bandpass_solint,
                                               solnorm=False, combine="scan", prior=list(applied), **common)))
        applied.append(("B", str(made[-1][1])))
    made.append(("G", steps.solve_gains(scratch, work / f"{name}.G", solint=params.gain_solint, calmode="ap",
                                        combine="scan", prior=list(applied), **common)))
    return made


def _plots(made: list[tuple[str, Path]], work: Path) -> list[Path]:
    """QA plots: bandpass amplitude/phase per antenna, gain amplitude/phase versus time."""
    out = []
    for ttype, path in made:
        if ttype == "B":
            out.append(plot_bandpass(path, work / f"{path.name}.png"))
        elif ttype == "G":
            out.append(plot_gains(path, work / f"{path.name}.png"))
    return out


def _safe_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", stem)


def _move_into_place(src: Path, dst: Path) -> Path:
    """Rename a table directory or file over ``dst`` (the old one moved aside, then removed)."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(dst, old)
    os.rename(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    return dst
