"""Where the chain loses the power of a cell claim: one calibration cohort measured stage by stage.

The calibration (``validation/calibration.md``) finds the classical-monocyte phagocytosis claim reproduced in fewer
planted 6 vs 6 cohorts than notebook 09's pseudobulk power model predicts. This module measures, for the SAME
planted calibration cohort (same seed, same sample sheet, hence the same patients: :func:`helpers.data.simulate.
draw_patients` draws each patient's activations from ``[seed, patient id]``), the claim's readout exactly as the
chain does (:func:`helpers.analysis.findings.measure_claim`, the helper notebook 04 calls; the verdict rule
:func:`helpers.claims.reproduced`) under successive stages of the chain:

- ``a0_expected``: each patient's expected classical-monocyte profile (the mean the power model draws around:
  continuum and soup averaged in) at a huge depth: the patients' own signal, without cell sampling or count noise;
- ``a_power_model``: the power model's direct pseudobulk draw (:func:`helpers.analysis.power.simulate_pseudobulks`,
  which calls :func:`helpers.data.simulate.simulate_sample_pseudobulk`) with the genes capped at
  ``POWER_GENES`` as the calibration's prediction does (a 4,000-gene universe: same patients' activations, other
  gene model and profiles); readout as :func:`helpers.analysis.power.one_cohort` computes it;
- ``a_pseudobulk_same_genes``: the same draw with the cohort's own gene universe (the gene model, patient and
  sample profiles of the droplets: only the cells are not drawn);
- ``b_droplets_truth``: the simulated droplets (cells.h5ad) with truth labels and truth_quality == good: no QC,
  no annotation;
- ``c_qc_truth``: the droplets the chain's QC keeps (integrated.h5ad), truth labels (kept junk under its cell's
  own truth type); ``c_qc_truth_good``: the same without the kept junk;
- ``d_chain``: the chain's own labels (annotated.h5ad without ``unassigned``, marrow): what notebook 04 measures;
- ``d_chain_pure``: the chain's labels with the called-classical cells that are not truly good classical monocytes
  left out (a diagnostic: what the annotation would give without its contamination).

Per stage: the Hodges-Lehmann shift NR - CR with its CI, the Mann-Whitney p, reproduced (p < 0.05, shift down),
classical monocytes per patient (every marrow patient, zeros included) and the patients below ``min_cells``, and
``planted_lfc``: the NR - CR difference of group-mean pseudobulk log2 CPM averaged over the planted genes of the
tested set that pass the set score's expression filter (the dilution of the planted signal in log2 units; the
set's unplanted genes give the control ``unplanted_lfc``), the pooled within-group sd of the per-patient mean of
those genes (``planted_within_sd``), their ratio ``planted_d``, and ``technical_sd``: the sd over patients of
that per-patient mean minus the noise-free one of ``a0_expected`` (the noise a stage adds to the patients'
signal). For ``d_chain``: purity and recall of the
called-classical cells against the truth (what the called cells truly are, where the true ones went).

Stages c and d need notebooks 00-02 of the cohort, run through the Makefile's runner in a scratch project root
(:func:`helpers.validation.calibration.link_project`, default ``.cache/power_gap/project``; nothing is written
into the checkout's data/cohorts, results or figures), one cohort at a time. Stages a and b need only the
simulator and can run for every calibration cohort (``--truth-only``).

    python -m helpers.validation.power_gap --chain 0 10 12 13 1 18 --truth-only 0-19 --threads 1

writes ``validation/power_gap_phagocytosis.json`` and ``.md`` (an existing ``## Interpretation`` section of the
markdown is kept). Deterministic: every draw is seeded by the calibration cohort's seed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from helpers.analysis import findings as fd
from helpers.analysis.power import simulate_pseudobulks
from helpers.analysis.pseudobulk import log_cpm, set_score
from helpers.analysis.stats import compare_two_groups
from helpers.claims import CLAIMS, claim_genes, claim_pseudobulk, claim_value_from_pseudobulk, reproduced
from helpers.data.cohort import Cohort, load_cohort, project_root
from helpers.data.simulate import (
    cohort_model,
    draw_patients,
    expected_cell_profiles,
    sample_profiles,
    simulate_sample,
)
from helpers.io import atomic_path, read_cohort_cells
from helpers.validation import calibration as cal

CLAIM = "classical_mono_phagocytosis"
TARGET = "mono_classical"
EFFECT = "phagocytosis"  # the planted effect behind the claim (data/simulation/planted_programs.yaml)
CHAIN_NOTEBOOKS = ["00_cohort", "01_qc_integration", "02_annotation"]
BASE_SEED = 150000
STAGES = {
    "a0_expected": "each patient's expected classical-monocyte profile (the power model's mean, no cell/count noise)",
    "a_power_model": "power model's direct pseudobulk draw, genes capped at 4000 as in the calibration's prediction",
    "a_pseudobulk_same_genes": "direct pseudobulk draw, the cohort's own gene universe (same profiles as the droplets)",
    "b_droplets_truth": "simulated droplets, truth labels, truth_quality good (no QC, no annotation)",
    "c_qc_truth": "droplets kept by the chain's QC, truth labels (kept junk under its truth type)",
    "c_qc_truth_good": "droplets kept by the chain's QC and truly good, truth labels",
    "d_chain": "the chain's QC and annotation (notebooks 01-02), as notebook 04 measures",
    "d_chain_pure": "the chain's labels without the called-classical cells that are not truly good classical",
}
RECORD_KEYS = ["effect", "ci_low", "ci_high", "p", "n_cr", "n_nr"]
JSON_NAME = "power_gap_phagocytosis.json"
MD_NAME = "power_gap_phagocytosis.md"
KEEP_SECTION = "## Interpretation"
IG_PREFIXES = ("IGH", "IGK", "IGL")  # immunoglobulin genes: 57 of the Reactome FCGR set's 143 (antibody chains)
CACHE_VERSION = 4  # of the cached stage a/b records (results/<cohort>/power_gap_simulated_stages.json)


# -- pure pieces --------------------------------------------------------------------------------------------------

def truth_labelled(adata: ad.AnnData, good_only: bool = True) -> ad.AnnData:
    """A copy whose ``cell_type`` / ``compartment`` are the simulator's truth (``truth_cell_type``,
    ``truth_compartment``); with ``good_only`` only droplets whose ``truth_quality`` is ``good``."""
    keep = (adata.obs["truth_quality"].astype(str) == "good").to_numpy() if good_only else np.ones(adata.n_obs, bool)
    out = adata[keep].copy()
    out.obs["cell_type"] = out.obs["truth_cell_type"].astype(str).to_numpy()
    out.obs["compartment"] = out.obs["truth_compartment"].astype(str).to_numpy()
    return out


def truly_target(obs: pd.DataFrame, target: str = TARGET) -> np.ndarray:
    """Cells that are truly good ``target`` cells."""
    return ((obs["truth_cell_type"].astype(str) == target) & (obs["truth_quality"].astype(str) == "good")).to_numpy()


def without_contamination(adata: ad.AnnData, target: str = TARGET) -> ad.AnnData:
    """``adata`` without the cells called ``target`` that are not truly good ``target`` cells (the others keep their
    calls)."""
    called = (adata.obs["cell_type"].astype(str) == target).to_numpy()
    return adata[~(called & ~truly_target(adata.obs, target))].copy()


def cells_per_patient(obs: pd.DataFrame, patients: pd.Series, target: str = TARGET,
                      label: str = "cell_type") -> dict[str, int]:
    """Cells labelled ``target`` per patient, for every patient of ``patients`` (index: patient id), zeros
    included."""
    n = obs.loc[obs[label].astype(str) == target, "patient_id"].astype(str).value_counts()
    return {str(p): int(n.get(str(p), 0)) for p in patients.index}


def patients_below(counts: dict[str, int], min_cells: int) -> list[str]:
    return sorted(p for p, n in counts.items() if n < min_cells)


def planted_set_shift(pb: ad.AnnData, set_genes: list[str], planted: list[str], reference: str = "CR",
                      test: str = "NR", min_mean: float = 1.0) -> dict[str, Any]:
    """The NR - CR difference of group-mean pseudobulk log2 CPM, averaged over the genes of ``set_genes`` that
    pass the set score's filter (mean log2 CPM >= ``min_mean``), separately for those in ``planted`` and the rest."""
    L = log_cpm(pb)
    genes = [g for g in dict.fromkeys(set_genes) if g in L.columns]
    L = L[genes]
    L = L.loc[:, L.mean() >= min_mean]
    resp = pb.obs["response"].astype(str).to_numpy()
    diff = L[resp == test].mean() - L[resp == reference].mean()
    is_p = diff.index.isin(list(planted))
    out = {"planted_lfc": float(diff[is_p].mean()) if is_p.any() else None,
           "unplanted_lfc": float(diff[~is_p].mean()) if (~is_p).any() else None,
           "n_planted_genes_scored": int(is_p.sum()), "n_set_genes_scored": int(len(diff)),
           "planted_within_sd": None, "planted_d": None}
    if is_p.any():  # per patient: mean log2 CPM of the planted genes; its pooled within-group sd (the noise)
        score = L.loc[:, is_p].mean(1).to_numpy()
        out["planted_score"] = {str(k): float(v) for k, v in zip(L.index, score)}
        groups = [score[resp == g] for g in (reference, test)]
        dof = sum(len(g) - 1 for g in groups)
        if dof > 0:
            sd = float(np.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / dof))
            out["planted_within_sd"] = sd
            out["planted_d"] = out["planted_lfc"] / sd if sd > 0 else None
    return out


