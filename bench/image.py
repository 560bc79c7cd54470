"""Benchmark the image stage: CASA tclean against WSClean on the same calibrated MS.

    .venv/bin/python bench/image.py --preset full --json

One simulated group containing the 0834+555 transit (cached in
``/tmp/contimg-bench-image-<preset>``; simulated, converted and calibrated
once if absent, ~5 min for ``full``) is imaged by both backends in one run,
with the pipeline's default :class:`~dsa110_contimg.imaging.ImagingParams`
(Briggs robust 0, Hogbom, niter 1000 with the auto-threshold, ~3.5 deg field,
cell from the predicted beam, Stokes I MFS, the drift-averaged primary-beam
correction) and like with like (DESIGN.md section 7):

* the same MS: the image stage's first step, fitting and subtracting the
  reference catalogue's bright sources (``imaging/subtract.py``; the
  simulated session's catalogue), is run once and timed on its own
  (``subtract_s``); both imagers then image that same subtracted MS and the
  stage restores the fitted sources into each image, as the pipeline does;
* w-terms corrected in both: tclean ``gridder='wproject'`` (automatic number
  of w-planes) against WSClean's w-gridder at the stage's automatic accuracy
  for a subtracted field (1e-2; ``ImagingParams.wgridder_accuracy`` says why,
  and ``bench/gridding_accuracy.py`` measures WSClean at 1e-2 still ~20x
  closer to the exact transform than tclean);
* the same threads for both: ``--threads N`` (default 1) sets
  ``OMP_NUM_THREADS=N`` for both processes and WSClean's ``-j N``; tclean
  has no option of its own and takes its OpenMP threads from the
  environment (about 170 % CPU with 2 here);
* the same data column (CORRECTED_DATA), image size and cell.

Each backend runs in a fresh Python process (as an Airflow task would). The
last line of output is JSON with ``tclean_s``, ``wsclean_s`` (the image
stage on the subtracted MS), ``speedup`` (tclean/wsclean),
``stage_speedup`` (the same with the shared subtraction added to both) and
the peak flux of the brightest source each imager deconvolved itself (the
brightest catalogue source left in the field, ``check_source``) in each
flat image, ``tclean_peak_jy`` and ``wsclean_peak_jy``, which must agree
within 2 % (``peaks_agree``); ``calibrator_peaks_jy`` are the calibrator's
pb-corrected peaks (fitted, subtracted and restored by the shared stage). ``tclean_imager_s``, ``wsclean_imager_s``
and ``imager_speedup`` time the imager's own run within the stage
(``ImageResult.imager_seconds``), apart from the primary beam, restoring, QA
and FITS writing that both backends share.
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
PEAK_SEARCH_ARCSEC = 90.0  # around the check source's catalogue position
EDGE_MARGIN_DEG = 0.05  # the check source is at least this far (~5 beams) inside the image


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


def check_source(cache: Path, ms: Path, fitted: list[str]) -> dict:
    """The brightest catalogue source (apparent flux over the group) in the image that
    was not subtracted: the one both imagers deconvolve themselves. In the bench's
    simulated sky (every source >= 20 mJy) only a few such sources are left, near
    the image's edges where the primary beam brings them under the 5 mJy apparent
    of the subtraction; the first EDGE_MARGIN_DEG of the edge is left out."""
    from dsa110_contimg.catalog import read_catalog
    from dsa110_contimg.imaging import ImagingParams
    from dsa110_contimg.imaging.image import imager_setup
    from dsa110_contimg.imaging.msinfo import read_ms_info
    from dsa110_contimg.imaging.subtract import BrightSource, VisGeometry, _in_image, select_bright

    info = read_ms_info(ms)
    setup = imager_setup(info, ImagingParams())
    half = setup.imsize * setup.cell_arcsec / 3600.0 / 2.0 - EDGE_MARGIN_DEG
    uvw = info.uvw_m.T if info.uvw_m is not None else None
    geo = VisGeometry(uvw, None, info.times_mjd, info.freqs_hz, info.phase_ra_rad, info.phase_dec_rad,
                      info.pointing_dec_rad)
    for src, app in select_bright(geo, read_catalog(cache / "reference_catalog.tsv"), 1e-5, 3.0, 1000):
        if src.name not in fitted and _in_image(geo, BrightSource(src.name, src.ra_deg, src.dec_deg, 0.0), half):
            return {"name": src.name, "ra_deg": src.ra_deg, "dec_deg": src.dec_deg, "apparent_jy": app}
    raise RuntimeError("no unsubtracted catalogue source in the image to compare the imagers on")


def peak_near(fits_path: str, ra_deg: float, dec_deg: float) -> float:
    """Peak (Jy/beam) within PEAK_SEARCH_ARCSEC of a position in an image."""
    import numpy as np

    from dsa110_contimg.imaging.fitsutil import read_image_2d

    data, _, wcs = read_image_2d(Path(fits_path))
    x, y = (float(v) for v in wcs.world_to_pixel_values(ra_deg, dec_deg))
    r = int(np.ceil(PEAK_SEARCH_ARCSEC / (abs(wcs.wcs.cdelt[0]) * 3600)))
    box = data[int(round(y)) - r:int(round(y)) + r + 1, int(round(x)) - r:int(round(x)) + r + 1]
    return float(np.nanmax(box))


def subtract(ms: Path, cache: Path) -> tuple[Path, Path, float]:
    """The stage's bright-source subtraction, once, into a copy: (copy, pickled result, seconds)."""
    import pickle
    import shutil

    from dsa110_contimg.imaging import ImagingParams
    from dsa110_contimg.imaging.image import subtract_for_imaging

    copy = cache / "subtracted.ms"
    shutil.rmtree(copy, ignore_errors=True)
    t0 = time.monotonic()
    res = subtract_for_imaging(ms, copy, ImagingParams(), cache / "reference_catalog.tsv")
    seconds = time.monotonic() - t0
    if res is None or not copy.is_dir():
        raise RuntimeError("the subtraction found no bright source to subtract")
    pkl = cache / "subtracted.pkl"
    pkl.write_bytes(pickle.dumps(res))
    return copy, pkl, seconds


