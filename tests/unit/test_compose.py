"""docker-compose.yaml follows Airflow's CeleryExecutor topology (no Docker engine here)."""
from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_topology():
    doc = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    services = doc["services"]
    assert {"postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer", "airflow-worker"} <= set(services)
    commands = {name: s.get("command") for name, s in services.items()}
    assert commands["airflow-worker"] == ["celery", "worker"]
    assert commands["airflow-dag-processor"] == ["dag-processor"]
    init = " ".join(commands["airflow-init"])
    assert "db migrate" in init and "pools set casa" in init  # heavy tasks wait forever without the pool
    assert "dsa110 registry migrate --registry postgresql" in init  # the contimg schema, before any task
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                 "airflow-worker", "airflow-init"):
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        assert "AIRFLOW__API_AUTH__JWT_SECRET" in env  # shared, or tasks fail auth
        assert '"conn_type": "postgres"' in env["AIRFLOW_CONN_CONTIMG_DB"]
        mounts = {v.split(":")[1] for v in services[name]["volumes"]}
        assert {"/data/incoming", "/data/staging", "/data/products"} <= mounts
        assert services[name]["build"] == "."
    assert {"incoming", "staging", "products"} <= set(doc["volumes"])


def test_compose_worker_settings_are_the_tested_topology():
    """The settings the native topology tests run with (``CeleryAirflow.deployment_env``), other
    than the addresses and sizes each deployment picks, are docker-compose's too."""
    from dsa110_contimg.topology import CeleryAirflow

    stack = CeleryAirflow(home=Path("/nonexistent"), data_dir=Path("/nonexistent"),
                          metadata_url="postgresql+psycopg2://u@h/db")
    per_deployment = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__BROKER_URL",
                      "AIRFLOW__CELERY__RESULT_BACKEND", "AIRFLOW_CONN_CONTIMG_DB",
                      "AIRFLOW__CELERY__WORKER_CONCURRENCY"}
    tested = {k: v for k, v in stack.deployment_env({}).items() if k not in per_deployment}
    worker = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]["airflow-worker"]
    assert {k: str(worker["environment"].get(k)) for k in tested} == tested
    assert worker["environment"]["AIRFLOW__CELERY__WORKER_CONCURRENCY"].startswith("${")  # set per deployment


def test_dockerfile_installs_locked_deps_wsclean_and_casadata():
    text = (ROOT / "Dockerfile").read_text()
    assert "wsclean" in text and "requirements.lock" in text
    assert "casadata" in (ROOT / "requirements.txt").read_text()
