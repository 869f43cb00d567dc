"""helpers.io.concat_h5ad_rows: cell-wise concatenation on disk, one file at a time."""
import subprocess
import sys
import textwrap

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from helpers.io import concat_h5ad_rows, read_annotations


def _sample(i: int, n: int = 50, genes: list[str] | None = None, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed + i)
    genes = genes or [f"G{j}" for j in range(40)]
    X = sp.random(n, len(genes), density=0.2, format="csr", random_state=rng, dtype=np.float32)
    X.data = np.ceil(X.data * 10)
    obs = pd.DataFrame({"sample_id": pd.Categorical([f"S{i}"] * n, categories=[f"S{k}" for k in range(5)]),
                        "n": np.arange(n)}, index=[f"S{i}_c{k}" for k in range(n)])
    a = ad.AnnData(X=X, obs=obs, var=pd.DataFrame({"symbol": genes}, index=genes))
    a.layers["counts"] = X.copy()
    return a


def test_concatenation_equals_anndata_concat(tmp_path):
    parts = [_sample(i) for i in range(3)]
    files = []
    for i, a in enumerate(parts):
        files.append(tmp_path / f"{i}.h5ad")
        a.write_h5ad(files[-1])
    out = concat_h5ad_rows(files, tmp_path / "cells.h5ad", uns={"cohort": {"name": "x"}}, compression="lzf")
    got, ref = ad.read_h5ad(out), ad.concat(parts, merge="same")
    assert list(got.obs_names) == list(ref.obs_names) and list(got.var_names) == list(ref.var_names)
    assert (got.X != ref.X).nnz == 0 and (got.layers["counts"] != ref.layers["counts"]).nnz == 0
    assert isinstance(got.obs["sample_id"].dtype, pd.CategoricalDtype)
    assert list(got.obs["sample_id"].cat.categories) == [f"S{k}" for k in range(5)]  # unused categories kept
    pd.testing.assert_frame_equal(got.var, parts[0].var)
    assert got.uns["cohort"]["name"] == "x"


def test_unsorted_int64_indices_give_a_matrix_scipy_can_sort(tmp_path):
    """Real count files may store unsorted column indices, or int64 ones: the output's indices and indptr share one
    type, so scipy can sort and sum it (mixed int32/int64 raised "Output dtype not compatible with inputs")."""
    files, total = [], 0
    for i in range(2):
        a = _sample(i)
        X = a.X.tocsr()
        for r in range(X.shape[0]):  # reverse each row's stored order: valid CSR, indices unsorted
            lo, hi = X.indptr[r], X.indptr[r + 1]
            X.indices[lo:hi], X.data[lo:hi] = X.indices[lo:hi][::-1].copy(), X.data[lo:hi][::-1].copy()
        X.indices, X.indptr = X.indices.astype(np.int64), X.indptr.astype(np.int64)
        X.has_sorted_indices = False
        a.X, a.layers["counts"] = X, X.copy()
        total += X.sum()
        files.append(tmp_path / f"{i}.h5ad")
        a.write_h5ad(files[-1])
    got = ad.read_h5ad(concat_h5ad_rows(files, tmp_path / "cells.h5ad"))
    for M in (got.X, got.layers["counts"]):
        assert M.indices.dtype == M.indptr.dtype == np.int32
        assert M.sum() == pytest.approx(total)


def test_different_genes_are_named(tmp_path):
    a, b = _sample(0), _sample(1, genes=[f"H{j}" for j in range(40)])
    a.write_h5ad(tmp_path / "a.h5ad")
    b.write_h5ad(tmp_path / "b.h5ad")
    with pytest.raises(ValueError, match="b.h5ad"):
        concat_h5ad_rows([tmp_path / "a.h5ad", tmp_path / "b.h5ad"], tmp_path / "out.h5ad")
    assert not (tmp_path / "out.h5ad").exists()


