"""group: one subband group from raw files to a registered image.

convert -> wait for calibration -> solve gains (when a calibrator transits
during the group) -> apply calibration -> image -> QA -> register.
Started by `ingest` with conf {"group_id": ...}; the imaging choices are run
Params (the trigger form)."""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference, Param, TriggerRule, dag

from contimg_airflow.defaults import (
    MAX_CALIBRATION_WAIT_HOURS,
    PIPELINE_DEFAULTS,
    PROJECT_EPOCH,
    calibration_params,
    config,
    imaging_params,
)
from contimg_airflow.notifiers import group_deadline_missed
from contimg_airflow.operators import (
    ApplyCalibrationOperator,
    CalibrationAvailableSensor,
    ConvertOperator,
    ImageOperator,
    ImageQAOperator,
    RegisterImageOperator,
    SolveGainsOperator,
)

CFG = config()


@dag(
    dag_id="group",
    schedule=None,
    start_date=PROJECT_EPOCH,
    max_active_runs=24,  # groups before a calibrator transit wait (no slot held) for its solution
    default_args=PIPELINE_DEFAULTS,
    # Latency alert: a run still unfinished group_deadline_minutes after being queued emails (and Slacks);
    # the scheduler notices, the triggerer sends.
    deadline=DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT,
                           interval=timedelta(minutes=CFG.group_deadline_minutes),
                           callback=AsyncCallback(group_deadline_missed,
                                                  kwargs={"deadline_minutes": CFG.group_deadline_minutes}),
                           name="group latency"),
    params={"group_id": Param("", type="string", description="subband group id, e.g. 2026-01-15T12:00:00"),
            **calibration_params(CFG), **imaging_params(CFG)},
    tags=["dsa110", "group"],
    doc_md=__doc__,
)
def group():
    ms = ConvertOperator(task_id="convert")
    # Gives up after the run's calibration_wait_hours; the timeout is only a backstop.
    ready = CalibrationAvailableSensor(task_id="wait_for_calibration", poke_interval=10,
                                       timeout=timedelta(hours=MAX_CALIBRATION_WAIT_HOURS).total_seconds())
    gains = SolveGainsOperator(task_id="solve_gains")
    # A failed gains solve alerts but the group goes on with the sets in force.
    applied = ApplyCalibrationOperator(task_id="apply_calibration", trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS)
    image = ImageOperator(task_id="image")
    qa = ImageQAOperator(task_id="qa", image=image.output)
    registered = RegisterImageOperator(task_id="register", image=image.output, qa=qa.output,
                                       applied=applied.output, converted=ms.output)
    ms >> ready >> gains >> applied
    ready >> applied >> image >> qa >> registered


group()
