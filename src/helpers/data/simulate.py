"""Simulator of an IFM2017-03-like myeloma cohort with known, planted response effects.

The counts are negative-binomial UMI counts over real gene symbols. Gene-level means and dispersions are calibrated
on a real full-transcriptome reference (data/reference/celltypist_sample_559cells.h5ad). Cell types carry broad
programmes (a compartment part and a type part of hundreds of genes around the reference's levels, plus named
genes from data/simulation/cell_programs.yaml with graded leakage); cells sit on continua between neighbouring
states; every droplet holds ambient RNA of its sample; doublets pair any two cells (homotypic ones included);
damage is a continuum; patients carry co-varying gene modules and response-independent nuisance programmes
(interferon, dissociation stress, cell cycle; data/simulation/nuisance_programs.yaml). Tumours get a clonal
immunoglobulin, a translocation group and arm-level copy-number changes. Non-responders (NR) get the study's effects
(data/simulation/planted_programs.yaml), each on a random part of its pathway plus genes outside every tested set.
Every knob is read from the cohort's ``cohort.yaml`` (:func:`knob` names the missing one). Everything is drawn from
numpy Generators seeded from the cohort seed, one independent stream per sample, so the output is identical across
runs and across ``n_jobs``.

Analysis code never reads the ``truth_*`` columns or ``truth.json``; only tests and the scorecard do.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml
from joblib import Parallel, delayed
from scipy import stats as sstats
from tqdm.auto import tqdm

from helpers.data.cohort import Cohort, project_root
from helpers.data.describe import per_sample_summary
from helpers.data.genesets import (
    _collection,
    centromeres,
    curated_sets,
    gene_positions,
    gene_set,
    genesets_dir,
    progeny_weights,
)
from helpers.io import concat_h5ad_rows, index_h5ad_rows, read_annotations, write_h5ad, write_json, write_table

# --------------------------------------------------------------------------------------------------
# static inputs
# --------------------------------------------------------------------------------------------------
CNV_EVENTS = {
    # event: (chromosome, arm or 'whole', kind, prevalence in newly diagnosed myeloma, approx.)
    "1q_gain": ("chr1", "q", "gain", 0.40),
    "1p_loss": ("chr1", "p", "loss", 0.20),
    "13_loss": ("chr13", "whole", "loss", 0.45),
    "17p_loss": ("chr17", "p", "loss", 0.10),
    "16q_loss": ("chr16", "q", "loss", 0.20),
    "14q_loss": ("chr14", "q", "loss", 0.15),
    "6q_loss": ("chr6", "q", "loss", 0.15),
    "8p_loss": ("chr8", "p", "loss", 0.15),
}
HYPERDIPLOID_GAINS = ["chr3", "chr5", "chr7", "chr9", "chr11", "chr15", "chr19", "chr21"]


def simulation_dir() -> Path:
    return project_root() / "data" / "simulation"


def reference_path() -> Path:
    return project_root() / "data" / "reference" / "celltypist_sample_559cells.h5ad"


@lru_cache(maxsize=None)
def load_programs() -> dict[str, Any]:
    return yaml.safe_load((simulation_dir() / "cell_programs.yaml").read_text())


@lru_cache(maxsize=None)
def load_planted() -> dict[str, Any]:
    planted = yaml.safe_load((simulation_dir() / "planted_programs.yaml").read_text())
    for name, eff in planted.items():
        if ("genes" in eff) == ("pathway" in eff):
            raise ValueError(f"data/simulation/planted_programs.yaml: effect '{name}' needs either 'genes' or 'pathway'")
        eff.setdefault("sign", 1)
        eff.setdefault("disjoint_from", [])
    return planted


@lru_cache(maxsize=None)
def load_resistance() -> dict[str, Any]:
    """The resistance mechanisms planted in NR tumour cells (data/simulation/resistance_programs.yaml)."""
    path = simulation_dir() / "resistance_programs.yaml"
    mechanisms = yaml.safe_load(path.read_text()) or {}
    for name, m in mechanisms.items():
        if ("genes" in m) == ("pathway" in m):
            raise ValueError(f"{path}: mechanism '{name}' needs either 'genes' or 'pathway'")
        if m.setdefault("clone", "all") not in ("all", "one"):
            raise ValueError(f"{path}: mechanism '{name}' has clone '{m['clone']}' (allowed: all, one)")
        m.setdefault("sign", 1)
        m.setdefault("disjoint_from", [])
        m["cell_types"] = ["malignant_PC"]
    return mechanisms


@lru_cache(maxsize=None)
def load_nuisance() -> dict[str, Any]:
    """Nuisance programmes with their gene lists resolved (a named ``gene_set`` becomes its genes)."""

    nuisance = yaml.safe_load((simulation_dir() / "nuisance_programs.yaml").read_text())
    for spec in nuisance.values():
        if "gene_set" in spec:
            spec["genes"] = gene_set(spec["gene_set"])
    return nuisance


def knob(sim: dict[str, Any], path: str) -> Any:
    """A simulator setting from a cohort's ``simulation:`` block by dotted path, e.g. ``knob(sim, "ambient.fraction")``.
    Every knob lives in cohort.yaml (no hidden default); a missing one is named in the error."""
    cur: Any = sim
    for key in path.split("."):
        if not isinstance(cur, dict) or key not in cur:
            raise KeyError(f"cohort.yaml simulation.{path} is missing: every simulator knob is set in the cohort's "
                           "cohort.yaml (data/cohorts/ifm2017_sim/cohort.yaml lists each with its justification; "
                           "'base: ifm2017_sim' inherits them)")
        cur = cur[key]
    return cur


# --------------------------------------------------------------------------------------------------
# calibration on the real reference
# --------------------------------------------------------------------------------------------------
@dataclass
class GeneModel:
    """Gene universe with calibrated baseline fractions (sum 1) and NB dispersions."""

    genes: pd.Index
    baseline: np.ndarray  # pooled mean fraction of UMIs per gene (sums to 1)
    dispersion: np.ndarray  # NB dispersion phi (var = mu + phi mu^2)
    detected_in_reference: np.ndarray  # bool


def estimate_gene_parameters(counts: sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean fraction and a method-of-moments NB dispersion, shrunk to a mean trend.

    ``counts`` is cells x genes raw UMI counts. The dispersion uses the model
    E[x] = l_c p_g, Var[x] = l_c p_g + phi_g (l_c p_g)^2 with l_c the cell's library size.
    """
    counts = sp.csr_matrix(counts, dtype=np.float64)
    lib = np.asarray(counts.sum(1)).ravel()
    p = np.asarray(counts.sum(0)).ravel() / lib.sum()
    mu = np.outer(lib, p)  # cells x genes expected (dense is fine for ~500 cells)
    x = counts.toarray()
    num = ((x - mu) ** 2 - mu).sum(0)
    den = (mu**2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = np.where(den > 0, num / den, np.nan)
    detected = p > 0
    logm = np.log10(np.where(detected, p, np.nan))
    # trend: median phi in 20 quantile bins of the mean, then shrink gene values halfway to it
    phi_c = np.clip(phi, 0.01, 10.0)
    trend = np.full_like(p, np.nan)
    ok = detected & np.isfinite(phi_c)
    bins = np.quantile(logm[ok], np.linspace(0, 1, 21))
    idx = np.clip(np.digitize(logm, bins[1:-1]), 0, 19)
    for b in range(20):
        sel = ok & (idx == b)
        if sel.any():
            trend[(idx == b) & detected] = np.median(phi_c[sel])
    shrunk = np.exp(0.5 * np.log(np.where(ok, phi_c, trend)) + 0.5 * np.log(trend))
    # (the mixed reference also carries between-type variance; the realism test checks the net effect)
    shrunk = np.clip(shrunk, 0.02, 5.0)
    return p, shrunk


def required_genes() -> list[str]:
    """Genes the universe must hold: programme markers, immunoglobulins, translocation genes, planted genes and
    pathways, nuisance programmes, the analysis gene sets, PROGENy NFkB/TNFa/JAK-STAT targets and the resistance-atlas genes."""

    progs = load_programs()
    required: list[str] = []
    for t in progs["types"].values():
        required += list(t["markers"])
    for lst in progs["immunoglobulin"].values():
        required += list(lst)
    for grp in progs["translocation_groups"].values():
        required += list(grp)
    for eff in load_planted().values():
        required += list(eff["genes"]) if "genes" in eff else pathway_genes(eff)
    for spec in load_nuisance().values():
        required += list(spec["genes"])
    for s in ANALYSIS_SETS:
        required += gene_set(s)
    required += list(progeny_weights().query("source in ['NFkB', 'TNFa', 'JAK-STAT']")["target"])
    required += RESISTANCE_GENES
    return list(dict.fromkeys(required))


@lru_cache(maxsize=4)
def build_gene_model(n_genes: int, seed: int, dispersion_scale: float = 1.0) -> GeneModel:
    """Calibrate on the reference and build a gene universe of ``n_genes`` real symbols.

    The universe holds every gene detected in the reference, every gene named in the programmes, planted
    effects and the analysis gene sets the notebooks use, then protein-coding genes from the GRCh38
    position table (below detection in the reference) until ``n_genes`` is reached; when ``n_genes`` is
    smaller than that, the least-expressed detected genes are dropped first (required genes always stay).
    """

    ref = ad.read_h5ad(reference_path())
    ref.var_names_make_unique()
    p_ref, phi_ref = estimate_gene_parameters(ref.X)
    ref_p = pd.Series(p_ref, index=ref.var_names)
    ref_phi = pd.Series(phi_ref, index=ref.var_names)

    required = required_genes()  # all real symbols from the committed programmes and gene sets
    mt = [g for g in ref.var_names if g.startswith("MT-")]
    pos = gene_positions()

    detected = ref_p[ref_p > 0].sort_values(ascending=False)
    core = list(dict.fromkeys(mt + required))
    rest = [g for g in detected.index if g not in set(core)]
    n_fill = max(n_genes - len(core), 0)
    genes = core + rest[:n_fill]
    if len(genes) < n_genes:
        rng = np.random.default_rng(seed)
        pc = pos.index[(pos["gene_type"] == "protein-coding") & ~pos.index.isin(genes)]
        extra = sorted(rng.choice(np.asarray(pc), size=min(n_genes - len(genes), len(pc)), replace=False))
        genes += list(extra)
    genes = pd.Index(genes)

    det_mask = genes.isin(detected.index)
    base = ref_p.reindex(genes).fillna(0.0).to_numpy()
    # below detection: 559 cells x ~3,800 UMIs gave no count, so the fraction is under ~1/(559*3800)
    floor = 1.0 / (ref.n_obs * float(np.median(np.asarray(ref.X.sum(1)).ravel())))
    rng = np.random.default_rng(seed + 1)
    undetected = base == 0
    base[undetected] = floor * np.exp(rng.uniform(np.log(0.02), np.log(1.0), undetected.sum()))
    phi = ref_phi.reindex(genes).to_numpy()
    phi_fill = float(np.nanmedian(ref_phi[ref_p < np.quantile(ref_p[ref_p > 0], 0.25)]))
    phi = np.where(np.isfinite(phi), phi, phi_fill)
    # named programme genes are type-restricted: their dispersion in the mixed reference mostly measures which cells
    # express them, which the simulator models through its types, so they take the median dispersion of detected genes
    named = genes.isin(list(named_gene_levels()))
    phi[named] = float(np.nanmedian(ref_phi[ref_p > 0]))
    return GeneModel(genes=genes, baseline=base / base.sum(), dispersion=phi * dispersion_scale,
                     detected_in_reference=det_mask)


# sets the notebooks score; they must exist in the simulated universe
ANALYSIS_SETS = [
    "HALLMARK_INFLAMMATORY_RESPONSE",
    "HALLMARK_TNFA_SIGNALING_VIA_NFKB",
    "HALLMARK_IL6_JAK_STAT3_SIGNALING",
    "HALLMARK_INTERFERON_ALPHA_RESPONSE",
    "REACTOME_FCGAMMA_RECEPTOR_FCGR_DEPENDENT_PHAGOCYTOSIS",
    "REACTOME_CYTOKINE_SIGNALING_IN_IMMUNE_SYSTEM",
    "REACTOME_CHROMATIN_MODIFYING_ENZYMES",
    "REACTOME_DNA_REPAIR",
    "REACTOME_HDR_THROUGH_HOMOLOGOUS_RECOMBINATION_HRR",
    "REACTOME_NONHOMOLOGOUS_END_JOINING_NHEJ",
    "REACTOME_FANCONI_ANEMIA_PATHWAY",
    "GO_0006909_phagocytosis_with_descendants",
    "TRRUST_NFKB_family_targets_union",
]
RESISTANCE_GENES = [
    "ABCB1", "ABCB4", "ABCC1", "ABCG2", "MVP", "EZH2", "KDM6A", "NSD2", "HDAC1", "HDAC2", "HDAC3", "DNMT1",
    "DNMT3A", "DNMT3B", "CD38", "CD46", "CD55", "CD59", "CD47", "CRBN", "IKZF1", "IKZF3", "IRF4", "TNFRSF17",
    "SLAMF7", "GPRC5D", "FCRL5", "PSMB5", "IL6R", "CXCR4", "TNFSF13", "TNFSF13B", "TNFRSF13B", "ITGAL", "ITGB2",
]


# --------------------------------------------------------------------------------------------------
# cell-type profiles
# --------------------------------------------------------------------------------------------------
def _sparse_shift(rng: np.random.Generator, n: int, fraction: float, sd: float) -> np.ndarray:
    """log2 shifts of ``n`` genes: a random ``fraction`` of them shifted by normal(0, ``sd``), the rest 0."""
    shift = rng.normal(0, sd, n)
    return np.where(rng.random(n) < fraction, shift, 0.0)


def named_gene_levels() -> dict[str, float]:
    """The highest level (fraction of UMIs) at which any type of cell_programs.yaml lists each named gene."""
    out: dict[str, float] = {}
    for t in load_programs()["types"].values():
        for g, cp10k in t["markers"].items():
            out[g] = max(out.get(g, 0.0), cp10k * 1e-4)
    return out


def cell_type_profiles(gm: GeneModel, seed: int, programmes: dict[str, Any]) -> pd.DataFrame:
    """Types x genes mean fractions (rows sum to 1).

    Each type starts from the reference's gene levels, takes its compartment's shift (a random share of genes,
    ``programmes.lineage``: shared by the types of a lineage) and its own smaller shift (``programmes.type``), then
    its named genes at their listed level. Named genes keep, in types that do not list them, a per-gene leak of
    their highest listed level (log-uniform in ``programmes.marker_leak``). Mitochondrial genes are left alone (the
    mitochondrial fraction is a property of a cell's state, not of its type)."""
    types = load_programs()["types"]
    rng = np.random.default_rng([seed, stable_int("type_profiles")])
    n = len(gm.genes)
    mt = np.asarray(gm.genes.str.startswith("MT-"))
    gidx = pd.Series(np.arange(n), index=gm.genes)
    lin, typ = knob(programmes, "lineage"), knob(programmes, "type")
    compartments = sorted({t["compartment"] for t in types.values()})
    lineage = {c: _sparse_shift(rng, n, lin["fraction"], lin["sd"]) for c in compartments}
    levels = {g: v for g, v in named_gene_levels().items() if g in gidx.index}
    lo, hi = knob(programmes, "marker_leak")
    cap = float(knob(programmes, "marker_leak_max_cp10k")) * 1e-4
    base = gm.baseline.copy()
    named = gidx[list(levels)].to_numpy()
    leak = np.fromiter(levels.values(), float) * np.exp(rng.uniform(np.log(lo), np.log(hi), len(named)))
    base[named] = np.minimum(leak, cap)
    rows = {}
    for name, t in types.items():
        dev = lineage[t["compartment"]] + _sparse_shift(rng, n, typ["fraction"], typ["sd"])
        dev[mt] = 0.0
        prof = base * np.exp2(dev)
        for g, cp10k in t["markers"].items():
            if g in gidx.index:
                prof[gidx[g]] = cp10k * 1e-4
        rows[name] = prof / prof.sum()
    return pd.DataFrame(rows, index=gm.genes).T


def _norm(v: np.ndarray) -> np.ndarray:
    return v / v.sum()


def continuum_neighbours() -> dict[str, list[str]]:
    """Per cell type, the states it has continua with (cell_programs.yaml ``continua``, both directions)."""
    out: dict[str, list[str]] = {}
    for a, b in load_programs().get("continua", []):
        out.setdefault(a, []).append(b)
        out.setdefault(b, []).append(a)
    return out


@dataclass
class Modules:
    """Co-varying gene modules: the module of each gene (-1: none) and its loading."""

    member: np.ndarray
    loading: np.ndarray
    n: int


def draw_modules(n_genes: int, cfg: dict[str, Any], seed: int) -> Modules:
    rng = np.random.default_rng([seed, stable_int("modules")])
    n = int(cfg["n"])
    member = np.where(rng.random(n_genes) < float(cfg["gene_fraction"]), rng.integers(0, n, n_genes), -1)
    return Modules(member=member, loading=rng.uniform(0.5, 1.5, n_genes), n=n)


def module_log2(modules: Modules, sd: float, rng: np.random.Generator) -> np.ndarray:
    """log2 shifts of every gene from one draw of the modules' activities (normal, ``sd``)."""
    act = np.append(rng.normal(0, sd, modules.n), 0.0)  # index -1 (no module) reads the trailing 0
    return act[modules.member] * modules.loading


# --------------------------------------------------------------------------------------------------
# design (samples.csv) and per-patient draws
# --------------------------------------------------------------------------------------------------
def stratified_batches(response: np.ndarray, n_batches: int, rng: np.random.Generator) -> np.ndarray:
    """Batch index per sample, stratified by response: each group is shuffled and dealt round-robin over the
    batches (continuing where the previous group stopped), so every batch holds both groups in near-equal numbers
    and the batch cannot stand in for the response."""
    response = np.asarray(response)
    out = np.empty(len(response), dtype=int)
    start = 0
    for g in np.unique(response):
        idx = rng.permutation(np.where(response == g)[0])
        out[idx] = (start + np.arange(len(idx))) % n_batches
        start = (start + len(idx)) % n_batches
    return out


def make_design(n_cr: int, n_nr: int, seed: int, tissue: str = "BM", n_batches: int = 4, prefix: str = "P",
                age_range: tuple[float, float] = (65, 84)) -> pd.DataFrame:
    """A sample sheet for a simulated cohort: one sample per patient, batches stratified by response."""
    rng = np.random.default_rng(seed)
    n = n_cr + n_nr
    resp = np.array(["CR"] * n_cr + ["NR"] * n_nr)[rng.permutation(n)]
    batches = stratified_batches(resp, n_batches, rng) + 1
    ages = np.round(rng.uniform(*age_range, size=n)).astype(int)
    pids = [f"{prefix}{i + 1:02d}" for i in range(n)]
    return pd.DataFrame({
        "sample_id": [f"{p}_{tissue}" for p in pids],
        "patient_id": pids,
        "tissue": tissue,
        "response": resp,
        "age": ages,
        "batch": [f"{tissue}_b{b}" for b in batches],
    })


def stable_int(*parts: Any) -> int:
    """A seed component from names (sha256, stable across runs and Python versions): ``default_rng([seed,
    stable_int("cells", sample_id)])`` gives every sample its own stream whatever the order of simulation."""
    h = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()
    return int(h[:8], 16)


def pathway_genes(effect: dict[str, Any]) -> list[str]:
    """The genes of an effect's pathway: a named gene set, or ``progeny:<pathway>`` (targets with positive weight)."""

    pathway = effect["pathway"]
    if pathway.startswith("progeny:"):
        net = progeny_weights()
        net = net[(net["source"] == pathway.split(":", 1)[1]) & (net["weight"] > 0)]
        return sorted(net["target"])
    return list(gene_set(pathway))


@lru_cache(maxsize=None)
def tested_genes() -> frozenset[str]:
    """Every gene of any set the compendium can test or annotate with: all Hallmark and canonical sets, the GO,
    TRRUST and curated lists, every PROGENy pathway, the classifier panel, the resistance-atlas genes and the
    simulator's named programme genes. Planted genes "outside every tested set" avoid these. (The annotation's marker
    table is never read here: the simulator does not know how cells will be annotated.)"""

    genes: set[str] = set()
    for coll in ("hallmark", "canonical"):
        for members in _collection(coll).values():
            genes.update(members)
    for txt in genesets_dir().glob("*.txt"):
        genes.update(g.strip() for g in txt.read_text().split() if g.strip())
    for members in curated_sets().values():
        genes.update(members)
    genes.update(progeny_weights()["target"])
    genes.update(pd.read_csv(genesets_dir() / "nfkb_panel.csv")["gene"])
    genes.update(RESISTANCE_GENES)
    genes.update(named_gene_levels())
    return frozenset(genes)


def draw_effect_weights(gm: GeneModel, seed: int, planting: dict[str, Any],
                        effects: dict[str, Any] | None = None) -> dict[str, dict[str, float]]:
    """Per planted effect (``effects``: the study's, :func:`load_planted`, by default; or the resistance mechanisms,
    :func:`load_resistance`), its genes and their weights, drawn per cohort seed.

    A pathway effect touches a random share (uniform in ``planting.pathway_fraction``) of its pathway's genes in the
    universe, avoiding the genes of the effects it must be disjoint from, plus ``planting.outside_ratio`` as many
    expressed genes outside every tested set (:func:`tested_genes`). Single-gene effects stay on their genes.
    Weights are uniform in ``planting.gene_weight``: genes respond unequally, as in real programmes."""
    universe = set(gm.genes)
    tested = tested_genes()
    pool = sorted(g for g, det in zip(gm.genes, gm.detected_in_reference)
                  if det and g not in tested and not g.startswith("MT-"))
    lo, hi = knob(planting, "pathway_fraction")
    out: dict[str, dict[str, float]] = {}
    for name, eff in (load_planted() if effects is None else effects).items():
        rng = np.random.default_rng([seed, stable_int("weights", name)])
        if "genes" in eff:
            genes = [g for g in eff["genes"] if g in universe]
        else:
            excluded = set().union(*(set(out[o]) for o in eff["disjoint_from"]))
            path = [g for g in pathway_genes(eff) if g in universe]
            cand = sorted(set(path) - excluded)
            k = min(len(cand), int(round(rng.uniform(lo, hi) * len(path))))
            inside = sorted(rng.choice(cand, size=k, replace=False)) if k else []
            free = [g for g in pool if g not in excluded]
            n_out = min(len(free), int(round(float(knob(planting, "outside_ratio")) * len(inside))))
            genes = inside + sorted(rng.choice(free, size=n_out, replace=False))
        w = rng.uniform(*knob(planting, "gene_weight"), size=len(genes))
        out[name] = {str(g): float(v) for g, v in zip(genes, np.round(w, 3))}
    return out


def tested_set_fractions(weights: dict[str, dict[str, float]], genes: pd.Index) -> dict[str, dict[str, Any]]:
    """Per cell claim, how much of its tested set the claim's planted effect touches: the fraction of the set's
    genes (those in the simulated universe) that are planted, and the share of the planted genes inside the set."""
    from helpers.claims import cell_claims, claim_genes

    out = {}
    universe = set(genes)
    for name, claim in cell_claims().items():
        tested = [g for g in claim_genes(claim) if g in universe]
        planted = set(weights.get(claim.planted, {}))
        hit = planted & set(tested)
        out[name] = {"planted_effect": claim.planted, "tested_set": claim.feature, "n_tested": len(tested),
                     "n_planted_in_set": len(hit), "n_planted": len(planted),
                     "fraction_of_set_planted": round(len(hit) / len(tested), 4) if tested else None,
                     "fraction_of_planted_in_set": round(len(hit) / len(planted), 4) if planted else None}
    return out


def draw_patients(samples: pd.DataFrame, sim: dict[str, Any], seed: int) -> dict[str, dict[str, Any]]:
    """Per-patient draws: effect activations (log2) and their latent z, nuisance activities (interferon, share of
    cycling cells), tumour fraction, clone structure, Ig, translocation."""
    progs = load_programs()
    effects = knob(sim, "effects")
    rho = float(knob(sim, "tumour_inflammation_correlation"))
    ifn_sd = float(knob(sim, "nuisance.interferon_sd"))
    cyc = knob(sim, "nuisance.cycling_fraction")
    mf = knob(sim, "malignant_fraction")
    out: dict[str, dict[str, Any]] = {}
    patients = samples.drop_duplicates("patient_id")
    for _, row in patients.iterrows():
        pid = row["patient_id"]
        rng = np.random.default_rng([seed, stable_int("patient", pid)])
        nr = row["response"] == "NR"
        # blood carries the immune-side effects at a weaker strength
        scale = float(knob(sim, "pb_effect_scale")) if row["tissue"] == "PB" else 1.0
        names = list(load_planted())
        z = dict(zip(names, rng.standard_normal(len(names))))
        # tumour NF-kB co-varies with the patient's inflammation (shared latent, correlation rho)
        z["tumour_nfkb"] = rho * z["inflammation"] + np.sqrt(1 - rho**2) * z["tumour_nfkb"]
        acts = {}
        for name in names:
            e = effects.get(name, {})
            strength, spread = float(e.get("strength", 0.0)), float(e.get("spread", 0.0))
            acts[name] = float(strength * scale * nr + spread * z[name])
        ig = progs["immunoglobulin"]
        light = "kappa" if rng.random() < 0.62 else "lambda"
        v = rng.choice(ig["kappa_v"] if light == "kappa" else ig["lambda_v"])
        heavy = rng.choice(ig["heavy_constant"], p=[0.55, 0.25, 0.1, 0.1])
        hv = rng.choice(ig["heavy_v"])
        tgroups = list(progs["translocation_groups"])
        tgroup = rng.choice(tgroups, p=[0.2, 0.15, 0.1, 0.55])
        frac = float(np.clip(rng.beta(mf["a"], mf["b"]), mf["min"], mf["max"]))
        trunk = [ev for ev, (_, _, _, prev) in CNV_EVENTS.items() if rng.random() < prev]
        if tgroup == "hyperdiploid":
            trunk += [f"{c}_gain" for c in HYPERDIPLOID_GAINS if rng.random() < 0.8]
        if not trunk:
            trunk = ["1q_gain"]
        n_clones = int(rng.integers(1, 4))
        clones = [{"events": trunk}]
        pool = [ev for ev in CNV_EVENTS if ev not in trunk]
        # each subclone adds subclonal arm-level events to the trunk (clones.extra_events, uniform): its first from
        # the patient's stream, further ones from their own stream so the other patient draws stay as they were
        crng = np.random.default_rng([seed, stable_int("subclone_events", pid)])
        lo, hi = (int(v) for v in knob(sim, "clones.extra_events"))
        for _ in range(n_clones - 1):
            if not pool:
                break
            extra = [pool.pop(int(rng.integers(len(pool))))]
            for _ in range(int(crng.integers(lo, hi + 1)) - 1):
                if pool:
                    extra.append(pool.pop(int(crng.integers(len(pool)))))
            clones.append({"events": trunk + extra})
        fr = rng.dirichlet(np.full(len(clones), 3.0))
        for c, f in zip(clones, fr):
            c["fraction"] = float(np.round(f, 4))
        # nuisance, independent of response: drawn from a separate stream so effects and designs do not move them
        nrng = np.random.default_rng([seed, stable_int("nuisance", pid)])
        resistance = draw_resistance(pid, nr, len(clones), sim, seed)
        out[pid] = {
            "response": row["response"], "activation": acts, "latent_z": {k: round(float(v), 4) for k, v in z.items()},
            "interferon_log2": round(float(nrng.normal(0, ifn_sd)), 4),
            "cycling_fraction": round(float(nrng.beta(cyc["a"], cyc["b"])), 4),
            "malignant_fraction": round(frac, 4),
            "light_chain": light, "light_v": str(v), "heavy_constant": str(heavy), "heavy_v": str(hv),
            "translocation_group": str(tgroup), "clones": clones, "resistance": resistance,
        }
    return out


def draw_resistance(pid: str, nr: bool, n_clones: int, sim: dict[str, Any], seed: int) -> dict[str, dict[str, Any]]:
    """One patient's resistance mechanisms (:func:`load_resistance`), from their own stream: an NR patient carries
    each independently with probability ``resistance.<name>.prevalence``; the activation (log2) is the strength in a
    carrier plus ``spread`` x a standard normal in every patient; ``clones``: the tumour clones that express it."""
    rng = np.random.default_rng([seed, stable_int("resistance", pid)])
    out = {}
    for name, m in load_resistance().items():
        k = knob(sim, f"resistance.{name}")
        carrier = bool(nr and rng.random() < float(k["prevalence"]))
        act = float(k["strength"]) * carrier + float(k["spread"]) * rng.standard_normal()
        out[name] = {"carrier": carrier, "activation": round(act, 4),
                     "clones": list(range(n_clones)) if m["clone"] == "all" else [n_clones - 1]}
    return out


def resistance_log2(model: "CohortModel", patient: dict[str, Any], clone: int) -> np.ndarray:
    """log2 changes of the resistance mechanisms in one tumour clone of one patient (zero outside its clones)."""
    gm = model.genes
    out = np.zeros(len(gm.genes))
    for name, m in load_resistance().items():
        r = patient["resistance"][name]
        if clone not in r["clones"]:
            continue
        w = model.resistance_weights[name]
        out[gm.genes.get_indexer(list(w))] += m["sign"] * r["activation"] * np.fromiter(w.values(), float)
    return out


# --------------------------------------------------------------------------------------------------
# copy-number events
# --------------------------------------------------------------------------------------------------
def _event_arm(ev: str) -> tuple[str, str, str]:
    if ev in CNV_EVENTS:
        chrom, arm, kind, _ = CNV_EVENTS[ev]
    else:  # whole-chromosome gain of the hyperdiploid group, e.g. 'chr3_gain'
        chrom, kind = ev.split("_")
        arm = "whole"
    return chrom, arm, kind


@lru_cache(maxsize=512)
def _event_mask(genes: tuple[str, ...], ev: str) -> tuple[np.ndarray, float, float]:
    """Genes (bool mask) on the arm of a CNV event, and the arm's start/end (Mb); cached per gene universe."""
    pos = _positions(genes)
    chrom, arm, _ = _event_arm(ev)
    c = centromeres().loc[chrom]
    start, end = {"p": (0, c.centromere_mb), "q": (c.centromere_mb, c.length_mb), "whole": (0, c.length_mb)}[arm]
    mb = (pos["start"] / 1e6).to_numpy()
    sel = (pos["chromosome"] == chrom).to_numpy() & (mb >= start) & (mb < end)
    sel.setflags(write=False)
    return sel, float(start), float(end)


@lru_cache(maxsize=4)
def _positions(genes: tuple[str, ...]) -> pd.DataFrame:

    return gene_positions().reindex(list(genes))


def cnv_factors(genes: pd.Index, events: list[str]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Per-gene expression factor for a list of CNV events (gain 1.5x, loss 0.5x) and the segments."""
    key = tuple(genes)
    f = np.ones(len(genes))
    segs = []
    for ev in events:
        chrom, arm, kind = _event_arm(ev)
        sel, start, end = _event_mask(key, ev)
        f[sel] *= 1.5 if kind == "gain" else 0.5
        segs.append({"event": ev, "chromosome": chrom, "arm": arm, "kind": kind,
                     "start_mb": start, "end_mb": end, "n_genes": int(sel.sum())})
    return f, segs


# --------------------------------------------------------------------------------------------------
# one sample
# --------------------------------------------------------------------------------------------------
def _effect_log2(gm: GeneModel, weights: dict[str, dict[str, float]], acts: dict[str, float],
                 cell_type: str, tissue: str) -> np.ndarray:
    """log2 fold changes of the planted effects for one patient and cell type."""
    out = np.zeros(len(gm.genes))
    for name, eff in load_planted().items():
        if cell_type not in eff["cell_types"] or (tissue == "PB" and not eff.get("blood", False)):
            continue
        w = weights[name]
        idx = gm.genes.get_indexer(list(w))
        if (idx < 0).any():
            raise KeyError(f"planted effect '{name}': genes {list(np.asarray(list(w))[idx < 0][:5])} not in the model")
        out[idx] += eff["sign"] * acts[name] * np.fromiter(w.values(), float)
    return out


def nuisance_genes(gm: GeneModel, name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a nuisance programme's genes in the universe and their fixed per-gene weights (uniform 0.5-1.5)."""
    idx = gm.genes.get_indexer(load_nuisance()[name]["genes"])
    idx = np.unique(idx[idx >= 0])
    rng = np.random.default_rng([seed, stable_int("nuisance_weights", name)])
    return idx, rng.uniform(0.5, 1.5, len(idx))


def sample_profiles(model: "CohortModel", row: pd.Series, patient: dict[str, Any], sim: dict[str, Any], seed: int,
                    tissue_key: str) -> tuple[pd.DataFrame, dict[str, float]]:
    """States x genes profiles of one sample (rows sum to 1) and the state proportions.

    Per type: the type profile with the patient's gene effects (independent per gene plus co-varying modules), the
    batch effect, the patient's interferon activity (immune compartments), the sample's dissociation stress and the
    planted effects; tumour states add the clone's Ig, translocation and copy-number changes."""
    gm, base = model.genes, model.profiles
    progs = load_programs()
    types = progs["types"]
    gidx = pd.Series(np.arange(len(gm.genes)), index=gm.genes)
    rng = np.random.default_rng([seed, stable_int("patient_re", row["patient_id"])])
    brng = np.random.default_rng([seed, stable_int("batch", row["batch"])])
    srng = np.random.default_rng([seed, stable_int("sample_nuisance", row["sample_id"])])
    patient_sd = float(knob(sim, "patient_sd"))
    module_sd = float(knob(sim, "modules.sd"))
    batch_log2 = brng.normal(0, float(knob(sim, "batch_sd")), len(gm.genes))
    tissue = row["tissue"]
    ifn_idx, ifn_w = nuisance_genes(gm, "interferon", seed)
    ifn_comps = set(load_nuisance()["interferon"]["compartments"])
    stress_idx, stress_w = nuisance_genes(gm, "dissociation_stress", seed)
    stress = srng.normal(0, float(knob(sim, "nuisance.stress_sd.sample")))

    means = pd.Series({t: float(v[tissue_key]) for t, v in types.items()})
    means = means[means > 0]
    conc = float(knob(sim, "composition_concentration"))
    props = pd.Series(rng.dirichlet(conc * means.to_numpy() / means.sum()), index=means.index)
    if tissue == "BM":
        f = patient["malignant_fraction"]
        props = props * (1 - f)
        props["malignant_PC"] = f

    profiles, state_props = {}, {}
    for t, p in props.items():
        log2 = rng.normal(0, patient_sd, len(gm.genes)) + module_log2(model.modules, module_sd, rng) + batch_log2
        log2 += _effect_log2(gm, model.weights, patient["activation"], t, tissue)
        if types[t]["compartment"] in ifn_comps:
            log2[ifn_idx] += patient["interferon_log2"] * ifn_w
        log2[stress_idx] += stress * stress_w
        prof = base.loc[t].to_numpy() * np.exp2(log2)
        if t == "malignant_PC":
            if patient["light_chain"] == "kappa":
                prof[gidx["IGKC"]] = 3000e-4
            else:
                prof[gidx["IGLC2"]], prof[gidx["IGLC3"]] = 2000e-4, 800e-4
            prof[gidx[patient["light_v"]]] = 400e-4
            prof[gidx[patient["heavy_constant"]]] = 1500e-4
            prof[gidx[patient["heavy_v"]]] = 300e-4
            for g, cp in progs["translocation_groups"][patient["translocation_group"]].items():
                prof[gidx[g]] = cp * 1e-4
            for k, clone in enumerate(patient["clones"]):
                fac, _ = cnv_factors(gm.genes, clone["events"])
                profiles[f"malignant_PC|{k}"] = _norm(prof * fac * np.exp2(resistance_log2(model, patient, k)))
                state_props[f"malignant_PC|{k}"] = p * clone["fraction"]
            continue
        if t == "normal_PC":  # polyclonal: kappa and lambda cells
            for light, share in (("kappa", 0.6), ("lambda", 0.4)):
                pr = prof.copy()
                if light == "kappa":
                    pr[gidx["IGKC"]] = 2500e-4
                else:
                    pr[gidx["IGLC2"]] = 1800e-4
                    pr[gidx["IGLC3"]] = 700e-4
                pr[gidx["IGHG1"]] = 1000e-4
                profiles[f"normal_PC|{light}"] = _norm(pr)
                state_props[f"normal_PC|{light}"] = p * share
            continue
        profiles[t] = _norm(prof)
        state_props[t] = p
    return pd.DataFrame(profiles, index=gm.genes).T, state_props


def _barcodes(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.array(list("ACGT"))
    codes = set()
    out = []
    while len(out) < n:
        bc = "".join(letters[rng.integers(0, 4, 16)])
        if bc not in codes:
            codes.add(bc)
            out.append(bc + "-1")
    return out


def state_types(states: np.ndarray) -> np.ndarray:
    """The cell type of each state name (``malignant_PC|1`` -> ``malignant_PC``)."""
    return np.array([s.split("|")[0] for s in states])


def neighbour_states(type_of: np.ndarray) -> list[np.ndarray]:
    """Per state, the indices of the sample's states it has a continuum with (cell_programs.yaml ``continua``)."""
    neighbours = continuum_neighbours()
    return [np.where(np.isin(type_of, neighbours.get(t, [])))[0] for t in type_of]


def ambient_profile(P: np.ndarray, props: np.ndarray, lib_type: np.ndarray) -> np.ndarray:
    """The sample's ambient RNA: its droplets' average expression, weighted by each state's share of the UMIs."""
    return _norm(((props * lib_type)[:, None] * P).sum(0))


def sample_library_median(sim: dict[str, Any], row: pd.Series, seed: int, rng: np.random.Generator) -> float:
    """Median UMIs per cell of relative library size 1 in this sample: the cohort's median, the batch's factor and
    the sample's own (one draw from ``rng``)."""
    libsd = knob(sim, "library_sd")
    bfac = np.exp(np.random.default_rng([seed, stable_int("batchlib", row["batch"])]).normal(0, libsd["batch"]))
    return float(knob(sim, "library_median")) * bfac * np.exp(rng.normal(0, libsd["sample"]))


def _continuum(states: np.ndarray, st: np.ndarray, cfg: dict[str, Any], rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per cell, the neighbour state it leans toward (its own state when its type has no neighbour in the sample)
    and its position t toward it (0.5 x Beta(1, b) with the default knobs)."""
    nb, t = st.copy(), np.zeros(len(st))
    for s, cand in enumerate(neighbour_states(state_types(states))):
        cells = np.where(st == s)[0]
        if not len(cells) or not len(cand):
            continue
        nb[cells] = cand[rng.integers(0, len(cand), len(cells))]
        t[cells] = float(cfg["max_position"]) * rng.beta(1.0, float(cfg["beta_b"]), len(cells))
    return nb, t


def expected_cell_profiles(prof: pd.DataFrame, state_props: dict[str, float], sim: dict[str, Any],
                           n_quantiles: int = 16) -> pd.DataFrame:
    """States x genes: the mean expression profile of a state's droplets (continuum and ambient soup averaged out),
    for the pseudobulk shortcut of :mod:`helpers.analysis.power`. The continuum position is integrated over ``n_quantiles``
    quantiles of its distribution with the neighbours equally likely, as :func:`_continuum` draws them; the soup
    enters at its mean fraction (``ambient.fraction``)."""

    states = np.array(list(state_props))
    p = np.array(list(state_props.values()))
    p = p / p.sum()
    type_of = state_types(states)
    lib_type = np.array([load_programs()["types"][t]["lib"] for t in type_of])
    P = prof.loc[states].to_numpy()
    logP = np.log(P)
    cont = knob(sim, "programmes.continuum")
    q = (np.arange(n_quantiles) + 0.5) / n_quantiles
    ts = float(cont["max_position"]) * sstats.beta.ppf(q, 1.0, float(cont["beta_b"]))
    out = P.copy()
    for i, cand in enumerate(neighbour_states(type_of)):
        if len(cand):
            mixes = [np.exp((1 - t) * logP[i] + t * logP[j]) for j in cand for t in ts]
            out[i] = np.mean([m / m.sum() for m in mixes], axis=0)
    soup = ambient_profile(P, p, lib_type)
    a = float(knob(sim, "ambient.fraction"))
    return pd.DataFrame((1 - a) * out + a * soup[None, :], index=states, columns=prof.columns)


def sample_cell_count(sim: dict[str, Any], tissue: str, rng: np.random.Generator) -> int:
    """Droplets of one sample: the tissue's median per sample (``cells.<tissue>.per_sample``) times a log-normal
    factor (``sd``), at least 50 (one draw from ``rng``)."""
    cfg = knob(sim, f"cells.{tissue}")
    return max(int(round(cfg["per_sample"] * np.exp(rng.normal(0, cfg["sd"])))), 50)


def simulate_sample_pseudobulk(model: "CohortModel", row: pd.Series, patient: dict[str, Any], sim: dict[str, Any],
                               seed: int, groups: dict[str, list[str]], min_cells: int = 10
                               ) -> dict[str, tuple[int, np.ndarray]]:
    """One sample's pseudobulk per cell-type group drawn directly, without its droplets: group -> (cells, raw
    counts per gene), for groups with at least ``min_cells`` cells.

    The shortcut of the power model (:mod:`helpers.analysis.power`): the sample's cell count
    (:func:`sample_cell_count`) split over its states (multinomial), each state's mean droplet profile
    (:func:`expected_cell_profiles`: continuum and soup averaged in) scaled by the summed library sizes of its
    cells, and the sum of the cells' negative-binomial counts drawn as one negative binomial with n times the mean
    and n times the shape. QC, annotation and per-cell stress and damage are skipped."""
    gm = model.genes
    tissue = row["tissue"]
    types = load_programs()["types"]
    prof, state_props = sample_profiles(model, row, patient, sim, seed, tissue.lower())
    prof = expected_cell_profiles(prof, state_props, sim)
    rng = np.random.default_rng([seed, stable_int("pbcells", row["sample_id"])])
    n = sample_cell_count(sim, tissue, rng)
    states = list(state_props)
    p = np.array([state_props[s] for s in states])
    counts = dict(zip(states, rng.multinomial(n, p / p.sum())))
    libsd = knob(sim, "library_sd")
    lib_median = sample_library_median(sim, row, seed, rng)
    shape = 1.0 / gm.dispersion
    out = {}
    for g, cts in groups.items():
        mu = np.zeros(len(gm.genes))
        k_total = 0
        for s in states:
            t = s.split("|")[0]
            k = int(counts[s])
            if t not in cts or k == 0:
                continue
            lib = lib_median * types[t]["lib"] * np.exp(rng.normal(0, libsd["cell"], k)).sum()
            mu += prof.loc[s].to_numpy() * lib
            k_total += k
        if k_total < min_cells:
            continue
        sh = shape * k_total
        out[g] = (k_total, rng.poisson(rng.gamma(sh, mu / sh)))
    return out


def simulate_sample(model: "CohortModel", row: pd.Series, patient: dict[str, Any], sim: dict[str, Any],
                    seed: int) -> ad.AnnData:
    """Simulate one sample's droplets (raw counts, obs with design and truth columns).

    A droplet's expected counts: its cell's profile (interpolated toward a neighbour state on a continuum, with the
    cell's own stress and, for cycling cells, the cell-cycle genes), mixed with the sample's ambient RNA, scaled by
    its library size; damaged cells lose cytoplasmic (non-mitochondrial) mRNA along a continuum; a doublet adds a
    second cell of any state of the sample. Truth: ``truth_quality`` is "doublet" for doublets, "low_quality" when
    the lost share reaches ``quality.damaged_if_loss_at_least``, else "good"."""
    gm = model.genes
    tissue = row["tissue"]
    prof, state_props = sample_profiles(model, row, patient, sim, seed, tissue.lower())
    rng = np.random.default_rng([seed, stable_int("cells", row["sample_id"])])
    n = sample_cell_count(sim, tissue, rng)
    states = np.array(list(state_props))
    p = np.array(list(state_props.values()))
    p = p / p.sum()
    st = rng.choice(len(states), size=n, p=p)
    type_of = state_types(states)
    types = load_programs()["types"]
    nb, pos = _continuum(states, st, knob(sim, "programmes.continuum"), rng)

    qc = knob(sim, "quality")
    dbl_rate = float(qc["doublet_rate"]) * np.exp(rng.normal(0, float(qc["sample_rate_sd"])))
    prone = rng.random(n) < float(qc["damage_prone_rate"]) * np.exp(rng.normal(0, float(qc["sample_rate_sd"])))
    position = rng.random(n)  # on the damage continuum (damage-prone cells)
    mild = rng.beta(1.0, float(qc["mild_damage_beta_b"]), n)
    loss = float(qc["damage_max_loss"]) * np.where(prone, position, mild)
    doublet = rng.random(n) < dbl_rate
    partner = np.where(doublet, rng.choice(len(states), size=n, p=p), -1)  # any cell: homotypic doublets too
    quality = np.where(doublet, "doublet", np.where(loss >= float(qc["damaged_if_loss_at_least"]), "low_quality", "good"))

    libsd = knob(sim, "library_sd")
    lib_median = sample_library_median(sim, row, seed, rng)
    lib_type = np.array([types[t]["lib"] for t in type_of])
    lib = lib_median * lib_type[st] * np.exp(rng.normal(0, libsd["cell"], n))
    lib2 = lib_median * lib_type[np.maximum(partner, 0)] * np.exp(rng.normal(0, libsd["cell"], n))

    amb = knob(sim, "ambient")
    m = min(float(amb["fraction"]) * np.exp(rng.normal(0, amb["sample_sd"])), 0.5)
    ambient = rng.beta(amb["concentration"] * m, amb["concentration"] * (1 - m), n)
    P = prof.to_numpy()
    soup = ambient_profile(P, p, lib_type)

    stress_idx, stress_w = nuisance_genes(gm, "dissociation_stress", seed)
    cell_stress = rng.normal(0, float(knob(sim, "nuisance.stress_sd.cell")), n)
    cc_idx, cc_w = nuisance_genes(gm, "cell_cycle", seed)
    can_cycle = np.isin(type_of[st], load_nuisance()["cell_cycle"]["cell_types"])
    cycling = can_cycle & (rng.random(n) < patient["cycling_fraction"])
    cycle_log2 = float(knob(sim, "nuisance.cycle_log2"))

    logP = np.log(P)
    mt = np.asarray(gm.genes.str.startswith("MT-"))
    shape = 1.0 / gm.dispersion
    blocks = []
    chunk = 1024
    for s0 in range(0, n, chunk):
        sl = slice(s0, min(s0 + chunk, n))
        t = pos[sl, None]
        cell = np.exp((1 - t) * logP[st[sl]] + t * logP[nb[sl]])
        cell[:, stress_idx] *= np.exp2(cell_stress[sl, None] * stress_w[None, :])
        cyc = cycling[sl]
        if cyc.any():
            cell[np.ix_(cyc, cc_idx)] *= np.exp2(cycle_log2 * cc_w)[None, :]
        cell /= cell.sum(1, keepdims=True)
        a = ambient[sl, None]
        mu = ((1 - a) * cell + a * soup[None, :]) * lib[sl, None]
        mu[:, ~mt] *= (1 - loss[sl, None])  # damage: cytoplasmic mRNA lost, mitochondria retained
        db = partner[sl] >= 0
        if db.any():
            mu[db] += ((1 - a[db]) * P[partner[sl][db]] + a[db] * soup[None, :]) * lib2[sl][db, None]
        lam = rng.gamma(shape[None, :], mu / shape[None, :])
        blocks.append(sp.csr_matrix(rng.poisson(lam).astype(np.int32)))
    X = sp.vstack(blocks).tocsr()

    clone = np.array([int(s.split("|")[1]) if s.startswith("malignant_PC|") else -1 for s in states])
    obs = pd.DataFrame({
        "sample_id": row["sample_id"], "patient_id": row["patient_id"], "tissue": tissue,
        "response": row["response"], "age": float(row["age"]), "batch": row["batch"],
        "truth_cell_type": type_of[st],
        "truth_compartment": [types[t]["compartment"] for t in type_of[st]],
        "truth_quality": quality.astype(str),
        "truth_doublet_partner": np.where(partner >= 0, type_of[np.maximum(partner, 0)], ""),
        "truth_malignant": type_of[st] == "malignant_PC",
        "truth_clone": clone[st],
        "truth_continuum_toward": np.where(pos > 0, type_of[nb], ""),
        "truth_continuum_position": np.round(pos, 4),
        "truth_damage_loss": np.round(loss, 4),
        "truth_ambient_fraction": np.round(ambient, 4),
        "truth_cycling": cycling,
    }, index=[f"{row['sample_id']}_{b}" for b in _barcodes(rng, n)])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=gm.genes.copy()))


# --------------------------------------------------------------------------------------------------
# bulk prognosis cohort and flow cytometry
# --------------------------------------------------------------------------------------------------
def simulate_bulk(gm: GeneModel, base: pd.DataFrame, weights: dict[str, dict[str, float]],
                  bulk: dict[str, Any], seed: int) -> ad.AnnData:
    """Bulk tumour RNA-seq with progression-free survival whose hazard rises with tumour NF-kB activity.

    Patient NF-kB activity z ~ N(0, 1) shifts the NF-kB genes by ``nfkb_log2_per_sd * z * weight``;
    the hazard is h0 * HR**z (HR per SD of activity), with exponential event times and uniform
    administrative censoring between ``follow_up_months``."""
    rng = np.random.default_rng([seed, stable_int("bulk")])
    n = int(knob(bulk, "n_patients"))
    hr = float(knob(bulk, "hazard_ratio"))
    z = rng.standard_normal(n)
    prof = base.loc["malignant_PC"].to_numpy()
    gidx = pd.Series(np.arange(len(gm.genes)), index=gm.genes)
    w = weights["tumour_nfkb"]
    nf_idx = gidx[list(w)].to_numpy()
    nf_w = np.fromiter(w.values(), float)
    per_sd = float(knob(bulk, "nfkb_log2_per_sd"))
    lib = float(knob(bulk, "library_size"))
    shape = 1.0 / np.clip(gm.dispersion * 0.2, 0.01, None)  # bulk: far less overdispersion than single cells
    X = np.empty((n, len(gm.genes)), dtype=np.int32)
    for i in range(n):
        log2 = rng.normal(0, float(knob(bulk, "patient_sd")), len(gm.genes))
        log2[nf_idx] += per_sd * z[i] * nf_w
        mu = _norm(prof * np.exp2(log2)) * lib * np.exp(rng.normal(0, 0.2))
        X[i] = rng.poisson(rng.gamma(shape, mu / shape))
    median_pfs = float(knob(bulk, "median_pfs_months"))
    h0 = np.log(2) / median_pfs
    t_event = rng.exponential(1.0 / (h0 * hr**z))
    lo, hi = knob(bulk, "follow_up_months")
    t_cens = rng.uniform(lo, hi, n)
    obs = pd.DataFrame({
        "pfs_months": np.round(np.minimum(t_event, t_cens), 2),
        "pfs_event": (t_event <= t_cens).astype(int),
        "truth_nfkb_z": np.round(z, 4),
    }, index=[f"B{i + 1:04d}" for i in range(n)])
    return ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=gm.genes.copy()))


def simulate_flow(samples: pd.DataFrame, patients: dict[str, dict[str, Any]], sim: dict[str, Any],
                  seed: int) -> pd.DataFrame:
    """Per-patient flow cytometry: % CD16+ among CD56dim NK cells.

    The CD16 protein shift shares the RNA effect's group shift but only part of its patient variation (correlation
    ``flow.rna_link`` of the patient's latent), and the assay adds its own logit-scale noise (``flow.measurement_sd``),
    so flow and RNA agree only as far as biology and measurement let them."""
    cfg = knob(sim, "flow")
    eff = knob(sim, "effects.nk_cd16")
    link = float(cfg["rna_link"])
    rows = []
    for pid in samples.loc[samples["tissue"] == "BM", "patient_id"].unique():
        rng = np.random.default_rng([seed, stable_int("flow", pid)])
        pt = patients[pid]
        z = link * pt["latent_z"]["nk_cd16"] + np.sqrt(1 - link**2) * rng.standard_normal()
        protein_down = float(eff.get("strength", 0.0)) * (pt["response"] == "NR") + float(eff.get("spread", 0.0)) * z
        base = np.log(cfg["baseline_pct"] / (100 - cfg["baseline_pct"]))
        logit = base - float(cfg["logit_per_log2"]) * protein_down + rng.normal(0, float(cfg["measurement_sd"]))
        rows.append({"patient_id": pid, "pct_cd16_of_cd56dim_nk": round(100 / (1 + np.exp(-logit)), 2)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# whole cohort
# --------------------------------------------------------------------------------------------------
@dataclass
class CohortModel:
    """What every sample of a simulated cohort shares: the gene universe, the cell-type profiles, the planted
    effects' genes and weights, and the co-varying gene modules."""

    genes: GeneModel
    profiles: pd.DataFrame
    weights: dict[str, dict[str, float]]
    modules: Modules
    resistance_weights: dict[str, dict[str, float]]


def cohort_model(sim: dict[str, Any], seed: int) -> CohortModel:
    """The shared parts of a simulation config (one place)."""
    gm = build_gene_model(int(knob(sim, "n_genes")), seed, float(knob(sim, "dispersion_scale")))
    return CohortModel(genes=gm, profiles=cell_type_profiles(gm, seed, knob(sim, "programmes")),
                       weights=draw_effect_weights(gm, seed, knob(sim, "planting")),
                       modules=draw_modules(len(gm.genes), knob(sim, "modules"), seed),
                       resistance_weights=draw_effect_weights(gm, seed, knob(sim, "planting"), load_resistance()))


OBS_CATEGORIES = ("sample_id", "patient_id", "tissue", "response", "batch", "truth_cell_type", "truth_compartment",
                  "truth_quality", "truth_doublet_partner", "truth_continuum_toward")


def finish_sample(part: ad.AnnData, gm: GeneModel) -> ad.AnnData:
    """A simulated sample as cells.h5ad stores it: gene names and ``detected_in_reference`` in var, the raw counts
    in X and in ``layers['counts']``."""
    part.var_names = gm.genes
    part.var["detected_in_reference"] = gm.detected_in_reference
    part.layers["counts"] = part.X.copy()
    return part


def cohort_truth(model: CohortModel, patients: dict[str, dict[str, Any]], sim: dict[str, Any],
                 seed: int) -> dict[str, Any]:
    """truth.json's content (but the matrix hash): the planted effects with their genes and per-patient
    activations, the resistance mechanisms, the patients and their CNV segments."""
    gm = model.genes
    segs = {}
    for pid, pt in patients.items():
        for k, clone in enumerate(pt["clones"]):
            _, seg = cnv_factors(gm.genes, clone["events"])
            segs[f"{pid}|{k}"] = seg
    planted = load_planted()
    tested = tested_genes()
    effects = knob(sim, "effects")
    return {
        "seed": seed,
        "effects": {
            name: {
                "claim": eff["claim"], "pathway": eff.get("pathway"), "genes": list(model.weights[name]),
                "gene_weights": model.weights[name],
                "genes_outside_tested_sets": [g for g in model.weights[name] if g not in tested],
                "fraction_of_pathway_planted": _pathway_fraction(eff, model.weights[name], gm.genes),
                "cell_types": eff["cell_types"], "direction": "down" if eff["sign"] < 0 else "up",
                "strength_log2": float(effects.get(name, {}).get("strength", 0.0)),
                "spread_log2": float(effects.get(name, {}).get("spread", 0.0)),
                "in_blood": bool(eff.get("blood", False)),
                "per_patient_activation": {p: pt["activation"][name] for p, pt in patients.items()},
            }
            for name, eff in planted.items()
        },
        "claims_tested_set_planted": tested_set_fractions(model.weights, gm.genes),
        "resistance": resistance_truth(model, patients, sim),
        "pb_effect_scale": float(knob(sim, "pb_effect_scale")),
        "tumour_inflammation_correlation": float(knob(sim, "tumour_inflammation_correlation")),
        "patients": patients,
        "cnv_segments": segs,
        "n_genes": int(len(gm.genes)),
    }


def simulate_cohort(samples: pd.DataFrame, sim: dict[str, Any], seed: int, n_jobs: int = 1,
                    progress: bool = True) -> tuple[ad.AnnData, dict[str, Any]]:
    """Simulate every sample of ``samples`` in memory and return the cohort (cells.h5ad content) with the truth
    record. :func:`simulate_cohort_to_disk` writes the same cohort sample by sample without holding it."""

    model = cohort_model(sim, seed)
    patients = draw_patients(samples, sim, seed)
    rows = [r for _, r in samples.iterrows()]
    it = tqdm(rows, desc="simulating samples", disable=not progress)
    parts = Parallel(n_jobs=n_jobs)(
        delayed(simulate_sample)(model, r, patients[r["patient_id"]], sim, seed) for r in it
    )
    adata = finish_sample(ad.concat(parts, join="outer", merge="same"), model.genes)
    for c in OBS_CATEGORIES:
        adata.obs[c] = adata.obs[c].astype("category")
    return adata, cohort_truth(model, patients, sim, seed)


def _simulate_sample_file(model: CohortModel, row: pd.Series, patient: dict[str, Any], sim: dict[str, Any],
                          seed: int, path: Path, categories: dict[str, list[str]]) -> tuple[str, pd.DataFrame]:
    """One sample simulated and written to ``path`` (obs categories fixed to the cohort's, so that the files
    concatenate to the in-memory cohort); returns the path and the sample's
    :func:`helpers.data.describe.per_sample_summary` row."""

    part = finish_sample(simulate_sample(model, row, patient, sim, seed), model.genes)
    for c, cats in categories.items():
        part.obs[c] = pd.Categorical(part.obs[c].astype(str), categories=cats)
    write_h5ad(part, path)  # compressed as the cohort's intermediates (DR_H5AD_COMPRESSION): disk at atlas scale
    return str(path), per_sample_summary(part)


def obs_categories(samples: pd.DataFrame, model: CohortModel) -> dict[str, list[str]]:
    """The categories each categorical obs column of a simulated cohort can take, known before any cell is drawn
    (design columns from the sample sheet, truth columns from the cell types), in the order pandas gives the
    in-memory cohort (sorted)."""
    types = sorted(load_programs()["types"])
    compartments = sorted({t["compartment"] for t in load_programs()["types"].values()})
    design = {c: sorted(samples[c].astype(str).unique()) for c in ("sample_id", "patient_id", "tissue", "response",
                                                                   "batch")}
    return {**design, "truth_cell_type": types, "truth_compartment": compartments,
            "truth_quality": sorted(["good", "doublet", "low_quality"]),
            "truth_doublet_partner": sorted(["", *types]), "truth_continuum_toward": sorted(["", *types])}


def simulate_cohort_to_disk(samples: pd.DataFrame, sim: dict[str, Any], seed: int, out: str | Path,
                            n_jobs: int = 1, progress: bool = True, uns: dict[str, Any] | None = None,
                            keep_samples: bool = False) -> tuple[dict[str, Any], pd.DataFrame]:
    """Simulate the cohort sample by sample into ``out`` (cells.h5ad) without holding it in memory: each sample is
    drawn (the same random streams as :func:`simulate_cohort`) and written to its own file; then either the files
    are concatenated on disk (:func:`helpers.io.concat_h5ad_rows`, one file at a time) and removed, or, with
    ``keep_samples``, they stay in ``out``'s folder under ``samples/<sample_id>.h5ad`` and ``out`` names them
    (:func:`helpers.io.index_h5ad_rows`: obs and var, no values), as the dask engine reads them
    (:func:`helpers.preprocessing.per_sample.sample_sources`). ``uns`` is written into ``out``. Peak memory is a
    few samples (``n_jobs`` at a time), whatever the cohort's size. Returns the truth record, with ``matrix_sha256``
    (:func:`matrix_hash_file`: the same digest either way), and the per-sample summary
    (:func:`helpers.data.describe.per_sample_summary`).

    The categorical obs columns hold every category the simulator can draw (:func:`obs_categories`), so a category
    absent from this cohort (a cell type no sample drew) is kept as an unused category: the one difference from
    :func:`simulate_cohort`, whose categories are those drawn."""
    out = Path(out)
    model = cohort_model(sim, seed)
    patients = draw_patients(samples, sim, seed)
    cats = obs_categories(samples, model)
    rows = [r for _, r in samples.iterrows()]
    sample_dir = out.parent / "samples"
    if keep_samples:
        shutil.rmtree(sample_dir, ignore_errors=True)  # an earlier build's files
        sample_dir.mkdir(parents=True)
    tmp_dir = sample_dir if keep_samples else Path(tempfile.mkdtemp(prefix="samples_", dir=out.parent))
    try:
        it = tqdm(rows, desc="simulating samples to disk", disable=not progress)
        done = Parallel(n_jobs=n_jobs)(
            delayed(_simulate_sample_file)(model, r, patients[r["patient_id"]], sim, seed,
                                           tmp_dir / (f"{r['sample_id']}.h5ad" if keep_samples else f"{i:05d}.h5ad"),
                                           cats) for i, r in enumerate(it))
        files = [f for f, _ in done]
        if keep_samples:
            index_h5ad_rows(files, out, uns=uns)
        else:
            concat_h5ad_rows(files, out, uns=uns)
        digest = matrix_hash_file(files if keep_samples else out, names_from=out)
    finally:
        if not keep_samples:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    truth = cohort_truth(model, patients, sim, seed)
    truth["matrix_sha256"] = digest
    summary = pd.concat([d for _, d in done]).sort_values("sample_id", ignore_index=True)
    return truth, summary


def resistance_truth(model: CohortModel, patients: dict[str, dict[str, Any]], sim: dict[str, Any]) -> dict[str, Any]:
    """truth.json's record of the planted resistance mechanisms: genes and weights, direction, strength, spread,
    prevalence, and per patient whether it carries the mechanism, its activation and the clones that express it."""
    out = {}
    for name, m in load_resistance().items():
        k = knob(sim, f"resistance.{name}")
        w = model.resistance_weights[name]
        out[name] = {
            "mechanism": m["mechanism"], "pathway": m.get("pathway"), "genes": list(w), "gene_weights": w,
            "fraction_of_pathway_planted": _pathway_fraction(m, w, model.genes.genes),
            "cell_types": m["cell_types"], "direction": "down" if m["sign"] < 0 else "up", "clone": m["clone"],
            "strength_log2": float(k["strength"]), "spread_log2": float(k["spread"]),
            "prevalence_in_nr": float(k["prevalence"]),
            "carriers": sorted(p for p, pt in patients.items() if pt["resistance"][name]["carrier"]),
        }
    return out


def _pathway_fraction(effect: dict[str, Any], weights: dict[str, float], genes: pd.Index) -> float | None:
    if "pathway" not in effect:
        return None
    path = set(pathway_genes(effect)) & set(genes)
    return round(len(path & set(weights)) / len(path), 4) if path else None


HASH_DTYPES = {"data": np.float64, "indices": np.int64, "indptr": np.int64}  # whatever dtypes a writer chose


def matrix_hash(adata: ad.AnnData) -> str:
    """SHA-256 of the count matrix (CSR data, indices, indptr in :data:`HASH_DTYPES`) and the obs and var names:
    a determinism fingerprint, equal to :func:`matrix_hash_file` of the same matrix written to disk."""
    X = sp.csr_matrix(adata.X)
    X.sort_indices()
    h = hashlib.sha256()
    for key, dtype in HASH_DTYPES.items():
        h.update(np.ascontiguousarray(getattr(X, key), dtype=dtype).tobytes())
    h.update("|".join(adata.obs_names).encode())
    h.update("|".join(adata.var_names).encode())
    return h.hexdigest()


def matrix_hash_file(path: str | Path | list[str | Path], chunk: int = 50_000_000,
                     names_from: str | Path | None = None) -> str:
    """:func:`matrix_hash` of a cells.h5ad on disk (CSR X with sorted indices, as the simulator writes it), read in
    chunks of ``chunk`` values: the same digest as the in-memory matrix's, without loading it. ``path`` may be a list
    of per-sample files in cell order: the digest of their rows one after the other (what
    :func:`helpers.io.concat_h5ad_rows` would write), with the obs and var names of ``names_from`` (default: the
    files' own)."""
    files = [Path(f) for f in path] if isinstance(path, (list, tuple)) else [Path(path)]
    h = hashlib.sha256()
    for key, dtype in HASH_DTYPES.items():
        offset = 0
        for i, file in enumerate(files):
            with h5py.File(file, "r") as f:
                X = f["X"]
                if X.attrs.get("encoding-type") != "csr_matrix":
                    raise ValueError(f"{file}: X is {X.attrs.get('encoding-type')}, not a CSR matrix")
                d = X[key]
                if key == "indptr":  # the rows of every file after the first continue the first's offsets
                    ptr = np.asarray(d[:], dtype=dtype)[0 if i == 0 else 1:] + offset
                    offset = int(ptr[-1]) if len(ptr) else offset
                    h.update(np.ascontiguousarray(ptr).tobytes())
                    continue
                for s0 in range(0, d.shape[0], chunk):
                    h.update(np.ascontiguousarray(d[s0:s0 + chunk], dtype=dtype).tobytes())
    if names_from is not None:
        names = read_annotations(names_from)
        obs, var = names.obs_names, names.var_names
    else:
        parts = [read_annotations(f) for f in files]
        obs, var = pd.Index(np.concatenate([p.obs_names for p in parts])), parts[0].var_names
    h.update("|".join(obs).encode())
    h.update("|".join(var).encode())
    return h.hexdigest()


def build_simulated_cohort(cohort: Cohort, n_jobs: int = 2, progress: bool = True) -> dict[str, Path]:
    """Simulate a cohort from its config in memory and write data/processed/<cohort>/: cells.h5ad, truth.json,
    bulk.h5ad, flow_cytometry.csv. Returns the written paths (:func:`build_simulated_cohort_by_sample` for
    cohorts too large to hold)."""

    adata, truth = simulate_cohort(cohort.samples, cohort.simulation, cohort.seed, n_jobs=n_jobs, progress=progress)
    adata.uns["cohort"] = {"name": cohort.name, "kind": "simulated", "seed": cohort.seed}
    cohort.processed_dir.mkdir(parents=True, exist_ok=True)
    paths = {"cells": write_h5ad(adata, cohort.processed_dir / "cells.h5ad")}
    truth["matrix_sha256"] = matrix_hash(adata)
    return {**paths, **write_side_tables(cohort, truth)}


def build_simulated_cohort_by_sample(cohort: Cohort, n_jobs: int = 2, progress: bool = True
                                     ) -> tuple[dict[str, Path], pd.DataFrame]:
    """:func:`build_simulated_cohort` sample by sample (:func:`simulate_cohort_to_disk` with ``keep_samples``), never
    the whole cohort in memory: the samples' files in data/processed/<cohort>/samples/ and cells.h5ad naming them
    (the same cells and matrix hash; the dask engine's notebook 01 reads each sample's file), with the same side
    tables. Returns (paths, per-sample summary), as :func:`helpers.preprocessing.per_sample.ingest_by_sample` does for
    real cohorts."""
    cohort.processed_dir.mkdir(parents=True, exist_ok=True)
    cells = cohort.processed_dir / "cells.h5ad"
    truth, summary = simulate_cohort_to_disk(cohort.samples, cohort.simulation, cohort.seed, cells, n_jobs=n_jobs,
                                             progress=progress, keep_samples=True,
                                             uns={"cohort": {"name": cohort.name, "kind": "simulated",
                                                             "seed": cohort.seed}})
    return {"cells": cells, **write_side_tables(cohort, truth)}, summary


def write_side_tables(cohort: Cohort, truth: dict[str, Any]) -> dict[str, Path]:
    """The simulated cohort's bulk prognosis cohort (when configured), flow cytometry and truth.json."""

    sim, out, paths = cohort.simulation, cohort.processed_dir, {}
    if "bulk" in sim:
        model = cohort_model(sim, cohort.seed)
        bulk = simulate_bulk(model.genes, model.profiles, model.weights, sim["bulk"], cohort.seed)
        truth["bulk"] = {k: v for k, v in sim["bulk"].items()}
        paths["bulk"] = write_h5ad(bulk, out / "bulk.h5ad")
    paths["flow"] = write_table(simulate_flow(cohort.samples, truth["patients"], sim, cohort.seed),
                                out / "flow_cytometry.csv")
    paths["truth"] = write_json(truth, out / "truth.json")
    return paths
