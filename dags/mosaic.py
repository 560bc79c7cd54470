"""mosaic: one run per fixed time window (hourly data intervals).

Waits for every group observed in the window to finish, mosaics the good
images, finds and cross-matches sources and publishes. Time-scheduled, so an
Airflow backfill over a date range reprocesses those windows."""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DeltaDataIntervalTimetable, dag

from contimg_airflow.defaults import PIPELINE_DEFAULTS, config, mosaic_params, schedule_bounds
from contimg_airflow.operators import CrossmatchOperator, MosaicOperator, PublishOperator, WindowImagesSensor

CFG = config()


@dag(
    dag_id="mosaic",
    schedule=DeltaDataIntervalTimetable(timedelta(minutes=CFG.mosaic_window_minutes)),
    max_active_runs=2,
    default_args=PIPELINE_DEFAULTS,
    params=mosaic_params(CFG),
    tags=["dsa110", "mosaic"],
    doc_md=__doc__,
    **schedule_bounds(CFG),
)
def mosaic():
    ready = WindowImagesSensor(task_id="wait_for_images", poke_interval=15,
                               timeout=timedelta(hours=12).total_seconds())
    mosaicked = MosaicOperator(task_id="mosaic")
    matched = CrossmatchOperator(task_id="crossmatch", mosaic=mosaicked.output)
    published = PublishOperator(task_id="publish", mosaic=mosaicked.output, match=matched.output)
    ready >> mosaicked >> matched >> published


mosaic()
