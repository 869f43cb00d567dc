"""Patient-level statistics, pseudobulk, DESeq2 against a hand-computed value, scores and survival."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats as ss

from helpers.analysis import stats
from helpers.analysis.pseudobulk import (
    gene_per_patient,
    log_cpm,
    progeny_activity,
    pseudobulk_by_patient,
    set_score,
)


def test_mann_whitney_cdf_matches_scipy_exact():
    rng = np.random.default_rng(1)
    for n, m in [(3, 3), (5, 7), (11, 10)]:
        cdf = stats.mann_whitney_cdf(n, m)
        x, y = rng.normal(size=n), rng.normal(size=m)
        u = ss.mannwhitneyu(x, y, method="exact").statistic
        p_ours = min(1.0, 2 * min(cdf[int(u)], 1 - (cdf[int(u) - 1] if u > 0 else 0)))
        assert p_ours == pytest.approx(ss.mannwhitneyu(x, y, method="exact").pvalue, rel=1e-9)


def test_hodges_lehmann_coverage_and_small_n_level():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(1000):
        x, y = rng.normal(size=11), rng.normal(size=10) + 0.7
        _, lo, hi = stats.hodges_lehmann_ci(x, y)
        hits += lo <= 0.7 <= hi
    assert 0.93 <= hits / 1000 <= 0.99  # nominal 0.957 for 11 vs 10
    assert stats.hl_ci_level(3, 3) == pytest.approx(0.9)  # 95% is not attainable with 3 vs 3
    assert stats.hl_ci_level(11, 10) >= 0.95


def test_claim_record_fields():
    v = pd.Series([1.0, 2, 3, 4, 5, 6], index=list("abcdef"))
    g = pd.Series(["CR"] * 3 + ["NR"] * 3, index=list("abcdef"))
    r = stats.compare_two_groups(v, g, "CR", "NR", "m")
    assert r["effect"] == 3.0 and r["direction"] == "up" and r["n_cr"] == 3 and r["n_nr"] == 3
    assert r["p"] == pytest.approx(0.1)
    for k in ["effect", "ci_low", "ci_high", "p", "direction", "n_cr", "n_nr", "method"]:
        assert k in r


def test_spearman_ci_contains_rho():
    x = np.arange(20.0)
    y = x + np.random.default_rng(0).normal(0, 5, 20)
    r = stats.spearman_ci(x, y)
    assert r["ci_low"] < r["rho"] < r["ci_high"] and r["n"] == 20


def _cells():
    X = np.array([[1, 0, 5], [2, 1, 0], [0, 3, 1], [4, 4, 4], [1, 1, 1]], dtype=float)
    obs = pd.DataFrame({"patient_id": ["p1", "p1", "p2", "p2", "p2"], "response": ["CR", "CR", "NR", "NR", "NR"],
                        "tissue": "BM", "cell_type": ["A", "B", "A", "A", "B"], "sample_id": ["s1", "s1", "s2", "s2", "s2"],
                        "batch": "b", "age": 60.0}, index=[f"c{i}" for i in range(5)])
    a = ad.AnnData(sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=["G1", "G2", "G3"]))
    a.layers["counts"] = a.X.copy()
    return a


def test_pseudobulk_sums_by_hand():
    a = _cells()
    pb = pseudobulk_by_patient(a, ["A"], min_cells=1)
    assert list(pb.obs_names) == ["p1", "p2"]
    assert np.array_equal(pb.X, [[1, 0, 5], [4, 7, 5]])
    assert pb.obs.loc["p2", "n_cells"] == 2 and pb.obs.loc["p2", "response"] == "NR"
    assert pseudobulk_by_patient(a, ["A"], min_cells=2).n_obs == 1  # p1 has one A cell
    L = log_cpm(pb)
    assert L.loc["p1", "G3"] == pytest.approx(np.log2(5 / 6 * 1e6 + 1))
    g = gene_per_patient(a, ["A", "B"], "G2", min_cells=1).set_index("patient_id")
    assert g.loc["p1", "fraction_positive"] == 0.5 and g.loc["p2", "fraction_positive"] == 1.0
    with pytest.raises(ValueError, match="none of the cell types"):
        pseudobulk_by_patient(a, ["Z"])


def test_deseq2_matches_hand_computed_fold_change():
    """With identical other genes the median-of-ratios size factors are 1 and the NB GLM MLE of the
    log2 fold change is exactly log2(mean NR / mean CR) of the target gene."""
    from helpers.analysis.de import deseq2

    rng = np.random.default_rng(0)
    n = 8
    base = rng.integers(200, 2000, size=60).astype(float)
    X = np.tile(base, (n, 1))
    target = np.array([100, 120, 90, 110, 400, 380, 420, 410], dtype=float)
    X = np.column_stack([X, target])
    pb = ad.AnnData(X, obs=pd.DataFrame({"response": ["CR"] * 4 + ["NR"] * 4}, index=[f"p{i}" for i in range(n)]),
                    var=pd.DataFrame(index=[f"G{i}" for i in range(60)] + ["T"]))
    res = deseq2(pb, "CR", "NR", n_cpus=1)
    expect = np.log2(target[4:].mean() / target[:4].mean())
    assert res.loc["T", "log2FoldChange"] == pytest.approx(expect, abs=0.01)
    assert res.loc["T", "padj"] < 1e-6
    assert res.drop("T")["log2FoldChange"].abs().max() < 1e-3


def test_set_score_and_progeny_direction():
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(200)]
    L = pd.DataFrame(rng.normal(8, 0.3, size=(10, 200)), index=[f"p{i}" for i in range(10)], columns=genes)
    L.iloc[5:, :20] += 1.0
    s = set_score(L, genes[:20])
    assert s.iloc[5:].min() > s.iloc[:5].max()
    with pytest.raises(ValueError, match="expressed"):
        set_score(L, ["nope1", "nope2"])
    from helpers.data.genesets import progeny_weights
    net = progeny_weights()
    nf = net[(net.source == "NFkB") & (net.weight > 0)].target.tolist()
    cols = list(dict.fromkeys(genes + net.target.tolist()))
    L2 = pd.DataFrame(rng.normal(8, 0.3, size=(10, len(cols))), index=L.index, columns=cols)
    L2.loc[L2.index[5:], nf] += 1.0
    act = progeny_activity(L2, "NFkB")
    assert act.iloc[5:].mean() > act.iloc[:5].mean() + 1


def test_survival_recovers_hazard_ratio():
    from helpers.analysis.survival import survival_by_score

    rng = np.random.default_rng(3)
    z = rng.normal(size=800)
    t = rng.exponential(1 / (0.02 * 2.0 ** z))
    c = rng.uniform(10, 80, 800)
    r = survival_by_score(pd.Series(z), pd.Series(np.minimum(t, c)), pd.Series((t <= c).astype(int)))
    assert r["hr_ci_low"] < 2.0 < r["hr_ci_high"] and r["logrank_p"] < 1e-6
