"""Malignant vs normal plasma cells: light-chain restriction and inferred copy number (infercnvpy)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from helpers.data.genesets import gene_positions


# ----------------------------------------------------------------------------------------------------
# malignant vs normal plasma cells
# ----------------------------------------------------------------------------------------------------
def light_chain_from_counts(counts: pd.DataFrame) -> pd.DataFrame:
    """``counts`` (per cell: ``kappa`` and ``lambda`` constant-region counts, e.g. from
    :func:`helpers.annotation.cell_types.compartment_evidence`) with the call: kappa / lambda / none."""
    df = counts[["kappa", "lambda"]].copy()
    df["light_chain"] = np.where(df.sum(1) == 0, "none", np.where(df["kappa"] >= df["lambda"], "kappa", "lambda"))
    return df


def add_gene_positions(adata: ad.AnnData) -> None:
    """Put GRCh38 chromosome/start/end (data/genesets/gene_positions_grch38.tsv) into adata.var for infercnvpy."""
    pos = gene_positions().reindex(adata.var_names)
    adata.var["chromosome"] = pos["chromosome"].to_numpy()
    adata.var["start"] = pos["start"].to_numpy()
    adata.var["end"] = pos["end"].to_numpy()


DYNAMIC_THRESHOLD = 1.5  # infercnvpy's default: scores within this many SD of zero are noise


def cnv_reference_cells(reference: np.ndarray, query: np.ndarray, seed: int = 0, n_ref_max: int = 3000) -> np.ndarray:
    """Positions of the CNV reference cells: the ``reference`` cells that are not ``query`` cells, a seeded
    subsample of at most ``n_ref_max`` (sorted)."""
    rng = np.random.default_rng(seed)
    ref_idx = np.where(np.asarray(reference) & ~np.asarray(query))[0]
    if len(ref_idx) > n_ref_max:
        ref_idx = np.sort(rng.choice(ref_idx, n_ref_max, replace=False))
    return ref_idx


def positioned_genes(cells: ad.AnnData) -> ad.AnnData:
    """A copy of ``cells`` with the genes the committed GRCh38 table places (chromosome, start, end in var)."""
    placed = gene_positions().reindex(cells.var_names)["chromosome"].notna().to_numpy()
    sub = cells[:, placed].copy()
    add_gene_positions(sub)
    return sub


def cnv_reference_mean(reference: ad.AnnData) -> np.ndarray:
    """The reference's mean log-normalised expression of the placed genes (:func:`positioned_genes`): what
    infercnvpy subtracts from every cell's profile (given once, each sample's cells can be profiled alone)."""
    return np.asarray(positioned_genes(reference).X.mean(axis=0)).reshape(1, -1)


def cnv_profiles(cells: ad.AnnData, window_size: int = 100, reference_mean: np.ndarray | None = None) -> ad.AnnData:
    """infercnvpy (log-normalised X; genes placed by the committed GRCh38 table) of ``cells`` against the mean of
    those with ``obs['cnv_group'] == 'reference'`` (or against ``reference_mean``, :func:`cnv_reference_mean`),
    without the noise threshold: each cell's profile depends on that cell and on the reference's mean only, so the
    profiles of a cohort can be computed sample by sample against one reference
    (:func:`helpers.preprocessing.per_sample.infer_cnv_by_sample`). Returns the placed-gene subset with
    ``obsm['X_cnv']`` (CSR, float32)."""
    import infercnvpy as cnv

    sub = positioned_genes(cells)
    ref = ({"reference": reference_mean} if reference_mean is not None
           else {"reference_key": "cnv_group", "reference_cat": ["reference"]})
    cnv.tl.infercnv(sub, window_size=window_size, n_jobs=1, calculate_gene_values=False, dynamic_threshold=None,
                    **ref)
    sub.obsm["X_cnv"] = sp.csr_matrix(sub.obsm["X_cnv"], dtype=np.float32)
    return sub


def noise_thresholded(X: sp.spmatrix | np.ndarray, dynamic_threshold: float = DYNAMIC_THRESHOLD) -> sp.csr_matrix:
    """CNV scores with those within ``dynamic_threshold`` standard deviations of zero set to 0, the standard
    deviation taken over every score of every analysed cell (infercnvpy takes it per chunk of 5,000 cells, so its
    result would depend on how cells are ordered and split into tasks)."""
    X = sp.csr_matrix(X, dtype=np.float32, copy=True)
    n = X.shape[0] * X.shape[1]
    d = X.data.astype(np.float64)
    sd = np.sqrt(max((d ** 2).sum() / n - (d.sum() / n) ** 2, 0.0))
    X.data[np.abs(X.data) < dynamic_threshold * sd] = 0
    X.eliminate_zeros()
    return X


def infer_cnv(adata: ad.AnnData, query: np.ndarray, reference: np.ndarray, seed: int = 0, n_ref_max: int = 3000,
              window_size: int = 100, dynamic_threshold: float | None = DYNAMIC_THRESHOLD) -> ad.AnnData:
    """infercnvpy on the ``query`` cells (e.g. plasma cells) against ``reference`` cells (T/NK/myeloid, a
    seeded subsample of at most ``n_ref_max``: :func:`cnv_reference_cells`), genes placed by the committed GRCh38
    table (:func:`cnv_profiles`). Returns the subset AnnData with ``obsm['X_cnv']`` and ``obs['cnv_group']``
    (query / reference). ``dynamic_threshold`` (infercnvpy's default) zeroes scores within that many standard
    deviations of the noise (:func:`noise_thresholded`); None keeps them."""
    ref_idx = cnv_reference_cells(reference, query, seed, n_ref_max)
    q_idx = np.where(query)[0]
    sub = adata[np.concatenate([q_idx, ref_idx])].copy()
    sub.obs["cnv_group"] = ["query"] * len(q_idx) + ["reference"] * len(ref_idx)
    sub = cnv_profiles(sub, window_size)
    if dynamic_threshold is not None:
        sub.obsm["X_cnv"] = noise_thresholded(sub.obsm["X_cnv"], dynamic_threshold)
    return sub


def cnv_profile_correlation(cnv_adata: ad.AnnData, patient_key: str = "patient_id") -> pd.DataFrame:
    """Per cell, Pearson correlation of its CNV profile with its patient's consensus query profile (the mean
    over the patient's query cells, dominated by the clone). Reference cells of the same patient give the
    null: ``cut`` is their 95th percentile (or the pooled reference's when a patient has fewer than 20)."""
    X = cnv_adata.obsm["X_cnv"]
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    obs = cnv_adata.obs
    is_q = (obs["cnv_group"] == "query").to_numpy()
    r = np.full(len(obs), np.nan)
    for p in obs[patient_key].astype(str).unique():
        m = (obs[patient_key].astype(str) == p).to_numpy()
        if not (m & is_q).any():
            continue
        prof = X[m & is_q].mean(0)
        prof = prof - prof.mean()
        Xm = X[m] - X[m].mean(1, keepdims=True)
        den = np.linalg.norm(Xm, axis=1) * np.linalg.norm(prof)
        r[m] = np.where(den > 0, Xm @ prof / np.where(den > 0, den, 1), 0.0)
    df = pd.DataFrame({"cnv_corr": r, "cnv_group": obs["cnv_group"].to_numpy(),
                       patient_key: obs[patient_key].astype(str).to_numpy()}, index=obs.index)
    ref = df[df.cnv_group == "reference"]
    pooled = float(np.nanpercentile(ref["cnv_corr"], 95)) if len(ref) else 0.3
    cuts = ref.groupby(patient_key)["cnv_corr"].agg(lambda x: np.nanpercentile(x, 95) if len(x) >= 20 else np.nan)
    df["cut"] = df[patient_key].map(cuts).fillna(pooled)
    return df


def call_malignant(plasma_obs: pd.DataFrame, chains: pd.DataFrame, cnv_corr: pd.DataFrame,
                   patient_key: str = "patient_id", min_restriction: float = 0.75, kappa_share: float = 0.6,
                   alpha: float = 0.01, cnv_null_rate: float = 0.05) -> pd.DataFrame:
    """Malignant vs normal plasma cells per patient, only where the patient's plasma cells show a clone.

    Evidence of a clone, each by a one-sided binomial test at p < ``alpha``: light-chain restriction (the dominant
    chain's share above its polyclonal share, kappa ``kappa_share``, and at least ``min_restriction``), or a CNV
    clone (more plasma cells whose CNV profile correlates with the patient's consensus above the reference cells'
    95th percentile than the ``cnv_null_rate`` expected by chance). Without either, no cell of the patient is
    malignant. With both, malignant = CNV-positive and not of the other chain; with restriction only, the cells of
    the dominant chain; with a CNV clone only, the CNV-positive cells."""
    from scipy.stats import binomtest

    out = []
    for p, idx in plasma_obs.groupby(patient_key, observed=True).groups.items():
        ch = chains.loc[idx, "light_chain"]
        called = ch[ch != "none"]
        dom = called.value_counts().idxmax() if len(called) else "none"
        n_dom = int((called == dom).sum())
        share = n_dom / len(called) if len(called) else 0.0
        expected = kappa_share if dom == "kappa" else 1 - kappa_share
        restricted = bool(len(called) and share >= min_restriction
                          and binomtest(n_dom, len(called), expected, "greater").pvalue < alpha)
        c = cnv_corr.reindex(idx)
        cnv_pos = (c["cnv_corr"] > c["cut"]).to_numpy()
        cnv_clone = bool(binomtest(int(cnv_pos.sum()), len(idx), cnv_null_rate, "greater").pvalue < alpha)
        other = (ch == ("lambda" if dom == "kappa" else "kappa")).to_numpy()
        if restricted and cnv_clone:
            mal = cnv_pos & ~other
        elif restricted:
            mal = (ch == dom).to_numpy()
        elif cnv_clone:
            mal = cnv_pos
        else:
            mal = np.zeros(len(idx), bool)
        out.append(pd.DataFrame({"light_chain": ch, "dominant_chain": dom, "restriction": share,
                                 "restricted": restricted, "cnv_clone": cnv_clone, "cnv_corr": c["cnv_corr"],
                                 "cnv_cut": c["cut"], "malignant": mal}, index=idx))
    return pd.concat(out).loc[plasma_obs.index]
