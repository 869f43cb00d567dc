"""Pseudobulk: summed raw counts per patient (and cell type), the unit of every CR-vs-NR comparison."""

from __future__ import annotations

from typing import Iterable

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from helpers.preprocessing.normalise import counts_matrix

PATIENT_COLUMNS = ["patient_id", "sample_id", "response", "tissue", "batch", "age"]


def sum_rows_by_key(X: sp.spmatrix, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum the rows (cells) of ``X`` sharing a key: (sorted unique keys, keys x columns dense sums, rows per key)."""
    uniq, inv = np.unique(np.asarray(keys), return_inverse=True)
    M = sp.csr_matrix((np.ones(len(inv)), (inv, np.arange(len(inv)))), shape=(len(uniq), len(inv)))
    return uniq, np.asarray((M @ sp.csr_matrix(X)).todense()), np.bincount(inv, minlength=len(uniq))


CELL_GROUPS = "cell_groups"  # uns key of a cell-group pseudobulk (:func:`group_pseudobulk`)
GROUP_KEYS = ["sample_id", "compartment", "cell_type"]


def is_cell_groups(adata: ad.AnnData) -> bool:
    """Whether ``adata`` holds cell groups (summed counts per sample and cell type, :func:`group_pseudobulk`)
    rather than cells. Every pseudobulk of this module gives the same result from either."""
    return CELL_GROUPS in adata.uns


def group_pseudobulk(adata: ad.AnnData, keys: list[str] | None = None, layer: str = "counts") -> ad.AnnData:
    """The cells of ``adata`` summed per group of ``keys`` (default: sample, compartment, cell type): X = summed raw
    counts (CSR), ``layers['n_expressing']`` = cells with at least one count of the gene, obs = the keys, the
    patient-level design columns and ``n_cells``; ``uns['cell_groups']`` marks it. A cohort's table is the
    concatenation of its samples' tables (:func:`helpers.preprocessing.per_sample.group_pseudobulk_by_sample`),
    and :func:`pseudobulk_by_patient` / :func:`gene_per_patient` give from it what they give from the cells."""
    keys = list(keys or GROUP_KEYS)
    obs = adata.obs
    missing = [k for k in keys if k not in obs]
    if missing:
        raise KeyError(f"obs column(s) {missing} not found: needed to group cells")
    label = obs[keys].astype(str).agg("\t".join, axis=1).to_numpy()
    X = counts_matrix(adata, layer)
    uniq, summed, n_cells = sum_rows_by_key(X, label)
    _, expressing, _ = sum_rows_by_key((X > 0).astype(np.float64), label)
    cols = keys + [c for c in PATIENT_COLUMNS if c in obs.columns and c not in keys]
    meta = obs[cols].astype({c: str for c in cols if c != "age"}).copy()
    meta.index = label
    meta = meta[~meta.index.duplicated()].reindex(uniq)
    meta["n_cells"] = n_cells
    meta.index = pd.Index(uniq).str.replace("\t", "|")
    out = ad.AnnData(X=sp.csr_matrix(summed), obs=meta, var=pd.DataFrame(index=adata.var_names))
    out.layers["n_expressing"] = sp.csr_matrix(expressing.astype(np.float32))
    out.uns[CELL_GROUPS] = {"keys": keys}
    return out


def n_cells_of(adata: ad.AnnData, mask: np.ndarray | None = None) -> int:
    """Cells in the rows of ``adata`` selected by ``mask`` (all rows when None): rows of a cell matrix, the summed
    ``n_cells`` of cell groups."""
    m = np.ones(adata.n_obs, bool) if mask is None else np.asarray(mask, bool)
    return int(adata.obs["n_cells"].to_numpy()[m].sum()) if is_cell_groups(adata) else int(m.sum())


def pseudobulk_by_patient(adata: ad.AnnData, cell_types: list[str] | None = None, label: str = "cell_type",
                          tissue: str | None = None, min_cells: int = 10, layer: str = "counts",
                          patient: str = "patient_id") -> ad.AnnData:
    """Sum raw counts of the cells of ``cell_types`` (all cells when None) per patient; ``adata`` holds cells or
    cell groups (:func:`group_pseudobulk`).

    Patients with fewer than ``min_cells`` such cells are dropped (their pseudobulk would be noise). Returns a
    patients x genes AnnData of integer counts with obs: the patient-level design columns and ``n_cells``."""
    obs = adata.obs
    mask = np.ones(adata.n_obs, bool)
    if tissue is not None:
        mask &= (obs["tissue"].astype(str) == tissue).to_numpy()
    if cell_types is not None:
        missing = set(cell_types) - set(obs[label].astype(str))
        if len(missing) == len(set(cell_types)):
            raise ValueError(f"none of the cell types {sorted(cell_types)} is in obs['{label}']")
        mask &= obs[label].astype(str).isin(cell_types).to_numpy()
    X = counts_matrix(adata, layer)[mask]
    pid = obs.loc[mask, patient].astype(str).to_numpy()
    pats, summed, n_rows = sum_rows_by_key(X, pid)
    n_cells = (np.bincount(np.searchsorted(pats, pid), weights=obs.loc[mask, "n_cells"].to_numpy(float),
                           minlength=len(pats)).astype(int) if is_cell_groups(adata) else n_rows)
    cols = [c for c in PATIENT_COLUMNS if c in obs.columns]
    meta = obs.loc[mask, cols].astype({c: str for c in cols if c != "age"}).copy()
    meta[patient] = pid
    meta = meta.drop_duplicates(patient).set_index(patient).reindex(pats)
    meta["n_cells"] = n_cells
    meta.index.name = None
    meta.insert(0, patient, pats)
    keep = n_cells >= min_cells
    pb = ad.AnnData(X=summed[keep].astype(np.float64), obs=meta[keep].copy(), var=pd.DataFrame(index=adata.var_names))
    pb.obs_names = pats[keep]
    return pb


def log_cpm(pb: ad.AnnData, prior: float = 1.0) -> pd.DataFrame:
    """log2(counts per million + prior) of a pseudobulk (or a bulk cohort; dense or sparse), samples x genes."""
    X = pb.X.toarray() if sp.issparse(pb.X) else np.asarray(pb.X)
    X = X.astype(float)
    lib = X.sum(1, keepdims=True)
    return pd.DataFrame(np.log2(X / np.maximum(lib, 1) * 1e6 + prior), index=pb.obs_names, columns=pb.var_names)


def set_score(logcpm: pd.DataFrame, genes: list[str], min_genes: int = 5, min_mean: float = 1.0) -> pd.Series:
    """Per-patient gene-set score: mean over the set's expressed genes of the gene's z-score across patients
    (genes with mean log2 CPM below ``min_mean`` are left out as unmeasured)."""
    present = [g for g in dict.fromkeys(genes) if g in logcpm.columns]
    L = logcpm[present]
    L = L.loc[:, L.mean() >= min_mean]
    if L.shape[1] < min_genes:
        raise ValueError(f"only {L.shape[1]} genes of the set are expressed (need {min_genes}); "
                         f"set of {len(genes)} genes, {len(present)} in the data")
    sd = L.std(ddof=1).replace(0, np.nan)
    Z = (L - L.mean()) / sd
    return Z.mean(1, skipna=True).rename("score")


PROGENY_MIN_TARGETS = 5  # decoupler's tmin: with fewer expressed (mean log2 CPM >= 1) targets, no activity


def progeny_activity(logcpm: pd.DataFrame, pathway: str = "NFkB", top: int = 100,
                     exclude: Iterable[str] = ()) -> pd.Series:
    """PROGENy pathway activity per patient: decoupler's univariate linear model (ULM) of the patient's
    gene-wise z-scored log CPM on the committed PROGENy weights (no download); targets in ``exclude`` are left out
    (a specificity control: the activity without genes another programme shares)."""
    import decoupler as dc

    from helpers.data.genesets import progeny_weights

    if len(logcpm) < 3:
        raise ValueError(f"PROGENy {pathway} activity needs at least 3 samples (got {len(logcpm)}): genes are "
                         "z-scored across samples")
    net = progeny_weights(top)
    net = net[(net["source"] == pathway) & ~net["target"].isin(set(exclude))]
    L = logcpm.loc[:, logcpm.mean() >= 1.0]
    n_targets = int(L.columns.isin(net["target"]).sum())
    if n_targets < PROGENY_MIN_TARGETS:
        raise ValueError(f"only {n_targets} of its target genes are expressed (need {PROGENY_MIN_TARGETS})")
    Z = (L - L.mean()) / L.std(ddof=1).replace(0, np.nan)
    Z = Z.fillna(0.0)
    es, _ = dc.mt.ulm(Z, net, tmin=PROGENY_MIN_TARGETS)
    return es[pathway].rename(f"progeny_{pathway}")


def gene_per_patient(adata: ad.AnnData, cell_types: list[str], gene: str, min_cells: int = 10,
                     layer: str = "counts") -> pd.DataFrame:
    """One gene per patient in ``cell_types`` (cells or cell groups): pseudobulk log2 CPM, fraction of cells with
    >= 1 count, n cells."""
    if gene not in adata.var_names:
        raise KeyError(f"gene {gene} is not in the data")
    pb = pseudobulk_by_patient(adata, cell_types, min_cells=min_cells, layer=layer)
    L = log_cpm(pb)[gene]
    m = adata.obs["cell_type"].astype(str).isin(cell_types).to_numpy()
    pid = adata.obs["patient_id"].astype(str).to_numpy()[m]
    j = adata.var_names.get_loc(gene)
    if is_cell_groups(adata):
        pos = np.asarray(sp.csr_matrix(adata.layers["n_expressing"])[m][:, j].todense()).ravel()
        cells = adata.obs["n_cells"].to_numpy(float)[m]
        frac = pd.Series(pos).groupby(pid).sum() / pd.Series(cells).groupby(pid).sum()
    else:
        X = counts_matrix(adata[m], layer)[:, j]
        frac = pd.Series(np.asarray(X.todense()).ravel() > 0).groupby(pid).mean()
    return pd.DataFrame({"patient_id": pb.obs_names, "response": pb.obs["response"].to_numpy(),
                         "n_cells": pb.obs["n_cells"].to_numpy(), "log2_cpm": L.to_numpy(),
                         "fraction_positive": frac.reindex(pb.obs_names).to_numpy()})
