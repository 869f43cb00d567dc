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
# # 09 · Power for small cohorts (the paediatric setting)
#
# **Question:** myeloma in children is rare (under 1% of paediatric haematological malignancies), so any
# paediatric cohort is small. How many patients per group does each of the study's tests need, and how well can
# the NF-kB classifier be estimated?
#
# Cohorts of n = 4 to 32 patients per group are drawn from this cohort's simulator (same gene model, cell
# types, patient, batch and composition variation) with the planted effects at 0.5x, 1x and 1.5x their
# configured strength. Each patient's pseudobulk per cell type is drawn directly (the sum of n cells'
# negative-binomial counts), so QC and annotation are skipped: this is the power of the patient-level
# statistics given correct cell calls (annotation accuracy is measured in notebook 02). Each test is the one
# the notebooks run (`helpers.claims`: Hodges-Lehmann / Mann-Whitney, p < 0.05 in the study's direction);
# the classifier is the 34-gene random forest with 5-fold CV (one repeat), simulated at every effect scale; its
# CI is the Hanley-McNeil 95% CI notebook 07 reports (the raw table's `auc_oof_bootstrap_*` columns are a bootstrap
# of out-of-fold predictions without refitting, kept for reference, not a CI of the AUC; the spread of the AUC over
# simulated cohorts, refitted in each, is `auc_q025`-`auc_q975`).
# The default design (its own group sizes, 1x) is included: the power of this cohort's own tests. For the
# classifier that power follows the scorecard's rule (label-permutation p < 0.05 and AUC > 0.5): each simulated
# cohort's AUC is compared with the permutation null of one more simulated cohort of the design (`n_null_perm`
# label permutations of the same cross-validation). Approximations, stated: one null for all cohorts of the design,
# and one CV repeat where notebook 07 averages five (its p is then conservative). Only the all-gene marrow model is
# simulated, so the scorecard's top-8 and blood AUC rows have no power here.
#
# **What effect makes the study's AUC expected?** The mean cross-validated AUC at this cohort's design is
# interpolated over the simulated effect scales to the scale at which it reaches the study's 0.96 (notebook 07
# gives the binormal separation d for the same question).
#
# **Reading the curves.** Each point is the observed share of significant cohorts at one design, with its exact
# (Clopper-Pearson) 95% CI; with `n_reps` cohorts per point these are coarse and need not be monotone. The line is
# a smooth curve fitted to all cohorts of a test and effect scale at once (`power.fit_power_curve`): a logistic
# regression of each cohort's hit on log(n per group), by Firth's bias-reduced likelihood (finite when every cohort
# or none is a hit), with a pointwise 95% band (Wald on the linear predictor, mapped through the logistic). It is
# monotone in n by construction, increasing only where the fitted slope is positive: a flat or decreasing fit
# (e.g. an effect the test does not see) is reported as such (`trend`), not forced up. The smallest n for 80%
# power is read off the fitted curve, with the range read off its band.
#
# Repetitions: `n_reps` per design and effect scale (20 inside `make all`: about 6-7 minutes on two free cores).
# For a full run set `analysis: {power_reps: 200}` in the cohort's `cohort.yaml` (about 10x the run time; the
# cohort's files are inputs of every notebook, so `make all` then reruns the chain), or run this notebook alone
# with `-p n_reps 200` (papermill) or change `n_reps` in JupyterLab.
#
# Outputs: `results/<cohort>/findings/09.json`, tables `09_power.csv` (summary per design, observed and fitted
# power), `09_power_fit.csv` (the fitted curves at every n from 4 to 32, observed where simulated) and
# `09_power_raw.csv` (every simulated cohort), figure `09_power`.

# %% tags=["parameters"]
cohort = "ifm2017_sim"  # a folder under data/cohorts/
root = None  # the project root; None finds it from the working directory (or $DR_ROOT)
seed = None  # None: the cohort's seed (cohort.yaml); a number reruns with another seed
n_reps = 20  # cohorts per design and effect scale; the cohort's analysis.power_reps wins
group_sizes = [4, 5, 6, 8, 10, 12, 16, 24, 32]
effect_scales = [0.5, 1.0, 1.5]
n_genes = 4000
n_jobs = 2
n_null_perm = 200
min_cells = 10

# %%
import time

