"""Real-cohort ingest on files written from real data (Kang 2018 PBMC, shipped in tests/data): every format,
every error, barcode clashes across samples, paediatric ages."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from helpers.cohort import load_cohort
from helpers.ingest import IngestError, ingest_samples, prepare_cohort, read_counts

KANG = Path(__file__).parent / "data" / "kang2018_pbmc_ctrl_stim_600cells.h5ad"


@pytest.fixture(scope="module")
def kang():
    a = ad.read_h5ad(KANG)
    a.X = sp.csr_matrix(a.X)
    return a


def write_10x_mtx(a, folder: Path, version: int = 3, gz: bool = True):
    folder.mkdir(parents=True)
    op = (lambda p: gzip.open(str(p) + ".gz", "wb")) if gz else (lambda p: open(p, "wb"))
    with op(folder / "matrix.mtx") as fh:
        scipy.io.mmwrite(fh, sp.csr_matrix(a.X).T.tocoo().astype(np.int64), field="integer")
    ids = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    if version == 3:
        feats = pd.DataFrame({0: ids, 1: a.var_names, 2: "Gene Expression"})
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
        ft["feature_type"] = np.array(["Gene Expression"] * a.n_vars, dtype="S")


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
    assert list(a.var_names) == list(sub.var_names)
    assert (sp.csr_matrix(a.X) != sp.csr_matrix(sub.X)).nnz == 0
    if fmt != "h5ad":
        assert a.var["gene_ids"].str.startswith("ENSG").all()


def _cohort_dir(tmp_path, kang, kinds=("mtx", "h5", "h5ad", "combined"), ages=(67, 71, 9, 15)):
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


def test_log_normalised_input_refused(kang, tmp_path):
    b = kang[:100].copy()
    b.X = sp.csr_matrix(np.log1p(b.X.toarray() / b.X.toarray().sum(1, keepdims=True) * 1e4))
    b.write_h5ad(tmp_path / "lognorm.h5ad")
    samples = pd.DataFrame([{"sample_id": "S1", "patient_id": "p1", "tissue": "BM", "response": "CR", "age": 60,
                             "batch": "b", "path": str(tmp_path / "lognorm.h5ad")}])
    with pytest.raises(IngestError, match="log-normalised"):
        ingest_samples(samples, tmp_path)


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
    b.write_h5ad(tmp_path / "empty.h5ad")
    samples = pd.DataFrame([{"sample_id": "S1", "patient_id": "p1", "tissue": "BM", "response": "CR", "age": 60,
                             "batch": "b", "path": str(tmp_path / "empty.h5ad")}])
    with pytest.raises(IngestError, match="no cells"):
        ingest_samples(samples, tmp_path)


def test_ingest_by_sample_equals_in_memory_ingest(kang, tmp_path):
    """The per-sample (Dask-ready) ingest of the mixed-format cohort writes the same cells.h5ad content, assembled
    on disk, and the same per-sample summary; a corrupt sample is named through it too."""
    from helpers import per_sample
    from helpers.describe import per_sample_summary

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
