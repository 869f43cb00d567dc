# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Quality control and integration
#
# Per-sample QC with data-driven thresholds (median absolute deviations of log UMIs, log genes and mito %),
# doublets called per sample by Scrublet and by co-expression of two lineage programmes, normalisation (raw
# counts kept in `layers['counts']`), highly variable genes on counts with the sample as batch (Seurat v3),
# PCA, Harmony on the **sample** (never on the response), neighbours, Leiden and UMAP, all seeded.
#
# Integration only changes the embedding used for clustering and annotation; every CR-vs-NR statistic of
# the later notebooks is computed from raw counts per patient, so integration cannot erase a response effect.
#
# Outputs: `data/processed/<cohort>/integrated.h5ad` (with the dask engine: cells x 0 genes, naming each sample's shard in
# `data/processed/<cohort>/shards/`), `results/<cohort>/findings/01.json`,
# `figures/<cohort>/01_qc.*`, `figures/<cohort>/01_umap.*`.

# %% tags=["parameters"]
cohort = "ifm2017_sim"  # a folder under data/cohorts/
root = None  # the project root; None finds it from the working directory (or $DR_ROOT)
seed = None  # None: the cohort's seed (cohort.yaml); a number reruns with another seed
qc_nmads = 3.0
n_hvg = 2000
n_pcs = 50
leiden_resolution = 1.0
engine = "memory"  # or "dask" to run the per-sample steps sample by sample (helpers.preprocessing.per_sample)
dask_scheduler = ""  # a Dask scheduler address, or empty for a LocalCluster here

# %%
import anndata as ad
import numpy as np
import pandas as pd

from helpers.data.cohort import load_cohort
from helpers.io import read_cohort_cells, save_figure, write_h5ad, write_json, write_table
from helpers.preprocessing import integrate, per_sample
from helpers.preprocessing.normalise import normalize_log
from helpers.preprocessing.qc import qc_filter
from helpers.report import plots
from helpers.validation.truth import has_truth, qc_against_truth

C = load_cohort(cohort, root=root)
seed = C.seed if seed is None else seed
engine = C.analysis("engine", engine)
nmads = C.analysis("qc_nmads", qc_nmads)
print("engine:", engine)

# %% [markdown]
# ## Quality control

# %%
if engine == "dask":  # QC, doublets, normalisation, HVG statistics and PCA as one Dask task per sample
    with per_sample.dask_client(C.analysis("dask_scheduler", dask_scheduler) or None) as client:
        pre = per_sample.preprocess_by_sample(C, C.processed_dir / "shards", client, seed=seed, nmads=nmads,
                                              n_hvg=n_hvg, n_pcs=n_pcs)
    kept, qc_table, thresholds, hvg, obs_in = pre.embedding, pre.table, pre.thresholds, pre.hvg, pre.obs_in
else:  # the whole cohort in memory
    adata = read_cohort_cells(C.processed_dir / "cells.h5ad")  # (or the per-sample files it names)
    print(adata)
    kept, qc_table, thresholds = qc_filter(adata, seed=seed, nmads=nmads)
    obs_in = adata.obs
write_table(thresholds.reset_index(), C.results_dir / "tables" / "01_qc_thresholds.csv")
fig = plots.qc_figure(qc_table, thresholds)
save_figure(fig, C.figures_dir, "01_qc")
thresholds.describe().round(1)

# %%
removed = pd.Series({
    "failed thresholds": int((~qc_table["qc_pass"]).sum()),
    "Scrublet doublet": int(qc_table["predicted_doublet"].sum()),
    "lineage co-expression doublet": int(qc_table["coexpression_doublet"].sum()),
    "kept": int(qc_table["keep"].sum()),
})
removed

# %% [markdown]
# ## Normalisation, HVGs, PCA, Harmony on the sample, neighbours, Leiden, UMAP

# %%
if engine != "dask":  # (the per-sample path has done these steps already)
    normalize_log(kept)
    hvg = integrate.select_hvg(kept, n_top=n_hvg, batch_key="sample_id")
    integrate.run_pca(kept, n_comps=n_pcs, seed=seed)
