"""group: one subband group from raw files to a registered image.

convert -> wait for calibration -> apply calibration -> image -> QA -> register.
Started by `ingest` with conf {"group_id": ...}; the imaging choices are run
Params (the trigger form)."""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag

from contimg_airflow.defaults import PIPELINE_DEFAULTS, PROJECT_EPOCH, config, imaging_params
from contimg_airflow.operators import (
    ApplyCalibrationOperator,
    CalibrationAvailableSensor,
    ConvertOperator,
    ImageOperator,
    ImageQAOperator,
    RegisterImageOperator,
)

CFG = config()


@dag(
    dag_id="group",
    schedule=None,
    start_date=PROJECT_EPOCH,
    max_active_runs=24,  # groups before a calibrator transit wait (no slot held) for its solution
    default_args=PIPELINE_DEFAULTS,
    params={"group_id": Param("", type="string", description="subband group id, e.g. 2026-01-15T12:00:00"),
            **imaging_params(CFG)},
    tags=["dsa110", "group"],
    doc_md=__doc__,
)
def group():
    ms = ConvertOperator(task_id="convert")
    ready = CalibrationAvailableSensor(task_id="wait_for_calibration", poke_interval=10,
                                       timeout=timedelta(hours=6).total_seconds())
    applied = ApplyCalibrationOperator(task_id="apply_calibration")
    image = ImageOperator(task_id="image")
    qa = ImageQAOperator(task_id="qa", image=image.output)
    registered = RegisterImageOperator(task_id="register", image=image.output, qa=qa.output)
    ms >> ready >> applied >> image >> qa >> registered


group()
