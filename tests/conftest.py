"""Shared fixtures: tiny in-memory cohorts (simulated once per session) and a scratch project root."""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "2")  # pinned before numpy loads, as the Makefile does: results are reproducible

import copy
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DR_ROOT", str(ROOT))
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))
os.environ.setdefault("MPLBACKEND", "Agg")

from helpers.validation.snapshot import GOALS  # noqa: E402  (after the environment above

GENERATED = ("data/cohorts", "data/processed", "results", "figures")


def checkout_state(root: Path) -> dict[str, float]:
    """Every file under the checkout's cohort and output folders, with its modification time."""
    return {str(p.relative_to(root)): p.stat().st_mtime for d in GENERATED if (root / d).exists()
            for p in (root / d).rglob("*") if p.is_file()}


@pytest.fixture(scope="session", autouse=True)
def hermetic_checkout():
    """Tests write only under tmp_path: the checkout's cohorts, processed data, results and figures are the same
    after the session as before it (a test that needs a project root uses :func:`linked_project`)."""
    before = checkout_state(ROOT)
    yield
    after = checkout_state(ROOT)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"tests wrote into the checkout: {changed[:20]}"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tiny_cohort():
    from helpers.data.cohort import load_cohort

    return load_cohort("tiny", root=ROOT)


@pytest.fixture(scope="session")
def tiny_sim(tiny_cohort):
    """(adata, truth) of the tiny cohort, simulated in memory."""
    from helpers.data.simulate import simulate_cohort

    return simulate_cohort(tiny_cohort.samples, copy.deepcopy(tiny_cohort.simulation), tiny_cohort.seed,
                           progress=False)


def null_config(sim: dict) -> dict:
    sim = copy.deepcopy(sim)
    for e in sim["effects"].values():
        e["strength"] = 0.0
    return sim


@pytest.fixture(scope="session")
def tiny_null_sim(tiny_cohort):
    from helpers.data.simulate import simulate_cohort

    return simulate_cohort(tiny_cohort.samples, null_config(tiny_cohort.simulation), tiny_cohort.seed, progress=False)


@pytest.fixture()
def scratch_root(tmp_path: Path) -> Path:
    """A minimal project root (data/cohorts/ + genesets + simulation inputs) for cohort-validation tests."""
    (tmp_path / "data" / "cohorts").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text("")
    for name in ("tiny", "ifm2017_sim"):  # tiny inherits its simulation knobs from ifm2017_sim (simulation.base)
        shutil.copytree(ROOT / "data" / "cohorts" / name, tmp_path / "data" / "cohorts" / name)
    return tmp_path


# Why the realistic simulator (issue 14) misses some QC/annotation goals, reported as XFAIL with the measured values:
# homotypic doublets carry one cell type's programme and no doublet caller can see them; damage is a continuum and
# cells just past the truth threshold (half the cytoplasmic mRNA lost) look like mildly damaged good cells; cells on
# continua between neighbouring states (CD4 naive/memory, classical/nonclassical monocytes, NK bright/dim) are
# ambiguous by construction, so subset labels near a boundary disagree with the truth. Goals are not loosened.
GOAL_GAP = ("the realistic simulator's homotypic doublets, damage continuum and continua between neighbouring states "
            "(issue 14); QC and annotation were not tuned to it, goals not loosened")
# the goals (helpers.validation.snapshot.GOALS, one home); compartment accuracy must hold: it does not depend on continua
HARD_GOALS = {k: v for k, v in GOALS.items() if k == "compartment_accuracy"}
SOFT_GOALS = {k: v for k, v in GOALS.items() if k not in HARD_GOALS}


def missed_goals(found: dict) -> dict[str, float]:
    """The soft QC/annotation goals a run misses, with the measured values."""
    return {k: round(float(found[k]), 3) for k, goal in SOFT_GOALS.items() if found[k] < goal}


def linked_project(root: Path, committed_cohorts: bool = True) -> Path:
    """A project root under ``root`` linked to this checkout (:func:`helpers.validation.calibration.link_project`): a run there
    writes nothing into the checkout; committed cohort definitions are linked unless ``committed_cohorts`` is False."""
    from helpers.validation.calibration import link_project

    return link_project(root, ROOT, cohorts=committed_cohorts)


NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def run_chain(project: Path, cohort: str = "tiny", notebooks: list[str] | None = None) -> dict[str, int]:
    """Notebooks (default: every one) through the Makefile's runner (which injects only ``cohort``), in chain
    order, in ``project``; stops at the first failure. Returns each notebook's exit code."""
    from helpers.runner import main as runner_main

    codes = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DR_ROOT", str(project))
        for nb in NOTEBOOKS:
            if notebooks is not None and nb.stem not in notebooks:
                continue
            codes[nb.stem] = runner_main(["run", "--cohort", cohort, "--notebook", str(project / "notebooks" / nb.name)])
            if codes[nb.stem] != 0:
                break
    return codes


def copy_cohort(project: Path, src: str, name: str, analysis: dict | None = None) -> Path:
    """A copy of committed cohort ``src`` in ``project`` named ``name``, with ``analysis`` keys set."""
    import yaml

    cdir = project / "data" / "cohorts" / name
    shutil.copytree(ROOT / "data" / "cohorts" / src, cdir)
    cfg = yaml.safe_load((cdir / "cohort.yaml").read_text())
    cfg["name"] = name
    cfg.setdefault("analysis", {}).update(analysis or {})
    (cdir / "cohort.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cdir


@pytest.fixture(scope="session")
def chain_project(tmp_path_factory) -> Path:
    """A scratch project root linked to this checkout: the end-to-end chains run there, nothing is written into
    the checkout."""
    return linked_project(tmp_path_factory.mktemp("e2e"))


@pytest.fixture(scope="session")
def tiny_chain(chain_project) -> dict[str, int]:
    """The whole chain on the tiny cohort (in memory), from scratch, once per session."""
    return run_chain(chain_project)


def pseudobulk_effect(adata, genes, cell_types, tissue="BM") -> pd.DataFrame:
    """Per patient mean log2 CPM of ``genes`` in truth ``cell_types`` (good cells): a truth-side check."""
    import scipy.sparse as sp

    X = sp.csr_matrix(adata.X)
    obs = adata.obs
    sel = (obs["truth_quality"] == "good").to_numpy() & (obs["tissue"] == tissue).to_numpy() & \
        obs["truth_cell_type"].isin(cell_types).to_numpy()
    gi = adata.var_names.get_indexer(genes)
    rows = []
    for p in obs.loc[sel, "patient_id"].unique():
        m = sel & (obs["patient_id"] == p).to_numpy()
        s = np.asarray(X[m].sum(0)).ravel()
        rows.append({"patient_id": p, "response": obs.loc[m, "response"].iloc[0],
                     "value": float(np.mean(np.log2(s[gi] / s.sum() * 1e6 + 1)))})
    return pd.DataFrame(rows)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say plainly how many tests ran (pytest exits non-zero when none were collected)."""
    stats = terminalreporter.stats
    n = sum(len(stats.get(k, [])) for k in ("passed", "failed", "error"))
    terminalreporter.write_line(f"TESTS RAN: {n} ({len(stats.get('passed', []))} passed, "
                                f"{len(stats.get('failed', []))} failed, {len(stats.get('skipped', []))} skipped)")
