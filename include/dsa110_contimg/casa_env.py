"""Make CASA run offline from the ``casadata`` package.

casatools tries to update its measures data at import time and fails without a
network. Writing a site config and pointing ``CASASITECONFIG`` at it, before
anything imports casatools, makes it use the data shipped in ``casadata``.
Every module that imports casatools/casatasks calls :func:`ensure_casa_offline`
first (and does so lazily, inside functions, so importing the library stays
cheap for Airflow's DAG parser).
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

_DONE = False


def casadata_dir() -> Path:
    """Return the ``__data__`` directory of the installed casadata package."""
    spec = importlib.util.find_spec("casadata")
    if spec is None or spec.origin is None:
        raise RuntimeError("the casadata package is not installed; run `make install`")
    return Path(spec.origin).parent / "__data__"


def site_config_text(data_dir: Path, log_dir: Path) -> str:
    """The casasiteconfig that pins measures to ``data_dir``, disables updates
    and network checks, and keeps CASA's log out of the working directory."""
    return (
        f"measurespath = {str(data_dir)!r}\n"
        "measures_auto_update = False\n"
        "data_auto_update = False\n"
        "skipnetworkcheck = True\n"
        f"logfile = {str(log_dir / 'casa.log')!r}\n"
    )


def ensure_casa_offline() -> Path:
    """Write the site config (once per process) and export ``CASASITECONFIG``.

    Returns the path of the config file. Idempotent and safe to call from any
    process (Airflow task, CLI, test)."""
    global _DONE
    data_dir = casadata_dir()
    cfg_dir = Path(os.environ.get("CONTIMG_CASA_CONFIG_DIR", Path(tempfile.gettempdir()) / "contimg-casa"))
    cfg = cfg_dir / "casasiteconfig.py"
    text = site_config_text(data_dir, cfg_dir)
    if not cfg.exists() or cfg.read_text() != text:
        cfg_dir.mkdir(parents=True, exist_ok=True)
        tmp = cfg.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, cfg)
    os.environ["CASASITECONFIG"] = str(cfg)
    # CASA writes casa-<date>.log into the cwd unless told otherwise.
    os.environ.setdefault("CASA_LOGFILE_DIR", str(cfg_dir))
    _DONE = True
    return cfg


def casatools():
    """Import casatools offline and return the module."""
    ensure_casa_offline()
    import casatools as ct  # noqa: PLC0415  (import must follow the site config)

    return ct


def casatasks():
    """Import casatasks offline and return the module; logs go beside the config."""
    ensure_casa_offline()
    import casatasks as cts  # noqa: PLC0415

    log_dir = Path(os.environ["CASA_LOGFILE_DIR"])
    try:
        cts.casalog.setlogfile(str(log_dir / f"casa-{os.getpid()}.log"))
    except Exception:  # pragma: no cover - logging is best effort
        pass
    return cts
