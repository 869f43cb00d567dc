"""Small-cohort power (helpers.analysis.power): the pseudobulk-level simulator agrees with the cell-level one, power is
near the test size under the null and high for large planted effects, and results do not depend on n_jobs."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from helpers.analysis import power
from helpers.analysis.pseudobulk import log_cpm, pseudobulk_by_patient
from helpers.claims import cell_claims
from helpers.data.cohort import load_cohort
from helpers.data.simulate import cohort_model, make_design, simulate_cohort


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


def test_classifier_summary_reports_hanley_mcneil_width():
    """The classifier's CI width in the power summary is the Hanley-McNeil width notebook 07 reports (from each
    cohort's AUC and group sizes), not the no-refit bootstrap interval one_cohort also returns."""
    import pandas as pd

    from helpers.analysis.stats import hanley_mcneil_ci

    raw = pd.DataFrame({"n_per_group": [8, 8], "n_cr": [8, 8], "n_nr": [8, 8], "effect_scale": [1.0, 1.0],
                        "rep": [0, 1], "test": "classifier_auc", "effect": [0.8, 0.9], "p": None, "significant": None,
                        "ci_low": [0.79, 0.89], "ci_high": [0.81, 0.91]})  # a (too narrow) no-refit interval
    s = power.summarise_power(raw).iloc[0]
    widths = [hi - lo for lo, hi in (hanley_mcneil_ci(a, 8, 8) for a in (0.8, 0.9))]
    assert s["mean_auc"] == pytest.approx(0.85) and s["mean_ci_width"] == pytest.approx(np.mean(widths))
    assert s["mean_ci_width"] > 0.2


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
    for name in cell_claims():
        # under the null, 12 cohorts: at most 3 directional hits (P(X >= 4) < 0.01 for Binomial(12, 0.05))
        assert s.loc[(0.0, name), "power"] <= 3 / 12, (name, s.loc[(0.0, name), "power"])
    strong = [n for n, c in cell_claims().items() if c.primary and c.planted in ("inflammation", "ifn_mono_nfkb", "nk_cd16")]
    assert len(strong) == 3, strong
    for name in strong:
        assert s.loc[(1.5, name), "power"] >= 0.75, (name, s.loc[(1.5, name), "power"])


def test_power_grid_independent_of_n_jobs(sim):
    a = power.power_grid(sim, 3, [(4, 4)], [1.0], n_reps=2, n_jobs=1, progress=False)
    b = power.power_grid(sim, 3, [(4, 4)], [1.0], n_reps=2, n_jobs=2, progress=False)
    assert a.equals(b)
