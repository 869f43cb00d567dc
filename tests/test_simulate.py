"""The simulator: determinism, planted effects present (and absent in the null), realism against the real
calibration reference, tumour clonality and CNV, blood and bulk cohorts."""
from __future__ import annotations

import copy

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import null_config, pseudobulk_effect
from scipy import stats

from helpers.data.simulate import (
    build_gene_model,
    make_design,
    matrix_hash,
    matrix_hash_file,
    reference_path,
    required_genes,
    simulate_bulk,
    simulate_cohort,
    simulate_cohort_to_disk,
)


def test_same_seed_same_matrix_any_n_jobs(tiny_cohort, tiny_sim):
    sub = tiny_cohort.samples.iloc[[0, 1, 6]]
    a1, _ = simulate_cohort(sub, copy.deepcopy(tiny_cohort.simulation), tiny_cohort.seed, n_jobs=1, progress=False)
    a2, _ = simulate_cohort(sub, copy.deepcopy(tiny_cohort.simulation), tiny_cohort.seed, n_jobs=2, progress=False)
    assert matrix_hash(a1) == matrix_hash(a2)
    full_sub = tiny_sim[0][tiny_sim[0].obs["sample_id"].isin(sub["sample_id"])]
    assert matrix_hash(a1) == matrix_hash(full_sub)  # a sample does not depend on which others are simulated
    a3, _ = simulate_cohort(sub, copy.deepcopy(tiny_cohort.simulation), tiny_cohort.seed + 1, progress=False)
    assert matrix_hash(a3) != matrix_hash(a1)


def test_simulated_to_disk_sample_by_sample_equals_in_memory(tiny_cohort, tmp_path):
    """The sample-by-sample build (bounded memory) writes the in-memory cohort: the same counts, layers, obs values,
    var, truth and matrix hash (the on-disk digest read in chunks equals the in-memory one)."""
    sub = tiny_cohort.samples.iloc[[0, 1, 6]]
    sim = copy.deepcopy(tiny_cohort.simulation)
    mem, truth_mem = simulate_cohort(sub, sim, tiny_cohort.seed, progress=False)
    out = tmp_path / "cells.h5ad"
    truth, summary = simulate_cohort_to_disk(sub, sim, tiny_cohort.seed, out, n_jobs=2, progress=False,
                                             uns={"cohort": {"name": "x"}})
    disk = ad.read_h5ad(out)
    assert list(tmp_path.iterdir()) == [out]  # the per-sample files are gone
    assert (disk.obs_names == mem.obs_names).all() and (disk.var_names == mem.var_names).all()
    assert (disk.X != mem.X).nnz == 0 and (disk.layers["counts"] != mem.layers["counts"]).nnz == 0
    pd.testing.assert_frame_equal(disk.var, mem.var)
    for c in mem.obs.columns:
        assert (disk.obs[c].astype(str).to_numpy() == mem.obs[c].astype(str).to_numpy()).all(), c
        assert disk.obs[c].dtype.kind == mem.obs[c].dtype.kind or isinstance(disk.obs[c].dtype, pd.CategoricalDtype)
    assert set(disk.obs["truth_cell_type"].cat.categories) >= set(mem.obs["truth_cell_type"].cat.categories)
    assert truth["matrix_sha256"] == matrix_hash(mem) == matrix_hash_file(out, chunk=1000)
    assert {k: v for k, v in truth.items() if k != "matrix_sha256"} == truth_mem
    assert disk.uns["cohort"]["name"] == "x"
    assert summary["sample_id"].tolist() == sorted(sub["sample_id"]) and summary["n_cells"].sum() == mem.n_obs


def test_output_layout(tiny_sim):
    a, truth = tiny_sim
    for c in ["sample_id", "patient_id", "tissue", "response", "age", "batch"]:
        assert c in a.obs
    assert all(c.startswith("truth_") for c in a.obs.columns if c not in
               ["sample_id", "patient_id", "tissue", "response", "age", "batch"])
    X = a.layers["counts"]
    assert sp.issparse(X) and np.array_equal(X.data, np.round(X.data)) and (X.data > 0).all()
    assert (a.X != X).nnz == 0
    assert a.obs_names.is_unique and a.var_names.is_unique
    q = a.obs["truth_quality"].value_counts(normalize=True)
    assert 0.02 < q["low_quality"] < 0.15 and 0.02 < q["doublet"] < 0.12
    assert set(truth["effects"]) == {"inflammation", "phagocytosis", "ifn_mono_nfkb", "nk_cd16", "tumour_nfkb"}


