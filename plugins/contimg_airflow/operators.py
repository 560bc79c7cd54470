"""Operators: unpack inputs, call one pipeline step, return its result.

All science lives in ``dsa110_contimg``; these only bind it to Airflow's
context (run Params, the data interval, the ``contimg_db`` connection)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Sequence

from airflow.sdk import BaseOperator, BaseSensorOperator, PokeReturnValue

from contimg_airflow.registry_conn import get_config, get_registry


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


class ConvertOperator(_StageOperator):
    """convert: the group's UVH5 subbands -> one MeasurementSet."""

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


def _fail_on_qa(func, *args, **kwargs) -> dict:
    """Run a solve; a QA failure fails the task at once (retrying would only repeat it)."""
    from airflow.sdk.exceptions import AirflowFailException

    from dsa110_contimg.errors import CalibrationQAError

    try:
        return func(*args, **kwargs)
    except CalibrationQAError as exc:
        raise AirflowFailException(str(exc)) from exc


class SolveGainsOperator(_StageOperator):
    """calibration solve (hourly): gains on a calibrator transiting during the group.

    Succeeds without solving (``{"skipped": true, "reason": ...}`` in XCom)
    when no calibrator of the strip transits during the group: a skipped
    state would also skip ``apply_calibration`` under Airflow's trigger rules."""

    def execute(self, context) -> dict:
        from dsa110_contimg.calibration.stage import solve_gains_step

        cfg, reg = self.setup(context)
        res = _fail_on_qa(solve_gains_step, cfg, reg, self.group_id)
        if res.get("skipped"):
            self.log.info("no gains solved: %s", res["reason"])
        return res


class ApplyCalibrationOperator(_StageOperator):
    """calibration apply: the tables valid at the group's mid-time."""

    def execute(self, context) -> dict:
        from dsa110_contimg.calibration.stage import apply_step

        cfg, reg = self.setup(context)
        return apply_step(cfg, reg, self.group_id)


class ImageOperator(_StageOperator):
    """image: one primary-beam-corrected image per MeasurementSet."""

    def execute(self, context) -> dict:
        from dsa110_contimg.pipeline import image_step

        cfg, reg = self.setup(context)  # the run's imaging_* Params are in cfg
        return image_step(cfg, reg, self.group_id)


class ImageQAOperator(_StageOperator):
    """QA: decide the image's status from its numbers."""

    template_fields: Sequence[str] = ("group_id", "image")

    def __init__(self, *, image: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.image = image

    def execute(self, context) -> dict:
        from dsa110_contimg.pipeline import qa_image

        cfg = get_config(context["params"])
        qa = qa_image(cfg, self.image)
        self.log.info("QA of %s: %s %s", self.group_id, qa["qa_status"], qa["reasons"])
        return qa


class RegisterImageOperator(_StageOperator):
    """register: record the image and its QA in the products registry."""

    template_fields: Sequence[str] = ("group_id", "image", "qa", "applied")

    def __init__(self, *, image: Any, qa: Any, applied: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.image, self.qa, self.applied = image, qa, applied

    def execute(self, context) -> dict:
        from dsa110_contimg.pipeline import register_image

        cfg, reg = self.setup(context)
        return register_image(cfg, reg, self.group_id, self.image, self.qa, self.applied)


class CalibratorGroupSensor(BaseSensorOperator):
    """Waits until the group containing the calibrator transit is converted."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)

    def poke(self, context) -> PokeReturnValue:
        from dsa110_contimg.calibration.stage import calibrator_group

        transit: datetime = context["logical_date"]
        row = calibrator_group(get_config(context["params"]), get_registry(), transit)
        if row is None:
            self.log.info("waiting for the converted group containing the transit at %s", transit)
        return PokeReturnValue(is_done=row is not None, xcom_value=row and row["group_id"])


class SolveCalibrationOperator(BaseOperator):
    """calibration solve (daily): delay, bandpass and gains on the calibrator's group."""

    def execute(self, context) -> dict:
        from dsa110_contimg.calibration.stage import solve_bandpass_step

        return _fail_on_qa(solve_bandpass_step, get_config(context["params"]), get_registry(),
                           context["logical_date"])


class WindowImagesSensor(BaseSensorOperator):
    """Waits until every group observed in the data interval is imaged or failed.

    Skips the run when the window holds no groups at all."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)

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


class MosaicOperator(BaseOperator):
    """mosaic: primary-beam-weighted combination of the window's images."""

    def execute(self, context) -> dict:
        from dsa110_contimg.pipeline import mosaic_step

        return mosaic_step(get_config(context["params"]), get_registry(),
                           context["data_interval_start"], context["data_interval_end"])


class CrossmatchOperator(BaseOperator):
    """cross-match: find sources in the mosaic, match the reference catalogue."""

    template_fields: Sequence[str] = ("mosaic",)

    def __init__(self, *, mosaic: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.mosaic = mosaic

    def execute(self, context) -> dict:
        from dsa110_contimg.pipeline import crossmatch_step

        return crossmatch_step(get_config(context["params"]), get_registry(), self.mosaic)


class PublishOperator(BaseOperator):
    """publish: QA-gated move of the window's products to the products area."""

    template_fields: Sequence[str] = ("mosaic", "match")

    def __init__(self, *, mosaic: Any, match: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.mosaic, self.match = mosaic, match

    def execute(self, context) -> dict:
        from dsa110_contimg.pipeline import publish_step

        return publish_step(get_config(context["params"]), get_registry(), self.mosaic, self.match)


class RecordGroupsOperator(BaseOperator):
    """ingest: record the sensor's new groups and return one trigger conf each."""

    template_fields: Sequence[str] = ("groups",)

    def __init__(self, *, groups: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.groups = groups

    def execute(self, context) -> list[dict]:
        from dsa110_contimg.pipeline import record_groups

        ids = record_groups(get_registry(), list(self.groups or []))
        return [{"trigger_run_id": f"group__{gid.replace(':', '')}", "conf": {"group_id": gid}} for gid in ids]


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

    def execute(self, context) -> dict:
        from airflow.sdk.configuration import conf

        from dsa110_contimg.housekeeping import run_housekeeping

        params = context["params"]
        cfg = get_config(params)
        registry = get_registry() if {"staging", "ms"} & set(self.scopes) else None
        return run_housekeeping(cfg, registry, dry_run=params.get("dry_run"), scopes=self.scopes,
                                logs_dir=conf.get("logging", "base_log_folder", fallback=None))
