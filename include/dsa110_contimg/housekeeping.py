"""Housekeeping: retention of the staging area and of the task logs.

Two steps, so what would be deleted can be read before anything is:

- :func:`plan_retention` looks at the disk and the registry and returns a
  :class:`RetentionPlan`: every item it would delete with the reason and the
  size, and every item it keeps with the reason. It changes nothing.
- :func:`apply_retention` deletes the plan's items (or, in a dry run, only
  counts them) and returns a small JSON-able summary. It checks each item
  again just before deleting it, so an item that changed after planning is
  kept.

The rules (DESIGN.md: products are registered, published copies live in the
products directory):

staging (``scope="staging"``)
    A staging file is deleted only when a registry row of a *published*
    product, whose staging file is in the same directory, has a published
    copy of it (same name, in the product's published directory inside the
    products directory, a regular file and identical). So staging is never
    the only copy. It is kept when it is an unpublished product's path, when
    its product's published copy is missing, when nothing published it, or
    when it changed less than ``staging_days`` ago. Calibration tables are
    never touched (they are the registry's calibration record).
MeasurementSets (``scope="ms"``)
    An MS in the staging MS directory is deleted when it is older than
    ``ms_days`` (its newest file) and its group's image went into a published
    mosaic whose copy exists in the products directory. Every other MS is
    kept: its data are in no published product yet.
logs (``scope="logs"``)
    Log files (``*.log``, ``*.log.*``) under the logs directory older than
    ``logs_days`` are deleted, and directories left empty by that are removed.

Nothing under the incoming (raw data) or products directories is ever
touched, symbolic links are never followed or deleted, and a logs directory
that overlaps a data directory (or is AIRFLOW_HOME itself) is refused. Applying a plan twice is safe: an
item already gone is counted as such.
"""
from __future__ import annotations

import filecmp
import logging
import os
import re
import shutil
import stat
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from .errors import ContimgError

if TYPE_CHECKING:
    from .config import PipelineConfig
    from .registry import Registry

log = logging.getLogger(__name__)

SCOPES = ("staging", "ms", "logs")
DAY_S = 86400.0

# Why an item is deleted.
DELETE_PUBLISHED = "published copy verified"
DELETE_MS = "intermediate MeasurementSet of a published product"
DELETE_LOG = "log older than retention"
DELETE_TRASH = "left by an interrupted deletion"
# Why an item is kept.
KEEP_UNPUBLISHED = "unpublished product"
KEEP_REGISTERED = "a published product's registered copy"
KEEP_ONLY_COPY = "published copy missing: staging is the only copy"
KEEP_NO_COPY = "no verified published copy"
KEEP_TOO_NEW = "newer than retention"
KEEP_MS_UNPUBLISHED = "MeasurementSet in no published product"
KEEP_CALTABLES = "calibration tables"
KEEP_SYMLINK = "symbolic link"
KEEP_CHANGED = "changed since planning"
KEEP_NOT_LOG = "not a log file"

_TRASH = re.compile(r"^\..+\.housekeeping-delete-\d+$")  # a directory renamed for deletion
_LOG_NAME = re.compile(r"\.log(\.|$)")  # x.log, and rotated or compressed x.log.1, x.log.gz
_EXAMPLES = 10  # paths listed per reason in the summary


class HousekeepingError(ContimgError):
    """Housekeeping refused a configuration, or some deletions failed."""


@dataclass(frozen=True)
class RetentionPolicy:
    """How long (days since an item last changed) each kind of item is kept at least."""

    staging_days: float = 7.0
    ms_days: float = 3.0
    logs_days: float = 30.0

    def __post_init__(self) -> None:
        for name in ("staging_days", "ms_days", "logs_days"):
            value = float(getattr(self, name))
            if not value > 0:
                raise ValueError(f"retention {name} must be positive, not {value}")
            object.__setattr__(self, name, value)

    @classmethod
    def from_config(cls, cfg: "PipelineConfig") -> "RetentionPolicy":
        return cls(staging_days=cfg.retention_staging_days, ms_days=cfg.retention_ms_days,
                   logs_days=cfg.retention_logs_days)

    def days(self, scope: str) -> float:
        return {"staging": self.staging_days, "ms": self.ms_days, "logs": self.logs_days}[scope]


