"""Shared test setup: import paths, offline CASA, an isolated Airflow home."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for sub in ("include", "plugins"):
    p = str(ROOT / sub)
    if p not in sys.path:
        sys.path.insert(0, p)

# Tests never touch a user's ~/airflow, and CASA never downloads.
_HOME = Path(tempfile.mkdtemp(prefix="contimg-test-airflow-"))
os.environ.setdefault("AIRFLOW_HOME", str(_HOME))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_HOME / 'airflow.db'}")
os.environ.setdefault("CONTIMG_CASA_CONFIG_DIR", str(_HOME / "casa"))

from dsa110_contimg.casa_env import ensure_casa_offline  # noqa: E402

ensure_casa_offline()
