"""Sky products in the Airflow UI: a FastAPI app (JSON API and HTML pages) served by the api-server.

``app.create_app()`` builds it; ``contimg_plugin.py`` mounts it under ``URL_PREFIX`` and
registers the pages as external views, so they appear in the UI's navigation."""
from __future__ import annotations

URL_PREFIX = "/contimg"
