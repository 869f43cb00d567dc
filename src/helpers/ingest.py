"""Real-cohort ingest: read each sample's counts (10x folder v2/v3, 10x .h5, .h5ad, or one combined
.h5ad with a sample column), attach samples.csv metadata, check they are raw counts, write cells.h5ad.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .cohort import Cohort, InputError

DESIGN_COLUMNS = ["sample_id", "patient_id", "tissue", "response", "age", "batch"]


class IngestError(InputError):
    """Input counts are unusable; the message names the file and what is wrong."""


def _open(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)


def _first(folder: Path, names: list[str]) -> Path | None:
    for n in names:
        for cand in (folder / n, folder / f"{n}.gz"):
            if cand.exists():
                return cand
    return None


def read_10x_mtx(folder: str | Path) -> ad.AnnData:
    """Read a Cell Ranger matrix folder, v3 (features.tsv.gz) or v2 (genes.tsv) layout."""
    import scipy.io

    folder = Path(folder)
    mtx = _first(folder, ["matrix.mtx"])
    feats = _first(folder, ["features.tsv", "genes.tsv"])
    bcs = _first(folder, ["barcodes.tsv"])
    missing = [n for n, p in (("matrix.mtx[.gz]", mtx), ("features.tsv/genes.tsv", feats), ("barcodes.tsv", bcs))
               if p is None]
    if missing:
        raise IngestError(f"{folder}: not a 10x matrix folder, missing {missing}")
    try:
        with (gzip.open(mtx, "rb") if mtx.suffix == ".gz" else open(mtx, "rb")) as fh:
            m = scipy.io.mmread(fh)
    except Exception as e:
        raise IngestError(f"{mtx}: corrupt or truncated Matrix Market file ({type(e).__name__}: {e})") from e
    with _open(feats) as fh:
        f = pd.read_csv(fh, sep="\t", header=None)
    with _open(bcs) as fh:
        b = pd.read_csv(fh, sep="\t", header=None)[0].astype(str).to_numpy()
    X = sp.csr_matrix(m.T)  # 10x stores genes x cells
    if X.shape != (len(b), len(f)):
        raise IngestError(f"{folder}: matrix is {X.shape[1]} genes x {X.shape[0]} cells but there are {len(f)} "
                          f"features and {len(b)} barcodes")
    var = pd.DataFrame({"gene_ids": f[0].astype(str).to_numpy()})
    var["gene_symbols"] = f[1].astype(str).to_numpy() if f.shape[1] > 1 else var["gene_ids"]
    if f.shape[1] > 2:
        var["feature_types"] = f[2].astype(str).to_numpy()
    return _finish(X, b, var, folder)


def read_10x_h5(path: str | Path) -> ad.AnnData:
    """Read a Cell Ranger .h5 (v3 'matrix' group or v2 genome group)."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            grp = f["matrix"] if "matrix" in f else f[list(f.keys())[0]]
            data, indices, indptr = grp["data"][:], grp["indices"][:], grp["indptr"][:]
            shape = tuple(grp["shape"][:])
            bcs = grp["barcodes"][:].astype(str)
            if "features" in grp:
                ids = grp["features"]["id"][:].astype(str)
                names = grp["features"]["name"][:].astype(str)
            else:
                ids, names = grp["genes"][:].astype(str), grp["gene_names"][:].astype(str)
    except (OSError, KeyError) as e:
        raise IngestError(f"{path}: corrupt, truncated or not a 10x .h5 file ({type(e).__name__}: {e})") from e
    X = sp.csc_matrix((data, indices, indptr), shape=shape).T.tocsr()
    var = pd.DataFrame({"gene_ids": ids, "gene_symbols": names})
    return _finish(X, bcs, var, path)


def check_symbols(names, src) -> None:
    """Refuse gene names that are (almost all) Ensembl ids: the gene sets, markers and panel use symbols."""
    if pd.Index(names).astype(str).str.match(r"^ENS[A-Z]*G\d+").mean() > 0.9:
        raise IngestError(f"{src}: gene names are Ensembl ids without symbols; give a features file with symbols in "
                          "column 2 (Cell Ranger features.tsv layout), or symbols as var_names of the .h5ad")


def _finish(X: sp.spmatrix, barcodes, var: pd.DataFrame, src: Path) -> ad.AnnData:
    syms = var["gene_symbols"].astype(str)
    check_symbols(syms, src)
    a = ad.AnnData(X=sp.csr_matrix(X), obs=pd.DataFrame(index=pd.Index(barcodes, dtype=str)),
                   var=var.set_index(pd.Index(syms, dtype=str)))
    a.var_names_make_unique()
    return a


def read_counts(path: str | Path) -> ad.AnnData:
    """Read one sample's counts by format: 10x folder, 10x .h5, or .h5ad (raw counts in X or layers['counts'])."""
    path = Path(path)
    if not path.exists():
        raise IngestError(f"counts path {path} does not exist")
    if path.is_dir():
        return read_10x_mtx(path)
    if path.suffix == ".h5":
        return read_10x_h5(path)
    if path.suffix == ".h5ad":
        try:
            a = ad.read_h5ad(path)
        except Exception as e:
            raise IngestError(f"{path}: corrupt or truncated .h5ad ({type(e).__name__}: {e})") from e
        if "counts" in a.layers:
            a.X = a.layers["counts"]
        a.X = sp.csr_matrix(a.X)
        check_symbols(a.var_names, path)
        return a
    raise IngestError(f"{path}: unknown counts format; use a 10x folder, a 10x .h5 or an .h5ad")