def is_ig(gene: str) -> bool:
    return str(gene).startswith(IG_PREFIXES)


def without_ig_comparison(pb: ad.AnnData, reference: str = "CR", test: str = "NR") -> dict[str, Any]:
    """A diagnostic beside the claim: the same set score and comparison on the set's genes that are not
    immunoglobulin genes (in monocytes those reads come from the ambient soup of plasma cells), with the number of
    immunoglobulin genes the claim's own score uses."""
    L = log_cpm(pb)
    genes = claim_genes(CLAIMS[CLAIM])
    used = [g for g in dict.fromkeys(genes) if g in L.columns and L[g].mean() >= 1.0]
    out: dict[str, Any] = {"n_ig_genes_scored": int(sum(is_ig(g) for g in used))}
    try:
        v = set_score(L, [g for g in genes if not is_ig(g)])
    except ValueError as e:
        return {**out, "no_ig": {"status": "not testable", "reason": str(e)}}
    return {**out, "no_ig": comparison(v, pb.obs["response"].astype(str), reference, test)}


def comparison(values: pd.Series, responses: pd.Series, reference: str = "CR", test: str = "NR") -> dict[str, Any]:
    """The claim's comparison record (Hodges-Lehmann, Mann-Whitney) and the verdict rule applied to it."""
    rec = compare_two_groups(values, responses, reference, test)
    return {**{k: rec.get(k) for k in RECORD_KEYS}, "reproduced": bool(reproduced(CLAIMS[CLAIM], rec))}


