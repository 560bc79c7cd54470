"""DAG structure: the four DAGs import cleanly and are wired as DESIGN.md says."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory, monkeypatch_module):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    mp.setenv("CONTIMG_SCHEDULE_START", "2026-01-15T12:00:00+00:00")
    mp.setenv("CONTIMG_SCHEDULE_END", "2026-01-16T12:00:00+00:00")
    yield mp
    mp.undo()


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"ingest", "group", "bandpass", "mosaic", "housekeeping"}


def _edges(dag):
    return {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}


def test_group_dag_stage_order(dagbag):
    dag = dagbag.dags["group"]
    assert type(dag.timetable).__name__ == "NullTimetable"  # only ingest starts group runs
    assert _edges(dag) == {
        ("convert", "wait_for_calibration"), ("wait_for_calibration", "solve_gains"),
        ("wait_for_calibration", "apply_calibration"), ("solve_gains", "apply_calibration"),
        ("apply_calibration", "image"), ("apply_calibration", "register"),
        ("image", "qa"), ("image", "register"), ("qa", "register"),
        ("convert", "register"),  # the raw files' checksums, for the image's provenance
    }
    sensor = dag.get_task("wait_for_calibration")
    assert sensor.mode == "reschedule"  # waits without holding a worker slot
    assert sensor.timeout == 48 * 3600  # backstop; the run's calibration_wait_hours decides
    # a failed hourly-gains solve alerts, but the group goes on with the sets in force
    assert dag.get_task("apply_calibration").trigger_rule == "all_done_min_one_success"
    assert {"group_id", "imaging_backend", "imaging_niter", "imaging_robust", "calibration_wait_hours",
            "calibration_flagging"} <= set(dag.params.keys())


def test_ingest_dag_triggers_group_runs(dagbag):
    dag = dagbag.dags["ingest"]
    assert dag.max_active_runs == 1
    assert _edges(dag) == {("detect_groups", "record_groups"), ("record_groups", "start_group_runs")}
    trig = dag.get_task("start_group_runs")
    assert trig.partial_kwargs.get("trigger_dag_id") == "group"
    assert trig.partial_kwargs.get("skip_when_already_exists") is True


def test_mosaic_dag_is_windowed(dagbag):
    dag = dagbag.dags["mosaic"]
    assert _edges(dag) == {("wait_for_images", "plan_reprocessing"), ("plan_reprocessing", "reprocess_group"),
                           ("plan_reprocessing", "mosaic"), ("reprocess_group", "mosaic"),
                           ("mosaic", "crossmatch"), ("mosaic", "publish"), ("crossmatch", "publish")}
    # Scheduled runs plan nothing, so the mapped reprocess_group is skipped and mosaic still runs.
    assert dag.get_task("mosaic").trigger_rule == "none_failed_min_one_success"
    assert dag.params["reprocess"] == "changed"
    # A data-interval timetable (not a trigger timetable): backfills reprocess windows.
    assert type(dag.timetable).__name__ in ("DeltaDataIntervalTimetable",)


def test_bandpass_dag_runs_at_calibrator_transits(dagbag):
    from dsa110_contimg.calibrators import get_calibrator, transits_in

    dag = dagbag.dags["bandpass"]
    assert _edges(dag) == {("wait_for_calibrator_group", "solve")}
    events = dag.timetable.event_dates
    assert len(events) == 1  # one transit in the configured day
    from datetime import datetime, timezone
    cal = get_calibrator("0834+555")
    expected = transits_in(cal.ra_deg, datetime(2026, 1, 15, 12, tzinfo=timezone.utc),
                           datetime(2026, 1, 16, 12, tzinfo=timezone.utc), dec_deg=cal.dec_deg)
    assert abs((events[0] - expected[0]).total_seconds()) < 1


AIRFLOW2_PATTERNS = [
    r"from airflow\.operators\.", r"from airflow\.sensors\.", r"from airflow\.decorators",
    r"from airflow\.models\.dag import", r"from airflow\.models import DAG", r"schedule_interval\s*=",
    r"from airflow\.hooks\.base", r"from airflow\.models\.baseoperator",
    r"from airflow\.exceptions import .*AirflowSkipException",  # moved to airflow.sdk.exceptions in 3.x
]


@pytest.mark.parametrize("path", sorted((ROOT / "dags").glob("*.py")) + sorted((ROOT / "plugins").rglob("*.py")),
                         ids=lambda p: p.name)
def test_no_deprecated_airflow2_imports(path):
    text = path.read_text()
    for pat in AIRFLOW2_PATTERNS:
        assert not re.search(pat, text), f"{path.name} uses the Airflow 2 idiom {pat!r}"


def test_library_never_imports_airflow():
    offenders = [p for p in (ROOT / "include").rglob("*.py")
                 if re.search(r"^\s*(from|import)\s+airflow\b", p.read_text(), re.M)]
    assert offenders == []


def test_every_dag_survives_scheduler_serialization(dagbag):
    """What the dag-processor stores must load back in the scheduler."""
    from airflow.serialization.serialized_objects import DagSerialization

    for dag_id, dag in dagbag.dags.items():
        back = DagSerialization.from_dict(DagSerialization.to_dict(dag))
        assert back.dag_id == dag_id
        assert type(back.timetable).__name__ == type(dag.timetable).__name__


def test_products_are_asset_outlets_for_lineage_only(dagbag):
    """Images, mosaics and the two kinds of calibration sets are asset events (the Assets page);
    no DAG is scheduled on them (asset events collapse: `ingest` starts one run per group)."""
    outlets = {(d.dag_id, t.task_id): {a.name for a in t.outlets} for d in dagbag.dags.values() for t in d.tasks
               if t.outlets}
    assert outlets == {
        ("group", "register"): {"contimg_image"},
        ("group", "solve_gains"): {"contimg_caltable_gains"},
        ("bandpass", "solve"): {"contimg_caltable_bandpass"},
        ("mosaic", "mosaic"): {"contimg_mosaic"},
    }
    assert all(type(d.timetable).__name__ not in ("AssetTriggeredTimetable", "AssetOrTimeSchedule")
               for d in dagbag.dags.values())


# -- concurrency and retries (README "Concurrency and retries") ---------------------------

HEAVY = {"group": {"convert", "solve_gains", "apply_calibration", "image"}, "bandpass": {"solve"},
         "mosaic": {"mosaic", "crossmatch", "reprocess_group"}}


def test_heavy_tasks_share_the_casa_pool(dagbag):
    for dag_id, heavy in HEAVY.items():
        dag = dagbag.dags[dag_id]
        pools = {t.task_id: t.pool for t in dag.tasks}
        assert {tid for tid, pool in pools.items() if pool == "casa"} == heavy, (dag_id, pools)
    # waiting (sensors) and bookkeeping (QA, register, publish, ingest) never hold a casa slot
    for dag_id in ("ingest", "housekeeping"):
        assert all(t.pool == "default_pool" for t in dagbag.dags[dag_id].tasks)


def test_every_operator_fails_fast_on_errors_a_retry_cannot_fix():
    """Each operator's execute (each sensor's poke) goes through operators.fails_fast."""
    import inspect

    from airflow.sdk import BaseOperator, BaseSensorOperator

    from contimg_airflow import operators

    classes = [c for _, c in inspect.getmembers(operators, inspect.isclass)
               if issubclass(c, BaseOperator) and c.__module__ == operators.__name__ and not c.__name__.startswith("_")]
    assert len(classes) >= 15
    for cls in classes:
        method = cls.poke if issubclass(cls, BaseSensorOperator) else cls.execute
        assert getattr(method, "fails_fast", False), f"{cls.__name__}.{method.__name__} is not wrapped"


def test_retries_back_off_exponentially(dagbag):
    from datetime import timedelta

    for dag in dagbag.dags.values():
        for t in dag.tasks:
            if t.task_id == "start_group_runs":  # mapped: its partial kwargs carry the same defaults
                continue
            assert t.retries == 3, (dag.dag_id, t.task_id)
            assert t.retry_delay == timedelta(minutes=1)
            assert t.retry_exponential_backoff == 2.0
            assert t.max_retry_delay == timedelta(minutes=10)


def test_first_retry_delay_is_the_deployments(monkeypatch):
    """``retry_delay_s`` (CONTIMG_RETRY_DELAY_S) sets the first delay; the fault tests shorten it."""
    import importlib
    from datetime import timedelta

    import contimg_airflow.defaults as defaults

    monkeypatch.setenv("CONTIMG_RETRY_DELAY_S", "7.5")
    try:
        assert importlib.reload(defaults).PIPELINE_DEFAULTS["retry_delay"] == timedelta(seconds=7.5)
    finally:
        monkeypatch.delenv("CONTIMG_RETRY_DELAY_S")
        assert importlib.reload(defaults).PIPELINE_DEFAULTS["retry_delay"] == timedelta(minutes=1)


def test_max_active_runs_bound_the_work_in_flight(dagbag):
    runs = {dag_id: dag.max_active_runs for dag_id, dag in dagbag.dags.items()}
    assert runs == {"ingest": 1, "group": 24, "bandpass": 1, "mosaic": 2, "housekeeping": 1}


# -- run Params: Airflow's own validation, as the trigger form and the REST API apply it ----------

def _validated(dag, conf: dict) -> dict:
    """What creating a run with ``conf`` does first (SerializedDAG.create_dagrun), on the DAG as the
    scheduler and the api-server load it."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(DagSerialization.to_dict(dag)).params.deep_merge(conf).validate()


