"""Defaults shared by the DAG files: retries, schedule bounds, run Params."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import Param

from contimg_airflow.notifiers import FailureNotifier
from dsa110_contimg.config import PipelineConfig

PROJECT_EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)

PIPELINE_DEFAULTS = {
    "owner": "contimg",
    # Retries are for transient trouble only (I/O on a shared volume, a locked or unreachable database,
    # a timeout): the operators fail at once, without retrying, on errors a retry cannot fix (a corrupt
    # input, a failed QA gate; dsa110_contimg.errors.is_transient). Backoff: ~1, 2, 4 min, at most 10
    # (the first delay is the config's retry_delay_s; the fault tests shorten it).
    "retries": 3,
    "retry_delay": timedelta(seconds=PipelineConfig.load().retry_delay_s),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
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
        "imaging_fov_deg": Param(cfg.imaging_fov_deg, type="number", exclusiveMinimum=0, maximum=20,
                                 description="field of view (deg) when imsize is not given; the primary "
                                             "beam FWHM is ~2.7 deg"),
        "imaging_imsize": Param(cfg.imaging_imsize, type=["null", "integer"], minimum=16, maximum=16384,
                                description="pixels per side; empty = from the field of view and the cell"),
        "imaging_cell_arcsec": Param(cfg.imaging_cell_arcsec, type=["null", "number"], exclusiveMinimum=0,
                                     maximum=600,
                                     description="pixel size (arcsec); empty = 1/5 of the predicted beam"),
        "imaging_auto_threshold_sigma": Param(cfg.imaging_auto_threshold_sigma, type="number",
                                              exclusiveMinimum=0, maximum=100,
                                              description="clean stops at this many sigma of the residual"),
        "imaging_pblimit": Param(cfg.imaging_pblimit, type="number", exclusiveMinimum=0, exclusiveMaximum=1,
                                 description="primary-beam level below which the corrected image is blank"),
        "imaging_subtract_bright": Param(cfg.imaging_subtract_bright, type="boolean",
                                         description="fit the reference catalogue's bright sources with the "
                                                     "drifting primary beam, subtract them before imaging and "
                                                     "restore them after (no false sources along the arms)"),
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
        # Used by backfills only (a backfill run makes the window's next version, dsa110_contimg.reprocess):
        # "changed" remakes only the groups whose raw files, calibration or imaging Params differ from what
        # their current image was made from; "all" remakes every group from its raw files.
        "reprocess": Param("changed", type="string", enum=["changed", "all"],
                           description="backfill: remake only changed groups, or all groups, from raw files"),
        "mosaic_method": Param(cfg.mosaic_method, type="string", enum=["weighted", "mean", "median"],
                               description="how images are combined: weighted = PB^2/sigma^2 linear mosaic"),
        "detection_snr": Param(cfg.detection_snr, type="number", minimum=3, maximum=100,
                               description="source-finding threshold (peak S/N) in the mosaic"),
        "crossmatch_radius_arcsec": Param(cfg.crossmatch_radius_arcsec, type="number", exclusiveMinimum=0,
                                          maximum=600,
                                          description="match radius to the reference catalogue (arcsec)"),
    }
