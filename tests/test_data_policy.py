"""Data protection: no count matrix is tracked in git outside the public reference and test data."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = ("tests/data/", "data/reference/")
MATRIX_SUFFIXES = (".h5ad", ".h5", ".loom", ".mtx", ".mtx.gz", ".rds", ".zarr")


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (subprocess.CalledProcessError, FileNotFoundError):
        pytest.skip("not a git checkout")
    return out.splitlines()


def test_no_count_matrix_tracked_outside_allowed_folders():
    bad = [f for f in _tracked() if f.endswith(MATRIX_SUFFIXES) and not f.startswith(ALLOWED)]
    bad += [f for f in _tracked() if f.split("/")[0] in ("results",) or f.startswith(("data/raw/", "data/processed/"))]
    assert not bad, f"count matrices or generated data tracked in git: {bad}"


def test_generated_folders_ignored():
    ignore = (ROOT / ".gitignore").read_text()
    for d in ("/data/raw/", "/data/processed/", "/results/", "/figures/*/"):
        assert d in ignore
