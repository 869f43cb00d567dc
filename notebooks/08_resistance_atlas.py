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
# # 08 · Resistance-mechanism atlas: target loss, complement inhibitors, cereblon, efflux, epigenetics, niche, clones
#
# **Question:** beyond the study's findings, which of the mechanisms behind myeloma treatment resistance
# (genetic heterogeneity, protective microenvironment signals, drug-efflux pumps, epigenetic change, therapy
# targets; `../shared/seeds/resistance_overview.txt`, and daratumumab's and lenalidomide's own targets) differ
# between non-responders and complete responders?
#
# Each mechanism is declared in `data/resistance_atlas.yaml` (edit it to add genes) with the direction that means
# resistance, and measured per patient: genes (log2 CPM) and gene sets in the pseudobulk of malignant plasma cells;
# liana ligand-receptor `lr_means` per sample from stromal and myeloid senders to tumour cells; infercnvpy
# copy-number burden and number of CNV subclones. The test has two stages, fixed in advance:
# 1. **mechanisms**: one signed score per mechanism (mean z-score of its features, sign by its direction, so > 0
#    points toward resistance), NR vs CR (Hodges-Lehmann shift, 95% CI, Mann-Whitney p), one BH FDR over mechanisms;
# 2. **features** of the mechanisms significant in stage 1 only, BH within each mechanism.
# The feature table also keeps one exploratory FDR over every feature, and the age correlation where ages vary.
# On a simulated cohort the planted mechanisms (`truth.json` `resistance`: CD38 loss, CD55/CD59 up, CRBN loss,
# ABCB1 in one subclone, an epigenetic programme, each in a share of NR tumours) should be found and no unplanted one;
# the power of this design for each is measured on `power_reps` cohorts drawn from the same simulator.
# Every mechanism is measured in tumour cells or towards them: a cohort without malignant plasma cells (or with
# fewer than two patients per group with `min_cells` of them) records the atlas as not testable; too few tumour
# cells for infercnvpy (`genetic_heterogeneity.min_cells`) records the CNV features as not testable.
#
# Outputs: `results/<cohort>/findings/08.json`, tables `08_mechanisms.csv` (stage 1), `08_atlas.csv` (every
# feature: effect, CI, p, q within mechanism, stage 2, exploratory q), `08_atlas_values.csv` (patients x features),
# `08_mechanism_scores.csv`, `08_mechanism_power.csv` (simulated cohorts), figures `08_mechanisms`, `08_atlas`.

# %% tags=["parameters"]
cohort = "ifm2017_sim"  # a folder under data/cohorts/
root = None  # the project root; None finds it from the working directory (or $DR_ROOT)
seed = None  # None: the cohort's seed (cohort.yaml); a number reruns with another seed
min_cells = 10
atlas_file = ""  # path to another atlas YAML, empty for data/resistance_atlas.yaml
power_reps = 100  # simulated cohorts per kind (planted, null) for the design's power; cohort analysis.power_reps wins

# %%
import json
import os

import pandas as pd

from helpers.analysis import atlas
from helpers.analysis import findings as fd
from helpers.analysis.pseudobulk import n_cells_of
from helpers.claims import testable_pseudobulk
from helpers.io import save_figure, write_json, write_table
from helpers.preprocessing import per_sample
from helpers.report import narrative, plots

C, bm, min_cells = fd.open_finding(cohort, root, min_cells)  # the cohort, its marrow cells (no 'unassigned'), min_cells
bm = bm.copy()
seed = C.seed if seed is None else seed
spec = atlas.load_atlas(C.resolve(atlas_file) if atlas_file else None)
resp = fd.patient_responses(bm.obs)
ages = bm.obs.drop_duplicates("patient_id").set_index("patient_id")["age"]
n_tumour = n_cells_of(bm, (bm.obs["cell_type"] == atlas.TUMOUR).to_numpy())  # (bm: cells, or cell groups)
# every mechanism is measured in tumour cells or towards them: without enough of them the atlas is not testable
_, untestable = fd.attempt(testable_pseudobulk, bm, [atlas.TUMOUR], C.groups, min_cells)
print(f"{n_cells_of(bm):,} {C.discovery_tissue} cells, {len(resp)} patients; {n_tumour:,} malignant plasma cells"
      + (f"; atlas {fd.describe(untestable)}" if untestable else ""))

