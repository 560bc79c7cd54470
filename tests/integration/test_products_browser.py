"""The sky-products pages in a real browser: Debian's headless Chromium (driven by Playwright,
which never downloads a browser here) logs in to a real Airflow api-server as a person would,
opens each page from the UI's navigation and checks what is shown. Screenshots go to
``tests/artifacts/products_ui/`` (ignored by git) for a person to look at."""
from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from products_session import products_session, running_api_server, session_root

pytestmark = [pytest.mark.airflow, pytest.mark.casa]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "products_ui"
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return products_session(session_root(tmp_path_factory))


@pytest.fixture(scope="module")
def server(session, tmp_path_factory):
    with running_api_server(session, tmp_path_factory.mktemp("products-browser-airflow")) as stack:
        yield stack


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def page(browser, server):
    """A browser tab logged in to the Airflow UI with the README's admin/admin."""
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx.set_default_timeout(TIMEOUT_MS)
    tab = ctx.new_page()
    tab.goto(f"{server.url}/")
    tab.wait_for_selector("input[name=username]")
    tab.fill("input[name=username]", "admin")
    tab.fill("input[name=password]", "admin")
    tab.click("button[type=submit]")
    tab.wait_for_url(lambda url: "/auth/login" not in url)
    yield tab
    ctx.close()


def open_view(tab, server, route: str, name: str):
    """Open an external view inside the Airflow UI; return its iframe once the page has drawn."""
    tab.goto(f"{server.url}/plugin/{route}")
    frame = tab.frame_locator(f"iframe[title='{name}']")
    frame.locator("body[data-ready]").wait_for(state="attached")
    assert frame.locator("body").get_attribute("data-ready") == "1", frame.locator("#error").inner_text()
    return frame


def shot(tab, name: str) -> None:
    tab.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_sky_products_page_shows_the_mosaic(page, server, session):
    nav = page.locator("a[aria-label='Sky products']")  # a top-level entry of the UI's navigation
    nav.wait_for()
    assert nav.get_attribute("href").endswith("/plugin/sky-products")
    frame = open_view(page, server, "sky-products", "Sky products")
    card = frame.locator(f".card[data-window='{session.window}']")
    card.wait_for()
    assert "QA good" in card.inner_text() and "published" in card.inner_text()
    card.locator("img").wait_for()
    assert card.locator("img").evaluate("img => img.complete && img.naturalWidth > 0")  # the preview loaded
    assert frame.locator("#st-cal").inner_text()  # status tiles filled
    assert frame.locator("#images tbody tr").count() == 3
    shot(page, "sky_products")


def test_product_page_shows_qa_provenance_and_crossmatch(page, server, session):
    frame = open_view(page, server, "sky-products", "Sky products")
    frame.locator(f".card[data-window='{session.window}']").click()
    frame.locator("body[data-page=product][data-ready='1']").wait_for(state="attached")
    assert frame.locator("#title").inner_text() == f"mosaic {session.window}"
    assert frame.locator("#preview").evaluate("img => img.complete && img.naturalWidth > 0")
    assert "sources found" in frame.locator("#xmatch-summary").inner_text()
    assert frame.locator("#xmatch tbody tr", has_text="0834+555").count() == 1
    assert frame.locator("#inputs tbody tr").count() == 3
    assert frame.locator("#download").get_attribute("href").endswith("/fits")
    shot(page, "product_mosaic")
    frame.locator("#inputs tbody a").first.click()  # an input image: its calibration is named
    frame.locator("body[data-page=product][data-ready='1']").wait_for(state="attached")
    assert session.calset in frame.locator("#provenance").inner_text()
    shot(page, "product_image")


def test_calibration_page_lists_the_set(page, server, session):
    frame = open_view(page, server, "calibration", "Calibration")
    row = frame.locator("#calsets tbody tr", has_text=session.calset)
    assert row.count() == 1 and "active" in row.inner_text() and "bandpass" in row.inner_text()
    assert frame.locator("#timeline svg rect.cal-active").count() == 1
    plot = row.locator("a", has_text="B plot")
    assert plot.get_attribute("href").endswith("/plots/B.png")
    shot(page, "calibration")


def test_sources_page_cone_search_and_light_curve(page, server, session):
    cal = next(s for s in session.reference_sources if s["name"] == "0834+555")
    frame = open_view(page, server, "sources", "Sources")
    frame.locator("input[name=ra]").fill(f"{cal['ra_deg']:.4f}")
    frame.locator("input[name=dec]").fill(f"{cal['dec_deg']:.4f}")
    frame.locator("input[name=radius]").fill("2")
    frame.locator("button[type=submit]").click()
    first = frame.locator("#hits tbody tr").first
    first.wait_for()
    assert first.locator("td").first.inner_text() == "0834+555"  # the nearest: the simulated calibrator
    assert "sources within 2" in frame.locator("#cone-summary").inner_text()
    assert frame.locator("#detections tbody tr", has_text="0834+555").count() == 1
    assert "without a reference match" in frame.locator("#det-summary").inner_text()
    first.locator("a.src").click()
    frame.locator("#lc-plot svg circle.pt").wait_for()
    assert frame.locator("#lc-title").inner_text() == "Light curve: 0834+555"
    assert "1 measurement" in frame.locator("#lc-stats").inner_text()
    shot(page, "sources")


@pytest.fixture(scope="module")
def dags(server):
    """The DAGs stored as the dag-processor would store them (no scheduler runs: runs stay queued)."""
    server.airflow("dags", "reserialize", timeout=600)
    return server.api_token()


def open_run_tab(tab, server, dag_id: str, run_id: str):
    """The 'Sky products' tab of a DAG run (an external view with destination dag_run)."""
    tab.goto(f"{server.url}/dags/{dag_id}/runs/{run_id}")
    link = tab.locator("a[title='Sky products']")
    link.wait_for()
    link.click()
    frame = tab.frame_locator("iframe[title='Sky products']")
    frame.locator("body[data-page=run][data-ready]").wait_for(state="attached")
    return frame


def test_group_run_page_shows_its_image(page, server, session, dags):
    group_id = session.group_ids[1]
    run_id = f"group__{group_id.replace(':', '')}"
    server.api_request("POST", "/api/v2/dags/group/dagRuns", dags, {
        "dag_run_id": run_id, "logical_date": None, "conf": {"group_id": group_id}})
    frame = open_run_tab(page, server, "group", run_id)
    assert frame.locator("#run-summary").inner_text() == f"Group {group_id}"
    item = frame.locator("#run-products li")
    assert item.count() == 1 and f"image {group_id.replace(':', '')}" in item.inner_text()
    assert "QA good" in item.inner_text()
    shot(page, "group_run")


def test_mosaic_run_page_shows_its_mosaic(page, server, session, dags):
    start = datetime.strptime(session.window, "%Y-%m-%dT%H%M").replace(tzinfo=timezone.utc)
    run = server.api_request("POST", "/api/v2/dags/mosaic/dagRuns", dags, {
        "dag_run_id": f"manual__{session.window}", "logical_date": start.isoformat(),
        "data_interval_start": start.isoformat(), "data_interval_end": (start + timedelta(hours=1)).isoformat()})
    frame = open_run_tab(page, server, "mosaic", run["dag_run_id"])
    assert frame.locator("#run-summary").inner_text() == f"Mosaic window {session.window}"
    item = frame.locator("#run-products li")
    assert item.count() == 1 and f"mosaic {session.window}" in item.inner_text() and "published" in item.inner_text()
    shot(page, "mosaic_run")
