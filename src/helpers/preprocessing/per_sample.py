"""Sample-by-sample processing on Dask, for cohorts that do not fit one in-memory AnnData.

The per-sample steps of notebook 01 (read counts, QC metrics and MAD thresholds, Scrublet and lineage
co-expression doublets, normalisation, the per-sample Seurat-v3 variance statistics, PCA moments and
projection), notebook 02's per-cell measurements (annotation evidence, CNV profiles against one reference mean)
and the cell-group pseudobulk sums run as one Dask task per sample, and notebooks 03-08 read one shard at a time
where they need single cells (:func:`cells_by_sample`). A worker holds one sample at a time,
so memory is bounded by the largest sample, not the cohort. Only small things come back to the driver:
per-cell QC rows, per-sample thresholds, one vector of normalised variances per sample, the HVG x HVG
moment matrix, and finally the joint embedding (cells x 50) and the patient-level tables.

The results equal the in-memory path (tests/test_per_sample.py):
* QC metrics, thresholds and Scrublet calls are identical (they were already per sample);
* highly variable genes are identical: scanpy's Seurat-v3 rule with ``batch_key="sample_id"`` ranks each
  sample's normalised variance separately and combines the ranks (:func:`combine_hvg` does the same on
  the per-sample vectors);
* PCA is exact (eigendecomposition of the HVG covariance summed over samples), equal to scanpy's ARPACK PCA
  up to each component's sign;
* the one difference: the lineage co-expression doublet rule learns each programme's 'on' level within the
  sample instead of over the cohort (measured agreement of the kept cells on the default cohort: see README).

Where it runs: ``dask_client()`` starts a ``distributed.LocalCluster`` (one single-threaded worker process
per core) or connects to the scheduler named by ``DR_DASK_SCHEDULER`` / ``analysis.dask_scheduler``, e.g. a
dask-jobqueue (SLURM, PBS) or Kubernetes cluster. Workers need the project installed (``pip install -e .``)
and read/write the shard directory, so it must be on storage every worker sees.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.experimental import concat_on_disk
from tqdm.auto import tqdm

from helpers.analysis.pseudobulk import CELL_GROUPS, GROUP_KEYS, group_pseudobulk, is_cell_groups
from helpers.annotation.cell_types import (
    annotate_from_evidence,
    compartment_evidence,
    detected_genes,
    load_markers,
    over_cluster,
    subset_evidence,
)
from helpers.annotation.malignant import (
    cnv_profiles,
    cnv_reference_cells,
    cnv_reference_mean,
    infer_cnv,
    noise_thresholded,
)
from helpers.data.cohort import Cohort, InputError
from helpers.data.describe import per_sample_summary
from helpers.data.ingest import (
    IngestError,
    check_unique_barcodes,
    cohort_extras,
    copy_side_tables,
    pop_extras,
    read_sample,
)
from helpers.io import SHARDS, atomic_path, concat_h5ad_rows, indexed_files, same_genes, shard_map, write_h5ad
from helpers.preprocessing.integrate import seurat_v3_hvg
from helpers.preprocessing.normalise import normalize_log
from helpers.preprocessing.qc import qc_filter

# --------------------------------------------------------------------------------------------- where it runs


def start_client(address: str | None = None, n_workers: int | None = None, memory_limit: str | None = None) -> Any:
    """A ``distributed.Client``: to ``address`` (or $DR_DASK_SCHEDULER) if given, else on a new LocalCluster of
    ``n_workers`` single-threaded worker processes (default $DR_JOBS or 2). Close it with :func:`close_client`."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    address = address or os.environ.get("DR_DASK_SCHEDULER") or None
    if address:
        return Client(address)
    n_workers = n_workers or int(os.environ.get("DR_JOBS", 2))
    # non-daemonic workers: infercnvpy (CNV per sample) starts a process pool, which a daemonic process cannot
    with dask.config.set({"distributed.worker.daemon": False}):
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               memory_limit=memory_limit or "auto", silence_logs=logging.ERROR)
    return Client(cluster)


def close_client(client: Any) -> None:
    """Close a client from :func:`start_client` and, when it started one, its LocalCluster; None is a no-op."""
    if client is None:
        return
    from distributed import LocalCluster

    cluster = getattr(client, "cluster", None)
    client.close()
    if isinstance(cluster, LocalCluster):
        cluster.close()


@contextmanager
def dask_client(address: str | None = None, n_workers: int | None = None,
                memory_limit: str | None = None) -> Iterator[Any]:
    """:func:`start_client` as a context manager, closed on exit."""
    client = start_client(address, n_workers, memory_limit)
    try:
        yield client
    finally:
        close_client(client)


def map_samples(func: Callable, items: Sequence, client: Any = None, desc: str = "samples", **kwargs) -> list:
    """``func(item, **kwargs)`` for every item, as Dask tasks on ``client`` (in this process when None),
    returned in input order. A worker's exception is raised here with its own type and message."""
    if client is None:
        return [func(x, **kwargs) for x in tqdm(items, desc=desc)]
    from distributed import as_completed

    # the parameters travel inside a partial: given as map() keyword arguments, Dask would read strings in
    # them (e.g. gene names) as possible task keys
    futures = client.map(partial(func, **kwargs), list(items), pure=False)
    for f in tqdm(as_completed(futures), total=len(futures), desc=desc):
        if f.status == "error":
            break
    return client.gather(futures)