def test_default_universe_real_symbols():
    gm = build_gene_model(16000, 2017031)
    assert len(gm.genes) >= 15000 and gm.genes.is_unique
    from helpers.data.genesets import gene_positions
    ref = ad.read_h5ad(reference_path(), backed="r")
    known = set(gene_positions().index) | set(ref.var_names) | set(required_genes())
    assert set(gm.genes) <= known, sorted(set(gm.genes) - known)[:10]
    assert gm.detected_in_reference.sum() > 9000
    assert np.isclose(gm.baseline.sum(), 1) and (gm.dispersion > 0).all()


@pytest.mark.parametrize("effect", ["inflammation", "phagocytosis", "ifn_mono_nfkb", "nk_cd16", "tumour_nfkb"])
def test_planted_effect_in_truth_and_counts(tiny_cohort, tiny_sim, effect):
    a, truth = tiny_sim
    e = truth["effects"][effect]
    assert e["strength_log2"] == tiny_cohort.simulation["effects"][effect]["strength"] > 0
    act = pd.Series(e["per_patient_activation"])
    resp = pd.Series({p: v["response"] for p, v in truth["patients"].items()})
    bm = set(tiny_cohort.samples.query("tissue == 'BM'").patient_id)
    act, resp = act[list(bm)], resp[list(bm)]
    assert act[resp == "NR"].mean() - act[resp == "CR"].mean() > 0.5 * e["strength_log2"]
    # (that the counts carry it is tested on 8 vs 8 patients below: 3 vs 3 tiny patients with ~10 cells of a type
    # cannot show it reliably once composition varies between patients as in real marrow)


@pytest.fixture(scope="module")
def mid_designs(tiny_cohort):
    """8 vs 8 patients, 2,000 cells each (enough IFN monocytes, a ~2% type): planted vs null with the same seed."""
    samples = make_design(8, 8, seed=11, n_batches=3)
    sim = copy.deepcopy(tiny_cohort.simulation)
    sim["cells"]["BM"]["per_sample"] = 2000
    sim["n_genes"] = 3000
    for e in sim["effects"].values():
        e["strength"] = 1.0
    planted = simulate_cohort(samples, sim, 11, progress=False)
    null = simulate_cohort(samples, null_config(sim), 11, progress=False)
    return planted, null


@pytest.mark.parametrize("effect", ["inflammation", "phagocytosis", "ifn_mono_nfkb", "nk_cd16", "tumour_nfkb"])
def test_planted_separates_null_does_not(mid_designs, effect):
    ts = {}
    for label, (a, truth) in zip(("planted", "null"), mid_designs):
        e = truth["effects"][effect]
        pb = pseudobulk_effect(a, e["genes"], e["cell_types"])
        ts[label] = stats.ttest_ind(pb.loc[pb.response == "NR", "value"], pb.loc[pb.response == "CR", "value"]).statistic
        if label == "null":
            assert e["strength_log2"] == 0.0
    sign = -1 if mid_designs[0][1]["effects"][effect]["direction"] == "down" else 1
    t_crit = stats.t.ppf(0.975, 14)  # two-sided 5% with 8 + 8 patients
    assert sign * ts["planted"] > t_crit, ts  # planted: significant in the planted direction
    assert abs(ts["null"]) < t_crit, ts  # null, same seed and design: not significant


def _zero_curve(X, bins):
    X = sp.csr_matrix(X)
    n = X.shape[0]
    m = np.asarray(X.sum(0)).ravel() / n
    z = 1 - np.diff(sp.csc_matrix(X).indptr) / n
    idx = np.digitize(np.log10(m + 1e-12), bins)
    return {b: (float(np.median(z[(idx == b) & (m > 0)])), int(((idx == b) & (m > 0)).sum())) for b in range(1, len(bins))}


