"""Operators: unpack inputs, call one pipeline step, return its result.

All science lives in ``dsa110_contimg``; these only bind it to Airflow's
context (run Params, the data interval, the ``contimg_db`` connection)."""
from __future__ import annotations

from datetime import datetime
from functools import wraps
from typing import Any, Sequence

from airflow.sdk import Asset, BaseOperator, BaseSensorOperator, PokeReturnValue

from contimg_airflow.registry_conn import get_config, get_registry

# Heavy tasks (CASA, whole MeasurementSets or images in memory) take a slot of this Airflow pool, so
# at most `casa_pool_slots` of them run at once however many runs are active (LocalAirflow.prepare()
# creates it; a deployment creates it with `airflow pools set casa <slots> ...`).
CASA_POOL = "casa"


class _CasaPool(BaseOperator):
    """Base (mixed in first) of the heavy operators: their tasks run in the ``casa`` pool unless told
    otherwise. A BaseOperator itself, so Airflow's metaclass wraps its ``__init__`` like the others'."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("pool", CASA_POOL)
        super().__init__(**kwargs)


def fails_fast(method):
    """Decorates every operator's ``execute`` (and sensor's ``poke``): an error a retry cannot fix
    (a corrupt input, a failed QA gate, a bad parameter: ``not is_transient(exc)``) fails the task
    at once as AirflowFailException, without spending its retries; a transient one (I/O, a timeout,
    a locked database, no calibration yet) is re-raised as is, for Airflow to retry with backoff.
    Airflow's own signals (skip, reschedule, fail, defer) pass through untouched."""
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from contimg_airflow.airflow_fixes import allow_task_children
    from dsa110_contimg.errors import is_transient

    @wraps(method)
    def wrapper(self, context, *args, **kwargs):
        allow_task_children()  # under Celery a task's process could not start worker processes
        try:
            return method(self, context, *args, **kwargs)
        except AirflowException:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise
            self.log.error("not retrying: %s is not transient", type(exc).__name__)
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc

    wrapper.fails_fast = True  # tests/dags check that every operator is wrapped
    return wrapper


def _imaging_overrides(cfg) -> dict:
    """The run's imaging choices (the config with the run's imaging_* Params) as ImagingParams fields."""
    return {"backend": cfg.imaging_backend, "niter": cfg.imaging_niter, "robust": cfg.imaging_robust,
            "fov_deg": cfg.imaging_fov_deg, "imsize": cfg.imaging_imsize, "cell_arcsec": cfg.imaging_cell_arcsec,
            "auto_threshold_sigma": cfg.imaging_auto_threshold_sigma, "pblimit": cfg.imaging_pblimit,
            "subtract_bright": cfg.imaging_subtract_bright}


# Lineage (DESIGN.md section 4): one asset per product kind, one event per product made, whose
# extra carries the group or window, the paths, the product id, the QA numbers and what it was made
# from (dsa110_contimg.provenance). The Assets page lists these four. Outlets are for lineage only:
# no DAG is scheduled on them (asset events collapse; `ingest` starts one `group` run per group).
ASSET_GROUP = "dsa110_contimg"
IMAGE_ASSET = Asset(name="contimg_image", uri="contimg://products/image", group=ASSET_GROUP)
MOSAIC_ASSET = Asset(name="contimg_mosaic", uri="contimg://products/mosaic", group=ASSET_GROUP)
BANDPASS_ASSET = Asset(name="contimg_caltable_bandpass", uri="contimg://caltables/bandpass", group=ASSET_GROUP)
GAINS_ASSET = Asset(name="contimg_caltable_gains", uri="contimg://caltables/gains", group=ASSET_GROUP)


def _emit(context, asset: Asset, extra: dict) -> None:
    """Attach ``extra`` to the event Airflow records for ``asset`` when the task succeeds."""
    context["outlet_events"][asset].extra = extra


class _StageOperator(BaseOperator):
    """Common plumbing: config with the run's Params, the registry."""

    template_fields: Sequence[str] = ("group_id",)
    ui_color = "#d8e8f8"

    def __init__(self, *, group_id: str = "{{ dag_run.conf.get('group_id', '') }}", **kwargs: Any):
        super().__init__(**kwargs)
        self.group_id = group_id

    def setup(self, context):
        if not self.group_id:
            raise ValueError("this run has no group_id in its conf; trigger it with {\"group_id\": ...}")
        return get_config(context["params"]), get_registry()


class ConvertOperator(_CasaPool, _StageOperator):
    """convert: the group's UVH5 subbands -> one MeasurementSet."""

    @fails_fast
    def execute(self, context) -> dict:
        from dsa110_contimg.pipeline import convert_step

        cfg, reg = self.setup(context)
        return convert_step(cfg, reg, self.group_id)


