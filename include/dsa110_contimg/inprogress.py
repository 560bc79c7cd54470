"""In-progress copies named after the host and process writing them, and their clean-up.

The stages write a product under a temporary name ending ``<infix><host>-<pid>``
and rename it into place when it is whole. A killed process (a crashed worker,
SIGKILL) runs no clean-up, so its copy stays; the next attempt at the same
product on the same host removes the copies whose process is gone. Copies of
live processes, and of other hosts sharing the directory (whose processes this
host cannot see), are left alone."""
from __future__ import annotations

import logging
import os
import shutil
import socket
from pathlib import Path

log = logging.getLogger(__name__)


def host_name() -> str:
    """This host's name, safe in a file name."""
    return socket.gethostname().replace("/", "_") or "localhost"


def owner_suffix() -> str:
    """``<host>-<pid>`` of this process: the end of its in-progress copies' names."""
    return f"{host_name()}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(directory: Path, pattern: str, infix: str, what: str) -> list[Path]:
    """Delete the entries of ``directory`` matching the glob ``pattern`` whose name continues
    after ``infix`` with this host and a pid no process has any more; the paths removed.

    ``what`` names the stage in the warning logged for each (e.g. "convert 2026-01-15T08:00:00")."""
    removed = []
    for p in Path(directory).glob(pattern):
        host, _, pid_text = p.name.split(infix, 1)[-1].rpartition("-")
        try:
            pid = int(pid_text)
        except ValueError:
            continue
        if host != host_name() or pid == os.getpid() or pid_alive(pid):
            continue
        log.warning("%s: removing %s left by a killed process (pid %d)", what, p, pid)
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed
