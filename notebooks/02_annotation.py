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
# # 02 · Cell-type annotation and composition
#
# Annotation from the committed marker table (`data/markers.yaml`: markers chosen from published marrow and blood
# atlases, each with its source, independent of the simulator). Every cell gets decoupler's univariate linear model
# (ULM) score for each compartment programme, smoothed over its neighbours; Leiden over-clusters then take the label
# of their majority when the cluster as a whole carries that programme (celltypist-style majority voting), other
# cells keep their own label only when it is convincing, and cells without a convincing label are **unassigned**
# (counted and reported, excluded from every finding). Subsets are labelled the same way within each compartment.
# A cell is a plasma cell only with positive evidence: several plasma-specific genes *and* an immunoglobulin load
# of at least 10% of its UMIs. CD56dim NK cells are split into CD54 (ICAM1) bright and dim only when their own
# ICAM1 counts show two states (negative-binomial mixture against one state, BIC); otherwise they stay
# `NK_CD56dim` and the split is reported as not separable. Plasma cells are malignant only in patients whose plasma
# cells show a clone (light-chain restriction or a CNV clone by binomial tests; infercnvpy against T/NK/myeloid
# cells, genes placed by the committed GRCh38 table). Composition: per-patient cell-type fractions, CR vs NR with a
# logit-proportion rank test and BH FDR.
#
# With the dask engine (`analysis: {engine: dask}`) what each cell shows on its own (marker scores, plasma evidence,
# light chains, copy-number profiles against one reference) is measured shard by shard and only the decisions that
# need every cell run here, with the same result; notebooks 03-08 then read counts summed per sample and cell type.
#
# Outputs: `data/processed/<cohort>/annotated.h5ad` (read by notebooks 03-08; with the dask engine cells x 0 genes
# and `cell_groups.h5ad`, the counts summed per sample, compartment and cell type), `results/<cohort>/findings/02.json`,
# `results/<cohort>/tables/02_*.csv`, figures `02_celltypes`, `02_markers`, `02_composition`, `02_confusion`.

# %% tags=["parameters"]
cohort = "ifm2017_sim"  # a folder under data/cohorts/
root = None  # the project root; None finds it from the working directory (or $DR_ROOT)
seed = None  # None: the cohort's seed (cohort.yaml); a number reruns with another seed
min_light_chain_restriction = 0.75
dask_scheduler = ""  # with the dask engine: a Dask scheduler address, or empty for a LocalCluster here

# %%
import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

from helpers.analysis import composition
from helpers.annotation import cell_types, malignant
from helpers.data.cohort import load_cohort
from helpers.io import save_figure, write_h5ad, write_json, write_table
from helpers.preprocessing import per_sample
from helpers.report import plots
from helpers.validation.truth import annotation_against_truth, has_truth

C = load_cohort(cohort, root=root)
seed = C.seed if seed is None else seed
adata = ad.read_h5ad(C.processed_dir / "integrated.h5ad")  # with the dask engine: cells x 0 genes, values in shards
markers = cell_types.load_markers()
graph = adata.obsp["connectivities"]
engine = "dask" if per_sample.is_sharded(adata) else "memory"
client = per_sample.open_client(adata, C.analysis("dask_scheduler", dask_scheduler))  # None in memory
print("engine:", engine)

# %% [markdown]
# ## Compartments and subsets

# %%
# what each cell shows on its own (per sample with the dask engine), then the decisions that need every cell
calls, cell_evidence = per_sample.annotate(adata, graph, C.processed_dir, client, markers, seed=seed)
compartment, cell_type = calls["compartment"], calls["cell_type"].copy()
nk_cd54_split = calls.attrs["nk_cd54_split"]
adata.obs["compartment"] = compartment.astype("category")
evidence = calls.columns.drop(["compartment", "cell_type"])  # scores, plasma evidence, over-cluster: kept per cell
adata.obs = adata.obs.join(calls[evidence])
print("NK CD54 split:", nk_cd54_split)
pd.crosstab(cell_type, adata.obs["tissue"])

