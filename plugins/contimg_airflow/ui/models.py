"""Response models of the sky-products API: they document the JSON in the OpenAPI schema.

The library (``dsa110_contimg.products``) builds plain dicts; these models name and
describe the fields a client can rely on, and allow extra ones (QA numbers vary by kind)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class CalibrationInForce(_Open):
    valid: bool = Field(description="a bandpass set covers the time asked about")
    sets: list[str] = Field(description="calibration sets whose tables would be applied")
    valid_until: str | None = Field(None, description="ISO UTC end of the shortest validity window in force")
    valid_until_mjd: float | None = None


class NewestImage(_Open):
    id: int
    name: str
    group_id: str | None
    made_at: str | None = Field(description="ISO UTC time the image was registered")
    age_s: float = Field(description="seconds since then")
    qa_status: str | None


class Status(_Open):
    now: str = Field(description="the time the status refers to (ISO UTC)")
    groups_total: int
    groups_in_flight: int = Field(description="groups ingested but neither imaged nor failed")
    groups_in_flight_ids: list[str]
    newest_image: NewestImage | None
    calibration: CalibrationInForce
    failures_24h: int = Field(description="failed groups and calibration sets in the 24 h before `now`")
    failures: list[dict[str, Any]]


class ProductSummary(_Open):
    id: int
    kind: str = Field(description="image, mosaic or catalog")
    name: str
    group_id: str | None
    window: str | None = Field(description="mosaic window start, e.g. 2026-01-15T0800")
    status: str = Field(description="staged, published, superseded or failed")
    qa_status: str | None = Field(description="good or bad")
    qa_reasons: list[str]
    mid_mjd: float | None
    mid_time: str | None
    version: int
    qa: dict[str, Any] = Field(description="QA numbers: rms_jy, peak_jy, dynamic_range, ...")
    has_preview: bool


class ProductPage(_Open):
    total: int
    page: int
    per_page: int
    items: list[ProductSummary]


class ProductDetail(ProductSummary):
    path: str
    published_path: str | None
    metrics: dict[str, Any]
    provenance: dict[str, Any] | None = Field(description="raw files with SHA-256, tables applied, parameters")
    sources: list[dict[str, Any]] = Field(description="detections with their reference-catalogue match")
    inputs: list[ProductSummary] = Field(description="a mosaic's input images")


class CalibrationSet(_Open):
    set_name: str
    kind: str = Field(description="bandpass (daily K/B/G) or gains (hourly G)")
    status: str = Field(description="active, retired or failed")
    reason: str | None
    valid_from: str | None
    valid_to: str | None
    valid_from_mjd: float
    valid_to_mjd: float
    calibrator: str | None
    tables: list[dict[str, str]]
    plots: list[str] = Field(description="table types with a QA plot: GET calibration/{set}/plots/{type}.png")


class ConeHit(_Open):
    name: str = Field(description="reference-catalogue name")
    ra_deg: float
    dec_deg: float
    separation_arcsec: float
    n_measurements: int
    mean_flux_jy: float
    last_time: str | None


class _ConePage(_Open):
    """One page of a cone search: the cone and the paging."""

    ra_deg: float
    dec_deg: float
    radius_deg: float
    total: int
    page: int
    per_page: int
    pages: int


class ConeResult(_ConePage):
    items: list[ConeHit]


class Detection(_Open):
    ra_deg: float
    dec_deg: float
    flux_jy: float
    flux_err_jy: float | None
    matched: bool = Field(description="matched to a reference-catalogue source (ref_name)")
    ref_name: str | None
    separation_arcsec: float
    product_id: int = Field(description="the mosaic it was found in")
    product_name: str
    time: str | None


class DetectionResult(_ConePage):
    items: list[Detection]


class LightCurve(_Open):
    name: str
    ra_deg: float
    dec_deg: float
    points: list[dict[str, Any]] = Field(description="time, mid_mjd, flux_jy, flux_err_jy, product_id")
    variability: dict[str, Any] = Field(description="n, V (modulation index), eta, mean fluxes")
