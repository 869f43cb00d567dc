"""Doublets: Scrublet per sample, and heterotypic doublets that co-express two lineages' exclusive genes
beyond what the sample's ambient RNA could explain."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from helpers.annotation.cell_types import load_markers, marker_scores, on_level
from helpers.preprocessing.normalise import counts_matrix


def _scrublet_one(X: sp.spmatrix, obs_names: pd.Index, var_names: pd.Index, seed: int,
                  expected_rate: float) -> pd.DataFrame:
    import scanpy as sc

    a = ad.AnnData(X=sp.csr_matrix(X).astype(np.float32), obs=pd.DataFrame(index=obs_names),
                   var=pd.DataFrame(index=var_names))
    if a.n_obs < 30:
        return pd.DataFrame({"doublet_score": 0.0, "predicted_doublet": False}, index=a.obs_names)
    # exact kNN (sklearn): deterministic, and on a few thousand cells faster than compiling pynndescent's
    # numba kernels again in every worker process (measured: ~45 s per worker)
    sc.pp.scrublet(a, expected_doublet_rate=expected_rate, random_state=seed, verbose=False,
                   n_prin_comps=min(30, a.n_obs - 1), use_approx_neighbors=False)
    return a.obs[["doublet_score", "predicted_doublet"]].astype({"predicted_doublet": bool})


def call_doublets(adata: ad.AnnData, batch_key: str = "sample_id", layer: str = "counts", seed: int = 0,
                  expected_rate: float = 0.06, n_jobs: int = 2) -> pd.DataFrame:
    """scanpy's Scrublet per sample on raw counts (samples in parallel; each with the same seed, so the
    result does not depend on ``n_jobs``); returns doublet_score and predicted_doublet per cell."""
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    X = counts_matrix(adata, layer)
    keys = adata.obs[batch_key].astype(str).to_numpy()
    samples = list(dict.fromkeys(keys))
    jobs = (delayed(_scrublet_one)(X[keys == s], adata.obs_names[keys == s], adata.var_names, seed, expected_rate)
            for s in tqdm(samples, desc="scrublet per sample"))
    out = Parallel(n_jobs=n_jobs)(jobs)
    return pd.concat(out).loc[adata.obs_names]


def above_ambient(X: sp.csr_matrix, genes_idx: np.ndarray, samples: np.ndarray, max_ambient: float,
                  quantile: float = 0.999) -> np.ndarray:
    """Per cell: do its counts of ``genes_idx`` exceed what ambient RNA alone could give?

    The ambient profile of a sample is approximated by its pooled expression (as SoupX does without empty droplets);
    a cell of library l could carry up to ``max_ambient`` x l x (the genes' pooled share) ambient counts of them, and
    its count must exceed the Poisson ``quantile`` of that (a real programme, not soup)."""
    lib = np.asarray(X.sum(1)).ravel()
    k = np.asarray(X[:, genes_idx].sum(1)).ravel()
    out = np.zeros(X.shape[0], dtype=bool)
    for s in np.unique(samples):
        m = samples == s
        share = k[m].sum() / max(lib[m].sum(), 1.0)
        out[m] = k[m] > stats.poisson.ppf(quantile, max_ambient * lib[m] * share)
    return out


def coexpression_doublets(adata: ad.AnnData, markers: dict[str, Any] | None = None, layer: str = "counts",
                          on_fraction: float = 0.3, sample_key: str = "sample_id") -> pd.Series:
    """Cells expressing the programmes of two lineage compartments at once (heterotypic doublets), judged on the
    marker table's ``lineage_exclusive`` genes (genes shared between lineages would flag singlets).

    Each compartment's typical 'on' level is the median score of the cells above its Otsu threshold (the
    data-driven split of the bimodal on/off distribution); a compartment counts as expressed in a cell when the
    score exceeds ``on_fraction`` of that level (a doublet carries each partner's programme diluted about
    two-fold, and log-scale means shrink further with dropouts), at least two of its genes are detected, and its
    counts exceed what the sample's ambient RNA could put there (:func:`above_ambient`, with the marker table's
    ``rules.max_ambient_fraction``): in marrow, soup of abundant myeloid, erythroid and plasma-cell transcripts
    reaches every droplet."""
    markers = markers or load_markers()
    lineages = markers["lineage_exclusive"]
    max_ambient = float(markers.get("rules", {}).get("max_ambient_fraction", 0.2))
    S = marker_scores(adata, lineages, layer)
    X = counts_matrix(adata, layer)
    samples = (adata.obs[sample_key].astype(str).to_numpy() if sample_key in adata.obs
               else np.zeros(adata.n_obs, dtype=str))
    on = {}
    for c in S:
        idx = adata.var_names.get_indexer([g for g in lineages[c]["markers"] if g in adata.var_names])
        n_detected = np.asarray((X[:, idx] > 0).sum(1)).ravel()
        # two markers detected at least: one stray UMI of one marker never turns a programme on
        on[c] = ((S[c] > on_fraction * on_level(S[c])).to_numpy() & (n_detected >= min(2, len(idx)))
                 & above_ambient(X, idx, samples, max_ambient))
    on = pd.DataFrame(on, index=S.index)
    labels = pd.Series({c: v.get("label", c) for c, v in lineages.items()})
    n_on = on.T.groupby(labels[on.columns].to_numpy()).any().T.sum(1)  # programmes of one compartment count once
    return (n_on >= 2).rename("coexpression_doublet")