import pandas as pd

from helpers.analysis import power
from helpers.analysis.classifier import load_panel
from helpers.data.cohort import load_cohort
from helpers.io import save_figure, write_json, write_table
from helpers.report import narrative, plots

C = load_cohort(cohort, root=root)
seed = C.seed if seed is None else seed
n_reps = int(C.analysis("power_reps", n_reps))
min_cells = C.analysis("min_cells", min_cells)
# a real cohort has no simulator of its own: its design is powered under the default cohort's simulator
sim_source = C if C.simulation else load_cohort("ifm2017_sim", root=root)
sim = dict(sim_source.simulation, n_genes=min(int(sim_source.simulation.get("n_genes", 16000)), n_genes))
print(f"simulator: {sim_source.name}")
panel = load_panel()["gene"].tolist()
design = C.samples[C.samples["tissue"] == C.discovery_tissue]["response"].value_counts()
default = (int(design.get(C.reference_group, 0)), int(design.get(C.test_group, 0)))
designs = [(n, n) for n in group_sizes] + ([default] if default[0] != default[1] or default[0] not in group_sizes else [])
print(f"{len(designs)} designs x {len(effect_scales)} effect scales x {n_reps} repetitions; default design {default}")

# %%
t0 = time.time()
raw = power.power_grid(sim, seed, designs, effect_scales, n_reps, panel=panel, classifier_scales=effect_scales,
                       n_jobs=n_jobs, min_cells=min_cells)
seconds = time.time() - t0
summary = power.summarise_power(raw)
# the fitted curves: at every group size in the simulated range, and at the simulated designs (in the summary)
fit = power.fit_power_curve(raw, n_grid=range(min(group_sizes), max(group_sizes) + 1))
summary = power.with_fit(summary, fit)
# one_cohort's classifier CI is a bootstrap of out-of-fold predictions without refitting: labelled as such
raw = raw.rename(columns={"ci_low": "auc_oof_bootstrap_low", "ci_high": "auc_oof_bootstrap_high"})
write_table(raw, C.results_dir / "tables" / "09_power_raw.csv")
write_table(summary, C.results_dir / "tables" / "09_power.csv")
write_table(fit, C.results_dir / "tables" / "09_power_fit.csv")
n_cohorts = raw[["n_cr", "n_nr", "effect_scale", "rep"]].drop_duplicates().shape[0]
print(f"{n_cohorts} simulated cohorts in {seconds:.0f} s ({seconds / max(n_reps, 1):.1f} s per repetition)")
at1 = summary[(summary["effect_scale"] == 1.0) & (summary["test"] != "classifier_auc")]
pd.concat({"observed": at1.pivot(index="test", columns="n_per_group", values="power"),
           "fitted": at1.pivot(index="test", columns="n_per_group", values="fitted_power")}, axis=1).round(2)

# %%
save_figure(plots.power_figure(summary, fit=fit), C.figures_dir, "09_power")

# %% [markdown]
# ## Classifier at this cohort's design: power by the permutation rule, and the effect scale behind the study's AUC

# %%
# power by the AUC rule against the permutation null of one more simulated cohort of this design (1x effects)
auc_power, calibration = power.classifier_at_design(raw, default, sim, seed, panel, n_null_perm, min_cells, n_jobs)
if auc_power:
    print(f"classifier power at {default[0]} vs {default[1]}: {auc_power['power']:.2f} [{auc_power['ci_low']:.2f}, "
          f"{auc_power['ci_high']:.2f}] ({auc_power['n_cohorts']} cohorts; null 95th percentile "
          f"{auc_power['null_q95']:.3f})")
calibration

# %%
findings = power.power_findings(summary, fit, default, sim_source.name, n_reps, group_sizes, effect_scales,
                                sim["n_genes"], n_null_perm, calibration, auc_power)
write_json(findings, C.results_dir / "findings" / "09.json")
write_json({"power_seconds": round(seconds, 1), "n_reps": n_reps, "n_cohorts": n_cohorts},
           C.results_dir / "timings" / "09_power.json")  # not a result
pd.DataFrame(findings["default_design"]["power"]).T

# %% [markdown]
# ## Conclusion

# %%
from IPython.display import Markdown

Markdown(narrative.power_conclusion(findings, n_cohorts, seconds))
