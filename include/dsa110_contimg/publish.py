"""Publish stage: copy staged products into the products directory.

Each file is copied under a temporary name in the products directory and
renamed into place, so a reader never sees a half-written product. An
identical existing product is left alone (idempotent rerun); a differing one
is replaced. Staged files are kept: the caller removes them once the registry
has recorded the publication."""
from __future__ import annotations

import filecmp
import logging
import os
import shutil
from pathlib import Path

from .errors import ContimgError

log = logging.getLogger(__name__)


def publication_problems(match: dict) -> list[str]:
    """Why a window's cross-match fails the publish QA gate ([] when it passes)."""
    if match["n_matched"] == 0:
        return ["no source matched the reference catalogue"]
    ratio = match["median_flux_ratio"] or 0
    if not 0.5 <= ratio <= 2.0:
        return [f"median flux ratio {ratio:.3f} outside [0.5, 2]"]
    return []


def publish_products(staged: list[Path], products_dir: Path) -> list[Path]:
    """Copy ``staged`` files into ``products_dir``; return the final paths.

    Raises ContimgError naming the file when a staged file is missing or is
    not a regular file, or when two staged files share a name."""
    products_dir = Path(products_dir)
    staged = [Path(p) for p in staged]
    names = [p.name for p in staged]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ContimgError(products_dir, f"staged products share names: {dup}")
    for p in staged:
        if not p.is_file():
            raise ContimgError(p, "staged product is missing or not a regular file")
    products_dir.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    n_copied = n_same = 0
    for src in staged:
        dest = products_dir / src.name
        if dest.is_file() and filecmp.cmp(src, dest, shallow=False):
            n_same += 1
            out.append(dest)
            continue
        tmp = products_dir / f".{src.name}.tmp-{os.getpid()}"
        try:
            shutil.copy2(src, tmp)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()
        n_copied += 1
        out.append(dest)
    log.info("publish: %d files to %s (%d copied, %d already identical)", len(out), products_dir, n_copied, n_same)
    return out
