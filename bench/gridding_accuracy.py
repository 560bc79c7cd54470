"""Gridding accuracy of tclean and WSClean against a direct Fourier transform.

    .venv/bin/python bench/gridding_accuracy.py --json

Why: DESIGN.md asks that the two imagers be compared like with like, in
accuracy too; WSClean's w-gridder runs faster the looser its accuracy. This
measures what each imager delivers (:mod:`dsa110_contimg.imaging.accuracy`):
the dirty image (niter 0, natural weighting, Stokes I) of the first
``--channels`` channels of ``bench/image.py``'s cached calibrated full-scale
transit group (made on first use), on the pipeline's grid for that MS, made
by tclean and by WSClean at each ``--accuracy``, against the exact transform
at ``--npix`` random pixels and the brightest one (the 0834+555 calibrator).
Errors are in units of the exact peak. Last line JSON: ``tclean_rms_err``,
``tclean_max_err``, ``wsclean_rms_err`` and ``wsclean_max_err`` (keyed by
accuracy), ``dft_peak_jy``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="full")
    ap.add_argument("--channels", type=int, default=48, help="first N channels (default one subband)")
    ap.add_argument("--npix", type=int, default=200)
    ap.add_argument("--accuracy", type=float, action="append", help="WSClean accuracies (default 1e-4 1e-3 1e-2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    from dsa110_contimg.casa_env import ensure_casa_offline

    ensure_casa_offline()
    from image import calibrated_ms

    from dsa110_contimg.imaging import ImagingParams
    from dsa110_contimg.imaging.accuracy import dirty_tclean, dirty_wsclean, gridding_errors
    from dsa110_contimg.imaging.image import imager_setup
    from dsa110_contimg.imaging.msinfo import read_ms_info

    cache = Path(f"/tmp/contimg-bench-image-{a.preset}")
    ms = calibrated_ms(a.preset, cache)
    work = cache / "gridding-accuracy"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    setup = imager_setup(read_ms_info(ms), ImagingParams(weighting="natural"))
    images = {"tclean": dirty_tclean(setup, ms, work, a.channels)}
    for acc in a.accuracy or [1e-4, 1e-3, 1e-2]:
        images[f"{acc:g}"] = dirty_wsclean(setup, ms, work, a.channels, acc, a.threads)
    peak, errors = gridding_errors(images, ms, setup.datacolumn, a.channels, a.npix)
    summary: dict = {"preset": a.preset, "channels": a.channels, "npix": a.npix + 1, "imsize": setup.imsize,
                     "cell_arcsec": setup.cell_arcsec, "dft_peak_jy": round(peak, 5),
                     "tclean_rms_err": float(f"{errors['tclean']['rms']:.3g}"),
                     "tclean_max_err": float(f"{errors['tclean']['max']:.3g}"),
                     "wsclean_rms_err": {}, "wsclean_max_err": {}}
    for label, e in errors.items():
        print(f"{label:>8}: rms error {e['rms']:.2e}, max {e['max']:.2e} of the peak ({peak:.4f} Jy/beam)")
        if label != "tclean":
            summary["wsclean_rms_err"][label] = float(f"{e['rms']:.3g}")
            summary["wsclean_max_err"][label] = float(f"{e['max']:.3g}")
    if a.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
