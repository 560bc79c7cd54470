"""housekeeping: the retention rules, on a temporary data tree and a real SQLite registry.

The products are registered and published with the project's own registry and
publish code, so the tests see exactly the rows and files the pipeline leaves.
Ages are set with os.utime relative to the ``now`` handed to the planner, so
no test depends on the wall clock."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dsa110_contimg import housekeeping as hk
from dsa110_contimg.config import PipelineConfig
from dsa110_contimg.publish import publish_products
from dsa110_contimg.registry import Registry

NOW = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
POLICY = hk.RetentionPolicy(staging_days=7, ms_days=3, logs_days=30)
OLD = 20.0  # days: older than every retention above but logs'
NEW = 1.0  # days: newer than every retention


def _age(path: Path, days: float) -> None:
    """Set the modification time of ``path`` (and everything below it) to ``days`` before NOW."""
    t = NOW.timestamp() - days * 86400
    if path.is_dir():
        for sub in sorted(path.rglob("*"), reverse=True):
            os.utime(sub, (t, t), follow_symlinks=False)
    os.utime(path, (t, t), follow_symlinks=False)


def _write(path: Path, data: bytes, days: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    _age(path, days)
    return path


@dataclass
class Site:
    cfg: PipelineConfig
    reg: Registry
    logs: Path

    @property
    def paths(self) -> hk.RetentionPaths:
        return hk.RetentionPaths.from_config(self.cfg, logs_dir=self.logs)

    def plan(self, scopes=hk.SCOPES, policy=POLICY) -> hk.RetentionPlan:
        return hk.plan_retention(self.paths, self.reg, NOW, policy, scopes)

    # -- what the pipeline leaves behind ---------------------------------------------
    def group(self, gid: str, days: float = OLD) -> dict:
        """A converted and imaged group: its MS (a directory tree) and its image files, registered."""
        ms = self.cfg.ms_dir / f"{gid}.ms"
        for rel in ("table.dat", "table.f1", "ANTENNA/table.dat", "SPECTRAL_WINDOW/table.f0"):
            _write(ms / rel, b"m" * 1000, days)
        _age(ms, days)
        img = self.cfg.images_dir / gid
        pbcor = _write(img / f"{gid}.pbcor.fits", b"pbcor" * 100, days)
        _write(img / f"{gid}.pb.fits", b"pb" * 100, days)
        _write(img / f"{gid}.image.fits", b"image" * 100, days)
        self.reg.record_group(gid, 61000.0 + len(self.reg.known_groups()) * 0.01, [f"/incoming/{gid}_sb00.hdf5"])
        self.reg.update_group(gid, status="imaged", ms_path=str(ms))
        pid = self.reg.register_product("image", gid, str(pbcor), group_id=gid, qa_status="good")
        return {"ms": ms, "pbcor": pbcor, "image_id": pid}

    def window(self, name: str, image_ids: list[int], *, days: float = OLD, publish: bool = True) -> dict:
        """A window's mosaic, its weight map and catalogue in staging; optionally published."""
        staging = self.cfg.mosaics_dir
        files = [_write(staging / f"{name}.mosaic.fits", b"M" * 5000, days),
                 _write(staging / f"{name}.sources.csv", b"ra,dec\n1,2\n", days),
                 _write(staging / f"{name}.weight.fits", b"W" * 3000, days)]
        mid = self.reg.register_product("mosaic", name, str(files[0]), window=name, qa_status="good",
                                        provenance={"images": image_ids})
        cid = self.reg.register_product("catalog", name, str(files[1]), window=name, qa_status="good")
        out = {"staged": files, "mosaic_id": mid, "catalog_id": cid, "published": []}
        if publish:
            published = publish_products(files, self.cfg.products_dir / name)
            self.reg.mark_published(mid, str(published[0]))
            self.reg.mark_published(cid, str(published[1]))
            for f in files:  # publishing copies with the staged mtime; age the staged side again
                _age(f, days)
            out["published"] = published
        return out


@pytest.fixture
def site(tmp_path):
    cfg = PipelineConfig(data_dir=tmp_path / "data")
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    reg.migrate()
    (tmp_path / "logs").mkdir()
    yield Site(cfg, reg, tmp_path / "logs")
    reg.engine.dispose()


def _reasons(items) -> dict[str, str]:
    return {Path(i.path).name: i.reason for i in items}


