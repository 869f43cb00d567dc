"""Descriptive tables of a cohort: design counts, per-sample cell and library-size summaries."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from helpers.preprocessing.normalise import counts_matrix


def design_table(samples: pd.DataFrame) -> pd.DataFrame:
    """Samples per tissue and response (rows tissue, columns response)."""
    return pd.crosstab(samples["tissue"], samples["response"]).rename_axis(index="tissue", columns="response")


def per_sample_summary(adata: ad.AnnData, layer: str | None = "counts") -> pd.DataFrame:
    """Per sample: response, tissue, batch, number of cells, median UMIs and genes per cell, median mito %."""
    X = counts_matrix(adata, layer)
    umis = np.asarray(X.sum(1)).ravel()
    genes = np.diff(X.indptr)
    mt = np.asarray(adata.var_names.str.upper().str.startswith("MT-"))
    mito = np.asarray(X[:, mt].sum(1)).ravel() / np.maximum(umis, 1)
    df = pd.DataFrame({"sample_id": adata.obs["sample_id"].astype(str).to_numpy(), "umis": umis, "genes": genes,
                       "mito_pct": 100 * mito})
    out = df.groupby("sample_id", sort=True).agg(n_cells=("umis", "size"), median_umis=("umis", "median"),
                                                  median_genes=("genes", "median"), median_mito_pct=("mito_pct", "median"))
    meta = adata.obs.drop_duplicates("sample_id").set_index("sample_id")[["patient_id", "tissue", "response", "batch"]]
    meta = meta.astype(str)
    return meta.join(out, how="right").reset_index()


def patients_per_group(samples: pd.DataFrame, groups: list[str]) -> dict[str, dict[str, int]]:
    """{tissue: {group: number of distinct patients}}."""
    out = {}
    for t in sorted(samples["tissue"].astype(str).unique()):
        sub = samples[samples["tissue"].astype(str) == t]
        out[t] = {g: int(sub.loc[sub["response"].astype(str) == g, "patient_id"].nunique()) for g in groups}
    return out


def batch_response_association(samples: pd.DataFrame, response: str = "response", batch: str = "batch",
                               max_cramers_v: float = 0.5) -> pd.DataFrame:
    """Per tissue: is the processing batch confounded with the response? Fisher's exact test on the batch x
    response table (scipy, R x C) and Cramér's V; ``confounded`` when V exceeds ``max_cramers_v`` or p < 0.05."""
    from scipy.stats import contingency, fisher_exact

    rows = []
    for tissue, s in samples.groupby("tissue"):
        tab = pd.crosstab(s[batch], s[response]).to_numpy()
        if min(tab.shape) < 2:
            rows.append({"tissue": tissue, "n_batches": tab.shape[0], "p": np.nan, "cramers_v": np.nan,
                         "confounded": False, "note": "one batch or one response group: nothing to test"})
            continue
        # (scipy's R x C test returns its p as a one-element array for some tables, e.g. one sample per batch)
        p = float(np.asarray(fisher_exact(tab).pvalue).item())
        v = float(contingency.association(tab, method="cramer"))
        rows.append({"tissue": tissue, "n_batches": tab.shape[0], "p": p, "cramers_v": v,
                     "confounded": bool(v > max_cramers_v or p < 0.05), "note": "Fisher exact"})
    return pd.DataFrame(rows)
