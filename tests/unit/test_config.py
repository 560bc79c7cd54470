"""Configuration: defaults, YAML, environment and per-run overrides, validation."""
from __future__ import annotations

from pathlib import Path

import pytest

from dsa110_contimg.config import PipelineConfig


def test_defaults_derive_paths():
    cfg = PipelineConfig(data_dir=Path("/d"))
    assert cfg.incoming_dir == Path("/d/incoming") and cfg.products_dir == Path("/d/products")
    assert cfg.ms_dir == Path("/d/staging/ms")


def test_yaml_then_env_precedence(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("pointing_dec_deg: 16.3\nimaging_niter: 10\ncatchup: true\n")
    cfg = PipelineConfig.load(env={"CONTIMG_CONFIG": str(y), "CONTIMG_IMAGING_NITER": "20"})
    assert cfg.pointing_dec_deg == 16.3 and cfg.imaging_niter == 20 and cfg.catchup is True


def test_run_overrides_and_validation():
    cfg = PipelineConfig()
    assert cfg.with_overrides({"imaging_backend": "tclean", "unknown": 1}).imaging_backend == "tclean"
    with pytest.raises(ValueError, match="imaging_backend"):
        cfg.with_overrides({"imaging_backend": "difmap"})
    with pytest.raises(ValueError, match="min_subbands"):
        PipelineConfig(min_subbands=20)


def test_unknown_yaml_key_is_an_error(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("pointing_dec: 16.3\n")
    with pytest.raises(ValueError, match="unknown configuration keys"):
        PipelineConfig.load(env={"CONTIMG_CONFIG": str(y)})
