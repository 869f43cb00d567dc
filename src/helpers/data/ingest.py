"""Real-cohort ingest: read each sample's counts (10x folder v2/v3, 10x .h5, .h5ad, or one combined
.h5ad with a sample column), attach samples.csv metadata, check they are raw counts, write cells.h5ad.

Only 'Gene Expression' features are counts (X): 'Antibody Capture' counts go to ``obsm['protein_counts']``
(cells x antibodies, NaN for cells of samples without that antibody), other feature types (CRISPR, Peaks,
Custom) are dropped with a warning. Previous gene symbols are mapped to current ones (:mod:`helpers.data.symbols`),
the decisions kept in ``uns['symbol_renames']``.
"""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from helpers.data.cohort import Cohort, InputError
from helpers.data.symbols import update_symbols, warn_missing_genes

DESIGN_COLUMNS = ["sample_id", "patient_id", "tissue", "response", "age", "batch"]
GENE_EXPRESSION = "Gene Expression"
ANTIBODY_CAPTURE = "Antibody Capture"
PROTEIN_KEY = "protein_counts"


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
                ft = grp["features"]
                var = pd.DataFrame({"gene_ids": ft["id"][:].astype(str), "gene_symbols": ft["name"][:].astype(str)})
                if "feature_type" in ft:
                    var["feature_types"] = ft["feature_type"][:].astype(str)
            else:
                var = pd.DataFrame({"gene_ids": grp["genes"][:].astype(str),
                                    "gene_symbols": grp["gene_names"][:].astype(str)})
    except (OSError, KeyError) as e:
        raise IngestError(f"{path}: corrupt, truncated or not a 10x .h5 file ({type(e).__name__}: {e})") from e
    X = sp.csc_matrix((data, indices, indptr), shape=shape).T.tocsr()
    return _finish(X, bcs, var, path)


def check_symbols(names, src) -> None:
    """Refuse gene names that are (almost all) Ensembl ids: the gene sets, markers and panel use symbols."""
    if pd.Index(names).astype(str).str.match(r"^ENS[A-Z]*G\d+").mean() > 0.9:
        raise IngestError(f"{src}: gene names are Ensembl ids without symbols; give a features file with symbols in "
                          "column 2 (Cell Ranger features.tsv layout), or symbols as var_names of the .h5ad")


def keep_gene_features(adata: ad.AnnData, src) -> ad.AnnData:
    """Keep the 'Gene Expression' features of ``adata`` (all of them when var has no ``feature_types``); put the
    'Antibody Capture' counts in ``obsm['protein_counts']`` (cells x antibodies, float, named by var
    ``gene_symbols`` or var_names) and leave other feature types out with a warning naming each type and count."""
    if "feature_types" not in adata.var:
        return adata
    ftype = adata.var["feature_types"].astype(str).to_numpy()
    genes, antibodies = ftype == GENE_EXPRESSION, ftype == ANTIBODY_CAPTURE
    if not genes.any():
        raise IngestError(f"{src}: no '{GENE_EXPRESSION}' feature (feature types: {sorted(set(ftype))})")
    other = pd.Series(ftype[~(genes | antibodies)]).value_counts()
    if len(other):
        warnings.warn(f"{src}: dropped non-gene features: " + ", ".join(f"{n} '{t}'" for t, n in other.items())
                      + f" (only '{GENE_EXPRESSION}' rows are counts; '{ANTIBODY_CAPTURE}' goes to "
                      f"obsm['{PROTEIN_KEY}'])", stacklevel=2)
    out = adata[:, genes].copy()
    if antibodies.any():
        names = adata.var["gene_symbols"] if "gene_symbols" in adata.var else adata.var_names.to_series()
        cols = ad.utils.make_index_unique(pd.Index(names.astype(str).to_numpy()[antibodies]))
        counts = sp.csr_matrix(adata.X)[:, np.flatnonzero(antibodies)].toarray().astype(np.float64)
        out.obsm[PROTEIN_KEY] = pd.DataFrame(counts, index=adata.obs_names, columns=cols)
    return out


