"""The study's claims: one registry (:data:`CLAIMS`) that the finding notebooks, the scorecard, the calibration
and the power model read, so what is tested, how it is judged and what the study said are written once.

A :class:`Claim` holds the study's statement, the cells and readout it is measured in, the expected direction
(non-responders vs complete responders), the study's value, the finding notebook whose ``findings/NN.json``
holds its record under ``claims/<name>``, and (scorecard rows) the row's label. Every record has the same
fields, whatever the readout:

``effect``, ``ci_low``, ``ci_high``, ``p``, ``direction`` (``up``/``down``), ``n_cr``, ``n_nr``, ``method``

- cell readouts (``set``, ``gene``, ``progeny``): the Hodges-Lehmann shift NR - CR of a per-patient pseudobulk
  quantity with its exact CI and the Mann-Whitney p (:func:`helpers.analysis.findings.measure_claim`);
- ``survival``: the Cox hazard ratio per SD of a bulk tumour score with its Wald CI and p, direction ``up`` when
  HR > 1 (:func:`helpers.analysis.findings.measure_prognosis`);
- ``auc``: the classifier's AUC with its Hanley-McNeil CI and the label-permutation p of the whole pipeline that
  produced it, direction ``up`` when AUC > 0.5 (:func:`helpers.analysis.classifier.auc_record`);

or the not-testable record ``{"status": "not testable", "reason": ...}``. One verdict rule judges every row
(:func:`verdict`): ``reproduced`` when ``p`` < 0.05 and the direction is the study's.

A cell claim is testable in a cohort when at least ``MIN_PATIENTS_PER_GROUP`` patients of each response group
have at least ``min_cells`` cells of the claim's cell types (the pseudobulk rule) and the claim's feature (gene,
gene set with enough expressed genes) is in the data; otherwise :class:`NotTestable` is raised with the reason."""

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
ALPHA = 0.05  # every verdict: p below this and the study's direction
NOT_TESTABLE = "not testable"
PHAGOCYTOSIS_SET = "REACTOME_FCGAMMA_RECEPTOR_FCGR_DEPENDENT_PHAGOCYTOSIS"
NFKB_SET = "HALLMARK_TNFA_SIGNALING_VIA_NFKB"
CELL_KINDS = ("set", "gene", "progeny")  # readouts of a per-patient pseudobulk
KINDS = CELL_KINDS + ("survival", "auc")
MANN_WHITNEY = "patient-level Mann-Whitney"


