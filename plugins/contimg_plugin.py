"""The contimg Airflow plugin: loaded by every Airflow component that loads plugins.

For now it only installs the work-arounds in ``contimg_airflow.airflow_fixes``
(the API server loads plugins at start, so clearing a group task works while
its latency deadline is pending)."""
from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from contimg_airflow.airflow_fixes import install

install()


class ContimgPlugin(AirflowPlugin):
    name = "contimg"
