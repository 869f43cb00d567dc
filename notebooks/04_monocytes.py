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
# # 04 · Monocytes: impaired phagocytosis and NF-kB in interferon-associated monocytes
#
# **Study claims:** classical and nonclassical monocytes of NR show gene-expression signals of impaired
# phagocytosis; interferon-associated monocytes of NR up-regulate NF-kB-related genes.
#
# Per monocyte subset: pseudobulk of raw counts per patient (at least `min_cells` cells), DESeq2 (pydeseq2)
# NR vs CR with sample-level covariates where the cohort has them (`analysis.de_covariates`), and decoupler ULM
# enrichment of the Wald statistics on the phagocytosis sets (Reactome FCGR-dependent phagocytosis, GO
# phagocytosis) and NF-kB sets (Hallmark TNFA_SIGNALING_VIA_NFKB, TRRUST NF-kB targets). The claim records are
# patient-level quantities defined once in `helpers.claims` (Reactome FCGR phagocytosis set score; PROGENy NFkB
# activity for the interferon-associated monocytes), compared with a Hodges-Lehmann shift (95% CI) and a
# Mann-Whitney p; the enrichment is the gene-level view of the same contrast.
#
# Outputs: `results/<cohort>/findings/04.json`, tables `04_de_<subset>.csv`, `04_enrichment.csv`, figures
# `04_volcano`, `04_enrichment`, `04_patients`.

# %% tags=["parameters"]
cohort = "ifm2017_sim"  # a folder under data/cohorts/
root = None  # the project root; None finds it from the working directory (or $DR_ROOT)
min_cells = 10

# %%
import pandas as pd

from helpers.analysis import findings as fd
from helpers.analysis.de import deseq2, enrichment_ulm
from helpers.claims import CLAIMS, NFKB_SET, PHAGOCYTOSIS_SET, testable_pseudobulk
from helpers.data.genesets import gene_set
from helpers.io import save_figure, write_json, write_table
from helpers.report import plots

C, bm, min_cells = fd.open_finding(cohort, root, min_cells)  # the cohort, its marrow cells (no 'unassigned'), min_cells
SUBSETS = ["mono_classical", "mono_nonclassical", "mono_IFN"]
PHAGO = PHAGOCYTOSIS_SET
NFKB = NFKB_SET
SETS = {s: gene_set(s) for s in [PHAGO, "GO_0006909_phagocytosis_with_descendants", NFKB,
                                 "TRRUST_NFKB_family_targets_union"]}
covariates = C.analysis("de_covariates", [])

# %% [markdown]
# ## Pseudobulk DESeq2 per monocyte subset, and enrichment of the Wald statistics

# %%
de, enr, de_untestable = {}, [], {}
for ct in SUBSETS:
    pb, untestable = fd.attempt(testable_pseudobulk, bm, [ct], C.groups, min_cells)
    if untestable is not None:  # absent subset, or fewer than two patients per group with min_cells cells
        de_untestable[ct] = untestable
        print(f"{ct}: {fd.describe(untestable)}")
        continue
    res = deseq2(pb, C.reference_group, C.test_group, covariates=covariates)
    de[ct] = res
    write_table(res.reset_index(), C.results_dir / "tables" / f"04_de_{ct}.csv")
    e = enrichment_ulm(res["stat"], SETS)
    e.insert(0, "cell_type", ct)
    enr.append(e)
    print(ct, res.attrs["design"], f"{(res.padj < 0.05).sum()} genes at padj < 0.05")
enr = pd.concat(enr, ignore_index=True) if enr else pd.DataFrame(columns=["cell_type", "set", "score", "p"])
write_table(enr, C.results_dir / "tables" / "04_enrichment.csv")
if de:
    save_figure(plots.volcano_grid(de, highlight={PHAGO: SETS[PHAGO], NFKB: SETS[NFKB]}), C.figures_dir, "04_volcano")
    save_figure(plots.enrichment_bars(enr), C.figures_dir, "04_enrichment")
enr

# %% [markdown]
# ## Patient-level claims and specificity controls

# %%
# the study's claims (helpers.claims: one definition each), then controls; each record carries the ULM enrichment
# of the same contrast on the set named here (the gene-level view)
CLAIM_ULM = {"classical_mono_phagocytosis": PHAGO, "nonclassical_mono_phagocytosis": PHAGO, "ifn_mono_nfkb": NFKB,
             "ifn_mono_nfkb_beyond_inflammation": NFKB}
CONTROLS = {"ifn_mono_phagocytosis": ("mono_IFN", PHAGO), "cdc_phagocytosis": ("cDC", PHAGO)}
claims, controls, panels = {}, {}, {}
for name, ulm_set in CLAIM_ULM.items():
    values, rec = fd.measure_claim(bm, name, C, min_cells)
    claims[name] = fd.with_enrichment(rec, enr, CLAIMS[name].cells[0], ulm_set)
    if values is not None:
        panels[name] = (values, None)
for name, (ct, set_name) in CONTROLS.items():
    values, rec = fd.measure_set_score(bm, [ct], set_name, C, f"{set_name} score per patient in {ct} (pseudobulk "
                                    "z-scored log CPM), Hodges-Lehmann, Mann-Whitney", min_cells, genes=SETS[set_name])
    controls[name] = fd.with_enrichment(rec, enr, ct, set_name)
    if values is not None:
        panels[name] = (values, None)
if panels:
    save_figure(plots.patient_points(panels, fd.patient_responses(bm.obs), C.groups, {**claims, **controls}), C.figures_dir,
                "04_patients")
findings = {"claims": claims, "controls": controls,
            "de_genes_padj_below_0.05": {ct: int((r.padj < 0.05).sum()) for ct, r in de.items()},
            "design": {ct: r.attrs["design"] for ct, r in de.items()},
            "de_not_testable": de_untestable}
write_json(findings, C.results_dir / "findings" / "04.json")
pd.DataFrame({**claims, **controls}).T

# %% [markdown]
# ## Conclusion

# %%
from IPython.display import Markdown


def line(k, label):
    r = {**claims, **controls}[k]
    return (f"- {label}: {fd.describe(r, ' z')}" + (f"; ULM on DE statistics {r['ulm_score']:+.1f} (p = {r['ulm_p']:.2g})"
                                                  if "ulm_score" in r else ""))

Markdown("\n".join([
    line("classical_mono_phagocytosis", "Phagocytosis (Reactome FCGR) in classical monocytes"),
    line("nonclassical_mono_phagocytosis", "Phagocytosis in nonclassical monocytes"),
    line("ifn_mono_nfkb", "NF-kB (PROGENy NFkB activity; ULM on Hallmark TNFA via NF-kB) in interferon-associated monocytes"),
    line("ifn_mono_nfkb_beyond_inflammation", "Secondary readout: the same NF-kB activity on targets outside the "
         "Hallmark inflammatory set (NF-kB beyond the shared cytokine response)"),
    line("ifn_mono_phagocytosis", "Control: phagocytosis in interferon-associated monocytes"),
    line("cdc_phagocytosis", "Control: phagocytosis in cDC"),
]))
