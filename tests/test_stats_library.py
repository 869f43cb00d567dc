"""The statistics delegated to scipy (BH q-values, Mann-Whitney p, bootstrap interval, MAD) give the results of the
hand-written code they replaced (or, where the library's method differs, the documented difference); the
Hodges-Lehmann interval and the exact U distribution kept in :mod:`helpers.analysis.stats` equal brute force."""
from __future__ import annotations

import importlib.util
import warnings
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from scipy import special
from scipy import stats as ss

from helpers.analysis import stats
from helpers.preprocessing.qc import apply_thresholds, mad_thresholds

# --- Benjamini-Hochberg -------------------------------------------------------------------------------------------

def _bh_hand_written(p):
    """The former helpers.analysis.stats.bh_fdr, verbatim: the reference."""
    p = np.asarray(p, dtype=float)
    q = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    n = int(ok.sum())
    if n == 0:
        return q
    order = np.argsort(p[ok])
    ranked = p[ok][order] * n / np.arange(1, n + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.clip(ranked, 0, 1)
    q[ok] = out
    return q


def _random_p(rng, n):
    p = rng.uniform(size=n) ** 2  # many small p-values: adjusted values below 1 as well as clipped ones
    p[rng.choice(n, n // 5, replace=False)] = np.round(p[rng.choice(n, n // 5, replace=False)], 2)  # ties
    p[rng.choice(n, n // 10, replace=False)] = 0.05  # a block of identical values
    p[rng.choice(n, n // 7, replace=False)] = np.nan
    return p


def test_bh_fdr_equals_hand_written_and_statsmodels():
    rng = np.random.default_rng(11)
    have_sm = importlib.util.find_spec("statsmodels") is not None
    for n in [2, 3, 10, 57, 500]:
        for _ in range(5):
            p = _random_p(rng, n)
            q = stats.bh_fdr(p)
            assert np.array_equal(np.isnan(q), np.isnan(p))  # NaN passthrough, nothing else NaN
            np.testing.assert_allclose(q, _bh_hand_written(p), rtol=1e-12, atol=0, equal_nan=True)
            if have_sm:
                from statsmodels.stats.multitest import multipletests

                ok = ~np.isnan(p)
                np.testing.assert_allclose(q[ok], multipletests(p[ok], method="fdr_bh")[1], rtol=1e-12, atol=0)
    # edge cases: all NaN, empty, one value, 2-D input keeps its shape
    assert np.isnan(stats.bh_fdr([np.nan, np.nan])).all()
    assert stats.bh_fdr([]).shape == (0,)
    assert stats.bh_fdr([0.03]).tolist() == [0.03]
    p2 = _random_p(rng, 40).reshape(5, 8)
    np.testing.assert_allclose(stats.bh_fdr(p2), _bh_hand_written(p2), rtol=1e-12, equal_nan=True)
    assert stats.bh_fdr(p2).shape == (5, 8)
    with pytest.raises(ValueError):
        stats.bh_fdr([0.5, 1.5])


# --- Mann-Whitney: the exact U distribution kept for the HL interval, and the p-values from scipy -----------------

def _samples_with_u(n, m, k):
    """x (size n) and y (size m), no ties, with U_x = #{x_i > y_j} = k."""
    y = np.arange(m, dtype=float)
    beats = np.zeros(n, int)
    left = k
    for i in range(n):  # each x beats between 0 and m of the y's
        beats[i] = min(m, left)
        left -= beats[i]
    assert left == 0
    return beats - 0.5, y  # x_i = beats_i - 1/2 lies just above exactly beats_i of the y's


@pytest.mark.parametrize("n,m", [(1, 1), (2, 3), (3, 3), (4, 5), (5, 4), (6, 9), (7, 7), (8, 10), (10, 10)])
def test_mann_whitney_cdf_equals_scipy_exact_distribution(n, m):
    cdf = stats.mann_whitney_cdf(n, m)
    assert len(cdf) == n * m + 1 and cdf[-1] == pytest.approx(1.0)
    for k in range(n * m + 1):
        x, y = _samples_with_u(n, m, k)
        assert ss.mannwhitneyu(x, y, method="exact").statistic == k
        # one-sided: P(U <= k); two-sided: twice the smaller tail
        p_less = ss.mannwhitneyu(x, y, alternative="less", method="exact").pvalue
        assert cdf[k] == pytest.approx(p_less, rel=1e-12, abs=1e-15)
        p_two = min(1.0, 2 * min(cdf[k], 1 - (cdf[k - 1] if k > 0 else 0.0)))
        assert p_two == pytest.approx(ss.mannwhitneyu(x, y, method="exact").pvalue, rel=1e-12, abs=1e-15)


def _brute_u_counts(n, m):
    """Null distribution of U = #{x_i > y_j}, by enumerating all C(n+m, n) rank arrangements (no ties)."""
    counts = np.zeros(n * m + 1)
    for xpos in combinations(range(n + m), n):
        xs = set(xpos)
        ys = [r for r in range(n + m) if r not in xs]
        counts[sum(xr > yr for xr in xs for yr in ys)] += 1
    return counts / counts.sum()


@pytest.mark.parametrize("n,m", [(3, 3), (4, 5), (5, 4), (5, 6), (6, 6)])
def test_hodges_lehmann_ci_equals_brute_force(n, m):
    """The interval is [d_(k), d_(N-1-k)] of the sorted pairwise differences (0-based), k the largest with
    P(U <= k) <= alpha/2 (0 when none), P from all rank arrangements; its level is 1 - 2 P(U <= k)."""
    pmf = _brute_u_counts(n, m)
    brute_cdf = np.cumsum(pmf)
    np.testing.assert_allclose(stats.mann_whitney_cdf(n, m), brute_cdf, rtol=1e-12)
    rng = np.random.default_rng(n * 10 + m)
    for alpha in [0.05, 0.1, 0.2]:
        ks = [k for k in range(n * m + 1) if brute_cdf[k] <= alpha / 2 + 1e-15]
        k = ks[-1] if ks else 0
        assert stats.hl_ci_level(n, m, alpha) == pytest.approx(1 - 2 * brute_cdf[k], rel=1e-12)
        for _ in range(5):
            x, y = rng.normal(size=n), rng.normal(size=m) + 0.5
            diffs = sorted(yj - xi for yj in y for xi in x)
            est, lo, hi = stats.hodges_lehmann_ci(x, y, alpha)
            assert est == pytest.approx(float(np.median(diffs)), rel=1e-12)
            assert (lo, hi) == (diffs[k], diffs[len(diffs) - 1 - k])


def _brute_permutation_p(x, y):
    """Two-sided permutation p of U (mid-ranks) by enumerating every split of the pooled values."""
    z = np.concatenate([y, x])
    r = ss.rankdata(z)
    u_obs = r[: len(y)].sum()
    us = np.array([r[list(c)].sum() for c in combinations(range(len(z)), len(y))])
    return min(1.0, 2 * min(np.mean(us <= u_obs + 1e-9), np.mean(us >= u_obs - 1e-9)))


def test_mann_whitney_p_comes_from_scipy():
    rng = np.random.default_rng(5)
    # no ties, a group <= 8: scipy's exact test
    x, y = rng.normal(size=6), rng.normal(size=11) + 1
    assert stats.mann_whitney_p(x, y) == ss.mannwhitneyu(y, x, method="exact").pvalue
    # both groups > 8: the normal approximation (tie-corrected), ties or not
    x, y = np.round(rng.normal(size=12), 1), np.round(rng.normal(size=9), 1)
    assert stats.mann_whitney_p(x, y) == ss.mannwhitneyu(y, x, method="asymptotic").pvalue
    # ties, small groups: the exact permutation p conditional on the ties (all splits enumerated)
    for n, m in [(3, 4), (4, 5), (5, 5), (6, 7)]:
        x = np.round(rng.normal(size=n), 0)
        y = np.round(rng.normal(size=m) + 0.8, 0)
        assert len(np.unique(np.r_[x, y])) < n + m
        assert stats.mann_whitney_p(x, y) == pytest.approx(_brute_permutation_p(x, y), rel=1e-12)
    # ties, too many splits to enumerate: seeded Monte Carlo, deterministic and close to the enumeration-free
    # normal approximation at these sizes
    x, y = np.round(rng.normal(size=8), 1), np.round(rng.normal(size=30) + 0.5, 1)
    p1, p2 = stats.mann_whitney_p(x, y), stats.mann_whitney_p(x, y)
    assert p1 == p2 and abs(p1 - ss.mannwhitneyu(y, x).pvalue) < 0.02
    # the claim record carries this p
    v = pd.Series(np.r_[x, y], index=[f"p{i}" for i in range(38)])
    g = pd.Series(["CR"] * 8 + ["NR"] * 30, index=v.index)
    assert stats.compare_two_groups(v, g, "CR", "NR")["p"] == p1


# --- bootstrap interval of an AUC -----------------------------------------------------------------------------------

def test_bootstrap_auc_ci_is_scipy_bca():
    """Same interval as scipy.stats.bootstrap (BCa) called on the two groups' scores with the AUC as U/(n0 n1)
    from scipy's Mann-Whitney statistic; deterministic for a seed; contains the point estimate."""
    rng = np.random.default_rng(2)
    y = np.array([0] * 12 + [1] * 9)
    s = np.round(rng.normal(size=21) + 0.8 * y, 1)  # rounding makes ties

    def auc(a, b, axis=-1):
        return ss.mannwhitneyu(b, a, axis=axis).statistic / (a.shape[axis] * b.shape[axis])

    ref = ss.bootstrap((s[y == 0], s[y == 1]), auc, n_resamples=999, rng=np.random.default_rng(3), method="BCa")
    lo, hi = stats.bootstrap_auc_ci(y, s, seed=3, n_boot=999)
    assert (lo, hi) == pytest.approx(tuple(ref.confidence_interval), rel=1e-12)
    assert stats.bootstrap_auc_ci(y, s, seed=3, n_boot=999) == (lo, hi)
    assert stats.bootstrap_auc_ci(y, s, seed=4, n_boot=999) != (lo, hi)
    assert lo < stats.auc_by_ranks(y, s) < hi
    # repeats x patients: the statistic is the mean AUC over repeats; patients (columns) are resampled jointly
    P = np.round(rng.normal(size=(4, 21)) + 0.8 * y, 1)
    lo, hi = stats.bootstrap_auc_ci(y, P, seed=1, n_boot=500)
    assert lo < float(stats.auc_by_ranks(y, P).mean()) < hi
    assert stats.bootstrap_auc_ci(y, P[:1], seed=1, n_boot=500) == stats.bootstrap_auc_ci(y, P[0], seed=1, n_boot=500)


def test_bootstrap_auc_ci_degenerate_falls_back_to_percentile():
    y = np.array([0] * 5 + [1] * 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither scipy's DegenerateDataWarning nor a division warning escapes
        assert stats.bootstrap_auc_ci(y, y + 0.1, seed=0, n_boot=200) == (1.0, 1.0)  # every resample: AUC 1
    with pytest.raises(ValueError, match="two patients per group"):
        stats.bootstrap_auc_ci(np.array([0, 1, 1, 1]), np.arange(4.0), seed=0)


def test_bootstrap_auc_ci_coverage():
    """Normal scores shifted by 1 sd: true AUC = Phi(1/sqrt 2) = 0.760; the 95% BCa interval covers it in about
    95% of samples of 25 + 25 patients."""
    true_auc = ss.norm.cdf(1 / np.sqrt(2))
    rng = np.random.default_rng(8)
    y = np.r_[np.zeros(25, int), np.ones(25, int)]
    hits = 0
    n_sim = 200
    for i in range(n_sim):
        s = rng.normal(size=50) + y
        lo, hi = stats.bootstrap_auc_ci(y, s, seed=i, n_boot=1000)
        hits += lo <= true_auc <= hi
    assert 0.88 <= hits / n_sim <= 0.99


# --- MAD thresholds -------------------------------------------------------------------------------------------------

def _mad_thresholds_hand_written(metrics, groups, scale, nmads=3.0, lo_cap=8.0, hi_cap=40.0):
    """The former mad_thresholds with its hand-written MAD, the normal-consistency factor as a parameter."""
    rows = []
    for g, idx in groups.groupby(groups, observed=True).groups.items():
        m = metrics.loc[idx]
        lt, lg = np.log1p(m["total_counts"]), np.log1p(m["n_genes"])

        def mad(x):
            return scale * np.median(np.abs(x - np.median(x)))

        mito = m["pct_mt"]
        rows.append({"group": g, "min_counts": float(np.expm1(np.median(lt) - nmads * mad(lt))),
                     "min_genes": float(np.expm1(np.median(lg) - nmads * mad(lg))),
                     "max_pct_mt": float(np.clip(np.median(mito) + nmads * mad(mito), lo_cap, hi_cap)),
                     "n_cells": int(len(m))})
    return pd.DataFrame(rows).set_index("group")


def test_mad_thresholds_equal_hand_written_formula():
    """scipy's median_abs_deviation(scale="normal") divides by Phi^-1(3/4), i.e. multiplies by 1.482602...: the
    thresholds equal the hand-written formula with that factor to 1e-9, and differ from the former rounded factor
    1.4826 only by that rounding (~1.5e-6 relative in the MAD); no cell's pass/fail call changes here."""
    rng = np.random.default_rng(3)
    n = 3000
    metrics = pd.DataFrame({"total_counts": rng.negative_binomial(5, 0.002, n).astype(float) + 1,
                            "n_genes": rng.negative_binomial(8, 0.01, n).astype(float) + 1,
                            "pct_mt": 100 * rng.beta(2, 30, n)}, index=[f"c{i}" for i in range(n)])
    groups = pd.Series(rng.choice(["s1", "s2", "s3", "s4"], n), index=metrics.index)
    metrics.loc[groups == "s4", "pct_mt"] *= 6  # a bad sample: its mito cap is clipped at 40
    new = mad_thresholds(metrics, groups)
    exact = 1 / special.ndtri(0.75)
    assert exact == pytest.approx(1.482602218505602, rel=1e-15)
    pd.testing.assert_frame_equal(new, _mad_thresholds_hand_written(metrics, groups, exact), rtol=1e-9, atol=0)
    old = _mad_thresholds_hand_written(metrics, groups, 1.4826)
    pd.testing.assert_frame_equal(new, old, rtol=1e-5, atol=0)
    assert not np.allclose(new.to_numpy(float), old.to_numpy(float), rtol=1e-12, atol=0)  # the rounding is visible
    assert apply_thresholds(metrics, groups, new).equals(apply_thresholds(metrics, groups, old))
