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
# # 05 · CD54dim NK cells express less CD16 (FCGR3A) in non-responders
#
# **Study claim:** CD54(ICAM1)dim NK cells of NR express lower CD16, the receptor of antibody-dependent
# cellular cytotoxicity that daratumumab relies on.
#
# Per patient in CD54dim NK cells: FCGR3A pseudobulk log2 CPM and the fraction of FCGR3A-positive cells;
# NR vs CR with a Hodges-Lehmann shift (95% CI) and Mann-Whitney p. The same in CD54bright and CD56bright NK cells
# shows whether the finding is specific. When the annotation finds the CD54 (ICAM1) split not separable in a
# cohort (all CD56dim NK cells labelled `NK_CD56dim`; `uns['nk_cd54_split']`), the claim is measured in all CD56dim
# NK cells and the record says so (`measured_in`, `note`); controls that are absent are recorded as not testable.
# Where the cohort provides per-patient flow cytometry (`flow_cytometry.csv`: % CD16+ of CD56dim NK), it is
# plotted against the RNA measure (Spearman with CI). Where the cells carry CITE-seq antibody counts
# (`obsm['protein_counts']` with a CD16 antibody), the per-patient mean CLR-normalised CD16 protein of the claim's NK
# cells is compared too (`nk_cd16_protein`).
#
# Outputs: `results/<cohort>/findings/05.json`, table `05_nk_per_patient.csv`, figures `05_nk_cd16`, `05_flow`.

# %% tags=["parameters"]
cohort = "ifm2017_sim"  # a folder under data/cohorts/
root = None  # the project root; None finds it from the working directory (or $DR_ROOT)
min_cells = 10
gene = "FCGR3A"

# %%
import pandas as pd

from helpers.analysis import findings as fd
from helpers.claims import CLAIMS, resolve_claim_cells
from helpers.io import save_figure, write_json, write_table
from helpers.report import plots

C, bm, min_cells = fd.open_finding(cohort, root, min_cells)  # the cohort, its marrow cells (no 'unassigned'), min_cells
split = bm.uns.get("nk_cd54_split", {})  # the annotation's verdict on the CD54 split (optional)
claim_types, split_note = resolve_claim_cells(bm, CLAIMS["nk_cd54dim_cd16"])  # CD54dim NK, or all CD56dim NK
NK = {"NK_CD56dim_CD54dim": ("claim", claim_types), "NK_CD56dim_CD54bright": ("control", ["NK_CD56dim_CD54bright"]),
      "NK_CD56bright": ("control", ["NK_CD56bright"])}
print(f"claim measured in {claim_types}" + (f": {split_note}" if split_note else "")
      + (f" (annotation: {split.get('reason')})" if split.get("reason") else ""))

# %%
resp = fd.patient_responses(bm.obs)
# with the claim measured in all CD56dim NK cells there is no CD54bright subset: its records say why
absent = ({"NK_CD56dim_CD54bright": split_note.split(":")[0] + (f" ({split['reason']})" if split.get("reason") else "")}
          if split_note else {})
per_patient, claims, controls, panels = fd.measure_gene_by_subset(bm, NK, gene, C, min_cells, absent)
_, claims["nk_cd54dim_cd16"] = fd.measure_claim(bm, "nk_cd54dim_cd16", C, min_cells)  # defined in helpers.claims
protein = fd.protein_column(bm, "CD16")
if protein is not None:  # CITE-seq antibody counts: CD16 protein in the same NK cells
    claims["nk_cd16_protein"] = {**fd.claim(fd.protein_per_patient(bm, protein, claim_types, min_cells), resp, C,
                                         f"CD16 antibody counts ({protein}), CLR across cells, per-patient mean in "
                                         f"{'+'.join(claim_types)}, Hodges-Lehmann, Mann-Whitney"), "measured_in": claim_types}
write_table(per_patient, C.results_dir / "tables" / "05_nk_per_patient.csv")
records = {**claims, **controls, f"NK_CD56dim_CD54dim_{gene}_log2cpm": claims["nk_cd54dim_cd16"]}
if panels:
    save_figure(plots.patient_points(panels, resp, C.groups, records), C.figures_dir, "05_nk_cd16")
pd.DataFrame({**claims, **controls}).T

# %% [markdown]
# ## Flow cytometry against RNA (where the cohort has it)

# %%
findings = {"claims": claims, "controls": controls, "claim_cells": {"measured_in": claim_types, "note": split_note,
                                                                    "nk_cd54_split": split}}
flow_path = C.processed_dir / "flow_cytometry.csv"
if flow_path.exists():
    flow = pd.read_csv(flow_path).set_index("patient_id")["pct_cd16_of_cd56dim_nk"]
    findings["claims"]["flow_pct_cd16"] = fd.claim(flow, resp, C, "% CD16+ of CD56dim NK by flow cytometry, Hodges-Lehmann, "
                                                "Mann-Whitney")
    rna = per_patient[per_patient.cell_type == "NK_CD56dim_CD54dim"].set_index("patient_id")["log2_cpm"]
    both = pd.concat({"rna": rna.astype(float), "flow": flow}, axis=1, join="inner").dropna()
    findings["flow_vs_rna"] = corr = fd.correlation(both["rna"], both["flow"], f"flow % CD16+ and {gene} RNA in "
                                                 f"{'+'.join(claim_types)}")
    if not fd.is_not_testable(corr):
        save_figure(plots.scatter_by_group(both["rna"], both["flow"], resp, C.groups, f"{gene} log2 CPM in "
                                           f"{'+'.join(claim_types)} (RNA)", "% CD16+ CD56dim NK (flow)", corr),
                    C.figures_dir, "05_flow")
else:
    findings["flow_vs_rna"] = findings["claims"]["flow_pct_cd16"] = fd.not_testable(
        "no flow cytometry table (flow_cytometry.csv) for this cohort")
write_json(findings, C.results_dir / "findings" / "05.json")

# %% [markdown]
# ## Conclusion

# %%
from IPython.display import Markdown

where = "CD54dim NK" if not split_note else "CD56dim NK (CD54 split not separable)"
lines = [f"- {where}, {gene} log2 CPM: {fd.describe(claims['nk_cd54dim_cd16'])}",
         f"- {where}, fraction {gene}+ cells: {fd.describe(claims[f'NK_CD56dim_CD54dim_{gene}_fraction_positive'])}",
         f"- control CD54bright NK: {fd.describe(controls[f'NK_CD56dim_CD54bright_{gene}_log2cpm'])}",
         f"- control CD56bright NK: {fd.describe(controls[f'NK_CD56bright_{gene}_log2cpm'])}"]
if "nk_cd16_protein" in claims:
    lines.append(f"- {where}, CD16 protein (CITE-seq, CLR): {fd.describe(claims['nk_cd16_protein'])}")
f = findings["flow_vs_rna"]
lines.append("- flow % CD16+ vs RNA: " + (fd.describe(f) if fd.is_not_testable(f) else
             f"Spearman {f['rho']:.2f} (95% CI {f['ci_low']:.2f} to {f['ci_high']:.2f}), n = {f['n']}"))
Markdown("\n".join(lines))
