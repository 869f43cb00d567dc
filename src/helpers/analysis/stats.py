"""Patient-level statistics: Hodges-Lehmann shifts with CIs, Mann-Whitney tests, BH FDR, Spearman with CI,
and the claim record every finding notebook writes (effect, ci_low, ci_high, p, direction, n_cr, n_nr, method).

Where scipy computes a quantity it is called: BH q-values (``false_discovery_control``), Mann-Whitney p-values
(``mannwhitneyu``), bootstrap intervals (``bootstrap``). The Hodges-Lehmann interval and the exact null
distribution of U it needs are computed here (no library exposes them) and tested against scipy and brute force."""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import stats


def auc_by_ranks(y: np.ndarray, scores: np.ndarray) -> float | np.ndarray:
    """Area under the ROC curve of ``scores`` for binary labels ``y`` (1 or True = positive), from the
    Mann-Whitney rank sum with mid-ranks for ties: equal to ``sklearn.metrics.roc_auc_score`` (tested), without
    its per-call validation (~7 ms, which dominated bootstraps of thousands of AUCs). ``scores`` may be 2-D
    (rows = score sets over the same samples): one AUC per row, computed at once."""
    y = np.asarray(y).astype(bool)
    S = np.atleast_2d(np.asarray(scores, dtype=float))
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        raise ValueError("the AUC needs both classes among the labels")
    if S.shape[-1] != len(y):
        raise ValueError(f"{S.shape[-1]} scores for {len(y)} labels")
    ranks = stats.rankdata(S, axis=-1)
    auc = (ranks[..., y].sum(-1) - n1 * (n1 + 1) / 2) / (n0 * n1)
    return float(auc[0]) if np.ndim(scores) == 1 else auc


def hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUC from its value and the group sizes (Hanley & McNeil 1982, Radiology 143:29, eq. 2
    with Q1 = A/(2-A), Q2 = 2A^2/(1+A)). The formula is written for A >= 0.5; an AUC below 0.5 is the AUC
    1 - A of the reversed score with the groups' roles swapped, so it gets that SE. At A = 0 or 1 the formula
    gives 0; the SE is then taken one discordant pair away from the boundary (A = 1 - 1/(n_pos n_neg)), so an
    interval never shrinks to a point."""
    if n_pos < 1 or n_neg < 1:
        raise ValueError("the AUC's standard error needs at least one sample per group")
    if auc < 0.5:
        auc, n_pos, n_neg = 1.0 - auc, n_neg, n_pos
    a = min(float(auc), 1.0 - 1.0 / (n_pos * n_neg))
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return float(np.sqrt(var))


def hanley_mcneil_ci(auc: float, n_pos: int, n_neg: int, alpha: float = 0.05) -> tuple[float, float]:
    """Analytic (1 - alpha) CI of an AUC: AUC -/+ z * :func:`hanley_mcneil_se`, clipped to [0, 1]. It is the
    sampling uncertainty of the AUC of a fixed score at these group sizes: for a cross-validated AUC it leaves
    out the variability of refitting the model (no CI of a CV AUC is exact at a few tens of patients)."""
    half = stats.norm.ppf(1 - alpha / 2) * hanley_mcneil_se(auc, n_pos, n_neg)
    return float(max(auc - half, 0.0)), float(min(auc + half, 1.0))


def bh_fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) over the non-NaN entries; NaN entries stay NaN and are not
    counted among the tests. The adjustment is ``scipy.stats.false_discovery_control(p, method="bh")`` (equal to
    the step-up computation min over j >= i of p_(j) n / j, clipped to 1, and to statsmodels'
    ``multipletests(method="fdr_bh")``; tested). p-values outside [0, 1] raise a ValueError."""
    p = np.asarray(p, dtype=float)
    q = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(p[ok], method="bh")
    return q


def mann_whitney_cdf(n: int, m: int) -> np.ndarray:
    """Exact null CDF of the Mann-Whitney U statistic for group sizes n, m (no ties), by counting (cached per
    (n, m); the array is read-only): ``cdf[k] = P(U <= k)``. It is the distribution behind
    ``scipy.stats.mannwhitneyu(method="exact")`` (tested against it), which scipy does not expose; it is kept
    only for the Hodges-Lehmann interval (:func:`hodges_lehmann_ci`, :func:`hl_ci_level`). The Mann-Whitney
    p-values themselves come from scipy (:func:`mann_whitney_p`)."""
    return _mann_whitney_cdf(int(n), int(m))