def annotation_purity(obs: pd.DataFrame, target: str = TARGET, label: str = "cell_type") -> dict[str, Any]:
    """Called ``target`` cells against the truth: how many good truth-``target`` cells there are, how many cells are
    called ``target``, recall and purity, what the called cells truly are (truth type, or ``junk:<quality>`` for a
    doublet or damaged cell) and what the true ones were called."""
    called = (obs[label].astype(str) == target).to_numpy()
    true = truly_target(obs, target)
    quality = obs["truth_quality"].astype(str)
    what = np.where(quality == "good", obs["truth_cell_type"].astype(str), "junk:" + quality)
    truly = pd.Series(what[called]).value_counts()
    went = pd.Series(obs[label].astype(str).to_numpy()[true]).value_counts()
    n_both = int((called & true).sum())
    return {"n_truth": int(true.sum()), "n_called": int(called.sum()), "n_called_and_true": n_both,
            "recall": n_both / true.sum() if true.any() else None,
            "purity": n_both / called.sum() if called.any() else None,
            "called_cells_truly": {str(k): int(v) for k, v in truly.items()},
            "truth_cells_called": {str(k): int(v) for k, v in went.items()}}


def measure_cells(adata: ad.AnnData, cohort: Any, min_cells: int, planted: list[str]) -> dict[str, Any]:
    """One stage on cells: the claim's record as notebook 04 computes it (:func:`helpers.analysis.findings.
    measure_claim`; ``cohort`` needs ``groups``, ``reference_group`` and ``test_group``), the verdict, classical
    monocytes per patient and the planted-gene shift of the same pseudobulk."""
    patients = adata.obs.drop_duplicates("patient_id").set_index("patient_id")["response"].astype(str)
    patients.index = patients.index.astype(str)
    counts = cells_per_patient(adata.obs, patients.sort_index())
    out: dict[str, Any] = {"cells_per_patient": counts, "patients_below_min_cells": patients_below(counts, min_cells)}
    _, rec = fd.measure_claim(adata, CLAIM, cohort, min_cells)
    if fd.is_not_testable(rec):
        return {**out, "status": "not testable", "reason": rec["reason"], "reproduced": False}
    out.update({k: rec.get(k) for k in RECORD_KEYS})
    out["reproduced"] = bool(reproduced(CLAIMS[CLAIM], rec))
    pb, _, _ = claim_pseudobulk(adata, CLAIM, min_cells, groups=cohort.groups)
    out.update(planted_set_shift(pb, claim_genes(CLAIMS[CLAIM]), planted, cohort.reference_group, cohort.test_group))
    out.update(without_ig_comparison(pb, cohort.reference_group, cohort.test_group))
    if "truth_ambient_fraction" in adata.obs:  # mean ambient share of the classical cells, per patient
        m = (adata.obs["cell_type"].astype(str) == TARGET).to_numpy()
        amb = adata.obs.loc[m, "truth_ambient_fraction"].astype(float).groupby(
            adata.obs.loc[m, "patient_id"].astype(str).to_numpy()).mean()
        out["ambient_per_patient"] = {str(k): float(v) for k, v in amb.items()}
    return out


