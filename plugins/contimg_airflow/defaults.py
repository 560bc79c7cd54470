"""Defaults shared by the DAG files: retries, schedule bounds, run Params."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import Param

from contimg_airflow.notifiers import FailureNotifier
from dsa110_contimg.config import PipelineConfig

PROJECT_EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)

PIPELINE_DEFAULTS = {
    "owner": "contimg",
    "retries": 1,
    "retry_delay": timedelta(seconds=20),
    # Every task of every DAG alerts (email, and Slack when configured) once its last try fails.
    "on_failure_callback": FailureNotifier(),
}


def config() -> PipelineConfig:
    """The deployment configuration (env/YAML); cheap, no I/O beyond the YAML."""
    return PipelineConfig.load()


def schedule_bounds(cfg: PipelineConfig) -> dict:
    """start_date/end_date/catchup for time-scheduled DAGs, from the config."""
    out = {"start_date": cfg.start or PROJECT_EPOCH, "catchup": cfg.catchup}
    if cfg.end:
        out["end_date"] = cfg.end
    return out


def imaging_params(cfg: PipelineConfig) -> dict[str, Param]:
    """Imaging choices offered in the trigger form, validated by JSON schema."""
    return {
        "imaging_backend": Param(cfg.imaging_backend, type="string", enum=["auto", "tclean", "wsclean"],
                                 description="imager: auto = WSClean when installed, else CASA tclean"),
        "imaging_niter": Param(cfg.imaging_niter, type="integer", minimum=0, maximum=100000,
                               description="maximum clean iterations"),
        "imaging_robust": Param(cfg.imaging_robust, type="number", minimum=-2, maximum=2,
                                description="Briggs robust weighting"),
    }


MAX_CALIBRATION_WAIT_HOURS = 48.0  # the sensor's hard timeout; the run Param picks the limit below it


def calibration_params(cfg: PipelineConfig) -> dict[str, Param]:
    """Calibration choices offered in the trigger form, validated by JSON schema."""
    return {
        "calibration_wait_hours": Param(cfg.calibration_wait_hours, type="number", exclusiveMinimum=0,
                                        maximum=MAX_CALIBRATION_WAIT_HOURS,
                                        description="how long a group waits for a valid bandpass before failing"),
        "calibration_flagging": Param(cfg.calibration_flagging, type="string",
                                      enum=["auto", "aoflagger", "casa", "none"],
                                      description="RFI flagger of calibration solves (auto = AOFlagger if installed)"),
    }


def mosaic_params(cfg: PipelineConfig) -> dict[str, Param]:
    """Mosaic choices offered in the trigger form (and for backfills)."""
    return {
        "mosaic_method": Param(cfg.mosaic_method, type="string", enum=["weighted", "mean", "median"],
                               description="how images are combined: weighted = PB^2/sigma^2 linear mosaic"),
    }
