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
# # 00 · The cohort
#
# Builds the cohort named by the `cohort` parameter into `data/processed/<cohort>/cells.h5ad`: the simulator
# for a simulated cohort (the embedded default `ifm2017_sim`: an IFM2017-03-like design with the study's effects
# planted at known strength), or the ingest of a real cohort's count files listed in its `samples.csv`.
# It then shows the design: samples per response and tissue, cells per sample, library sizes, and for a
# simulated cohort the planted effects with their per-patient draws.
#
# Outputs: `data/processed/<cohort>/cells.h5ad` (+ `truth.json`, `bulk.h5ad`, `flow_cytometry.csv` for a
# simulated cohort), `results/<cohort>/findings/00.json`, `figures/<cohort>/00_design.{png,pdf}`. A cohort simulated
# with the dask engine keeps each sample's counts in `data/processed/<cohort>/samples/<sample>.h5ad` and
# `cells.h5ad` names them (its cells' obs and var, no values: `helpers.io.index_h5ad_rows`).

# %% tags=["parameters"]
cohort = "ifm2017_sim"  # a folder under data/cohorts/
root = None  # the project root; None finds it from the working directory (or $DR_ROOT)
n_jobs = 2
engine = "memory"  # or "dask": built sample by sample on disk (a real cohort ingested, a simulated one drawn)
dask_scheduler = ""  # a Dask scheduler address, or empty for a LocalCluster here

# %%
import time

import anndata as ad
import numpy as np

from helpers.data.cohort import load_cohort
from helpers.data.describe import (
    batch_response_association,
    design_table,
    patients_per_group,
    per_sample_summary,
)
from helpers.data.ingest import prepare_cohort
from helpers.data.simulate import build_simulated_cohort_by_sample
from helpers.io import read_annotations, read_json, save_figure, write_json, write_table
from helpers.preprocessing import per_sample
from helpers.report import plots

C = load_cohort(cohort, root=root)
C.make_dirs()
engine = C.analysis("engine", engine)
print(C.name, C.kind, "-", C.config.get("description", ""))
display(design_table(C.samples))
confounding = batch_response_association(C.samples)  # Fisher exact + Cramér's V per tissue
for r in confounding[confounding["confounded"]].itertuples():
    print(f"WARNING: in {r.tissue}, batch and response are associated (Cramér's V {r.cramers_v:.2f}, p = {r.p:.2g}): "
          "a batch effect can pass for a response effect; read classifier and DE results of that tissue with care")
confounding

# %% [markdown]
# ## Build (simulate or ingest)

# %%
t0 = time.time()
if engine == "dask" and C.kind == "real":  # one Dask task per sample; cells.h5ad assembled on disk
    with per_sample.dask_client(C.analysis("dask_scheduler", dask_scheduler) or None) as client:
        paths, summary = per_sample.ingest_by_sample(C, client)
    adata = read_annotations(paths["cells"])  # shape and labels, no matrix
elif engine == "dask":  # simulated sample by sample into per-sample files (samples/), which cells.h5ad names
    paths, summary = build_simulated_cohort_by_sample(C, n_jobs=n_jobs)
    adata = read_annotations(paths["cells"])  # shape and labels, no matrix
else:
    paths = prepare_cohort(C, n_jobs=n_jobs)
    adata = ad.read_h5ad(paths["cells"])
    summary = per_sample_summary(adata)
build_seconds = time.time() - t0
print(f"built in {build_seconds:.0f} s:", adata)

# %%
write_table(summary, C.results_dir / "tables" / "00_per_sample.csv")
summary

# %% [markdown]
# ## Design figure
# Cells and median UMIs per sample, coloured by response; for a simulated cohort, the planted effects'
# per-patient activations (log2 fold change drawn for each patient; NR centred on the configured strength).

# %%
truth = read_json(C.processed_dir / "truth.json") if C.kind == "simulated" else None
fig = plots.design_figure(summary, truth, groups=C.groups)
save_figure(fig, C.figures_dir, "00_design")

# %%
disc = summary[summary["tissue"] == C.discovery_tissue]
findings = {
    "cohort": C.name,
    "kind": C.kind,
    "n_samples": int(len(summary)),
    "n_cells": int(adata.n_obs),
    "n_genes": int(adata.n_vars),
    "n_patients": patients_per_group(C.samples, C.groups),
    "median_umis_per_cell": float(np.median(summary["median_umis"])),
    "median_cells_per_sample": float(np.median(summary["n_cells"])),
    "cells_per_sample_range": [int(summary["n_cells"].min()), int(summary["n_cells"].max())],
    "batch_response_association": confounding.to_dict("records"),
}
if truth is not None:
    findings["matrix_sha256"] = truth["matrix_sha256"]
    findings["planted_strength_log2"] = {k: v["strength_log2"] for k, v in truth["effects"].items()}
write_json(findings, C.results_dir / "findings" / "00.json")
write_json({"build_seconds": round(build_seconds, 1)}, C.results_dir / "timings" / "00_build.json")
findings

# %% [markdown]
# ## Conclusion

# %%
from IPython.display import Markdown

nb = findings["n_patients"][C.discovery_tissue]
Markdown(
    f"Cohort **{C.name}** ({C.kind}): {findings['n_samples']} samples, {findings['n_cells']:,} cells, "
    f"{findings['n_genes']:,} genes. Discovery tissue {C.discovery_tissue}: "
    + ", ".join(f"{v} {k}" for k, v in nb.items())
    + f" patients. Median cells per sample {findings['median_cells_per_sample']:.0f} "
    f"(range {findings['cells_per_sample_range'][0]}-{findings['cells_per_sample_range'][1]}), median UMIs per cell "
    f"{findings['median_umis_per_cell']:.0f}."
)