# -- staging ------------------------------------------------------------------------------
def test_published_staging_copies_are_deleted_and_products_stay(site):
    g = site.group("g1")
    w = site.window("2026-01-15T0800", [g["image_id"]])
    plan = site.plan(scopes=("staging",))
    assert {p.name for p in w["staged"]} == {Path(i.path).name for i in plan.delete}
    assert {i.reason for i in plan.delete} == {hk.DELETE_PUBLISHED}
    assert plan.bytes_to_free == sum(p.stat().st_size for p in w["staged"])
    result = hk.apply_retention(plan, dry_run=False)
    assert result["deleted"] == 3 and result["bytes_freed"] == plan.bytes_to_free
    assert not any(p.exists() for p in w["staged"])
    published = site.cfg.products_dir / "2026-01-15T0800"
    assert sorted(p.name for p in published.iterdir()) == sorted(p.name for p in w["staged"])
    assert (published / "2026-01-15T0800.mosaic.fits").read_bytes() == b"M" * 5000
    assert result["errors"] == []


def test_unpublished_products_are_kept(site):
    g = site.group("g1")
    w = site.window("2026-01-15T0900", [g["image_id"]], publish=False)  # mosaicked, never published
    plan = site.plan(scopes=("staging",))
    assert plan.delete == ()
    kept = _reasons(plan.keep)
    assert kept["2026-01-15T0900.mosaic.fits"] == hk.KEEP_UNPUBLISHED  # a staged row's path
    assert kept["2026-01-15T0900.sources.csv"] == hk.KEEP_UNPUBLISHED
    assert kept["2026-01-15T0900.weight.fits"] == hk.KEEP_NO_COPY  # nothing published it
    assert kept["g1.pbcor.fits"] == hk.KEEP_UNPUBLISHED  # images are never published themselves
    assert kept["g1.pb.fits"] == hk.KEEP_NO_COPY
    hk.apply_retention(plan, dry_run=False)
    assert all(p.exists() for p in w["staged"]) and g["pbcor"].exists()


def test_staging_that_is_the_only_copy_is_kept(site):
    g = site.group("g1")
    w = site.window("2026-01-15T1000", [g["image_id"]])
    for p in w["published"]:  # the products area lost the window (a disk was swapped, say)
        p.unlink()
    plan = site.plan(scopes=("staging",))
    assert plan.delete == ()
    kept = _reasons(plan.keep)
    assert kept["2026-01-15T1000.mosaic.fits"] == hk.KEEP_ONLY_COPY
    assert kept["2026-01-15T1000.sources.csv"] == hk.KEEP_ONLY_COPY
    assert kept["2026-01-15T1000.weight.fits"] == hk.KEEP_NO_COPY


def test_a_published_copy_that_differs_or_is_a_link_is_no_copy(site):
    g = site.group("g1")
    w = site.window("2026-01-15T1100", [g["image_id"]])
    weight = site.cfg.products_dir / "2026-01-15T1100" / "2026-01-15T1100.weight.fits"
    weight.write_bytes(b"X" * 3000)  # same size, other content
    catalog = site.cfg.products_dir / "2026-01-15T1100" / "2026-01-15T1100.sources.csv"
    catalog.unlink()
    catalog.symlink_to(w["staged"][1])  # a "copy" that is the staging file itself
    plan = site.plan(scopes=("staging",))
    assert _reasons(plan.delete) == {"2026-01-15T1100.mosaic.fits": hk.DELETE_PUBLISHED}
    kept = _reasons(plan.keep)
    assert kept["2026-01-15T1100.weight.fits"] == hk.KEEP_NO_COPY
    assert kept["2026-01-15T1100.sources.csv"] == hk.KEEP_ONLY_COPY  # the registry's copy is not a file


def test_a_published_path_outside_the_products_directory_does_not_count(site):
    g = site.group("g1")
    w = site.window("2026-01-15T1200", [g["image_id"]], publish=False)
    elsewhere = publish_products(w["staged"], site.cfg.data_dir / "elsewhere")
    site.reg.mark_published(w["mosaic_id"], str(elsewhere[0]))
    for f in w["staged"]:
        _age(f, OLD)
    plan = site.plan(scopes=("staging",))
    assert plan.delete == ()
    assert _reasons(plan.keep)["2026-01-15T1200.mosaic.fits"] == hk.KEEP_ONLY_COPY


