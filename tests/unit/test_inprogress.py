"""A killed stage leaves its in-progress copy; the next attempt at the same product on the
same host removes it, and nothing of live processes, other hosts or other products."""
from __future__ import annotations

import os
import subprocess
import sys

from dsa110_contimg import inprogress
from dsa110_contimg.convert import _TMP_INFIX
from dsa110_contimg.imaging import image


def _dead_pid() -> int:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    return int(dead.stdout)  # exited: no process has it (pids are not reused this soon)


def test_work_directories_of_dead_imagings_on_this_host_are_removed(tmp_path):
    dead_pid, host = _dead_pid(), inprogress.host_name()
    stale = tmp_path / f".G1.wsclean.work-{host}-{dead_pid}"
    live = tmp_path / f".G1.wsclean.work-{host}-{os.getppid()}"  # a running imaging
    other_host = tmp_path / f".G1.tclean.work-otherhost-{dead_pid}"  # not ours to judge
    other_name = tmp_path / f".G2.wsclean.work-{host}-{dead_pid}"  # another group's
    for d in (stale, live, other_host, other_name):
        (d / "sub").mkdir(parents=True)
    image._remove_stale_work(tmp_path, "G1")
    assert not stale.exists()
    assert live.is_dir() and other_host.is_dir() and other_name.is_dir()


def test_tmp_copies_of_dead_conversions_on_this_host_are_removed(tmp_path):
    dead_pid, host = _dead_pid(), inprogress.host_name()
    gid = "2026-01-15T08:00:00"
    stale = tmp_path / f"{gid}{_TMP_INFIX}{host}-{dead_pid}"
    mine = tmp_path / f"{gid}{_TMP_INFIX}{inprogress.owner_suffix()}"  # this process's own
    other_host = tmp_path / f"{gid}{_TMP_INFIX}otherhost-{dead_pid}"
    final = tmp_path / f"{gid}.ms"
    unparsable = tmp_path / f"{gid}{_TMP_INFIX}{host}-notapid"
    for d in (stale, mine, other_host, final, unparsable):
        d.mkdir()
    removed = inprogress.remove_stale(tmp_path, f"{gid}{_TMP_INFIX}*", _TMP_INFIX, f"convert {gid}")
    assert removed == [stale] and not stale.exists()
    assert mine.is_dir() and other_host.is_dir() and final.is_dir() and unparsable.is_dir()
