"""publish: atomic, idempotent copies into the products directory."""
from __future__ import annotations

import os

import pytest

from dsa110_contimg.errors import ContimgError
from dsa110_contimg.publish import publish_products


def test_publish_copies_then_is_idempotent(tmp_path):
    staged = tmp_path / "staging"
    staged.mkdir()
    a, b = staged / "m.fits", staged / "m.csv"
    a.write_bytes(b"fits-bytes")
    b.write_text("ra,dec\n")
    out = publish_products([a, b], tmp_path / "products" / "w1")
    assert [p.read_bytes() for p in out] == [b"fits-bytes", b"ra,dec\n"]
    mtime = out[0].stat().st_mtime_ns
    os.utime(a, ns=(mtime + 10**9, mtime + 10**9))
    again = publish_products([a, b], tmp_path / "products" / "w1")
    assert again == out and out[0].stat().st_mtime_ns == mtime  # identical: untouched
    a.write_bytes(b"new-version")
    publish_products([a], tmp_path / "products" / "w1")
    assert out[0].read_bytes() == b"new-version"
    assert a.exists()  # staging kept until the registry records publication
    assert not [p for p in (tmp_path / "products" / "w1").iterdir() if ".tmp-" in p.name]


def test_publish_refuses_missing_and_duplicate_names(tmp_path):
    with pytest.raises(ContimgError, match="missing"):
        publish_products([tmp_path / "nope.fits"], tmp_path / "p")
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    for d in ("x", "y"):
        (tmp_path / d / "same.fits").write_text(d)
    with pytest.raises(ContimgError, match="share names"):
        publish_products([tmp_path / "x" / "same.fits", tmp_path / "y" / "same.fits"], tmp_path / "p")
