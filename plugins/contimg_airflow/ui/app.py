"""The sky-products FastAPI app: JSON API and HTML pages, mounted in Airflow's api-server.

Every route needs a logged-in Airflow user: the same JWT the UI uses, from the
``Authorization: Bearer`` header or the ``_token`` cookie the UI sets, validated by
Airflow's own ``get_user`` dependency (imported at request time, so loading the
plugin in the scheduler or a worker does not pull in the API server's modules).
The registry is read through the ``contimg_db`` connection like the tasks do; files
are only served from the products and staging roots of the deployment's config.
"""
from __future__ import annotations

import logging
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path as PathParam, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dsa110_contimg import products as lib
from dsa110_contimg.config import PipelineConfig
from dsa110_contimg.registry import Registry

from contimg_airflow.ui import models  # absolute: Airflow's plugin scanner also imports this file on its own

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
PAGES = {"sky": "Sky products", "product": "Product", "calibration": "Calibration", "sources": "Sources",
         "run": "Run products"}
STATIC = {"contimg.js": "text/javascript", "contimg.css": "text/css"}
_bearer = HTTPBearer(auto_error=False, description="Airflow JWT from POST /auth/token (or the UI's _token cookie)")


class LoginRequired(Exception):
    """A page was asked for without a valid Airflow login."""

    def __init__(self, status_code: int, detail: str):
        self.status_code, self.detail = status_code, detail


# -- dependencies -------------------------------------------------------------------
async def require_user(request: Request,
                       bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None) -> Any:
    """The Airflow user of this request (401 without credentials, 403 with a bad token)."""
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request, None, bearer)


async def require_page_user(request: Request,
                            bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None) -> Any:
    """As ``require_user``, but a browser gets a page with a login link instead of JSON."""
    try:
        return await require_user(request, bearer)
    except HTTPException as exc:
        raise LoginRequired(exc.status_code, str(exc.detail)) from None


@lru_cache(maxsize=1)
def _registry_url() -> str:
    """The ``contimg_db`` connection's URL; the config's default registry when it is not defined."""
    try:
        from contimg_airflow.registry_conn import registry_url

        return registry_url()
    except Exception:  # no such connection: the embedded default without Airflow connections
        return PipelineConfig.load().default_registry_url()


def get_registry() -> Registry:
    from contimg_airflow.registry_conn import _registry

    return _registry(_registry_url())


@lru_cache(maxsize=1)
def get_roots() -> lib.FileRoots:
    return lib.FileRoots.from_config(PipelineConfig.load())


RegistryDep = Annotated[Registry, Depends(get_registry)]
RootsDep = Annotated[lib.FileRoots, Depends(get_roots)]
Page = Annotated[int, Query(ge=1, description="1-based page number")]
PerPage = Annotated[int, Query(ge=1, le=lib.MAX_PER_PAGE, description="items per page")]
Ra = Annotated[float, Query(ge=0, lt=360, description="RA J2000, deg")]
Dec = Annotated[float, Query(ge=-90, le=90, description="Dec J2000, deg")]
Radius = Annotated[float, Query(gt=0, le=lib.MAX_RADIUS_DEG, description="radius, deg")]


# -- the app ---------------------------------------------------------------------------
def create_app() -> FastAPI:
    app = FastAPI(
        title="DSA-110 sky products",
        version="1",
        description="Images, mosaics, calibration tables, sources and light curves of the DSA-110 continuum "
                    "pipeline, read from its registry. Every route needs an Airflow login: a JWT from "
                    "`POST /auth/token` as `Authorization: Bearer <token>`, or the UI's `_token` cookie.",
        openapi_url=None, docs_url=None, redoc_url=None,  # served below, behind the login
        dependencies=[],
    )
    app.add_exception_handler(ValueError, _bad_request)
    app.add_exception_handler(lib.ProductAccessError, _not_found)
    app.add_exception_handler(LoginRequired, _login_page)
    app.include_router(_api_router(), prefix="/api", dependencies=[Depends(require_user)])
    app.include_router(_page_router(), prefix="/ui", dependencies=[Depends(require_page_user)])

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_user)])
    def openapi() -> dict:
        return app.openapi()

    return app


async def _bad_request(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=400)


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    """No such file, or one outside the roots: the same 404, so probing learns nothing (the log says which)."""
    log.warning("sky products: refused %s: %s", request.url.path, exc)
    return JSONResponse({"detail": "file not found"}, status_code=404)


async def _login_page(request: Request, exc: Exception) -> HTMLResponse:
    body = (f"<!doctype html><title>Login required</title><p>{exc.detail}. "
            f"<a href=\"/auth/login?next={request.url.path}\">Log in to Airflow</a> first.</p>")
    return HTMLResponse(body, status_code=exc.status_code)


