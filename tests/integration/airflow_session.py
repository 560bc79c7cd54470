"""The tiny simulated session the end-to-end tests run through a real Airflow deployment,
and the wait for its products (shared by the embedded, backfill and production-topology tests)."""
from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

from dsa110_contimg.calibrators import transit_on
from dsa110_contimg.instrument import INTEGRATION_S, preset
from dsa110_contimg.localstack import LocalAirflow
from dsa110_contimg.pipeline import open_registry, summary
from dsa110_contimg.simulate import simulate_session

PRESET = "tiny"
DEC = 55.6
CALIBRATOR = "0834+555"


@dataclass(frozen=True)
class TransitSession:
    sim: object  # simulate_session's result
    start: datetime  # the session's nominal start
    transit: datetime  # the calibrator's transit, in group 1

    @property
    def window_start(self) -> datetime:
        """A mosaic window holding every group: a group's id is its earliest file's time, which
        the correlator's jitter puts up to 20 s before ``start``."""
        return self.start - timedelta(minutes=1)


def simulate_transit_session(data: Path, n_groups: int, seed: int = 3) -> TransitSession:
    """``n_groups`` tiny groups into ``data/incoming``, the 0834+555 transit in the second,
    with the simulated sky as the reference catalogue ``data/reference_catalog.tsv``."""
    span = timedelta(seconds=preset(PRESET).integrations_per_file * INTEGRATION_S)
    transit = transit_on(CALIBRATOR, date(2026, 1, 15))
    start = (transit - 1.5 * span).replace(microsecond=0)  # the transit falls in group 1
    sim = simulate_session(data / "incoming", PRESET, start, n_groups, DEC, seed=seed, calibrator=CALIBRATOR,
                           catalog_path=data / "reference_catalog.tsv")
    return TransitSession(sim=sim, start=start, transit=transit)


def wait_for_session(stack: LocalAirflow, n_groups: int, timeout_s: float) -> dict:
    """Wait until ``n_groups`` groups are imaged (or failed) and a mosaic is published, as the
    registry says; its summary then, or at the timeout (the caller asserts on it)."""
    t0 = time.monotonic()
    s: dict = {}
    while time.monotonic() - t0 < timeout_s:
        stack.check_alive()
        if stack.registry_exists():
            s = summary(open_registry(stack.registry_url))
            if s["groups_processed"] + s["groups_failed"] >= n_groups and s["mosaics_published"] >= 1:
                break
        time.sleep(10)
    return s


def finished_runs(stack: LocalAirflow, token: str, dag_ids: tuple[str, ...], timeout_s: float = 300) -> dict:
    """The DAGs' runs (REST API) once none is still queued or running: the registry records a
    product a moment before its run's last task ends."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = {d: stack.api_get(f"/api/v2/dags/{d}/dagRuns", token)["dag_runs"] for d in dag_ids}
        if all(r["state"] in ("success", "failed") for rs in runs.values() for r in rs) or time.monotonic() > deadline:
            return runs
        stack.check_alive()
        time.sleep(5)


REDIS = "redis://127.0.0.1:6379"
_CLAIM_KEY = "contimg-test-claim"


@contextlib.contextmanager
def free_redis_db(server: str = REDIS):
    """The URL of an empty Redis database of ``server`` other than 0 (where a default deployment
    would be), claimed for the caller and emptied after.

    Several test stacks share the server at once (the suite, and tests run beside it), and two
    stacks on one database would take each other's Celery messages; so a database is claimed
    with an atomic ``SET NX`` of a marker key, and kept only if that key is all it holds."""
    import pytest
    import redis

    token = uuid.uuid4().hex
    for index in range(1, 16):
        client = redis.Redis.from_url(f"{server}/{index}")
        try:
            claimed = client.set(_CLAIM_KEY, token, nx=True)
        except redis.exceptions.ConnectionError as exc:  # pragma: no cover - service down
            pytest.fail(f"Redis at {server} is not reachable: {exc}")
        if claimed and client.dbsize() == 1:
            break
        if claimed:  # someone's data without a marker: not ours to use
            client.delete(_CLAIM_KEY)
        client.close()
    else:  # pragma: no cover
        pytest.fail(f"no empty Redis database at {server}")
    try:
        yield f"{server}/{index}"
    finally:
        client.flushdb()
        client.close()