# %% [markdown]
# ## Malignant vs normal plasma cells: light-chain restriction and inferred copy number

# %%
is_plasma = (compartment == "plasma").to_numpy()
is_ref = compartment.isin(["T", "NK", "myeloid"]).to_numpy()
calls = None
if is_plasma.sum() >= 10:
    cnv_adata = per_sample.infer_cnv_cells(adata, is_plasma, is_ref, C.processed_dir, client, seed=seed,
                                           dynamic_threshold=malignant.DYNAMIC_THRESHOLD)
    cnv_corr = malignant.cnv_profile_correlation(cnv_adata)
    chains = malignant.light_chain_from_counts(cell_evidence[is_plasma])
    calls = malignant.call_malignant(adata.obs[is_plasma], chains, cnv_corr,
                                    min_restriction=min_light_chain_restriction,
                                    kappa_share=markers["polyclonal_kappa_share"])
    cell_type[is_plasma] = np.where(calls["malignant"], "malignant_PC", "normal_PC")
    per_patient = calls.groupby(adata.obs.loc[is_plasma, "patient_id"].astype(str), observed=True).agg(
        dominant_chain=("dominant_chain", "first"), restriction=("restriction", "first"),
        restricted=("restricted", "first"), cnv_clone=("cnv_clone", "first"),
        n_plasma=("malignant", "size"), n_malignant=("malignant", "sum"))
    write_table(per_patient.reset_index(), C.results_dir / "tables" / "02_plasma_per_patient.csv")
    display(per_patient)
else:
    print(f"{int(is_plasma.sum())} plasma cells: too few to look for a clone; none is called malignant")
for col in ("light_chain", "cnv_corr", "malignant"):
    adata.obs[col] = calls[col].reindex(adata.obs_names) if calls is not None else np.nan
adata.obs["malignant"] = adata.obs["malignant"].fillna(False).astype(bool)
adata.obs["cell_type"] = cell_type.astype("category")
adata.uns["nk_cd54_split"] = nk_cd54_split

# %%
fig = plots.embedding_grid([("UMAP", adata.obsm["X_umap"], adata.obs)], ["compartment", "cell_type"], s=1.0)
save_figure(fig, C.figures_dir, "02_celltypes")

# %%
present = set(cell_type)
order = [t for t in ["malignant_PC", "normal_PC", "NK_CD56dim_CD54bright", "NK_CD56dim_CD54dim", "NK_CD56dim"]
         + [t for comp in markers["subsets"].values() for t in comp if t not in ("plasma", "NK_CD56dim")]
         + ["unassigned"] if t in present]
genes = list(dict.fromkeys([g for t in markers["subsets"].values() for s in t.values() for g in s["markers"][:3]]
                           + ["ICAM1", "IGKC", "IGLC2"]))
shown = per_sample.expression_subsample(adata, genes, C.processed_dir, client, seed=seed)  # (dask: <= 50,000 cells)
shown.obs["cell_type_ordered"] = pd.Categorical(shown.obs["cell_type"].astype(str), categories=order)
dp = sc.pl.dotplot(shown, list(shown.var_names), groupby="cell_type_ordered", return_fig=True, standard_scale="var")
dp.make_figure()
save_figure(dp.fig, C.figures_dir, "02_markers")

# %% [markdown]
# ## Composition per patient, CR vs NR (discovery tissue)
# Fractions of the microenvironment exclude malignant plasma cells (their share varies widely between patients
# and would move every other fraction); the tumour fraction is given over all cells.

# %%
disc = adata.obs[adata.obs["tissue"] == C.discovery_tissue]
fr = composition.patient_fractions(disc, exclude=["malignant_PC", "unassigned"])
fr["malignant_PC (of all cells)"] = composition.patient_fractions(disc)["malignant_PC"] if "malignant_PC" in set(
    disc["cell_type"]) else 0.0