def test_items_newer_than_retention_are_kept(site):
    g = site.group("g1", days=NEW)
    w = site.window("2026-01-15T1300", [g["image_id"]], days=NEW)
    plan = site.plan(scopes=("staging", "ms"))
    assert plan.delete == ()
    kept = _reasons(plan.keep)
    assert {kept[p.name] for p in w["staged"]} == {hk.KEEP_TOO_NEW}
    assert kept["g1.ms"] == hk.KEEP_TOO_NEW
    # 5 days old: past the MS retention (3 d), still inside the staging retention (7 d)
    _age(g["ms"], 5)
    for f in w["staged"]:
        _age(f, 5)
    plan = site.plan(scopes=("staging", "ms"))
    assert _reasons(plan.delete) == {"g1.ms": hk.DELETE_MS}
    assert {_reasons(plan.keep)[p.name] for p in w["staged"]} == {hk.KEEP_TOO_NEW}


def test_one_new_file_inside_an_old_measurement_set_keeps_it(site):
    g = site.group("g1")
    site.window("2026-01-15T1400", [g["image_id"]])
    _age(g["ms"] / "ANTENNA" / "table.dat", NEW)  # e.g. CASA touched it yesterday
    plan = site.plan(scopes=("ms",))
    assert _reasons(plan.keep)["g1.ms"] == hk.KEEP_TOO_NEW


def test_caltables_and_unregistered_files_are_never_deleted(site):
    tables = site.cfg.caltables_dir / "0834+555_g1"
    _write(tables / "0834+555_g1.B" / "table.dat", b"B" * 100, OLD)
    _write(tables / "0834+555_g1.B.png", b"png", OLD)
    _age(tables, OLD)
    stray = _write(site.cfg.staging_dir / "notes" / "operator.txt", b"keep me", OLD)
    plan = site.plan()
    assert plan.delete == ()
    kept = _reasons(plan.keep)
    assert kept["0834+555_g1"] == hk.KEEP_CALTABLES and kept["operator.txt"] == hk.KEEP_NO_COPY
    hk.apply_retention(plan, dry_run=False)
    assert (tables / "0834+555_g1.B" / "table.dat").exists() and stray.exists()


def test_incoming_and_products_inside_staging_are_never_touched(tmp_path):
    cfg = PipelineConfig(data_dir=tmp_path, staging_dir=tmp_path, incoming_dir=tmp_path / "incoming",
                         products_dir=tmp_path / "products")
    raw = _write(cfg.incoming_dir / "2026-01-15T08:00:00_sb00.hdf5", b"raw", OLD)
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    reg.migrate()
    plan = hk.plan_retention(hk.RetentionPaths.from_config(cfg, logs_dir=tmp_path / "nologs"), reg, NOW, POLICY,
                             ("staging", "ms"))
    assert str(raw) not in {i.path for i in plan.delete + plan.keep}
    assert any("inside staging and is not touched" in n for n in plan.notes)
    hk.apply_retention(plan, dry_run=False)
    assert raw.read_bytes() == b"raw"
    reg.engine.dispose()


def test_layouts_that_would_reach_data_are_refused(tmp_path):
    cfg = PipelineConfig(data_dir=tmp_path, staging_dir=tmp_path / "incoming" / "staging")
    with pytest.raises(hk.HousekeepingError, match="inside the incoming directory"):
        hk.plan_retention(cfg, None, NOW, POLICY, ("staging",))
    cfg = PipelineConfig(data_dir=tmp_path)
    with pytest.raises(hk.HousekeepingError, match="logs directory overlaps the products directory"):
        hk.plan_retention(hk.RetentionPaths.from_config(cfg, logs_dir=tmp_path / "products" / "logs"), None, NOW,
                          POLICY, ("logs",))
    with pytest.raises(hk.HousekeepingError, match="overlaps the staging directory"):
        hk.plan_retention(hk.RetentionPaths.from_config(cfg, logs_dir=cfg.staging_dir / "logs"), None, NOW,
                          POLICY, ("logs",))
    home = tmp_path / "airflow-home"
    _write(home / "airflow.cfg", b"[core]\n", OLD)
    with pytest.raises(hk.HousekeepingError, match="it is AIRFLOW_HOME"):
        hk.plan_retention(hk.RetentionPaths.from_config(cfg, logs_dir=home), None, NOW, POLICY, ("logs",))


def test_without_a_registry_nothing_in_staging_is_deleted(site):
    g = site.group("g1")
    site.window("2026-01-15T1500", [g["image_id"]])
    plan = hk.plan_retention(site.paths, None, NOW, POLICY, ("staging", "ms"))
    assert plan.delete == ()
    assert "no registry" in plan.notes[0]


