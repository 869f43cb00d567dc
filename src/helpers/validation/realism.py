"""How hard a simulated cohort is, measured against real cells with one recipe (the realism test and notebook 00).

The recipe (silhouette of the true labels) follows the issue that measured it first: blood cells of a cohort against
real PBMC (scanpy's bundled ``pbmc68k_reduced``, 700 cells with ``bulk_labels``), restricted to the genes both
measure and to six coarse types in the reference's numbers, log-normalised, scaled, 20 principal components. The
higher the silhouette, the more separable the types; a simulator whose cell types are easier to tell apart than
real ones flatters every annotation and finding built on them.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from sklearn.metrics import silhouette_score

from helpers.preprocessing.normalise import lognorm_matrix

# pbmc68k_reduced's bulk_labels -> coarse type (CD34+ progenitors are left out: blood cohorts hold none)
REFERENCE_COARSE = {
    "CD14+ Monocyte": "monocyte", "Dendritic": "DC", "CD19+ B": "B",
    "CD4+/CD25 T Reg": "CD4 T", "CD4+/CD45RA+/CD25- Naive T": "CD4 T", "CD4+/CD45RO+ Memory": "CD4 T",
    "CD8+ Cytotoxic T": "CD8 T", "CD8+/CD45RA+ Naive Cytotoxic": "CD8 T", "CD56+ NK": "NK",
}
# the simulator's cell types -> the same coarse types (types with no counterpart, e.g. gamma-delta T, are left out)
SIMULATED_COARSE = {
    "mono_classical": "monocyte", "mono_nonclassical": "monocyte", "mono_IFN": "monocyte",
    "cDC": "DC", "pDC": "DC", "B": "B",
    "CD4_naive": "CD4 T", "CD4_memory": "CD4 T", "CD4_effector": "CD4 T", "Treg": "CD4 T",
    "CD8_naive": "CD8 T", "CD8_memory": "CD8 T", "CD8_effector": "CD8 T",
    "NK_CD56bright": "NK", "NK_CD56dim_CD54bright": "NK", "NK_CD56dim_CD54dim": "NK",
}


def reference_pbmc() -> ad.AnnData:
    """pbmc68k_reduced's log-normalised genes (``raw``) with a ``coarse`` label, CD34+ cells removed."""
    ref = sc.datasets.pbmc68k_reduced()
    out = ad.AnnData(X=sp.csr_matrix(ref.raw.X), obs=ref.obs[["bulk_labels"]].copy(),
                     var=pd.DataFrame(index=ref.raw.var_names))
    out.obs["coarse"] = out.obs["bulk_labels"].astype(str).map(REFERENCE_COARSE)
    return out[out.obs["coarse"].notna()].copy()


def label_silhouette(X: np.ndarray | sp.spmatrix, labels: np.ndarray, n_pcs: int = 20, seed: int = 0) -> float:
    """Silhouette of ``labels`` in the first ``n_pcs`` principal components of log-normalised ``X``, scaled per gene."""
    a = ad.AnnData(X=sp.csr_matrix(X, dtype=np.float32))
    sc.pp.scale(a, max_value=10)
    sc.pp.pca(a, n_comps=n_pcs, random_state=seed)
    return float(silhouette_score(a.obsm["X_pca"], np.asarray(labels)))


def matched_simulated_cells(sim: ad.AnnData, reference: ad.AnnData, seed: int = 0, tissue: str = "PB",
                            label: str = "truth_cell_type", quality: str | None = "truth_quality") -> ad.AnnData:
    """Cells of ``sim`` (raw counts) drawn to the reference's coarse-type numbers, log-normalised (CP10k on all
    genes, then log1p) and restricted to the genes both share. Raises ValueError naming the coarse type when the
    simulated cohort has too few cells of it."""
    obs = sim.obs
    keep = (obs["tissue"].astype(str) == tissue).to_numpy() if "tissue" in obs else np.ones(sim.n_obs, bool)
    if quality is not None and quality in obs:
        keep &= (obs[quality].astype(str) == "good").to_numpy()
    coarse = obs[label].astype(str).map(SIMULATED_COARSE)
    keep &= coarse.notna().to_numpy()
    rng = np.random.default_rng(seed)
    wanted = reference.obs["coarse"].value_counts()
    picks = []
    for ctype, n in wanted.items():
        pool = np.where(keep & (coarse == ctype).to_numpy())[0]
        if len(pool) < n:
            raise ValueError(f"only {len(pool)} good {tissue} cells of coarse type '{ctype}' in the simulated cohort "
                             f"(the reference has {n})")
        picks.append(np.sort(rng.choice(pool, size=n, replace=False)))
    idx = np.concatenate(picks)
    sub = ad.AnnData(X=sp.csr_matrix(sim.X[idx], dtype=np.float32), obs=pd.DataFrame(
        {"coarse": coarse.to_numpy()[idx]}, index=sim.obs_names[idx]), var=pd.DataFrame(index=sim.var_names))
    sub.X = lognorm_matrix(sub)  # raw counts in X: the compendium's one normalisation
    shared = [g for g in reference.var_names if g in set(sub.var_names)]
    return sub[:, shared].copy()


def silhouette_against_reference(sim: ad.AnnData, seed: int = 0, n_pcs: int = 20) -> dict[str, float | int]:
    """The silhouette of the true coarse labels in simulated blood cells and in the real reference, measured the
    same way on the genes both share (see the module text); also the zero fraction of both on those genes."""
    reference = reference_pbmc()
    sim_cells = matched_simulated_cells(sim, reference, seed=seed)
    genes = list(sim_cells.var_names)
    ref = reference[:, genes]
    s_sim = label_silhouette(sim_cells.X, sim_cells.obs["coarse"].to_numpy(), n_pcs, seed)
    s_ref = label_silhouette(ref.X, ref.obs["coarse"].to_numpy(), n_pcs, seed)
    return {"silhouette_simulated": round(s_sim, 4), "silhouette_reference": round(s_ref, 4),
            "difference": round(s_sim - s_ref, 4), "n_cells": int(sim_cells.n_obs), "n_genes": len(genes),
            "zero_fraction_simulated": round(float(1 - sim_cells.X.nnz / np.prod(sim_cells.shape)), 4),
            "zero_fraction_reference": round(float(1 - sp.csr_matrix(ref.X).nnz / np.prod(ref.shape)), 4)}

