"""Annotation: hand-made cells with known markers, NK CD54 states, plasma evidence and malignant calls
(real labelled PBMC: tests/test_annotate_real.py)."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from helpers.analysis import composition, stats
from helpers.annotation import cell_types, malignant
from helpers.preprocessing import doublets


def _cells(types: dict[str, int], seed=0):
    """Cells expressing their compartment's markers (Poisson, 20 counts each) over 100 background genes;
    other markers at 0.005 (lineage-restricted genes are nearly silent outside their lineage)."""
    m = cell_types.load_markers()
    genes = sorted({g for c in m["compartments"].values() for g in c["markers"]} |
                   {g for comp in m["subsets"].values() for s in comp.values() for g in s["markers"]} |
                   {"ICAM1", "IGKC", "IGLC2", "IGLC3"} | {f"BG{i}" for i in range(100)})
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for (comp, sub), n in types.items():
        lam = np.full(len(genes), 0.005)
        sibling = {g for name, s in m["subsets"][comp].items() if name != sub for g in s["markers"]} if sub else set()
        own = set(m["subsets"][comp][sub]["markers"]) if sub else set()
        lam[[genes.index(g) for g in m["compartments"][comp]["markers"] if g not in sibling - own]] = 20
        if sub:
            lam[[genes.index(g) for g in m["subsets"][comp][sub]["markers"]]] = 20
        lam[[genes.index(g) for g in genes if g.startswith("BG")]] = 5
        rows.append(rng.poisson(lam, size=(n, len(genes))))
        labels += [(comp, sub)] * n
    a = ad.AnnData(sp.csr_matrix(np.vstack(rows).astype(np.float32)), var=pd.DataFrame(index=genes))
    a.obs["comp"] = [c for c, _ in labels]
    a.obs["sub"] = [s for _, s in labels]
    a.layers["counts"] = a.X.copy()
    return a


def test_compartments_and_subsets_from_markers():
    a = _cells({("T", "CD8_effector"): 60, ("myeloid", "mono_classical"): 60, ("B", "B"): 40,
                ("erythroid", "erythroid"): 30, ("NK", "NK_CD56bright"): 30})
    comp, _ = cell_types.annotate_compartments(a)
    assert (comp.to_numpy() == a.obs["comp"].to_numpy()).mean() > 0.97
    sub = cell_types.annotate_subsets(a, comp)
    assert (sub[a.obs["sub"] == "mono_classical"] == "mono_classical").mean() > 0.9
    assert (sub[a.obs["sub"] == "NK_CD56bright"] == "NK_CD56bright").mean() > 0.9


def test_evidence_in_blocks_of_cells_equals_all_cells_at_once():
    a = _cells({("T", "CD8_effector"): 50, ("myeloid", "mono_classical"): 50, ("B", "B"): 40,
                ("plasma", None): 20, ("NK", "NK_CD56bright"): 40}, seed=3)
    a = a[np.random.default_rng(0).permutation(a.n_obs)].copy()
    late = a.layers["counts"].tolil()
    late[:-5, a.var_names.get_loc("BG7")] = 0  # a gene detected only in the last block: the universe must be global
    a.layers["counts"] = a.X = sp.csr_matrix(late)
    assert [(b.start, b.stop) for b in cell_types.cell_blocks(a.n_obs, 70)] == [(0, 70), (70, 140), (140, 200)]
    assert cell_types.cell_blocks(0, 70) == []
    np.testing.assert_array_equal(cell_types.detected_genes(a, block_size=70), cell_types.detected_genes(a, block_size=10**6))
    whole = cell_types.compartment_evidence(a, block_size=10**6)
    blocks = cell_types.compartment_evidence(a, block_size=70)
    pd.testing.assert_frame_equal(blocks, whole)
    comp = a.obs["comp"].astype(str)
    pd.testing.assert_frame_equal(cell_types.subset_evidence(a, comp, block_size=17),
                                  cell_types.subset_evidence(a, comp, block_size=10**6))
    with pytest.raises(ValueError, match="block_size"):
        cell_types.cell_blocks(10, 0)


def _nk_counts(rates: list[float], n: int = 300, seed: int = 0, dispersion: float = 0.2):
    """ICAM1 counts of ``n`` cells split evenly over states with the given rates (NB noise, size factors ~1)."""
    rng = np.random.default_rng(seed)
    size = np.exp(rng.normal(0, 0.3, n))
    rate = np.repeat(rates, int(np.ceil(n / len(rates))))[:n]
    mu = rate * size
    return rng.poisson(rng.gamma(1 / dispersion, mu * dispersion)), size, rate


def test_nk_two_states_found_when_present():
    k, size, rate = _nk_counts([0.1, 4.0])
    fit = cell_types.nb_two_state_test(k, size)
    assert fit["delta_bic"] > 10 and fit["fold"] > 4
    called = fit["posterior_high"] > 0.5
    assert (called == (rate == 4.0)).mean() > 0.9


def test_nk_one_state_is_not_split():
    """One population, even overdispersed with many zeros (as ICAM1 is in real NK cells), is not split."""
    for seed in range(3):
        k, size, _ = _nk_counts([0.5], seed=seed, dispersion=1.5)
        assert cell_types.nb_two_state_test(k, size)["delta_bic"] < 10


def test_split_nk_cd54_labels_and_not_separable():
    a = _cells({("NK", "NK_CD56dim"): 200})
    X = a.layers["counts"].toarray()
    k, _, rate = _nk_counts([0.05, 6.0], n=200, seed=1)
    i = list(a.var_names).index("ICAM1")
    X[:, i] = k
    a.layers["counts"] = sp.csr_matrix(X)
    spec = cell_types.load_markers()["nk_cd54"]
    bright, info = cell_types.split_nk_cd54(a, np.ones(a.n_obs, bool), spec)
    assert info["separable"] and (bright == (rate == 6.0)).mean() > 0.9
    X[:, i] = _nk_counts([0.5], n=200, seed=2, dispersion=1.5)[0]
    a.layers["counts"] = sp.csr_matrix(X)
    bright, info = cell_types.split_nk_cd54(a, np.ones(a.n_obs, bool), spec)
    assert bright is None and not info["separable"] and "one ICAM1 state" in info["reason"]
    bright, info = cell_types.split_nk_cd54(a, np.zeros(a.n_obs, bool), spec)
    assert bright is None and "CD56dim NK cells" in info["reason"]


def test_majority_vote_rescues_shallow_cells_and_leaves_noise_unassigned():
    rng = np.random.default_rng(0)
    weak_t = pd.DataFrame({"T": rng.normal(1.0, 0.5, 40), "B": rng.normal(-0.5, 0.5, 40)})  # shallow T cells
    noise = pd.DataFrame({"T": rng.normal(0, 1, 40), "B": rng.normal(0, 1, 40)})  # no programme at all
    scores = pd.concat([weak_t, noise], ignore_index=True)
    clusters = np.array(["a"] * 40 + ["b"] * 40)
    out = cell_types.majority_vote(scores, clusters, min_score=2.0)
    assert (out[:40] == "T").all()
    assert (out[40:] == "unassigned").mean() > 0.9
    assert (cell_types.majority_vote(scores, None, min_score=2.0)[:40] == "unassigned").mean() > 0.9


def test_plasma_needs_plasma_genes_and_immunoglobulin_load():
    genes = ["MZB1", "JCHAIN", "TNFRSF17", "DERL3", "IGKC", "IGHG1", "IGLL1", "CD3E", "BG"]
    X = np.array([[5, 5, 2, 2, 400, 200, 0, 0, 386],   # plasma: 4 genes, Ig 60%
                  [5, 5, 2, 2, 10, 5, 0, 0, 971],      # plasma genes but Ig 1.5% (e.g. a pDC): no
                  [0, 0, 0, 0, 300, 0, 0, 5, 695],     # Ig load only (B-like): no
                  [1, 0, 0, 0, 0, 0, 50, 10, 939]])    # surrogate light chain is not immunoglobulin load
    a = ad.AnnData(sp.csr_matrix(X.astype(np.float32)), var=pd.DataFrame(index=genes))
    a.layers["counts"] = a.X.copy()
    ev = cell_types.plasma_evidence(a, cell_types.load_markers()["plasma_evidence"])
    assert ev["plasma_evidence"].tolist() == [True, False, False, False]
    assert ev["ig_fraction"].iloc[0] == pytest.approx(0.6) and ev["ig_measured"].all()
    assert "IGLL1" not in cell_types.immunoglobulin_genes(a.var_names)


def test_coexpression_doublets_flag_mixed_cells():
    a = _cells({("T", None): 100, ("myeloid", None): 100})
    X = a.X.toarray()
    mixed = (X[:10] + X[100:110])
    b = ad.AnnData(sp.csr_matrix(np.vstack([X, mixed])), var=a.var.copy())
    b.layers["counts"] = b.X.copy()
    d = doublets.coexpression_doublets(b)
    assert d.iloc[-10:].all() and d.iloc[:200].mean() < 0.02


def test_call_malignant_needs_a_clone():
    idx = [f"c{i}" for i in range(30)]
    obs = pd.DataFrame({"patient_id": "p1"}, index=idx)
    # restricted (28 kappa of 30) with a CNV clone: malignant = CNV-positive cells not of the other chain
    chains = pd.DataFrame({"light_chain": ["kappa"] * 28 + ["lambda", "kappa"]}, index=idx)
    cc = pd.DataFrame({"cnv_corr": [0.6] * 29 + [0.0], "cut": 0.2}, index=idx)
    res = malignant.call_malignant(obs, chains, cc)
    assert res["malignant"].tolist() == [True] * 28 + [False, False]
    assert res["restricted"].all() and res["cnv_clone"].all() and res["dominant_chain"].iloc[0] == "kappa"
    # polyclonal (18 kappa / 12 lambda) and CNV-positive at the chance rate: no clone, nothing malignant
    chains = pd.DataFrame({"light_chain": ["kappa"] * 18 + ["lambda"] * 12}, index=idx)
    cc = pd.DataFrame({"cnv_corr": [0.6] + [0.0] * 29, "cut": 0.2}, index=idx)
    res = malignant.call_malignant(obs, chains, cc)
    assert not res["malignant"].any() and not res["restricted"].any() and not res["cnv_clone"].any()


def test_marker_table_overlap_with_the_simulator_is_reported():
    """The annotation's markers are chosen from the literature, not from the simulator's programmes; the overlap
    (genes of both, as real biology shares them) is reported, and the simulator never reads the marker table."""
    import inspect

    from helpers.data import simulate

    m = cell_types.load_markers()
    markers = {g for c in m["compartments"].values() for g in c["markers"]} | \
        {g for comp in m["subsets"].values() for s in comp.values() for g in s["markers"]}
    programmes = {g for t in simulate.load_programs()["types"].values() for g in t["markers"]}
    shared = markers & programmes
    print(f"\nmarker table: {len(markers)} genes; in the simulator's programmes: {len(shared)} "
          f"({len(shared) / len(markers):.0%}); only in the marker table: {len(markers - programmes)}")
    assert "markers.yaml" not in inspect.getsource(simulate) and "load_markers" not in inspect.getsource(simulate)
    assert all("source" in s for comp in m["subsets"].values() for s in comp.values())
    assert all("source" in c for c in m["compartments"].values())


def test_composition_and_hodges_lehmann():
    x, y = np.array([1.0, 2, 3, 4, 5]), np.array([3.0, 4, 5, 6, 7])
    est, lo, hi = stats.hodges_lehmann_ci(x, y)
    assert est == 2.0 and lo <= 2.0 <= hi
    q = stats.bh_fdr(np.array([0.01, 0.04, 0.03, 0.5]))
    assert np.allclose(q, [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])  # hand-computed BH
    obs = pd.DataFrame({"patient_id": ["a"] * 4 + ["b"] * 4, "cell_type": ["T", "T", "M", "P"] * 2})
    fr = composition.patient_fractions(obs, exclude=["P"])
    assert np.allclose(fr.loc["a"].to_numpy(), [1 / 3, 2 / 3])