def _zero_gaps(tiny_sim) -> dict[int, float]:
    """Median zero fraction of genes per mean bin (0.5 log10 wide, >= 20 genes in both), simulated BM minus reference."""
    a, _ = tiny_sim
    good = a[(a.obs.truth_quality == "good") & (a.obs.tissue == "BM")]
    ref = ad.read_h5ad(reference_path())
    bins = np.arange(-3, 1.6, 0.5)
    cs, cr = _zero_curve(good.X, bins), _zero_curve(ref.X, bins)
    return {b: cs[b][0] - cr[b][0] for b in cs if cs[b][1] >= 20 and cr[b][1] >= 20}


def test_zero_fraction_against_reference(tiny_sim):
    """Zero fraction against mean, genes below ~1 count per cell (most genes): within 0.10 of the real reference."""
    gaps = _zero_gaps(tiny_sim)
    low = {b: g for b, g in gaps.items() if b <= 6}
    assert len(low) >= 4 and all(abs(g) < 0.10 for g in low.values()), low


@pytest.mark.xfail(reason="known gap: genes at 1-10 counts per cell have 0.12-0.15 fewer zeros than in the real "
                          "reference (measured; not from soup, continua, stress or dispersion shrinkage, each tried)",
                   strict=False)
def test_zero_fraction_of_highly_expressed_genes(tiny_sim):
    gaps = _zero_gaps(tiny_sim)
    high = {b: g for b, g in gaps.items() if b > 6}
    assert high and all(abs(g) < 0.10 for g in high.values()), high


def test_realism_against_reference(tiny_sim):
    """Library sizes, mitochondrial fraction, damage continuum and marker specificity."""
    a, _ = tiny_sim
    good = a[(a.obs.truth_quality == "good") & (a.obs.tissue == "BM")]
    lib = np.asarray(good.X.sum(1)).ravel()
    assert 2000 <= np.median(lib) <= 8000
    assert np.percentile(lib, 95) / np.percentile(lib, 5) > 4  # realistic spread
    mt = good.var_names.str.startswith("MT-")
    mito = np.asarray(good.X[:, mt].sum(1)).ravel() / lib
    assert 0.02 < np.median(mito) < 0.12
    # damage is a continuum: the mitochondrial share rises with the share of cytoplasmic mRNA lost
    single = a[(a.obs.truth_quality != "doublet").to_numpy()]
    mito_all = np.asarray(single.X[:, mt].sum(1)).ravel() / np.maximum(np.asarray(single.X.sum(1)).ravel(), 1)
    bins = pd.cut(single.obs.truth_damage_loss, [0, 0.1, 0.5, 1.0], include_lowest=True)
    by_bin = pd.Series(mito_all, index=single.obs_names).groupby(bins.to_numpy(), observed=True).median()
    assert by_bin.is_monotonic_increasing and len(by_bin) == 3, by_bin
    damaged = (single.obs.truth_quality == "low_quality").to_numpy()
    assert np.median(mito_all[damaged]) > 2 * np.median(mito)

    def detected(gene, mask):
        return float((good[mask, gene].X > 0).mean())

    ct = good.obs.truth_cell_type.astype(str)
    comp = good.obs.truth_compartment.astype(str)
    mono = ct.str.startswith("mono_").to_numpy()
    t = (comp == "T").to_numpy()
    # marker specificity with realistic leakage (graded leak plus the ambient soup; pbmc68k_reduced: CD3E in 19% of
    # monocytes and 92% of T cells, LYZ in 98% of monocytes)
    assert detected("CD3E", t) > 0.6 and detected("CD3E", t) > 2 * detected("CD3E", mono)
    assert detected("LYZ", mono) > 0.9 and detected("LYZ", mono) > 1.5 * detected("LYZ", t)
    assert detected("HBB", (ct == "erythroid").to_numpy()) > 0.95
    assert detected("MZB1", (comp == "plasma").to_numpy()) > 0.9
    # (plasma cells are up to 60% of tiny marrow, so their RNA dominates the soup: MZB1 reaches T cells too)
    assert detected("MZB1", (comp == "plasma").to_numpy()) > 2 * detected("MZB1", t)