def reduce_samples(func: Callable, items: Sequence, combine: Callable, client: Any = None, desc: str = "samples",
                   **kwargs) -> Any:
    """``combine(...combine(func(items[0]), func(items[1]))..., func(items[-1]))``: the results of one task per item
    folded in input order (deterministic: the same sums as adding the gathered list), each dropped once folded, so
    the driver holds the running result and one task's, not every task's (notebook 01's PCA moments are 2,000 x
    2,000 float64 per sample: 12.8 GB for 400 samples if gathered). Errors as :func:`map_samples`."""
    acc = None
    if client is None:
        for x in tqdm(items, desc=desc):
            r = func(x, **kwargs)
            acc = r if acc is None else combine(acc, r)
        return acc
    futures = client.map(partial(func, **kwargs), list(items), pure=False)
    for i in tqdm(range(len(futures)), desc=desc):
        r = futures[i].result()  # a worker's exception is raised here with its own type and message
        futures[i].release()
        futures[i] = None
        acc = r if acc is None else combine(acc, r)
    return acc


# ------------------------------------------------------------------------------------------------ sources


def positions_by_sample(sample: Sequence | pd.Series) -> dict[str, np.ndarray]:
    """Each sample id (as str) -> the positions of its cells, ascending, found in one pass over the cells: comparing
    every cell's id with each sample in turn costs samples x cells (at 1M cells in 400 samples, minutes)."""
    sid = pd.Series(np.asarray(sample).astype(str))
    return {str(k): np.asarray(v) for k, v in sid.groupby(sid, sort=False).indices.items()}


def sample_sources(cohort: Cohort, cells_h5ad: str | Path | None = None, from_cells: bool = True) -> list[dict]:
    """One record per sample saying where its raw counts are: the sample's rows of cells.h5ad (simulated
    cohorts, or a real cohort already ingested by notebook 00; when cells.h5ad names per-sample files,
    :func:`helpers.io.index_h5ad_rows`, the rows of the sample's own file) or its own file from samples.csv (real
    cohorts not ingested yet, or ``from_cells=False``)."""
    cells = Path(cells_h5ad) if cells_h5ad else cohort.processed_dir / "cells.h5ad"
    if cohort.kind == "simulated" or cells_h5ad is not None or (from_cells and cells.exists()):
        if not cells.exists():
            raise InputError(f"{cells} does not exist: run notebook 00 (make) first")
        obs = _read_obs(cells)
        files = indexed_files(cells)  # cells.h5ad naming per-sample files (notebook 00 with the dask engine), or None
        sid = obs["sample_id"].astype(str).to_numpy()
        positions = positions_by_sample(sid)
        out = []
        for s in dict.fromkeys(sid):
            rows = positions[s]
            if files is None:
                out.append({"sample_id": s, "cells_h5ad": str(cells), "rows": rows, "obs": obs.iloc[rows]})
            elif s not in files:
                raise InputError(f"{cells} names no file for sample {s}: re-run notebook 00")
            else:  # the sample's own file: all its rows
                out.append({"sample_id": s, "cells_h5ad": str(files[s]), "rows": np.arange(len(rows)),
                            "obs": obs.iloc[rows]})
        return out
    return [{"sample_id": str(r["sample_id"]), "row": r, "cohort_dir": str(cohort.dir)}
            for _, r in cohort.samples.iterrows()]


def _read_obs(path: Path) -> pd.DataFrame:
    with h5py.File(path, "r") as f:
        return ad.io.read_elem(f["obs"])


def read_source(src: dict) -> ad.AnnData:
    """A sample's raw counts (float32 CSR in X and layers['counts']) with its obs, from a :func:`sample_sources`
    record. Reads only that sample's rows."""
    if "cells_h5ad" in src:
        rows = np.asarray(src["rows"])
        contiguous = len(rows) and rows[-1] - rows[0] + 1 == len(rows)
        try:
            with h5py.File(src["cells_h5ad"], "r") as f:
                key = "layers/counts" if "layers/counts" in f else "X"
                mat = ad.io.sparse_dataset(f[key])
                X = mat[int(rows[0]): int(rows[-1]) + 1] if contiguous else mat[rows]
                var = ad.io.read_elem(f["var"])
        except (OSError, KeyError) as e:
            raise IngestError(f"{src['cells_h5ad']}: cannot read sample {src['sample_id']} ({e})") from e
        a = ad.AnnData(X=sp.csr_matrix(X, dtype=np.float32), obs=src["obs"].copy(), var=var)
    else:
        a = read_sample(src["row"], Path(src["cohort_dir"]))
        for c in ("sample_id", "patient_id", "tissue", "response", "batch"):
            a.obs[c] = a.obs[c].astype(str)
        a.obs["age"] = pd.to_numeric(a.obs["age"]).astype(float)
    a.layers["counts"] = a.X.copy()
    return a


# ------------------------------------------------------------------------------------------------ ingest


