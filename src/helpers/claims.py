"""The study's claims as measurable, patient-level quantities: one definition used by the notebooks, the
calibration tests and the scorecard (so what is tested is exactly what the notebooks report).

A claim is testable in a cohort when at least ``MIN_PATIENTS_PER_GROUP`` patients of each response group have
at least ``min_cells`` cells of the claim's cell types (the pseudobulk rule) and the claim's feature (gene,
gene set with enough expressed genes) is in the data; otherwise :class:`NotTestable` is raised with the reason,
and the notebooks record ``{"status": "not testable", "reason": ...}`` (:mod:`helpers.analysis.findings`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import anndata as ad
import pandas as pd

from helpers.analysis.pseudobulk import (
    log_cpm,
    progeny_activity,
    pseudobulk_by_patient,
    set_score,
)
from helpers.data.genesets import gene_set, progeny_weights

IMMUNE_COMPARTMENTS = ["myeloid", "T", "NK", "B"]
UNASSIGNED = "unassigned"  # annotation's label for cells it could not place: never a cell type of a claim
MIN_PATIENTS_PER_GROUP = 2  # the fewest patients per group with a value for a Hodges-Lehmann shift / Mann-Whitney p
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
    fallback: tuple[str, ...] = ()  # cell types measured instead when none of ``cells`` is in the cohort
    fallback_note: str = ""  # what the record says when the fallback was used
    exclude_set: str = ""  # progeny claims: targets of this gene set are left out (a specificity control)


class NotTestable(ValueError):
    """A quantity cannot be measured in this cohort: a cell type, tissue, side table or gene is absent, or too
    few patients per group have enough cells. Carries the reason and the group sizes when known."""

    def __init__(self, reason: str, n_cr: int | None = None, n_nr: int | None = None):
        super().__init__(reason)
        self.reason, self.n_cr, self.n_nr = reason, n_cr, n_nr


# Readouts, fixed in advance from published sets (never from what the simulator plants):
# - inflammation: MSigDB Hallmark INFLAMMATORY_RESPONSE, the consensus 200-gene inflammatory programme (Liberzon et
#   al. 2015) - the study's "pro-inflammatory marrow"; Reactome "Cytokine signaling in immune system", the study's
#   own words, is reported beside it but is secondary (its ~700 genes include interferon and growth-factor signalling
#   that vary between patients for other reasons).
# - phagocytosis: Reactome "FCGR-dependent phagocytosis": the antibody-dependent phagocytosis through which
#   daratumumab acts (Overdijk et al. 2015), the study's mechanism for monocytes.
# - NF-kB (IFN monocytes, tumour): PROGENy NFkB, footprint genes of NF-kB activity from perturbation experiments
#   (Schubert et al. 2018), robust to which pathway members are expressed. The IFN-monocyte claim has a control:
#   the same activity on PROGENy targets outside the Hallmark inflammatory set, which separates NF-kB activation
#   from the cytokine response it shares genes with.
# - CD16: the FCGR3A gene itself (the study's readout, with flow cytometry).
INFLAMMATION_SET = "HALLMARK_INFLAMMATORY_RESPONSE"
CLAIMS = {c.name: c for c in [
    Claim("inflammatory_bme", "NR marrow is pro-inflammatory: Hallmark inflammatory response up in immune cells",
          "immune", "set", INFLAMMATION_SET, "up", "inflammation", "03"),
    Claim("inflammatory_bme_cytokine_signalling",
          "NR marrow is pro-inflammatory: Reactome cytokine signalling up in immune cells",
          "immune", "set", "REACTOME_CYTOKINE_SIGNALING_IN_IMMUNE_SYSTEM", "up", "inflammation", "03", primary=False),
    Claim("classical_mono_phagocytosis", "classical monocytes of NR: impaired phagocytosis",
          ("mono_classical",), "set", PHAGOCYTOSIS_SET, "down", "phagocytosis", "04"),
    Claim("nonclassical_mono_phagocytosis", "nonclassical monocytes of NR: impaired phagocytosis",
          ("mono_nonclassical",), "set", PHAGOCYTOSIS_SET, "down", "phagocytosis", "04"),
    Claim("ifn_mono_nfkb", "interferon-associated monocytes of NR up-regulate NF-kB genes",
          ("mono_IFN",), "progeny", "NFkB", "up", "ifn_mono_nfkb", "04"),
    Claim("ifn_mono_nfkb_beyond_inflammation",
          "IFN monocytes of NR: NF-kB activity on targets outside the inflammatory set (control)",
          ("mono_IFN",), "progeny", "NFkB", "up", "ifn_mono_nfkb", "04", primary=False, exclude_set=INFLAMMATION_SET),
    Claim("nk_cd54dim_cd16", "CD54dim NK cells of NR express less CD16 (FCGR3A)",
          ("NK_CD56dim_CD54dim",), "gene", "FCGR3A", "down", "nk_cd16", "05", fallback=("NK_CD56dim",),
          fallback_note="CD54 split not separable in this cohort: measured in all CD56dim NK cells"),
    Claim("tumour_nfkb_progeny", "tumour plasma cells of NR show NF-kB activation",
          ("malignant_PC",), "progeny", "NFkB", "up", "tumour_nfkb", "06"),
]}


def claim_genes(claim: Claim) -> list[str]:
    """The genes a claim's readout reads: its gene set, its PROGENy pathway's targets (less ``exclude_set``), or
    its gene."""
    if claim.kind == "set":
        return list(gene_set(claim.feature))
    if claim.kind == "progeny":
        net = progeny_weights()
        excluded = set(gene_set(claim.exclude_set)) if claim.exclude_set else set()
        return sorted(set(net.loc[net["source"] == claim.feature, "target"]) - excluded)
    return [claim.feature]


def _cells_text(cell_types: list[str] | None) -> str:
    if cell_types is None:
        return "cells"
    if len(cell_types) > 3:
        return f"cells of {len(cell_types)} types ({', '.join(cell_types[:3])}, ...)"
    return f"{', '.join(cell_types)} cells"


def resolve_claim_cells(adata: ad.AnnData, claim: Claim, label: str = "cell_type",
                        compartment: str = "compartment") -> tuple[list[str], str]:
    """The cell types a claim is measured in here and a note: its own types, every assigned type of the immune
    compartments for "immune", or its ``fallback`` types (with ``fallback_note``) when none of its own is in
    the data. ``unassigned`` cells are never included."""
    obs = adata.obs
    labels = obs[label].astype(str)
    if claim.cells == "immune":
        immune = labels[obs[compartment].astype(str).isin(IMMUNE_COMPARTMENTS).to_numpy()]
        return sorted(set(immune.unique()) - {UNASSIGNED}), ""
    present = set(labels.unique())
    if claim.fallback and not present & set(claim.cells) and present & set(claim.fallback):
        return list(claim.fallback), claim.fallback_note
    return list(claim.cells), ""


def testable_pseudobulk(adata: ad.AnnData, cell_types: list[str] | None, groups: list[str] | None = None,
                        min_cells: int = 10, label: str = "cell_type", tissue: str | None = None,
                        min_per_group: int = MIN_PATIENTS_PER_GROUP) -> ad.AnnData:
    """:func:`pseudobulk_by_patient` of ``cell_types`` (all cells when None) when at least
    ``min_per_group`` patients of each of ``groups`` (default: the response labels in the data) have
    ``min_cells`` such cells; else :class:`NotTestable` naming the tissue, the cell types and the counts."""
    obs = adata.obs
    groups = list(groups) if groups is not None else sorted(obs["response"].astype(str).unique())
    in_tissue = (obs["tissue"].astype(str) == tissue).to_numpy() if tissue is not None else True
    where = f" in {tissue}" if tissue is not None else ""
    if tissue is not None and not in_tissue.any():
        raise NotTestable(f"no {tissue} samples in this cohort")
    if cell_types is not None and not (obs[label].astype(str).isin(cell_types).to_numpy() & in_tissue).any():
        raise NotTestable(f"no {_cells_text(cell_types)}{where} in this cohort")
    pb = pseudobulk_by_patient(adata, cell_types, label=label, tissue=tissue, min_cells=min_cells)
    n = pb.obs["response"].astype(str).value_counts().reindex(groups, fill_value=0)
    if len(groups) != 2 or n.min() < min_per_group:
        counts = " and ".join(f"{int(n[g])} {g}" for g in groups)
        raise NotTestable(f"only {counts} patients have >= {min_cells} {_cells_text(cell_types)}{where} "
                          f"(need {min_per_group} per group)", *(int(n[g]) for g in groups[:2]))
    return pb


def claim_pseudobulk(adata: ad.AnnData, name: str, min_cells: int = 10, label: str = "cell_type",
                     compartment: str = "compartment", groups: list[str] | None = None) -> tuple[ad.AnnData, list[str], str]:
    """The claim's per-patient pseudobulk (:func:`testable_pseudobulk`), the cell types used and the note."""
    types, note = resolve_claim_cells(adata, CLAIMS[name], label, compartment)
    if not types:
        raise NotTestable(f"no cells of the immune compartments {IMMUNE_COMPARTMENTS} in this cohort")
    return testable_pseudobulk(adata, types, groups, min_cells=min_cells, label=label), types, note


