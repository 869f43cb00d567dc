"""Classifier: cross-validation without leakage, in-fold selection, external evaluation, panel."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from toys import patient_table

from helpers.analysis import classifier as clf


def test_panel_has_34_documented_genes():
    panel = clf.load_panel()
    assert len(panel) == 34 and panel["gene"].is_unique and panel["source"].notna().all()


def test_signal_detected_and_selected_in_fold():
    X, y = patient_table(signal=2.0)
    cv = clf.cross_validate(clf.make_model(0, top_k=8), X, y, seed=0, n_repeats=2)
    assert cv["auc"] > 0.85
    freq = cv["selection_frequency"]
    assert freq[["G0", "G1", "G2"]].min() > 0.8  # the informative genes are picked in (almost) every fold
    assert np.isclose(freq.sum(), 8)  # exactly 8 genes per fold


@pytest.mark.slow
def test_no_leakage_null_and_shuffled():
    """Pure-noise features (10 null cohorts of 12 vs 12): the honest cross-validated AUC averages near 0.5 and its
    Hanley-McNeil CI covers 0.5 in most cohorts (at least 8 of 10; a single small cohort can fall outside by chance),
    while
    selecting the top 8 of 34 noise genes on all data before CV (the leak) is clearly optimistic."""
    honest, leaky, covered = [], [], 0
    for s in range(10):
        X, y = patient_table(signal=0.0, seed=100 + s)
        cv = clf.cross_validate(clf.make_model(s, top_k=8), X, y, seed=s, n_repeats=2)
        lo, hi = clf.auc_ci(cv["auc"], y)
        covered += lo < 0.5 < hi
        honest.append(cv["auc"])
        top = X.columns[np.argsort(-np.abs(np.corrcoef(np.c_[X.to_numpy(), y].T)[-1, :-1]))[:8]]
        leaky.append(clf.cross_validate(clf.make_model(s), X[top], y, seed=s, n_repeats=2)["auc"])
    assert 0.35 < np.mean(honest) < 0.65, honest
    assert covered >= 8, covered
    assert np.mean(leaky) > np.mean(honest) + 0.15, (np.mean(leaky), np.mean(honest))
    # shuffled labels of a cohort that does carry signal: the AUC falls to chance
    Xs, ys = patient_table(signal=2.0, seed=4)
    aucs = [clf.cross_validate(clf.make_model(2), Xs, np.random.default_rng(s).permutation(ys), seed=s,
                               n_repeats=1)["auc"] for s in range(10)]
    assert 0.3 < np.mean(aucs) < 0.7


def test_permutation_p_small_with_signal_and_selection_rerun():
    """A separable toy: the whole-pipeline permutation p is the smallest possible, for the all-gene model and for the
    top-k pipeline (its in-fold selection re-run on every permutation); the null is centred near chance."""
    X, y = patient_table(signal=2.5, seed=5)
    for top_k in (None, 8):
        m = clf.make_model(0, top_k=top_k)
        cv = clf.cross_validate(m, X, y, seed=0, n_repeats=1)
        null = clf.cv_auc_null(m, X, y, seed=0, n_perm=19)
        assert clf.permutation_p(cv["auc"], null) == pytest.approx(1 / 20)
        assert abs(null.mean() - 0.5) < 0.15 and null.std() > 0.03  # labels really permuted: the null varies


def test_permutation_p_large_under_label_noise():
    """Pure noise (8 toys, 19 permutations each): the permutation p is spread over (0, 1] as a valid p should be
    (mean near 0.5), not piled up near 0."""
    ps = []
    for s in range(8):
        X, y = patient_table(n=16, p=12, signal=0.0, seed=40 + s)
        m = clf.make_model(s)
        obs = clf.cross_validate(m, X, y, seed=s, n_repeats=1)["auc"]
        ps.append(clf.permutation_p(obs, clf.cv_auc_null(m, X, y, seed=s, n_perm=19)))
    assert 0.25 < np.mean(ps) < 0.8 and sum(p < 0.1 for p in ps) <= 2, ps


def test_permutation_p_rule_and_determinism():
    assert clf.permutation_p(0.9, np.array([0.5, 0.9, 0.95, 0.2])) == pytest.approx(3 / 5)  # ties count
    assert clf.permutation_p(1.0, np.zeros(999)) == pytest.approx(0.001)
    X, y = patient_table(n=12, p=10, signal=1.0, seed=3)
    m = clf.make_model(1, top_k=4)
    a = clf.cv_auc_null(m, X, y, seed=2, n_perm=6, n_jobs=1)
    b = clf.cv_auc_null(m, X, y, seed=2, n_perm=6, n_jobs=2)
    assert np.array_equal(a, b)  # seeded per permutation: independent of n_jobs
    assert not np.array_equal(a, clf.cv_auc_null(m, X, y, seed=3, n_perm=6))
    assert clf.auc_reproduced(0.8, 0.01) and not clf.auc_reproduced(0.3, 0.01) and not clf.auc_reproduced(0.8, 0.05)


def test_external_permutation_null():
    """Blood-style null: marrow labels permuted, the top-k model refitted on marrow and scored on the external set
    against its true labels. With a shared signal the observed external AUC beats every permutation; with an
    external set whose labels carry no signal the p is large."""
    X, y = patient_table(signal=2.5, seed=8)
    Xe, ye = patient_table(n=16, signal=2.5, seed=9)
    model = clf.make_model(0, top_k=8)
    ext = clf.evaluate_external(clone(model).fit(X, y), Xe, ye)
    res = clf.evaluate_blood_permutation(model, X, y, {**ext, "Z": Xe, "y": ye}, seed=0, n_perm=19)
    assert ext["auc"] > 0.9 and res["permutation_p"] == pytest.approx(1 / 20)
    assert abs(res["null"].mean() - 0.5) < 0.2
    Xn, yn = patient_table(n=16, signal=0.0, seed=10)
    noise = clf.evaluate_external(clone(model).fit(X, y), Xn, yn)
    null = clf.external_auc_null(model, X, y, Xn, yn, seed=0, n_perm=19)
    assert clf.permutation_p(noise["auc"], null) > 0.1


def test_top_k_selection_inside_folds_prevents_leakage():
    """Many noise features (300, 12 vs 12): choosing the top 8 genes on all patients before cross-validation (the
    leak) gives a high AUC from nothing; make_model's selection step sits inside the Pipeline, so cross_validate
    refits it in every training fold and the AUC stays near chance."""
    X, y = patient_table(n=24, p=300, signal=0.0, seed=11)
    assert [name for name, _ in clf.make_model(0, top_k=8).steps] == ["select", "rf"]
    corr = np.abs(np.corrcoef(np.c_[X.to_numpy(), y].T)[-1, :-1])
    leaky = clf.cross_validate(clf.make_model(0), X[X.columns[np.argsort(-corr)[:8]]], y, seed=0, n_repeats=2)["auc"]
    honest = clf.cross_validate(clf.make_model(0, top_k=8), X, y, seed=0, n_repeats=2)
    assert leaky > 0.85, leaky
    assert honest["auc"] < 0.7, honest["auc"]
    assert (honest["selection_frequency"] > 0).sum() > 8  # different genes chosen in different folds


def test_hanley_mcneil_against_published_example_and_simulation():
    """Hanley & McNeil (1982, Radiology 143:29-36), Table I: 109 CT images rated 1-5 (58 normal: 33, 6, 6, 11, 2;
    51 abnormal: 3, 2, 2, 11, 33); the paper reports area 0.893 with SE 0.032. Their formula also gives, by hand,
    SE = 0.04450 for A = 0.8 at 50 vs 50 (Q1 = 2/3, Q2 = 32/45: sqrt((0.16 + 49 * 0.02667 + 49 * 0.07111) / 2500)).
    Under the binormal model the SE matches the simulated spread of the rank AUC."""
    from scipy.stats import norm

    from helpers.analysis.stats import auc_by_ranks, hanley_mcneil_ci, hanley_mcneil_se

    y = np.r_[np.zeros(58), np.ones(51)]
    ratings = np.r_[np.repeat(np.arange(1, 6), [33, 6, 6, 11, 2]), np.repeat(np.arange(1, 6), [3, 2, 2, 11, 33])]
    area = auc_by_ranks(y, ratings)
    assert area == pytest.approx(0.893, abs=5e-4)
    assert hanley_mcneil_se(area, 51, 58) == pytest.approx(0.032, abs=1e-3)
    # by hand at A = 0.893: Q1 = 0.80669, Q2 = 0.84252, SE = sqrt((0.09555 + 50 * 0.00924 + 57 * 0.04508) / 2958);
    # the groups' roles matter (51 abnormal with Q1, 58 normal with Q2; swapped it would be 0.03118)
    assert hanley_mcneil_se(0.893, 51, 58) == pytest.approx(0.03251, abs=1e-5)
    assert hanley_mcneil_se(0.8, 50, 50) == pytest.approx(0.04450, abs=1e-5)
    lo, hi = hanley_mcneil_ci(0.8, 50, 50)
    assert (lo, hi) == pytest.approx((0.8 - 1.959964 * 0.0445022, 0.8 + 1.959964 * 0.0445022), abs=1e-5)
    rng = np.random.default_rng(0)
    d = np.sqrt(2) * norm.ppf(0.8)
    scores = np.c_[rng.normal(0, 1, (3000, 50)), rng.normal(d, 1, (3000, 50))]
    sims = auc_by_ranks(np.r_[np.zeros(50), np.ones(50)], scores)
    assert sims.std() == pytest.approx(hanley_mcneil_se(0.8, 50, 50), rel=0.06)
    assert hanley_mcneil_se(0.2, 10, 11) == pytest.approx(hanley_mcneil_se(0.8, 11, 10))  # reversed score
    lo1, hi1 = hanley_mcneil_ci(1.0, 3, 3)
    assert hi1 == 1.0 and lo1 < 0.9  # never a point at the boundary
    assert hanley_mcneil_ci(0.96, 10, 11)[1] == 1.0  # clipped


def test_study_auc_calibration():
    """Binormal AUC = Phi(d / sqrt 2): the study's 0.92 in marrow with every effect halved in blood gives
    Phi(Phi^-1(0.92) / 2) = 0.759, inside the Hanley-McNeil CI of 0.77 at 10 vs 10."""
    from scipy.stats import norm

    assert clf.binormal_auc(clf.binormal_d(0.96)) == pytest.approx(0.96)
    assert clf.binormal_d(0.5) == pytest.approx(0.0, abs=1e-12)
    cal = clf.study_auc_calibration(clf.STUDY_N_BM, (10, 10), 0.5)
    assert cal["auc_bm_34"]["binormal_d"] == pytest.approx(2.4758, abs=1e-3)
    b = cal["blood_from_marrow"]
    assert b["expected_blood_auc"] == pytest.approx(norm.cdf(norm.ppf(0.92) / 2))
    assert 0.75 < b["expected_blood_auc"] < 0.77
    assert b["expected_in_study_blood_ci"] is True
    assert cal["auc_pb_top8"]["hanley_mcneil_ci_low"] < 0.6 and cal["auc_bm_34"]["n_nr"] == 10
    assert clf.study_auc_calibration(clf.STUDY_N_BM, None, None)["auc_pb_top8"]["hanley_mcneil_ci_low"] is None
    assert clf.scale_reaching_auc([0.5, 1.0, 1.5], [0.7, 0.86, 0.94], 0.9) == pytest.approx(1.25)
    assert clf.scale_reaching_auc([0.5, 1.0, 1.5], [0.7, 0.86, 0.94], 0.96) is None
    assert clf.scale_reaching_auc([1.0, 0.5], [0.97, 0.96], 0.9) == 0.5


def test_external_evaluation_and_standardise():
    X, y = patient_table(signal=2.0, seed=6)
    Z, stats = clf.standardise(X)
    assert np.allclose(Z.mean(), 0) and np.allclose(Z.std(ddof=1), 1)
    model = clf.make_model(0).fit(Z, y)
    Xb, yb = patient_table(signal=2.0, seed=7)
    r = clf.evaluate_external(model, clf.standardise(Xb)[0], yb)
    assert r["auc"] > 0.8 and r["ci_low"] <= r["auc"] <= r["ci_high"]
    assert (r["ci_low"], r["ci_high"]) == clf.auc_ci(r["auc"], yb)  # the Hanley-McNeil CI


def test_rank_auc_equals_sklearn():
    """auc_by_ranks is roc_auc_score (ties included), for one score per patient and for a repeats x patients matrix
    (the bootstrap interval built on it is tested in tests/test_stats_library.py)."""
    from sklearn.metrics import roc_auc_score

    from helpers.analysis.stats import auc_by_ranks

    rng = np.random.default_rng(4)
    y = np.array([0] * 9 + [1] * 8)
    P = np.round(rng.uniform(size=(3, 17)), 1)  # rounding makes ties
    assert np.allclose(auc_by_ranks(y, P), [roc_auc_score(y, row) for row in P], atol=1e-12)
    assert np.isclose(auc_by_ranks(y, P[0]), roc_auc_score(y, P[0]))
    with pytest.raises(ValueError, match="both classes"):
        auc_by_ranks(np.zeros(5), np.arange(5.0))


def test_reduced_panel_rule():
    """Fixed in advance: the panel genes present are used when at least 2 x top_k and half the panel remain."""
    from helpers.claims import NotTestable

    genes = [f"G{i}" for i in range(34)]
    used, missing = clf.panel_in_data(genes, genes[:21], top_k=8)  # a 10x PBMC library lacked 13 of 34
    assert used == genes[:21] and missing == genes[21:]
    assert clf.panel_in_data(genes, genes[:17], top_k=8)[0] == genes[:17]  # half of 34 (and >= 16)
    with pytest.raises(NotTestable, match=r"only 16 of the 34 panel genes are in the data \(need 17.*missing: G16, G17"):
        clf.panel_in_data(genes, genes[:16], top_k=8)
    with pytest.raises(NotTestable, match="need 20"):
        clf.panel_in_data(genes, genes[:19], top_k=10)  # 2 x top_k rules here


def _pb_cells(n_cr, n_nr, tissue="BM", genes=("A", "B", "C"), cells=12):
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    obs = pd.DataFrame([{"patient_id": f"{r}{i}", "sample_id": f"{r}{i}", "tissue": tissue, "response": r,
                         "cell_type": "T"} for r, n in (("CR", n_cr), ("NR", n_nr)) for i in range(n) for _ in range(cells)])
    obs.index = [f"c{i}" for i in range(len(obs))]
    X = sp.csr_matrix(rng.poisson(5, (len(obs), len(genes))).astype(float))
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=list(genes)))


def test_too_few_patients_or_no_tissue_not_testable():
    from helpers.claims import NotTestable

    a = _pb_cells(3, 2)
    with pytest.raises(NotTestable, match=r"only 3 CR and 2 NR patients have >= 10 cells in BM \(need 3 per group\)"):
        clf.cohort_panel_features(a, ["A", "B", "C"], 1, "BM", ["CR", "NR"], min_per_group=clf.MIN_PATIENTS_CV)
    X, r = clf.cohort_panel_features(_pb_cells(3, 3), ["A", "B", "C"], 1, "BM", ["CR", "NR"])
    assert X.shape == (6, 3) and sorted(r.value_counts()) == [3, 3]
    model = clf.make_model(0).fit(clf.standardise(X)[0], (r == "NR").astype(int).to_numpy())
    with pytest.raises(NotTestable, match="no PB samples in this cohort"):
        clf.evaluate_tissue(model, a, ["A", "B", "C"], "PB", ["CR", "NR"], "NR")
    with pytest.raises(NotTestable, match="no validation tissue declared"):
        clf.evaluate_tissue(model, a, ["A", "B", "C"], None, ["CR", "NR"], "NR")
    res = clf.evaluate_tissue(model, _pb_cells(2, 2, "PB"), ["A", "B", "C"], "PB", ["CR", "NR"], "NR")
    assert 0 <= res["auc"] <= 1 and len(res["y"]) == 4  # two blood patients per group suffice for the fixed model