def ingest_one_sample(src: dict, out_dir: str) -> tuple[str, pd.DataFrame, dict]:
    """Read and check one sample's counts (as :func:`helpers.data.ingest.ingest_samples` does), write them to
    ``out_dir/<sample>.h5ad`` and return (path, the sample's row of :func:`helpers.data.describe.per_sample_summary`,
    its antibody counts and symbol decisions from :func:`helpers.data.ingest.pop_extras`)."""
    a = read_source(src)
    extras = pop_extras(a)
    path = Path(out_dir) / f"{src['sample_id']}.h5ad"
    write_h5ad(a, path)
    return str(path), per_sample_summary(a), extras


def ingest_by_sample(cohort: Cohort, client: Any = None) -> tuple[dict[str, Path], pd.DataFrame]:
    """Real cohorts: ingest every sample in its own Dask task and assemble data/processed/<cohort>/cells.h5ad on
    disk (:func:`helpers.io.concat_h5ad_rows` when the samples share their genes, one sample in memory at a time;
    else anndata's ``concat_on_disk`` over the union of genes). Returns ({'cells': path}, per-sample summary)."""
    if cohort.kind != "real":
        raise ValueError("ingest_by_sample is for real cohorts; simulated cohorts are built by helpers.data.simulate")
    tmp_dir = cohort.processed_dir / "ingest_tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    try:
        out = map_samples(ingest_one_sample, sample_sources(cohort, from_cells=False), client, desc="ingest per sample",
                          out_dir=str(tmp_dir))
        cells = cohort.processed_dir / "cells.h5ad"
        with atomic_path(cells) as tmp:
            files = [p for p, _, _ in out]
            if same_genes(files):  # one file in memory at a time
                concat_h5ad_rows(files, tmp)
            else:  # samples measured on different genes: their union (anndata's outer join)
                concat_on_disk(files, str(tmp), join="outer", merge="first")
            with h5py.File(tmp, "r+") as f:
                obs_names = ad.io.read_elem(f["obs"]).index
                check_unique_barcodes(obs_names)
                obsm, uns = cohort_extras([e for _, _, e in out], obs_names, ad.io.read_elem(f["var"]).index,
                                          cohort.dir)
                for key, value in obsm.items():
                    ad.io.write_elem(f.require_group("obsm"), key, value)
                if "uns" in f:
                    del f["uns"]
                ad.io.write_elem(f, "uns", {"cohort": {"name": cohort.name, "kind": "real"}, **uns})
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    summary = pd.concat([s for _, s, _ in out]).sort_values("sample_id", ignore_index=True)
    return {"cells": cells, **copy_side_tables(cohort)}, summary


# ------------------------------------------------------------------------------------------ per-sample QC


@dataclass
class SampleQC:
    """What comes back from one sample's QC task (the cells themselves stay in the shard file)."""

    sample_id: str
    table: pd.DataFrame           # per-cell QC metrics, doublet calls, keep
    thresholds: pd.DataFrame      # one row: the sample's MAD thresholds and cell counts
    variances_norm: pd.Series     # Seurat-v3 normalised variance per gene (kept cells, raw counts)
    shard: str                    # kept cells: X log-normalised, layers['counts'] raw
    obs: pd.DataFrame             # the sample's input cells: design (and truth) columns + QC metrics


def seurat_v3_variances(adata: ad.AnnData, layer: str = "counts") -> pd.Series:
    """Seurat-v3 normalised (loess-regularised, clipped) variance of each gene in one batch, as computed by
    scanpy's ``highly_variable_genes(flavor="seurat_v3")`` for each batch."""
    df = seurat_v3_hvg(adata, layer=layer, n_top_genes=min(2000, adata.n_vars - 1), batch_key=None, inplace=False,
                       check_values=False)
    return pd.Series(df["variances_norm"].to_numpy(), index=adata.var_names, name="variances_norm")


def qc_one_sample(src: dict, shard_dir: str, seed: int = 0, nmads: float = 3.0,
                  doublet_rate: float = 0.06) -> SampleQC:
    """Read one sample, run :func:`helpers.preprocessing.qc.qc_filter` on it (same thresholds, Scrublet with the same seed),
    normalise the kept cells, compute their Seurat-v3 variances and write them to ``shard_dir/<sample>.h5ad``."""
    a = read_source(src)
    kept, table, thr = qc_filter(a, seed=seed, nmads=nmads, doublet_rate=doublet_rate, n_jobs=1)
    normalize_log(kept)
    var_norm = seurat_v3_variances(kept)
    shard = Path(shard_dir) / f"{src['sample_id']}.h5ad"
    write_h5ad(kept, shard)
    return SampleQC(str(src["sample_id"]), table, thr, var_norm, str(shard), a.obs.copy())  # (qc_filter added the metrics)


@dataclass
class CohortQC:
    samples: list[SampleQC] = field(default_factory=list)

    @property
    def table(self) -> pd.DataFrame:
        return pd.concat([s.table for s in self.samples])

    @property
    def thresholds(self) -> pd.DataFrame:
        return pd.concat([s.thresholds for s in self.samples])

    @property
    def shards(self) -> list[str]:
        return [s.shard for s in self.samples]

    @property
    def variances_norm(self) -> pd.DataFrame:
        return pd.DataFrame({s.sample_id: s.variances_norm for s in self.samples}).T

    @property
    def obs(self) -> pd.DataFrame:
        return pd.concat([s.obs for s in self.samples])


