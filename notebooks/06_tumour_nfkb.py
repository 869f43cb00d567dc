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
# # 06 · NF-kB activation in tumour plasma cells, inflammation and prognosis
#
# **Study claim:** tumour cells of NR show enhanced NF-kB activation, correlated with increased inflammatory
# gene expression and with poor prognosis.
#
# NF-kB activity of malignant plasma cells per patient (pseudobulk): PROGENy NFkB activity (decoupler ULM on the
# committed PROGENy weights) and a TRRUST NF-kB target-set score; NR vs CR with Hodges-Lehmann shift (95% CI) and
# Mann-Whitney p. Across patients, Spearman correlation (95% CI) of tumour NF-kB with the immune
# microenvironment's Hallmark inflammatory score. Prognosis in the bulk cohort (`bulk.h5ad`: expression plus progression-free
# survival): PROGENy NFkB activity, pre-declared median split, Kaplan-Meier, log-rank test and Cox hazard ratio
# per SD (lifelines). Controls: PROGENy pathways not expected to differ (Estrogen, Androgen) in the same cells.
# A cohort without malignant plasma cells (e.g. blood only), or with fewer than two patients per group with
# `min_cells` of them, records the tumour readouts and the correlation as not testable; one without a bulk cohort
# records the prognosis as not testable.
#
# Outputs: `results/<cohort>/findings/06.json`, tables `06_*.csv`, figures `06_tumour_nfkb`, `06_correlation`,
# `06_survival`.

# %% tags=["parameters"]
cohort = "ifm2017_sim"  # a folder under data/cohorts/
root = None  # the project root; None finds it from the working directory (or $DR_ROOT)
min_cells = 10

# %%
import anndata as ad
import pandas as pd

from helpers.analysis import findings as fd
from helpers.analysis.pseudobulk import log_cpm
from helpers.analysis.survival import km_curves
from helpers.claims import CLAIMS, resolve_claim_cells, testable_progeny, testable_set_score
from helpers.data.genesets import gene_set
from helpers.io import save_figure, write_json, write_table
from helpers.report import plots

C, bm, min_cells = fd.open_finding(cohort, root, min_cells)  # the cohort, its marrow cells (no 'unassigned'), min_cells

# %% [markdown]
# ## NF-kB activity of malignant plasma cells, NR vs CR

# %%
m = "per patient in malignant plasma cells (pseudobulk), Hodges-Lehmann, Mann-Whitney"
TRRUST = "TRRUST_NFKB_family_targets_union"
nfkb, claims = {}, {}
nfkb["tumour_nfkb_progeny"], claims["tumour_nfkb_progeny"] = fd.measure_claim(bm, "tumour_nfkb_progeny", C, min_cells)
scores, records = fd.measure_scores(bm, ["malignant_PC"], C, {
    "tumour_nfkb_targets": ("TRRUST NF-kB target score " + m, lambda pb: testable_set_score(log_cpm(pb), gene_set(TRRUST), TRRUST)),
    "tumour_progeny_estrogen": ("PROGENy Estrogen (control) " + m, lambda pb: testable_progeny(log_cpm(pb), "Estrogen")),
    "tumour_progeny_androgen": ("PROGENy Androgen (control) " + m, lambda pb: testable_progeny(log_cpm(pb), "Androgen")),
}, min_cells)
if nfkb["tumour_nfkb_progeny"] is not None:
    scores = scores.assign(tumour_nfkb_progeny=nfkb["tumour_nfkb_progeny"])
claims["tumour_nfkb_targets"] = records["tumour_nfkb_targets"]  # the same claim on a curated target set
controls = {k: records[k] for k in ("tumour_progeny_estrogen", "tumour_progeny_androgen")}
write_table(scores.reset_index(names="patient_id"), C.results_dir / "tables" / "06_tumour_scores.csv")
panels = {k: (scores[k], None) for k in ("tumour_nfkb_progeny", "tumour_nfkb_targets", "tumour_progeny_estrogen")
          if k in scores}
if panels:
    save_figure(plots.patient_points(panels, scores["response"], C.groups, {**claims, **controls},
                                     ylabel="activity / score"), C.figures_dir, "06_tumour_nfkb")
pd.DataFrame({**claims, **controls}).T

# %% [markdown]
# ## Tumour NF-kB against the microenvironment's inflammatory genes (across patients)

# %%
immune, _ = resolve_claim_cells(bm, CLAIMS["inflammatory_bme"])
infl, infl_rec = fd.measure_set_score(bm, immune, CLAIMS["inflammatory_bme"].feature, C, "immune inflammatory score",
                                   min_cells)
missing = [r["reason"] for r in (claims["tumour_nfkb_progeny"], infl_rec) if fd.is_not_testable(r)]
corr = (fd.not_testable("; ".join(missing)) if missing else
        fd.correlation(scores["tumour_nfkb_progeny"], infl, "a tumour NF-kB activity and an immune inflammatory score"))
if not fd.is_not_testable(corr):
    both = pd.concat({"tumour_nfkb": scores["tumour_nfkb_progeny"], "bme_inflammation": infl}, axis=1).dropna()
    save_figure(plots.scatter_by_group(both["tumour_nfkb"], both["bme_inflammation"], scores["response"], C.groups,
                                       "tumour PROGENy NFkB activity", "immune Hallmark inflammatory score (z)", corr),
                C.figures_dir, "06_correlation")
corr

# %% [markdown]
# ## Prognosis in the bulk cohort

# %%
bulk_path = C.processed_dir / "bulk.h5ad"
bulk = ad.read_h5ad(bulk_path) if bulk_path.exists() else None
bulk_nfkb, claims["prognosis"] = fd.measure_prognosis(bulk)  # the prognosis claim (helpers.claims)
_, controls["prognosis_progeny_estrogen"] = fd.measure_prognosis(bulk, "Estrogen")
if bulk_nfkb is not None and not fd.is_not_testable(claims["prognosis"]):
    curves = km_curves(bulk_nfkb, bulk.obs["pfs_months"], bulk.obs["pfs_event"])
    save_figure(plots.km_figure(curves, claims["prognosis"], "tumour NF-kB (PROGENy) in the bulk cohort"),
                C.figures_dir, "06_survival")
pd.Series(claims["prognosis"])

# %%
findings = {"claims": claims, "controls": controls, "tumour_nfkb_vs_bme_inflammation": corr}
write_json(findings, C.results_dir / "findings" / "06.json")

# %% [markdown]
# ## Conclusion

# %%
from IPython.display import Markdown

text = (f"Tumour PROGENy NFkB activity, {C.test_group} vs {C.reference_group}: {fd.describe(claims['tumour_nfkb_progeny'])}. "
        "Correlation with the immune Hallmark inflammatory score: " +
        (fd.describe(corr) if fd.is_not_testable(corr) else f"Spearman {corr['rho']:.2f} (95% CI {corr['ci_low']:.2f} to "
         f"{corr['ci_high']:.2f}), p = {corr['p']:.2g}, {corr['n']} patients") + ".")
surv = claims["prognosis"]
if not fd.is_not_testable(surv):
    text += (f" Bulk cohort ({surv['n']} patients, {surv['n_events']} events): HR per SD of NF-kB activity "
             f"{surv['effect']:.2f} (95% CI {surv['ci_low']:.2f} to {surv['ci_high']:.2f}), Cox p = "
             f"{surv['p']:.2g}; median split log-rank p = {surv['logrank_p']:.2g}.")
else:
    text += f" Prognosis {fd.describe(surv)}."
Markdown(text)
