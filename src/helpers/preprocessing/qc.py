"""Quality control: per-sample, data-driven thresholds (median absolute deviations) and doublet calls.

Nothing here reads truth columns; the evaluation against a simulated truth is in :mod:`helpers.validation.truth`.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy.stats import median_abs_deviation

from helpers.data.cohort import InputError
from helpers.preprocessing.doublets import call_doublets, coexpression_doublets
from helpers.preprocessing.normalise import counts_matrix


def qc_metrics(adata: ad.AnnData, layer: str = "counts") -> pd.DataFrame:
    """Per-cell total UMIs, detected genes and mitochondrial percentage (added to ``adata.obs`` too)."""
    X = counts_matrix(adata, layer)
    total = np.asarray(X.sum(1)).ravel()
    genes = np.diff(X.indptr)
    mt = np.asarray(adata.var_names.str.upper().str.startswith("MT-"))
    if mt.sum() == 0:
        raise InputError("no mitochondrial genes (names starting with 'MT-') in var_names: cannot compute mito %; "
                         "give gene symbols, not Ensembl ids")
    pct_mt = 100 * np.asarray(X[:, mt].sum(1)).ravel() / np.maximum(total, 1)
    df = pd.DataFrame({"total_counts": total, "n_genes": genes, "pct_mt": pct_mt}, index=adata.obs_names)
    for c in df:
        adata.obs[c] = df[c].to_numpy()
    return df


def _mad(x) -> float:
    """Median absolute deviation scaled to the normal standard deviation (scipy)."""
    return float(median_abs_deviation(np.asarray(x, dtype=float), scale="normal"))


def mad_thresholds(metrics: pd.DataFrame, groups: pd.Series, nmads_low: float = 3.0, nmads_mito: float = 3.0,
                   min_mito_cap: float = 8.0, max_mito_cap: float = 40.0) -> pd.DataFrame:
    """Per-group (sample) thresholds: log UMIs and log genes below median - k MAD, mito % above median + k MAD.

    The mito cap is clipped to [min_mito_cap, max_mito_cap] so a very clean sample does not lose healthy
    cells to a tiny MAD, and a bad sample cannot accept anything. MADs are scaled to the normal sd:
    ``scipy.stats.median_abs_deviation(x, scale="normal")``, i.e. median |x - median(x)| / Phi^-1(3/4)
    (x 1.482602...; the former hand-written x 1.4826, a rounding of it, gave MADs 1.5e-6 relative smaller).
    There is no upper UMI threshold: plasma cells are legitimately large; doublets are called separately.
    """
    rows = []
    for g, idx in groups.groupby(groups, observed=True).groups.items():
        m = metrics.loc[idx]
        lt, lg = np.log1p(m["total_counts"]), np.log1p(m["n_genes"])
        mito = m["pct_mt"]
        rows.append({
            "group": g,
            "min_counts": float(np.expm1(np.median(lt) - nmads_low * _mad(lt))),
            "min_genes": float(np.expm1(np.median(lg) - nmads_low * _mad(lg))),
            "max_pct_mt": float(np.clip(np.median(mito) + nmads_mito * _mad(mito), min_mito_cap, max_mito_cap)),
            "n_cells": int(len(m)),
        })
    return pd.DataFrame(rows).set_index("group")


def apply_thresholds(metrics: pd.DataFrame, groups: pd.Series, thr: pd.DataFrame) -> pd.Series:
    """True where a cell passes its group's thresholds."""
    t = thr.loc[groups.astype(str).to_numpy()]
    ok = (metrics["total_counts"].to_numpy() >= t["min_counts"].to_numpy()) & \
         (metrics["n_genes"].to_numpy() >= t["min_genes"].to_numpy()) & \
         (metrics["pct_mt"].to_numpy() <= t["max_pct_mt"].to_numpy())
    return pd.Series(ok, index=metrics.index, name="qc_pass")


def qc_filter(adata: ad.AnnData, seed: int = 0, nmads: float = 3.0, doublet_rate: float = 0.06,
              batch_key: str = "sample_id", n_jobs: int = 2) -> tuple[ad.AnnData, pd.DataFrame, pd.DataFrame]:
    """Run metrics, per-sample MAD thresholds, Scrublet and lineage co-expression doublet calls; return
    (kept cells, per-cell QC table, per-sample thresholds). Raises a clear error when a sample has no cell left."""

    metrics = qc_metrics(adata)
    groups = adata.obs[batch_key].astype(str)
    thr = mad_thresholds(metrics, groups, nmads_low=nmads, nmads_mito=nmads)
    passed = apply_thresholds(metrics, groups, thr)
    dbl = call_doublets(adata, batch_key=batch_key, seed=seed, expected_rate=doublet_rate, n_jobs=n_jobs)
    table = metrics.join(dbl)
    table["coexpression_doublet"] = coexpression_doublets(adata)
    table["doublet"] = table["predicted_doublet"] | table["coexpression_doublet"]
    table["qc_pass"] = passed
    table["keep"] = passed & ~table["doublet"]
    table[batch_key] = groups
    kept = table.groupby(batch_key)["keep"].sum()
    empty = kept.index[kept == 0].tolist()
    if empty:
        raise InputError(f"no cell left after QC in sample(s) {empty}: check these samples' counts or loosen "
                         "the thresholds (analysis.qc_nmads in cohort.yaml)")
    thr["n_kept"] = kept.reindex(thr.index).astype(int)
    return adata[table["keep"].to_numpy()].copy(), table, thr
