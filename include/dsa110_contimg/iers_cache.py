"""Earth-orientation (IERS) table for astropy, parsed once per installed version.

Every ITRS <-> ICRS transform needs UT1-UTC and polar motion. astropy parses
the IERS-A and IERS-B text tables that ``astropy-iers-data`` ships the first
time a process needs them, which costs ~1 s, and the converter runs in a
fresh process per group. :func:`install` keeps the parsed table (exactly the
object ``IERS_Auto.open()`` returns, so results are identical) in a private
cache directory keyed by the astropy and astropy-iers-data versions, and
installs it as astropy's earth-orientation table. Any problem with the cache
falls back to astropy's own loading.
"""
from __future__ import annotations

import logging
import os
import pickle
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_INSTALLED = False


def cache_dir() -> Path:
    """A directory only this user can write (pickles are trusted from here only)."""
    base = os.environ.get("CONTIMG_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dsa110_contimg"
    )
    return Path(base)


def _key() -> str:
    import astropy

    try:
        import astropy_iers_data

        data_version = astropy_iers_data.__version__
    except (ImportError, AttributeError):  # pragma: no cover - older astropy bundles its own
        data_version = "bundled"
    return f"iers-astropy{astropy.__version__}-data{data_version}.pkl"


def _private(d: Path) -> bool:
    try:
        st = d.stat()
    except OSError:
        return False
    return st.st_uid == os.getuid() and not (st.st_mode & 0o022)


def install() -> None:
    """Make astropy use the cached IERS table (parsing and caching it if needed)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from astropy.utils import iers

    d = cache_dir()
    path = d / _key()
    table = None
    if path.is_file() and _private(d):
        try:
            table = pickle.loads(path.read_bytes())  # our own file, in a directory only this user can write
            if not isinstance(table, iers.IERS_Auto):
                table = None
        except Exception as exc:  # noqa: BLE001 - a bad cache only costs the parse
            log.info("iers cache %s unreadable (%s); parsing the tables", path, exc)
            table = None
    if table is None:
        table = iers.IERS_Auto.open()
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            if _private(d):
                fd, tmp = tempfile.mkstemp(dir=d, prefix=".iers-")
                with os.fdopen(fd, "wb") as f:
                    pickle.dump(table, f, protocol=pickle.HIGHEST_PROTOCOL)
                os.replace(tmp, path)
        except OSError as exc:
            log.info("cannot cache the IERS table in %s: %s", d, exc)
    iers.earth_orientation_table.set(table)
    _INSTALLED = True
