"""Real-cohort ingest on files written from real data (Kang 2018 PBMC, shipped in tests/data): every format,
every error, barcode clashes across samples, paediatric ages, non-gene 10x features (antibodies, CRISPR guides,
peaks) and hg19-era gene symbols."""
from __future__ import annotations

import gzip
import shutil
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from helpers.data.cohort import load_cohort
from helpers.data.ingest import IngestError, ingest_samples, prepare_cohort, read_counts
from helpers.data.symbols import update_symbols

KANG = Path(__file__).parent / "data" / "kang2018_pbmc_ctrl_stim_600cells.h5ad"


@pytest.fixture(scope="module")
def kang():
    a = ad.read_h5ad(KANG)
    a.X = sp.csr_matrix(a.X)
    return a


def _feature_types(a) -> list[str]:
    return list(a.var["feature_types"]) if "feature_types" in a.var else ["Gene Expression"] * a.n_vars


def with_features(a, extra: dict[str, str], seed: int = 0) -> ad.AnnData:
    """``a`` plus one feature per {name: feature type} with Poisson counts, appended as Cell Ranger does."""
    counts = np.random.default_rng(seed).poisson(30, (a.n_obs, len(extra)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Variable names are not unique")  # an antibody may share a gene's name
        return ad.AnnData(sp.hstack([sp.csr_matrix(a.X), sp.csr_matrix(counts)]).tocsr().astype(np.float32),
                          obs=a.obs[[]].copy(),
                          var=pd.DataFrame({"feature_types": _feature_types(a) + list(extra.values())},
                                           index=list(a.var_names) + list(extra)))


def write_10x_mtx(a, folder: Path, version: int = 3, gz: bool = True):
    folder.mkdir(parents=True)
    op = (lambda p: gzip.open(str(p) + ".gz", "wb")) if gz else (lambda p: open(p, "wb"))
    with op(folder / "matrix.mtx") as fh:
        scipy.io.mmwrite(fh, sp.csr_matrix(a.X).T.tocoo().astype(np.int64), field="integer")
    ids = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    if version == 3:
        feats = pd.DataFrame({0: ids, 1: a.var_names, 2: _feature_types(a)})
        name = "features.tsv"
    else:
        feats = pd.DataFrame({0: ids, 1: a.var_names})
        name = "genes.tsv"
    with op(folder / name) as fh:
        fh.write(feats.to_csv(sep="\t", header=False, index=False).encode())
    with op(folder / "barcodes.tsv") as fh:
        fh.write(("\n".join(a.obs_names) + "\n").encode())


def write_10x_h5(a, path: Path):
    X = sp.csc_matrix(sp.csr_matrix(a.X).T.astype(np.int32))  # genes x cells, CSC over cells
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"] = X.data, X.indices, X.indptr
        g["shape"] = np.array(X.shape)
        g["barcodes"] = np.array(a.obs_names, dtype="S")
        ft = g.create_group("features")
        ft["id"] = np.array([f"ENSG{i:011d}" for i in range(a.n_vars)], dtype="S")
        ft["name"] = np.array(a.var_names, dtype="S")
        ft["feature_type"] = np.array(_feature_types(a), dtype="S")


@pytest.mark.parametrize("fmt", ["mtx_v3_gz", "mtx_v2_plain", "h5", "h5ad"])
def test_each_format_roundtrips_real_counts(kang, tmp_path, fmt):
    sub = kang[:200].copy()
    if fmt == "mtx_v3_gz":
        write_10x_mtx(sub, tmp_path / "s", 3, True)
        p = tmp_path / "s"
    elif fmt == "mtx_v2_plain":
        write_10x_mtx(sub, tmp_path / "s", 2, False)
        p = tmp_path / "s"
    elif fmt == "h5":
        p = tmp_path / "s.h5"
        write_10x_h5(sub, p)
    else:
        p = tmp_path / "s.h5ad"
        sub.write_h5ad(p)
    a = read_counts(p)
    assert a.shape == sub.shape
    assert list(a.var_names) == list(update_symbols(sub).var_names)  # hg19-era names (IL8, ...) mapped
    assert "CXCL8" in a.var_names and "IL8" not in a.var_names
    assert (sp.csr_matrix(a.X) != sp.csr_matrix(sub.X)).nnz == 0
    if fmt != "h5ad":
        assert a.var["gene_ids"].str.startswith("ENSG").all()


def _cohort_dir(tmp_path, kang, kinds=("mtx", "h5", "h5ad", "combined"), ages=(67, 71, 9, 15), edit=None):
    """Four samples of Kang counts in ``kinds`` formats; ``edit(i, part)`` may change sample i's AnnData first."""
    root = tmp_path / "proj"
    cdir = root / "data" / "cohorts" / "mine"
    (cdir / "counts").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    rows = []
    ctrl, stim = kang[kang.obs.condition == "ctrl"], kang[kang.obs.condition == "stim"]
    halves = [ctrl[:150], ctrl[150:], stim[:150], stim[150:]]
    comb = ad.concat([halves[3]], join="outer")
    comb.obs["sample"] = "S4"
    for i, (kind, part) in enumerate(zip(kinds, halves)):
        sid = f"S{i + 1}"
        part = part.copy()
        part.obs_names = [f"AAAC{j:06d}-1" for j in range(part.n_obs)]  # identical barcodes in every sample
        part = edit(i, part) if edit else part
        if kind == "mtx":
            write_10x_mtx(part, cdir / "counts" / sid)
            path, col = f"counts/{sid}", ""
        elif kind == "h5":
            write_10x_h5(part, cdir / "counts" / f"{sid}.h5")
            path, col = f"counts/{sid}.h5", ""
        elif kind == "h5ad":
            part.write_h5ad(cdir / "counts" / f"{sid}.h5ad")
            path, col = f"counts/{sid}.h5ad", ""
        else:
            part.obs["sample"] = sid
            part.write_h5ad(cdir / "counts" / "combined.h5ad")
            path, col = "counts/combined.h5ad", "sample"
        rows.append({"sample_id": sid, "patient_id": f"p{i + 1}", "tissue": "BM", "response": ["CR", "NR"][i % 2],
                     "age": ages[i], "batch": "b1", "path": path, "sample_column": col})
    pd.DataFrame(rows).to_csv(cdir / "samples.csv", index=False)
    (cdir / "cohort.yaml").write_text(
        "name: mine\nkind: real\nseed: 1\ntissues: [BM]\nresponse: {groups: [CR, NR], reference: CR}\n")
    return root, cdir


def test_ingest_mixed_formats_prefixes_duplicate_barcodes(kang, tmp_path):
    root, cdir = _cohort_dir(tmp_path, kang)
    c = load_cohort("mine", root=root)
    paths = prepare_cohort(c, progress=False)
    a = ad.read_h5ad(paths["cells"])
    assert a.n_obs == 600 and a.obs_names.is_unique
    assert a.obs_names[0].startswith("S1_AAAC")
    assert a.obs.groupby("sample_id", observed=True).size().to_dict() == {"S1": 150, "S2": 150, "S3": 150, "S4": 150}
    # counts preserved exactly: totals equal the source
    assert int(a.layers["counts"].sum()) == int(kang.X.sum())
    # paediatric ages go through unchanged
    assert sorted(a.obs.drop_duplicates("sample_id").age.tolist()) == [9.0, 15.0, 67.0, 71.0]
    # the interferon-stimulated half shows ISG15 up: biology survives ingest
    isg = np.asarray(a[:, "ISG15"].X.todense()).ravel() if "ISG15" in a.var_names else None
    if isg is not None:
        assert isg[a.obs.sample_id.isin(["S3", "S4"]).to_numpy()].mean() > isg[a.obs.sample_id.isin(["S1", "S2"]).to_numpy()].mean()


def _one_sample(adata, path) -> pd.DataFrame:
    """``adata`` written to ``path`` as the one sample of a samples table."""
    adata.write_h5ad(path)
    return pd.DataFrame([{"sample_id": "S1", "patient_id": "p1", "tissue": "BM", "response": "CR", "age": 60,
                          "batch": "b", "path": str(path)}])


def test_log_normalised_input_refused(kang, tmp_path):
    b = kang[:100].copy()
    b.X = sp.csr_matrix(np.log1p(b.X.toarray() / b.X.toarray().sum(1, keepdims=True) * 1e4))
    with pytest.raises(IngestError, match="log-normalised"):
        ingest_samples(_one_sample(b, tmp_path / "lognorm.h5ad"), tmp_path)


def test_missing_corrupt_and_ensembl_only(kang, tmp_path):
    with pytest.raises(IngestError, match="does not exist"):
        read_counts(tmp_path / "nope.h5")
    write_10x_mtx(kang[:50], tmp_path / "m", 3, False)
    raw = (tmp_path / "m" / "matrix.mtx").read_bytes()
    (tmp_path / "m" / "matrix.mtx").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(IngestError, match="corrupt or truncated"):
        read_counts(tmp_path / "m")
    write_10x_h5(kang[:50], tmp_path / "x.h5")
    data = (tmp_path / "x.h5").read_bytes()
    (tmp_path / "t.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(IngestError, match="corrupt, truncated"):
        read_counts(tmp_path / "t.h5")
    e = kang[:50].copy()
    e.var_names = [f"ENSG{i:011d}" for i in range(e.n_vars)]
    write_10x_mtx(e, tmp_path / "ens", 3, True)
    shutil.copy(tmp_path / "ens" / "features.tsv.gz", tmp_path / "f.gz")
    with gzip.open(tmp_path / "ens" / "features.tsv.gz", "wt") as fh:
        fh.write("".join(f"{g}\t{g}\tGene Expression\n" for g in e.var_names))
    with pytest.raises(IngestError, match="Ensembl ids without symbols"):
        read_counts(tmp_path / "ens")
    with pytest.raises(IngestError, match="unknown counts format"):
        (tmp_path / "x.loom").write_text("")
        read_counts(tmp_path / "x.loom")


def test_empty_sample_refused(kang, tmp_path):
    b = kang[:0].copy()
    with pytest.raises(IngestError, match="no cells"):
        ingest_samples(_one_sample(b, tmp_path / "empty.h5ad"), tmp_path)


def test_ingest_by_sample_equals_in_memory_ingest(kang, tmp_path):
    """The per-sample (Dask-ready) ingest of the mixed-format cohort writes the same cells.h5ad content, assembled
    on disk, and the same per-sample summary; a corrupt sample is named through it too."""
    from helpers.data.describe import per_sample_summary
    from helpers.preprocessing import per_sample

    root, cdir = _cohort_dir(tmp_path, kang)
    c = load_cohort("mine", root=root)
    ref = ad.read_h5ad(prepare_cohort(c, progress=False)["cells"])
    paths, summary = per_sample.ingest_by_sample(c, client=None)
    a = ad.read_h5ad(paths["cells"])
    assert list(a.obs_names) == list(ref.obs_names) and list(a.var_names) == list(ref.var_names)
    assert (sp.csr_matrix(a.layers["counts"]) != sp.csr_matrix(ref.layers["counts"])).nnz == 0
    assert (a.obs["response"].astype(str) == ref.obs["response"].astype(str)).all()
    pd.testing.assert_frame_equal(summary, per_sample_summary(ref), check_dtype=False)
    assert a.uns["cohort"]["kind"] == "real" and not (c.processed_dir / "ingest_tmp").exists()
    # sources now come from the ingested file, one sample's rows at a time
    src = per_sample.sample_sources(c)
    one = per_sample.read_source(src[1])
    assert one.n_obs == 150 and (one.obs["sample_id"] == "S2").all()
    h5 = pd.read_csv(cdir / "samples.csv").query("path.str.endswith('.h5')")["path"].iloc[0]
    (cdir / h5).write_bytes(b"not an h5 file")
    with pytest.raises(IngestError, match=Path(h5).name):
        per_sample.ingest_by_sample(c, client=None)


NON_GENE = {"CD16": "Antibody Capture", "CD38": "Antibody Capture", "CD54": "Antibody Capture",
            "CD74": "Antibody Capture",  # also a gene of the panel: the gene row keeps its name and counts
            "sgRNA1": "CRISPR Guide Capture", "sgRNA2": "CRISPR Guide Capture",
            "chr1:100-600": "Peaks", "HTO_1": "Custom"}


@pytest.mark.parametrize("fmt", ["mtx", "h5", "h5ad"])
def test_non_gene_features_kept_out_of_the_counts(kang, tmp_path, fmt):
    sub = kang[:60].copy()
    full = with_features(sub, NON_GENE)
    p = tmp_path / {"mtx": "s", "h5": "s.h5", "h5ad": "s.h5ad"}[fmt]
    {"mtx": lambda: write_10x_mtx(full, p), "h5": lambda: write_10x_h5(full, p),
     "h5ad": lambda: full.write_h5ad(p)}[fmt]()
    with pytest.warns(UserWarning, match=r"dropped non-gene features: 2 'CRISPR Guide Capture', 1 'Peaks', 1 'Custom'"):
        a = read_counts(p)
    assert a.n_vars == kang.n_vars and set(a.var.get("feature_types", ["Gene Expression"])) == {"Gene Expression"}
    # library sizes are gene counts only; the gene CD74 is the gene, not the antibody
    np.testing.assert_array_equal(np.asarray(a.X.sum(1)).ravel(), np.asarray(sub.X.sum(1)).ravel())
    np.testing.assert_array_equal(a[:, "CD74"].X.toarray(), sub[:, "CD74"].X.toarray())
    prot = a.obsm["protein_counts"]
    assert isinstance(prot, pd.DataFrame) and list(prot.columns) == ["CD16", "CD38", "CD54", "CD74"]
    assert prot.dtypes.eq(np.float64).all() and list(prot.index) == list(a.obs_names)
    np.testing.assert_array_equal(prot.to_numpy(), full.X[:, kang.n_vars:kang.n_vars + 4].toarray())


def test_only_non_gene_features_refused(kang, tmp_path):
    ab = with_features(kang[:20, :0].copy(), {"CD16": "Antibody Capture", "CD38": "Antibody Capture"})
    write_10x_mtx(ab, tmp_path / "ab")
    with pytest.raises(IngestError,
                       match=r"ab: no 'Gene Expression' feature \(feature types: \['Antibody Capture'\]\)"):
        read_counts(tmp_path / "ab")


def test_previous_symbols_mapped_without_duplicates():
    names = ["IGJ", "FAM46C", "WHSC1", "NSD2", "SEPT4", "C17orf47", "MT-CO2", "CD3E"]
    a = ad.AnnData(sp.csr_matrix(np.arange(1, 25, dtype=np.float32).reshape(3, 8)), var=pd.DataFrame(index=names))
    b = update_symbols(a)
    # renamed: IGJ -> JCHAIN, FAM46C -> TENT5C. Kept: WHSC1 (NSD2, its current symbol, is there too: the current
    # row is kept, no summing), SEPT4 and C17orf47 (both map to SEPTIN4), MT-CO2 and CD3E (current symbols).
    assert list(b.var_names) == ["JCHAIN", "TENT5C", "WHSC1", "NSD2", "SEPT4", "C17orf47", "MT-CO2", "CD3E"]
    assert b.var_names.is_unique and (b.X != a.X).nnz == 0 and list(a.var_names) == names  # input untouched
    r = b.uns["symbol_renames"].set_index("previous")
    assert r.loc["IGJ", "current"] == "JCHAIN" and r.loc["IGJ", "action"] == "renamed"
    assert r.loc["WHSC1", "action"].startswith("kept: the current symbol is also in the data")
    assert r.loc["SEPT4", "action"].startswith("kept: several names") and "MT-CO2" not in r.index


def test_features_and_old_symbols_same_through_both_ingest_paths(kang, tmp_path):
    """Samples differing in antibodies (S1: CD16/CD38/CD54, S2: CD16, S3 and S4 none) and in reference (S1 uses
    the hg19 name EBI2 for GPR183): one GPR183 column, antibodies NaN where a sample lacks them, the renames in
    uns, absent marker genes named, the same from the in-memory and the per-sample (Dask) ingest."""
    from helpers.preprocessing import per_sample

    antibodies = {0: ["CD16", "CD38", "CD54"], 1: ["CD16"]}

    def edit(i, part):
        if i == 0:
            part.var_names = ["EBI2" if g == "GPR183" else g for g in part.var_names]
        return with_features(part, {n: "Antibody Capture" for n in antibodies[i]}, seed=i) if i in antibodies else part

    root, cdir = _cohort_dir(tmp_path, kang, edit=edit)
    c = load_cohort("mine", root=root)
    with pytest.warns(UserWarning, match=r"genes absent after symbol mapping: data/markers.yaml: \[.*'CD3E'"):
        ref = ad.read_h5ad(prepare_cohort(c, progress=False)["cells"])
    with pytest.warns(UserWarning, match="genes absent after symbol mapping"):
        a = ad.read_h5ad(per_sample.ingest_by_sample(c, client=None)[0]["cells"])
    for x in (ref, a):
        assert "GPR183" in x.var_names and "EBI2" not in x.var_names and x.n_vars == kang.n_vars
        assert int(x.layers["counts"].sum()) == int(kang.X.sum())  # antibody counts are not in the library sizes
        prot = x.obsm["protein_counts"]
        assert list(prot.columns) == ["CD16", "CD38", "CD54"] and list(prot.index) == list(x.obs_names)
        sid = x.obs["sample_id"].astype(str).to_numpy()
        assert prot[sid == "S1"].notna().all().all() and prot.loc[sid == "S2", "CD16"].notna().all()
        assert prot.loc[sid == "S2", ["CD38", "CD54"]].isna().all().all()
        assert prot[np.isin(sid, ["S3", "S4"])].isna().all().all()
        r = x.uns["symbol_renames"].set_index("previous")
        assert r.loc["EBI2", "current"] == "GPR183" and r.loc["EBI2", "samples"] == "S1"
        assert r.loc["IL8", "samples"] == "S1,S2,S3,S4"
    pd.testing.assert_frame_equal(a.obsm["protein_counts"], ref.obsm["protein_counts"])
    pd.testing.assert_frame_equal(a.uns["symbol_renames"], ref.uns["symbol_renames"])
    assert (sp.csr_matrix(a.layers["counts"]) != sp.csr_matrix(ref.layers["counts"])).nnz == 0