# %% [markdown]
# ## The atlas: stage 1 (mechanisms) and stage 2 (their features)
# `atlas.run_atlas`: tumour expression features (malignant plasma-cell pseudobulk), liana interactions from
# stromal and myeloid senders to tumour cells, CNV burden and subclones (infercnvpy); the signed mechanism scores and
# their test; then every feature's test, stage 2 within the significant mechanisms.

# %%
client = per_sample.client_for_cells(bm, C.analysis("dask_scheduler", ""))  # dask engine: liana, CNV per sample task
result = (atlas.run_atlas(bm, spec, resp, C.reference_group, C.test_group, min_cells=min_cells, seed=seed, ages=ages,
                          client=client)
          if untestable is None else None)
per_sample.close_client(client)
if result is not None:
    meta, table, mech = result["meta"], result["table"], result["mechanisms"]
    print(f"{len(mech)} mechanisms scored, {int(mech['significant'].sum())} at q < 0.05; "
          f"{int(meta['measured'].sum())} of {len(meta)} features measured"
          + (f"; CNV features {fd.describe(result['cnv_untestable'])}" if result["cnv_untestable"] else ""))
    display(result["mechanism_info"][~result["mechanism_info"]["measured"]][["mechanism", "note"]])
    display(meta[~meta["measured"].astype(bool)][["feature", "mechanism", "note"]])

# %% [markdown]
# ## Against the planted truth (simulated cohorts), and the power of this design
# A mechanism is "planted" when a gene its score uses carries a planted effect in tumour cells (a resistance
# mechanism, or one of the study's effects such as tumour NF-kB) or, for the microenvironment, in the sender. The
# power: `power_reps` cohorts of this design drawn from the same simulator with new patients (tumour pseudobulk drawn
# directly: no QC, annotation or CNV step), planted and with every resistance strength at zero (the null).

# %%
truth_path = C.processed_dir / "truth.json"
truth = json.loads(truth_path.read_text()) if truth_path.exists() else None
n_patients = {g: int((resp == g).sum()) for g in C.groups}
findings = atlas.atlas_findings(result, n_patients, untestable, truth)
power = None
if truth is not None and result is not None and C.kind == "simulated":
    design = C.samples[C.samples["tissue"] == C.discovery_tissue]
    reps, n_jobs = int(C.analysis("power_reps", power_reps)), int(os.environ.get("DR_THREADS", "2"))
    power, findings["power"] = atlas.design_power(design, C.simulation, seed, spec, reps, C.reference_group,
                                                  C.test_group, min_cells, n_jobs)
    display(pd.DataFrame(truth["resistance"]).T[["direction", "strength_log2", "prevalence_in_nr", "clone"]])
    display(power.pivot(index="mechanism", columns="cohorts", values="rate_found"))
write_json(findings, C.results_dir / "findings" / "08.json")
if result is not None:
    write_table(mech, C.results_dir / "tables" / "08_mechanisms.csv")
    write_table(table.sort_values("p"), C.results_dir / "tables" / "08_atlas.csv")
    write_table(result["values"].rename_axis("patient_id").reset_index(), C.results_dir / "tables" / "08_atlas_values.csv")
    write_table(result["scores"].rename_axis("patient_id").reset_index(), C.results_dir / "tables" / "08_mechanism_scores.csv")
    write_table(meta.drop(columns=["genes"]), C.results_dir / "tables" / "08_atlas_features.csv")
    if power is not None:
        write_table(power, C.results_dir / "tables" / "08_mechanism_power.csv")
    save_figure(plots.mechanism_forest(mech, None if power is None else power[power.cohorts == "planted"]),
                C.figures_dir, "08_mechanisms")
    save_figure(plots.atlas_heatmap(result["values"], table, resp, C.groups), C.figures_dir, "08_atlas")
    display(mech)
    if "truth" in findings:
        display(pd.Series(findings["truth"]))

# %% [markdown]
# ## Conclusion

# %%
from IPython.display import Markdown

Markdown(narrative.atlas_conclusion(findings, mech if result is not None else None, untestable,
                                    result and result["cnv_untestable"], C.test_group, C.reference_group))
