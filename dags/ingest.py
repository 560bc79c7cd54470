"""ingest: find complete subband groups and start one `group` run per group.

A deferrable sensor waits in the triggerer (no worker slot) for new complete
groups; each is recorded in the registry and gets a `group` run whose id is
derived from the group id, so a group can never be processed twice by
accident."""
from __future__ import annotations

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag

from contimg_airflow.defaults import PIPELINE_DEFAULTS, PROJECT_EPOCH
from contimg_airflow.operators import RecordGroupsOperator
from contimg_airflow.sensors import IncomingGroupsSensor


@dag(
    dag_id="ingest",
    schedule="@continuous",
    start_date=PROJECT_EPOCH,
    max_active_runs=1,
    catchup=False,
    default_args=PIPELINE_DEFAULTS,
    tags=["dsa110", "ingest"],
    doc_md=__doc__,
)
def ingest():
    found = IncomingGroupsSensor(task_id="detect_groups", poll_interval=5.0)
    # files no run will read (bad names, symbolic links, late subbands, strays) are reported and alerted here
    runs = RecordGroupsOperator(task_id="record_groups", groups=found.output, issues=found.output["issues"])
    TriggerDagRunOperator.partial(
        task_id="start_group_runs", trigger_dag_id="group", skip_when_already_exists=True,
    ).expand_kwargs(runs.output)


ingest()
