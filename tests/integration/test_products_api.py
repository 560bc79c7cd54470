"""The sky-products API through a real Airflow api-server with this project's plugin.

The registry is filled by running a small simulated session through the pipeline's
own steps (``products_session``); the api-server reads it through the ``contimg_db``
connection. Requests are made as a client would, with the JWT from ``/auth/token``;
raw HTTP (http.client) is used where a client library would normalise the path
(``..``, ``%2e%2e``), because those are exactly the requests under test."""
from __future__ import annotations

import http.client
import json
import os
import urllib.parse

import pytest

from products_session import products_session, running_api_server, session_root

pytestmark = [pytest.mark.airflow, pytest.mark.casa]

BASE = "/contimg/api"


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return products_session(session_root(tmp_path_factory))


@pytest.fixture(scope="module")
def server(session, tmp_path_factory):
    with running_api_server(session, tmp_path_factory.mktemp("products-api-airflow")) as stack:
        yield stack, stack.api_token("admin", "admin")


def call(server, path: str, token: str | None = "default", headers: dict | None = None):
    """(status, headers, body) of GET ``path`` sent byte for byte as given."""
    stack, default = server
    u = urllib.parse.urlsplit(stack.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {default if token == 'default' else token}"
    conn.request("GET", path, headers=h)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), body


def get_json(server, path: str):
    status, _, body = call(server, path)
    assert status == 200, (path, status, body[:300])
    return json.loads(body)


# -- authentication ------------------------------------------------------------------------
@pytest.mark.parametrize("path", [f"{BASE}/status", f"{BASE}/mosaics", f"{BASE}/sources?ra=128&dec=55.6&radius=1",
                                  f"{BASE}/products/1/fits", f"{BASE}/calibration", "/contimg/ui/sky",
                                  "/contimg/ui/static/contimg.js", "/contimg/openapi.json",
                                  f"{BASE}/files/products/x.fits"])
def test_every_route_needs_a_login(server, path):
    status, _, _ = call(server, path, token=None)
    assert status == 401


def test_a_forged_token_is_refused(server):
    status, _, _ = call(server, f"{BASE}/status", token="eyJhbGciOiJIUzUxMiJ9.e30.c2lnbmF0dXJl")
    assert status in (401, 403)  # Airflow answers 403 for a token that fails validation


def test_the_ui_cookie_is_accepted(server):
    _, token = server
    status, _, body = call(server, f"{BASE}/status", token=None, headers={"Cookie": f"_token={token}"})
    assert status == 200 and "groups_total" in json.loads(body)


def test_login_page_offered_to_a_browser_without_login(server):
    status, headers, body = call(server, "/contimg/ui/calibration", token=None)
    assert status == 401 and headers["content-type"].startswith("text/html") and b"/auth/login" in body


# -- JSON endpoints --------------------------------------------------------------------------
def test_status_at_the_session_time(server, session):
    s = get_json(server, f"{BASE}/status?at=2026-01-15T09:00:00Z")
    assert s["groups_total"] == 3 and s["groups_in_flight"] == 0 and s["failures_24h"] == 0
    assert s["calibration"]["valid"] and s["calibration"]["sets"] == [session.calset]
    assert s["calibration"]["valid_until"] > "2026-01-15T20"  # 24 h centred on the 08:50 transit
    assert s["newest_image"]["qa_status"] == "good" and s["newest_image"]["age_s"] >= 0
    assert not get_json(server, f"{BASE}/status")["calibration"]["valid"]  # today: the January set has expired


def test_images_and_mosaics_listed(server, session):
    images = get_json(server, f"{BASE}/images")
    assert images["total"] == 3 and all(i["qa_status"] == "good" and i["has_preview"] for i in images["items"])
    assert [i["mid_time"] for i in images["items"]] == sorted((i["mid_time"] for i in images["items"]), reverse=True)
    page2 = get_json(server, f"{BASE}/images?page=2&per_page=2")
    assert page2["total"] == 3 and len(page2["items"]) == 1
    mosaics = get_json(server, f"{BASE}/mosaics?status=published")
    (m,) = mosaics["items"]
    assert m["window"] == session.window and m["qa"]["n_inputs"] == 3 and m["has_preview"]