# -- API ---------------------------------------------------------------------------------
def _api_router():
    from fastapi import APIRouter

    r = APIRouter(tags=["sky products"])

    @r.get("/status", response_model=models.Status, summary="Pipeline status")
    def status(reg: RegistryDep, at: Annotated[datetime | None, Query(
            description="judge calibration and failures at this time (ISO); default now")] = None) -> dict:
        """Groups in flight, age of the newest image, calibration in force and until when, failures in 24 h."""
        return lib.pipeline_status(reg, at)

    @r.get("/images", response_model=models.ProductPage, summary="Images, newest first")
    def images(reg: RegistryDep, page: Page = 1, per_page: PerPage = 50,
               status: Annotated[str | None, Query(pattern="^[a-z]+$")] = None) -> dict:
        return lib.list_products(reg, "image", status, page, per_page)

    @r.get("/mosaics", response_model=models.ProductPage, summary="Mosaics, newest first")
    def mosaics(reg: RegistryDep, page: Page = 1, per_page: PerPage = 50,
                status: Annotated[str | None, Query(pattern="^[a-z]+$")] = None) -> dict:
        return lib.list_products(reg, "mosaic", status, page, per_page)

    @r.get("/products/{product_id}", response_model=models.ProductDetail, summary="One product in full")
    def product(reg: RegistryDep, product_id: Annotated[int, PathParam(ge=1)]) -> dict:
        """QA numbers, provenance, cross-match table (mosaics) and input images."""
        return _found(lib.product_detail(reg, product_id), f"product {product_id}")

    @r.get("/products/{product_id}/fits", response_class=FileResponse, summary="Download the FITS file",
           responses={200: {"content": {"application/fits": {}}}, 404: {"description": "no such product or file"}})
    def product_fits(reg: RegistryDep, roots: RootsDep, product_id: Annotated[int, PathParam(ge=1)]) -> FileResponse:
        p = _found(lib.get_product(reg, product_id), f"product {product_id}")
        path = roots.check(lib.fits_path(p))
        return FileResponse(path, media_type="application/fits", filename=path.name)

    @r.get("/products/{product_id}/preview.png", response_class=FileResponse, summary="PNG preview (QA plot)",
           responses={200: {"content": {"image/png": {}}}, 404: {"description": "no preview"}})
    def product_preview(reg: RegistryDep, roots: RootsDep,
                        product_id: Annotated[int, PathParam(ge=1)]) -> FileResponse:
        p = _found(lib.get_product(reg, product_id), f"product {product_id}")
        png = _found(lib.preview_path(p), f"preview of product {product_id}")
        return FileResponse(roots.check(png), media_type="image/png")

    @r.get("/calibration", response_model=list[models.CalibrationSet], summary="Calibration registry timeline")
    def calibration(reg: RegistryDep) -> list[dict]:
        """Every calibration set, newest first, with validity window, status and QA plots."""
        return lib.calibration_timeline(reg)

    @r.get("/calibration/{set_name}/plots/{table_type}.png", response_class=FileResponse,
           summary="Calibration QA plot", responses={200: {"content": {"image/png": {}}}})
    def calibration_plot(reg: RegistryDep, roots: RootsDep, set_name: str,
                         table_type: Annotated[str, PathParam(pattern="^[KBG]$")]) -> FileResponse:
        s = _found(lib.get_calset(reg, set_name), f"calibration set {set_name}")
        png = _found(lib.calibration_plots(s).get(table_type), f"{table_type} plot of {set_name}")
        return FileResponse(roots.check(png), media_type="image/png")

    @r.get("/sources", response_model=models.ConeResult, summary="Cone search")
    def sources(reg: RegistryDep, ra: Ra, dec: Dec, radius: Radius, page: Page = 1, per_page: PerPage = 50) -> dict:
        """Measured sources within `radius` of (ra, dec), nearest first."""
        return lib.cone_search(reg, ra, dec, radius, page, per_page)

    @r.get("/detections", response_model=models.DetectionResult, summary="Detections in a cone")
    def detections(reg: RegistryDep, ra: Ra, dec: Dec, radius: Radius, page: Page = 1,
                   per_page: PerPage = 50) -> dict:
        """Every source found in the mosaics within the cone, matched or not (new-source candidates)."""
        return lib.detection_search(reg, ra, dec, radius, page, per_page)

    @r.get("/sources/photometry", response_model=models.LightCurve, summary="A source's light curve")
    def photometry(reg: RegistryDep, name: Annotated[str, Query(min_length=1, max_length=64)]) -> dict:
        """Forced photometry of one reference source across mosaics, with V and eta."""
        return _found(lib.light_curve(reg, name), f"source {name!r}")

    @r.get("/files/{root}/{relative:path}", response_class=FileResponse, summary="A file under products/staging",
           responses={404: {"description": "missing, or outside the root (.., absolute paths, symlinks)"}})
    def files(roots: RootsDep, root: Annotated[str, PathParam(pattern="^(products|staging)$")],
              relative: str) -> FileResponse:
        path = roots.resolve(root, relative)
        return FileResponse(path, media_type=_media_type(path), filename=path.name)

    return r


def _found(value: Any, what: str) -> Any:
    if value is None:
        raise HTTPException(404, f"{what} not found")
    return value


def _media_type(path: Path) -> str:
    return {".fits": "application/fits", ".png": "image/png", ".csv": "text/csv"}.get(
        path.suffix.lower(), "application/octet-stream")


# -- pages ---------------------------------------------------------------------------------
def _page_router():
    from fastapi import APIRouter

    r = APIRouter(include_in_schema=False)

    @r.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, "no such file")
        return Response((HERE / "static" / name).read_bytes(), media_type=STATIC[name])

    @r.get("/{page}", response_class=HTMLResponse)
    def page(page: str) -> HTMLResponse:
        if page not in PAGES:
            raise HTTPException(404, "no such page")
        return HTMLResponse(render_page(page))

    return r


@lru_cache(maxsize=None)
def render_page(page: str) -> str:
    """The page's body template inside the shared layout (navigation, script, styles)."""
    layout = (HERE / "templates" / "layout.html").read_text()
    body = (HERE / "templates" / f"{page}.html").read_text()
    nav = "".join(f'<a href="{p}"{" class=current" if p == page else ""}>{t}</a>'
                  for p, t in PAGES.items() if p not in ("product", "run"))
    return layout.replace("{{title}}", PAGES[page]).replace("{{nav}}", nav).replace(
        "{{page}}", page).replace("{{body}}", body)


@lru_cache(maxsize=1)
def get_app() -> FastAPI:
    """The one app of this process (built on first use: only the api-server mounts it)."""
    return create_app()
