"""Small-cohort power (helpers.power): the pseudobulk-level simulator agrees with the cell-level one, power is
near the test size under the null and high for large planted effects, and results do not depend on n_jobs."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from helpers import power
from helpers.claims import CLAIMS
from helpers.cohort import load_cohort
from helpers.pseudobulk import log_cpm, pseudobulk_by_patient
from helpers.simulate import cohort_model, make_design, simulate_cohort


@pytest.fixture(scope="module")
def sim():
    s = copy.deepcopy(load_cohort("ifm2017_sim").simulation)
    s["n_genes"] = 3000
    s.pop("bulk", None)
    return s


def test_clopper_pearson_and_summary():
    lo, hi = power.clopper_pearson(5, 10)
    assert 0.18 < lo < 0.19 and 0.81 < hi < 0.82  # exact binomial 95% CI of 5/10
    assert power.clopper_pearson(0, 10)[0] == 0.0


def test_pseudobulk_simulator_matches_cells(sim):
    """The same design simulated cell by cell and as pseudobulk: per-patient log2 CPM of a cell type agree."""
    samples = make_design(3, 3, seed=4)
    model = cohort_model(sim, 4)
    a, _ = simulate_cohort(samples, sim, 4, progress=False)
    a = a[(a.obs["truth_quality"] == "good").to_numpy()]
    cells = log_cpm(pseudobulk_by_patient(a, ["mono_classical"], label="truth_cell_type"))
    pbs = power.simulate_pseudobulks(samples, sim, 4, {"m": ["mono_classical"]}, model=model)
    direct = log_cpm(pbs["m"]).loc[cells.index]
    expressed = cells.columns[(cells.mean() > 4)]
    r = np.corrcoef(cells[expressed].to_numpy().ravel(), direct[expressed].to_numpy().ravel())[0, 1]
    assert r > 0.95, r
    assert set(pbs["m"].obs["n_cells"]) and (pbs["m"].obs["n_cells"] >= 10).all()


@pytest.mark.slow
def test_null_power_near_size_and_planted_power_high(sim):
    raw = power.power_grid(sim, 11, [(8, 8)], [0.0, 1.5], n_reps=12, n_jobs=2, progress=False)
    s = power.summarise_power(raw).set_index(["effect_scale", "test"])
    for name in CLAIMS:
        # under the null, 12 cohorts: at most 3 directional hits (P(X >= 4) < 0.01 for Binomial(12, 0.05))
        assert s.loc[(0.0, name), "power"] <= 3 / 12, (name, s.loc[(0.0, name), "power"])
    for name in ("inflammatory_bme_cytokines", "ifn_mono_nfkb", "nk_cd54dim_cd16"):
        assert s.loc[(1.5, name), "power"] >= 0.75, (name, s.loc[(1.5, name), "power"])


def test_power_grid_independent_of_n_jobs(sim):
    a = power.power_grid(sim, 3, [(4, 4)], [1.0], n_reps=2, n_jobs=1, progress=False)
    b = power.power_grid(sim, 3, [(4, 4)], [1.0], n_reps=2, n_jobs=2, progress=False)
    assert a.equals(b)