GROUP_VALID = {"group_id": "2026-01-15T08:00:00", "imaging_backend": "wsclean", "imaging_niter": 20000,
               "imaging_robust": -0.5, "imaging_fov_deg": 4.0, "imaging_imsize": 1024, "imaging_cell_arcsec": 6.0,
               "imaging_auto_threshold_sigma": 2.5, "imaging_pblimit": 0.1, "calibration_wait_hours": 12,
               "imaging_subtract_bright": False, "calibration_flagging": "casa"}


def test_group_params_accept_valid_choices(dagbag):
    params = _validated(dagbag.dags["group"], GROUP_VALID)
    assert params == GROUP_VALID
    defaults = _validated(dagbag.dags["group"], {"group_id": "2026-01-15T08:00:00"})
    assert defaults["imaging_imsize"] is None and defaults["imaging_cell_arcsec"] is None  # from fov and beam
    assert defaults["imaging_backend"] == "auto" and defaults["imaging_pblimit"] == 0.2
    assert defaults["imaging_subtract_bright"] is True


@pytest.mark.parametrize("key, value, words", [
    ("imaging_backend", "difmap", "is not one of ['auto', 'tclean', 'wsclean']"),
    ("imaging_niter", -5, "is less than the minimum of 0"),
    ("imaging_niter", "many", "is not of type 'integer'"),
    ("imaging_robust", 3, "is greater than the maximum of 2"),
    ("imaging_fov_deg", 0, "is less than or equal to the minimum of 0"),
    ("imaging_imsize", 8, "is less than the minimum of 16"),
    ("imaging_cell_arcsec", -1.0, "is less than or equal to the minimum of 0"),
    ("imaging_auto_threshold_sigma", 0, "is less than or equal to the minimum of 0"),
    ("imaging_pblimit", 1.0, "is greater than or equal to the maximum of 1"),
    ("imaging_subtract_bright", "maybe", "is not of type 'boolean'"),
    ("calibration_wait_hours", 100, "is greater than the maximum of 48"),
    ("calibration_flagging", "manual", "is not one of ['auto', 'aoflagger', 'casa', 'none']"),
])
def test_group_params_reject_bad_values_with_the_reason(dagbag, key, value, words):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError) as info:
        _validated(dagbag.dags["group"], {**GROUP_VALID, key: value})
    assert str(info.value).startswith(f"Invalid input for param {key}: ") and words in str(info.value), info.value


