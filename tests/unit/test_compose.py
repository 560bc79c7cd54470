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


def test_dockerfile_installs_locked_deps_wsclean_and_casadata():
    text = (ROOT / "Dockerfile").read_text()
    assert "wsclean" in text and "requirements.lock" in text
    assert "casadata" in (ROOT / "requirements.txt").read_text()
