"""housekeeping: daily retention of the staging area and the task logs.

- **staging** deletes staging copies of published products once their
  published copy is verified in the products directory, and intermediate
  MeasurementSets whose image is in a published mosaic, after
  `retention_staging_days` / `retention_ms_days`;
- **logs** deletes task logs older than `retention_logs_days`.

Nothing unpublished, nothing that is the only copy, no calibration table and
no raw incoming file is ever deleted. Trigger with **dry_run** ticked to see
what would go (the task's log and XCom list it) without deleting anything."""
from __future__ import annotations

from airflow.sdk import CronTriggerTimetable, Param, dag

from contimg_airflow.defaults import PIPELINE_DEFAULTS, PROJECT_EPOCH, config
from contimg_airflow.operators import HousekeepingOperator

CFG = config()


@dag(
    dag_id="housekeeping",
    # Daily at 15:00 UTC (07:00-08:00 at OVRO), so a failure alerts during the working day. An
    # explicit trigger timetable: a run has no data interval to process, only a time to run at.
    schedule=CronTriggerTimetable("0 15 * * *", timezone="UTC"),
    start_date=PROJECT_EPOCH,
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,  # it deletes files: an operator turns it on, whatever the deployment's default
    default_args=PIPELINE_DEFAULTS,
    params={"dry_run": Param(CFG.housekeeping_dry_run, type="boolean",
                             description="only report what would be deleted; delete nothing")},
    tags=["dsa110", "housekeeping"],
    doc_md=__doc__,
)
def housekeeping():
    HousekeepingOperator(task_id="staging", scopes=["staging", "ms"])
    HousekeepingOperator(task_id="logs", scopes=["logs"])


housekeeping()
