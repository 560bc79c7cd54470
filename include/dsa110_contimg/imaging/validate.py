"""Proof of imaging, mosaicking and source finding against the simulator's sky:
`dsa110 validate imaging`.

At a chosen preset (``full`` by default: the real instrument's 96 antennas x
768 channels of 244 kHz, so neither bandwidth nor time smearing blurs the
field), three groups are simulated with one seed (one sky, one set of
injected gains):

* the group containing the 0834+555 transit, on which calibration is solved;
* two consecutive groups ``OFFSET_MIN`` minutes later, so the 8 Jy
  calibrator is outside their fields and they overlap by about half a field.

Both later groups are calibrated with that solution, imaged with the
pipeline's defaults, mosaicked (PB^2/sigma^2), and PyBDSF runs on the two
images and the mosaic. Each is scored against the simulator's truth:

* bright sources (S/N > 50): the median ratio of measured to true flux
  density (the truth scaled to the image frequency with each source's
  spectral index) must be 1.00 +- 0.03, and every ratio within 5 %. The
  simulated sources are unresolved, so the measured flux density is the
  fitted peak (Jy/beam = Jy): per Condon (1997) its error is sigma, against
  sqrt(3) sigma for the integrated flux, which at S/N 50 would alone put one
  source in ten beyond 5 %;
* positions: the offset from the true position in units of the synthesized
  beam along the offset's direction (the elliptical radius
  sqrt((d_maj/bmaj)^2 + (d_min/bmin)^2)), at most 0.1 for every S/N > 50 source;
* completeness: of the true sources whose expected peak is >= 10 x the local
  noise inside the usable area, at least 95 % detected;
* false detections: detections with no true source within the match radius,
  under 1 % of all detections.

For the mosaic only sources where both images are valid (PB >= pblimit in
each) count: there the mosaic combines two measurements.
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from .params import ImagingParams

log = logging.getLogger(__name__)

OFFSET_MIN = 25  # minutes after the transit group: the calibrator is ~3.5 deg away (beyond the PB's first null)
BRIGHT_SNR = 50.0
LIMITS = {"median_flux_ratio_error": 0.03, "max_flux_err_pct": 5.0, "max_offset_beam_frac": 0.1,
          "completeness_10sigma": 0.95, "false_fraction": 0.01}


def score(fits_path: Path, truth: Sequence[Any], *, keep=None, radius_arcsec: float | None = None,
          noise_floor: Path | np.ndarray | None = None) -> dict[str, Any]:
    """Detect sources in ``fits_path`` and score them against ``truth`` (CatalogSource rows).

    ``keep(ra, dec) -> bool`` restricts both the truth and the detections to a
    region (the mosaic's overlap). The match radius defaults to the beam's
    major axis. ``noise_floor`` is the product's expected noise (find.detect),
    as the pipeline gives it: a mosaic's noise map, an image's ``expected_noise``."""
    from ..crossmatch import CrossmatchParams, crossmatch, detect, in_footprint

    det = detect(Path(fits_path), CrossmatchParams().find_params(), noise_floor=noise_floor)
    bmaj, bmin, bpa = det.beam_arcsec
    radius = radius_arcsec or bmaj
    refs = in_footprint(list(truth), det.noise.wcs, det.noise.rms.shape)
    sources = list(det.sources)
    if keep is not None:
        refs = [r for r in refs if keep(r.ra_deg, r.dec_deg)]
        sources = [d for d in sources if keep(d.ra_deg, d.dec_deg)]
    res = crossmatch(sources, refs, radius, image_freq_hz=det.freq_hz, noise=det.noise)
    bright = [(sources[m.index], m) for m in res.matches if sources[m.index].snr > BRIGHT_SNR]
    ratios = np.array([d.peak_jy / m.expected_flux_jy for d, m in bright])
    offsets = np.array([_beam_fraction(m.dra_arcsec, m.ddec_arcsec, bmaj, bmin, bpa) for _, m in bright])
    out = {
        "fits": str(fits_path), "beam_arcsec": [bmaj, bmin, bpa], "match_radius_arcsec": radius,
        "n_detected": res.n_detected, "n_matched": res.n_matched, "n_bright": int(ratios.size),
        "median_flux_ratio": float(np.median(ratios)) if ratios.size else None,
        "max_flux_err_pct": float(100 * np.max(np.abs(ratios - 1))) if ratios.size else None,
        "max_offset_beam_frac": float(np.max(offsets)) if offsets.size else None,
        "completeness_10sigma": res.completeness.get("10sigma"),
        "n_reference_10sigma": res.n_reference_usable.get("10sigma"),
        "false_fraction": res.false_fraction,
        "false_detections": [_describe(sources[i]) for i in _unmatched(res, len(sources))][:20],
        "worst_bright": [_describe(d) | {"ratio": d.peak_jy / m.expected_flux_jy} for d, m in
                         sorted(bright, key=lambda dm: -abs(dm[0].peak_jy / dm[1].expected_flux_jy - 1))[:5]],
    }
    out["pass"] = passes(out)
    return out


def _beam_fraction(dra: float, ddec: float, bmaj: float, bmin: float, bpa_deg: float) -> float:
    """Offset (arcsec, RA*cos dec and Dec) in beams along its direction: the elliptical radius."""
    pa = math.radians(bpa_deg)  # east of north
    d_maj = dra * math.sin(pa) + ddec * math.cos(pa)
    d_min = dra * math.cos(pa) - ddec * math.sin(pa)
    return math.hypot(d_maj / bmaj, d_min / bmin)


def _unmatched(res, n: int) -> list[int]:
    matched = {m.index for m in res.matches}
    return [i for i in range(n) if i not in matched]


def _describe(d) -> dict[str, float]:
    return {"ra_deg": round(d.ra_deg, 5), "dec_deg": round(d.dec_deg, 5), "flux_jy": round(d.flux_jy, 5),
            "peak_jy": round(d.peak_jy, 5), "snr": round(d.snr, 1)}


def passes(m: dict[str, Any]) -> bool:
    """Whether one product's numbers meet the issue's limits."""
    checks = [
        m["median_flux_ratio"] is not None and abs(m["median_flux_ratio"] - 1) <= LIMITS["median_flux_ratio_error"],
        m["max_flux_err_pct"] is not None and m["max_flux_err_pct"] <= LIMITS["max_flux_err_pct"],
        m["max_offset_beam_frac"] is not None and m["max_offset_beam_frac"] <= LIMITS["max_offset_beam_frac"],
        m["completeness_10sigma"] is not None and m["completeness_10sigma"] >= LIMITS["completeness_10sigma"],
        m["false_fraction"] is not None and m["false_fraction"] < LIMITS["false_fraction"],
    ]
    return bool(all(checks))


def expected_noise(pb_fits: Path, rms_jy: float, pblimit: float) -> np.ndarray:
    """A pb-corrected image's expected noise per pixel: the flat image's rms / PB (NaN below pblimit)."""
    from .fitsutil import read_image_2d

    pb, _, _ = read_image_2d(Path(pb_fits))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pb >= pblimit, float(rms_jy) / pb, np.nan)


def _overlap(pb_fits: Sequence[Path], pblimit: float):
    """keep(ra, dec): True where every primary beam is >= pblimit."""
    from .fitsutil import read_image_2d

    beams = [read_image_2d(Path(p)) for p in pb_fits]

    def keep(ra: float, dec: float) -> bool:
        for data, _, wcs in beams:
            x, y = (int(round(float(v))) for v in wcs.world_to_pixel_values(ra, dec))
            if not (0 <= y < data.shape[0] and 0 <= x < data.shape[1]) or not data[y, x] >= pblimit:
                return False
        return True

    return keep


def simulate_and_image(work_dir: Path, preset: str = "full", seed: int = 1,
                       params: ImagingParams | None = None) -> dict[str, Any]:
    """Simulate, calibrate and image the two later groups; their images, pbs and the truth catalogue.

    ``params`` (ImagingParams) defaults to the pipeline's imaging defaults."""
    from ..calibration import CalSolveParams, apply_calibration, solve_calibration
    from ..calibration.validate import CALIBRATOR, POINTING_DEC_DEG, simulate_transit_group
    from ..calibrators import get_calibrator
    from ..convert import convert_group
    from ..simulate import simulate_session
    from . import ImagingParams, image_ms

    work_dir = Path(work_dir)
    sim_cal, cal_ms = simulate_transit_group(work_dir / "transit", preset, seed)
    solve = solve_calibration(cal_ms, get_calibrator(CALIBRATOR), work_dir / "caltables", CalSolveParams())
    start = sim_cal.group_timestamps[0] + timedelta(minutes=OFFSET_MIN)
    sim = simulate_session(work_dir / "field" / "incoming", preset, start, 2, POINTING_DEC_DEG, seed=seed)
    n = len(sim.files) // 2
    params = params or ImagingParams()
    images = []
    for k in range(2):
        ms = Path(convert_group(sim.files[k * n:(k + 1) * n], work_dir / "field" / "ms").ms_path)
        apply_calibration(ms, solve.tables)
        images.append(image_ms(ms, work_dir / "images", params, catalog=sim.catalog_path))
    truth = sim.sky_path
    return {"images": images, "truth": truth, "pblimit": params.pblimit, "solve_qa": solve.qa_status}


def validate_imaging(work_dir: Path, preset: str = "full", seed: int = 1,
                     imaging: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole proof; the numbers per product, the worst over products, and ``pass``.

    ``imaging`` overrides fields of the default ImagingParams (to measure another
    choice, e.g. ``{"weighting": "uniform"}``); the result records what was used."""
    from ..catalog import read_catalog
    from ..mosaic import mosaic_images
    from . import ImagingParams

    t0 = time.monotonic()
    work_dir = Path(work_dir)
    shutil.rmtree(work_dir / "images", ignore_errors=True)
    params = ImagingParams.from_dict(imaging)
    made = simulate_and_image(work_dir, preset, seed, params)
    truth = read_catalog(made["truth"])
    images = made["images"]
    per = {f"image{k + 1}": score(Path(img.pbcor_fits), truth,
                                  noise_floor=expected_noise(Path(img.pb_fits), img.rms_jy, made["pblimit"]))
           for k, img in enumerate(images)}
    mos = mosaic_images([Path(i.pbcor_fits) for i in images], [Path(i.pb_fits) for i in images],
                        [float(i.rms_jy) for i in images], work_dir / "images" / "validate.mosaic.fits")
    per["mosaic"] = score(Path(mos.mosaic_fits), truth, noise_floor=Path(mos.noise_fits),
                          keep=_overlap([Path(i.pb_fits) for i in images], made["pblimit"]))
    worst = _worst(per.values())
    return {**worst, "preset": preset, "imaging": dict(imaging or {}), "products": per,
            "seconds": round(time.monotonic() - t0, 1), "pass": all(p["pass"] for p in per.values())}


def _worst(products) -> dict[str, Any]:
    """The headline numbers: the worst of each over the products."""
    products = list(products)

    def pick(key, fn):
        vals = [p[key] for p in products if p[key] is not None]
        return fn(vals) if vals else None

    return {
        "median_flux_ratio": pick("median_flux_ratio", lambda v: max(v, key=lambda x: abs(x - 1))),
        "max_flux_err_pct": pick("max_flux_err_pct", max),
        "max_offset_beam_frac": pick("max_offset_beam_frac", max),
        "completeness_10sigma": pick("completeness_10sigma", min),
        "false_fraction": pick("false_fraction", max),
    }


def report_lines(result: dict[str, Any]) -> list[str]:
    """Each product's numbers next to the limits."""
    lines = []
    for name, p in result["products"].items():
        lines.append(f"{name}: beam {p['beam_arcsec'][0]:.1f}x{p['beam_arcsec'][1]:.1f} arcsec, "
                     f"{p['n_detected']} detected, {p['n_matched']} matched, {p['n_bright']} with S/N>{BRIGHT_SNR:.0f}")
        lines.append(f"  median flux ratio {_f(p['median_flux_ratio'], 4)} (1 +- {LIMITS['median_flux_ratio_error']}); "
                     f"worst {_f(p['max_flux_err_pct'], 2)} % (<= {LIMITS['max_flux_err_pct']} %)")
        lines.append(f"  worst offset {_f(p['max_offset_beam_frac'], 3)} beam (<= {LIMITS['max_offset_beam_frac']}); "
                     f"completeness(10 sigma) {_f(p['completeness_10sigma'], 3)} (>= {LIMITS['completeness_10sigma']}); "
                     f"false {_f(p['false_fraction'], 4)} (< {LIMITS['false_fraction']})  "
                     f"{'PASS' if p['pass'] else 'FAIL'}")
    return lines


def _f(v, nd: int) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"