def test_mosaic_detail_has_crossmatch_and_provenance(server, session):
    (m,) = get_json(server, f"{BASE}/mosaics")["items"]
    d = get_json(server, f"{BASE}/products/{m['id']}")
    assert d["status"] == "published" and d["published_path"].startswith(str(session.data_dir / "products"))
    assert len(d["inputs"]) == 3 and sorted(d["provenance"]["images"]) == sorted(i["id"] for i in d["inputs"])
    matched = [s for s in d["sources"] if s["matched"]]
    names = {s["name"] for s in session.reference_sources}
    assert matched and all(s["ref_name"] in names for s in matched)
    brightest = session.reference_sources[0]
    hit = next(s for s in matched if s["ref_name"] == brightest["name"])
    assert abs(hit["flux_ratio"] - 1) < 0.1  # the 0834+555 calibrator, S/N in the thousands
    assert get_json(server, f"{BASE}/products/{d['inputs'][0]['id']}")["provenance"]["calibration_sets"] == \
        [session.calset]


def test_fits_download_and_png_preview(server):
    (m,) = get_json(server, f"{BASE}/mosaics")["items"]
    status, headers, body = call(server, f"{BASE}/products/{m['id']}/fits")
    assert status == 200 and headers["content-type"] == "application/fits" and body.startswith(b"SIMPLE  =")
    assert "attachment" in headers["content-disposition"]
    status, headers, body = call(server, f"{BASE}/products/{m['id']}/preview.png")
    assert status == 200 and headers["content-type"] == "image/png" and body.startswith(b"\x89PNG")
    assert call(server, f"{BASE}/products/9999/fits")[0] == 404


def test_calibration_timeline_and_plots(server, session):
    sets = get_json(server, f"{BASE}/calibration")
    (s,) = [c for c in sets if c["set_name"] == session.calset]
    assert s["status"] == "active" and s["kind"] == "bandpass" and s["calibrator"] == "0834+555"
    assert s["valid_from"] < "2026-01-15T08:50" < s["valid_to"] and set(s["plots"]) == {"B", "G"}
    status, headers, body = call(server, f"{BASE}/calibration/{urllib.parse.quote(session.calset)}/plots/B.png")
    assert status == 200 and body.startswith(b"\x89PNG")
    assert call(server, f"{BASE}/calibration/nope/plots/B.png")[0] == 404


