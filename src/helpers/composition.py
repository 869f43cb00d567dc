"""Cell-type composition per patient and CR-vs-NR tests at the patient level (logit proportions)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def patient_fractions(obs: pd.DataFrame, label: str = "cell_type", patient: str = "patient_id",
                      exclude: list[str] | None = None) -> pd.DataFrame:
    """Patients x labels fraction table (rows sum to 1), optionally leaving some labels out of the denominator
    (e.g. malignant plasma cells, whose share varies widely and would distort the microenvironment)."""
    o = obs[[patient, label]].astype(str)
    if exclude:
        o = o[~o[label].isin(exclude)]
    counts = pd.crosstab(o[patient], o[label])
    return counts.div(counts.sum(1), axis=0)


def bh_fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (NaN kept)."""
    p = np.asarray(p, dtype=float)
    q = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    n = ok.sum()
    if n == 0:
        return q
    order = np.argsort(p[ok])
    ranked = p[ok][order] * n / np.arange(1, n + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.clip(ranked, 0, 1)
    q[ok] = out
    return q


def hodges_lehmann_ci(x: np.ndarray, y: np.ndarray, alpha: float = 0.05) -> tuple[float, float, float]:
    """Hodges-Lehmann shift (median of all pairwise y - x differences) with its distribution-free CI from
    the Mann-Whitney null distribution (normal approximation of the rank cut-off)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    d = np.sort((y[:, None] - x[None, :]).ravel())
    n, m = len(x), len(y)
    est = float(np.median(d))
    z = stats.norm.ppf(1 - alpha / 2)
    k = int(np.floor(n * m / 2 - z * np.sqrt(n * m * (n + m + 1) / 12)))
    k = max(k, 0)
    lo, hi = d[k], d[len(d) - 1 - k]
    return est, float(lo), float(hi)


def compare_groups(values: pd.DataFrame, groups: pd.Series, reference: str, test: str) -> pd.DataFrame:
    """Column-wise patient-level comparison ``test`` vs ``reference``: group medians, Hodges-Lehmann shift with
    95% CI, Mann-Whitney two-sided p and BH q over columns. ``values`` is patients x features."""
    g = groups.reindex(values.index).astype(str)
    rows = []
    for c in values.columns:
        x = values.loc[g == reference, c].dropna().to_numpy()
        y = values.loc[g == test, c].dropna().to_numpy()
        if len(x) < 2 or len(y) < 2:
            rows.append({"feature": c, "n_ref": len(x), "n_test": len(y)})
            continue
        est, lo, hi = hodges_lehmann_ci(x, y)
        p = stats.mannwhitneyu(y, x, alternative="two-sided").pvalue
        rows.append({"feature": c, f"median_{reference}": float(np.median(x)), f"median_{test}": float(np.median(y)),
                     "effect": est, "ci_low": lo, "ci_high": hi, "p": float(p), "n_ref": len(x), "n_test": len(y)})
    df = pd.DataFrame(rows)
    df["q"] = bh_fdr(df["p"].to_numpy()) if "p" in df else np.nan
    return df


def composition_test(fractions: pd.DataFrame, groups: pd.Series, reference: str, test: str,
                     pseudo: float = 1e-3) -> pd.DataFrame:
    """Logit-proportion test per cell type: effect = Hodges-Lehmann shift of logit(fraction) NR vs CR."""
    f = fractions.clip(lower=pseudo, upper=1 - pseudo)
    res = compare_groups(np.log(f / (1 - f)), groups, reference, test).rename(columns={"feature": "cell_type"})
    res["scale"] = "logit fraction"
    return res
