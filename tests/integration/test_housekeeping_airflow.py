"""The housekeeping DAG run by Airflow 3.3 (``dag.test()``): a dry run, then a real run.

The data tree and the registry are made with the project's own registry and
publish code; Airflow reaches the registry through the ``contimg_db``
connection and finds the task logs through its own ``[logging]
base_log_folder``, exactly as a deployment does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[2]
DAY = 86400.0


def _write(path: Path, data: bytes, age_days: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    _age(path, age_days)
    return path


def _age(path: Path, age_days: float) -> None:
    t = time.time() - age_days * DAY
    for p in sorted(path.rglob("*"), reverse=True) if path.is_dir() else []:
        os.utime(p, (t, t))
    os.utime(path, (t, t))


@pytest.fixture(scope="module")
def airflow_db():
    """The session's Airflow metadata database (tests/conftest.py points it at a temporary file), migrated."""
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=dict(os.environ))


@pytest.fixture
def site(tmp_path, monkeypatch, airflow_db):
    """A deployment with one published window, one unpublished window, their groups, logs and raw data."""
    from dsa110_contimg.config import PipelineConfig
    from dsa110_contimg.publish import publish_products
    from dsa110_contimg.registry import Registry

    data, logs = tmp_path / "data", tmp_path / "airflow-logs"
    monkeypatch.setenv("CONTIMG_DATA_DIR", str(data))
    monkeypatch.delenv("CONTIMG_LOGS_DIR", raising=False)  # the task falls back to Airflow's log folder
    monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(logs))
    monkeypatch.setenv("AIRFLOW_CONN_CONTIMG_DB", json.dumps({"conn_type": "sqlite",
                                                              "host": str(tmp_path / "registry.db")}))
    cfg = PipelineConfig.load()
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    reg.migrate()
    f = {}
    f["raw"] = _write(cfg.incoming_dir / "2026-01-15T08:00:00_sb00.hdf5", b"raw" * 100, 40)
    image_ids = {}
    for i, gid in enumerate(("g1", "g2")):
        ms = cfg.ms_dir / f"{gid}.ms"
        _write(ms / "table.dat", b"m" * 2000, 20)
        _write(ms / "ANTENNA" / "table.dat", b"a" * 500, 20)
        _age(ms, 20)
        f[f"{gid}.ms"] = ms
        pbcor = _write(cfg.images_dir / gid / f"{gid}.pbcor.fits", b"p" * 800, 20)
        f[f"{gid}.pbcor"] = pbcor
        reg.record_group(gid, 61055.3 + i * 0.05, [str(f["raw"])])
        reg.update_group(gid, status="imaged", ms_path=str(ms))
        image_ids[gid] = reg.register_product("image", gid, str(pbcor), group_id=gid, qa_status="good")
    for window, gid, publish in (("2026-01-15T0800", "g1", True), ("2026-01-15T0900", "g2", False)):
        staged = [_write(cfg.mosaics_dir / f"{window}.mosaic.fits", b"M" * 4000, 20),
                  _write(cfg.mosaics_dir / f"{window}.sources.csv", b"ra,dec\n1,2\n", 20)]
        f[window] = staged
        mid = reg.register_product("mosaic", window, str(staged[0]), window=window, qa_status="good",
                                   provenance={"images": [image_ids[gid]]})
        cid = reg.register_product("catalog", window, str(staged[1]), window=window, qa_status="good")
        if publish:
            out = publish_products(staged, cfg.products_dir / window)
            reg.mark_published(mid, str(out[0]))
            reg.mark_published(cid, str(out[1]))
            f["published"] = out
            for p in staged:
                _age(p, 20)
    f["old_log"] = _write(logs / "dag_id=group" / "run_id=group__old" / "task_id=convert" / "attempt=1.log",
                          b"o" * 600, 45)
    f["new_log"] = _write(logs / "dag_id=group" / "run_id=group__new" / "task_id=convert" / "attempt=1.log",
                          b"n" * 100, 2)
    reg.engine.dispose()
    return f