integrate.harmony(kept, key="sample_id", seed=seed)
integrate.embed(kept, use_rep="X_pca_harmony", seed=seed, resolution=leiden_resolution)
print(kept.obs["leiden"].nunique(), "Leiden clusters")

# %% [markdown]
# ## What integration did
# Sample mixing: mean normalised entropy of sample labels among each cell's 30 nearest neighbours
# (0 = neighbours from one sample, 1 = fully mixed). Structure: share of each cell's neighbours in its own
# Leiden cluster, before and after Harmony. Both on a seeded subsample of 10,000 cells.

# %%
mix = {}
for name, rep in (("before", "X_pca"), ("after", "X_pca_harmony")):
    X = kept.obsm[rep]
    mix[name] = {
        "sample_entropy": integrate.knn_label_entropy(X, kept.obs["sample_id"], seed=seed),
        "cluster_purity": integrate.knn_label_purity(X, kept.obs["leiden"], seed=seed),
    }
pd.DataFrame(mix).round(3)

# %%
# 'before' UMAP on a seeded subsample (a second full neighbour graph would double the run time)
rng = np.random.default_rng(seed)
idx = np.sort(rng.choice(kept.n_obs, size=min(15000, kept.n_obs), replace=False))
before = ad.AnnData(obs=kept.obs.iloc[idx][["sample_id", "batch", "response", "leiden"]].copy())
before.obsm["X_pca"] = kept.obsm["X_pca"][idx]
integrate.embed(before, use_rep="X_pca", seed=seed, resolution=leiden_resolution, key_added="leiden_before")
keys = ["sample_id", "batch", "response", "leiden"]
fig = plots.embedding_grid(
    [("before (PCA)", before.obsm["X_umap"], before.obs), ("after (Harmony)", kept.obsm["X_umap"][idx], kept.obs.iloc[idx])],
    keys, groups_palette=plots.palette(C.groups), s=1.5)
save_figure(fig, C.figures_dir, "01_umap")

# %%
if engine == "dask":  # obs, embedding and graph; each sample's counts and log-normalised values stay in its shard
    per_sample.write_sharded(kept, pre.shards, C.processed_dir / "integrated.h5ad")
else:
    write_h5ad(kept, C.processed_dir / "integrated.h5ad")
findings = {
    "engine": engine,
    "n_cells_in": int(len(obs_in)),
    "n_cells_kept": int(kept.n_obs),
    "n_removed": {k: v for k, v in removed.items() if k != "kept"},
    "n_hvg": int(len(hvg)),
    "n_clusters": int(kept.obs["leiden"].nunique()),
    "sample_entropy_before": mix["before"]["sample_entropy"],
    "sample_entropy_after": mix["after"]["sample_entropy"],
    "cluster_purity_before": mix["before"]["cluster_purity"],
    "cluster_purity_after": mix["after"]["cluster_purity"],
}

# %% [markdown]
# ## Measured against the simulated truth (simulated cohorts only)
# Planted low-quality cells and heterotypic doublets should be removed (goal at least 0.80 of them) while
# good cells are kept (goal at least 0.95).

# %%
if has_truth(obs_in):
    findings.update(qc_against_truth(obs_in["truth_quality"], qc_table["keep"]))
write_json(findings, C.results_dir / "findings" / "01.json")
findings

# %% [markdown]
# ## Conclusion

# %%
from IPython.display import Markdown

text = (f"QC kept {findings['n_cells_kept']:,} of {findings['n_cells_in']:,} cells. Harmony on the sample raised the "
        f"neighbourhood sample entropy from {findings['sample_entropy_before']:.2f} to {findings['sample_entropy_after']:.2f} "
        f"while {findings['cluster_purity_after']:.0%} of each cell's neighbours stay in its Leiden cluster "
        f"({findings['cluster_purity_before']:.0%} before).")
if "junk_removed_fraction" in findings:
    text += (f" Against the planted truth, {findings['junk_removed_fraction']:.1%} of low-quality cells and doublets were "
             f"removed ({findings['low_quality_removed_fraction']:.1%} and {findings['doublet_removed_fraction']:.1%}) and "
             f"{findings['good_kept_fraction']:.1%} of good cells kept.")
Markdown(text)
