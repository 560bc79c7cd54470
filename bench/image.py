"""Benchmark the image stage: CASA tclean against WSClean on the same calibrated MS.

    .venv/bin/python bench/image.py --preset full --json

One simulated group containing the 0834+555 transit (cached in
``/tmp/contimg-bench-image-<preset>``; simulated, converted and calibrated
once if absent, ~5 min for ``full``) is imaged by both backends in one run,
with the same :class:`~dsa110_contimg.imaging.ImagingParams` (the pipeline's
defaults: Briggs robust 0, Hogbom, niter 1000 with the auto-threshold, ~3.5 deg
field, cell from the longest baseline, Stokes I MFS, the drift-averaged
primary-beam correction) and like with like (DESIGN.md section 7):

* w-terms corrected in both: tclean ``gridder='wproject'`` (automatic number
  of w-planes) against WSClean's w-gridder (``-use-wgridder``);
* the same threads for both: ``--threads N`` (default 1) sets
  ``OMP_NUM_THREADS=N`` for both processes and WSClean's ``-j N``; tclean
  has no option of its own and takes its OpenMP threads from the
  environment (about 170 % CPU with 2 here);
* the same data column (CORRECTED_DATA), image size and cell.

Each backend runs in a fresh Python process (as an Airflow task would). The
last line of output is JSON with ``tclean_s``, ``wsclean_s``, ``speedup``
(tclean/wsclean) and the peak flux of the brightest source (the calibrator)
in each pb-corrected image, ``tclean_peak_jy`` and ``wsclean_peak_jy``, which
must agree within 2 % (``peaks_agree``). ``tclean_imager_s``,
``wsclean_imager_s`` and ``imager_speedup`` time the imager's own run within
the stage (``ImageResult.imager_seconds``), apart from the primary beam, QA and
FITS writing that both backends share.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

PEAK_TOLERANCE = 0.02
PEAK_SEARCH_ARCSEC = 90.0  # around the calibrator's catalogue position


def calibrated_ms(preset: str, cache: Path) -> Path:
    """The cached calibrated transit-group MS, made on the first run.

    A later run reuses it as it is: converting again would replace the MS and
    drop its CORRECTED_DATA, and the imagers would then image raw data."""
    from dsa110_contimg.calibration import CalSolveParams, apply_calibration, solve_calibration
    from dsa110_contimg.calibration.validate import CALIBRATOR, simulate_transit_group
    from dsa110_contimg.calibrators import get_calibrator

    done = cache / "calibrated.json"
    if done.exists():
        ms = Path(json.loads(done.read_text())["ms"])
        if ms.is_dir():
            return ms
    _, ms = simulate_transit_group(cache, preset)
    print(f"calibrating {ms} (cached for later runs) ...", flush=True)
    res = solve_calibration(ms, get_calibrator(CALIBRATOR), cache / "caltables", CalSolveParams())
    apply_calibration(ms, res.tables)
    done.write_text(json.dumps({"ms": str(ms), "solve": res.to_dict()}))
    return ms


def brightest_peak(pbcor_fits: str) -> float:
    """Peak (Jy/beam) within PEAK_SEARCH_ARCSEC of the calibrator in a pb-corrected image."""
    import numpy as np

    from dsa110_contimg.calibration.validate import CALIBRATOR
    from dsa110_contimg.calibrators import get_calibrator
    from dsa110_contimg.imaging.fitsutil import read_image_2d

    cal = get_calibrator(CALIBRATOR)
    data, _, wcs = read_image_2d(Path(pbcor_fits))
    x, y = (float(v) for v in wcs.world_to_pixel_values(cal.ra_deg, cal.dec_deg))
    r = int(np.ceil(PEAK_SEARCH_ARCSEC / (abs(wcs.wcs.cdelt[0]) * 3600)))
    box = data[int(round(y)) - r:int(round(y)) + r + 1, int(round(x)) - r:int(round(x)) + r + 1]
    return float(np.nanmax(box))


def run_backend(backend: str, ms: Path, out: Path, threads: int = 1) -> dict:
    """Image ``ms`` with ``backend`` in a fresh process; wall time and the result."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, "--run-one", backend, "--ms", str(ms), "--out", str(out),
                           "--threads", str(threads)], env=env, capture_output=True, text=True)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{backend} failed:\n{proc.stderr[-3000:]}")
    return {"seconds": seconds, **json.loads(proc.stdout.strip().splitlines()[-1])}


def _run_one(backend: str, ms: Path, out: Path, threads: int) -> None:
    from dsa110_contimg.imaging import ImagingParams, image_ms
    from dsa110_contimg.results import jsonable

    res = image_ms(ms, out, ImagingParams(backend=backend, threads=threads))
    print(json.dumps(jsonable(res)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="full")
    ap.add_argument("--cache", type=Path, default=None, help="default /tmp/contimg-bench-image-<preset>")
    ap.add_argument("--json", action="store_true", help="print the JSON summary as the last line")
    ap.add_argument("--threads", type=int, default=1, help="threads for both imagers (default 1)")
    ap.add_argument("--run-one", choices=["tclean", "wsclean"], help=argparse.SUPPRESS)
    ap.add_argument("--ms", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    from dsa110_contimg.casa_env import ensure_casa_offline

    ensure_casa_offline()
    if a.run_one:
        _run_one(a.run_one, a.ms, a.out, a.threads)
        return 0
    cache = a.cache or Path(f"/tmp/contimg-bench-image-{a.preset}")
    ms = calibrated_ms(a.preset, cache)
    results = {}
    for backend in ("tclean", "wsclean"):
        print(f"imaging with {backend} ...", flush=True)
        results[backend] = run_backend(backend, ms, cache / f"images-{backend}", a.threads)
        print(f"  {backend}: {results[backend]['seconds']:.1f} s, image {results[backend].get('imsize')} px, "
              f"rms {results[backend]['rms_jy']:.4g} Jy/beam", flush=True)
    peaks = {b: brightest_peak(r["pbcor_fits"]) for b, r in results.items()}
    summary = {
        "preset": a.preset,
        "threads": a.threads,
        "tclean_s": round(results["tclean"]["seconds"], 2),
        "wsclean_s": round(results["wsclean"]["seconds"], 2),
        "speedup": round(results["tclean"]["seconds"] / results["wsclean"]["seconds"], 2),
        "tclean_imager_s": round(results["tclean"]["imager_seconds"], 2),
        "wsclean_imager_s": round(results["wsclean"]["imager_seconds"], 2),
        "imager_speedup": round(results["tclean"]["imager_seconds"] / results["wsclean"]["imager_seconds"], 2),
        "tclean_peak_jy": round(peaks["tclean"], 4),
        "wsclean_peak_jy": round(peaks["wsclean"], 4),
        "peaks_agree": abs(peaks["wsclean"] / peaks["tclean"] - 1) <= PEAK_TOLERANCE,
    }
    print(f"tclean {summary['tclean_s']} s, wsclean {summary['wsclean_s']} s: speedup {summary['speedup']}; "
          f"calibrator peak {summary['tclean_peak_jy']} vs {summary['wsclean_peak_jy']} Jy/beam")
    if a.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
