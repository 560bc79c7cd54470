"""The two imagers behind one set of choices.

``ImagerSetup`` is everything an imager is told; ``tclean_kwargs`` and
``wsclean_command`` translate it, and nothing else reaches either imager,
so the two backends cannot drift apart silently (tests compare the two
translations field by field). ``run_tclean`` / ``run_wsclean`` run them and
return the restored image and the PSF (FITS, in the work directory)."""
from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import casa_env
from ..errors import ImagingError

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 25


@dataclass(frozen=True)
class ImagerSetup:
    """The imaging choices, identical for both backends (see ImagingParams).

    restoring_beam is (bmaj arcsec, bmin arcsec, bpa deg); threshold_jy None
    means the automatic threshold at ``nsigma`` x the residual's robust rms."""

    datacolumn: str  # 'data' or 'corrected'
    imsize: int
    cell_arcsec: float
    weighting: str
    robust: float
    niter: int
    gain: float
    mgain: float
    threshold_jy: float | None
    nsigma: float
    restoring_beam: tuple[float, float, float]
    gridder: str = "wproject"  # tclean's name; WSClean always uses its w-gridder
    wprojplanes: int = -1
    deconvolver: str = "hogbom"
    stokes: str = "I"
    specmode: str = "mfs"
    wgridder_accuracy: float = 1e-3  # WSClean's w-gridder only (tclean's gridding accuracy is fixed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tclean_kwargs(setup: ImagerSetup, vis: Path, imagename: Path) -> dict[str, Any]:
    """tclean's arguments for ``setup`` (the primary beam is ours: no pb mask/correction)."""
    bmaj, bmin, bpa = setup.restoring_beam
    auto = setup.threshold_jy is None
    return {
        "vis": str(vis),
        "imagename": str(imagename),
        "datacolumn": setup.datacolumn,
        "specmode": setup.specmode,
        "nterms": 1,
        "stokes": setup.stokes,
        "imsize": [setup.imsize, setup.imsize],
        "cell": f"{setup.cell_arcsec}arcsec",
        "gridder": setup.gridder,
        "wprojplanes": setup.wprojplanes,
        "pblimit": -1e-4,
        "deconvolver": setup.deconvolver,
        "weighting": setup.weighting,
        "robust": setup.robust,
        "niter": setup.niter,
        "gain": setup.gain,
        "threshold": "0Jy" if auto else f"{setup.threshold_jy}Jy",
        "nsigma": setup.nsigma if auto else 0.0,
        "restoringbeam": [f"{bmaj}arcsec", f"{bmin}arcsec", f"{bpa}deg"],
        "interactive": False,
        "savemodel": "none",
        "pbcor": False,
    }


def wsclean_command(setup: ImagerSetup, exe: str, ms: Path, name: Path, threads: int) -> list[str]:
    """WSClean's command line for ``setup``.

    Hogbom is WSClean's deconvolver unless multiscale is asked for, so no
    option names it; Stokes I MFS is one image without ``-channels-out``."""
    if setup.deconvolver != "hogbom" or setup.specmode != "mfs":
        raise ValueError("WSClean is driven here for Hogbom MFS only")
    bmaj, bmin, bpa = setup.restoring_beam
    col = {"data": "DATA", "corrected": "CORRECTED_DATA"}[setup.datacolumn]
    cmd = [exe, "-name", str(name), "-size", str(setup.imsize), str(setup.imsize),
           "-scale", f"{setup.cell_arcsec}asec", "-pol", setup.stokes, "-use-wgridder",
           "-data-column", col, "-niter", str(setup.niter), "-gain", str(setup.gain),
           "-mgain", str(setup.mgain), "-no-update-model-required",
           "-wgridder-accuracy", f"{setup.wgridder_accuracy:g}",
           "-beam-shape", f"{bmaj}asec", f"{bmin}asec", f"{bpa}deg"]
    if setup.weighting == "briggs":
        cmd += ["-weight", "briggs", str(setup.robust)]
    else:
        cmd += ["-weight", setup.weighting]
    if setup.threshold_jy is not None:
        cmd += ["-threshold", str(setup.threshold_jy)]
    else:
        cmd += ["-auto-threshold", str(setup.nsigma)]
    return cmd + ["-j", str(threads), str(ms)]


# --------------------------------------------------------------------------
# versions (for the FITS headers)


def contimg_version() -> str:
    from .. import __version__

    return __version__


def casatools_version() -> str:
    """Installed casatools version, read from package metadata (no CASA import)."""
    try:
        return metadata.version("casatools")
    except metadata.PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=4)
def wsclean_version(exe: str | None = None) -> str:
    """'3.1.0' from ``wsclean --version`` ('unknown' when it cannot be read)."""
    exe = exe or shutil.which("wsclean")
    if exe is None:
        return "unknown"
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    m = re.search(r"WSClean version\s+(\S+)", out)
    return m.group(1) if m else "unknown"


# --------------------------------------------------------------------------
# running


def tail(path: Path | None, n: int = LOG_TAIL_LINES) -> str:
    if path is None or not Path(path).exists():
        return "(no log)"
    lines = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:])


def run_tclean(setup: ImagerSetup, ms: Path, work: Path, name: str, logfile: Path) -> tuple[Path, Path]:
    """Run tclean; export and return (restored image FITS, PSF FITS) in ``work``."""
    cts = casa_env.casatasks()
    casalog = cts.casalog
    previous_log = casalog.logfile()
    casalog.setlogfile(str(logfile))
    imagename = work / name
    kwargs = tclean_kwargs(setup, ms, imagename)
    casalog.post(f"contimg tclean arguments: {kwargs}")
    try:
        ret = cts.tclean(**kwargs)
        if not Path(f"{imagename}.image").exists():
            raise RuntimeError(f"tclean wrote no restored image (returned {ret!r})")
        out = []
        for ext in ("image", "psf"):
            fits_out = work / f"{name}-{ext}.fits"
            cts.exportfits(imagename=f"{imagename}.{ext}", fitsimage=str(fits_out), overwrite=True, velocity=False)
            if not fits_out.exists():
                raise RuntimeError(f"exportfits wrote no {ext}")
            out.append(fits_out)
    except Exception as exc:
        raise ImagingError(ms, f"tclean failed: {exc}\n--- CASA log tail ---\n{tail(logfile)}") from exc
    finally:
        try:
            casalog.setlogfile(previous_log)
        except Exception:  # pragma: no cover - restoring the log is best effort
            pass
    return out[0], out[1]


def run_wsclean(setup: ImagerSetup, ms: Path, work: Path, name: str, logfile: Path,
                threads: int | None = None) -> tuple[Path, Path]:
    """Run WSClean; return (restored image FITS, PSF FITS) in ``work``."""
    exe = shutil.which("wsclean")
    if exe is None:
        raise ImagingError(ms, "wsclean is not on PATH")
    cmd = wsclean_command(setup, exe, ms, work / name, threads or os.cpu_count() or 1)
    log.info("running %s", " ".join(cmd))
    with open(logfile, "w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=work, check=False)
    image, psf = work / f"{name}-image.fits", work / f"{name}-psf.fits"
    if proc.returncode != 0 or not image.exists():
        raise ImagingError(
            ms,
            f"wsclean failed (exit {proc.returncode}){'' if image.exists() else ', no image written'}"
            f"\n--- wsclean log tail ---\n{tail(logfile)}",
        )
    return image, psf
