"""`make demo`: an hour of simulated DSA-110 observing through the real Airflow.

1. simulates 12 groups around the 0834+555 transit into the incoming directory
   (files written as the correlator does: _incomplete, then renamed);
2. starts Airflow (scheduler, dag-processor, triggerer, api-server) on SQLite
   with the LocalExecutor and this project's dags/ and plugins/;
3. lets the ingest sensor find the groups; never calls a DAG or a stage itself;
4. waits for the published mosaic and prints a summary, the last line JSON.

Running it again is idempotent: existing files, runs and products are reused.
Set DEMO_SERVE=0 to stop Airflow at the end instead of serving the UI.
"""
from __future__ import annotations

import json
import os
import sys
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from dsa110_contimg.localstack import LocalAirflow, free_port  # noqa: E402
from dsa110_contimg.pipeline import open_registry, summary  # noqa: E402
from dsa110_contimg.simulate import session_start_around_transit, simulate_session  # noqa: E402

DEMO_DIR = Path(os.environ.get("DEMO_DIR", ROOT / ".demo"))
PRESET = os.environ.get("DEMO_PRESET", "demo")
N_GROUPS = int(os.environ.get("DEMO_GROUPS", "12"))
CALIBRATOR = "0834+555"
DEC_DEG = 55.6
TIMEOUT_S = float(os.environ.get("DEMO_TIMEOUT_S", "1800"))


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def session_start():
    return session_start_around_transit(CALIBRATOR, date(2026, 1, 15))


def demo_stack(port: int = 8080) -> LocalAirflow:
    """The embedded deployment of the demo: its Airflow home, data and settings
    (scripts/airflow.py runs the Airflow CLI with the same environment)."""
    start = session_start()
    return LocalAirflow(home=DEMO_DIR / "airflow", data_dir=DEMO_DIR / "data", port=port, contimg_env={
        "CONTIMG_POINTING_DEC_DEG": str(DEC_DEG),
        "CONTIMG_BANDPASS_CALIBRATOR": CALIBRATOR,
        "CONTIMG_SCHEDULE_START": start.isoformat(),
        "CONTIMG_SCHEDULE_END": (start + timedelta(minutes=59)).isoformat(),
        "CONTIMG_CATCHUP": "true",
        "CONTIMG_GROUP_TIMEOUT_S": "60",
    })


def main() -> int:
    t0 = time.monotonic()
    data = DEMO_DIR / "data"
    start = session_start()
    log(f"simulating {N_GROUPS} groups ({PRESET} preset) from {start.isoformat()} into {data / 'incoming'}")
    sim = simulate_session(data / "incoming", PRESET, start, N_GROUPS, DEC_DEG, seed=1, calibrator=CALIBRATOR,
                           catalog_path=data / "reference_catalog.tsv")
    log(f"{len(sim.files)} subband files, {sim.n_sources} sources in the reference catalogue")

    stack = demo_stack(free_port(8080))
    log(f"preparing Airflow in {stack.home}")
    stack.prepare()
    stack.start()
    log(f"Airflow started: UI {stack.url} (login admin / admin)")
    result: dict = {}
    try:
        stack.unpause()
        log("DAGs ingest, group, bandpass, mosaic unpaused; the ingest sensor is watching the incoming directory")
        result = wait_for_products(stack, N_GROUPS, t0)
        result["wall_s"] = round(time.monotonic() - t0, 1)
        report(result, stack, data)
        if os.environ.get("DEMO_SERVE", "1") != "0":
            log(f"serving the UI at {stack.url} (admin / admin); Ctrl-C to stop")
            while True:
                time.sleep(5)
                stack.check_alive()
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0 if result.get("mosaics_published", 0) >= 1 else 1


def wait_for_products(stack: LocalAirflow, n_groups: int, t0: float) -> dict:
    last = None
    while time.monotonic() - t0 < TIMEOUT_S:
        stack.check_alive()
        if stack.registry_db.exists():
            s = summary(open_registry(f"sqlite:///{stack.registry_db}"))
            line = (f"groups seen {s['groups_seen']}, imaged {s['groups_processed']}, failed {s['groups_failed']}, "
                    f"caltables {s['caltables']}, mosaics published {s['mosaics_published']}")
            if line != last:
                log(line)
                last = line
            done = s["groups_processed"] + s["groups_failed"] >= n_groups
            if done and s["mosaics_published"] >= 1:
                return s
        time.sleep(10)
    log(f"timed out after {TIMEOUT_S:.0f} s; see the task logs under {stack.home / 'logs'}")
    return summary(open_registry(f"sqlite:///{stack.registry_db}")) if stack.registry_db.exists() else {}


def report(s: dict, stack: LocalAirflow, data: Path) -> None:
    reg = open_registry(f"sqlite:///{stack.registry_db}")
    print("\n=== DSA-110 continuum imaging demo ===")
    print(f"groups seen / processed / failed : {s.get('groups_seen')} / {s.get('groups_processed')} / {s.get('groups_failed')}")
    print(f"calibration tables               : {s.get('caltables')}")
    print(f"images                           : {s.get('images')}  (staging: {data / 'staging' / 'images'})")
    print(f"mosaics (published)              : {s.get('mosaics')} ({s.get('mosaics_published')})")
    for m in reg.products(kind="mosaic", status="published"):
        print(f"  published mosaic               : {m['published_path']}")
    print(f"sources matched                  : {s.get('sources_matched')}")
    print(f"median flux ratio / offset       : {s.get('median_flux_ratio')} / {s.get('median_offset_arcsec')} arcsec")
    print(f"products directory               : {data / 'products'}")
    print(f"wall time                        : {s.get('wall_s')} s")
    print(f"Airflow UI                       : {stack.url}  (login admin / admin)")
    keys = ["groups_seen", "groups_processed", "groups_failed", "caltables", "images", "mosaics",
            "mosaics_published", "sources_matched", "median_flux_ratio", "median_offset_arcsec", "wall_s"]
    print(json.dumps({k: s.get(k) for k in keys}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