# -- MeasurementSets -------------------------------------------------------------------------
def test_measurement_sets_go_once_their_data_are_published(site):
    published = site.group("g1")
    unpublished = site.group("g2")  # imaged, but its window was never published
    bad = site.group("g3")  # its image was left out of the mosaic (bad QA)
    orphan = site.cfg.ms_dir / "scratch.ms"
    _write(orphan / "table.dat", b"x", OLD)
    _age(orphan, OLD)
    site.window("2026-01-15T0800", [published["image_id"]])
    site.window("2026-01-15T0900", [unpublished["image_id"]], publish=False)
    plan = site.plan(scopes=("ms",))
    assert _reasons(plan.delete) == {"g1.ms": hk.DELETE_MS}
    assert plan.delete[0].size_bytes == 4000  # the whole tree
    kept = _reasons(plan.keep)
    assert kept["g2.ms"] == kept["g3.ms"] == kept["scratch.ms"] == hk.KEEP_MS_UNPUBLISHED
    result = hk.apply_retention(plan, dry_run=False)
    assert result["deleted"] == 1 and result["bytes_freed"] == 4000
    assert sorted(p.name for p in site.cfg.ms_dir.iterdir()) == ["g2.ms", "g3.ms", "scratch.ms"]
    assert bad["ms"].exists() and published["pbcor"].exists()  # images stay: never published themselves


def test_an_interrupted_deletion_is_finished_by_the_next_run(site):
    g = site.group("g1")
    site.window("2026-01-15T0800", [g["image_id"]])
    trash = site.cfg.ms_dir / ".g1.ms.housekeeping-delete-12345"
    os.replace(g["ms"], trash)  # renamed out of the way, then the process died
    plan = site.plan(scopes=("ms",))
    assert _reasons(plan.delete) == {trash.name: hk.DELETE_TRASH}
    hk.apply_retention(plan, dry_run=False)
    assert list(site.cfg.ms_dir.iterdir()) == []


# -- logs -------------------------------------------------------------------------------------
def test_logs_older_than_retention_are_deleted_and_empty_directories_removed(site):
    old_run = site.logs / "dag_id=group" / "run_id=group__old" / "task_id=convert"
    new_run = site.logs / "dag_id=group" / "run_id=group__new" / "task_id=convert"
    old = _write(old_run / "attempt=1.log", b"o" * 700, 45)
    new = _write(new_run / "attempt=1.log", b"n" * 300, 10)
    rotated = _write(site.logs / "scheduler" / "scheduler.log.1", b"r" * 20, 45)
    other = _write(site.logs / "notes.txt", b"not a log", 45)
    link = site.logs / "scheduler" / "latest"
    link.symlink_to(old_run)
    plan = site.plan(scopes=("logs",))
    assert sorted(i.path for i in plan.delete) == sorted([str(old), str(rotated)])
    kept = {i.path: i.reason for i in plan.keep}
    assert kept == {str(new): hk.KEEP_TOO_NEW, str(link): hk.KEEP_SYMLINK, str(other): hk.KEEP_NOT_LOG}
    result = hk.apply_retention(plan, dry_run=False)
    assert result["deleted"] == 2 and result["bytes_freed"] == 720
    assert result["dirs_removed"] == 2  # task_id= and run_id= (left empty); dag_id= still holds the new run
    assert not (site.logs / "dag_id=group" / "run_id=group__old").exists()
    assert new.exists() and link.is_symlink() and site.logs.is_dir()


# -- dry run, re-checks, idempotence ----------------------------------------------------------------
def test_dry_run_deletes_nothing_but_reports_what_it_would(site):
    g = site.group("g1")
    w = site.window("2026-01-15T0800", [g["image_id"]])
    log_file = _write(site.logs / "dag_id=mosaic" / "a.log", b"l" * 50, 45)
    plan = site.plan()
    before = sorted(p for p in site.cfg.data_dir.rglob("*"))
    result = hk.apply_retention(plan, dry_run=True)
    assert sorted(p for p in site.cfg.data_dir.rglob("*")) == before and log_file.exists()
    assert result["dry_run"] is True and result["deleted"] == 0 and result["bytes_freed"] == 0
    assert result["candidates"] == 5  # 3 staged window files, the MS, the log
    assert result["candidate_bytes"] == sum(p.stat().st_size for p in w["staged"]) + 4000 + 50
    would = result["would_delete"]
    assert {k: v["count"] for k, v in would.items()} == {hk.DELETE_PUBLISHED: 3, hk.DELETE_MS: 1, hk.DELETE_LOG: 1}
    assert str(g["ms"]) in would[hk.DELETE_MS]["examples"]
    assert result["kept_why"][hk.KEEP_UNPUBLISHED]["count"] == 1  # the image
    # the same plan, applied for real, then applied again: the second finds everything gone
    first = hk.apply_retention(plan, dry_run=False)
    assert first["deleted"] == 5 and first["bytes_freed"] == result["candidate_bytes"]
    again = hk.apply_retention(plan, dry_run=False)
    assert again["deleted"] == 0 and again["already_gone"] == 5 and again["errors"] == []
    assert site.plan().delete == ()  # and a fresh plan finds nothing more to do


