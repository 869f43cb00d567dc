"""Known traps of the pinned stack, each reproduced once here so a lock update cannot bring them back."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_lock_pins_and_no_cuda():
    pins = _lock()
    assert not [p for p in pins if p == "torch" or p.startswith("nvidia-")], "the lock must not pull torch/CUDA"
    for pkg in ["scanpy", "anndata", "papermill", "decoupler", "pydeseq2", "liana", "infercnvpy", "harmonypy",
                "lifelines", "scikit-misc", "pynndescent", "leidenalg", "jupyterlab", "nbconvert", "seaborn"]:
        assert pkg in pins, f"{pkg} missing from requirements.lock"
    assert pins["scanpy"].startswith("1.11") and pins["anndata"].startswith("0.12")
    assert tuple(int(x) for x in pins["pynndescent"].split(".")[:2]) < (0, 7), "pynndescent 0.7 breaks neighbours"
    env = (ROOT / "environment.yml").read_text()
    assert "python=3.11" in env and "requirements.lock" in env


@pytest.mark.slow
def test_neighbors_on_8192_cells():
    """scanpy 1.11.5 + pynndescent 0.7.0 fails on >= 8,192 cells ('csr_array' ... 'getnnz')."""
    import anndata as ad
    import scanpy as sc

    rng = np.random.default_rng(0)
    a = ad.AnnData(np.zeros((8300, 2), dtype=np.float32))
    a.obsm["X_pca"] = rng.normal(size=(8300, 20)).astype(np.float32)
    sc.pp.neighbors(a, n_neighbors=10, use_rep="X_pca", random_state=0)
    assert a.obsp["connectivities"].shape == (8300, 8300)


def test_seurat_v3_hvg_available():
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    a = ad.AnnData(sp.csr_matrix(rng.poisson(rng.gamma(0.5, 2, 300)[None, :], size=(200, 300)).astype(np.float32)))
    sc.pp.highly_variable_genes(a, flavor="seurat_v3", n_top_genes=50)
    assert a.var["highly_variable"].sum() == 50


@pytest.mark.slow
def test_make_lab_starts_jupyterlab_with_the_project_kernel(tmp_path):
    """``make lab`` (root or not) starts JupyterLab in notebooks/ whose default kernel is the project's."""
    import json
    import os
    import signal
    import socket
    import subprocess
    import time
    import urllib.request

    if not list((ROOT / ".venv").glob(".installed-*")):
        pytest.skip("environment stamp absent (pytest run outside make)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = subprocess.run(["make", "-s", "-n", "lab"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    cmd = cmd.replace("\\\n", " ").strip() + f" --no-browser --ServerApp.port={port} --IdentityProvider.token=''"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    proc = subprocess.Popen(cmd, shell=True, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        specs = None
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/kernelspecs", timeout=2) as r:
                    specs = json.load(r)
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.5)
        assert specs is not None, f"JupyterLab did not start:\n{proc.stdout.read().decode()[-3000:]}"
        assert specs["default"] == "dr-compendium" and "dr-compendium" in specs["kernelspecs"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
