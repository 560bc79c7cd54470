"""mosaic: one run per fixed time window (hourly data intervals).

Waits for every group observed in the window to finish, mosaics the good
images, finds and cross-matches sources and publishes. Time-scheduled, so an
Airflow backfill over a date range reprocesses those windows: a backfill run
reuses each group's image when its inputs are unchanged (Param `reprocess`:
"changed"), else remakes it from raw files ("all" remakes every group), and
publishes the window's next version, superseding the previous one only once
the new one passed QA (dsa110_contimg.reprocess)."""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DeltaDataIntervalTimetable, TriggerRule, dag

from contimg_airflow.defaults import PIPELINE_DEFAULTS, config, mosaic_params, schedule_bounds
from contimg_airflow.operators import (
    CASA_POOL,
    CrossmatchOperator,
    MosaicOperator,
    PlanReprocessingOperator,
    PublishOperator,
    ReprocessGroupOperator,
    WindowImagesSensor,
)

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
    # Backfill runs only: reuse each group's image or remake it from raw files (mapped, one per group);
    # in scheduled runs the plan is empty and the mapped task is skipped.
    plan = PlanReprocessingOperator(task_id="plan_reprocessing")
    remade = ReprocessGroupOperator.partial(task_id="reprocess_group", pool=CASA_POOL).expand(
        group=plan.output)
    mosaicked = MosaicOperator(task_id="mosaic", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    matched = CrossmatchOperator(task_id="crossmatch", mosaic=mosaicked.output)
    published = PublishOperator(task_id="publish", mosaic=mosaicked.output, match=matched.output)
    ready >> plan >> remade >> mosaicked
    plan >> mosaicked >> matched >> published


mosaic()
