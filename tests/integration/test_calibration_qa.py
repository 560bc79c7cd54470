"""Calibration QA gates and plots on real CASA caltables from a simulated transit.

One 'tiny' group (21 antennas, 32 channels, 8 x 12.9 s) containing the
0834+555 transit is simulated, converted and solved once per module, as in
test_calibration.py. The expected numbers: a bandpass solution's thermal
error is ~0.5 % in amplitude and ~0.3 deg in phase (see that module's noise
budget), so the measured B scatter is ~1 % (the 32-channel ripple of the
simulated bandpass inflates the first-difference estimate, see the qa module
docstring) and the median SNR is far above 10. Degraded copies of the
tables must fail the gates with reasons an operator can read.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
from dsa110_contimg import casa_env
from dsa110_contimg import instrument as ins
from dsa110_contimg.calibration.qa import (
    CalQAThresholds,
    TableQA,
    assess,
    plot_bandpass,
    plot_gains,
    qa_summary,
    series_scatter,
    table_qa,
)
from dsa110_contimg.errors import CalibrationError

CAL = "0834+555"
DAY = date(2026, 1, 15)
DEC_APP_DEG = 55.6
PRESET = "tiny"
N_ANT = 21
N_CHAN = 32
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Solved:
    ms: Path
    btab: Path
    gtab: Path
    antennas: set[int]  # antenna indices with cross-correlation data in the MS


@pytest.fixture(scope="module")
def solved(tmp_path_factory) -> Solved:
    """Simulate, convert and solve the one group that contains the calibrator transit."""
    from dsa110_contimg.calibration import CalSolveParams, solve_calibration
    from dsa110_contimg.calibration.solve import antennas_with_data
    from dsa110_contimg.calibrators import get_calibrator, transit_on
    from dsa110_contimg.convert import convert_group
    from dsa110_contimg.simulate import session_start_around_transit, simulate_session

    root = tmp_path_factory.mktemp("calibration_qa")
    file_s = ins.preset(PRESET).integrations_per_file * ins.INTEGRATION_S
    floor = session_start_around_transit(CAL, DAY)
    k = int((transit_on(CAL, DAY) - floor).total_seconds() // file_s)
    sim = simulate_session(root / "incoming", PRESET, floor + timedelta(seconds=k * file_s), 1, DEC_APP_DEG,
                           seed=1, calibrator=CAL)
    ms = Path(convert_group(sim.files[:ins.N_SUBBANDS], root / "ms").ms_path)
    res = solve_calibration(ms, get_calibrator(CAL), root / "caltables", CalSolveParams())
    tables = dict(res.tables)
    return Solved(ms, Path(tables["B"]), Path(tables["G"]), set(antennas_with_data(ms)))


def _copy(table: Path, dst_dir: Path) -> Path:
    dst = dst_dir / table.name
    shutil.copytree(table, dst)
    return dst


def _edit(table: Path, column: str, fn) -> None:
    """Replace ``column`` of a caltable by ``fn(old_value, ANTENNA1)``."""
    tb = casa_env.casatools().table()
    try:
        tb.open(str(table), nomodify=False)
        tb.putcol(column, fn(tb.getcol(column), tb.getcol("ANTENNA1")))
        tb.flush()
        tb.close()
    finally:
        tb.done()


def _check_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] >= 400 and img.shape[1] >= 600, img.shape
    assert img[..., :3].std() > 0.01, "the image is blank"


# --------------------------------------------------------------------------
# good solve
# --------------------------------------------------------------------------
@pytest.mark.casa
def test_good_solve_passes(solved: Solved):
    b = table_qa(solved.btab, "B", solved.antennas)
    g = table_qa(solved.gtab, "G", solved.antennas)
    print(f"B: {b.summary()}\nG: {g.summary()}")
    assert len(solved.antennas) == N_ANT
    assert b.n_solutions == N_ANT * 2 * N_CHAN and g.n_solutions == N_ANT * 2
    assert b.flagged_fraction < 0.01 and g.flagged_fraction < 0.01
    assert b.median_snr > 10 and g.median_snr > 10
    assert b.amp_scatter < 0.05
    assert b.phase_scatter_deg < 2.0
    assert len(b.per_antenna) == N_ANT
    assert set(b.per_antenna["25"]) == {"amp_scatter", "phase_scatter_deg", "flagged_fraction", "median_amp"}
    assert b.per_antenna["25"]["phase_scatter_deg"] == pytest.approx(0.0, abs=1e-6)  # the refant
    assert 0.8 < b.per_antenna["1"]["median_amp"] < 1.2
    assert len(b.worst_antennas) == 5 and set(b.worst_antennas) <= set(b.per_antenna)
    # one G solution per antenna: no scatter, not gated, nobody singled out
    assert math.isnan(g.amp_scatter) and math.isnan(g.phase_scatter_deg) and g.worst_antennas == []
    assert assess([b, g], CalQAThresholds()) == ("good", [])


@pytest.mark.casa
def test_default_antennas_skip_empty_pads(solved: Solved):
    """The table has rows for all 117 pads; without ``antennas`` the empty ones are not counted."""
    assert table_qa(solved.btab, "B") == table_qa(solved.btab, "B", solved.antennas)


@pytest.mark.casa
def test_summary_is_json(solved: Solved):
    tables = [table_qa(solved.btab, "B"), table_qa(solved.gtab, "G")]
    s = json.loads(json.dumps(qa_summary(tables, CalQAThresholds()), allow_nan=False))
    assert s["status"] == "good" and s["reasons"] == []
    assert [t["table_type"] for t in s["tables"]] == ["B", "G"]
    assert s["tables"][1]["amp_scatter"] is None  # NaN -> null
    assert "per_antenna" not in s["tables"][0]
    assert CalQAThresholds.from_dict(s["thresholds"]) == CalQAThresholds()


# --------------------------------------------------------------------------
# degraded copies
# --------------------------------------------------------------------------
@pytest.mark.casa
def test_half_flagged_bandpass_fails(solved: Solved, tmp_path):
    bad = _copy(solved.btab, tmp_path)

    def flag_upper_half(flag, ant):
        flag[:, N_CHAN // 2:, :] = True
        return flag

    _edit(bad, "FLAG", flag_upper_half)
    q = table_qa(bad, "B", solved.antennas)
    assert q.flagged_fraction == pytest.approx(0.5)
    status, reasons = assess([q, table_qa(solved.gtab, "G")], CalQAThresholds())
    print(reasons)
    assert status == "failed"
    assert reasons == ["B: 50.0% of solutions flagged (limit 30%)"]
    assert table_qa(solved.btab, "B").flagged_fraction < 0.01, "the original table was modified"


@pytest.mark.casa
def test_noisy_bandpass_fails(solved: Solved, tmp_path):
    bad = _copy(solved.btab, tmp_path)
    rng = np.random.default_rng(7)

    def add_noise(cparam, ant):
        amp = 1.0 + 0.3 * rng.standard_normal(cparam.shape)
        phase = np.radians(20.0) * rng.standard_normal(cparam.shape)
        return cparam * np.abs(amp) * np.exp(1j * phase)

    _edit(bad, "CPARAM", add_noise)
    q = table_qa(bad, "B", solved.antennas)
    print(q.summary())
    assert 0.2 < q.amp_scatter < 0.4 and 15.0 < q.phase_scatter_deg < 26.0
    assert q.median_snr > 10  # the SNR column was left alone: only scatter can catch this
    status, reasons = assess([q], CalQAThresholds())
    print(reasons)
    assert status == "failed" and len(reasons) == 2
    assert reasons[0].startswith("B: amplitude scatter ") and "(limit 10%)" in reasons[0]
    assert reasons[1].startswith("B: phase scatter ") and "(limit 10 deg)" in reasons[1]
    assert "worst antennas:" in reasons[0]


@pytest.mark.casa
def test_smooth_structure_is_not_scatter(solved: Solved, tmp_path):
    """A +-10 % ripple across the band and a 5 ns delay barely move the scatter."""
    good = table_qa(solved.btab, "B", solved.antennas)
    smooth = _copy(solved.btab, tmp_path)
    tb = casa_env.casatools().table()
    try:
        tb.open(str(solved.btab / "SPECTRAL_WINDOW"))
        freqs = tb.getcol("CHAN_FREQ")[:, 0]
        tb.close()
    finally:
        tb.done()
    x = (freqs - freqs[0]) / (freqs[-1] - freqs[0])
    shape = (1.0 + 0.1 * np.sin(2 * np.pi * x)) * np.exp(2j * np.pi * freqs * 5e-9)

    _edit(smooth, "CPARAM", lambda cparam, ant: cparam * shape[None, :, None])
    q = table_qa(smooth, "B", solved.antennas)
    print(f"scatter before {good.amp_scatter:.4f} / {good.phase_scatter_deg:.3f} deg, "
          f"after {q.amp_scatter:.4f} / {q.phase_scatter_deg:.3f} deg")
    assert q.amp_scatter < good.amp_scatter + 0.01
    assert q.phase_scatter_deg == pytest.approx(good.phase_scatter_deg, abs=0.05)
    assert assess([q], CalQAThresholds())[0] == "good"


@pytest.mark.casa
def test_dead_antenna_counts_only_when_named(solved: Solved, tmp_path):
    """An antenna with data whose solutions are all flagged looks like an empty pad
    unless the caller says which antennas had data."""
    bad = _copy(solved.btab, tmp_path)
    dead = min(solved.antennas)

    def kill(flag, ant):
        flag[:, :, ant == dead] = True
        return flag

    _edit(bad, "FLAG", kill)
    default = table_qa(bad, "B")
    named = table_qa(bad, "B", solved.antennas)
    assert default.flagged_fraction == 0.0 and len(default.per_antenna) == N_ANT - 1
    assert named.flagged_fraction == pytest.approx(1 / N_ANT)
    assert named.per_antenna["1"]["flagged_fraction"] == 1.0
    assert named.worst_antennas[0] == "1"  # index 0 is pad '1'


@pytest.mark.casa
def test_gains_per_integration(solved: Solved, tmp_path):
    """G solved every integration (8 per antenna): scatter is measured along time."""
    from dsa110_contimg.calibration import CalSolveParams, solve_calibration
    from dsa110_contimg.calibrators import get_calibrator

    res = solve_calibration(solved.ms, get_calibrator(CAL), tmp_path, CalSolveParams(gain_solint="int"))
    gtab = Path(dict(res.tables)["G"])
    q = table_qa(gtab, "G", solved.antennas)
    print(q.summary())
    assert q.n_solutions == N_ANT * 2 * 8
    assert q.flagged_fraction < 0.01 and q.median_snr > 10
    assert 0 < q.amp_scatter < 0.02 and 0 < q.phase_scatter_deg < 2.0
    assert len(q.worst_antennas) == 5
    assert assess([q], CalQAThresholds())[0] == "good"
    _check_png(plot_gains(gtab, tmp_path / "gains.png"))


@pytest.mark.casa
def test_delay_table(solved: Solved, tmp_path):
    """K (FPARAM, ns): flagged fraction only -- CASA 6.7's K solver writes SNR 0, so the
    median SNR is unknown (NaN) and not gated. Not plottable as complex gains."""
    ms = tmp_path / "copy.ms"
    shutil.copytree(solved.ms, ms)
    ktab = tmp_path / "copy.K"
    casa_env.casatasks().gaincal(vis=str(ms), caltable=str(ktab), gaintype="K", solint="inf", refant="25",
                                 minsnr=3.0)
    q = table_qa(ktab, "K", solved.antennas)
    print(q.summary())
    assert q.n_solutions == N_ANT * 2
    assert q.flagged_fraction < 0.01
    assert math.isnan(q.median_snr)
    assert math.isnan(q.amp_scatter) and math.isnan(q.phase_scatter_deg) and q.worst_antennas == []
    assert assess([q], CalQAThresholds())[0] == "good"
    with pytest.raises(CalibrationError, match="not a complex gain table"):
        plot_bandpass(ktab, tmp_path / "k.png")


# --------------------------------------------------------------------------
# plots and errors
# --------------------------------------------------------------------------
@pytest.mark.casa
def test_plots(solved: Solved, tmp_path):
    out = tmp_path / "plots"
    paths = [
        plot_bandpass(solved.btab, out / "bandpass.png"),
        plot_bandpass(solved.btab, out / "bandpass5.png", max_antennas=5),
        plot_gains(solved.gtab, out / "gains.png"),
        plot_gains(solved.btab, out / "b_as_gains.png"),  # first channel of a one-time table
    ]
    assert paths == [out / "bandpass.png", out / "bandpass5.png", out / "gains.png", out / "b_as_gains.png"]
    for p in paths:
        _check_png(p)
    # overwriting is atomic too, and nothing is left behind
    plot_gains(solved.gtab, out / "gains.png")
    _check_png(out / "gains.png")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)


@pytest.mark.casa
def test_missing_table(tmp_path):
    missing = tmp_path / "nope.B"
    with pytest.raises(CalibrationError, match="nope.B") as err:
        table_qa(missing, "B")
    assert err.value.path == str(missing) and "missing" in err.value.reason
    with pytest.raises(CalibrationError, match="nope.B"):
        plot_bandpass(missing, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------
# no CASA
# --------------------------------------------------------------------------
def _table(**kw) -> TableQA:
    base = {"table_type": "B", "path": "/cal/x.B", "n_solutions": 100, "flagged_fraction": 0.0, "median_snr": 50.0,
                "amp_scatter": 0.01, "phase_scatter_deg": 0.5, "worst_antennas": ["3", "7"], "per_antenna": {}}
    return TableQA(**{**base, **kw})


def test_thresholds_roundtrip():
    t = CalQAThresholds.from_dict({"max_flagged_fraction": "0.2", "min_median_snr": 3})
    assert t.max_flagged_fraction == 0.2 and t.min_median_snr == 3.0 and t.max_amp_scatter == 0.10
    assert CalQAThresholds.from_dict(t.to_dict()) == t
    assert CalQAThresholds.from_dict(None) == CalQAThresholds()
    with pytest.raises(ValueError, match="bogus"):
        CalQAThresholds.from_dict({"bogus": 1})
    with pytest.raises(ValueError):
        CalQAThresholds(max_flagged_fraction=1.5)


def test_assess_reasons():
    th = CalQAThresholds()
    assert assess([_table()], th) == ("good", [])
    assert assess([], th) == ("failed", ["no calibration tables to assess"])
    status, reasons = assess([_table(flagged_fraction=0.42, median_snr=3.2),
                              _table(table_type="G", amp_scatter=0.123, phase_scatter_deg=15.0)], th)
    assert status == "failed"
    assert reasons == [
        "B: 42.0% of solutions flagged (limit 30%)",
        "B: median SNR 3.2 (limit 5)",
        "G: amplitude scatter 12.3% (limit 10%) (worst antennas: 3, 7)",
        "G: phase scatter 15.0 deg (limit 10 deg) (worst antennas: 3, 7)",
    ]
    # unknown scatter or SNR is not gated; a table with nothing unflagged fails whatever the limit
    assert assess([_table(amp_scatter=math.nan, phase_scatter_deg=math.nan, median_snr=math.nan)], th)[0] == "good"
    assert assess([_table(flagged_fraction=1.0, median_snr=math.nan)], replace(th, max_flagged_fraction=1.0)) == (
        "failed", ["B: 100.0% of solutions flagged (limit 100%)"])


def test_series_scatter_measures_noise_not_structure():
    """768 channels of a rippled, delayed bandpass plus 1 % / 0.5 deg noise, a few RFI spikes
    and a flagged block: the estimate is the noise."""
    rng = np.random.default_rng(3)
    f = np.linspace(1.31e9, 1.50e9, 768)
    x = np.linspace(0.0, 1.0, f.size)
    truth = 2.0 * (1 + 0.1 * np.sin(2 * np.pi * 3 * x + 0.4)) * np.exp(2j * np.pi * f * 3e-9)
    noise = (1 + 0.01 * rng.standard_normal(f.size)) * np.exp(1j * np.radians(0.5) * rng.standard_normal(f.size))
    g = truth * noise
    g[[100, 300, 500]] *= 3.0  # RFI
    flags = np.zeros(f.size, dtype=bool)
    flags[600:650] = True
    g[600:650] = 0.0  # flagged garbage must not matter
    amp, phase, med = series_scatter([(g, flags)])
    assert amp == pytest.approx(0.01, rel=0.15)
    assert phase == pytest.approx(0.5, rel=0.15)
    assert med == pytest.approx(2.0, rel=0.05)
    assert math.isnan(series_scatter([(g[:2], flags[:2])])[0])  # one difference is too few
    assert all(math.isnan(v) for v in series_scatter([(g, np.ones(f.size, dtype=bool))]))