def claim_values(adata: ad.AnnData, name: str, min_cells: int = 10, label: str = "cell_type",
                 compartment: str = "compartment", groups: list[str] | None = None) -> tuple[pd.Series, pd.Series]:
    """Per-patient value of a claim's quantity and the patients' responses (pseudobulk of raw counts).
    Raises :class:`NotTestable` when the claim cannot be measured in ``adata``."""
    pb, _, _ = claim_pseudobulk(adata, name, min_cells, label, compartment, groups)
    return claim_value_from_pseudobulk(pb, name), pb.obs["response"].astype(str)


def claim_value_from_pseudobulk(pb: ad.AnnData, name: str) -> pd.Series:
    """The claim's per-patient quantity from a patients x genes pseudobulk of raw counts (the claim's cells).
    Raises :class:`NotTestable` when its gene is absent or its gene set has too few expressed genes."""
    c = CLAIMS[name]
    L = log_cpm(pb)
    if c.kind == "set":
        v = testable_set_score(L, gene_set(c.feature), c.feature)
    elif c.kind == "gene":
        if c.feature not in L.columns:
            raise NotTestable(f"gene {c.feature} is not in the data")
        v = L[c.feature]
    elif c.kind == "progeny":
        v = testable_progeny(L, c.feature, exclude=gene_set(c.exclude_set) if c.exclude_set else ())
    else:
        raise ValueError(f"unknown claim kind {c.kind}")
    return v.rename(name)


def _not_testable_if_unmeasurable(score: Callable[..., pd.Series], logcpm: pd.DataFrame, key: Any, name: str) -> pd.Series:
    """``score(logcpm, key)``; its ValueError (too few expressed genes, too few patients) as :class:`NotTestable`."""
    try:
        return score(logcpm, key)
    except ValueError as e:
        raise NotTestable(f"{name}: {e}") from None


def testable_set_score(logcpm: pd.DataFrame, genes: list[str], name: str = "the set") -> pd.Series:
    """:func:`helpers.analysis.pseudobulk.set_score`; too few expressed genes of the set make it :class:`NotTestable`."""
    return _not_testable_if_unmeasurable(set_score, logcpm, genes, name)


def testable_progeny(logcpm: pd.DataFrame, pathway: str, exclude: Iterable[str] = ()) -> pd.Series:
    """:func:`helpers.analysis.pseudobulk.progeny_activity` (targets in ``exclude`` left out); too few expressed targets or
    samples make it :class:`NotTestable`."""
    return _not_testable_if_unmeasurable(lambda L, pw: progeny_activity(L, pw, exclude=exclude), logcpm, pathway,
                                         f"PROGENy {pathway}")