def test_cone_search_finds_the_simulated_sources(server, session):
    cal = next(s for s in session.reference_sources if s["name"] == "0834+555")
    res = get_json(server, f"{BASE}/sources?ra={cal['ra_deg']}&dec={cal['dec_deg']}&radius=0.05")
    assert res["items"][0]["name"] == "0834+555" and res["items"][0]["separation_arcsec"] < 1
    wide = get_json(server, f"{BASE}/sources?ra={cal['ra_deg']}&dec={cal['dec_deg']}&radius=3&per_page=5")
    assert wide["total"] > 5 and wide["pages"] == -(-wide["total"] // 5) and len(wide["items"]) == 5
    seps = [h["separation_arcsec"] for h in wide["items"]]
    assert seps == sorted(seps) and max(seps) <= 3 * 3600
    last = get_json(server, f"{BASE}/sources?ra={cal['ra_deg']}&dec={cal['dec_deg']}&radius=3&per_page=5"
                            f"&page={wide['pages']}")
    assert 1 <= len(last["items"]) <= 5 and last["items"][0]["separation_arcsec"] >= max(seps)


def test_detections_in_a_cone_include_unmatched_ones(server, session):
    cal = next(s for s in session.reference_sources if s["name"] == "0834+555")
    res = get_json(server, f"{BASE}/detections?ra={cal['ra_deg']}&dec={cal['dec_deg']}&radius=3&per_page=100")
    (m,) = get_json(server, f"{BASE}/mosaics")["items"]
    found = get_json(server, f"{BASE}/products/{m['id']}")["sources"]
    assert res["total"] == len(found)  # the mosaic's field lies within 3 deg of the calibrator
    assert res["items"][0]["ref_name"] == "0834+555" and res["items"][0]["separation_arcsec"] < 10
    assert {d["matched"] for d in res["items"]} == {True, False}  # faint unmatched detections are listed too
    assert all(d["product_id"] == m["id"] and d["product_name"] == session.window for d in res["items"])
    assert call(server, f"{BASE}/detections?ra=10&dec=10&radius=-1")[0] == 422


def test_light_curve_of_a_source(server, session):
    lc = get_json(server, f"{BASE}/sources/photometry?name={urllib.parse.quote('0834+555')}")
    assert lc["name"] == "0834+555" and len(lc["points"]) == 1 and lc["variability"]["n"] == 1
    assert lc["points"][0]["time"] == "2026-01-15T08:30:00+00:00"  # the window's mid-time
    assert call(server, f"{BASE}/sources/photometry?name=nobody")[0] == 404


@pytest.mark.parametrize("query", ["ra=400&dec=10&radius=1", "ra=-1&dec=10&radius=1", "ra=10&dec=91&radius=1",
                                   "ra=10&dec=10&radius=0", "ra=10&dec=10&radius=50", "ra=abc&dec=10&radius=1",
                                   "dec=10&radius=1", "ra=10&dec=10&radius=1&page=0",
                                   "ra=10&dec=10&radius=1&per_page=100000", "ra=nan&dec=10&radius=1"])
def test_bad_cone_inputs_are_rejected(server, query):
    status, _, body = call(server, f"{BASE}/sources?{query}")
    assert status in (400, 422), (query, status, body[:200])


def test_openapi_documents_the_endpoints(server):
    spec = get_json(server, "/contimg/openapi.json")
    assert {"/api/status", "/api/sources", "/api/sources/photometry", "/api/detections", "/api/products/{product_id}/fits",
            "/api/calibration"} <= set(spec["paths"])
    ra = next(p for p in spec["paths"]["/api/sources"]["get"]["parameters"] if p["name"] == "ra")
    assert ra["required"] and ra["schema"]["minimum"] == 0 and ra["schema"]["exclusiveMaximum"] == 360
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


# -- file confinement ------------------------------------------------------------------------
def test_files_inside_the_roots_are_served(server, session):
    rel = f"{session.window}/{session.window}.sources.csv"
    status, headers, body = call(server, f"{BASE}/files/products/{rel}")
    assert status == 200 and headers["content-type"].startswith("text/csv") and body.startswith(b"index,")
    status, _, body = call(server, f"{BASE}/files/products/{session.window}/../{rel}")  # .. that stays inside
    assert status == 200


@pytest.fixture(scope="module")
def outside(session, tmp_path_factory):
    """A secret outside the roots, and symlinks inside the products root that point at it."""
    secret = tmp_path_factory.mktemp("outside") / "secret.txt"
    secret.write_text("not a product")
    link_file = session.data_dir / "products" / "escape.fits"
    link_dir = session.data_dir / "products" / "escape_dir"
    for link, target in ((link_file, secret), (link_dir, secret.parent)):
        if link.is_symlink():
            link.unlink()
        os.symlink(target, link)
    yield secret
    link_file.unlink()
    link_dir.unlink()


def _up(n: int) -> str:
    return "/".join([".."] * n)


@pytest.mark.parametrize("relative", [
    f"{_up(8)}/etc/passwd",  # parent traversal
    f"{_up(3)}/registry.db",  # traversal to the registry next to the data directory
    "%2e%2e/%2e%2e/%2e%2e/registry.db",  # url-encoded dots
    "%2E%2E%2F%2E%2E%2F%2E%2E%2Fregistry.db",  # encoded dots and slashes
    "..%2f..%2f..%2fregistry.db",
    "/etc/passwd",  # absolute path (empty segment)
    "%2Fetc%2Fpasswd",  # encoded absolute path
    "escape.fits",  # symlink to a file outside
    "escape_dir/secret.txt",  # symlinked directory outside
    "staging/../../../registry.db",
    "nothing_here.fits",
])
def test_paths_outside_the_roots_are_refused(server, outside, relative):
    for root in ("products", "staging"):
        status, _, body = call(server, f"{BASE}/files/{root}/{relative}")
        assert status == 404, (root, relative, status)
        assert b"not a product" not in body and b"root:" not in body and b"SQLite" not in body


def test_unknown_roots_are_refused(server):
    for root in ("incoming", "..", "%2e%2e"):
        status, _, _ = call(server, f"{BASE}/files/{root}/etc/passwd")
        assert status in (404, 422)


def test_plugin_registers_the_app_and_the_views(server):
    """Airflow loaded the plugin without import errors and lists its pages for the UI's navigation."""
    stack, token = server
    assert stack.api_get("/api/v2/plugins/importErrors", token)["total_entries"] == 0
    (plugin,) = [p for p in stack.api_get("/api/v2/plugins", token)["plugins"] if p["name"] == "contimg"]
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/contimg"]
    views = {(v["name"], v["destination"]): v for v in plugin["external_views"]}
    assert views[("Sky products", "nav")]["href"] == "contimg/ui/sky"
    assert {("Calibration", "nav"), ("Sources", "nav"), ("Sky products", "dag_run")} <= set(views)
    for page in ("sky", "product", "calibration", "sources", "run"):
        status, headers, body = call(server, f"/contimg/ui/{page}")
        assert status == 200 and headers["content-type"].startswith("text/html") and b"contimg.js" in body
    assert call(server, "/contimg/ui/nope")[0] == 404
    assert call(server, "/contimg/ui/static/../app.py")[0] == 404