def measure_pseudobulk(pb: ad.AnnData, planted: list[str], reference: str = "CR", test: str = "NR"
                       ) -> dict[str, Any]:
    """One stage on a drawn patients x genes pseudobulk, as :func:`helpers.analysis.power.one_cohort` reads it."""
    counts = {str(p): int(n) for p, n in zip(pb.obs["patient_id"], pb.obs["n_cells"])}
    out: dict[str, Any] = {"cells_per_patient": counts}
    n = pb.obs["response"].value_counts()
    if len(n) < 2 or n.min() < 2:
        return {**out, "status": "not testable", "reason": "fewer than 2 patients per group", "reproduced": False}
    try:
        v = claim_value_from_pseudobulk(pb, CLAIM)
    except ValueError as e:
        return {**out, "status": "not testable", "reason": str(e), "reproduced": False}
    out.update(comparison(v, pb.obs["response"].astype(str), reference, test))
    out.update(planted_set_shift(pb, claim_genes(CLAIMS[CLAIM]), planted, reference, test))
    out.update(without_ig_comparison(pb, reference, test))
    return out


def stage_table(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per cohort and stage: effect, CI, p, reproduced, planted_lfc and classical monocytes per patient
    (median, min) with the patients below min_cells."""
    rows = []
    for cohort, res in results.items():
        expected = res.get("stages", {}).get("a0_expected", {}).get("planted_score", {})
        for stage in STAGES:
            r = res.get("stages", {}).get(stage)
            if r is None:
                continue
            other_genes = stage in ("a0_expected", "a_power_model")  # a_power_model: another gene universe
            noise = None if other_genes else technical_noise(r.get("planted_score", {}), expected)
            cells = pd.Series(r.get("cells_per_patient", {}), dtype=float)
            rows.append({"cohort": cohort, "stage": stage, **{k: r.get(k) for k in ("effect", "ci_low", "ci_high",
                                                                                     "p", "n_cr", "n_nr")},
                         "reproduced": bool(r.get("reproduced", False)), "planted_lfc": r.get("planted_lfc"),
                         "planted_within_sd": r.get("planted_within_sd"), "planted_d": r.get("planted_d"),
                         "technical_sd": noise, "n_ig_genes_scored": r.get("n_ig_genes_scored"),
                         "no_ig_p": r.get("no_ig", {}).get("p"),
                         "no_ig_reproduced": bool(r.get("no_ig", {}).get("reproduced", False)),
                         "cells_median": float(cells.median()) if len(cells) else None,
                         "cells_min": float(cells.min()) if len(cells) else None,
                         "n_below_min": len(r.get("patients_below_min_cells", [])),
                         "status": r.get("status", "tested")})
    return pd.DataFrame(rows)


def stage_rates(table: pd.DataFrame) -> pd.DataFrame:
    """Per stage over the cohorts that have it: cohorts, reproduced count and rate, median effect, median p,
    median planted_lfc."""
    rows = []
    for stage in STAGES:
        d = table[table["stage"] == stage]
        if not len(d):
            continue
        rows.append({"stage": stage, "n_cohorts": len(d), "n_reproduced": int(d["reproduced"].sum()),
                     "rate": float(d["reproduced"].mean()),
                     "median_effect": float(pd.to_numeric(d["effect"], errors="coerce").median()),
                     "median_p": float(pd.to_numeric(d["p"], errors="coerce").median()),
                     "median_planted_lfc": float(pd.to_numeric(d["planted_lfc"], errors="coerce").median()),
                     "median_planted_within_sd": float(pd.to_numeric(d["planted_within_sd"], errors="coerce").median()),
                     "median_planted_d": float(pd.to_numeric(d["planted_d"], errors="coerce").median()),
                     "median_technical_sd": float(pd.to_numeric(d["technical_sd"], errors="coerce").median()),
                     "median_n_ig_genes_scored": float(pd.to_numeric(d["n_ig_genes_scored"], errors="coerce").median()),
                     "n_reproduced_without_ig": int(d["no_ig_reproduced"].sum())})
    return pd.DataFrame(rows)


# -- stages that need the simulator or the chain ------------------------------------------------------------------

def discovery_samples(cohort: Cohort) -> pd.DataFrame:
    return cohort.samples[cohort.samples["tissue"] == cohort.discovery_tissue].reset_index(drop=True)


def planted_genes(model) -> list[str]:
    return list(model.weights[EFFECT])


def expected_pseudobulk(cohort: Cohort, model, target: str = TARGET, depth: float = 1e7) -> ad.AnnData:
    """Patients x genes: each marrow sample's mean ``target`` droplet profile (:func:`helpers.data.simulate.
    expected_cell_profiles`, continuum and soup averaged in, as the power model's draw is centred) at ``depth``
    counts: the patients' signal without cell sampling or count noise."""
    sim, seed = cohort.simulation, cohort.seed
    samples = discovery_samples(cohort)
    patients = draw_patients(samples, sim, seed)
    rows = []
    for _, r in samples.iterrows():
        prof, props = sample_profiles(model, r, patients[r["patient_id"]], sim, seed, r["tissue"].lower())
        if target in props:
            rows.append((r["patient_id"], r["response"], expected_cell_profiles(prof, props, sim).loc[target]))
    obs = pd.DataFrame({"patient_id": [r[0] for r in rows], "response": [r[1] for r in rows]},
                       index=[r[0] for r in rows])
    X = np.vstack([r[2].to_numpy() for r in rows]) * depth
    return ad.AnnData(X=X, obs=obs.assign(n_cells=0), var=pd.DataFrame(index=model.genes.genes.copy()))


def technical_noise(stage_scores: dict[str, float], expected_scores: dict[str, float]) -> float | None:
    """The sd over patients of a stage's per-patient planted score minus the noise-free one (centred: a common
    offset, e.g. from CPM scaling, is not noise); None with fewer than 3 shared patients."""
    both = [p for p in stage_scores if p in expected_scores]
    if len(both) < 3:
        return None
    d = np.array([stage_scores[p] - expected_scores[p] for p in both])
    return float(np.std(d - d.mean(), ddof=1))


def pseudobulk_stages(cohort: Cohort, min_cells: int, power_genes: int = cal.POWER_GENES) -> dict[str, Any]:
    """Stages a: the cohort's marrow samples drawn as pseudobulks (same seed, patients and sample sheet), with the
    power model's gene cap and with the cohort's own genes."""
    sim, seed = cohort.simulation, cohort.seed
    samples = discovery_samples(cohort)
    groups = {CLAIM: list(CLAIMS[CLAIM].cells)}
    out = {}
    for stage, n_genes in (("a_power_model", min(int(sim.get("n_genes", 16000)), power_genes)),
                           ("a_pseudobulk_same_genes", int(sim.get("n_genes", 16000)))):
        s = dict(sim, n_genes=n_genes)
        model = cohort_model(s, seed)
        pbs = simulate_pseudobulks(samples, s, seed, groups, model=model, min_cells=min_cells)
        if CLAIM not in pbs:
            out[stage] = {"status": "not testable", "reason": "no patient with min_cells cells", "reproduced": False}
            continue
        out[stage] = {**measure_pseudobulk(pbs[CLAIM], planted_genes(model), cohort.reference_group,
                                           cohort.test_group), "n_genes": n_genes}
        if stage == "a_pseudobulk_same_genes":
            exp = measure_pseudobulk(expected_pseudobulk(cohort, model), planted_genes(model),
                                     cohort.reference_group, cohort.test_group)
            exp["cells_per_patient"] = {}
            out = {"a0_expected": {**exp, "n_genes": n_genes}, **out}
    return out


def simulate_discovery_droplets(cohort: Cohort) -> ad.AnnData:
    """The cohort's marrow droplets as notebook 00 simulates them (:func:`helpers.data.simulate.simulate_sample`,
    sample by sample with the cohort's seed: the same counts as the marrow part of cells.h5ad)."""
    sim, seed = cohort.simulation, cohort.seed
    model = cohort_model(sim, seed)
    samples = discovery_samples(cohort)
    patients = draw_patients(cohort.samples, sim, seed)
    parts = [simulate_sample(model, r, patients[r["patient_id"]], sim, seed) for _, r in samples.iterrows()]
    adata = ad.concat(parts, join="outer", merge="same")
    adata.var_names = model.genes.genes
    adata.layers["counts"] = adata.X.copy()
    return adata


def droplet_stage(cells: ad.AnnData, cohort: Cohort, min_cells: int, planted: list[str]) -> dict[str, Any]:
    """Stage b on the marrow droplets."""
    bm = cells[(cells.obs["tissue"].astype(str) == cohort.discovery_tissue).to_numpy()]
    return measure_cells(truth_labelled(bm, good_only=True), cohort, min_cells, planted)


def chain_stages(project: Path, cohort: Cohort, min_cells: int, planted: list[str]) -> dict[str, Any]:
    """Stages b, c and d from the chain's own files (cells.h5ad, integrated.h5ad, annotated.h5ad) and the
    annotation's purity/recall of classical monocytes in the marrow."""
    pdir = cohort.processed_dir
    bm = cohort.discovery_tissue
    out: dict[str, Any] = {}
    cells = read_cohort_cells(pdir / "cells.h5ad")
    out["b_droplets_truth"] = droplet_stage(cells, cohort, min_cells, planted)
    in_bm = cells.obs["tissue"].astype(str) == bm
    target_in = truly_target(cells.obs[in_bm])
    del cells
    kept = ad.read_h5ad(pdir / "integrated.h5ad")
    kept = kept[(kept.obs["tissue"].astype(str) == bm).to_numpy()]
    out["c_qc_truth"] = measure_cells(truth_labelled(kept, good_only=False), cohort, min_cells, planted)
    out["c_qc_truth_good"] = measure_cells(truth_labelled(kept, good_only=True), cohort, min_cells, planted)
    qc = {"n_truth_classical_in": int(target_in.sum()), "n_truth_classical_kept": int(truly_target(kept.obs).sum()),
          "n_kept_junk_truth_classical": int(((kept.obs["truth_cell_type"].astype(str) == TARGET)
                                              & (kept.obs["truth_quality"].astype(str) != "good")).sum())}
    qc["classical_kept_fraction"] = qc["n_truth_classical_kept"] / max(qc["n_truth_classical_in"], 1)
    del kept
    disc = fd.load_discovery_cells(cohort)  # annotated.h5ad without 'unassigned', marrow: what notebook 04 reads
    out["d_chain"] = measure_cells(disc, cohort, min_cells, planted)
    out["d_chain_pure"] = measure_cells(without_contamination(disc), cohort, min_cells, planted)
    full = ad.read_h5ad(pdir / "annotated.h5ad", backed="r")
    obs = full.obs[full.obs["tissue"].astype(str) == bm]
    return {"stages": out, "qc": qc, "annotation": annotation_purity(obs),
            "annotation_assigned_only": annotation_purity(disc.obs)}


def prepare_project(scratch: Path, checkout: Path, indices: list[int], base_seed: int = BASE_SEED,
                    design: cal.Design | None = None) -> tuple[Path, list[tuple[str, str, int]]]:
    """The scratch project root and the planted calibration cohorts ``indices`` written into it (the same
    definitions :func:`helpers.validation.calibration.calibrate` writes)."""
    project = cal.link_project(scratch, checkout)
    cohorts = [(cal.cohort_name("planted", i), "planted", cal.cohort_seed(base_seed, "planted", i)) for i in indices]
    cal.prepare_cohorts(project, cohorts, cal.source_configs(checkout), design or cal.Design())
    return project, cohorts


def calibration_p(runs_path: Path, name: str) -> float | None:
    """The chain's p for the claim in this cohort in the committed calibration run (None when absent)."""
    if not runs_path.exists():
        return None
    runs = cal.read_calibration_table(runs_path)
    r = runs[(runs["cohort"] == name) & (runs["claim"] == CLAIMS[CLAIM].label)]
    return float(r["p"].iloc[0]) if len(r) and pd.notna(r["p"].iloc[0]) else None


def analyse_cohort(project: Path, name: str, run_the_chain: bool, threads: int, runs_path: Path) -> dict[str, Any]:
    """Every stage of one cohort (a and b always; c and d when ``run_the_chain``: notebooks 00-02 are run first
    unless already executed)."""
    C = load_cohort(name, root=project)
    min_cells = int(C.analysis("min_cells", cal.DEFAULT_MIN_CELLS))
    planted = planted_genes(cohort_model(C.simulation, C.seed))
    res: dict[str, Any] = {"seed": int(C.seed), "min_cells": min_cells,
                           "calibration_p": calibration_p(runs_path, name), "stages": {}}
    t0 = time.time()
    cache = C.results_dir / "power_gap_simulated_stages.json"  # stages a and b of the simulator alone
    key = cal.settings_key(CACHE_VERSION, C.config, C.samples.to_csv(index=False), min_cells, cal.POWER_GENES, STAGES)
    cached = json.loads(cache.read_text()) if cache.exists() else {}
    if cached.get("key") == key:
        simulated = cached["stages"]
    else:
        simulated = pseudobulk_stages(C, min_cells)
        if not run_the_chain:
            simulated["b_droplets_truth"] = droplet_stage(simulate_discovery_droplets(C), C, min_cells, planted)
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            tmp.write_text(json.dumps(to_jsonable({"key": key, "stages": simulated})))
    res["stages"].update(simulated)
    if run_the_chain:
        cal.run_chain(project, name, CHAIN_NOTEBOOKS, threads)
        res["chain_seconds"] = cal.chain_seconds(project, name)
        ch = chain_stages(project, C, min_cells, planted)
        res["stages"].update(ch.pop("stages"))
        res.update(ch)
    elif "b_droplets_truth" not in res["stages"]:
        res["stages"]["b_droplets_truth"] = droplet_stage(simulate_discovery_droplets(C), C, min_cells, planted)
    res["stages"] = {s: res["stages"][s] for s in STAGES if s in res["stages"]}
    res["measure_seconds"] = round(time.time() - t0, 1)
    return res


def parse_indices(values: list[str]) -> list[int]:
    """'0-3 7' -> [0, 1, 2, 3, 7] (order kept, duplicates dropped)."""
    out: list[int] = []
    for v in values:
        for part in str(v).split(","):
            if not part:
                continue
            lo, _, hi = part.partition("-")
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return list(dict.fromkeys(out))


# -- report -------------------------------------------------------------------------------------------------------

def fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "NA"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}f}" if abs(v) >= 10 ** -digits or v == 0 else f"{v:.1e}"
    return str(v)


def markdown_report(results: dict[str, Any], meta: dict[str, Any], keep: str = "") -> str:
    """The markdown: what was run, per-stage rates, the per cohort x stage table, annotation purity, and the kept
    interpretation section."""
    table = stage_table(results["cohorts"])
    chain = [c for c, r in results["cohorts"].items() if "annotation" in r]
    lines = ["# Where the chain loses the classical-monocyte phagocytosis claim's power", "",
             f"Generated by `{meta['command']}` on {meta['date']} (checkout {meta['git_head']}); "
             "module `helpers.validation.power_gap` (its docstring defines every stage).", "",
             f"- Cohorts: planted calibration cohorts (seed {BASE_SEED} + 2i, design of `validation/calibration.md`: "
             f"6 CR + 6 NR marrow, 600 cells per sample). Stages a and b on {len(results['cohorts'])} cohorts; "
             f"stages c and d (notebooks 00-02 run in `{meta['scratch']}`, {meta['threads']} thread) on "
             f"{len(chain)}: {', '.join(c[-3:] for c in chain)}.",
             "- Stage (a) reuses the calibration cohort's patients: `simulate_pseudobulks` calls "
             "`draw_patients(samples, sim, seed)`, whose per-patient streams depend only on the seed and patient id, "
             "so with the cohort's sample sheet and seed the activations (and, with the same genes, the sample "
             "profiles) are the cohort's own; only the cells are not drawn. The calibration's prediction does not "
             "do this: `power.one_cohort` draws a new sheet and seed per repetition, at 4,000 genes.",
             "- `reproduced`: p < 0.05 and the shift down (the scorecard's rule). `planted_lfc`: NR - CR difference "
             "of group-mean pseudobulk log2 CPM over the planted genes of the tested set (dilution in log2 units); "
             "`planted_within_sd`: pooled within-group sd of the per-patient mean of those genes; `planted_d`: their "
             "ratio; `technical_sd`: sd over patients of that mean minus the noise-free one (`a0_expected`). "
             "`cells`: classical monocytes per marrow patient, median (min); `<min`: patients below min_cells.", "",
             "## Reproduced per stage", "", "### All cohorts with that stage", "",
             cal.markdown_table(stage_rates(table)), ""]
    if chain:
        lines += ["### The cohorts run through the chain", "",
                  cal.markdown_table(stage_rates(table[table["cohort"].isin(chain)])), ""]
    lines += ["## p per cohort and stage (all cohorts; * = reproduced)", "",
              "| cohort | calibration p (committed run) | " + " | ".join(STAGES) + " |",
              "|---|---|" + "---|" * len(STAGES)]
    for c, r in results["cohorts"].items():
        st = r["stages"]
        cells = [("NT" if st[s].get("status") == "not testable" else fmt(st[s].get("p"), 3)
                  + ("*" if st[s].get("reproduced") else "")) if s in st else "" for s in STAGES]
        lines.append(f"| {c[-3:]} | {fmt(r.get('calibration_p'), 3)} | " + " | ".join(cells) + " |")
    lines += ["", "## Per stage in the cohorts run through the chain", "",
              "| cohort | stage | effect [95% CI] | p | reproduced | planted_lfc | planted_within_sd | technical_sd | "
              "cells median (min) | <min |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for c in chain:
        for row in table[table["cohort"] == c].itertuples():
            eff = (f"{fmt(row.effect)} [{fmt(row.ci_low)}, {fmt(row.ci_high)}]" if row.status == "tested"
                   else row.status)
            cells = f"{fmt(row.cells_median, 0)} ({fmt(row.cells_min, 0)})" if row.cells_median is not None else ""
            lines.append(f"| {c[-3:]} | {row.stage} | {eff} | {fmt(row.p, 3)} | {fmt(row.reproduced)} | "
                         f"{fmt(row.planted_lfc)} | {fmt(row.planted_within_sd)} | {fmt(row.technical_sd)} | "
                         f"{cells} | {row.n_below_min} |")
    if chain:
        lines += ["", "## QC and annotation of classical monocytes (marrow, chain cohorts)", "",
                  "| cohort | truth classical in | kept by QC | called classical | called & true | recall | purity | "
                  "called cells that are not truly classical | true classical called otherwise |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in chain:
            r = results["cohorts"][c]
            a, q = r["annotation"], r["qc"]
            other = {k: v for k, v in a["called_cells_truly"].items() if k != TARGET}
            went = {k: v for k, v in a["truth_cells_called"].items() if k != TARGET}
            top = lambda d: ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:4])  # noqa: E731
            lines.append(f"| {c[-3:]} | {q['n_truth_classical_in']} | {q['n_truth_classical_kept']} "
                         f"({q['classical_kept_fraction']:.0%}) | {a['n_called']} | {a['n_called_and_true']} | "
                         f"{fmt(a['recall'])} | {fmt(a['purity'])} | {top(other)} | {top(went)} |")
    lines.append("")
    if keep:
        lines += [keep.rstrip(), ""]
    return "\n".join(lines)


def kept_section(path: Path) -> str:
    """The ``## Interpretation`` section of an existing markdown (to the end of the file), or ''."""
    if not path.exists():
        return ""
    text = path.read_text()
    i = text.find(KEEP_SECTION)
    return text[i:] if i >= 0 else ""


def git_head(checkout: Path) -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def run(chain: list[int], truth_only: list[int], out_dir: Path, scratch: Path, threads: int = 1,
        checkout: Path | None = None, command: str = "python -m helpers.validation.power_gap",
        progress: bool = True) -> dict[str, Any]:
    """Measure every stage for the ``chain`` cohorts and stages a-b for the ``truth_only`` ones; write the JSON and
    the markdown into ``out_dir``."""
    checkout = Path(checkout or project_root()).resolve()
    indices = list(dict.fromkeys(chain + truth_only))
    project, cohorts = prepare_project(scratch, checkout, indices)
    runs_path = checkout / "validation" / "calibration_runs.csv"
    t0 = time.time()
    results: dict[str, Any] = {}
    for (name, _, _), i in zip(tqdm(cohorts, desc="power-gap cohorts", unit="cohort", disable=not progress), indices):
        results[name] = analyse_cohort(project, name, i in chain, threads, runs_path)
    table = stage_table(results)
    meta = {"command": command, "date": time.strftime("%Y-%m-%d"), "git_head": git_head(checkout),
            "scratch": str(scratch.relative_to(checkout)) if scratch.is_relative_to(checkout) else str(scratch),
            "threads": threads, "wall_seconds": round(time.time() - t0, 1), "claim": CLAIM,
            "claim_label": CLAIMS[CLAIM].label, "base_seed": BASE_SEED, "design": cal.Design().text(),
            "stages": STAGES, "chain_notebooks": CHAIN_NOTEBOOKS}
    doc = {"meta": meta, "rates": stage_rates(table).to_dict("records"),
           "rates_chain_cohorts": stage_rates(table[table["cohort"].isin(
               [cal.cohort_name("planted", i) for i in chain])]).to_dict("records"),
           "cohorts": results}
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out_dir / JSON_NAME, out_dir / MD_NAME
    with atomic_path(jpath) as tmp:
        tmp.write_text(json.dumps(to_jsonable(doc), indent=1, allow_nan=False) + "\n")
    md = markdown_report({"cohorts": results}, meta, keep=kept_section(mpath))
    with atomic_path(mpath) as tmp:
        tmp.write_text(md)
    return {"json": jpath, "md": mpath, "table": table, "doc": doc}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.validation.power_gap", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chain", nargs="*", default=["0", "10", "12", "13", "1", "18"],
                    help="planted calibration cohort indices run through notebooks 00-02 (every stage), e.g. 0 10-13")
    ap.add_argument("--truth-only", nargs="*", default=[],
                    help="cohort indices measured at stages a and b only (no chain), e.g. 0-19")
    ap.add_argument("--threads", type=int, default=1, help="threads of the chain's notebooks")
    ap.add_argument("--scratch", default=None, help="scratch project root (default .cache/power_gap/project)")
    ap.add_argument("--out", default=None, help="output folder (default validation/ of the checkout)")
    args = ap.parse_args(argv)
    checkout = project_root()
    command = "python -m helpers.validation.power_gap " + " ".join(argv if argv is not None else sys.argv[1:])
    res = run(parse_indices(args.chain), parse_indices(args.truth_only),
              Path(args.out) if args.out else checkout / "validation",
              Path(args.scratch) if args.scratch else checkout / ".cache" / "power_gap" / "project",
              args.threads, checkout, command)
    print(stage_rates(res["table"]).to_string(index=False))
    print(f"wrote {res['json']} and {res['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