def _parse_dag():
    """The DAG as a task process parses it: a new DAG object each time.

    dag.test() runs tasks in this process, and Airflow 3.3's process_params
    resolves a run's conf into the DAG's own Param objects, so a second run
    of the same object would inherit the first run's dry_run. A deployment
    parses the file afresh in every task process; so does this test."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "housekeeping.py"))
    assert bag.import_errors == {}
    return bag.dags["housekeeping"]


@pytest.fixture
def housekeeping_dag(site, monkeypatch):
    """A parser of the DAG, once the site's environment is set."""
    from airflow import settings

    monkeypatch.setattr(settings, "DAGS_FOLDER", str(ROOT / "dags"))  # dag.test() syncs the bundle from here
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
    return _parse_dag


def _results(dag_run) -> dict[str, dict]:
    """Each task's returned summary (its XCom), read from the metadata database."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as s:
        rows = s.query(XComModel).filter(XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id,
                                         XComModel.key == "return_value").all()
        return {r.task_id: (json.loads(r.value) if isinstance(r.value, str) else r.value) for r in rows}


def test_housekeeping_dag_shape(housekeeping_dag):
    dag = housekeeping_dag()
    assert {t.task_id for t in dag.tasks} == {"staging", "logs"}
    assert all(not t.downstream_task_ids for t in dag.tasks)  # independent: a logs failure spares staging
    assert dag.catchup is False and dag.max_active_runs == 1
    assert type(dag.timetable).__name__ == "CronTriggerTimetable"
    assert dag.timetable.expression == "0 15 * * *"  # daily
    assert dag.params.get_param("dry_run").schema["type"] == "boolean"
    assert dag.params["dry_run"] is False  # the config's housekeeping_dry_run
    assert dag.default_args["owner"] == "contimg"


def test_dry_run_then_real_run(site, housekeeping_dag):
    from airflow.utils.state import DagRunState

    all_files = [p for p in site.values() if isinstance(p, Path)] + site["2026-01-15T0800"] \
        + site["2026-01-15T0900"] + site["published"]

    dry = housekeeping_dag().test(run_conf={"dry_run": True})  # the trigger form with dry_run ticked
    assert dry.state == DagRunState.SUCCESS
    res = _results(dry)
    assert all(p.exists() for p in all_files)  # a dry run deletes nothing ...
    staging, logs = res["staging"], res["logs"]
    assert staging["dry_run"] is True and staging["deleted"] == 0
    # ... but says what it would: the published window's two staged files and g1's MeasurementSet
    assert staging["candidates"] == 3 and staging["candidate_bytes"] == 4000 + 11 + 2500
    would = {p for v in staging["would_delete"].values() for p in v["examples"]}
    assert would == {str(p) for p in site["2026-01-15T0800"]} | {str(site["g1.ms"])}
    assert staging["kept_why"]["unpublished product"]["count"] == 4  # 2 images, window 0900's mosaic + catalogue
    assert staging["kept_why"]["MeasurementSet in no published product"]["examples"] == [str(site["g2.ms"])]
    assert logs["candidates"] == 1 and logs["would_delete"]["log older than retention"]["bytes"] == 600

    real = housekeeping_dag().test()  # the Param's default, as in a scheduled run: not a dry run
    assert real.state == DagRunState.SUCCESS
    res = _results(real)
    assert res["staging"]["dry_run"] is False
    assert res["staging"]["deleted"] == 3 and res["staging"]["bytes_freed"] == 4000 + 11 + 2500
    assert res["logs"]["deleted"] == 1 and res["logs"]["bytes_freed"] == 600
    gone = site["2026-01-15T0800"] + [site["g1.ms"], site["old_log"]]
    assert not any(p.exists() for p in gone)
    kept = [site["raw"], site["g1.pbcor"], site["g2.pbcor"], site["g2.ms"], site["new_log"]] \
        + site["2026-01-15T0900"] + site["published"]
    assert all(p.exists() for p in kept)
    assert site["published"][0].read_bytes() == b"M" * 4000  # the published copy is intact
