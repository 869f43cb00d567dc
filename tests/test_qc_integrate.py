"""QC thresholds, doublet calls, normalisation and Harmony on small hand-made data."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from helpers.preprocessing import integrate
from helpers.preprocessing.normalise import normalize_log
from helpers.preprocessing.qc import apply_thresholds, mad_thresholds, qc_metrics
from helpers.validation.truth import qc_against_truth


def _toy(n=200, seed=0):
    rng = np.random.default_rng(seed)
    genes = [f"G{i}" for i in range(50)] + ["MT-CO1", "MT-ND1"]
    X = rng.poisson(5, size=(n, len(genes))).astype(np.float32)
    X[:, -2:] = rng.poisson(1, size=(n, 2))
    a = ad.AnnData(sp.csr_matrix(X), obs=pd.DataFrame({"sample_id": ["s1"] * (n // 2) + ["s2"] * (n - n // 2)},
                                                      index=[f"c{i}" for i in range(n)]), var=pd.DataFrame(index=genes))
    a.layers["counts"] = a.X.copy()
    return a


def test_qc_metrics_hand_computed():
    a = _toy()
    m = qc_metrics(a)
    X = a.X.toarray()
    assert np.allclose(m["total_counts"], X.sum(1))
    assert np.array_equal(m["n_genes"], (X > 0).sum(1))
    assert np.allclose(m["pct_mt"], 100 * X[:, -2:].sum(1) / X.sum(1))


def test_mad_thresholds_flag_damaged_cells():
    a = _toy()
    X = a.X.toarray()
    X[:10, :50] = 0  # damaged: little cytoplasmic RNA, mito dominates
    X[:10, -2:] = 40
    a.X = sp.csr_matrix(X)
    a.layers["counts"] = a.X.copy()
    m = qc_metrics(a)
    thr = mad_thresholds(m, a.obs["sample_id"])
    ok = apply_thresholds(m, a.obs["sample_id"], thr)
    assert not ok.iloc[:10].any()
    assert ok.iloc[10:].mean() > 0.95
    assert set(thr.index) == {"s1", "s2"}


def test_qc_requires_symbols():
    a = _toy()
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    with pytest.raises(ValueError, match="mitochondrial"):
        qc_metrics(a)


def test_qc_against_truth_counts():
    q = pd.Series(["good"] * 8 + ["doublet", "low_quality"], index=list("abcdefghij"))
    keep = pd.Series([True] * 7 + [False, False, True], index=list("abcdefghij"))
    r = qc_against_truth(q, keep)
    assert r["junk_removed_fraction"] == 0.5 and r["good_kept_fraction"] == 7 / 8


def test_normalize_keeps_counts():
    a = _toy()
    normalize_log(a)
    X = a.layers["counts"].toarray()
    expect = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    assert np.allclose(a.X.toarray(), expect, atol=1e-5)


def test_one_normalisation_equals_scanpy():
    """normalize_log, lognorm_matrix and lognorm are scanpy's normalize_total(1e4) + log1p (to float precision),
    whatever the reader: X, a subset of genes, or a dense table."""
    import scanpy as sc

    from helpers.preprocessing.normalise import lognorm, lognorm_matrix

    rng = np.random.default_rng(3)
    counts = sp.csr_matrix(rng.negative_binomial(2, 0.3, size=(50, 30)).astype(np.float32))
    counts[0] = 0  # an empty cell stays zero
    ref = ad.AnnData(X=counts.copy())
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    a = normalize_log(ad.AnnData(X=counts.copy()))
    np.testing.assert_allclose(a.X.toarray(), ref.X.toarray(), rtol=1e-5, atol=1e-6)
    genes = list(a.var_names[[5, 2, 9]])
    np.testing.assert_allclose(lognorm_matrix(a, genes).toarray(), ref[:, genes].X.toarray(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lognorm(a, genes).to_numpy(), ref[:, genes].X.toarray(), rtol=1e-5, atol=1e-6)
    assert lognorm_matrix(a, genes, layer=None).toarray() == pytest.approx(a[:, genes].X.toarray())


def test_harmony_shape_mixing_and_no_response():
    rng = np.random.default_rng(0)
    n = 600
    batch = np.repeat(["a", "b", "c"], n // 3)
    cell = np.tile(["x", "y"], n // 2)
    X = rng.normal(size=(n, 10)) + np.where(cell == "x", 4, -4)[:, None] * np.eye(10)[0]
    X += np.select([batch == "a", batch == "b"], [3, -3], 0)[:, None] * np.eye(10)[1]
    a = ad.AnnData(obs=pd.DataFrame({"sample_id": batch, "response": batch, "cell": cell}))
    a.obsm["X_pca"] = X.astype(np.float32)
    Z = integrate.harmony(a, key="sample_id", seed=0)
    assert Z.shape == X.shape
    before = integrate.knn_label_entropy(X, batch, k=20)
    after = integrate.knn_label_entropy(Z, batch, k=20)
    assert after > before + 0.2  # batches mixed
    assert integrate.knn_label_purity(Z, cell, k=20) > 0.95  # cell identity kept
    with pytest.raises(ValueError, match="response"):
        integrate.harmony(a, key="response")


def test_scrublet_same_result_any_n_jobs(tiny_sim):
    from helpers.preprocessing.doublets import call_doublets

    a = tiny_sim[0]
    a = a[a.obs["sample_id"].isin(["P01_BM", "P02_BM"])].copy()
    d1 = call_doublets(a, seed=1, n_jobs=1)
    d2 = call_doublets(a, seed=1, n_jobs=2)
    assert d1.equals(d2)
    assert d1.loc[a.obs["truth_quality"] == "doublet", "doublet_score"].mean() > \
        d1.loc[a.obs["truth_quality"] == "good", "doublet_score"].mean()


def test_hvg_retries_a_singular_loess_with_a_wider_span(monkeypatch):
    """scikit-misc's loess can be singular on a small sample (seen in a calibration cohort); select_hvg then retries
    with a wider span, records it and warns; any other error is raised unchanged."""
    import scanpy as sc

    rng = np.random.default_rng(5)
    a = ad.AnnData(sp.csr_matrix(rng.poisson(2.0, (60, 40)).astype(np.float32)),
                   obs=pd.DataFrame({"sample_id": ["s1"] * 30 + ["s2"] * 30}, index=[f"c{i}" for i in range(60)]),
                   var=pd.DataFrame(index=[f"G{i}" for i in range(40)]))
    a.layers["counts"] = a.X.copy()
    real, spans = sc.pp.highly_variable_genes, []

    def flaky(adata, **kw):
        spans.append(kw["span"])
        if kw["span"] < 0.5:
            raise ValueError("b'reciprocal condition number  5.5721e-15'")
        return real(adata, **kw)

    monkeypatch.setattr(sc.pp, "highly_variable_genes", flaky)
    with pytest.warns(UserWarning, match="singular"):
        hvg = integrate.select_hvg(a, n_top=10)
    assert spans == [0.3, 0.5] and a.uns["hvg_loess_span"] == 0.5 and len(hvg) == 10

    def broken(adata, **kw):
        raise ValueError("something else")

    monkeypatch.setattr(sc.pp, "highly_variable_genes", broken)
    with pytest.raises(ValueError, match="something else"):
        integrate.select_hvg(a, n_top=10)


def test_umap_starts_from_the_embedding_above_the_spectral_limit(monkeypatch):
    """Up to UMAP_SPECTRAL_MAX_CELLS cells UMAP starts from its spectral layout; above, from the first two columns
    of the representation (recorded in uns['umap']['init']); either way a finite layout of every cell."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 6, (3, 10))
    X = np.vstack([c + rng.normal(0, 1, (100, 10)) for c in centres]).astype(np.float32)
    small = ad.AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(300)]), obsm={"X_pca": X})
    integrate.embed(small, use_rep="X_pca", seed=0)
    assert small.uns["umap"]["init"] == "spectral"
    monkeypatch.setattr(integrate, "UMAP_SPECTRAL_MAX_CELLS", 100)
    large = ad.AnnData(obs=small.obs.copy(), obsm={"X_pca": X})
    integrate.embed(large, use_rep="X_pca", seed=0)
    assert large.uns["umap"]["init"] == "X_pca[:, :2]"
    assert large.obsm["X_umap"].shape == (300, 2) and np.isfinite(large.obsm["X_umap"]).all()
    assert not np.allclose(large.obsm["X_umap"], small.obsm["X_umap"])
