"""Run Params and the casa pool through a real Airflow 3.3 deployment.

The api-server validates a trigger's conf against the DAG's Params (JSON
schema) before it creates the run, as the UI's trigger form does: a bad value
is refused with HTTP 400 and the reason, and no run exists afterwards; a good
one is accepted. The DAGs stay paused, so no task runs (nothing to clean up,
and the runs need no data). ``LocalAirflow.prepare()`` creates the ``casa``
pool with the configured number of slots. Separately, ``dag.test()`` (which
runs tasks in-process, without the scheduler) does not need the pool."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error

import pytest

from dsa110_contimg.localstack import LocalAirflow, free_port

pytestmark = [pytest.mark.airflow]

GROUP = "2026-01-15T08:00:00"
SLOTS = 3  # not the default (2), so the test sees the config reach the pool


def _wait(pred, timeout_s: float, stack: LocalAirflow, what: str):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        stack.check_alive()
        try:
            value = pred()
        except OSError:  # the api-server is still starting, or the DAG is not parsed yet (404)
            value = None
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"{what} did not happen within {timeout_s} s; see {stack.home}")


def _trigger(stack: LocalAirflow, token: str, dag_id: str, run_id: str, conf: dict) -> tuple[int, dict]:
    """POST /api/v2/dags/{dag_id}/dagRuns; (HTTP status, decoded reply)."""
    try:
        return 200, stack.api_request("POST", f"/api/v2/dags/{dag_id}/dagRuns", token,
                                      {"dag_run_id": run_id, "logical_date": None, "conf": conf})
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _run_exists(stack: LocalAirflow, token: str, dag_id: str, run_id: str) -> bool:
    try:
        stack.api_get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", token)
        return True
    except urllib.error.HTTPError as err:
        assert err.code == 404, err
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("params")
    (root / "data" / "incoming").mkdir(parents=True)
    s = LocalAirflow(home=root / "airflow", data_dir=root / "data", port=free_port(8193), contimg_env={
        "CONTIMG_CASA_POOL_SLOTS": str(SLOTS),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # runs are created, never started
    })
    s.prepare()
    s.start()
    try:
        token = _wait(s.api_token, 300, s, "the api-server accepting a login")
        for dag_id in ("group", "mosaic"):
            _wait(lambda: s.api_get(f"/api/v2/dags/{dag_id}", token), 300, s, f"the {dag_id} DAG registered")
        yield s, token
    finally:
        s.stop()


def test_prepare_creates_the_casa_pool_from_the_config(stack):
    s, token = stack
    pool = s.api_get("/api/v2/pools/casa", token)
    assert pool["slots"] == SLOTS and "heavy tasks" in pool["description"]


@pytest.mark.parametrize("key, value, words", [
    ("imaging_niter", -5, "is less than the minimum of 0"),
    ("imaging_backend", "difmap", "is not one of ['auto', 'tclean', 'wsclean']"),
    ("calibration_flagging", "manual", "is not one of ['auto', 'aoflagger', 'casa', 'none']"),
])
def test_group_run_with_a_bad_param_is_refused(stack, key, value, words):
    s, token = stack
    run_id = f"group__bad_{key}"
    status, reply = _trigger(s, token, "group", run_id, {"group_id": GROUP, key: value})
    assert status == 400, reply
    assert f"Invalid input for param {key}: " in reply["detail"] and words in reply["detail"], reply
    assert not _run_exists(s, token, "group", run_id)  # refused before any run (or task) existed


def test_group_run_with_good_params_is_accepted(stack):
    s, token = stack
    conf = {"group_id": GROUP, "imaging_backend": "tclean", "imaging_niter": 20000, "imaging_robust": -0.5,
            "imaging_imsize": 1024, "imaging_pblimit": 0.1, "calibration_wait_hours": 12,
            "calibration_flagging": "casa"}
    status, reply = _trigger(s, token, "group", "group__good", conf)
    assert status == 200, reply
    run = s.api_get("/api/v2/dags/group/dagRuns/group__good", token)
    assert run["conf"] == conf and run["state"] == "queued"  # the DAG is paused: queued, not started


def test_mosaic_run_params(stack):
    s, token = stack
    status, reply = _trigger(s, token, "mosaic", "mosaic__bad_method", {"mosaic_method": "max"})
    assert status == 400 and "Invalid input for param mosaic_method: " in reply["detail"], reply
    assert not _run_exists(s, token, "mosaic", "mosaic__bad_method")
    status, reply = _trigger(s, token, "mosaic", "mosaic__good", {"mosaic_method": "median", "detection_snr": 7})
    assert status == 200, reply


PROBE_DAG = '''
from datetime import datetime, timezone

from airflow.sdk import dag, task


@dag(dag_id="casa_pool_probe", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc))
def casa_pool_probe():
    @task(pool="casa")
    def heavy():
        return 42

    heavy()


casa_pool_probe()
'''


def test_dag_test_runs_without_the_casa_pool(tmp_path):
    """`dag.test()` / `airflow dags test` (debugging a DAG) run a task of the pool on a database that
    has no such pool: only the scheduler honours pools."""
    home = tmp_path / "home"
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "casa_pool_probe.py").write_text(PROBE_DAG)
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}"}
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run(airflow + ["db", "migrate"], check=True, capture_output=True, env=env, timeout=600)
    pools = subprocess.run(airflow + ["pools", "list", "-o", "json"], check=True, capture_output=True,
                           text=True, env=env, timeout=120).stdout
    assert '"casa"' not in pools
    out = subprocess.run(airflow + ["dags", "test", "casa_pool_probe"], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    finished = [line for line in (out.stdout + out.stderr).splitlines() if "DagRun Finished" in line]
    assert finished and "state=success" in finished[-1], out.stdout[-3000:] + out.stderr[-3000:]