@dataclass(frozen=True)
class Claim:
    """One of the study's claims (or a secondary readout of one). ``expected`` is the direction in NR vs CR
    (``survival``: ``up`` = hazard ratio above 1; ``auc``: ``up`` = AUC above 0.5); ``study_value`` what the
    study reports (a number for the AUCs; otherwise its side, default ``expected``); ``test`` where the p comes
    from; ``label`` the scorecard row (empty: a secondary readout, reported by its notebook only)."""

    name: str
    statement: str
    cells: tuple[str, ...] | str  # cell types, or "immune" = every type of the immune compartments
    kind: str  # "set" (z-scored set score), "gene" (log2 CPM), "progeny" (PROGENy activity), "survival", "auc"
    feature: str
    expected: str  # "up" or "down" in NR vs CR, as the study reports
    planted: str | None  # the simulator's effect that realises it
    notebook: str
    label: str = ""  # the scorecard row ("" = not a row)
    study_value: str | float | None = None  # None: the study gives a side only, ``expected`` (or "HR > 1")
    tissue: str = "BM"  # where it is measured: BM (discovery), PB (validation), bulk
    test: str = MANN_WHITNEY
    figure: str = ""  # the figure (figures/<cohort>/<figure>.png) that shows the claim's record
    primary: bool = True  # secondary readouts are reported but not required to recover the planted effect
    fallback: tuple[str, ...] = ()  # cell types measured instead when none of ``cells`` is in the cohort
    fallback_note: str = ""  # what the record says when the fallback was used
    exclude_set: str = ""  # progeny claims: targets of this gene set are left out (a specificity control)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"claim {self.name}: unknown kind {self.kind!r} (one of {KINDS})")
        if self.expected not in ("up", "down"):
            raise ValueError(f"claim {self.name}: expected must be 'up' or 'down', not {self.expected!r}")

    @property
    def study(self) -> str | float:
        """The study's value as the scorecard shows it: a number, or the side it reports."""
        if self.study_value is not None:
            return self.study_value
        return "HR > 1" if self.kind == "survival" else self.expected

    @property
    def readout(self) -> str:
        """What is measured per patient (or per cohort), in words."""
        if self.kind == "set":
            return f"{self.feature} set score (pseudobulk, z-scored log CPM)"
        if self.kind == "gene":
            return f"{self.feature} log2 CPM (pseudobulk)"
        if self.kind == "progeny":
            return (f"PROGENy {self.feature} activity (decoupler ULM on pseudobulk log CPM)"
                    + (f" on targets outside {self.exclude_set}" if self.exclude_set else ""))
        return self.feature

    def effect_text(self) -> str:
        return {"survival": "the hazard ratio per SD is above 1", "auc": "the AUC is above 0.5"}.get(
            self.kind, f"the shift is {self.expected} (NR vs CR)")

    def rule(self, alpha: float = ALPHA) -> str:
        """The verdict rule in words (the same rule for every claim; only the p's source differs)."""
        ci = "; CI: Hanley-McNeil (1982) analytic 95% CI" if self.kind == "auc" else ""
        return f"reproduced if the {self.test} p < {alpha} and {self.effect_text()}{ci}"

    def method(self, cell_types: list[str] | None = None) -> str:
        """The record's ``method`` text: readout, cells, comparison."""
        cells = ("" if not cell_types else f" in {'+'.join(cell_types)}" if len(cell_types) <= 3
                 else f" in {len(cell_types)} pooled cell types")
        if self.kind in CELL_KINDS:
            return f"{self.readout}{cells} per patient, Hodges-Lehmann shift NR-CR, Mann-Whitney"
        return f"{self.readout}; p: {self.test}"


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
# - NF-kB (IFN monocytes, tumour, bulk prognosis): PROGENy NFkB, footprint genes of NF-kB activity from
#   perturbation experiments (Schubert et al. 2018), robust to which pathway members are expressed. The IFN-monocyte
#   claim has a control: the same activity on PROGENy targets outside the Hallmark inflammatory set, which separates
#   NF-kB activation from the cytokine response it shares genes with.
# - CD16: the FCGR3A gene itself (the study's readout, with flow cytometry).
# - classifier: the study's random forest on its 34 NF-kB genes (data/genesets/nfkb_panel_34.csv), cross-validated
#   in marrow; the top-8 model with its selection inside every fold; the top-8 model applied unchanged to blood.
INFLAMMATION_SET = "HALLMARK_INFLAMMATORY_RESPONSE"
_AUC_TEST = "whole-pipeline label-permutation ({})"  # the rule reads "the <test> p < 0.05"
CLAIMS = {c.name: c for c in [
    Claim("inflammatory_bme", "NR marrow is pro-inflammatory: Hallmark inflammatory response up in immune cells",
          "immune", "set", INFLAMMATION_SET, "up", "inflammation", "03",
          label="inflammatory BME (cytokine signalling up in NR)", figure="03_inflammation_patients"),
    Claim("inflammatory_bme_cytokine_signalling",
          "NR marrow is pro-inflammatory: Reactome cytokine signalling up in immune cells",
          "immune", "set", "REACTOME_CYTOKINE_SIGNALING_IN_IMMUNE_SYSTEM", "up", "inflammation", "03", primary=False),
    Claim("classical_mono_phagocytosis", "classical monocytes of NR: impaired phagocytosis",
          ("mono_classical",), "set", PHAGOCYTOSIS_SET, "down", "phagocytosis", "04",
          label="monocyte phagocytosis, classical (down in NR)", figure="04_patients"),
    Claim("nonclassical_mono_phagocytosis", "nonclassical monocytes of NR: impaired phagocytosis",
          ("mono_nonclassical",), "set", PHAGOCYTOSIS_SET, "down", "phagocytosis", "04",
          label="monocyte phagocytosis, nonclassical (down in NR)", figure="04_patients"),
    Claim("ifn_mono_nfkb", "interferon-associated monocytes of NR up-regulate NF-kB genes",
          ("mono_IFN",), "progeny", "NFkB", "up", "ifn_mono_nfkb", "04", label="IFN-monocyte NF-kB (up in NR)",
          figure="04_patients"),
    Claim("ifn_mono_nfkb_beyond_inflammation",
          "IFN monocytes of NR: NF-kB activity on targets outside the inflammatory set (control)",
          ("mono_IFN",), "progeny", "NFkB", "up", "ifn_mono_nfkb", "04", primary=False, exclude_set=INFLAMMATION_SET),
    Claim("nk_cd54dim_cd16", "CD54dim NK cells of NR express less CD16 (FCGR3A)",
          ("NK_CD56dim_CD54dim",), "gene", "FCGR3A", "down", "nk_cd16", "05", label="CD54dim NK CD16 (down in NR)",
          figure="05_nk_cd16",
          fallback=("NK_CD56dim",),
          fallback_note="CD54 split not separable in this cohort: measured in all CD56dim NK cells"),
    Claim("tumour_nfkb_progeny", "tumour plasma cells of NR show NF-kB activation",
          ("malignant_PC",), "progeny", "NFkB", "up", "tumour_nfkb", "06", label="tumour NF-kB (up in NR)", figure="06_tumour_nfkb"),
    Claim("prognosis", "tumour NF-kB activation is tied to poor prognosis (shorter progression-free survival)",
          "bulk tumour", "survival", "PROGENy NFkB activity of bulk tumour expression, Cox hazard ratio per SD",
          "up", "bulk", "06", label="prognosis (NF-kB high = shorter PFS)", tissue="bulk", test="Cox (Wald)",
          figure="06_survival"),
    Claim("auc_bm_34", "a random forest on 34 NF-kB genes separates CR from NR in marrow (AUC 0.96)",
          "all marrow cells", "auc", "random forest on the 34-gene NF-kB panel (pseudobulk), cross-validated AUC",
          "up", None, "07", label="AUC 34 NF-kB genes, marrow", study_value=0.96, figure="07_roc",
          test=_AUC_TEST.format("cross-validation re-run on permuted labels")),
    Claim("auc_bm_top8", "a top-8-gene model keeps AUC 0.92 in marrow", "all marrow cells", "auc",
          "random forest on the top 8 panel genes, selected inside every fold, cross-validated AUC",
          "up", None, "07", label="AUC top-8, marrow", study_value=0.92, figure="07_roc",
          test=_AUC_TEST.format("cross-validation with the in-fold top-k selection re-run on permuted labels")),
    Claim("auc_pb_top8", "the top-8 model reaches AUC 0.77 in blood", "all blood cells", "auc",
          "the marrow top-8 model applied unchanged to blood pseudobulks, AUC", "up", None, "07",
          label="AUC top-8, blood", study_value=0.77, tissue="PB", figure="07_roc",
          test=_AUC_TEST.format("marrow labels permuted, top-k model refitted on marrow, applied to blood, scored on "
                                "true labels")),
]}
STUDY_AUC = {name: float(c.study_value) for name, c in CLAIMS.items() if c.kind == "auc"}  # the study's AUCs
STUDY_N_BM = (10, 11)  # the study's marrow cohort: 10 NR, 11 CR


