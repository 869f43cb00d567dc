"""Simulator of an IFM2017-03-like myeloma cohort with known, planted response effects.

The counts are negative-binomial UMI counts over real gene symbols. Gene-level means and dispersions
are calibrated on a real full-transcriptome reference (data/reference/celltypist_sample_559cells.h5ad),
cell types get marker programmes (data/simulation/cell_programs.yaml), patients get random effects,
tumours get a clonal immunoglobulin, a translocation group and arm-level copy-number changes, and
non-responders (NR) get the study's effects (data/simulation/planted_programs.yaml) at the strength set
in the cohort's ``cohort.yaml``. Everything is drawn from numpy Generators seeded from the cohort seed,
one independent stream per sample, so the output is identical across runs and across ``n_jobs``.

Analysis code never reads the ``truth_*`` columns or ``truth.json``; only tests and the scorecard do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml

from .cohort import Cohort, project_root

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
        if "genes_from" in eff:
            eff["genes"] = list(planted[eff["genes_from"]]["genes"])
        eff.setdefault("sign", 1)
    return planted


@lru_cache(maxsize=None)
def centromeres() -> pd.DataFrame:
    return pd.read_csv(simulation_dir() / "centromeres_grch38.tsv", sep="\t").set_index("chromosome")


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


DISPERSION_SCALE = 1.0  # share of the reference dispersion kept (checked against the reference in tests)


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
    shrunk = np.clip(shrunk * DISPERSION_SCALE, 0.02, 5.0)
    return p, shrunk


def required_genes() -> list[str]:
    """Genes the universe must hold: programme markers, immunoglobulins, translocation and planted genes,
    the analysis gene sets, PROGENy NFkB/TNFa/JAK-STAT targets and the resistance-atlas genes."""
    from .genesets import gene_set, progeny_weights

    progs = load_programs()
    required: list[str] = []
    for t in progs["types"].values():
        required += list(t["markers"])
    for lst in progs["immunoglobulin"].values():
        required += list(lst)
    for grp in progs["translocation_groups"].values():
        required += list(grp)
    for eff in load_planted().values():
        required += list(eff["genes"])
    for s in ANALYSIS_SETS:
        required += gene_set(s)
    required += list(progeny_weights().query("source in ['NFkB', 'TNFa', 'JAK-STAT']")["target"])
    required += RESISTANCE_GENES
    return list(dict.fromkeys(required))


@lru_cache(maxsize=4)
def build_gene_model(n_genes: int, seed: int) -> GeneModel:
    """Calibrate on the reference and build a gene universe of ``n_genes`` real symbols.

    The universe holds every gene detected in the reference, every gene named in the programmes, planted
    effects and the analysis gene sets the notebooks use, then protein-coding genes from the GRCh38
    position table (below detection in the reference) until ``n_genes`` is reached; when ``n_genes`` is
    smaller than that, the least-expressed detected genes are dropped first (required genes always stay).
    """
    from .genesets import gene_positions

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
    return GeneModel(genes=genes, baseline=base / base.sum(), dispersion=phi, detected_in_reference=det_mask)


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
def cell_type_profiles(gm: GeneModel, seed: int = 0, type_sd: float = 1.0) -> pd.DataFrame:
    """Types x genes mean fractions (rows sum to 1): reference baseline, a type-specific deviation of every
    gene (log2 normal, sd ``type_sd``; cell types differ in thousands of genes, not only in markers; mitochondrial
    genes are left alone), then the marker programme.

    Marker genes are lineage-restricted: outside the types that list them they keep at most 5% of the
    pooled reference level (capped at 0.5 CP10k)."""
    progs = load_programs()["types"]
    rng = np.random.default_rng([seed, _stable_int("type_profiles")])
    gidx = pd.Series(np.arange(len(gm.genes)), index=gm.genes)
    markers = sorted({g for t in progs.values() for g in t["markers"]} & set(gm.genes))
    base = gm.baseline.copy()
    mi = gidx[markers].to_numpy()
    base[mi] = np.minimum(base[mi] * 0.05, 0.5e-4)
    rows = {}
    mt = np.asarray(gm.genes.str.startswith("MT-"))
    for name, t in progs.items():
        dev = rng.normal(0, type_sd, len(base))
        dev[mt] = 0.0  # the mitochondrial fraction is a cell-state property, not a cell-type programme
        prof = base * np.exp2(dev)
        for g, cp10k in t["markers"].items():
            if g in gidx.index:
                prof[gidx[g]] = cp10k * 1e-4
        rows[name] = prof / prof.sum()
    return pd.DataFrame(rows, index=gm.genes).T


def _norm(v: np.ndarray) -> np.ndarray:
    return v / v.sum()


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


def _stable_int(*parts: Any) -> int:
    h = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()
    return int(h[:8], 16)


def draw_effect_weights(gm: GeneModel, seed: int) -> dict[str, dict[str, float]]:
    """Per effect, a fixed gene weight (uniform 0.5-1.5) so genes respond unequally, as in real programmes."""
    out = {}
    for name, eff in load_planted().items():
        rng = np.random.default_rng([seed, _stable_int("weights", name)])
        genes = [g for g in eff["genes"] if g in set(gm.genes)]
        out[name] = dict(zip(genes, np.round(rng.uniform(0.5, 1.5, len(genes)), 3)))
    return out


def draw_patients(samples: pd.DataFrame, sim: dict[str, Any], seed: int) -> dict[str, dict[str, Any]]:
    """Per-patient draws: effect activations (log2), tumour fraction, clone structure, Ig, translocation."""
    progs = load_programs()
    effects = sim.get("effects", {})
    rho = float(sim.get("tumour_inflammation_correlation", 0.6))
    out: dict[str, dict[str, Any]] = {}
    patients = samples.drop_duplicates("patient_id")
    for _, row in patients.iterrows():
        pid = row["patient_id"]
        rng = np.random.default_rng([seed, _stable_int("patient", pid)])
        nr = row["response"] == "NR"
        # blood carries the immune-side effects at a weaker strength
        scale = float(sim.get("pb_effect_scale", 0.5)) if row["tissue"] == "PB" else 1.0
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
        mf = sim.get("malignant_fraction", {"a": 1.3, "b": 5.0, "min": 0.02, "max": 0.6})
        frac = float(np.clip(rng.beta(mf["a"], mf["b"]), mf["min"], mf["max"]))
        trunk = [ev for ev, (_, _, _, prev) in CNV_EVENTS.items() if rng.random() < prev]
        if tgroup == "hyperdiploid":
            trunk += [f"{c}_gain" for c in HYPERDIPLOID_GAINS if rng.random() < 0.8]
        if not trunk:
            trunk = ["1q_gain"]
        n_clones = int(rng.integers(1, 4))
        clones = [{"events": trunk}]
        pool = [ev for ev in CNV_EVENTS if ev not in trunk]
        for _ in range(n_clones - 1):
            if not pool:
                break
            extra = pool.pop(int(rng.integers(len(pool))))
            clones.append({"events": trunk + [extra]})
        fr = rng.dirichlet(np.full(len(clones), 3.0))
        for c, f in zip(clones, fr):
            c["fraction"] = float(np.round(f, 4))
        out[pid] = {
            "response": row["response"], "activation": acts, "malignant_fraction": round(frac, 4),
            "light_chain": light, "light_v": str(v), "heavy_constant": str(heavy), "heavy_v": str(hv),
            "translocation_group": str(tgroup), "clones": clones,
        }
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
    from .genesets import gene_positions

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


def sample_profiles(gm: GeneModel, base: pd.DataFrame, row: pd.Series, patient: dict[str, Any],
                    weights: dict[str, dict[str, float]], sim: dict[str, Any], seed: int,
                    tissue_key: str) -> tuple[pd.DataFrame, dict[str, float]]:
    """States x genes profiles of one sample (rows sum to 1) and the state proportions."""
    progs = load_programs()
    types = progs["types"]
    gidx = pd.Series(np.arange(len(gm.genes)), index=gm.genes)
    rng = np.random.default_rng([seed, _stable_int("patient_re", row["patient_id"])])
    brng = np.random.default_rng([seed, _stable_int("batch", row["batch"])])
    patient_sd = float(sim.get("patient_sd", 0.25))
    batch_sd = float(sim.get("batch_sd", 0.15))
    batch_log2 = brng.normal(0, batch_sd, len(gm.genes))
    tissue = row["tissue"]

    means = pd.Series({t: float(v[tissue_key]) for t, v in types.items()})
    means = means[means > 0]
    conc = float(sim.get("composition_concentration", 300.0))
    props = pd.Series(rng.dirichlet(conc * means.to_numpy() / means.sum()), index=means.index)
    if tissue == "BM":
        f = patient["malignant_fraction"]
        props = props * (1 - f)
        props["malignant_PC"] = f

    profiles, state_props = {}, {}
    for t, p in props.items():
        log2 = rng.normal(0, patient_sd, len(gm.genes)) + batch_log2
        log2 += _effect_log2(gm, weights, patient["activation"], t, tissue)
        prof = base.loc[t].to_numpy() * np.exp2(log2)
        if t == "malignant_PC":
            ig = progs["immunoglobulin"]
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
                profiles[f"malignant_PC|{k}"] = _norm(prof * fac)
                state_props[f"malignant_PC|{k}"] = p * clone["fraction"]
            del ig
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


def simulate_sample(gm: GeneModel, base: pd.DataFrame, row: pd.Series, patient: dict[str, Any],
                    weights: dict[str, dict[str, float]], sim: dict[str, Any], seed: int) -> ad.AnnData:
    """Simulate one sample's cells (raw counts, obs with design and truth columns)."""
    tissue = row["tissue"]
    tkey = tissue.lower()
    prof, state_props = sample_profiles(gm, base, row, patient, weights, sim, seed, tkey)
    rng = np.random.default_rng([seed, _stable_int("cells", row["sample_id"])])
    cells_cfg = sim["cells"][tissue]
    n = max(int(round(cells_cfg["per_sample"] * np.exp(rng.normal(0, cells_cfg.get("sd", 0.25))))), 50)
    states = np.array(list(state_props))
    p = np.array(list(state_props.values()))
    st = rng.choice(len(states), size=n, p=p / p.sum())

    qc = sim.get("quality", {})
    lowq_rate = float(qc.get("low_quality_rate", 0.06)) * np.exp(rng.normal(0, 0.3))
    dbl_rate = float(qc.get("doublet_rate", 0.05)) * np.exp(rng.normal(0, 0.3))
    quality = np.full(n, "good", dtype=object)
    u = rng.random(n)
    quality[u < lowq_rate] = "low_quality"
    quality[(u >= lowq_rate) & (u < lowq_rate + dbl_rate)] = "doublet"
    # heterotypic partner for each doublet: a state of another cell type
    type_of = np.array([s.split("|")[0] for s in states])
    partner = np.full(n, -1)
    for i in np.where(quality == "doublet")[0]:
        cand = np.where(type_of != type_of[st[i]])[0]
        pc = p[cand] / p[cand].sum()
        partner[i] = cand[rng.choice(len(cand), p=pc)]

    bfac = np.exp(np.random.default_rng([seed, _stable_int("batchlib", row["batch"])]).normal(0, 0.2))
    lib_median = float(sim.get("library_median", 4000)) * bfac * np.exp(rng.normal(0, 0.2))
    lib_type = np.array([load_programs()["types"][t]["lib"] for t in type_of])
    lib = lib_median * lib_type[st] * np.exp(rng.normal(0, 0.45, n))
    lowq = quality == "low_quality"
    lib[lowq] *= 0.2
    lib2 = lib_median * lib_type[np.maximum(partner, 0)] * np.exp(rng.normal(0, 0.45, n))

    P = prof.to_numpy()
    mt = np.asarray(gm.genes.str.startswith("MT-"))
    shape = 1.0 / gm.dispersion
    blocks = []
    chunk = 1024
    for s0 in range(0, n, chunk):
        sl = slice(s0, min(s0 + chunk, n))
        mu = P[st[sl]] * lib[sl, None]
        lq = lowq[sl]
        if lq.any():  # damaged cells: cytoplasmic mRNA lost, mitochondrial fraction up
            m = mu[lq]
            m[:, mt] *= float(qc.get("low_quality_mito_factor", 8.0))
            mu[lq] = m * (lib[sl][lq] / m.sum(1))[:, None]
        db = partner[sl] >= 0
        if db.any():
            mu[db] += P[partner[sl][db]] * lib2[sl][db, None]
        lam = rng.gamma(shape[None, :], mu / shape[None, :])
        blocks.append(sp.csr_matrix(rng.poisson(lam).astype(np.int32)))
    X = sp.vstack(blocks).tocsr()

    clone = np.array([int(s.split("|")[1]) if s.startswith("malignant_PC|") else -1 for s in states])
    types = load_programs()["types"]
    obs = pd.DataFrame({
        "sample_id": row["sample_id"], "patient_id": row["patient_id"], "tissue": tissue,
        "response": row["response"], "age": float(row["age"]), "batch": row["batch"],
        "truth_cell_type": type_of[st],
        "truth_compartment": [types[t]["compartment"] for t in type_of[st]],
        "truth_quality": quality.astype(str),
        "truth_doublet_partner": np.where(partner >= 0, type_of[np.maximum(partner, 0)], ""),
        "truth_malignant": type_of[st] == "malignant_PC",
        "truth_clone": clone[st],
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
    rng = np.random.default_rng([seed, _stable_int("bulk")])
    n = int(bulk.get("n_patients", 500))
    hr = float(bulk.get("hazard_ratio", 1.6))
    z = rng.standard_normal(n)
    prof = base.loc["malignant_PC"].to_numpy()
    gidx = pd.Series(np.arange(len(gm.genes)), index=gm.genes)
    w = weights["tumour_nfkb"]
    nf_idx = gidx[list(w)].to_numpy()
    nf_w = np.fromiter(w.values(), float)
    per_sd = float(bulk.get("nfkb_log2_per_sd", 0.7))
    lib = float(bulk.get("library_size", 2e6))
    shape = 1.0 / np.clip(gm.dispersion * 0.2, 0.01, None)  # bulk: far less overdispersion than single cells
    X = np.empty((n, len(gm.genes)), dtype=np.int32)
    for i in range(n):
        log2 = rng.normal(0, float(bulk.get("patient_sd", 0.3)), len(gm.genes))
        log2[nf_idx] += per_sd * z[i] * nf_w
        mu = _norm(prof * np.exp2(log2)) * lib * np.exp(rng.normal(0, 0.2))
        X[i] = rng.poisson(rng.gamma(shape, mu / shape))
    median_pfs = float(bulk.get("median_pfs_months", 40.0))
    h0 = np.log(2) / median_pfs
    t_event = rng.exponential(1.0 / (h0 * hr**z))
    lo, hi = bulk.get("follow_up_months", [24, 96])
    t_cens = rng.uniform(lo, hi, n)
    obs = pd.DataFrame({
        "pfs_months": np.round(np.minimum(t_event, t_cens), 2),
        "pfs_event": (t_event <= t_cens).astype(int),
        "truth_nfkb_z": np.round(z, 4),
    }, index=[f"B{i + 1:04d}" for i in range(n)])
    return ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=gm.genes.copy()))