class CalibrationAvailableSensor(BaseSensorOperator):
    """Waits (rescheduled, no slot held) until a good bandpass covers the group.

    Gives up after the run's ``calibration_wait_hours`` with the reason ("no
    valid bandpass at MJD ...") recorded on the group; clearing the task once a
    solution exists makes the group go on."""

    template_fields: Sequence[str] = ("group_id",)

    def __init__(self, *, group_id: str = "{{ dag_run.conf.get('group_id', '') }}", **kwargs: Any):
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)
        self.group_id = group_id

    @fails_fast
    def poke(self, context) -> bool:
        from airflow.sdk.exceptions import AirflowFailException

        from dsa110_contimg.calibration.stage import calibration_state, record_wait_failure

        reg = get_registry()
        ok, reason = calibration_state(reg, self.group_id)
        if ok:
            return True
        waited = _waited_s(context)
        limit = min(get_config(context["params"]).calibration_wait_hours * 3600.0, self.timeout)
        self.log.info("group %s: %s (waited %.0f of %.0f s)", self.group_id, reason, waited, limit)
        if waited >= limit:
            message = f"{reason}; gave up after waiting {waited / 3600:.2f} h"
            record_wait_failure(reg, self.group_id, message)
            raise AirflowFailException(message)
        return False


def _waited_s(context) -> float:
    """Seconds since this sensor's first poke (reschedule mode keeps it in the database)."""
    from datetime import timezone

    first = context["ti"].get_first_reschedule_date(context)
    return 0.0 if first is None else (datetime.now(timezone.utc) - first).total_seconds()


class SolveGainsOperator(_CasaPool, _StageOperator):
    """calibration solve (hourly): gains on a calibrator transiting during the group.

    Succeeds without solving (``{"skipped": true, "reason": ...}`` in XCom)
    when no calibrator of the strip transits during the group: a skipped
    state would also skip ``apply_calibration`` under Airflow's trigger rules.
    A solved set is an event of the gains-table asset."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("outlets", [GAINS_ASSET])
        super().__init__(**kwargs)

    @fails_fast
    def execute(self, context) -> dict:
        from dsa110_contimg.calibration.stage import solve_gains_step

        from dsa110_contimg.provenance import calset_event_extra

        cfg, reg = self.setup(context)
        res = solve_gains_step(cfg, reg, self.group_id)
        if res.get("skipped"):
            self.log.info("no gains solved: %s", res["reason"])
            self.outlets = []  # nothing was made: no gains-table event (the outlet would emit an empty one)
        else:
            _emit(context, GAINS_ASSET, calset_event_extra({"group_id": self.group_id, **res}))
        return res


class ApplyCalibrationOperator(_CasaPool, _StageOperator):
    """calibration apply: the tables valid at the group's mid-time."""

    @fails_fast
    def execute(self, context) -> dict:
        from dsa110_contimg.calibration.stage import apply_step

        cfg, reg = self.setup(context)
        return apply_step(cfg, reg, self.group_id)


class ImageOperator(_CasaPool, _StageOperator):
    """image: one primary-beam-corrected image per MeasurementSet."""

    @fails_fast
    def execute(self, context) -> dict:
        from dsa110_contimg.pipeline import image_step

        cfg, reg = self.setup(context)  # the run's imaging_* Params are in cfg
        return image_step(cfg, reg, self.group_id, _imaging_overrides(cfg))


