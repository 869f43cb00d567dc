"""The study's claims as measurable, patient-level quantities: one definition used by the notebooks, the
calibration tests and the scorecard (so what is tested is exactly what the notebooks report)."""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import pandas as pd

from .genesets import gene_set
from .pseudobulk import log_cpm, progeny_activity, pseudobulk_by_patient, set_score

IMMUNE_COMPARTMENTS = ["myeloid", "T", "NK", "B"]
PHAGOCYTOSIS_SET = "REACTOME_FCGAMMA_RECEPTOR_FCGR_DEPENDENT_PHAGOCYTOSIS"
NFKB_SET = "HALLMARK_TNFA_SIGNALING_VIA_NFKB"


@dataclass(frozen=True)
class Claim:
    name: str
    statement: str
    cells: tuple[str, ...] | str  # cell types, or "immune" = every type of the immune compartments
    kind: str  # "set" (z-scored set score), "gene" (log2 CPM), "progeny" (PROGENy activity)
    feature: str
    expected: str  # "up" or "down" in NR vs CR, as the study reports
    planted: str  # the simulator's effect that realises it
    notebook: str
    primary: bool = True  # secondary readouts are reported but not required to recover the planted effect


CLAIMS = {c.name: c for c in [
    Claim("inflammatory_bme_cytokines", "NR marrow is pro-inflammatory: cytokine signalling up in immune cells",
          "immune", "set", "CYTOKINES_CHEMOKINES", "up", "inflammation", "03"),
    Claim("inflammatory_bme_hallmark", "NR marrow is pro-inflammatory: Hallmark inflammatory response up in immune cells",
          "immune", "set", "HALLMARK_INFLAMMATORY_RESPONSE", "up", "inflammation", "03", primary=False),
    Claim("classical_mono_phagocytosis", "classical monocytes of NR: impaired phagocytosis",
          ("mono_classical",), "set", PHAGOCYTOSIS_SET, "down", "phagocytosis", "04"),
    Claim("nonclassical_mono_phagocytosis", "nonclassical monocytes of NR: impaired phagocytosis",
          ("mono_nonclassical",), "set", PHAGOCYTOSIS_SET, "down", "phagocytosis", "04"),
    Claim("ifn_mono_nfkb", "interferon-associated monocytes of NR up-regulate NF-kB genes",
          ("mono_IFN",), "progeny", "NFkB", "up", "ifn_mono_nfkb", "04"),
    Claim("nk_cd54dim_cd16", "CD54dim NK cells of NR express less CD16 (FCGR3A)",
          ("NK_CD56dim_CD54dim",), "gene", "FCGR3A", "down", "nk_cd16", "05"),
    Claim("tumour_nfkb_progeny", "tumour plasma cells of NR show NF-kB activation",
          ("malignant_PC",), "progeny", "NFkB", "up", "tumour_nfkb", "06"),
]}


def claim_cell_types(adata: ad.AnnData, claim: Claim, label: str = "cell_type",
                     compartment: str = "compartment") -> list[str]:
    if claim.cells == "immune":
        obs = adata.obs
        return sorted(obs.loc[obs[compartment].astype(str).isin(IMMUNE_COMPARTMENTS), label].astype(str).unique())
    return list(claim.cells)


def claim_values(adata: ad.AnnData, name: str, min_cells: int = 10, label: str = "cell_type",
                 compartment: str = "compartment") -> tuple[pd.Series, pd.Series]:
    """Per-patient value of a claim's quantity and the patients' responses (pseudobulk of raw counts)."""
    c = CLAIMS[name]
    pb = pseudobulk_by_patient(adata, claim_cell_types(adata, c, label, compartment), label=label, min_cells=min_cells)
    return claim_value_from_pseudobulk(pb, name), pb.obs["response"].astype(str)


def claim_value_from_pseudobulk(pb: ad.AnnData, name: str) -> pd.Series:
    """The claim's per-patient quantity from a patients x genes pseudobulk of raw counts (the claim's cells)."""
    c = CLAIMS[name]
    L = log_cpm(pb)
    if c.kind == "set":
        v = set_score(L, gene_set(c.feature))
    elif c.kind == "gene":
        v = L[c.feature]
    elif c.kind == "progeny":
        v = progeny_activity(L, c.feature)
    else:
        raise ValueError(f"unknown claim kind {c.kind}")
    return v.rename(name)
