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
# # 08 · Resistance-mechanism atlas: efflux, epigenetics, DNA repair, therapy targets, microenvironment, clonal heterogeneity
#
# **Question:** beyond the study's findings, which of the mechanisms behind myeloma treatment resistance
# (genetic heterogeneity, protective microenvironment signals, drug-efflux pumps, epigenetic change, therapy
# targets; `../shared/seeds/resistance_overview.txt`) differ between non-responders and complete responders?
#
# Each mechanism is measured per patient, as declared in `data/resistance_atlas.yaml` (edit it to add genes):
# genes (log2 CPM) and gene sets (mean z-scored log2 CPM) in the pseudobulk of malignant plasma cells;
# liana ligand-receptor `lr_means` per sample from stromal and myeloid senders to tumour cells; infercnvpy
# copy-number burden and number of CNV subclones. NR vs CR: Hodges-Lehmann shift (95% CI) and Mann-Whitney p
# per feature, **one Benjamini-Hochberg FDR over the whole atlas**; where ages vary, Spearman with age (own FDR).
# On a simulated cohort the features that carry no planted effect must come out non-significant.
# Every mechanism is measured in tumour cells or towards them: a cohort without malignant plasma cells (or with
# fewer than two patients per group with `min_cells` of them) records the atlas as not testable; too few tumour
# cells for infercnvpy (`genetic_heterogeneity.min_cells`) records the CNV features as not testable.
#
# Outputs: `results/<cohort>/findings/08.json`, table `08_atlas.csv` (every feature, effect, CI, p, q),
# `08_atlas_values.csv` (patients x features), figure `08_atlas`.

# %% tags=["parameters"]
cohort = "ifm2017_sim"  # a folder under data/cohorts/
root = None  # the project root; None finds it from the working directory (or $DR_ROOT)
seed = None  # None: the cohort's seed (cohort.yaml); a number reruns with another seed
min_cells = 10
atlas_file = ""  # path to another atlas YAML, empty for data/resistance_atlas.yaml

# %%
import json

import pandas as pd

from helpers.analysis import atlas
from helpers.analysis.findings import attempt, describe, open_finding, patient_responses
from helpers.claims import testable_pseudobulk
from helpers.io import save_figure, write_json, write_table
from helpers.report import plots

C, bm, min_cells = open_finding(cohort, root, min_cells)  # the cohort, its marrow cells (no 'unassigned'), min_cells
bm = bm.copy()
seed = C.seed if seed is None else seed
spec = atlas.load_atlas(C.resolve(atlas_file) if atlas_file else None)
resp = patient_responses(bm.obs)
ages = bm.obs.drop_duplicates("patient_id").set_index("patient_id")["age"]
n_tumour = int((bm.obs["cell_type"] == atlas.TUMOUR).sum())
# every mechanism is measured in tumour cells or towards them: without enough of them the atlas is not testable
_, untestable = attempt(testable_pseudobulk, bm, [atlas.TUMOUR], C.groups, min_cells)
print(f"{bm.n_obs:,} {C.discovery_tissue} cells, {len(resp)} patients; {n_tumour:,} malignant plasma cells"
      + (f"; atlas {describe(untestable)}" if untestable else ""))

# %% [markdown]
# ## The atlas: tumour-intrinsic mechanisms, protective microenvironment, genetic heterogeneity
# `atlas.run_atlas`: tumour expression features (malignant plasma-cell pseudobulk), liana interactions from
# stromal and myeloid senders to tumour cells, CNV burden and subclones (infercnvpy), then one FDR over all of them.

# %%
result = (atlas.run_atlas(bm, spec, resp, C.reference_group, C.test_group, min_cells=min_cells, seed=seed, ages=ages)
          if untestable is None else None)
if result is not None:
    meta, table = result["meta"], result["table"]
    print(f"{int(meta['measured'].sum())} of {len(meta)} features measured; "
          f"{int((meta['kind'] == 'interaction').sum())} interactions expressed in at least half of the patients"
          + (f"; CNV features {describe(result['cnv_untestable'])}" if result["cnv_untestable"] else ""))
    display(meta[~meta["measured"].astype(bool)][["feature", "mechanism", "note"]])

# %% [markdown]
# ## One FDR over the atlas, and (simulated cohorts) the planted truth
# A feature is "planted" when one of its genes carries a planted effect in the cells it is measured in
# (e.g. tumour NF-kB genes, or a cytokine ligand planted in the myeloid sender). Unplanted features should not
# reach q < 0.05; CNV subclone counts are compared with the planted clones.

# %%
truth_path = C.processed_dir / "truth.json"
truth = json.loads(truth_path.read_text()) if truth_path.exists() else None
n_patients = {g: int((resp == g).sum()) for g in C.groups}
findings = atlas.atlas_findings(result, n_patients, untestable, truth)
write_json(findings, C.results_dir / "findings" / "08.json")
if result is not None:
    write_table(table.sort_values("p"), C.results_dir / "tables" / "08_atlas.csv")
    write_table(result["values"].rename_axis("patient_id").reset_index(), C.results_dir / "tables" / "08_atlas_values.csv")
    write_table(meta.drop(columns=["genes"]), C.results_dir / "tables" / "08_atlas_features.csv")
    save_figure(plots.atlas_heatmap(result["values"], table, resp, C.groups), C.figures_dir, "08_atlas")
    display(atlas.mechanism_summary(table))
    if "truth" in findings:
        display(pd.Series(findings["truth"]))

# %% [markdown]
# ## Conclusion

# %%
from IPython.display import Markdown

if untestable is not None:
    text = f"Resistance atlas {describe(untestable)}: every mechanism is measured in malignant plasma cells or towards them."
else:
    top = table.nsmallest(3, "p")
    text = (f"Across {findings['n_features']} atlas features in {len(resp)} patients, {findings['n_significant_q005']} differ "
            f"between {C.test_group} and {C.reference_group} at q < 0.05 (one FDR over the atlas). Smallest p: " +
            "; ".join(f"{r.feature} ({r.mechanism}) shift {r.effect:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}], p = {r.p:.2g}, "
                      f"q = {r.q:.2g}" for r in top.itertuples()) + ". ")
    if result["cnv_untestable"] is not None:
        text += f"CNV burden and subclones {describe(result['cnv_untestable'])}. "
if "truth" in findings:
    t = findings["truth"]
    text += (f"Against the simulated truth: {t['n_unplanted_significant']} of {findings['n_features'] - t['n_planted_features']} "
             f"unplanted features reach q < 0.05, {t['n_planted_significant']} of {t['n_planted_features']} planted ones do"
             + (f"; CNV subclone counts match the planted clones (those of at least 10% of tumour cells) in "
                f"{t['subclones_exact_agreement']:.0%} of {t['subclones_n_patients']} patients."
                if t["subclones_exact_agreement"] is not None else "."))
Markdown(text)
