"""The Airflow CLI against the embedded deployment that `make demo` starts.

    .venv/bin/python scripts/airflow.py <airflow arguments>

It runs ``airflow`` with the environment the demo's components use: the Airflow
home ``.demo/airflow``, this project's dags/ and plugins/, the demo's settings
and its metadata database (``CONTIMG_AIRFLOW_DB`` when set, as for
``make demo``). Without it, the CLI would read a different database and see
none of the demo's DAGs or runs."""
from __future__ import annotations

import os
import sys

from demo import demo_stack  # scripts/ is this script's directory, first on sys.path


def main() -> None:
    env = demo_stack().env()
    os.execvpe(sys.executable, [sys.executable, "-m", "airflow", *sys.argv[1:]], env)


if __name__ == "__main__":
    main()
