"""A small observing session run through the pipeline's own library steps, for the products UI tests.

Three 'tiny' groups around the 0834+555 transit are simulated, ingested, converted,
calibrated (a daily bandpass set solved on the transit group), imaged, QA'd, mosaicked,
cross-matched and published exactly as the DAGs' operators call the steps, into a SQLite
registry made by ``Registry`` with its migrations. No Airflow is involved here, so the
API tests can then point a real api-server at the result.

Building takes a few minutes of CASA, so one build serves a whole pytest session
(both the API and the browser tests): it is kept in pytest's base temp directory, or
in ``$CONTIMG_PRODUCTS_SESSION_DIR`` when set (reused across pytest runs while developing).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from dsa110_contimg.calibration.stage import apply_step, solve_bandpass_step
from dsa110_contimg.calibrators import transit_on
from dsa110_contimg.catalog import read_catalog
from dsa110_contimg.config import PipelineConfig
from dsa110_contimg.instrument import INTEGRATION_S, preset
from dsa110_contimg.localstack import LocalAirflow, free_port
from dsa110_contimg.pipeline import (
    convert_step, crossmatch_step, image_step, mosaic_step, new_ready_groups, open_registry, publish_step,
    qa_image, record_groups, register_image,
)
from dsa110_contimg.simulate import simulate_session

PRESET = "tiny"
N_GROUPS = 3
DEC = 55.6
CALIBRATOR = "0834+555"
DONE = "session.json"


@dataclass(frozen=True)
class ProductsSession:
    """Where the built session lives and what the tests may assert on."""

    root: Path
    data_dir: Path
    registry_db: Path
    window: str
    calset: str
    group_ids: list[str]
    reference_sources: list[dict]  # the simulated sky (name, ra_deg, dec_deg, flux_jy), brightest first

    @property
    def registry_url(self) -> str:
        return f"sqlite:///{self.registry_db}"

    def config(self) -> PipelineConfig:
        return PipelineConfig(data_dir=self.data_dir, pointing_dec_deg=DEC, bandpass_calibrator=CALIBRATOR)


def products_session(root: Path) -> ProductsSession:
    """The session under ``root``: built once, then read back from its marker file."""
    marker = root / DONE
    if not marker.exists():
        _build(root)
    info = json.loads(marker.read_text())
    return ProductsSession(root=root, data_dir=root / "data", registry_db=root / "registry.db",
                           window=info["window"], calset=info["calset"], group_ids=info["group_ids"],
                           reference_sources=info["reference_sources"])


def session_root(tmp_path_factory) -> Path:
    """A directory shared by every test of one pytest session (or the developer's env override)."""
    override = os.environ.get("CONTIMG_PRODUCTS_SESSION_DIR")
    root = Path(override) if override else tmp_path_factory.getbasetemp() / "products_session"
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def _build(root: Path) -> None:
    data = root / "data"
    span = timedelta(seconds=preset(PRESET).integrations_per_file * INTEGRATION_S)
    transit = transit_on(CALIBRATOR, date(2026, 1, 15))
    start = (transit - 1.5 * span).replace(microsecond=0)  # the transit falls in the second group
    sim = simulate_session(data / "incoming", PRESET, start, N_GROUPS, DEC, seed=3, calibrator=CALIBRATOR,
                           catalog_path=data / "reference_catalog.tsv")
    cfg = PipelineConfig(data_dir=data, pointing_dec_deg=DEC, bandpass_calibrator=CALIBRATOR)
    reg = open_registry(f"sqlite:///{root / 'registry.db'}")
    settled = datetime.now(timezone.utc) + timedelta(minutes=5)  # the files were written a moment ago
    groups = record_groups(reg, new_ready_groups(cfg, set(), now=settled))
    converted = {gid: convert_step(cfg, reg, gid) for gid in groups}
    cal = solve_bandpass_step(cfg, reg, transit)
    for gid in groups:  # the group DAG's order: apply -> image -> QA -> register
        applied = apply_step(cfg, reg, gid)
        image = image_step(cfg, reg, gid)
        register_image(cfg, reg, gid, image, qa_image(cfg, image), applied=applied, converted=converted[gid])
    w0 = start.replace(minute=0, second=0)
    mosaic = mosaic_step(cfg, reg, w0, w0 + timedelta(hours=1))
    match = crossmatch_step(cfg, reg, mosaic)
    publish_step(cfg, reg, mosaic, match)
    ref = sorted(read_catalog(data / "reference_catalog.tsv"), key=lambda s: -s.flux_jy)
    info = {"window": mosaic["window"], "calset": cal["set_name"], "group_ids": sorted(groups),
            "n_files": len(sim.files),
            "reference_sources": [{"name": s.name, "ra_deg": s.ra_deg, "dec_deg": s.dec_deg, "flux_jy": s.flux_jy}
                                  for s in ref]}
    (root / DONE).write_text(json.dumps(info))


def api_server(session: ProductsSession, home: Path, timeout_s: float = 240) -> LocalAirflow:
    """A real Airflow api-server (only that component: nothing may process the session's
    incoming files) with this project's plugins, reading the session's registry through the
    ``contimg_db`` connection and serving files from its products and staging roots.
    Stop it with ``.stop()``."""
    stack = LocalAirflow(home=home, data_dir=session.data_dir, port=free_port(8190), contimg_env={
        "AIRFLOW_CONN_CONTIMG_DB": json.dumps({"conn_type": "sqlite", "host": str(session.registry_db)}),
        "CONTIMG_POINTING_DEC_DEG": str(DEC),
    })
    stack.prepare()
    out = open(home / "api-server.out", "ab")
    stack.procs["api-server"] = subprocess.Popen(
        [sys.executable, "-m", "airflow", "api-server", "--port", str(stack.port)], env=stack.env(), stdout=out,
        stderr=subprocess.STDOUT, start_new_session=True, cwd=home)
    try:
        _wait_healthy(stack, timeout_s)
    except BaseException:
        stack.stop()
        raise
    return stack


@contextmanager
def running_api_server(session: ProductsSession, home: Path) -> Iterator[LocalAirflow]:
    """``api_server`` for the length of a ``with`` block (a module fixture's body)."""
    stack = api_server(session, home)
    try:
        yield stack
    finally:
        stack.stop()


def _wait_healthy(stack: LocalAirflow, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            with urllib.request.urlopen(f"{stack.url}/api/v2/monitor/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise RuntimeError(f"api-server not healthy after {timeout_s:.0f} s; see {stack.home / 'api-server.out'}")