def cell_claims() -> dict[str, Claim]:
    """The claims measured on a per-patient pseudobulk of cells (readouts ``set``, ``gene``, ``progeny``)."""
    return {n: c for n, c in CLAIMS.items() if c.kind in CELL_KINDS}


def scorecard_claims() -> list[Claim]:
    """The scorecard's rows, in order: every claim with a label."""
    return [c for c in CLAIMS.values() if c.label]


def claim_by_label(label: str) -> Claim:
    """The claim of a scorecard row label; KeyError naming the label when there is none."""
    for c in scorecard_claims():
        if c.label == label:
            return c
    raise KeyError(f"no claim with the scorecard label {label!r}")


# -- records and the one verdict rule ---------------------------------------------------------------------------

def not_testable(reason: str, n_cr: int | None = None, n_nr: int | None = None, **extra: Any) -> dict:
    """The findings record of a quantity that cannot be measured in this cohort."""
    rec = {"status": NOT_TESTABLE, "reason": reason}
    rec.update({k: v for k, v in (("n_cr", n_cr), ("n_nr", n_nr)) if v is not None})
    return {**rec, **extra}


def is_not_testable(rec: Any) -> bool:
    return isinstance(rec, dict) and rec.get("status") == NOT_TESTABLE


def side(value: float, null: float = 0.0) -> str | None:
    """``up`` / ``down`` of a value against its null (0 for a shift, 1 for a hazard ratio, 0.5 for an AUC)."""
    if value is None or pd.isna(value) or value == null:
        return None
    return "up" if value > null else "down"


def record(effect: float, ci_low: float, ci_high: float, p: float, n_cr: int | None, n_nr: int | None, method: str,
           null: float = 0.0, **extra: Any) -> dict:
    """A claim record from its numbers (``direction`` from the effect's side of ``null``; group sizes left out
    when None, e.g. a survival cohort without response labels)."""
    sizes = {k: int(v) for k, v in (("n_cr", n_cr), ("n_nr", n_nr)) if v is not None}
    return {"effect": float(effect), "ci_low": float(ci_low), "ci_high": float(ci_high), "p": float(p),
            "direction": side(effect, null), **sizes, "method": method, **extra}


def reproduced(claim: Claim, rec: dict | None, alpha: float = ALPHA) -> bool:
    """The one rule: a p below ``alpha`` and the effect in the study's direction."""
    if not rec or is_not_testable(rec) or rec.get("p") is None or rec.get("effect") is None:
        return False
    return bool(rec["p"] < alpha and rec.get("direction") == claim.expected)


def verdict(claim: Claim, rec: dict | None, alpha: float = ALPHA) -> str:
    """``reproduced`` / ``not reproduced`` by :func:`reproduced`; ``not testable: <reason>`` for a not-testable
    record; ``not applicable`` when there is no record or it has no estimate."""
    if is_not_testable(rec):
        return f"{NOT_TESTABLE}: {rec['reason']}"
    if not rec or rec.get("effect") is None or rec.get("p") is None:
        return "not applicable"
    return "reproduced" if reproduced(claim, rec, alpha) else "not reproduced"


# -- cell readouts -----------------------------------------------------------------------------------------------

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
