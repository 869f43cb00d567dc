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
# # 10 · Scorecard and report
#
# One row per study claim: the study's value, the value reproduced here with its 95% CI and p, the planted
# truth for a simulated cohort, and a verdict computed by a stated rule (reproduced / not reproduced / not
# applicable / `not testable: <reason>` when the cohort cannot measure the claim, e.g. no tumour cells, no blood
# samples, no bulk cohort, too few classifier-panel genes). The `note` column says how a claim was measured when it
# differs from the study (a reduced classifier panel; all CD56dim NK cells when the CD54 split is not separable).
# Read from the findings JSON of notebooks 03-07 and 09, through the one claim registry (`helpers.claims`). Also
# writes `results/<cohort>/report.html` (`helpers.report.page`): one self-contained page that reads top-down - a
# summary (cohort, what "reproduced" means, verdict counts, the null twin's count), then one section per claim with
# the study's sentence and value, our figure, the effect with CI and p, the power at this design, the verdict and
# its rule, the planted truth and a link to the executed notebook; and `results/<cohort>/not_testable.txt`: what
# could not be tested and why (printed by the runner at the end of `make all`).
#
# **One rule for every row:** a p below 0.05 and the effect in the study's direction. Directional claims: the
# patient-level Mann-Whitney p and the Hodges-Lehmann shift (prognosis: the Cox Wald p and the hazard ratio above 1). AUC
# rows: `permutation_p`, the label-permutation p of the whole pipeline that produced the AUC (notebook 07: the
# cross-validation with its in-fold top-8 selection re-run per permutation; for blood, the marrow labels permuted,
# the model refitted on marrow and scored on blood), and the AUC above 0.5. The AUC's CI is the Hanley-McNeil
# (1982) analytic 95% CI; no CI enters an AUC verdict.
#
# **Columns for the reader** (`helpers.report.scorecard` documents them):
# - `study_value_in_ci`: the study's AUC inside our CI; for a directional claim (the study gives a side, not a
#   number) True when our whole CI is on the study's side (excludes 0, or 1 for the hazard ratio); NA without a CI.
# - `power_at_design`: notebook 09's simulated power of the row's test at this cohort's design (NA, with a note,
#   for tests 09 does not simulate: the bulk prognosis and the top-8 marrow and blood AUCs).
# - `null_twin_verdict`: the same row's verdict on the null twin the cohort names (`analysis: {null_twin: ...}` in
#   cohort.yaml; the default names `ifm2017_null`: same design, no planted effect), when its scorecard exists.
#
# Outputs: `results/<cohort>/scorecard.csv`, `results/<cohort>/report.html`, `results/<cohort>/not_testable.txt`,
# `results/<cohort>/findings/10.json`, figure `10_scorecard`.

# %% tags=["parameters"]
cohort = "ifm2017_sim"  # a folder under data/cohorts/
root = None  # the project root; None finds it from the working directory (or $DR_ROOT)

# %%
from helpers.data.cohort import load_cohort
from helpers.data.describe import patients_per_group
from helpers.io import atomic_path, read_json, save_figure, write_json, write_table
from helpers.report import plots
from helpers.report.page import render_report
from helpers.report.scorecard import (
    NOT_TESTABLE_FILE,
    build_scorecard,
    not_testable_rows,
    not_testable_summary,
    null_twin_verdicts,
    verdict_counts,
)

C = load_cohort(cohort, root=root)
truth_path = C.processed_dir / "truth.json"
truth = read_json(truth_path) if (C.kind == "simulated" and truth_path.exists()) else None
twin = null_twin_verdicts(C.analysis("null_twin"), C.results_dir.parent)  # the null twin this cohort names
card = build_scorecard(C.results_dir / "findings", truth, twin)
write_table(card, C.results_dir / "scorecard.csv")
card.drop(columns=["rule"])

# %%
save_figure(plots.scorecard_figure(card), C.figures_dir, "10_scorecard")
counts = verdict_counts(card)
untestable = not_testable_rows(card)
write_json({"verdicts": counts, "n_claims": int(len(card)), "not_testable": untestable.to_dict(),
            "rows": card.drop(columns=["rule"]).to_dict("records")}, C.results_dir / "findings" / "10.json")
summary = not_testable_summary(C.name, card, C.results_dir / "findings")
with atomic_path(C.results_dir / NOT_TESTABLE_FILE) as tmp:
    tmp.write_text(summary)
render_report(C.name, card, C.results_dir / "html", C.figures_dir, C.results_dir / "report.html",
              simulated=C.kind == "simulated", patients=patients_per_group(C.samples, C.groups))
print(summary)
counts

# %% [markdown]
# ## Conclusion

# %%
from IPython.display import Markdown

Markdown(f"Of {len(card)} study claims, " + ", ".join(f"{v} {k}" for k, v in counts.items()) +
         f" on cohort **{C.name}**. Not reproduced: " +
         (", ".join(card.loc[card.verdict == "not reproduced", "claim"]) or "none") + ". " +
         (f"Not testable in this cohort ({len(untestable)}): " + "; ".join(f"{c} ({r})" for c, r in untestable.items()) + "."
          if len(untestable) else "Every claim was testable in this cohort.") +
         (f" On the null twin, {int((card['null_twin_verdict'] == 'reproduced').sum())} of "
          f"{int(card['null_twin_verdict'].notna().sum())} rows are called reproduced."
          if card["null_twin_verdict"].notna().any() else ""))
