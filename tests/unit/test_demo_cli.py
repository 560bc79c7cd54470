"""scripts/airflow.py: the Airflow CLI with the environment of the demo's components,
so the README's commands (backfill create, dags list-runs) reach the demo's DAGs
and metadata database rather than an empty default one."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _demo(monkeypatch, demo_dir: Path):
    monkeypatch.setenv("DEMO_DIR", str(demo_dir))
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import demo

    return importlib.reload(demo)  # DEMO_DIR is read at import


def test_cli_environment_is_the_demos(monkeypatch, tmp_path):
    monkeypatch.delenv("CONTIMG_AIRFLOW_DB", raising=False)
    env = _demo(monkeypatch, tmp_path).demo_stack().env()
    home = (tmp_path / "airflow").resolve()
    assert env["AIRFLOW_HOME"] == str(home)
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(ROOT / "dags")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{home / 'airflow.db'}"
    assert env["CONTIMG_SCHEDULE_START"].startswith("2026-01-15T")  # the demo's session, not today


def test_cli_follows_contimg_airflow_db(monkeypatch, tmp_path):
    url = "postgresql+psycopg2://postgres@127.0.0.1:5432/airflow"
    monkeypatch.setenv("CONTIMG_AIRFLOW_DB", url)
    env = _demo(monkeypatch, tmp_path).demo_stack().env()
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == url


def test_wrapper_runs_airflow_with_that_environment(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "airflow.py"), "config", "get-value", "core",
                          "dags_folder"], env={"PATH": "/usr/bin:/bin", "DEMO_DIR": str(tmp_path)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == str(ROOT / "dags")