def test_tumour_clonal_light_chain_and_cnv(tiny_sim):
    a, truth = tiny_sim
    X = sp.csr_matrix(a.X)
    for pid, pt in truth["patients"].items():
        m = (a.obs.patient_id == pid).to_numpy() & a.obs.truth_malignant.to_numpy() & \
            (a.obs.truth_quality == "good").to_numpy()
        if m.sum() < 10:
            continue
        k = np.asarray(X[m][:, a.var_names.get_indexer(["IGKC"])].sum())
        lam = np.asarray(X[m][:, a.var_names.get_indexer(["IGLC2", "IGLC3"])].sum())
        assert (k > 5 * lam) if pt["light_chain"] == "kappa" else (lam > 5 * k), pid
    # a trunk loss lowers expression of the segment's genes in the tumour relative to normal plasma cells
    from helpers.data.genesets import gene_positions
    pos = gene_positions().reindex(a.var_names)
    seen = 0
    for pid, pt in truth["patients"].items():
        segs = [s for s in truth["cnv_segments"][f"{pid}|0"] if s["kind"] == "loss" and s["n_genes"] > 30]
        m = (a.obs.patient_id == pid).to_numpy() & a.obs.truth_malignant.to_numpy()
        if not segs or m.sum() < 20:
            continue
        s = segs[0]
        ins = ((pos.chromosome == s["chromosome"]) & (pos.start / 1e6 >= s["start_mb"]) &
               (pos.start / 1e6 < s["end_mb"])).to_numpy()
        tum = np.asarray(X[m].sum(0)).ravel() + 1
        oth = np.asarray(X[(a.obs.truth_cell_type == "malignant_PC").to_numpy() & ~m].sum(0)).ravel() + 1
        r = np.log2(tum / tum.sum()) - np.log2(oth / oth.sum())
        expressed = (tum > 5) & (oth > 5)
        assert np.median(r[ins & expressed]) < np.median(r[~ins & expressed]) - 0.3, (pid, s)
        seen += 1
    assert seen >= 1


def test_blood_has_no_marrow_resident_types(tiny_sim):
    a, _ = tiny_sim
    pb = a.obs[a.obs.tissue == "PB"]
    assert not set(pb.truth_cell_type) & {"malignant_PC", "normal_PC", "erythroid", "neutrophil_precursor",
                                          "HSPC_CD34", "stromal", "preB"}
    assert {"mono_classical", "NK_CD56dim_CD54dim"} <= set(pb.truth_cell_type)


def test_bulk_hazard_rises_with_nfkb(tiny_cohort):
    from helpers.data.simulate import cohort_model
    sim = dict(copy.deepcopy(tiny_cohort.simulation), n_genes=3000)
    model = cohort_model(sim, 3)
    bulk_cfg = dict(tiny_cohort.simulation["bulk"], n_patients=400, hazard_ratio=2.0)
    b = simulate_bulk(model.genes, model.profiles, model.weights, bulk_cfg, 3)
    from lifelines import CoxPHFitter
    df = b.obs[["pfs_months", "pfs_event", "truth_nfkb_z"]]
    hr = CoxPHFitter().fit(df, "pfs_months", "pfs_event").hazard_ratios_["truth_nfkb_z"]
    assert 1.6 < hr < 2.5
    assert 0.3 < df.pfs_event.mean() < 0.95


def test_batches_are_stratified_by_response():
    """No batch stands in for the response: every batch holds both groups, in numbers at most one apart."""
    from helpers.data.describe import batch_response_association

    for seed in range(20):
        d = make_design(11, 10, seed=seed, n_batches=4)
        tab = pd.crosstab(d["batch"], d["response"])
        assert (tab > 0).all().all() and ((tab["CR"] - tab["NR"]).abs() <= 1).all(), tab
        assert not batch_response_association(d)["confounded"].any()
    confounded = make_design(6, 6, seed=0).assign(batch=lambda x: np.where(x["response"] == "NR", "b1", "b2"))
    assert batch_response_association(confounded)["confounded"].all()


