"""Ingest: decide which subband files in the incoming directory form a group.

The grouping rules live here, in one place, so the Airflow sensor (its trigger
polls from the triggerer), the command line and the tests agree:

- a subband file is named ``YYYY-MM-DDTHH:MM:SS_sbNN.hdf5`` (UTC, NN = 00..15);
  the correlator writes ``..._sbNN_incomplete.hdf5`` and renames it when done,
  so ``_incomplete`` files never count as subbands (they only keep their
  group "active" while they grow);
- a file modified within ``settle_s`` seconds may still be growing: it holds
  its group back (status ``pending``) until it has settled;
- files cluster by name timestamp: the earliest unclaimed file anchors a group
  and every file within ``tolerance_s`` seconds of that anchor joins it; the
  group id is the anchor's timestamp;
- 16/16 subbands (settled) is ``complete``; at least ``min_subbands`` with the
  newest activity older than ``timeout_s`` is ``semi-complete``; anything
  else is ``pending``;
- the same subband twice in one group makes it ``invalid`` (both files stay
  listed, ``reason`` says which); it is still handed on once it has settled so
  that the group's own run fails with that message for an operator to read;
- symbolic links, and anything resolving outside the incoming directory, are
  rejected, never followed (convert checks the recorded files again);
- files no run will ever read are listed by :func:`ingest_issues` with the
  reason, for the ingest report and an alert: names that do not parse,
  rejected links, a subband arriving after its group was recorded ("late",
  with how to reprocess the group with it) and "stray" files too few and too
  far from any other group's timestamps to ever be converted.

Only ``os.scandir``/``stat`` are used: this is cheap enough to run every few
seconds on a directory with thousands of files.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .errors import BadFileNameError
from .instrument import N_SUBBANDS

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})_sb(?P<sb>\d{2})(?P<inc>_incomplete)?\.hdf5$")
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S"

STATUS_COMPLETE = "complete"
STATUS_SEMI_COMPLETE = "semi-complete"
STATUS_PENDING = "pending"
STATUS_INVALID = "invalid"
READY_STATUSES = (STATUS_COMPLETE, STATUS_SEMI_COMPLETE)


def _parse(path: str | Path) -> tuple[datetime, int, bool]:
    """(start UTC, subband, is_incomplete) of a file name, or BadFileNameError."""
    name = Path(path).name
    m = _NAME_RE.match(name)
    if m is None:
        raise BadFileNameError(path, "name does not match YYYY-MM-DDTHH:MM:SS_sbNN.hdf5")
    try:
        start = datetime.strptime(m["ts"], _TS_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError as exc:
        raise BadFileNameError(path, f"timestamp {m['ts']!r} is not a valid date/time ({exc})") from None
    sb = int(m["sb"])
    if not 0 <= sb < N_SUBBANDS:
        raise BadFileNameError(path, f"subband {sb} out of range 00-{N_SUBBANDS - 1:02d}")
    return start, sb, m["inc"] is not None


def parse_subband_name(path: str | Path) -> tuple[datetime, int]:
    """Start time (UTC-aware) and subband number of a finished subband file.

    Raises BadFileNameError(path, reason) for names that do not match the
    correlator's pattern, bad dates, subbands outside 00-15 and for
    ``_incomplete`` files (still being written)."""
    start, sb, incomplete = _parse(path)
    if incomplete:
        raise BadFileNameError(path, "file is still being written (_incomplete)")
    return start, sb


SYMLINK_REASON = "symbolic link: rejected, never followed (the correlator writes regular files)"
OUTSIDE_REASON = "resolves to a path outside the incoming directory: rejected"


def check_incoming_file(path: str | Path, incoming: str | Path) -> None:
    """Raise CorruptSubbandError(path, reason) unless ``path`` is a regular file directly in ``incoming``.

    Symbolic links are rejected, never followed, and so is any path that resolves outside the
    incoming directory (``..`` components, a linked parent): convert reads only what ingest may."""
    from .errors import CorruptSubbandError

    path = Path(path)
    if path.is_symlink():
        raise CorruptSubbandError(path, SYMLINK_REASON)
    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(incoming):
        raise CorruptSubbandError(path, f"{OUTSIDE_REASON} ({os.path.realpath(incoming)})")
    if path.exists() and not path.is_file():
        raise CorruptSubbandError(path, "not a regular file")


def format_group_id(start: datetime) -> str:
    """Group id (ISO ``YYYY-MM-DDTHH:MM:SS``, UTC) of a group starting at ``start``."""
    if start.tzinfo is not None:
        start = start.astimezone(timezone.utc)
    return start.strftime(_TS_FORMAT)


@dataclass(frozen=True)
class SubbandFile:
    """One file seen in the incoming directory."""

    path: str
    start: datetime
    subband: int
    mtime: float  # POSIX seconds
    size: int
    incomplete: bool = False


@dataclass(frozen=True)
class SubbandGroup:
    """A cluster of subband files that belong to one observation."""

    group_id: str  # ISO 'YYYY-MM-DDTHH:MM:SS' of the earliest file
    start: datetime  # UTC-aware
    files: tuple[str, ...]  # sorted by subband (duplicates adjacent)
    subbands: tuple[int, ...]  # parallel to files
    status: str  # complete | semi-complete | pending | invalid
    missing: tuple[int, ...]
    reason: str = ""  # why pending/invalid, in words
    newest_mtime: float = 0.0  # latest modification of any member (incl. _incomplete)

    @property
    def ready(self) -> bool:
        return self.status in READY_STATUSES

    def as_dict(self) -> dict:
        """JSON-serialisable form (for XCom / trigger events / CLI output)."""
        return {
            "group_id": self.group_id,
            "start": self.start.isoformat(),
            "files": list(self.files),
            "subbands": list(self.subbands),
            "status": self.status,
            "missing": list(self.missing),
            "reason": self.reason,
            "newest_mtime": self.newest_mtime,
        }


def scan_incoming(incoming: Path) -> tuple[list[SubbandFile], list[tuple[str, str]]]:
    """List subband files in ``incoming``.

    Returns ``(valid, rejected)``: ``valid`` holds finished and ``_incomplete``
    files whose names parse (``SubbandFile.incomplete`` tells them apart);
    ``rejected`` holds ``(path, reason)`` for every other regular file, for every
    symbolic link (never followed) and for any entry resolving outside ``incoming``.
    Directories and hidden files are skipped. A missing directory is an
    empty one (the correlator may not have created it yet)."""
    incoming = Path(incoming)
    valid: list[SubbandFile] = []
    rejected: list[tuple[str, str]] = []
    try:
        entries = list(os.scandir(incoming))
    except FileNotFoundError:
        return valid, rejected
    root = os.path.realpath(incoming)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_symlink():  # never followed: it could point anywhere
                rejected.append((entry.path, SYMLINK_REASON))
                continue
            if not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # renamed/removed while we looked
            continue
        if os.path.dirname(os.path.realpath(entry.path)) != root:
            rejected.append((entry.path, OUTSIDE_REASON))
            continue
        try:
            start, sb, incomplete = _parse(entry.path)
        except BadFileNameError as exc:
            rejected.append((entry.path, exc.reason))
            continue
        valid.append(SubbandFile(entry.path, start, sb, st.st_mtime, st.st_size, incomplete))
    valid.sort(key=lambda f: (f.start, f.subband, f.path))
    rejected.sort()
    return valid, rejected


def find_groups(
    incoming: Path,
    now: datetime | None = None,
    tolerance_s: float = 60,
    timeout_s: float = 600,
    min_subbands: int = 12,
    settle_s: float = 5,
) -> list[SubbandGroup]:
    """All groups in ``incoming`` with their status, oldest first.

    ``now`` defaults to the current time (UTC); file ages are ``now - mtime``.
    Rejected names are logged at WARNING (use :func:`scan_incoming` to get them)."""
    now_ts = (now or datetime.now(timezone.utc)).timestamp()
    files, rejected = scan_incoming(incoming)
    for path, reason in rejected:
        log.warning("ingest: ignoring %s: %s", path, reason)
    finished = [f for f in files if not f.incomplete]
    partial = [f for f in files if f.incomplete]
    tol = timedelta(seconds=tolerance_s)

    clusters: list[list[SubbandFile]] = []
    for f in finished:  # sorted by start: the first unclaimed file anchors a cluster
        if clusters and f.start - clusters[-1][0].start <= tol:
            clusters[-1].append(f)
        else:
            clusters.append([f])

    groups = []
    for members in clusters:
        anchor = members[0].start
        in_progress = [p for p in partial if timedelta(0) <= p.start - anchor <= tol]
        groups.append(_classify(members, in_progress, now_ts, timeout_s, min_subbands, settle_s))
    return groups


def _classify(members, in_progress, now_ts, timeout_s, min_subbands, settle_s) -> SubbandGroup:
    members = sorted(members, key=lambda f: (f.subband, f.start, f.path))
    start = min(f.start for f in members)
    subbands = tuple(f.subband for f in members)
    present = set(subbands)
    missing = tuple(sb for sb in range(N_SUBBANDS) if sb not in present)
    newest = max(f.mtime for f in [*members, *in_progress])
    unsettled = [f for f in members if now_ts - f.mtime < settle_s]
    dups = sorted({sb for sb in subbands if subbands.count(sb) > 1})

    if dups:
        names = "; ".join(
            f"sb{sb:02d}: " + ", ".join(Path(f.path).name for f in members if f.subband == sb) for sb in dups
        )
        status, reason = STATUS_INVALID, f"duplicate subband(s) in one group ({names})"
    elif unsettled:
        status = STATUS_PENDING
        reason = f"{len(unsettled)} file(s) modified within the last {settle_s:g} s (may still be growing)"
    elif not missing and not in_progress:
        status, reason = STATUS_COMPLETE, ""
    elif now_ts - newest >= timeout_s and len(present) >= min_subbands:
        status = STATUS_SEMI_COMPLETE
        reason = f"{len(present)}/{N_SUBBANDS} subbands after {timeout_s:g} s; missing " + _sb_list(missing)
    else:
        have = f"{len(present)}/{N_SUBBANDS} subbands"
        if in_progress:
            have += f", {len(in_progress)} still being written"
        if len(present) < min_subbands:
            reason = f"{have}; need {min_subbands} to convert after the {timeout_s:g} s timeout"
        else:
            reason = f"{have}; waiting up to {timeout_s:g} s for " + _sb_list(missing)
        status = STATUS_PENDING
    return SubbandGroup(
        group_id=format_group_id(start),
        start=start,
        files=tuple(f.path for f in members),
        subbands=subbands,
        status=status,
        missing=missing,
        reason=reason,
        newest_mtime=newest,
    )


def _sb_list(sbs) -> str:
    return ", ".join(f"sb{sb:02d}" for sb in sbs) if sbs else "none"


def ready_groups(
    incoming: Path,
    now: datetime | None = None,
    tolerance_s: float = 60,
    timeout_s: float = 600,
    min_subbands: int = 12,
    settle_s: float = 5,
    include_invalid: bool = True,
) -> list[SubbandGroup]:
    """Groups ready for conversion: complete and semi-complete ones.

    With ``include_invalid`` (default) an invalid group (duplicate subbands)
    is handed on too once all its files have settled and it has either every
    subband or waited ``timeout_s``: its own run then fails in convert with
    the duplicate named, instead of the group silently never being processed."""
    groups = find_groups(incoming, now, tolerance_s, timeout_s, min_subbands, settle_s)
    now_ts = (now or datetime.now(timezone.utc)).timestamp()
    out = []
    for g in groups:
        if g.ready:
            out.append(g)
        elif include_invalid and g.status == STATUS_INVALID:
            settled = now_ts - g.newest_mtime >= settle_s
            if settled and (not g.missing or now_ts - g.newest_mtime >= timeout_s):
                out.append(g)
    return out


# -- problems an operator must hear about -------------------------------------------------
ISSUE_REJECTED = "rejected"  # a name that does not parse, a symbolic link, a path outside incoming
ISSUE_LATE = "late"  # a subband of a group already recorded (and perhaps processed)
ISSUE_STRAY = "stray"  # files that can never form a group: too few, and outside every other group's tolerance


def reprocess_hint(group_id: str) -> str:
    """How an operator reprocesses a group with the files now in incoming (README: Operating)."""
    run_id = "group__" + group_id.replace(":", "")
    return (f"to reprocess the group with it: `dsa110 ingest --rerecord {group_id}`, then clear `convert` "
            f"(with Downstream) of run {run_id}")


def ingest_issues(
    incoming: Path,
    recorded: dict[str, list[str]],
    now: datetime | None = None,
    tolerance_s: float = 60,
    timeout_s: float = 600,
    min_subbands: int = 12,
    settle_s: float = 5,
) -> list[dict]:
    """Files in ``incoming`` that no group run will ever read, each with the reason in words.

    ``recorded``: group id -> the files recorded for it (``Registry.group_files``). Returns one
    dict per file (``path``, ``kind``, ``group_id`` or None, ``reason``), oldest first:

    - ``rejected``: names that do not parse, symbolic links, paths outside ``incoming``;
    - ``late``: a settled subband of a group that is already recorded without it (it arrived
      after its group was handed on); the reason says how to reprocess the group with it;
    - ``stray``: a cluster that is not recorded, has too few subbands to ever be converted and
      has been quiet for ``timeout_s`` (e.g. a file whose timestamp is outside the tolerance)."""
    now_ts = (now or datetime.now(timezone.utc)).timestamp()
    _, rejected = scan_incoming(incoming)
    issues = [{"path": p, "kind": ISSUE_REJECTED, "group_id": None, "reason": r} for p, r in rejected]
    owner = {f: gid for gid, files in recorded.items() for f in files}
    groups = find_groups(incoming, now, tolerance_s, timeout_s, min_subbands, settle_s)
    for g in groups:
        gid = next((owner[f] for f in g.files if f in owner), g.group_id if g.group_id in recorded else None)
        if gid is not None:
            have = set(recorded[gid])
            for path, sb in zip(g.files, g.subbands):
                if path in have or now_ts - _mtime(path) < settle_s:
                    continue
                issues.append({"path": path, "kind": ISSUE_LATE, "group_id": gid, "reason": (
                    f"sb{sb:02d} arrived after group {gid} was recorded with {len(have)} subband(s) and was "
                    f"not used; {reprocess_hint(gid)}")})
        elif (g.status == STATUS_PENDING and len(set(g.subbands)) < min_subbands
              and now_ts - g.newest_mtime >= timeout_s):
            others = [o for o in groups if o is not g]
            near = min(others, key=lambda o: abs((o.start - g.start).total_seconds()), default=None)
            where = (f"; the nearest group, {near.group_id}, starts {(g.start - near.start).total_seconds():+.0f} s "
                     f"away (tolerance {tolerance_s:g} s)" if near else "")
            for path in g.files:
                issues.append({"path": path, "kind": ISSUE_STRAY, "group_id": g.group_id, "reason": (
                    f"{g.reason}; quiet for {timeout_s:g} s, so it will never be converted{where}")})
    return issues


def _mtime(path: str) -> float:
    try:
        return os.stat(path, follow_symlinks=False).st_mtime
    except FileNotFoundError:  # removed while we looked: as if it were still being written
        return float("inf")