def test_mosaic_params(dagbag):
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.dags["mosaic"]
    mine = {"mosaic_method": "median", "detection_snr": 7, "crossmatch_radius_arcsec": 30}
    ok = _validated(dag, mine)
    assert {k: ok[k] for k in mine} == mine
    for key, value in (("mosaic_method", "max"), ("detection_snr", 1), ("crossmatch_radius_arcsec", 0)):
        with pytest.raises(ParamValidationError, match=f"Invalid input for param {key}: "):
            _validated(dag, {key: value})


def test_every_param_reaches_the_step_that_uses_it(dagbag, monkeypatch):
    """Each Param is a config field (PipelineConfig.with_overrides applies it); the imaging ones
    also reach ImagingParams through the image operator."""
    from dataclasses import fields

    from contimg_airflow import operators
    from dsa110_contimg.config import PipelineConfig
    from dsa110_contimg.imaging import ImagingParams

    known = {f.name for f in fields(PipelineConfig)}
    run_only = {"group_id", "reprocess"}  # read by the operators themselves, not config
    for dag_id in ("group", "mosaic"):
        assert set(dagbag.dags[dag_id].params.keys()) - run_only <= known, dag_id
    cfg = PipelineConfig.load(env={}).with_overrides(GROUP_VALID)
    im = ImagingParams.from_dict(operators._imaging_overrides(cfg))
    assert (im.backend, im.niter, im.robust, im.fov_deg, im.imsize, im.cell_arcsec, im.auto_threshold_sigma,
            im.pblimit) == ("wsclean", 20000, -0.5, 4.0, 1024, 6.0, 2.5, 0.1)
    assert set(k for k in GROUP_VALID if k.startswith("imaging_")) == \
        {f"imaging_{k}" for k in operators._imaging_overrides(cfg)}