def test_damage_doublet_and_continuum_truth(tiny_sim):
    """Homotypic doublets exist and are junk; the damage truth follows the cohort's threshold; continua and soup
    are recorded per cell."""
    a, _ = tiny_sim
    obs = a.obs
    dbl = obs[obs.truth_quality == "doublet"]
    assert (dbl.truth_doublet_partner.astype(str) == dbl.truth_cell_type.astype(str)).any()  # homotypic
    single = obs[obs.truth_quality != "doublet"]
    threshold = 0.5  # tiny inherits quality.damaged_if_loss_at_least from ifm2017_sim
    assert ((single.truth_damage_loss >= threshold) == (single.truth_quality == "low_quality")).all()
    assert (obs.truth_continuum_position > 0.2).mean() > 0.02  # intermediates between neighbouring states
    assert 0.01 < obs.truth_ambient_fraction.median() < 0.15


def test_effects_cover_part_of_their_pathway_and_genes_outside(tiny_cohort, tiny_sim):
    """Each pathway effect touches 30-60% of its pathway plus genes outside every tested set; the IFN-monocyte
    NF-kB plant is disjoint from the inflammation plant; truth.json records the planted share of each tested set."""
    from helpers.data.simulate import tested_genes
    _, truth = tiny_sim
    lo, hi = tiny_cohort.simulation["planting"]["pathway_fraction"]
    for name, e in truth["effects"].items():
        if e["pathway"] is None:
            assert e["genes"] == ["FCGR3A"]
            continue
        assert lo - 0.02 <= e["fraction_of_pathway_planted"] <= hi + 0.02, (name, e["fraction_of_pathway_planted"])
        outside = e["genes_outside_tested_sets"]
        assert outside and not set(outside) & tested_genes()
    assert not set(truth["effects"]["ifn_mono_nfkb"]["genes"]) & set(truth["effects"]["inflammation"]["genes"])
    frac = truth["claims_tested_set_planted"]
    assert frac["inflammatory_bme"]["fraction_of_set_planted"] < 0.7
    assert frac["nk_cd54dim_cd16"]["fraction_of_set_planted"] == 1.0


def test_flow_partially_linked_to_rna(tiny_cohort):
    """Flow cytometry follows the CD16 RNA effect only partly (own patient variation and assay noise)."""
    from helpers.data.simulate import draw_patients, simulate_flow
    sim = copy.deepcopy(tiny_cohort.simulation)
    design = make_design(100, 100, seed=5)
    patients = draw_patients(design, sim, 5)
    flow = simulate_flow(design, patients, sim, 5).set_index("patient_id")["pct_cd16_of_cd56dim_nk"]
    act = pd.Series({p: v["activation"]["nk_cd16"] for p, v in patients.items()})[flow.index]
    r = stats.spearmanr(act, flow).statistic
    assert -0.9 < r < -0.3, r  # linked (less CD16 RNA, fewer CD16+ cells) but far from by construction


def test_every_knob_comes_from_the_cohort(tiny_cohort):
    from helpers.data.simulate import knob
    sim = copy.deepcopy(tiny_cohort.simulation)
    assert knob(sim, "ambient.fraction") == 0.05  # inherited from ifm2017_sim through 'base'
    del sim["ambient"]
    with pytest.raises(KeyError, match="simulation.ambient is missing"):
        simulate_cohort(tiny_cohort.samples.iloc[:1], sim, 1, progress=False)


@pytest.fixture(scope="module")
def default_blood():
    """The default cohort's blood samples (20 patients, ~23,000 cells), simulated in memory."""
    from helpers.data.cohort import load_cohort
    c = load_cohort("ifm2017_sim")
    a, _ = simulate_cohort(c.samples[c.samples.tissue == "PB"], copy.deepcopy(c.simulation), c.seed, n_jobs=2,
                           progress=False)
    return a


def test_simulated_blood_no_more_separable_than_real_pbmc(default_blood):
    """The realism recipe (helpers.validation.realism): silhouette of the true coarse types in simulated blood is no more than
    0.05 above real PBMC's (pbmc68k_reduced), same genes, types and numbers; zero fractions within 0.1."""
    from helpers.validation.realism import silhouette_against_reference
    r = silhouette_against_reference(default_blood)
    assert r["silhouette_simulated"] <= r["silhouette_reference"] + 0.05, r
    assert abs(r["zero_fraction_simulated"] - r["zero_fraction_reference"]) < 0.1, r