def simulate_flow(samples: pd.DataFrame, patients: dict[str, dict[str, Any]], seed: int) -> pd.DataFrame:
    """Per-patient flow cytometry: % CD16+ among CD56dim NK cells, tracking the patient's CD16 RNA effect."""
    rows = []
    for pid in samples.loc[samples["tissue"] == "BM", "patient_id"].unique():
        rng = np.random.default_rng([seed, _stable_int("flow", pid)])
        a = patients[pid]["activation"]["nk_cd16"]  # log2 decrease of FCGR3A in NR
        logit = np.log(0.88 / 0.12) - 1.2 * a + rng.normal(0, 0.35)
        rows.append({"patient_id": pid, "pct_cd16_of_cd56dim_nk": round(100 / (1 + np.exp(-logit)), 2)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# whole cohort
# --------------------------------------------------------------------------------------------------
def cohort_model(sim: dict[str, Any], seed: int) -> tuple[GeneModel, pd.DataFrame, dict[str, dict[str, float]]]:
    """The gene model, cell-type profiles and planted-effect gene weights of a simulation config (one place)."""
    gm = build_gene_model(int(sim.get("n_genes", 16000)), seed)
    return gm, cell_type_profiles(gm, seed, float(sim.get("type_sd", 1.2))), draw_effect_weights(gm, seed)


def simulate_cohort(samples: pd.DataFrame, sim: dict[str, Any], seed: int, n_jobs: int = 1,
                    progress: bool = True) -> tuple[ad.AnnData, dict[str, Any]]:
    """Simulate every sample of ``samples`` (cells.h5ad content) and return it with the truth record."""
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    gm, base, weights = cohort_model(sim, seed)
    patients = draw_patients(samples, sim, seed)
    rows = [r for _, r in samples.iterrows()]
    it = tqdm(rows, desc="simulating samples", disable=not progress)
    parts = Parallel(n_jobs=n_jobs)(
        delayed(simulate_sample)(gm, base, r, patients[r["patient_id"]], weights, sim, seed) for r in it
    )
    adata = ad.concat(parts, join="outer", merge="same")
    adata.var_names = gm.genes
    adata.var["detected_in_reference"] = gm.detected_in_reference
    adata.layers["counts"] = adata.X.copy()
    for c in ("sample_id", "patient_id", "tissue", "response", "batch", "truth_cell_type",
              "truth_compartment", "truth_quality", "truth_doublet_partner"):
        adata.obs[c] = adata.obs[c].astype("category")

    segs = {}
    for pid, pt in patients.items():
        for k, clone in enumerate(pt["clones"]):
            _, s = cnv_factors(gm.genes, clone["events"])
            segs[f"{pid}|{k}"] = s
    planted = load_planted()
    truth = {
        "seed": seed,
        "effects": {
            name: {
                "claim": eff["claim"], "genes": list(weights[name]), "gene_weights": weights[name],
                "cell_types": eff["cell_types"], "direction": "down" if eff["sign"] < 0 else "up",
                "strength_log2": float(sim.get("effects", {}).get(name, {}).get("strength", 0.0)),
                "spread_log2": float(sim.get("effects", {}).get(name, {}).get("spread", 0.0)),
                "in_blood": bool(eff.get("blood", False)),
                "per_patient_activation": {p: pt["activation"][name] for p, pt in patients.items()},
            }
            for name, eff in planted.items()
        },
        "pb_effect_scale": float(sim.get("pb_effect_scale", 0.5)),
        "tumour_inflammation_correlation": float(sim.get("tumour_inflammation_correlation", 0.6)),
        "patients": patients,
        "cnv_segments": segs,
        "n_genes": int(len(gm.genes)),
    }
    return adata, truth


def matrix_hash(adata: ad.AnnData) -> str:
    """SHA-256 of the count matrix (data, indices, indptr) and the obs names: a determinism fingerprint."""
    X = sp.csr_matrix(adata.X)
    h = hashlib.sha256()
    for arr in (X.data, X.indices, X.indptr):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update("|".join(adata.obs_names).encode())
    h.update("|".join(adata.var_names).encode())
    return h.hexdigest()


def build_simulated_cohort(cohort: Cohort, n_jobs: int = 2, progress: bool = True) -> dict[str, Path]:
    """Simulate a cohort from its config and write data/processed/<cohort>/: cells.h5ad, truth.json,
    bulk.h5ad, flow_cytometry.csv. Returns the written paths."""
    from .io import write_h5ad, write_json, write_table

    sim = cohort.simulation
    adata, truth = simulate_cohort(cohort.samples, sim, cohort.seed, n_jobs=n_jobs, progress=progress)
    adata.uns["cohort"] = {"name": cohort.name, "kind": "simulated", "seed": cohort.seed}
    gm, base, weights = cohort_model(sim, cohort.seed)
    out = cohort.processed_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = {"cells": write_h5ad(adata, out / "cells.h5ad")}
    truth["matrix_sha256"] = matrix_hash(adata)
    if "bulk" in sim:
        bulk = simulate_bulk(gm, base, weights, sim["bulk"], cohort.seed)
        truth["bulk"] = {k: v for k, v in sim["bulk"].items()}
        paths["bulk"] = write_h5ad(bulk, out / "bulk.h5ad")
    flow = simulate_flow(cohort.samples, truth["patients"], cohort.seed)
    paths["flow"] = write_table(flow, out / "flow_cytometry.csv")
    paths["truth"] = write_json(truth, out / "truth.json")
    return paths
