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
# # 03 · A pro-inflammatory bone-marrow microenvironment in non-responders
#
# **Study claim:** NR marrow is pro-inflammatory, with elevated cytokine signalling.
#
# Per patient and cell type (pseudobulk of raw counts, at least `min_cells` cells), gene-set scores for the
# Hallmark INFLAMMATORY_RESPONSE, TNFA_SIGNALING_VIA_NFKB and IL6_JAK_STAT3 sets and a curated cytokine/chemokine
# list (data/genesets/curated.yaml): each gene's log2 CPM is z-scored across patients and averaged over the set.
# NR vs CR: Hodges-Lehmann shift with 95% CI and Mann-Whitney p per patient, BH over the whole grid.
# Cell-cell communication: liana's method ensemble (`rank_aggregate`) run on each sample separately with its
# bundled consensus resource; each inflammatory interaction from immune senders gets a per-sample magnitude
# (-log10 aggregate rank), compared NR vs CR across patients the same way.
#
# Outputs: `results/<cohort>/findings/03.json` (`claims`, `controls`), tables `03_*.csv`, figures
# `03_inflammation_heatmap`, `03_inflammation_patients`, `03_communication`.

# %% tags=["parameters"]
cohort = "ifm2017_sim"  # a folder under data/cohorts/
root = None  # the project root; None finds it from the working directory (or $DR_ROOT)
min_cells = 10

# %%
import pandas as pd

from helpers.analysis import findings as fd
from helpers.analysis.communication import interaction_matrix, liana_by_sample
from helpers.analysis.stats import compare_groups
from helpers.claims import CLAIMS, IMMUNE_COMPARTMENTS, resolve_claim_cells
from helpers.data.genesets import gene_set
from helpers.io import save_figure, write_json, write_table
from helpers.preprocessing import per_sample
from helpers.report import plots

C, bm, min_cells = fd.open_finding(cohort, root, min_cells)  # the cohort, its marrow cells (no 'unassigned'), min_cells
IMMUNE = IMMUNE_COMPARTMENTS
immune_types, _ = resolve_claim_cells(bm, CLAIMS["inflammatory_bme"])  # every immune cell type here
SETS = {s: gene_set(s) for s in ["HALLMARK_INFLAMMATORY_RESPONSE", "HALLMARK_TNFA_SIGNALING_VIA_NFKB",
                                  "HALLMARK_IL6_JAK_STAT3_SIGNALING",
                                  "REACTOME_CYTOKINE_SIGNALING_IN_IMMUNE_SYSTEM"]}

# %% [markdown]
# ## Inflammatory scores per cell type, NR vs CR

# %%
grid = fd.score_grid(bm, immune_types, SETS, C, min_cells=min_cells)  # cell types too rare to test are left out
write_table(grid, C.results_dir / "tables" / "03_inflammation_by_celltype.csv")
if len(grid):
    fig = plots.effect_heatmap(grid, row="cell_type", col="gene_set", title=f"{C.test_group} minus {C.reference_group}: "
                               "set score shift (z units); * q < 0.05")
    save_figure(fig, C.figures_dir, "03_inflammation_heatmap")
grid.sort_values("p").head(10)

# %% [markdown]
# ## The claim: pooled immune microenvironment (myeloid and lymphoid cells)

# %%
claims, controls, pooled = {}, {}, {}
for name in ["inflammatory_bme", "inflammatory_bme_cytokine_signalling"]:
    pooled[name], claims[name] = fd.measure_claim(bm, name, C, min_cells)  # helpers.claims defines each
for name, (types, set_name) in {
    "oxphos_bme": (immune_types, "HALLMARK_OXIDATIVE_PHOSPHORYLATION"),
    "inflammation_erythroid": (["erythroid"], "HALLMARK_INFLAMMATORY_RESPONSE"),
}.items():
    _, controls[name] = fd.measure_set_score(bm, types, set_name, C, f"{set_name} in "
                                          f"{types if len(types) < 3 else 'pooled immune cells'} (control)", min_cells)