@pytest.mark.parametrize("planted, significant", [("inflammation", False), ("ifn_mono_nfkb", True)])
def test_nfkb_control_separates_nfkb_from_inflammation(tiny_cohort, planted, significant):
    """IFN monocytes share inflammatory genes with PROGENy NFkB: with only inflammation planted, the control readout
    (NF-kB activity on targets outside the Hallmark inflammatory set) stays null; with only NF-kB planted it is found.
    12 vs 12 patients, pseudobulks drawn from the simulator (helpers.analysis.power), one fixed seed."""
    from helpers.analysis.power import claim_cell_groups, simulate_pseudobulks
    from helpers.analysis.stats import compare_two_groups
    from helpers.claims import claim_value_from_pseudobulk
    sim = dict(copy.deepcopy(tiny_cohort.simulation), n_genes=4000)
    for name, e in sim["effects"].items():
        e["strength"] = 1.5 if name == planted else 0.0
    sim["cells"]["BM"]["per_sample"] = 3000
    design = make_design(12, 12, seed=21)
    name = "ifn_mono_nfkb_beyond_inflammation"
    pb = simulate_pseudobulks(design, sim, 21, {name: claim_cell_groups()[name]})[name]
    rec = compare_two_groups(claim_value_from_pseudobulk(pb, name), pb.obs["response"], "CR", "NR")
    assert (rec["p"] < 0.05 and rec["direction"] == "up") == significant, rec


def test_batch_response_association_with_one_sample_per_batch():
    """scipy's R x C Fisher test returns a one-element array for a table with one sample per batch (a benchmark
    design of 4 samples in 4 batches): still one p and a confounded verdict (Cramér's V = 1)."""
    from helpers.data.describe import batch_response_association

    s = pd.DataFrame({"tissue": "BM", "batch": ["b1", "b2", "b3", "b4"], "response": ["CR", "NR", "CR", "NR"]})
    r = batch_response_association(s).iloc[0]
    assert r["p"] == 1.0 and r["cramers_v"] == 1.0 and bool(r["confounded"])


def test_simulated_to_disk_keeping_samples_names_them_with_the_same_cells_and_hash(tiny_cohort, tmp_path):
    """keep_samples (the dask engine's notebook 00): each sample's file kept under samples/, cells.h5ad names them
    with obs and var but no values; the same matrix hash as the concatenated file and the in-memory cohort, the same
    cells read back whole (helpers.io.read_cohort_cells) and per sample (per_sample.sample_sources / read_source)."""
    from helpers.io import indexed_files, read_cohort_cells
    from helpers.preprocessing import per_sample

    sub = tiny_cohort.samples.iloc[[6, 0, 1]]  # not in sample-id order: files follow the design's order
    sim = copy.deepcopy(tiny_cohort.simulation)
    mem, _ = simulate_cohort(sub, sim, tiny_cohort.seed, progress=False)
    out = tmp_path / "cells.h5ad"
    truth, _ = simulate_cohort_to_disk(sub, sim, tiny_cohort.seed, out, n_jobs=2, progress=False,
                                       uns={"cohort": {"name": "x"}}, keep_samples=True)
    files = indexed_files(out)
    assert sorted(files) == sorted(sub["sample_id"]) and all(f.parent == tmp_path / "samples" for f in files.values())
    with h5py.File(out, "r") as h:
        assert "X" not in h and ("layers" not in h or len(h["layers"]) == 0)
    assert truth["matrix_sha256"] == matrix_hash(mem)
    whole = read_cohort_cells(out)
    assert whole.obs_names.equals(mem.obs_names) and (whole.X != mem.X).nnz == 0 and whole.uns["cohort"]["name"] == "x"
    assert "shards" not in whole.uns
    src = per_sample.sample_sources(tiny_cohort, cells_h5ad=out)
    assert [s["sample_id"] for s in src] == list(sub["sample_id"])
    a = per_sample.read_source(src[1])
    part = mem[(mem.obs["sample_id"] == src[1]["sample_id"]).to_numpy()]
    assert a.obs_names.equals(part.obs_names) and (a.layers["counts"] != part.layers["counts"]).nnz == 0
    # the digest follows the cells' order: the files in another order give another one
    assert matrix_hash_file([files[s] for s in sub["sample_id"]], names_from=out) == truth["matrix_sha256"]
    assert matrix_hash_file([files[s] for s in reversed(list(sub["sample_id"]))], names_from=out) != truth["matrix_sha256"]