def run_backend(backend: str, ms: Path, sub: Path, out: Path, threads: int = 1) -> dict:
    """Image ``ms`` (already subtracted, ``sub`` its pickled SubtractResult) with ``backend`` in a
    fresh process; wall time and the result."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, "--run-one", backend, "--ms", str(ms), "--sub", str(sub),
                           "--out", str(out), "--threads", str(threads)], env=env, capture_output=True, text=True)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{backend} failed:\n{proc.stderr[-3000:]}")
    return {"seconds": seconds, **json.loads(proc.stdout.strip().splitlines()[-1])}


def _run_one(backend: str, ms: Path, sub: Path, out: Path, threads: int) -> None:
    import pickle

    from dsa110_contimg.imaging import ImagingParams, image_ms
    from dsa110_contimg.results import jsonable

    res = image_ms(ms, out, ImagingParams(backend=backend, threads=threads), name=f"bench-{backend}",
                   subtracted=pickle.loads(sub.read_bytes()))
    print(json.dumps(jsonable(res)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="full")
    ap.add_argument("--cache", type=Path, default=None, help="default /tmp/contimg-bench-image-<preset>")
    ap.add_argument("--json", action="store_true", help="print the JSON summary as the last line")
    ap.add_argument("--threads", type=int, default=1, help="threads for both imagers (default 1)")
    ap.add_argument("--run-one", choices=["tclean", "wsclean"], help=argparse.SUPPRESS)
    ap.add_argument("--ms", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--sub", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    from dsa110_contimg.casa_env import ensure_casa_offline

    ensure_casa_offline()
    from dsa110_contimg.calibration.validate import CALIBRATOR
    from dsa110_contimg.calibrators import get_calibrator

    if a.run_one:
        _run_one(a.run_one, a.ms, a.sub, a.out, a.threads)
        return 0
    cache = a.cache or Path(f"/tmp/contimg-bench-image-{a.preset}")
    ms = calibrated_ms(a.preset, cache)
    print("subtracting the reference catalogue's bright sources (once, for both imagers) ...", flush=True)
    sub_ms, sub_pkl, subtract_s = subtract(ms, cache)
    results = {}
    for backend in ("tclean", "wsclean"):
        print(f"imaging with {backend} ...", flush=True)
        results[backend] = run_backend(backend, sub_ms, sub_pkl, cache / f"images-{backend}", a.threads)
        print(f"  {backend}: {results[backend]['seconds']:.1f} s, image {results[backend].get('imsize')} px, "
              f"rms {results[backend]['rms_jy']:.4g} Jy/beam, w-gridder accuracy "
              f"{results[backend]['imaging']['wgridder_accuracy']:g} (WSClean only)", flush=True)
    fitted = [f["name"] for f in results["wsclean"]["subtracted"] or []]
    check = check_source(cache, ms, fitted)
    # the flat image: the check source may lie beyond the pb-corrected image's pblimit
    peaks = {b: peak_near(r["image_fits"], check["ra_deg"], check["dec_deg"]) for b, r in results.items()}
    cal = get_calibrator(CALIBRATOR)
    cal_peaks = {b: peak_near(r["pbcor_fits"], cal.ra_deg, cal.dec_deg) for b, r in results.items()}
    tc, ws = results["tclean"]["seconds"], results["wsclean"]["seconds"]
    summary = {
        "preset": a.preset,
        "threads": a.threads,
        "subtract_s": round(subtract_s, 2),
        "n_subtracted": len(fitted),
        "tclean_s": round(tc, 2),
        "wsclean_s": round(ws, 2),
        "speedup": round(tc / ws, 2),
        "stage_speedup": round((subtract_s + tc) / (subtract_s + ws), 2),
        "tclean_imager_s": round(results["tclean"]["imager_seconds"], 2),
        "wsclean_imager_s": round(results["wsclean"]["imager_seconds"], 2),
        "imager_speedup": round(results["tclean"]["imager_seconds"] / results["wsclean"]["imager_seconds"], 2),
        "wsclean_accuracy": results["wsclean"]["imaging"]["wgridder_accuracy"],
        "check_source": check["name"],
        "check_apparent_jy": round(check["apparent_jy"], 5),
        "tclean_peak_jy": round(peaks["tclean"], 5),
        "wsclean_peak_jy": round(peaks["wsclean"], 5),
        "peaks_agree": abs(peaks["wsclean"] / peaks["tclean"] - 1) <= PEAK_TOLERANCE,
        "calibrator_peaks_jy": [round(cal_peaks["tclean"], 4), round(cal_peaks["wsclean"], 4)],
    }
    print(f"tclean {summary['tclean_s']} s, wsclean {summary['wsclean_s']} s: speedup {summary['speedup']} "
          f"(subtraction {summary['subtract_s']} s shared: {summary['stage_speedup']}); {check['name']} peak "
          f"{summary['tclean_peak_jy']} vs {summary['wsclean_peak_jy']} Jy/beam")
    if a.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