resp = disc.drop_duplicates("patient_id").set_index("patient_id")["response"].astype(str)
comp_stats = composition.composition_test(fr, resp, C.reference_group, C.test_group)
write_table(fr.reset_index(), C.results_dir / "tables" / "02_fractions.csv")
write_table(comp_stats, C.results_dir / "tables" / "02_composition_tests.csv")
fig = plots.composition_figure(fr, resp, comp_stats, C.groups)
save_figure(fig, C.figures_dir, "02_composition")
comp_stats.sort_values("p").head(10)

# %%
if engine == "dask":  # the cells' labels, and counts summed per sample and cell type for notebooks 03-08
    per_sample.write_sharded(adata, per_sample.shard_paths(adata, C.processed_dir), C.processed_dir / "annotated.h5ad")
    groups = per_sample.cell_groups(adata, C.processed_dir, client)
    groups.uns["nk_cd54_split"] = nk_cd54_split
    write_h5ad(groups, C.processed_dir / "cell_groups.h5ad")
else:
    write_h5ad(adata, C.processed_dir / "annotated.h5ad")
per_sample.close_client(client)
n_unassigned = int((adata.obs["cell_type"] == "unassigned").sum())
findings = {
    "n_cells": int(adata.n_obs),
    "cell_type_counts": adata.obs["cell_type"].value_counts().to_dict(),
    "compartment_counts": adata.obs["compartment"].value_counts().to_dict(),
    "n_unassigned": n_unassigned,
    "unassigned_fraction": n_unassigned / adata.n_obs,
    "plasma_fraction": float(is_plasma.mean()),
    "n_malignant": int((adata.obs["cell_type"] == "malignant_PC").sum()),
    "nk_cd54_split": nk_cd54_split,
    "composition": {r.cell_type: {"effect": r.effect, "ci_low": r.ci_low, "ci_high": r.ci_high, "p": r.p, "q": r.q,
                                  "scale": "logit fraction, NR minus CR (Hodges-Lehmann)"}
                    for r in comp_stats.itertuples() if pd.notna(getattr(r, "p", np.nan))},
    "n_composition_q_below_0.05": int((comp_stats["q"] < 0.05).sum()),
}

# %% [markdown]
# ## Measured against the simulated truth (simulated cohorts only)
# Good cells kept by QC; goals: compartment accuracy at least 0.95, subset macro F1 at least 0.85.

# %%
if has_truth(adata.obs):
    good = adata.obs["truth_quality"].astype(str) == "good"
    o = adata.obs[good]
    summary, per_type, conf = annotation_against_truth(o["truth_cell_type"], o["truth_compartment"],
                                                       o["cell_type"], o["compartment"])
    findings.update(summary)
    write_table(per_type, C.results_dir / "tables" / "02_annotation_per_type.csv")
    write_table(conf.reset_index(), C.results_dir / "tables" / "02_confusion.csv")
    fig = plots.confusion_figure(conf, f"annotation vs truth (macro F1 {summary['subset_macro_f1']:.2f})")
    save_figure(fig, C.figures_dir, "02_confusion")
    display(per_type.round(3))
write_json(findings, C.results_dir / "findings" / "02.json")

# %% [markdown]
# ## Conclusion

# %%
from IPython.display import Markdown

split = findings["nk_cd54_split"]
text = (f"{adata.obs['cell_type'].nunique()} cell types annotated in {findings['n_cells']:,} cells; "
        f"{findings['n_unassigned']:,} ({findings['unassigned_fraction']:.1%}) have no convincing label and are left "
        f"unassigned. Plasma cells: {findings['plasma_fraction']:.2%} of cells, {findings['n_malignant']:,} called "
        f"malignant. NK CD54 split: " + ("two ICAM1 states" if split["separable"] else f"not separable ({split['reason']})")
        + f". {findings['n_composition_q_below_0.05']} cell-type fractions differ between {C.test_group} and "
        f"{C.reference_group} at q < 0.05 (patient-level logit-proportion rank test, BH).")
if "subset_macro_f1" in findings:
    text += (f" Against the planted truth: compartment accuracy {findings['compartment_accuracy']:.3f}, subset macro F1 "
             f"{findings['subset_macro_f1']:.3f} over {findings['n_cells_evaluated']:,} good cells.")
Markdown(text)