def qc_by_sample(sources: list[dict], shard_dir: str | Path, client: Any = None, seed: int = 0,
                 nmads: float = 3.0, doublet_rate: float = 0.06) -> CohortQC:
    """:func:`qc_one_sample` over every sample as Dask tasks."""
    Path(shard_dir).mkdir(parents=True, exist_ok=True)
    out = map_samples(qc_one_sample, sources, client, desc="QC per sample", shard_dir=str(shard_dir), seed=seed,
                      nmads=nmads, doublet_rate=doublet_rate)
    return CohortQC(list(out))


# -------------------------------------------------------------------------------------------------- HVGs


def combine_hvg(variances_norm: pd.DataFrame, n_top: int = 2000) -> pd.DataFrame:
    """Seurat-v3 batch-aware HVG selection from per-sample normalised variances (samples x genes), the rule of
    scanpy's ``highly_variable_genes(flavor="seurat_v3", batch_key=...)``: rank genes within each sample,
    order by median rank among the samples where the gene is in the top ``n_top``, then by the number of such
    samples. Returns var columns (highly_variable, highly_variable_rank, highly_variable_nbatches,
    variances_norm) indexed by gene."""
    V = variances_norm.to_numpy(dtype=np.float64)
    n_top = min(n_top, V.shape[1] - 1)
    ranked = np.argsort(np.argsort(-V, axis=1), axis=1).astype(np.float32)
    nbatches = np.sum((ranked < n_top).astype(int), axis=0)
    ranked[ranked >= n_top] = np.nan
    median_ranked = np.ma.median(np.ma.masked_invalid(ranked), axis=0).filled(np.nan)
    df = pd.DataFrame({"highly_variable_rank": median_ranked, "highly_variable_nbatches": nbatches,
                       "variances_norm": V.mean(0)}, index=variances_norm.columns)
    order = df.sort_values(["highly_variable_rank", "highly_variable_nbatches"], ascending=[True, False],
                           na_position="last").index
    df["highly_variable"] = False
    df.loc[order[:n_top], "highly_variable"] = True
    return df


# --------------------------------------------------------------------------------------------------- PCA


def _hvg_matrix(shard: str, genes: Sequence[str]) -> tuple[sp.csr_matrix, pd.Index]:
    a = ad.read_h5ad(shard)
    idx = a.var_names.get_indexer(list(genes))
    if (idx < 0).any():
        raise InputError(f"{shard}: genes missing from this shard: {list(pd.Index(genes)[idx < 0][:5])}")
    return sp.csr_matrix(a.X[:, idx], dtype=np.float64), a.obs_names


def hvg_moments(shard: str, genes: Sequence[str]) -> tuple[int, np.ndarray, np.ndarray]:
    """(n cells, column sums, X'X) of one shard's log-normalised HVG matrix."""
    X, _ = _hvg_matrix(shard, genes)
    return X.shape[0], np.asarray(X.sum(0)).ravel(), (X.T @ X).toarray()


def add_moments(a: tuple, b: tuple) -> tuple:
    """The moments (:func:`hvg_moments`) of two sets of cells together."""
    return tuple(x + y for x, y in zip(a, b))


def pca_from_moments(n: int, colsum: np.ndarray, xtx: np.ndarray, n_comps: int = 50) -> dict[str, np.ndarray]:
    """Exact PCA of the centred matrix from its moments: mean, components (eigenvectors of the covariance,
    largest first, each signed so its largest loading is positive), variance and variance ratio."""
    mean = colsum / n
    cov = (xtx - n * np.outer(mean, mean)) / (n - 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:n_comps]
    comps = vecs[:, order].T
    comps *= np.sign(comps[np.arange(len(comps)), np.argmax(np.abs(comps), axis=1)])[:, None]
    return {"mean": mean, "components": comps, "variance": vals[order],
            "variance_ratio": vals[order] / np.trace(cov)}


def project_shard(shard: str, genes: Sequence[str], mean: np.ndarray, components: np.ndarray) -> pd.DataFrame:
    """Cells x components scores of one shard: (X - mean) @ components.T, without densifying X."""
    X, names = _hvg_matrix(shard, genes)
    scores = np.asarray(X @ components.T) - mean @ components.T
    return pd.DataFrame(scores.astype(np.float32), index=names)