@dataclass(frozen=True)
class RetentionPaths:
    """The directories housekeeping looks at (staging, logs) and must never touch (incoming, products)."""

    staging_dir: Path
    products_dir: Path
    incoming_dir: Path
    logs_dir: Path | None = None
    ms_dir: Path | None = None  # default: staging_dir/ms
    caltables_dir: Path | None = None  # default: staging_dir/caltables

    def __post_init__(self) -> None:
        for name in ("staging_dir", "products_dir", "incoming_dir", "logs_dir", "ms_dir", "caltables_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _abs(value))
        if self.ms_dir is None:
            object.__setattr__(self, "ms_dir", self.staging_dir / "ms")
        if self.caltables_dir is None:
            object.__setattr__(self, "caltables_dir", self.staging_dir / "caltables")

    @classmethod
    def from_config(cls, cfg: "PipelineConfig", logs_dir: str | Path | None = None) -> "RetentionPaths":
        """The config's directories; ``logs_dir`` (e.g. Airflow's base_log_folder) when the config names none."""
        logs = cfg.logs_dir or logs_dir or default_logs_dir()
        return cls(staging_dir=cfg.staging_dir, products_dir=cfg.products_dir, incoming_dir=cfg.incoming_dir,
                   logs_dir=Path(logs) if logs else None, ms_dir=cfg.ms_dir, caltables_dir=cfg.caltables_dir)

    def check(self, scopes: Iterable[str]) -> None:
        """Refuse layouts in which a deletion could reach raw data, products or another area."""
        keep_out = {"incoming": self.incoming_dir, "products": self.products_dir}
        for scope, area in (("staging", self.staging_dir), ("ms", self.ms_dir)):
            for name, d in keep_out.items():
                if scope in scopes and _within(area, d):
                    raise HousekeepingError(area, f"{scope} directory is inside the {name} directory {d}")
        if "logs" in scopes and self.logs_dir is not None:
            areas = {**keep_out, "staging": self.staging_dir, "MeasurementSet": self.ms_dir}
            for name, d in areas.items():
                if _within(self.logs_dir, d) or _within(d, self.logs_dir):
                    raise HousekeepingError(self.logs_dir, f"logs directory overlaps the {name} directory {d}; "
                                            "old files there would be deleted as logs")
            if (self.logs_dir / "airflow.cfg").exists():
                raise HousekeepingError(self.logs_dir, "logs directory holds airflow.cfg: it is AIRFLOW_HOME, "
                                        "not its logs folder")


def default_logs_dir(env: dict[str, str] | None = None) -> Path | None:
    """Airflow's task-log folder from its environment, when set ([logging] base_log_folder, else AIRFLOW_HOME/logs)."""
    env = os.environ if env is None else env
    if env.get("AIRFLOW__LOGGING__BASE_LOG_FOLDER"):
        return Path(env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"])
    if env.get("AIRFLOW_HOME"):
        return Path(env["AIRFLOW_HOME"]) / "logs"
    return None


@dataclass(frozen=True)
class Item:
    """One file or directory the plan deletes or keeps, and why.

    ``copies`` are the published files whose existence justified a deletion;
    apply checks them again before deleting."""

    path: str
    scope: str
    reason: str
    size_bytes: int
    mtime: float  # newest modification time in the item (epoch seconds)
    detail: str = ""
    copies: tuple[str, ...] = ()
    is_dir: bool = False


@dataclass(frozen=True)
class RetentionPlan:
    """What housekeeping would delete and what it keeps; nothing is changed by making one."""

    now: datetime
    policy: RetentionPolicy
    paths: RetentionPaths
    scopes: tuple[str, ...]
    delete: tuple[Item, ...]
    keep: tuple[Item, ...]
    notes: tuple[str, ...] = ()

    def cutoff(self, scope: str) -> float:
        """Items that changed after this time (epoch seconds) are too new to delete."""
        return self.now.timestamp() - self.policy.days(scope) * DAY_S

    @property
    def bytes_to_free(self) -> int:
        return sum(i.size_bytes for i in self.delete)

    def summary(self) -> dict:
        """Counts and bytes per scope and per reason, with a few example paths."""
        return {"scopes": list(self.scopes), "delete": _by_reason(self.delete), "keep": _by_reason(self.keep),
                "n_delete": len(self.delete), "bytes_to_free": self.bytes_to_free, "n_keep": len(self.keep),
                "notes": list(self.notes)}


# -- planning --------------------------------------------------------------------
def plan_retention(where: "RetentionPaths | PipelineConfig", registry: "Registry | None",
                   now: datetime | None = None, policy: RetentionPolicy | None = None,
                   scopes: Iterable[str] = SCOPES) -> RetentionPlan:
    """Decide what housekeeping deletes under ``where`` at time ``now``; change nothing.

    ``where`` is a RetentionPaths or a PipelineConfig (whose retention_*
    fields give the policy when ``policy`` is None). ``registry`` is needed
    for the staging and MS scopes: without it nothing there is deleted."""
    scopes = tuple(scopes)
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise ValueError(f"unknown housekeeping scopes {bad}; use some of {SCOPES}")
    if isinstance(where, RetentionPaths):
        paths = where
        policy = policy or RetentionPolicy()
    else:
        paths = RetentionPaths.from_config(where)
        policy = policy or RetentionPolicy.from_config(where)
    paths.check(scopes)
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    plan = _Planner(paths, policy, now, registry)
    if "staging" in scopes or "ms" in scopes:
        plan.staging("staging" in scopes, "ms" in scopes)
    if "logs" in scopes:
        plan.logs()
    return RetentionPlan(now=now, policy=policy, paths=paths, scopes=scopes, delete=tuple(plan.delete),
                         keep=tuple(plan.keep), notes=tuple(plan.notes))


@dataclass
class _RegistryView:
    """What the registry says about files in staging, resolved to absolute paths."""

    protected: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (reason, detail)
    protected_inodes: dict[tuple[int, int], tuple[str, str]] = field(default_factory=dict)
    published_dirs: dict[str, list[str]] = field(default_factory=dict)  # staging dir -> published dirs
    ms_published_in: dict[str, list[str]] = field(default_factory=dict)  # MS path -> published mosaic copies

    @classmethod
    def load(cls, reg: "Registry | None", products_dir: Path) -> "_RegistryView":
        view = cls()
        if reg is None:
            return view
        products = reg.products()
        published: dict[int, str] = {}  # product id -> its verified published copy
        for p in products:
            copy = _verified_copy(p, products_dir)
            what = f"{p['kind']} {p['name']} ({p['status']})"
            if copy is None:
                view._protect(p["path"], KEEP_ONLY_COPY if p["status"] == "published" else KEEP_UNPUBLISHED, what)
            if p["published_path"]:
                view._protect(p["published_path"], KEEP_REGISTERED, what)
            if copy is None:
                continue
            published[p["id"]] = copy
            view.published_dirs.setdefault(str(_abs(p["path"]).parent), []).append(str(Path(copy).parent))
        image_of_group = {p["group_id"]: p["id"] for p in products if p["kind"] == "image" and p["group_id"]}
        mosaics_of_image: dict[int, list[str]] = defaultdict(list)
        for p in products:
            if p["kind"] == "mosaic" and p["id"] in published:
                for image_id in (p["provenance"] or {}).get("images", []):
                    mosaics_of_image[int(image_id)].append(published[p["id"]])
        for g in reg.groups_between(-1e9, 1e9):  # every group
            image_id = image_of_group.get(g["group_id"])
            if g["ms_path"] and image_id in mosaics_of_image:
                view.ms_published_in[str(_abs(g["ms_path"]))] = mosaics_of_image[image_id]
        return view

    def _protect(self, path: str, reason: str, detail: str) -> None:
        p = _abs(path)
        self.protected.setdefault(str(p), (reason, detail))
        try:
            st = p.stat()
        except OSError:
            return
        self.protected_inodes.setdefault((st.st_dev, st.st_ino), (reason, detail))

    def protection(self, path: Path, st: os.stat_result) -> tuple[str, str] | None:
        """(reason, detail) when the registry names this file as a product that must stay."""
        return self.protected.get(str(path)) or self.protected_inodes.get((st.st_dev, st.st_ino))


class _Planner:
    def __init__(self, paths: RetentionPaths, policy: RetentionPolicy, now: datetime, reg: "Registry | None"):
        self.paths, self.policy, self.now, self.reg = paths, policy, now, reg
        self.delete: list[Item] = []
        self.keep: list[Item] = []
        self.notes: list[str] = []

    def cutoff(self, scope: str) -> float:
        return self.now.timestamp() - self.policy.days(scope) * DAY_S

    def _item(self, path: Path, scope: str, reason: str, *, delete: bool, detail: str = "",
              copies: tuple[str, ...] = (), stats: tuple[int, float, bool] | None = None) -> None:
        size, mtime, is_dir = stats or _stats(path)
        item = Item(str(path), scope, reason, size, mtime, detail, copies, is_dir)
        (self.delete if delete else self.keep).append(item)

    # -- staging and MeasurementSets --------------------------------------------
    def staging(self, files: bool, ms: bool) -> None:
        if self.reg is None:
            self.notes.append("no registry: nothing in staging can be shown to be published")
        view = _RegistryView.load(self.reg, self.paths.products_dir)
        if files:
            self._staging_files(view)
        if ms:
            self._measurement_sets(view)

    def _staging_files(self, view: _RegistryView) -> None:
        p = self.paths
        if not p.staging_dir.is_dir():
            self.notes.append(f"staging directory {p.staging_dir} does not exist")
            return
        untouched = (p.ms_dir, p.caltables_dir, p.incoming_dir, p.products_dir)  # judged apart, or never
        for d in (p.incoming_dir, p.products_dir):
            if _within(d, p.staging_dir):
                self.notes.append(f"{d} is inside staging and is not touched")
        for path, st in _walk(p.staging_dir, prune=lambda d: d in untouched):
            if not stat.S_ISDIR(st.st_mode):
                self._judge_file(path, st, view)
        for path, _ in _walk(p.caltables_dir, prune=lambda d: True):
            self._item(path, "staging", KEEP_CALTABLES, delete=False)

    def _measurement_sets(self, view: _RegistryView) -> None:
        if not self.paths.ms_dir.is_dir():
            self.notes.append(f"MeasurementSet directory {self.paths.ms_dir} does not exist")
            return
        for path, st in _walk(self.paths.ms_dir, prune=lambda d: True):
            self._judge_ms(path, st, view)

    def _judge_file(self, path: Path, st: os.stat_result, view: _RegistryView) -> None:
        if stat.S_ISLNK(st.st_mode):
            self._item(path, "staging", KEEP_SYMLINK, delete=False)
            return
        protected = view.protection(path, st)
        if protected:
            self._item(path, "staging", protected[0], delete=False, detail=protected[1])
            return
        copy = _published_copy(path, st, view.published_dirs.get(str(path.parent), []), self.paths.products_dir)
        if copy is None:
            self._item(path, "staging", KEEP_NO_COPY, delete=False)
        elif st.st_mtime > self.cutoff("staging"):
            self._item(path, "staging", KEEP_TOO_NEW, delete=False,
                       detail=f"changed less than {self.policy.staging_days:g} days ago")
        else:
            self._item(path, "staging", DELETE_PUBLISHED, delete=True, detail=f"published as {copy}",
                       copies=(copy,))

    def _judge_ms(self, path: Path, st: os.stat_result, view: _RegistryView) -> None:
        if stat.S_ISLNK(st.st_mode):
            self._item(path, "ms", KEEP_SYMLINK, delete=False)
            return
        stats = _stats(path)
        if _TRASH.match(path.name):
            self._item(path, "ms", DELETE_TRASH, delete=True, stats=stats)
            return
        protected = view.protection(path, st)
        mosaics = view.ms_published_in.get(str(path))
        if protected:
            self._item(path, "ms", protected[0], delete=False, detail=protected[1], stats=stats)
        elif not mosaics:
            self._item(path, "ms", KEEP_MS_UNPUBLISHED, delete=False, stats=stats)
        elif stats[1] > self.cutoff("ms"):
            self._item(path, "ms", KEEP_TOO_NEW, delete=False, stats=stats,
                       detail=f"changed less than {self.policy.ms_days:g} days ago")
        else:
            self._item(path, "ms", DELETE_MS, delete=True, stats=stats, copies=tuple(mosaics),
                       detail=f"its image is in {', '.join(mosaics)}")

    # -- logs -------------------------------------------------------------------
    def logs(self) -> None:
        root = self.paths.logs_dir
        if root is None or not root.is_dir():
            self.notes.append(f"logs directory {root} does not exist" if root else "no logs directory configured")
            return
        cutoff = self.cutoff("logs")
        for path, st in _walk(root):
            if stat.S_ISDIR(st.st_mode):
                continue
            stats = (st.st_size, st.st_mtime, False)
            if stat.S_ISLNK(st.st_mode):
                self._item(path, "logs", KEEP_SYMLINK, delete=False, stats=stats)
            elif not _LOG_NAME.search(path.name):
                self._item(path, "logs", KEEP_NOT_LOG, delete=False, stats=stats)
            elif st.st_mtime > cutoff:
                self._item(path, "logs", KEEP_TOO_NEW, delete=False, stats=stats)
            else:
                self._item(path, "logs", DELETE_LOG, delete=True, stats=stats,
                           detail=f"unchanged for more than {self.policy.logs_days:g} days")


def _verified_copy(product: dict, products_dir: Path) -> str | None:
    """The product's published file when the registry says published and it really is
    in the products directory as a regular file; otherwise None."""
    if product["status"] != "published" or not product["published_path"]:
        return None
    copy = _abs(product["published_path"])
    if not _within(copy, products_dir):
        return None
    try:
        st = copy.lstat()
    except OSError:
        return None
    return str(copy) if stat.S_ISREG(st.st_mode) else None


def _published_copy(path: Path, st: os.stat_result, published_dirs: list[str], products_dir: Path) -> str | None:
    """A regular file of the same name and content in one of ``published_dirs`` (not ``path`` itself)."""
    for d in published_dirs:
        copy = Path(d) / path.name
        try:
            cst = copy.lstat()
        except OSError:
            continue
        if not stat.S_ISREG(cst.st_mode) or not _within(copy, products_dir):
            continue
        if (cst.st_dev, cst.st_ino) == (st.st_dev, st.st_ino):
            continue  # the same file under another name is not a second copy
        if cst.st_size == st.st_size and filecmp.cmp(path, copy, shallow=True):
            return str(copy)
    return None


# -- applying --------------------------------------------------------------------
def apply_retention(plan: RetentionPlan, dry_run: bool) -> dict:
    """Delete the plan's items (none when ``dry_run``); return what was done, in numbers.

    Each item is checked again first: it must still be there as planned, not
    have changed after the retention cutoff, and its published copies must
    still exist; otherwise it is kept ("changed since planning")."""
    deleted: list[Item] = []
    gone: list[Item] = []
    changed: list[Item] = []
    errors: list[dict[str, str]] = []
    dirs_removed = 0
    for item in plan.delete:
        if dry_run:
            continue
        problem = _recheck(item, plan)
        if problem == "gone":
            gone.append(item)
            continue
        if problem:
            log.warning("housekeeping: keeping %s: %s", item.path, problem)
            changed.append(Item(item.path, item.scope, KEEP_CHANGED, item.size_bytes, item.mtime, problem))
            continue
        try:
            _remove(Path(item.path), item.is_dir)
        except OSError as exc:
            errors.append({"path": item.path, "error": str(exc)})
            continue
        deleted.append(item)
        (log.debug if item.scope == "logs" else log.info)(
            "housekeeping: deleted %s (%s, %d bytes)", item.path, item.reason, item.size_bytes)
        if item.scope == "logs" and plan.paths.logs_dir is not None:
            dirs_removed += _remove_empty_parents(Path(item.path).parent, plan.paths.logs_dir)
    kept = list(plan.keep) + changed
    result = {
        "dry_run": bool(dry_run),
        "now": plan.now.isoformat(),
        "scopes": list(plan.scopes),
        "retention_days": {s: plan.policy.days(s) for s in plan.scopes},
        "candidates": len(plan.delete),
        "candidate_bytes": plan.bytes_to_free,
        "would_delete": _by_reason(plan.delete) if dry_run else {},
        "deleted": len(deleted),
        "bytes_freed": sum(i.size_bytes for i in deleted),
        "deleted_by_scope": _count_by_scope(deleted),
        "deleted_why": _by_reason(deleted),
        "already_gone": len(gone),
        "dirs_removed": dirs_removed,
        "kept": len(kept),
        "kept_bytes": sum(i.size_bytes for i in kept),
        "kept_why": _by_reason(kept),
        "notes": list(plan.notes),
        "errors": errors,
    }
    _log_result(result)
    return result


def _recheck(item: Item, plan: RetentionPlan) -> str | None:
    """None when the item may still be deleted; "gone", or the reason it must now stay."""
    path = Path(item.path)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return "gone"
    if stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode) != item.is_dir:
        return "its type changed"
    if item.reason != DELETE_TRASH:
        newest = _stats(path)[1] if item.is_dir else st.st_mtime
        if newest > plan.cutoff(item.scope):
            return f"modified at {datetime.fromtimestamp(newest, timezone.utc).isoformat()}, after the cutoff"
    for copy in item.copies:
        try:
            cst = Path(copy).lstat()
        except OSError:
            return f"its published copy {copy} is gone"
        if not stat.S_ISREG(cst.st_mode):
            return f"its published copy {copy} is not a regular file"
        if item.scope == "staging" and not filecmp.cmp(path, copy, shallow=True):
            return f"it no longer matches its published copy {copy}"
    return None


def _remove(path: Path, is_dir: bool) -> None:
    """Delete a file, or a directory by first renaming it out of the way (a half-deleted
    MeasurementSet never keeps its real name; a later run finishes the job)."""
    if not is_dir:
        path.unlink(missing_ok=True)
        return
    target = path
    if not _TRASH.match(path.name):
        target = path.with_name(f".{path.name}.housekeeping-delete-{os.getpid()}")
        os.replace(path, target)
    shutil.rmtree(target)


def _remove_empty_parents(d: Path, root: Path) -> int:
    """Remove ``d`` and its parents up to (not including) ``root`` while they are empty."""
    n = 0
    while d != root and _within(d, root):
        try:
            d.rmdir()
        except OSError:  # not empty, or already gone
            break
        n += 1
        d = d.parent
    return n


def _log_result(r: dict) -> None:
    verb = "would delete" if r["dry_run"] else "deleted"
    n = r["candidates"] if r["dry_run"] else r["deleted"]
    size = r["candidate_bytes"] if r["dry_run"] else r["bytes_freed"]
    log.info("housekeeping%s: %s %d items (%.3f GB) in %s; kept %d (%.3f GB); %d already gone, %d errors",
             " (dry run)" if r["dry_run"] else "", verb, n, size / 1e9, "+".join(r["scopes"]), r["kept"],
             r["kept_bytes"] / 1e9, r["already_gone"], len(r["errors"]))
    for reason, v in (r["would_delete"] if r["dry_run"] else r["deleted_why"]).items():
        log.info("  %s (%s): %d items, %d bytes, e.g. %s", verb, reason, v["count"], v["bytes"], v["examples"])
    for reason, v in r["kept_why"].items():
        log.info("  kept (%s): %d items, %d bytes, e.g. %s", reason, v["count"], v["bytes"], v["examples"])
    for note in r["notes"]:
        log.info("  note: %s", note)
    for e in r["errors"]:
        log.error("  could not delete %s: %s", e["path"], e["error"])


# -- one call for the operator and the command line -------------------------------
def run_housekeeping(cfg: "PipelineConfig", registry: "Registry | None", *, dry_run: bool | None = None,
                     scopes: Iterable[str] = SCOPES, logs_dir: str | Path | None = None,
                     now: datetime | None = None) -> dict:
    """Plan and apply retention for a deployment; ``dry_run`` None takes the config's.

    ``logs_dir`` is used when the config names none (the operator passes
    Airflow's base_log_folder). Raises HousekeepingError after a run in which
    some deletions failed, naming them."""
    dry_run = cfg.housekeeping_dry_run if dry_run is None else bool(dry_run)
    plan = plan_retention(RetentionPaths.from_config(cfg, logs_dir=logs_dir), registry, now,
                          RetentionPolicy.from_config(cfg), scopes)
    result = apply_retention(plan, dry_run=dry_run)
    if result["errors"]:
        first = result["errors"][0]
        raise HousekeepingError(first["path"], f"{len(result['errors'])} deletion(s) failed, the first: "
                                f"{first['error']}")
    return result


# -- helpers ---------------------------------------------------------------------------
def _abs(p: str | Path) -> Path:
    """Absolute, normalised, symlinks resolved (relative paths are taken from the working directory)."""
    return Path(os.path.realpath(os.path.expanduser(str(p))))


def _within(path: Path, root: Path | None) -> bool:
    if root is None:
        return False
    return path == root or root in path.parents


def _walk(root: Path, prune=None) -> Iterator[tuple[Path, os.stat_result]]:
    """Every entry under ``root`` (not root itself) with its lstat, in name order, parents first.

    Symbolic links are reported, never followed; ``prune(dir)`` True stops descent into ``dir``."""
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for e in entries:
        try:
            st = e.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        path = Path(e.path)
        yield path, st
        if stat.S_ISDIR(st.st_mode) and not (prune and prune(path)):
            yield from _walk(path, prune)


def _stats(path: Path) -> tuple[int, float, bool]:
    """(bytes, newest mtime, is a directory) of a file or a whole directory tree, without following links."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return 0, 0.0, False
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size, st.st_mtime, False
    size, newest = 0, st.st_mtime
    for _, s in _walk(path):
        newest = max(newest, s.st_mtime)
        if not stat.S_ISDIR(s.st_mode):
            size += s.st_size
    return size, newest, True


def _by_reason(items: Iterable[Item]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i in items:
        r = out.setdefault(i.reason, {"count": 0, "bytes": 0, "examples": []})
        r["count"] += 1
        r["bytes"] += i.size_bytes
        if len(r["examples"]) < _EXAMPLES:
            r["examples"].append(i.path)
    return out


def _count_by_scope(items: Iterable[Item]) -> dict[str, int]:
    return dict(Counter(i.scope for i in items))