def _finish(X: sp.spmatrix, barcodes, var: pd.DataFrame, src: Path) -> ad.AnnData:
    a = ad.AnnData(X=sp.csr_matrix(X), obs=pd.DataFrame(index=pd.Index(barcodes, dtype=str)),
                   var=var.set_axis(var.index.astype(str)))
    a = keep_gene_features(a, src)
    check_symbols(a.var["gene_symbols"], src)
    a.var_names = a.var["gene_symbols"].astype(str).to_numpy()
    a.var_names_make_unique()
    return a


def read_counts(path: str | Path) -> ad.AnnData:
    """Read one sample's counts by format: 10x folder, 10x .h5, or .h5ad (raw counts in X or layers['counts']);
    gene expression features only, previous symbols mapped to current ones (see the module docstring)."""
    return update_symbols(_read_by_format(Path(path)))


def _read_by_format(path: Path) -> ad.AnnData:
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
        a = keep_gene_features(a, path)
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


def pop_extras(adata: ad.AnnData) -> dict[str, Any]:
    """Take one sample's antibody counts (obsm) and symbol decisions (uns) out of ``adata``, to be merged over the
    cohort by :func:`cohort_extras` (both ingest paths do so)."""
    return {"sample_id": str(adata.obs["sample_id"].iloc[0]), "protein": adata.obsm.pop(PROTEIN_KEY, None),
            "renames": adata.uns.pop("symbol_renames", None)}


def cohort_extras(extras: list[dict], obs_names, var_names, src) -> tuple[dict, dict]:
    """The cohort's obsm and uns from the samples' :func:`pop_extras`: ``obsm['protein_counts']`` over all cells
    (NaN where a sample lacks an antibody; absent when no sample has one) and ``uns['symbol_renames']`` (previous,
    current, action, samples). Warns naming the marker and panel genes absent from ``var_names``."""
    proteins = [e["protein"] for e in extras if e["protein"] is not None]
    obsm = {PROTEIN_KEY: pd.concat(proteins).reindex(pd.Index(obs_names))} if proteins else {}
    renames = pd.concat([pd.DataFrame(columns=["previous", "current", "action"])]
                        + [e["renames"].assign(sample_id=e["sample_id"]) for e in extras if e["renames"] is not None])
    renames = (renames.groupby(["previous", "current", "action"])["sample_id"].agg(",".join).rename("samples")
               .reset_index())
    warn_missing_genes(var_names, str(src))
    return obsm, {"symbol_renames": renames}


def ingest_samples(samples: pd.DataFrame, cohort_dir: Path) -> ad.AnnData:
    """Concatenate every sample of ``samples`` with its design columns; barcodes prefixed by sample id."""
    from tqdm.auto import tqdm

    cache: dict[Path, ad.AnnData] = {}
    parts = [read_sample(row, cohort_dir, cache) for _, row in tqdm(list(samples.iterrows()), desc="reading samples")]
    extras = [pop_extras(a) for a in parts]
    adata = ad.concat(parts, join="outer", merge="first")
    check_unique_barcodes(adata.obs_names)
    obsm, uns = cohort_extras(extras, adata.obs_names, adata.var_names, cohort_dir)
    adata.obsm.update(obsm)
    adata.uns.update(uns)
    adata.X = sp.csr_matrix(adata.X)
    adata.layers["counts"] = adata.X.copy()
    for c in ("sample_id", "patient_id", "tissue", "response", "batch"):
        adata.obs[c] = adata.obs[c].astype(str).astype("category")
    adata.obs["age"] = pd.to_numeric(adata.obs["age"]).astype(float)
    return adata


def prepare_cohort(cohort: Cohort, n_jobs: int = 2, progress: bool = True) -> dict[str, Path]:
    """Build (simulated) or ingest (real) a cohort into data/processed/<cohort>/cells.h5ad."""
    from helpers.data.simulate import build_simulated_cohort
    from helpers.io import write_h5ad

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