PEAK = textwrap.dedent("""
    import glob, resource, sys
    from helpers.io import concat_h5ad_rows, read_annotations
    files = sorted(glob.glob(sys.argv[1] + "/part*.h5ad"))[: int(sys.argv[2])]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    concat_h5ad_rows(files, sys.argv[1] + f"/out{sys.argv[2]}.h5ad", compression=None)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
""")


def test_memory_stays_at_one_file_whatever_the_number_of_files(tmp_path):
    """Concatenating 32 files of ~12 MB (output ~0.4 GB) costs about what 8 do: memory does not grow with the
    output (anndata's concat_on_disk grew by about a byte per byte written)."""
    a = _sample(0, n=3000, genes=[f"G{j}" for j in range(2000)])
    for i in range(32):
        a.obs_names = [f"P{i}_{k}" for k in range(a.n_obs)]
        a.write_h5ad(tmp_path / f"part{i:02d}.h5ad")
    script = tmp_path / "peak.py"
    script.write_text(PEAK)
    peak = {n: float(subprocess.run([sys.executable, str(script), str(tmp_path), str(n)], check=True,
                                    capture_output=True, text=True).stdout.split()[-1]) for n in (8, 32)}
    out_mb = {n: (tmp_path / f"out{n}.h5ad").stat().st_size / 2 ** 20 for n in (8, 32)}
    assert out_mb[32] - out_mb[8] > 250
    assert peak[32] - peak[8] < 0.2 * (out_mb[32] - out_mb[8]), (peak, out_mb)


def test_annotations_are_read_without_any_matrix(tmp_path):
    """Notebook 00 needs a cohort file's shape and labels; backed mode would load layers['counts'] whole."""
    a = _sample(0)
    a.write_h5ad(tmp_path / "cells.h5ad")
    got = read_annotations(tmp_path / "cells.h5ad")
    assert got.shape == a.shape and got.X is None and len(got.layers) == 0 and len(got.obsm) == 0
    pd.testing.assert_frame_equal(got.obs, a.obs)
    pd.testing.assert_frame_equal(got.var, a.var)


def test_annotations_of_a_file_that_is_not_h5ad_name_it(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as h:
        h["X"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"x\.h5: no obs or var"):
        read_annotations(tmp_path / "x.h5")


def test_an_index_of_sample_files_reads_back_as_their_concatenation(tmp_path):
    """index_h5ad_rows: cells.h5ad naming per-sample files (obs and var, no values) reads whole as the files'
    concatenation (read_cohort_cells), names its files by sample (indexed_files), and refuses files on other genes."""
    from helpers.io import index_h5ad_rows, indexed_files, read_cohort_cells

    parts = [_sample(i) for i in (2, 0, 1)]
    (tmp_path / "samples").mkdir()
    files = [tmp_path / "samples" / f"S{i}.h5ad" for i in (2, 0, 1)]
    for a, f in zip(parts, files):
        a.write_h5ad(f)
    out = index_h5ad_rows(files, tmp_path / "cells.h5ad", uns={"cohort": {"name": "x"}})
    shape = read_annotations(out)
    assert shape.shape == (150, 40) and shape.obs_names[0] == "S2_c0"
    assert indexed_files(out) == {f.stem: f.resolve() for f in files} and indexed_files(files[0]) is None
    got, ref = read_cohort_cells(out), ad.concat(parts, merge="same")
    assert got.obs_names.equals(ref.obs_names) and (got.X != ref.X).nnz == 0
    assert isinstance(got.obs["sample_id"].dtype, pd.CategoricalDtype) and got.uns == {"cohort": {"name": "x"}}
    assert read_cohort_cells(files[0]).n_obs == 50  # a file holding its own values is read as it is
    _sample(3, genes=[f"H{j}" for j in range(40)]).write_h5ad(tmp_path / "samples" / "S3.h5ad")
    with pytest.raises(ValueError, match="S3.h5ad"):
        index_h5ad_rows(files + [tmp_path / "samples" / "S3.h5ad"], tmp_path / "other.h5ad")
    with pytest.raises(ValueError, match="share a name"):
        index_h5ad_rows([files[0], files[0]], tmp_path / "other.h5ad")
    assert not (tmp_path / "other.h5ad").exists()
