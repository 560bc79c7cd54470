"""Generic calibration steps: thin wrappers around casatasks for any interferometer MS.

The DSA-110 solve (:mod:`.solve`) and the VLA proof on NGC 5921
(:mod:`.ngc5921`) are built from the same small steps, so a step that is
proven on real VLA data with a published answer is the step DSA-110 uses.

Every wrapper does three things CASA does not do reliably by itself:

* fails loudly: CASA tasks sometimes raise, sometimes only log SEVERE and
  return; each wrapper turns both into :class:`CalibrationError` naming the
  MeasurementSet or table and the reason;
* checks its product: a solve that "succeeds" without writing its table is an
  error here;
* is rerunnable: caltables are removed before they are solved again (unless
  appending), so a rerun never mixes old and new solutions.

``prior`` arguments are sequences of ``(type, path)`` tables applied on the fly
in the given order, each interpolated as :data:`.apply.INTERP` says for its
type, the same interpolation :func:`.apply.apply_calibration` uses later.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import casa_env
from ..errors import CalibrationError
from .apply import INTERP, cross_flagged_fraction

log = logging.getLogger(__name__)

TYPE_ORDER = ("K", "B", "G")  # solve and apply order: delays, bandpass, gains
RFI_METHODS = ("auto", "aoflagger", "casa", "none")
# flagdata calls data columns by short names; the MS (and AOFlagger) by full ones.
_FLAGDATA_COLUMN = {"DATA": "DATA", "CORRECTED_DATA": "CORRECTED", "MODEL_DATA": "MODEL"}
_STDERR_LINES = 5  # lines of AOFlagger's stderr quoted in an error

Prior = Sequence[tuple[str, str | Path]]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _require_ms(ms: Path) -> Path:
    """Fail early with a clear message: CASA's own (an AssertionError) names no step."""
    ms = Path(ms)
    if not (ms / "table.dat").exists():
        raise CalibrationError(ms, "MeasurementSet does not exist")
    return ms


def _run(path: Path | str, what: str, task: Callable[..., Any], **kwargs: Any) -> Any:
    """Call a CASA task; any exception becomes a CalibrationError about ``path``."""
    try:
        return task(**kwargs)
    except Exception as exc:  # CASA raises RuntimeError, AssertionError, ValueError...
        raise CalibrationError(path, f"{what} failed: {exc}".strip()) from exc


def _prior_kwargs(prior: Prior) -> dict[str, list[str]]:
    """gaintable/interp arguments for tables applied on the fly, in the given order."""
    tables, interp = [], []
    for ttype, path in prior:
        key = str(ttype).upper()
        if key not in INTERP:
            raise CalibrationError(path, f"unknown calibration table type {ttype!r} (known: {sorted(INTERP)})")
        if not (Path(path) / "table.dat").exists():
            raise CalibrationError(path, f"prior {key} calibration table does not exist")
        tables.append(str(path))
        interp.append(INTERP[key])
    return {"gaintable": tables, "interp": interp}


def _remove_table(table: Path) -> None:
    """Remove a caltable so that a rerun rewrites it instead of mixing solutions."""
    if table.exists():
        shutil.rmtree(table)


def _check_written(ms: Path, table: Path, what: str) -> Path:
    """A solve that returns without writing rows is a failure (CASA may only log it)."""
    if not (table / "table.dat").exists():
        raise CalibrationError(ms, f"{what} wrote no table {table}")
    tb = casa_env.casatools().table()
    try:
        tb.open(str(table))
        nrow = tb.nrows()
        tb.close()
    finally:
        tb.done()
    if nrow == 0:
        raise CalibrationError(table, f"{what} wrote a table with no solutions")
    return table


