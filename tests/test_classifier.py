"""Classifier: cross-validation without leakage, in-fold selection, external evaluation, panel."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import classifier as clf


def _data(n=24, p=34, signal=0.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array([0] * (n // 2) + [1] * (n - n // 2))
    X = rng.normal(size=(n, p))
    X[:, :3] += signal * y[:, None]
    return pd.DataFrame(X, columns=[f"G{i}" for i in range(p)]), y


def test_panel_has_34_documented_genes():
    panel = clf.load_panel()
    assert len(panel) == 34 and panel["gene"].is_unique and panel["source"].notna().all()


def test_signal_detected_and_selected_in_fold():
    X, y = _data(signal=2.0)
    cv = clf.cross_validate(clf.make_model(0, top_k=8), X, y, seed=0, n_repeats=2)
    assert cv["auc"] > 0.85
    freq = cv["selection_frequency"]
    assert freq[["G0", "G1", "G2"]].min() > 0.8  # the informative genes are picked in (almost) every fold
    assert np.isclose(freq.sum(), 8)  # exactly 8 genes per fold


@pytest.mark.slow
def test_no_leakage_null_and_shuffled():
    """Pure-noise features (10 null cohorts of 12 vs 12): the honest cross-validated AUC averages near 0.5 and its
    CI covers 0.5 in most cohorts (at least 8 of 10; a single small cohort can fall outside by chance), while
    selecting the top 8 of 34 noise genes on all data before CV (the leak) is clearly optimistic."""
    honest, leaky, covered = [], [], 0
    for s in range(10):
        X, y = _data(signal=0.0, seed=100 + s)
        cv = clf.cross_validate(clf.make_model(s, top_k=8), X, y, seed=s, n_repeats=2)
        lo, hi = clf.bootstrap_auc_ci(y, cv["oof_by_repeat"], seed=s, n_boot=300)
        covered += lo < 0.5 < hi
        honest.append(cv["auc"])
        top = X.columns[np.argsort(-np.abs(np.corrcoef(np.c_[X.to_numpy(), y].T)[-1, :-1]))[:8]]
        leaky.append(clf.cross_validate(clf.make_model(s), X[top], y, seed=s, n_repeats=2)["auc"])
    assert 0.35 < np.mean(honest) < 0.65, honest
    assert covered >= 8, covered
    assert np.mean(leaky) > np.mean(honest) + 0.15, (np.mean(leaky), np.mean(honest))
    # shuffled labels of a cohort that does carry signal: the AUC falls to chance
    Xs, ys = _data(signal=2.0, seed=4)
    aucs = [clf.cross_validate(clf.make_model(2), Xs, np.random.default_rng(s).permutation(ys), seed=s,
                               n_repeats=1)["auc"] for s in range(10)]
    assert 0.3 < np.mean(aucs) < 0.7


def test_permutation_pvalue_small_with_signal():
    X, y = _data(signal=2.5, seed=5)
    m = clf.make_model(0)
    cv = clf.cross_validate(m, X, y, seed=0, n_repeats=1)
    p, null = clf.permutation_pvalue(m, X, y, cv["auc"], seed=0, n_perm=30, n_jobs=1)
    assert p == pytest.approx(1 / 31) and abs(null.mean() - 0.5) < 0.15


def test_external_evaluation_and_standardise():
    X, y = _data(signal=2.0, seed=6)
    Z, stats = clf.standardise(X)
    assert np.allclose(Z.mean(), 0) and np.allclose(Z.std(ddof=1), 1)
    model = clf.make_model(0).fit(Z, y)
    Xb, yb = _data(signal=2.0, seed=7)
    r = clf.evaluate_external(model, clf.standardise(Xb)[0], yb, seed=0)
    assert r["auc"] > 0.8 and r["ci_low"] <= r["auc"] <= r["ci_high"]


def test_rank_auc_and_vectorised_bootstrap_equal_sklearn():
    """auc_by_ranks is roc_auc_score (ties included), and the vectorised bootstrap CI gives the same interval as
    resampling and scoring each bootstrap draw with scikit-learn one at a time."""
    from sklearn.metrics import roc_auc_score

    from helpers.stats import auc_by_ranks

    rng = np.random.default_rng(4)
    y = np.array([0] * 9 + [1] * 8)
    P = np.round(rng.uniform(size=(3, 17)), 1)  # rounding makes ties
    assert np.allclose(auc_by_ranks(y, P), [roc_auc_score(y, row) for row in P], atol=1e-12)
    assert np.isclose(auc_by_ranks(y, P[0]), roc_auc_score(y, P[0]))
    with pytest.raises(ValueError, match="both classes"):
        auc_by_ranks(np.zeros(5), np.arange(5.0))
    lo, hi = clf.bootstrap_auc_ci(y, P, seed=7, n_boot=300)
    r = np.random.default_rng(7)
    i0, i1 = np.where(y == 0)[0], np.where(y == 1)[0]
    ref = []
    for _ in range(300):
        idx = np.concatenate([r.choice(i0, len(i0)), r.choice(i1, len(i1))])
        ref.append(np.mean([roc_auc_score(y[idx], row[idx]) for row in P]))
    assert np.allclose([lo, hi], np.quantile(ref, [0.025, 0.975]), atol=1e-12)


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