@lru_cache(maxsize=512)
def _mann_whitney_cdf(n: int, m: int) -> np.ndarray:
    # f[i][j][u]: number of arrangements of i x's and j y's with U = u (recursion on the largest value)
    f = [[None] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        for j in range(m + 1):
            if i == 0 or j == 0:
                f[i][j] = np.array([1.0])
                continue
            a = np.concatenate([np.zeros(j), f[i - 1][j]])  # largest is an x: it beats all j y's
            b = f[i][j - 1]
            size = max(len(a), len(b))
            f[i][j] = np.pad(a, (0, size - len(a))) + np.pad(b, (0, size - len(b)))
    counts = f[n][m]
    cdf = np.cumsum(counts) / counts.sum()
    cdf.setflags(write=False)
    return cdf


def hodges_lehmann_ci(x: np.ndarray, y: np.ndarray, alpha: float = 0.05) -> tuple[float, float, float]:
    """Hodges-Lehmann shift y - x (median of all pairwise differences) with its distribution-free CI: the
    k-th smallest and largest pairwise differences, k from the exact Mann-Whitney null (n*m <= 2500) or its
    normal approximation. With very small groups a 95% interval is not attainable; the CI is then the full
    range of pairwise differences (its coverage is given by :func:`hl_ci_level`)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    d = np.sort((y[:, None] - x[None, :]).ravel())
    n, m = len(x), len(y)
    est = float(np.median(d))
    k = _hl_k(n, m, alpha)
    return est, float(d[k]), float(d[len(d) - 1 - k])


def _hl_k(n: int, m: int, alpha: float) -> int:
    if n * m <= 2500:
        cdf = mann_whitney_cdf(n, m)
        # 0-based index of the lower limit: the interval [d_k, d_(N-1-k)] misses the shift with probability
        # 2 P(U <= k); take the largest k with P(U <= k) <= alpha / 2 (0 when none: the full range)
        ok = np.where(cdf <= alpha / 2)[0]
        return int(ok[-1]) if len(ok) else 0
    z = stats.norm.ppf(1 - alpha / 2)
    return max(int(np.floor(n * m / 2 - z * np.sqrt(n * m * (n + m + 1) / 12))), 0)


def hl_ci_level(n: int, m: int, alpha: float = 0.05) -> float:
    """Actual coverage of the Hodges-Lehmann interval for group sizes n, m (exact for n*m <= 2500)."""
    if n * m > 2500:
        return 1 - alpha
    return float(1 - 2 * mann_whitney_cdf(n, m)[_hl_k(n, m, alpha)])


# permutations behind a tie-aware small-sample Mann-Whitney p (scipy enumerates all splits when there are fewer)
MWU_PERMUTATIONS = 9999


def mann_whitney_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided Mann-Whitney p of ``y`` against ``x``, from ``scipy.stats.mannwhitneyu(y, x,
    alternative="two-sided", method=...)`` with the method chosen as follows.

    * No ties and min(n, m) <= 8: ``method="exact"`` (the exact null distribution of U; what scipy's
      ``"auto"`` picks here).
    * Ties and min(n, m) <= 8: scipy's ``"exact"`` is not exact with ties (it ignores them) and ``"auto"``
      falls back to the normal approximation, which is poor at these sizes. The p is instead the permutation
      test of U, ``method=scipy.stats.PermutationMethod(n_resamples=9999, rng=np.random.default_rng(0))``: exact
      conditionally on the ties (all C(n+m, n) splits enumerated) when there are at most 9999 splits, e.g. up
      to 7 vs 7 or 3 vs 25; otherwise a Monte Carlo p from 9999 permutations with a fixed seed (deterministic;
      resolution 1e-4).
    * Both groups > 8: ``method="asymptotic"`` (normal approximation with tie and continuity corrections; what
      ``"auto"`` picks here).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if min(len(x), len(y)) <= 8:
        ties = len(np.unique(np.concatenate([x, y]))) < len(x) + len(y)
        method = (stats.PermutationMethod(n_resamples=MWU_PERMUTATIONS, rng=np.random.default_rng(0)) if ties
                  else "exact")
    else:
        method = "asymptotic"
    return float(stats.mannwhitneyu(y, x, alternative="two-sided", method=method).pvalue)


def compare_two_groups(values: pd.Series, groups: pd.Series, reference: str, test: str, method: str = "",
                       alpha: float = 0.05) -> dict:
    """One claim record: Hodges-Lehmann shift (test minus reference) with 95% CI, two-sided Mann-Whitney p
    (:func:`mann_whitney_p`: scipy's exact test without ties, a permutation test with ties at small n, the normal
    approximation when both groups exceed 8), direction of the shift, group sizes and the method text."""
    g = groups.reindex(values.index).astype(str)
    x = values[(g == reference).to_numpy()].dropna().to_numpy()
    y = values[(g == test).to_numpy()].dropna().to_numpy()
    rec = {"n_cr": int(len(x)), "n_nr": int(len(y)), "method": method}
    if len(x) < 2 or len(y) < 2:
        return {**rec, "effect": None, "ci_low": None, "ci_high": None, "p": None, "direction": None}
    est, lo, hi = hodges_lehmann_ci(x, y, alpha)
    p = mann_whitney_p(x, y)
    return {**rec, "effect": est, "ci_low": lo, "ci_high": hi, "ci_level": hl_ci_level(len(x), len(y), alpha), "p": p,
            "direction": "up" if est > 0 else "down", "median_cr": float(np.median(x)), "median_nr": float(np.median(y))}


def compare_groups(values: pd.DataFrame, groups: pd.Series, reference: str, test: str, method: str = "") -> pd.DataFrame:
    """Column-wise :func:`compare_two_groups` over a patients x features table, with BH q over columns."""
    rows = [{"feature": c, **compare_two_groups(values[c], groups, reference, test, method)} for c in values.columns]
    df = pd.DataFrame(rows)
    df["q"] = bh_fdr(pd.to_numeric(df["p"], errors="coerce").to_numpy())
    return df


def spearman_ci(x: np.ndarray, y: np.ndarray, alpha: float = 0.05) -> dict:
    """Spearman rho with a Fisher-z 95% CI (Bonett-Wright variance 1.06/(n-3)) and its p-value. The interval is
    analytic (no bootstrap is involved), so it is deterministic and needs no seed."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = ~(np.isnan(x) | np.isnan(y))
    n = int(ok.sum())
    r, p = stats.spearmanr(x[ok], y[ok])
    se = np.sqrt(1.06 / max(n - 3, 1))
    z = np.arctanh(np.clip(r, -0.999999, 0.999999))
    zc = stats.norm.ppf(1 - alpha / 2)
    return {"rho": float(r), "ci_low": float(np.tanh(z - zc * se)), "ci_high": float(np.tanh(z + zc * se)),
            "p": float(p), "n": n}


def bootstrap_auc_ci(y: np.ndarray, p: np.ndarray, seed: int, n_boot: int = 2000,
                     alpha: float = 0.05) -> tuple[float, float]:
    """Bootstrap (1 - alpha) interval of the AUC of FIXED scores over patient resamples within each group, by
    ``scipy.stats.bootstrap``. ``p`` is one score per patient or a repeats x patients matrix of out-of-fold scores
    (statistic: the mean AUC over repeats; a resample draws patients, i.e. whole columns).

    The two groups are scipy's two independent samples (``paired=False``): each resample draws n0 patients from
    the negatives and n1 from the positives with replacement, as the hand-written percentile bootstrap this
    replaces did. The interval is scipy's default **BCa** (bias-corrected and accelerated; acceleration from the
    jackknife over patients of each group), no longer the plain percentile interval. Where BCa is degenerate
    (NaN: e.g. every resample gives the same AUC, as with perfectly separated scores) the percentile interval of
    the same bootstrap distribution is returned instead. Deterministic for a ``seed``
    (``rng=np.random.default_rng(seed)``); needs at least two patients per group.

    Not a confidence interval of a cross-validated AUC: the models are not refitted, so the variability of
    training is missing. The AUC CIs reported are Hanley-McNeil (:func:`hanley_mcneil_ci`); this interval is only
    for the raw table of notebook 09's simulated cohorts (``helpers.analysis.power``)."""
    y = np.asarray(y)
    P = np.atleast_2d(np.asarray(p, dtype=float))
    i0, i1 = np.where(y == 0)[0], np.where(y == 1)[0]
    if min(len(i0), len(i1)) < 2:
        raise ValueError("the bootstrap AUC interval needs at least two patients per group")

    def mean_auc(a, b, axis=-1):
        # a, b: patient indices of the negatives and positives (leading axes: resamples or jackknife samples)
        idx = np.concatenate([a, b], axis=-1).astype(int)
        labels = np.r_[np.zeros(a.shape[-1], bool), np.ones(b.shape[-1], bool)]
        return np.asarray(auc_by_ranks(labels, P[:, idx])).mean(axis=0)

    kw = dict(n_resamples=n_boot, confidence_level=1 - alpha, vectorized=True, paired=False)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # handled below: percentile fallback
        res = stats.bootstrap((i0, i1), mean_auc, method="BCa", rng=np.random.default_rng(seed), **kw)
    lo, hi = res.confidence_interval
    if not (np.isfinite(lo) and np.isfinite(hi)):
        res = stats.bootstrap((i0, i1), mean_auc, method="percentile", bootstrap_result=res,
                              **{**kw, "n_resamples": 0})
        lo, hi = res.confidence_interval
    return float(lo), float(hi)
