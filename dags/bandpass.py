"""bandpass: daily calibration solve at the bandpass calibrator's transit.

The schedule is the list of transit times of the configured calibrator over
OVRO, computed from its right ascension (not hard-coded). Each run waits for
the group containing the transit, solves bandpass and gains with CASA and
registers them with their validity window."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import dag

# The SDK's EventsTimetable fails to serialize in Airflow 3.3.2 (its encoder
# omits "_summary", which the scheduler's decoder requires); the core class
# serializes itself completely.
from airflow.timetables.events import EventsTimetable

from contimg_airflow.defaults import PIPELINE_DEFAULTS, config, schedule_bounds
from contimg_airflow.operators import CalibratorGroupSensor, SolveCalibrationOperator
from dsa110_contimg.calibrators import bandpass_calibrator_for, transits_in

CFG = config()
BOUNDS = schedule_bounds(CFG)
# The configured calibrator, or (bandpass_calibrator 'auto') the brightest in the pointing's strip.
_CAL = bandpass_calibrator_for(CFG.bandpass_calibrator, CFG.pointing_dec_deg)
_HORIZON = CFG.end or (datetime.now(timezone.utc) + timedelta(days=30))
TRANSITS = transits_in(_CAL.ra_deg, BOUNDS["start_date"], _HORIZON, dec_deg=_CAL.dec_deg)


@dag(
    dag_id="bandpass",
    schedule=EventsTimetable(TRANSITS, presorted=True, description=f"daily at {_CAL.name} transit"),
    max_active_runs=1,
    default_args=PIPELINE_DEFAULTS,
    tags=["dsa110", "calibration"],
    doc_md=__doc__,
    **BOUNDS,
)
def bandpass():
    group = CalibratorGroupSensor(task_id="wait_for_calibrator_group", poke_interval=10,
                                  timeout=timedelta(hours=6).total_seconds())
    solved = SolveCalibrationOperator(task_id="solve")
    group >> solved


bandpass()
