"""The contimg Airflow plugin: loaded by every Airflow component that loads plugins.

It installs the work-arounds in ``contimg_airflow.airflow_fixes`` (the API server
loads plugins at start, so clearing a group task works while its latency deadline
is pending), and adds the sky-products pages to the UI: a FastAPI app (JSON API and
HTML pages, ``contimg_airflow.ui``) that the api-server mounts under ``/contimg``,
and external views that put its pages in the UI's navigation and on DAG runs."""
from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from contimg_airflow.airflow_fixes import install
from contimg_airflow.ui import URL_PREFIX

install()

_UI = URL_PREFIX.strip("/") + "/ui"  # hrefs without a leading slash: relative to the UI's base URL


class ContimgPlugin(AirflowPlugin):
    name = "contimg"

    @property
    def fastapi_apps(self) -> list[dict]:
        """Built on first use: only the api-server asks, so other components never build the app."""
        from contimg_airflow.ui.app import get_app

        return [{"app": get_app(), "url_prefix": URL_PREFIX, "name": "DSA-110 sky products"}]

    external_views = [
        {"name": "Sky products", "href": f"{_UI}/sky", "url_route": "sky-products", "destination": "nav",
         "nav_top_level": True},
        {"name": "Calibration", "href": f"{_UI}/calibration", "url_route": "calibration", "category": "DSA-110",
         "destination": "nav"},
        {"name": "Sources", "href": f"{_UI}/sources", "url_route": "sources", "category": "DSA-110",
         "destination": "nav"},
        {"name": "Sky products", "href": f"{_UI}/run?dag_id={{DAG_ID}}&run_id={{RUN_ID}}", "url_route": "run-products",
         "destination": "dag_run"},
    ]