class ImageQAOperator(_StageOperator):
    """QA: decide the image's status from its numbers."""

    template_fields: Sequence[str] = ("group_id", "image")

    def __init__(self, *, image: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.image = image

    @fails_fast
    def execute(self, context) -> dict:
        from dsa110_contimg.pipeline import qa_image

        cfg = get_config(context["params"])
        qa = qa_image(cfg, self.image)
        self.log.info("QA of %s: %s %s", self.group_id, qa["qa_status"], qa["reasons"])
        return qa


class RegisterImageOperator(_StageOperator):
    """register: record the image, its QA and provenance in the products registry; an image asset event.

    ``converted`` is the convert task's result (the raw files' checksums for the provenance)."""

    template_fields: Sequence[str] = ("group_id", "image", "qa", "applied", "converted")

    def __init__(self, *, image: Any, qa: Any, applied: Any = None, converted: Any = None, **kwargs: Any):
        kwargs.setdefault("outlets", [IMAGE_ASSET])
        super().__init__(**kwargs)
        self.image, self.qa, self.applied, self.converted = image, qa, applied, converted

    @fails_fast
    def execute(self, context) -> dict:
        from dsa110_contimg.pipeline import register_image
        from dsa110_contimg.provenance import image_event_extra

        cfg, reg = self.setup(context)
        res = register_image(cfg, reg, self.group_id, self.image, self.qa, self.applied, self.converted)
        _record_fingerprint(cfg, reg, self.group_id, res)
        _emit(context, IMAGE_ASSET, image_event_extra(self.group_id, self.image, self.qa, res))
        return res


class CalibratorGroupSensor(BaseSensorOperator):
    """Waits until the group containing the calibrator transit is converted."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)

    @fails_fast
    def poke(self, context) -> PokeReturnValue:
        from dsa110_contimg.calibration.stage import calibrator_group

        transit: datetime = context["logical_date"]
        row = calibrator_group(get_config(context["params"]), get_registry(), transit)
        if row is None:
            self.log.info("waiting for the converted group containing the transit at %s", transit)
        return PokeReturnValue(is_done=row is not None, xcom_value=row and row["group_id"])


class SolveCalibrationOperator(_CasaPool, BaseOperator):
    """calibration solve (daily): delay, bandpass and gains on the calibrator's group;
    a bandpass-table asset event."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("outlets", [BANDPASS_ASSET])
        super().__init__(**kwargs)

    @fails_fast
    def execute(self, context) -> dict:
        from dsa110_contimg.calibration.stage import solve_bandpass_step
        from dsa110_contimg.provenance import calset_event_extra

        res = solve_bandpass_step(get_config(context["params"]), get_registry(), context["logical_date"])
        _emit(context, BANDPASS_ASSET, calset_event_extra(res))
        return res


class WindowImagesSensor(BaseSensorOperator):
    """Waits until every group observed in the data interval is imaged or failed.

    Skips the run when the window holds no groups at all."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)

    @fails_fast
    def poke(self, context) -> PokeReturnValue:
        from airflow.sdk.exceptions import AirflowSkipException

        from dsa110_contimg.pipeline import window_state

        state = window_state(get_config(context["params"]), get_registry(),
                             context["data_interval_start"], context["data_interval_end"])
        if not state["groups"]:
            raise AirflowSkipException("no groups were observed in this window")
        if state["unfinished"]:
            self.log.info("waiting for %d of %d groups: %s", len(state["unfinished"]), len(state["groups"]),
                          state["unfinished"])
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=len(state["images"]))


class MosaicOperator(_CasaPool, BaseOperator):
    """mosaic: primary-beam-weighted combination of the window's images; a mosaic asset event."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("outlets", [MOSAIC_ASSET])
        super().__init__(**kwargs)

    @fails_fast
    def execute(self, context) -> dict:
        from dsa110_contimg.pipeline import mosaic_step
        from dsa110_contimg.provenance import mosaic_event_extra
        from dsa110_contimg.reprocess import mosaic_version_step

        # a backfill makes the window's next version (dsa110_contimg.reprocess)
        step = mosaic_version_step if is_reprocessing(context) else mosaic_step
        res = step(get_config(context["params"]), get_registry(),
                          context["data_interval_start"], context["data_interval_end"])
        _emit(context, MOSAIC_ASSET, mosaic_event_extra(res))
        return res


class CrossmatchOperator(_CasaPool, BaseOperator):
    """cross-match: find sources in the mosaic, match the reference catalogue."""

    template_fields: Sequence[str] = ("mosaic",)

    def __init__(self, *, mosaic: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.mosaic = mosaic

    @fails_fast
    def execute(self, context) -> dict:
        from dsa110_contimg.pipeline import crossmatch_step

        if is_reprocessing(context):
            from dsa110_contimg.reprocess import crossmatch_version_step

            return crossmatch_version_step(get_config(context["params"]), get_registry(), self.mosaic)
        return crossmatch_step(get_config(context["params"]), get_registry(), self.mosaic)


class PublishOperator(BaseOperator):
    """publish: QA-gated move of the window's products to the products area."""

    template_fields: Sequence[str] = ("mosaic", "match")

    def __init__(self, *, mosaic: Any, match: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.mosaic, self.match = mosaic, match

    @fails_fast
    def execute(self, context) -> dict:
        from dsa110_contimg.pipeline import publish_step

        if is_reprocessing(context):  # supersedes the previous version only once this one passed QA
            from dsa110_contimg.reprocess import publish_version_step

            return publish_version_step(get_config(context["params"]), get_registry(), self.mosaic, self.match)
        return publish_step(get_config(context["params"]), get_registry(), self.mosaic, self.match)


class RecordGroupsOperator(BaseOperator):
    """ingest: record the sensor's new groups and return one trigger conf each.

    ``issues`` (the sensor's files that no run will read) are appended to the ingest
    report, noted on their group when late, and alerted in one message; the groups'
    runs start all the same."""

    template_fields: Sequence[str] = ("groups", "issues")

    def __init__(self, *, groups: Any, issues: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.groups = groups
        self.issues = issues

    @fails_fast
    def execute(self, context) -> list[dict]:
        from dsa110_contimg.pipeline import record_groups, record_ingest_issues

        reg = get_registry()
        ids = record_groups(reg, list(self.groups or []))
        cfg = get_config(context["params"])
        issues = record_ingest_issues(cfg, reg, list(self.issues or []))
        if issues:
            _alert_ingest_issues(context, cfg, issues)
        return [{"trigger_run_id": f"group__{gid.replace(':', '')}", "conf": {"group_id": gid}} for gid in ids]


def _alert_ingest_issues(context, cfg, issues: list[dict]) -> None:
    """One alert (email, Slack) listing the files ingest could not use and why."""
    from contimg_airflow.notifiers import deliver
    from dsa110_contimg.alerts import ingest_alert
    from dsa110_contimg.pipeline import ingest_report_path

    deliver(ingest_alert(run_id=context["run_id"], issues=issues, report=str(ingest_report_path(cfg))))


class HousekeepingOperator(BaseOperator):
    """housekeeping: enforce retention on staging (copies of published products, intermediate
    MeasurementSets) and on the task logs; never anything unpublished or the only copy.

    ``scopes`` picks the areas ("staging", "ms", "logs"). The run's ``dry_run``
    Param (default: the config's ``housekeeping_dry_run``) only reports what
    would be deleted. The logs are the config's ``logs_dir``, else Airflow's
    ``[logging] base_log_folder``."""

    ui_color = "#e8e8e0"

    def __init__(self, *, scopes: Sequence[str] = ("staging", "ms", "logs"), **kwargs: Any):
        super().__init__(**kwargs)
        self.scopes = list(scopes)

    @fails_fast
    def execute(self, context) -> dict:
        from airflow.sdk.configuration import conf

        from dsa110_contimg.housekeeping import run_housekeeping

        params = context["params"]
        cfg = get_config(params)
        registry = get_registry() if {"staging", "ms"} & set(self.scopes) else None
        return run_housekeeping(cfg, registry, dry_run=params.get("dry_run"), scopes=self.scopes,
                                logs_dir=conf.get("logging", "base_log_folder", fallback=None))


# -- reprocessing (a backfill of the mosaic DAG) ------------------------------------------
def is_reprocessing(context) -> bool:
    """True in a backfill run of a window: it makes a new version of the window's products."""
    run_type = getattr(context["dag_run"], "run_type", None)
    return str(getattr(run_type, "value", run_type)) == "backfill"


def _record_fingerprint(cfg, reg, group_id: str, registered: dict) -> None:
    """The image's inputs (raw files, calibration applied, imaging Params), for later backfills."""
    from dsa110_contimg.reprocess import record_image_fingerprint

    record_image_fingerprint(cfg, reg, group_id, registered["product_id"], registered.get("calibration", []))


class PlanReprocessingOperator(BaseOperator):
    """Backfill: decide per group of the window whether its image is reused or remade.

    Returns the groups to remake (one mapped ``reprocess_group`` each); the whole
    plan goes to XCom key ``plan``. Outside a backfill nothing is remade (an empty
    list), and the window's run is the normal version-1 mosaic."""

    ui_color = "#f0e0c8"

    @fails_fast
    def execute(self, context) -> list[dict]:
        from dsa110_contimg.reprocess import plan_window

        if not is_reprocessing(context):
            self.log.info("not a backfill run: the window's images are used as they are")
            return []
        params = context["params"]
        plan = plan_window(get_config(params), get_registry(), context["data_interval_start"],
                           context["data_interval_end"], reprocess=params.get("reprocess", "changed"))
        self.log.info("window %s: reuse %s; reprocess %s; mosaic version %d", plan["window"],
                      [r["group_id"] for r in plan["reuse"]], {r["group_id"]: r["reasons"] for r in plan["reprocess"]},
                      plan["mosaic_version"])
        context["ti"].xcom_push(key="plan", value=plan)
        return plan["reprocess"]


class ReprocessGroupOperator(_CasaPool, BaseOperator):
    """Backfill: one group from its raw files to a new image version (convert, apply the
    calibration valid at its time, image, QA, register)."""

    template_fields: Sequence[str] = ("group",)
    ui_color = "#f0e0c8"

    def __init__(self, *, group: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.group = group

    @fails_fast
    def execute(self, context) -> dict:
        from dsa110_contimg.reprocess import reprocess_group

        return reprocess_group(get_config(context["params"]), get_registry(), self.group["group_id"],
                               int(self.group["version"]))

