"""One typed, validated configuration object.

Defaults run the demo. Overrides, in increasing precedence: a YAML file named
by ``CONTIMG_CONFIG``, then environment variables ``CONTIMG_<FIELD>`` (upper
case), then per-run values (DAG Params) applied with :meth:`PipelineConfig.with_overrides`.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def _parse_dt(value: str | None) -> datetime | None:
    if not value:
        return None
    dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class PipelineConfig:
    """Paths, observing setup and stage parameters of one deployment."""

    data_dir: Path = Path(".demo/data")
    incoming_dir: Path | None = None
    staging_dir: Path | None = None
    products_dir: Path | None = None
    reference_catalog: Path | None = None
    registry_url: str | None = None  # CLI only; tasks use the contimg_db connection
    pointing_dec_deg: float = 55.6
    bandpass_calibrator: str = "auto"  # or a name in the calibrator table; auto = brightest in the strip
    group_tolerance_s: float = 60.0
    group_timeout_s: float = 600.0
    min_subbands: int = 12
    mosaic_window_minutes: int = 60
    mosaic_method: str = "weighted"  # weighted (PB^2/sigma^2), mean, median
    calibration_validity_hours: float = 24.0  # daily bandpass set
    gains_validity_hours: float = 1.0  # hourly gains from a calibrator transit in a group
    calibration_wait_hours: float = 6.0  # a group waits this long for a valid bandpass, then fails
    calibration_flagging: str = "auto"  # auto (AOFlagger when installed), aoflagger, casa, none
    calibration_solve_delay: bool = False
    imaging_backend: str = "auto"
    imaging_niter: int = 1000
    imaging_robust: float = 0.0
    imaging_fov_deg: float = 3.5
    imaging_imsize: int | None = None  # pixels per side; None = from imaging_fov_deg and the cell
    imaging_cell_arcsec: float | None = None  # None = 1/5 of the predicted beam's minor axis
    imaging_auto_threshold_sigma: float = 3.0  # clean stops at this many sigma of the residual
    imaging_pblimit: float = 0.2  # primary-beam level below which the pb-corrected image is blank
    imaging_subtract_bright: bool = True  # fit and subtract the reference catalogue's bright sources first
    casa_pool_slots: int = 2  # Airflow pool "casa": heavy tasks (convert, calibration, image, mosaic,
    #                           crossmatch) running at once on the deployment
    crossmatch_radius_arcsec: float = 60.0
    detection_snr: float = 5.0
    schedule_start: str | None = None  # ISO; first data interval the DAGs schedule
    schedule_end: str | None = None  # ISO; none = open ended
    catchup: bool = False
    qa_max_rms_jy: float = 0.01  # image QA: 10-50 x the thermal noise of one group
    qa_min_dynamic_range: float = 20.0  # pure noise gives ~5
    qa_max_flagged_fraction: float = 0.5
    qa_max_beam_arcsec: float = 300.0  # the core arms alone give ~165 arcsec
    alert_email_to: str = ""  # recipients of failure and deadline alerts, comma separated
    alert_smtp_conn_id: str = "contimg_smtp"  # Airflow connection of the mail server
    alert_slack_conn_id: str = "contimg_slack"  # Airflow connection of a Slack webhook; absent = no Slack
    retry_delay_s: float = 60.0  # first retry of a task after a transient error; then about 2x, 4x (max 10 min)
    group_deadline_minutes: float = 30.0  # a group run not finished this long after being queued alerts
    # housekeeping (dags/housekeeping.py): days since an item last changed before it may be deleted
    retention_staging_days: float = 7.0  # staging copies of published products with a verified published copy
    retention_ms_days: float = 3.0  # intermediate MeasurementSets whose image is in a published mosaic
    retention_logs_days: float = 30.0  # Airflow task logs
    logs_dir: Path | None = None  # task logs to clean; None = Airflow's [logging] base_log_folder
    housekeeping_dry_run: bool = False  # True: scheduled housekeeping only reports what it would delete

    def __post_init__(self) -> None:
        data = Path(self.data_dir)
        object.__setattr__(self, "data_dir", data)
        defaults = {
            "incoming_dir": data / "incoming",
            "staging_dir": data / "staging",
            "products_dir": data / "products",
            "reference_catalog": data / "reference_catalog.tsv",
        }
        for name, default in defaults.items():
            value = getattr(self, name)
            object.__setattr__(self, name, Path(value) if value is not None else default)
        if self.logs_dir is not None:
            object.__setattr__(self, "logs_dir", Path(self.logs_dir))
        self.validate()

    def validate(self) -> None:
        if not -90.0 <= self.pointing_dec_deg <= 90.0:
            raise ValueError(f"pointing_dec_deg {self.pointing_dec_deg} outside [-90, 90]")
        if not 1 <= self.min_subbands <= 16:
            raise ValueError(f"min_subbands {self.min_subbands} outside [1, 16]")
        if self.imaging_backend not in ("auto", "tclean", "wsclean"):
            raise ValueError(f"imaging_backend {self.imaging_backend!r} not one of auto, tclean, wsclean")
        if self.calibration_flagging not in ("auto", "aoflagger", "casa", "none"):
            raise ValueError(f"calibration_flagging {self.calibration_flagging!r} not one of auto, aoflagger, "
                             "casa, none")
        for name in ("calibration_validity_hours", "gains_validity_hours", "calibration_wait_hours"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.mosaic_method not in ("weighted", "mean", "median"):
            raise ValueError(f"mosaic_method {self.mosaic_method!r} not one of weighted, mean, median")
        if not 0.0 < self.imaging_pblimit < 1.0:
            raise ValueError(f"imaging_pblimit {self.imaging_pblimit} outside (0, 1)")
        if self.casa_pool_slots < 1:
            raise ValueError("casa_pool_slots must be at least 1")
        if self.mosaic_window_minutes <= 0:
            raise ValueError("mosaic_window_minutes must be positive")
        if self.group_deadline_minutes <= 0:
            raise ValueError("group_deadline_minutes must be positive")
        for name in ("retention_staging_days", "retention_ms_days", "retention_logs_days"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be positive")
        _parse_dt(self.schedule_start)
        _parse_dt(self.schedule_end)

    # -- derived paths ------------------------------------------------------
    @property
    def ms_dir(self) -> Path:
        return self.staging_dir / "ms"

    @property
    def caltables_dir(self) -> Path:
        return self.staging_dir / "caltables"

    @property
    def images_dir(self) -> Path:
        return self.staging_dir / "images"

    @property
    def mosaics_dir(self) -> Path:
        return self.staging_dir / "mosaics"

    @property
    def start(self) -> datetime | None:
        return _parse_dt(self.schedule_start)

    @property
    def end(self) -> datetime | None:
        return _parse_dt(self.schedule_end)

    def default_registry_url(self) -> str:
        return self.registry_url or f"sqlite:///{(self.data_dir / 'registry.db').resolve()}"

    # -- construction -------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None, env: dict[str, str] | None = None) -> "PipelineConfig":
        """Defaults, then YAML (``path`` or $CONTIMG_CONFIG), then CONTIMG_* env."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        path = path or env.get("CONTIMG_CONFIG")
        if path:
            values.update(_read_yaml(Path(path)))
        for f in fields(cls):
            key = f"CONTIMG_{f.name.upper()}"
            if key in env:
                values[f.name] = env[key]
        return cls(**_coerce(values))

    def with_overrides(self, overrides: dict[str, Any] | None) -> "PipelineConfig":
        """A copy with per-run overrides (e.g. DAG Params); unknown keys are ignored."""
        known = {f.name for f in fields(self)}
        picked = {k: v for k, v in (overrides or {}).items() if k in known and v is not None}
        return dataclasses.replace(self, **_coerce(picked))

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ValueError(f"{path}: configuration file not found") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: configuration must be a mapping")
    unknown = set(data) - {f.name for f in fields(PipelineConfig)}
    if unknown:
        raise ValueError(f"{path}: unknown configuration keys {sorted(unknown)}")
    return data


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    """Convert strings (from env/YAML) to each field's type."""
    types = {f.name: f.type for f in fields(PipelineConfig)}
    out: dict[str, Any] = {}
    for k, v in values.items():
        t = str(types[k])
        if v is None or not isinstance(v, str):
            out[k] = v
        elif t.startswith("bool"):
            out[k] = v.strip().lower() in ("1", "true", "yes", "on")
        elif t.startswith("int"):
            out[k] = int(v)
        elif t.startswith("float"):
            out[k] = float(v)
        else:
            out[k] = v
    return out