panels = {k: (v, None) for k, v in pooled.items() if v is not None}
if panels:
    save_figure(plots.patient_points(panels, fd.patient_responses(bm.obs), C.groups, claims), C.figures_dir,
                "03_inflammation_patients")
pd.DataFrame({**claims, **controls}).T

# %% [markdown]
# ## Inflammatory ligand-receptor communication (liana consensus resource), NR vs CR

# %%
ligands = set(gene_set("CYTOKINES_CHEMOKINES")) | set(gene_set("HALLMARK_INFLAMMATORY_RESPONSE"))
groups = sorted(bm.obs["compartment"].astype(str).unique())
pairs = [(s, r) for s in IMMUNE for r in groups if s in groups]
client = per_sample.client_for_cells(bm, C.analysis("dask_scheduler", ""))  # dask engine: one sample per task
lr = liana_by_sample(bm, "compartment", pairs=pairs, ligands=ligands, min_cells=min_cells, client=client)
per_sample.close_client(client)
wide = interaction_matrix(lr, bm.obs, value="magnitude")
communication = None
if wide.shape[1]:
    lr_stats = compare_groups(wide, fd.patient_responses(bm.obs), C.reference_group, C.test_group,
                              method="liana rank_aggregate magnitude per sample, Hodges-Lehmann, Mann-Whitney, BH")
    lr_stats = lr_stats.rename(columns={"feature": "interaction"}).sort_values("p")
    write_table(lr_stats, C.results_dir / "tables" / "03_communication.csv")
    save_figure(plots.top_effects(lr_stats, label="interaction", n=20, title="inflammatory interactions, NR vs CR (top by p)"),
                C.figures_dir, "03_communication")
    n_up = int(((lr_stats["q"] < 0.05) & (lr_stats["effect"] > 0)).sum())
    n_down = int(((lr_stats["q"] < 0.05) & (lr_stats["effect"] < 0)).sum())
    communication = {"n_interactions_tested": int(len(lr_stats)), "n_up_q_below_0.05": n_up, "n_down_q_below_0.05": n_down,
                     "top_up": lr_stats[lr_stats.effect > 0].head(5)["interaction"].tolist()}
    display(lr_stats.head(10))
else:
    communication = fd.not_testable(f"no inflammatory ligand-receptor interaction between immune senders with >= {min_cells} "
                                 "cells per sample is expressed in half of the patients")
    print(fd.describe(communication))

# %%
findings = {
    "claims": claims,
    "controls": controls,
    "celltype_grid": {"n_tests": int(grid["p"].notna().sum()), "n_q_below_0.05_up": int(((grid.q < 0.05) & (grid.effect > 0)).sum()),
                      "n_q_below_0.05_down": int(((grid.q < 0.05) & (grid.effect < 0)).sum())},
    "communication": communication,
}
write_json(findings, C.results_dir / "findings" / "03.json")

# %% [markdown]
# ## Conclusion

# %%
from IPython.display import Markdown

g = findings["celltype_grid"]
text = (f"Hallmark inflammatory response of the immune microenvironment, {C.test_group} vs {C.reference_group}: "
        f"{fd.describe(claims['inflammatory_bme'], ' z')}; Reactome cytokine signalling (secondary) "
        f"{fd.describe(claims['inflammatory_bme_cytokine_signalling'], ' z')}. Across cell types, {g['n_q_below_0.05_up']} of {g['n_tests']} "
        f"cell-type x set scores are higher in {C.test_group} at q < 0.05 and {g['n_q_below_0.05_down']} lower. ")
text += (f"{communication['n_up_q_below_0.05']} inflammatory ligand-receptor interactions are stronger in {C.test_group} at "
         f"q < 0.05 ({communication['n_down_q_below_0.05']} weaker)." if not fd.is_not_testable(communication)
         else f"Ligand-receptor communication {fd.describe(communication)}.")
Markdown(text)