def _solve(what: str, task_name: str, ms: Path, caltable: Path, prior: Prior, *,
           append: bool = False, **kwargs: Any) -> Path:
    """Shared body of the solves: check inputs, clear the table, run, check the product."""
    ms, caltable = _require_ms(ms), Path(caltable)
    prior_kwargs = _prior_kwargs(prior)
    if not append:
        _remove_table(caltable)
    task = getattr(casa_env.casatasks(), task_name)
    try:
        _run(ms, f"{what} solve into {caltable.name}", task, vis=str(ms), caltable=str(caltable),
             append=append, **prior_kwargs, **kwargs)
        _check_written(ms, caltable, f"{what} solve")
    except CalibrationError:
        if not append:  # never leave a half-written table that looks like a solution
            _remove_table(caltable)
        raise
    log.info("%s: %s solved into %s (prior: %s)", ms.name, what, caltable.name,
             ", ".join(f"{t}={Path(p).name}" for t, p in prior) or "none")
    return caltable


# --------------------------------------------------------------------------
# import and flagging
# --------------------------------------------------------------------------
def import_uvfits(fits: Path, ms: Path) -> Path:
    """Convert UVFITS to a MeasurementSet at ``ms``; an existing ``ms`` is returned as is.

    importuvfits writes into a temporary name beside ``ms`` that is renamed into
    place at the end, so a crash or a concurrent import never leaves a
    half-written MS under the final name."""
    fits, ms = Path(fits), Path(ms)
    if (ms / "table.dat").exists():
        return ms
    if not fits.is_file():
        raise CalibrationError(fits, "UVFITS file does not exist")
    ms.parent.mkdir(parents=True, exist_ok=True)
    tmp = ms.with_name(f".{ms.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _run(fits, "importuvfits", casa_env.casatasks().importuvfits, fitsfile=str(fits), vis=str(tmp))
        if not (tmp / "table.dat").exists():
            raise CalibrationError(fits, f"importuvfits wrote no MeasurementSet {tmp}")
        _move_into_place(tmp, ms)
    finally:
        for leftover in (tmp, Path(f"{tmp}.flagversions")):
            if leftover.exists():
                shutil.rmtree(leftover)
    log.info("imported %s into %s", fits.name, ms)
    return ms


def _move_into_place(tmp: Path, ms: Path) -> None:
    """Rename ``tmp`` (and its flag versions) to ``ms``; losing a race to another import is fine."""
    try:
        os.rename(tmp, ms)
    except OSError as exc:
        if not (ms / "table.dat").exists():
            raise CalibrationError(ms, f"cannot move the imported MeasurementSet into place: {exc}") from exc
        return  # another process imported the same file first; keep its MS
    versions = Path(f"{tmp}.flagversions")
    if versions.exists() and not Path(f"{ms}.flagversions").exists():
        os.rename(versions, f"{ms}.flagversions")


def flag_autocorrelations(ms: Path) -> None:
    """Flag every autocorrelation: they carry total power, not fringes, and would bias solves."""
    ms = _require_ms(ms)
    _run(ms, "flagdata autocorr", casa_env.casatasks().flagdata, vis=str(ms), mode="manual",
         autocorr=True, flagbackup=False)
    log.info("%s: autocorrelations flagged", ms.name)


def flag_rfi(ms: Path, method: str = "auto", datacolumn: str = "DATA") -> str:
    """Flag RFI in ``datacolumn``; return the method used ("aoflagger", "tfcrop+rflag", "none").

    ``auto`` prefers AOFlagger (faster and better on wide bands) when the
    ``aoflagger`` executable is on PATH, and falls back to CASA's tfcrop then
    rflag otherwise. The cross-correlation flagged fraction is logged before and
    after so an over-eager flagger is visible in the task log."""
    if method not in RFI_METHODS:
        raise ValueError(f"RFI method {method!r} is not one of {RFI_METHODS}")
    ms = _require_ms(ms)
    if method == "none":
        return "none"
    aoflagger = shutil.which("aoflagger")
    if method == "aoflagger" and aoflagger is None:
        raise CalibrationError(ms, "RFI method 'aoflagger' requested but the aoflagger executable is not on PATH")
    column = datacolumn.upper()
    if column not in _FLAGDATA_COLUMN:
        column = f"{column}_DATA"
    if column not in _FLAGDATA_COLUMN:
        raise ValueError(f"data column {datacolumn!r} is not one of {sorted(_FLAGDATA_COLUMN)}")
    before = cross_flagged_fraction(ms)
    if aoflagger is not None and method in ("auto", "aoflagger"):
        used = "aoflagger"
        _run_aoflagger(aoflagger, ms, column)
    else:
        used = "tfcrop+rflag"
        _run_tfcrop_rflag(ms, _FLAGDATA_COLUMN[column])
    after = cross_flagged_fraction(ms)
    log.info("%s: RFI flagging with %s on %s: cross-correlations flagged %.2f%% before, %.2f%% after",
             ms.name, used, column, 100 * before, 100 * after)
    return used


def _run_aoflagger(exe: str, ms: Path, column: str) -> None:
    """Run AOFlagger with its default strategy for the telescope named in the MS."""
    proc = subprocess.run([exe, "-column", column, str(ms)], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-_STDERR_LINES:]
        raise CalibrationError(ms, f"aoflagger exited with status {proc.returncode}: " + " | ".join(tail))


def _run_tfcrop_rflag(ms: Path, column: str) -> None:
    """tfcrop catches strong, bursty RFI; rflag then catches the weaker outliers it leaves."""
    flagdata = casa_env.casatasks().flagdata
    for mode in ("tfcrop", "rflag"):
        _run(ms, f"flagdata {mode}", flagdata, vis=str(ms), mode=mode, datacolumn=column,
             action="apply", flagbackup=False)


# --------------------------------------------------------------------------
# flux density scale
# --------------------------------------------------------------------------
def setjy_standard(ms: Path, field: str, standard: str = "Perley-Butler 2017") -> dict[int, float]:
    """Write the ``standard`` model of a flux calibrator ``field`` into MODEL_DATA.

    Returns ``{spw_id: Stokes I in Jy}`` as setjy reports it. ``scalebychan``
    gives every channel its own flux (the spectral index matters across a wide
    band); ``usescratch`` makes the model a real column that every later solve
    sees. setjy quietly uses 1 Jy for a source its standard does not know,
    which would silently mis-scale everything; that is an error here."""
    ms = _require_ms(ms)
    result = _run(ms, f"setjy {standard!r} on field {field!r}", casa_env.casatasks().setjy, vis=str(ms),
                  field=field, standard=standard, usescratch=True, scalebychan=True)
    fields = {k: v for k, v in (result or {}).items() if isinstance(v, dict) and "fieldName" in v}
    if len(fields) != 1:
        raise CalibrationError(ms, f"setjy field {field!r} matched {len(fields)} fields, need exactly one")
    (info,) = fields.values()
    fluxes = {int(spw): [float(x) for x in v["fluxd"]] for spw, v in info.items() if str(spw).isdigit()}
    if not fluxes:
        raise CalibrationError(ms, f"setjy set no flux density for field {info['fieldName']!r}")
    if all(iquv == [1.0, 0.0, 0.0, 0.0] for iquv in fluxes.values()):
        raise CalibrationError(ms, f"flux standard {standard!r} does not know field {info['fieldName']!r} "
                                   "(setjy fell back to 1 Jy)")
    log.info("%s: setjy %s on %s: %s", ms.name, standard, info["fieldName"],
             ", ".join(f"spw {s}: {f[0]:.4f} Jy" for s, f in sorted(fluxes.items())))
    return {spw: iquv[0] for spw, iquv in sorted(fluxes.items())}


# --------------------------------------------------------------------------
# solves
# --------------------------------------------------------------------------
def solve_delay(ms: Path, caltable: Path, refant: str, *, field: str = "", solint: str = "inf",
                minsnr: float = 3.0, uvrange: str = "", prior: Prior = ()) -> Path:
    """Solve antenna delays (gaincal ``gaintype='K'``), to take out phase slopes
    across the band before a bandpass is averaged over it."""
    return _solve("delay (K)", "gaincal", ms, caltable, prior, gaintype="K", field=field, solint=solint,
                  refant=refant, minsnr=minsnr, uvrange=uvrange)


def solve_bandpass(ms: Path, caltable: Path, refant: str, *, field: str = "", solint: str = "inf",
                   minsnr: float = 3.0, uvrange: str = "", solnorm: bool = False, combine: str = "scan",
                   prior: Prior = ()) -> Path:
    """Solve a per-channel bandpass (``bandtype='B'``).

    ``solnorm=False`` by default so the bandpass keeps the absolute amplitude
    scale set by the model; ``combine='scan'`` gives one bandpass from every scan
    of the calibrator, which has more signal than any one scan."""
    return _solve("bandpass (B)", "bandpass", ms, caltable, prior, bandtype="B", field=field, solint=solint,
                  refant=refant, minsnr=minsnr, uvrange=uvrange, solnorm=solnorm, combine=combine)


def solve_gains(ms: Path, caltable: Path, refant: str, *, field: str = "", solint: str = "inf",
                calmode: str = "ap", minsnr: float = 3.0, uvrange: str = "", combine: str = "",
                prior: Prior = (), append: bool = False) -> Path:
    """Solve complex gains per antenna (``gaintype='G'``), one per scan with the defaults.

    ``append=True`` adds solutions to an existing table (e.g. another calibrator
    field) instead of rewriting it."""
    return _solve("gain (G)", "gaincal", ms, caltable, prior, append=append, gaintype="G", field=field,
                  solint=solint, calmode=calmode, refant=refant, minsnr=minsnr, uvrange=uvrange,
                  combine=combine)


def fluxscale(ms: Path, caltable: Path, fluxtable: Path, reference: str | list[str],
              transfer: list[str]) -> dict[str, dict]:
    """Bootstrap the flux density of the ``transfer`` calibrators from ``reference``.

    Gains solved against a 1 Jy default model are too large by sqrt(S); fluxscale
    compares them with the reference field's gains and writes ``fluxtable``, the
    gains rescaled. Returns ``{field_name: {"flux_jy", "flux_err_jy",
    "spw_flux_jy", ["spidx"]}}`` where ``flux_jy`` is Stokes I in spw 0.

    CASA's return dict is keyed by field id strings; each entry holds
    ``fieldName``, per-spw entries keyed by spw id strings with ``fluxd`` and
    ``fluxdErr`` as [I, Q, U, V] arrays (-1 where the spw had no solutions),
    and the fitted spectral index ``spidx``; top-level ``freq``, ``spwID`` and
    ``spwName`` describe the spws."""
    ms, caltable, fluxtable = _require_ms(ms), Path(caltable), Path(fluxtable)
    if not (caltable / "table.dat").exists():
        raise CalibrationError(caltable, "gain table for fluxscale does not exist")
    reference = [reference] if isinstance(reference, str) else list(reference)
    _remove_table(fluxtable)
    result = _run(caltable, f"fluxscale {reference} -> {list(transfer)}", casa_env.casatasks().fluxscale,
                  vis=str(ms), caltable=str(caltable), fluxtable=str(fluxtable), reference=reference,
                  transfer=list(transfer))
    _check_written(ms, fluxtable, "fluxscale")
    out = {info["fieldName"]: _parse_fluxscale_field(caltable, info)
           for key, info in (result or {}).items() if str(key).isdigit() and isinstance(info, dict)}
    if not out:
        raise CalibrationError(caltable, f"fluxscale derived no flux density for transfer fields {list(transfer)}")
    for name, flux in out.items():
        log.info("%s: fluxscale %s = %.5f +/- %.5f Jy (spw 0)", ms.name, name, flux["flux_jy"], flux["flux_err_jy"])
    return out


def _parse_fluxscale_field(caltable: Path, info: dict[str, Any]) -> dict[str, Any]:
    """One transfer field of fluxscale's return dict -> flux_jy / flux_err_jy (spw 0, Stokes I)."""
    spw_flux = {int(k): (float(v["fluxd"][0]), float(v["fluxdErr"][0]))
                for k, v in info.items() if str(k).isdigit() and isinstance(v, dict)}
    if spw_flux.get(0, (-1.0, 0.0))[0] <= 0:
        raise CalibrationError(caltable, f"fluxscale derived no spw 0 flux density for {info['fieldName']!r}")
    parsed: dict[str, Any] = {
        "flux_jy": spw_flux[0][0],
        "flux_err_jy": spw_flux[0][1],
        "spw_flux_jy": {spw: f for spw, (f, _) in sorted(spw_flux.items()) if f > 0},
    }
    if "spidx" in info:
        parsed["spidx"] = [float(x) for x in info["spidx"]]
    return parsed