def pca_by_sample(shards: list[str], genes: Sequence[str], client: Any = None,
                  n_comps: int = 50) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Exact PCA over all shards in two Dask passes (moments, then projection); returns cells x PCs and the fit."""
    genes = list(genes)
    n, colsum, xtx = reduce_samples(hvg_moments, shards, add_moments, client, desc="PCA moments", genes=genes)
    fit = pca_from_moments(n, colsum, xtx, n_comps=min(n_comps, n - 1, len(genes) - 1))
    parts = map_samples(project_shard, shards, client, desc="PCA projection", genes=genes, mean=fit["mean"],
                        components=fit["components"])
    return pd.concat(parts), fit


# ------------------------------------------------------------------------------------- the embedding


def embedding_anndata(qc: CohortQC, scores: pd.DataFrame) -> ad.AnnData:
    """The global object of the per-sample path: obs of the kept cells (design, QC metrics) and the PCA
    embedding, with no expression matrix (cells x 0 genes)."""
    obs = qc.obs[qc.table["keep"].reindex(qc.obs.index).to_numpy()]  # the shards' cells, in shard order
    a = ad.AnnData(obs=obs.copy())
    a.strings_to_categoricals()  # as writing the shards did
    a.obsm["X_pca"] = scores.loc[obs.index].to_numpy(np.float32)
    return a


# ----------------------------------------------------------------- annotation, CNV and cell groups from the shards
# Notebook 02 with the Dask engine: what annotation measures in single cells runs per shard; the decisions that need
# every cell (smoothing over the graph, majority votes, thresholds) run on the driver on those small tables.


def shard_of(sample_id: str, shard_dir: str | Path) -> Path:
    """The shard file of one sample (written by :func:`qc_one_sample`)."""
    return Path(shard_dir) / f"{sample_id}.h5ad"


def split_by_sample(shards: list[str], table: pd.DataFrame | pd.Series, sample: pd.Series) -> list[dict]:
    """One task item per shard: the shard and the rows of ``table`` (indexed by cell) of that shard's sample
    (``sample``: cell -> sample id); a task then receives only its own rows."""
    sid = sample.reindex(table.index).astype(str)
    parts = {k: v for k, v in table.groupby(sid.to_numpy(), sort=False)}
    return [{"shard": sh, "rows": parts.get(Path(sh).stem, table.iloc[:0])} for sh in shards]


def _detected_shard(item: dict) -> dict[str, np.ndarray]:
    a = ad.read_h5ad(item["shard"])
    if item["rows"] is None:
        return {"all": detected_genes(a)}
    group = item["rows"].iloc[:, 0].reindex(a.obs_names)
    return {str(g): detected_genes(a[(group == g).to_numpy()]) for g in group.dropna().unique()}


def detected_by_sample(shards: list[str], groups: pd.Series | None, sample: pd.Series | None,
                       client: Any = None) -> dict[str, np.ndarray]:
    """Genes detected (at least one count) in the cohort, per group of cells (``groups``: cell -> group, e.g. the
    compartment) or over all cells (``{"all": mask}`` when None): the OR of each shard's masks, one task per shard."""
    items = ([{"shard": sh, "rows": None} for sh in shards] if groups is None
             else split_by_sample(shards, groups.to_frame("group"), sample))
    out: dict[str, np.ndarray] = {}
    for part in map_samples(_detected_shard, items, client, desc="detected genes per sample"):
        for g, m in part.items():
            out[g] = out[g] | m if g in out else m
    return out


def _compartment_evidence_shard(shard: str, markers: dict | None, genes: np.ndarray) -> pd.DataFrame:
    return compartment_evidence(ad.read_h5ad(shard), markers, genes=genes)


def _subset_evidence_shard(item: dict, markers: dict | None, universes: dict[str, np.ndarray]) -> pd.DataFrame:
    a = _cells_of_shard(item)
    return subset_evidence(a, a.obs["compartment"], markers, universes=universes)