def check_raw_counts(X: sp.spmatrix, src: str) -> None:
    """Refuse matrices that are not raw non-negative integer counts (e.g. log-normalised data)."""
    X = sp.csr_matrix(X)
    if X.nnz == 0:
        raise IngestError(f"{src}: the count matrix is empty (no non-zero entry)")
    d = X.data[: min(X.nnz, 2_000_000)]
    if np.any(d < 0):
        raise IngestError(f"{src}: negative values; raw UMI counts are needed (not scaled data)")
    if not np.allclose(d, np.round(d)):
        raise IngestError(f"{src}: values are not integers (e.g. {d[~np.isclose(d, np.round(d))][:3]}); this looks "
                          "log-normalised. Give raw UMI counts (Cell Ranger output or layers['counts']).")


def read_sample(row: pd.Series, cohort_dir: Path, cache: dict | None = None) -> ad.AnnData:
    """One row of samples.csv -> that sample's raw counts (float32 CSR) with its design columns in obs and
    barcodes prefixed by the sample id. ``cache`` keeps combined files (``sample_column``) read once."""
    p = Path(row["path"])
    p = p if p.is_absolute() else (cohort_dir / p)
    col = row.get("sample_column") if "sample_column" in row.index else None
    if isinstance(col, str) and col:
        cache = {} if cache is None else cache
        if p not in cache:
            cache[p] = read_counts(p)
        full = cache[p]
        if col not in full.obs:
            raise IngestError(f"{p}: combined file has no obs column '{col}' (from samples.csv sample_column)")
        a = full[full.obs[col].astype(str) == str(row["sample_id"])].copy()
    else:
        a = read_counts(p)
    src = f"{p} (sample {row['sample_id']})"
    if a.n_obs == 0:
        raise IngestError(f"{src}: no cells")
    check_raw_counts(a.X, src)
    a.X = sp.csr_matrix(a.X).astype(np.float32)
    a.obs_names = [f"{row['sample_id']}_{b}" for b in a.obs_names]
    for c in DESIGN_COLUMNS:
        a.obs[c] = row[c]
    a.obs = a.obs[DESIGN_COLUMNS]
    return a


def check_unique_barcodes(names: pd.Index) -> None:
    """Cell names (sample id + barcode) must be unique across the cohort."""
    if not pd.Index(names).is_unique:
        raise IngestError("duplicate cell barcodes within a sample; check the barcodes files")


def ingest_samples(samples: pd.DataFrame, cohort_dir: Path) -> ad.AnnData:
    """Concatenate every sample of ``samples`` with its design columns; barcodes prefixed by sample id."""
    from tqdm.auto import tqdm

    cache: dict[Path, ad.AnnData] = {}
    parts = [read_sample(row, cohort_dir, cache) for _, row in tqdm(list(samples.iterrows()), desc="reading samples")]
    adata = ad.concat(parts, join="outer", merge="first")
    check_unique_barcodes(adata.obs_names)
    adata.X = sp.csr_matrix(adata.X)
    adata.layers["counts"] = adata.X.copy()
    for c in ("sample_id", "patient_id", "tissue", "response", "batch"):
        adata.obs[c] = adata.obs[c].astype(str).astype("category")
    adata.obs["age"] = pd.to_numeric(adata.obs["age"]).astype(float)
    return adata


def prepare_cohort(cohort: Cohort, n_jobs: int = 2, progress: bool = True) -> dict[str, Path]:
    """Build (simulated) or ingest (real) a cohort into data/processed/<cohort>/cells.h5ad."""
    from .io import write_h5ad
    from .simulate import build_simulated_cohort

    if cohort.kind == "simulated":
        return build_simulated_cohort(cohort, n_jobs=n_jobs, progress=progress)
    adata = ingest_samples(cohort.samples, cohort.dir)
    adata.uns["cohort"] = {"name": cohort.name, "kind": "real"}
    cohort.processed_dir.mkdir(parents=True, exist_ok=True)
    paths = {"cells": write_h5ad(adata, cohort.processed_dir / "cells.h5ad")}
    return {**paths, **copy_side_tables(cohort)}


def copy_side_tables(cohort: Cohort) -> dict[str, Path]:
    """The optional side tables of a real cohort (``inputs: {bulk: ..., flow: ...}``), copied as given."""
    paths = {}
    for key in ("bulk", "flow"):
        if key in cohort.config.get("inputs", {}):
            src = cohort.resolve(cohort.config["inputs"][key])
            if not src.exists():
                raise IngestError(f"{src}: '{key}' input named in cohort.yaml does not exist")
            dst = cohort.processed_dir / ("bulk.h5ad" if key == "bulk" else "flow_cytometry.csv")
            dst.write_bytes(src.read_bytes())
            paths[key] = dst
    return paths