def test_items_that_change_after_planning_are_kept(site):
    g = site.group("g1")
    w = site.window("2026-01-15T0800", [g["image_id"]])
    plan = site.plan(scopes=("staging", "ms"))
    mosaic, catalog = w["staged"][0], w["staged"][1]
    _write(mosaic, b"M" * 5000, NEW)  # rewritten (a rerun) after planning
    w["published"][1].unlink()  # the catalogue's published copy vanished after planning
    _age(g["ms"] / "table.dat", NEW)
    result = hk.apply_retention(plan, dry_run=False)
    assert result["kept_why"][hk.KEEP_CHANGED]["count"] == 3
    assert mosaic.exists() and catalog.exists() and g["ms"].exists()
    assert result["deleted"] == 1  # the weight map


# -- configuration --------------------------------------------------------------------------
def test_config_keys_defaults_and_environment(tmp_path):
    cfg = PipelineConfig()
    assert (cfg.retention_staging_days, cfg.retention_ms_days, cfg.retention_logs_days) == (7.0, 3.0, 30.0)
    assert cfg.housekeeping_dry_run is False and cfg.logs_dir is None
    env = {"CONTIMG_HOUSEKEEPING_DRY_RUN": "true", "CONTIMG_RETENTION_MS_DAYS": "1.5",
           "CONTIMG_LOGS_DIR": str(tmp_path / "logs")}
    cfg = PipelineConfig.load(env=env)
    assert cfg.housekeeping_dry_run is True and cfg.retention_ms_days == 1.5
    assert cfg.logs_dir == tmp_path / "logs"
    assert hk.RetentionPolicy.from_config(cfg).ms_days == 1.5
    assert hk.RetentionPaths.from_config(cfg, logs_dir="/elsewhere").logs_dir == (tmp_path / "logs").resolve()
    with pytest.raises(ValueError, match="retention_logs_days must be positive"):
        PipelineConfig(retention_logs_days=0)
    assert hk.default_logs_dir({"AIRFLOW_HOME": "/srv/airflow"}) == Path("/srv/airflow/logs")
    assert hk.default_logs_dir({"AIRFLOW_HOME": "/a", "AIRFLOW__LOGGING__BASE_LOG_FOLDER": "/b"}) == Path("/b")


def test_run_housekeeping_takes_dry_run_and_policy_from_config(site):
    g = site.group("g1")
    w = site.window("2026-01-15T0800", [g["image_id"]])
    cfg = site.cfg.with_overrides({"housekeeping_dry_run": True, "logs_dir": str(site.logs)})
    result = hk.run_housekeeping(cfg, site.reg, now=NOW)
    assert result["dry_run"] is True and result["candidates"] == 4 and all(p.exists() for p in w["staged"])
    result = hk.run_housekeeping(cfg, site.reg, dry_run=False, now=NOW + timedelta(days=1))
    assert result["deleted"] == 4 and not any(p.exists() for p in w["staged"])


def test_a_failed_deletion_is_reported_and_fails_the_run(site, monkeypatch):
    g = site.group("g1")
    site.window("2026-01-15T0800", [g["image_id"]])
    real_remove = hk._remove

    def remove(path, is_dir):
        if path.name.endswith(".weight.fits"):
            raise PermissionError(13, "Permission denied", str(path))
        real_remove(path, is_dir)

    monkeypatch.setattr(hk, "_remove", remove)
    cfg = site.cfg.with_overrides({"logs_dir": str(site.logs)})
    with pytest.raises(hk.HousekeepingError, match=r"weight\.fits: 1 deletion\(s\) failed.*Permission denied"):
        hk.run_housekeeping(cfg, site.reg, dry_run=False, now=NOW)
    assert (site.cfg.mosaics_dir / "2026-01-15T0800.weight.fits").exists()
    assert not (site.cfg.mosaics_dir / "2026-01-15T0800.mosaic.fits").exists()  # the others went