def annotate(adata: ad.AnnData, graph: sp.spmatrix, processed_dir: str | Path | None = None, client: Any = None,
             markers: dict | None = None, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Notebook 02's annotation (:func:`helpers.annotation.cell_types.annotate_from_evidence`) of every cell, in
    memory or from the shards: (calls, compartment evidence). From the shards, four passes of one task per sample
    give the in-memory result exactly: the genes detected in the cohort, the compartment evidence over them, then
    (compartments decided on the driver) the genes detected in each compartment and the subset evidence over those;
    smoothing, majority votes and the ICAM1 mixture run on the driver."""
    markers = markers or load_markers()
    clusters = over_cluster(graph, seed=seed).set_axis(adata.obs_names)
    if not is_sharded(adata):
        evidence = compartment_evidence(adata, markers)
        calls = annotate_from_evidence(evidence, lambda comp: subset_evidence(adata, comp, markers), graph,
                                       clusters, markers)
        return calls, evidence
    shards, sample = shard_paths(adata, processed_dir), adata.obs["sample_id"].astype(str)
    genes = detected_by_sample(shards, None, None, client)["all"]
    evidence = pd.concat(map_samples(_compartment_evidence_shard, shards, client, desc="compartment evidence",
                                     markers=markers, genes=genes)).loc[adata.obs_names]

    def subsets_of(compartment: pd.Series) -> pd.DataFrame:
        universes = detected_by_sample(shards, compartment, sample, client)
        parts = map_samples(_subset_evidence_shard, split_by_sample(shards, compartment.to_frame("compartment"), sample),
                            client, desc="subset evidence", markers=markers, universes=universes)
        return pd.concat(parts).reindex(adata.obs_names)

    return annotate_from_evidence(evidence, subsets_of, graph, clusters, markers), evidence


def _cells_of_shard(item: dict) -> ad.AnnData:
    a = ad.read_h5ad(item["shard"])
    rows, genes = item["rows"], item.get("genes")
    keep = a.obs_names.isin(rows.index)
    a = a[keep, [g for g in genes if g in a.var_names]].copy() if genes is not None else a[keep].copy()
    for c in (rows.columns if isinstance(rows, pd.DataFrame) else []):
        a.obs[c] = rows[c].reindex(a.obs_names).to_numpy()
    return a


def read_cells(shards: list[str], cells: pd.DataFrame, sample: pd.Series, client: Any = None,
               genes: Sequence[str] | None = None) -> ad.AnnData:
    """The cells indexed by ``cells`` (cell names; its columns are added to obs) from the shards, in shard order,
    every gene or only ``genes`` (those present, in that order; each task returns only them), log-normalised X and
    ``layers['counts']``. For few cells (a CNV reference, a figure's subsample), not for a cohort."""
    items = split_by_sample(shards, cells, sample)
    if genes is not None:
        items = [{**item, "genes": list(genes)} for item in items]
    parts = map_samples(_cells_of_shard, items, client, desc="read cells")
    return ad.concat([p for p in parts if p.n_obs], join="inner", merge="same")


def _cnv_shard(item: dict, reference_mean: np.ndarray, window_size: int) -> tuple | None:
    q = _cells_of_shard(item)
    if q.n_obs == 0:
        return None
    q.obs["cnv_group"] = "query"
    prof = cnv_profiles(q, window_size, reference_mean=reference_mean)
    return prof.obsm["X_cnv"], prof.obs


def infer_cnv_by_sample(shards: list[str], query: pd.DataFrame, reference: pd.DataFrame, sample: pd.Series,
                        client: Any = None, window_size: int = 100,
                        dynamic_threshold: float | None = None) -> ad.AnnData:
    """:func:`helpers.annotation.malignant.infer_cnv` sample by sample: the ``reference`` cells (indexed by cell,
    e.g. :func:`~helpers.annotation.malignant.cnv_reference_cells` of the cohort) are read and profiled once, every
    shard's ``query`` cells are profiled against the reference's mean in a Dask task (a profile depends only on its
    cell and that mean), and the noise threshold, when given, is applied over all profiles at the end (as the
    in-memory path does). Same result, obs order (query cells in shard order, then the reference) and layout."""
    ref = read_cells(shards, reference, sample, client)
    ref.obs["cnv_group"] = "reference"
    ref_prof = cnv_profiles(ref, window_size)
    parts = [r for r in map_samples(_cnv_shard, split_by_sample(shards, query, sample), client, desc="CNV per sample",
                                    reference_mean=cnv_reference_mean(ref), window_size=window_size)
             if r is not None]
    X = sp.vstack([r[0] for r in parts] + [ref_prof.obsm["X_cnv"]], format="csr")
    out = ad.AnnData(obs=pd.concat([r[1] for r in parts] + [ref_prof.obs]), var=ref_prof.var)
    out.obsm["X_cnv"] = noise_thresholded(X, dynamic_threshold) if dynamic_threshold is not None else X
    out.uns["cnv"] = ref_prof.uns["cnv"]
    return out


def _groups_shard(item: dict, keys: list[str] | None) -> ad.AnnData:
    return group_pseudobulk(_cells_of_shard(item), keys)


def group_pseudobulk_by_sample(shards: list[str], labels: pd.DataFrame, sample: pd.Series, client: Any = None,
                               keys: list[str] | None = None) -> ad.AnnData:
    """:func:`helpers.analysis.pseudobulk.group_pseudobulk` of the labelled cells (``labels``: cell -> the label
    columns, e.g. compartment and cell type) of every shard, one Dask task per sample, concatenated: the cell-group
    table the finding notebooks read with the Dask engine (equal to the in-memory table of the same cells)."""
    parts = map_samples(_groups_shard, split_by_sample(shards, labels, sample), client,
                        desc="cell-group pseudobulk per sample", keys=keys)
    out = ad.concat([p for p in parts if p.n_obs], join="inner", merge="same")
    out.uns[CELL_GROUPS] = {"keys": list(keys or GROUP_KEYS)}
    return out


# ------------------------------------------------------------------- one entry point for either engine


def write_sharded(embedding: ad.AnnData, shards: list[str], out: str | Path) -> Path:
    """The cohort file of the per-sample path (integrated.h5ad / annotated.h5ad): the cells' obs, embedding, graph
    and uns with no expression matrix (cells x 0 genes), and ``uns['shards']`` naming each sample's shard (counts
    and log-normalised values) relative to the file's folder. Its size grows with cells x embedding, not genes."""
    out = Path(out)
    a = ad.AnnData(obs=embedding.obs.copy(), obsm=dict(embedding.obsm), obsp=dict(embedding.obsp),
                   uns={**dict(embedding.uns), SHARDS: shard_map(shards, out)})
    return write_h5ad(a, out)


def shard_cohort(adata: ad.AnnData, shard_dir: str | Path, out: str | Path) -> Path:
    """An in-memory cohort file (e.g. integrated.h5ad of the in-memory path) as shards: one file per sample
    (log-normalised X and ``layers['counts']``) in ``shard_dir`` and the cells x 0 genes file at ``out``
    (:func:`write_sharded`), so that notebooks 02-08 can run sample by sample from it."""
    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    sid = adata.obs["sample_id"].astype(str).to_numpy()
    shards = []
    for s in dict.fromkeys(sid):
        m = sid == s
        if not (np.diff(np.flatnonzero(m)) == 1).all():
            raise InputError(f"cells of sample {s} are not contiguous in the cohort file: sort by sample first")
        part = adata[m]
        shard = ad.AnnData(X=part.X, obs=part.obs.copy(), var=adata.var.copy(), layers={"counts": part.layers["counts"]})
        shards.append(str(write_h5ad(shard, shard_of(s, shard_dir))))
    return write_sharded(adata, shards, out)


def is_sharded(adata: ad.AnnData) -> bool:
    """Whether ``adata`` is a per-sample cohort file (:func:`write_sharded`): its cells' values are in shards."""
    return SHARDS in adata.uns


def shard_paths(adata: ad.AnnData, processed_dir: str | Path | None = None) -> list[str]:
    """The shard files of a per-sample cohort file, in the file's cell order (missing ones named in the error);
    relative to ``processed_dir`` (default: ``uns['shard_root']``, set by :func:`read_cell_table`)."""
    processed_dir = processed_dir or adata.uns["shard_root"]
    paths = [str((Path(processed_dir) / rel).resolve()) for rel in adata.uns[SHARDS].values()]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise InputError(f"{len(missing)} shard file(s) of {processed_dir} are missing (e.g. {missing[0]}): re-run "
                         "notebook 01 with the dask engine")
    return paths


def open_client(adata: ad.AnnData, address: str | None = None) -> Any:
    """For a notebook: a Dask client (:func:`start_client`) when ``adata`` is a per-sample cohort file, else None
    (in memory). Close it with :func:`close_client`."""
    return start_client(address or None) if is_sharded(adata) else None


def read_cell_table(path: str | Path) -> ad.AnnData:
    """The obs (and ``uns['shards']``) of a per-sample cohort file without its embedding and graph: the cells'
    labels and design, cells x 0 genes, with ``uns['shard_root']`` set to the file's folder."""
    with h5py.File(path, "r") as f:
        obs = ad.io.read_elem(f["obs"])
        shards = ad.io.read_elem(f["uns"][SHARDS]) if "uns" in f and SHARDS in f["uns"] else None
    if shards is None:
        raise InputError(f"{path} is not a per-sample cohort file (no uns['{SHARDS}']): read it with anndata")
    return ad.AnnData(obs=obs, uns={SHARDS: dict(shards), "shard_root": str(Path(path).parent)})


def is_sharded_file(path: str | Path) -> bool:
    """Whether the .h5ad at ``path`` is a per-sample cohort file (:func:`write_sharded`,
    :func:`helpers.io.index_h5ad_rows`)."""
    return indexed_files(path) is not None


def cell_table(adata: ad.AnnData) -> ad.AnnData:
    """The cells behind ``adata``: ``adata`` itself when it holds cells; for cell groups loaded by
    :func:`helpers.analysis.findings.load_annotated`, the annotated cells of the same samples and cell types
    (obs only, values in the shards: :func:`read_cell_table`)."""
    if not is_cell_groups(adata):
        return adata
    info = adata.uns[CELL_GROUPS]
    table = read_cell_table(info["annotated"])
    keep = table.obs["sample_id"].astype(str).isin(set(adata.obs["sample_id"].astype(str)))
    keep &= table.obs["cell_type"].astype(str).isin(set(adata.obs["cell_type"].astype(str)))
    return table[keep.to_numpy()].copy()


def _shard_items(cells: ad.AnnData, columns: list[str] | None) -> list[dict]:
    """One item per sample of the sharded ``cells`` (sorted by sample id): its shard and its cells' ``columns``."""
    positions = positions_by_sample(cells.obs["sample_id"])
    paths = dict(zip(cells.uns[SHARDS], shard_paths(cells)))
    cols = list(columns or [])
    return [{"sample_id": s, "shard": paths[s], "rows": cells.obs.iloc[positions[s]][cols]} for s in sorted(positions)]


def cells_by_sample(adata: ad.AnnData, columns: list[str] | None = None) -> Iterator[tuple[str, ad.AnnData]]:
    """(sample id, that sample's cells with every gene) for each sample behind ``adata`` (cells, or cell groups
    whose cells are read one shard at a time with ``columns`` of their annotation added to obs)."""
    cells = cell_table(adata)
    if not is_sharded(cells):
        positions = positions_by_sample(cells.obs["sample_id"])
        for s in sorted(positions):
            yield s, cells[positions[s]]
        return
    for item in _shard_items(cells, columns):
        yield item["sample_id"], _cells_of_shard(item)


def _apply_to_shard(item: dict, apply: Callable, **kwargs) -> Any:
    return apply(item["sample_id"], _cells_of_shard(item), **kwargs)


def map_cells_by_sample(func: Callable, adata: ad.AnnData, columns: list[str] | None = None, client: Any = None,
                        desc: str = "samples", **kwargs) -> list:
    """``func(sample_id, cells, **kwargs)`` for each sample behind ``adata`` (as :func:`cells_by_sample` gives them:
    sorted by sample id, ``columns`` of the annotation in obs), returned in that order. With a ``client`` and cells
    kept in shards, one Dask task per sample reads its own shard on a worker (the same results, the driver holds
    none of the cells); otherwise in this process, one sample at a time."""
    cells = cell_table(adata)
    if client is None or not is_sharded(cells):
        return [func(s, c, **kwargs) for s, c in tqdm(cells_by_sample(cells, columns), desc=desc,
                                                      total=cells.obs["sample_id"].nunique())]
    return map_samples(_apply_to_shard, _shard_items(cells, columns), client, desc=desc, apply=func, **kwargs)


def client_for_cells(adata: ad.AnnData, address: str | None = None) -> Any:
    """For a finding notebook: a Dask client (:func:`start_client`) when the cells behind ``adata`` (cells, or cell
    groups from :func:`helpers.analysis.findings.load_annotated`) are kept in shards, else None (in memory). Close it
    with :func:`close_client`."""
    if is_cell_groups(adata):
        return start_client(address or None) if is_sharded_file(adata.uns[CELL_GROUPS]["annotated"]) else None
    return open_client(adata, address)


def infer_cnv_cells(adata: ad.AnnData, query: np.ndarray, reference: np.ndarray, processed_dir: str | Path | None,
                    client: Any = None, seed: int = 0, n_ref_max: int = 3000, window_size: int = 100,
                    dynamic_threshold: float | None = None) -> ad.AnnData:
    """:func:`helpers.annotation.malignant.infer_cnv` of the ``query`` cells against a seeded subsample of the
    ``reference`` cells (masks over ``adata``'s cells), in memory or shard by shard (:func:`infer_cnv_by_sample`,
    the same result)."""
    if not is_sharded(adata):
        return infer_cnv(adata, query, reference, seed=seed, n_ref_max=n_ref_max, window_size=window_size,
                         dynamic_threshold=dynamic_threshold)
    obs = adata.obs
    ref_idx = cnv_reference_cells(reference, query, seed, n_ref_max)
    return infer_cnv_by_sample(shard_paths(adata, processed_dir), obs.iloc[np.where(query)[0]][[]],
                               obs.iloc[ref_idx][[]], obs["sample_id"].astype(str), client, window_size,
                               dynamic_threshold)


def expression_subsample(adata: ad.AnnData, genes: list[str], processed_dir: str | Path, client: Any = None,
                         max_cells: int = 50_000, seed: int = 0) -> ad.AnnData:
    """Log-normalised values of ``genes`` (those present) with obs, for a figure (a marker dot plot): every cell in
    memory; from the shards, a seeded subsample of at most ``max_cells`` cells (in cell order)."""
    if not is_sharded(adata):
        return adata[:, [g for g in genes if g in adata.var_names]].copy()
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(adata.n_obs, min(max_cells, adata.n_obs), replace=False))
    obs = adata.obs.iloc[idx]
    cells = read_cells(shard_paths(adata, processed_dir), obs[[]], obs["sample_id"].astype(str), client, genes=genes)
    out = cells[obs.index].copy()
    out.obs = obs.copy()
    return out


def cell_groups(adata: ad.AnnData, processed_dir: str | Path, client: Any = None,
                labels: tuple[str, ...] = ("compartment", "cell_type"), keys: list[str] | None = None) -> ad.AnnData:
    """The cell-group pseudobulk (:func:`helpers.analysis.pseudobulk.group_pseudobulk`) of the annotated cells: in
    memory, or shard by shard (:func:`group_pseudobulk_by_sample`) with the ``labels`` columns of ``adata.obs``."""
    if not is_sharded(adata):
        return group_pseudobulk(adata, keys)
    return group_pseudobulk_by_sample(shard_paths(adata, processed_dir), adata.obs[list(labels)],
                                      adata.obs["sample_id"].astype(str), client, keys)


# ------------------------------------------------------------------------------------------- the whole step


@dataclass
class Preprocessed:
    """Notebook 01's per-sample part, done sample by sample (see :func:`preprocess_by_sample`)."""

    embedding: ad.AnnData         # kept cells: obs (design, QC metrics) + obsm['X_pca'], no genes
    table: pd.DataFrame           # per-cell QC table of every input cell
    thresholds: pd.DataFrame      # per-sample thresholds
    var: pd.DataFrame             # per-gene: the shards' var + HVG columns
    hvg: pd.Index
    shards: list[str]
    obs_in: pd.DataFrame          # obs of every input cell


def preprocess_by_sample(cohort: Cohort, shard_dir: str | Path, client: Any = None, seed: int = 0,
                         nmads: float = 3.0, n_hvg: int = 2000, n_pcs: int = 50,
                         doublet_rate: float = 0.06) -> Preprocessed:
    """QC + doublets + normalisation (per sample, in Dask tasks), batch-aware HVGs (combined on the driver) and
    the exact PCA (two Dask passes): what notebook 01 does in memory before Harmony, with bounded memory."""
    qc = qc_by_sample(sample_sources(cohort), shard_dir, client, seed=seed, nmads=nmads, doublet_rate=doublet_rate)
    table = qc.table
    hv = combine_hvg(qc.variances_norm, n_hvg)
    hvg = hv.index[hv["highly_variable"].to_numpy()]
    scores, fit = pca_by_sample(qc.shards, hvg, client, n_comps=n_pcs)
    emb = embedding_anndata(qc, scores)
    emb.uns["pca"] = {"variance": fit["variance"], "variance_ratio": fit["variance_ratio"],
                      "params": {"method": "exact eigendecomposition of summed moments (helpers.preprocessing.per_sample)"}}
    var = ad.read_h5ad(qc.shards[0], backed="r").var.join(hv)
    return Preprocessed(emb, table, qc.thresholds, var, hvg, qc.shards, qc.obs)
