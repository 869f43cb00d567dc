"""The peer of benchmarks/peer.py: the plain scanpy workflow a user would otherwise write, with scanpy's tutorial
defaults (scanpy "Preprocessing and clustering" tutorial, scanpy 1.11), on a cohort's cells.h5ad, every stage
timed. Seeds fixed (random_state=0); threads from DR_THREADS (the caller pins OMP_NUM_THREADS etc. to it).

    .venv/bin/python benchmarks/peer_workflow.py data/processed/<cohort>/cells.h5ad out.json

Stages: read; QC metrics (mito genes 'MT-') and filters (cells with >= 200 genes and < 20% mito counts, genes in
>= 3 cells); Scrublet per sample (``sc.pp.scrublet(batch_key='sample_id')``, predicted doublets removed);
normalize_total + log1p; 2,000 HVGs with the sample as batch; PCA (50 components); neighbours; Leiden (igraph,
2 iterations); UMAP; Wilcoxon markers per Leiden cluster (all genes); each cluster labelled by the marker set of
MARKERS with the highest mean ``sc.tl.score_genes`` score in it; pseudobulk (raw counts summed per patient x cell
type, pseudobulks of >= MIN_CELLS cells) and pydeseq2 per cell type with >= 2 patients in each response group
(design ~response, NR vs CR, CR the reference). Writes {"stages": {stage: seconds}, ...counts} as JSON.
"""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from pydeseq2.dds import DeseqDataSet
from pydeseq2.default_inference import DefaultInference
from pydeseq2.ds import DeseqStats

SEED = 0
MIN_CELLS = 10  # cells a pseudobulk sample needs
# a small compartment-level marker dict, as a user would write it from the usual marrow/PBMC markers
MARKERS = {
    "T": ["CD3D", "CD3E", "TRAC", "IL7R"],
    "NK": ["NKG7", "GNLY", "KLRF1", "NCR1"],
    "B": ["MS4A1", "CD79A", "CD19", "PAX5"],
    "plasma": ["MZB1", "JCHAIN", "SDC1", "TNFRSF17", "XBP1"],
    "monocyte": ["CD14", "LYZ", "FCN1", "S100A8", "S100A9", "FCGR3A", "MS4A7"],
    "neutrophil_precursor": ["MPO", "ELANE", "AZU1", "CSF3R"],
    "erythroid": ["HBB", "HBA1", "AHSP", "CA1"],
    "progenitor": ["CD34", "SPINK2", "PROM1"],
    "dendritic": ["FCER1A", "CD1C", "LILRA4", "CLEC4C"],
    "stromal": ["CXCL12", "COL1A1", "LEPR"],
}


class StageTimer:
    """Wall seconds of each named stage, in the order run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t, 2)
        print(f"[peer] {name}: {self.seconds[name]:.1f} s", file=sys.stderr, flush=True)


def read_counts(path: Path) -> ad.AnnData:
    """The cohort's cells with raw counts in .X (from layers['counts'] when present) as float32, the counts also
    kept in layers['counts'] as the tutorial does."""
    adata = ad.read_h5ad(path)
    if "counts" in adata.layers:
        adata.X = adata.layers["counts"]
    adata.X = adata.X.astype(np.float32)
    adata.layers["counts"] = adata.X.copy()
    return adata


def qc_filter(adata: ad.AnnData) -> ad.AnnData:
    """Tutorial QC: metrics with mito genes, cells with >= 200 genes and < 20% mito counts, genes in >= 3 cells."""
    adata.var["mt"] = adata.var_names.str.startswith("MT-")
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], inplace=True, log1p=True)
    sc.pp.filter_cells(adata, min_genes=200)
    sc.pp.filter_genes(adata, min_cells=3)
    return adata[adata.obs["pct_counts_mt"] < 20].copy()


def label_clusters(adata: ad.AnnData, cluster_key: str = "leiden") -> pd.Series:
    """Each cluster's label: the marker set with the highest mean score (``sc.tl.score_genes``) in the cluster."""
    names = []
    for name, genes in MARKERS.items():
        genes = [g for g in genes if g in adata.var_names]
        if genes:
            sc.tl.score_genes(adata, genes, score_name=f"score_{name}", random_state=SEED)
            names.append(name)
    means = adata.obs.groupby(cluster_key, observed=True)[[f"score_{n}" for n in names]].mean()
    best = means.idxmax(axis=1).str.removeprefix("score_")
    return adata.obs[cluster_key].map(best).astype("category")


def pseudobulk(adata: ad.AnnData, cell_type_key: str = "cell_type") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw counts summed per patient x cell type (pseudobulks of >= MIN_CELLS cells): (counts, metadata)."""
    keys = adata.obs["patient_id"].astype(str) + "|" + adata.obs[cell_type_key].astype(str)
    codes, uniques = pd.factorize(keys)
    onehot = sp.csr_matrix((np.ones(len(codes), dtype=np.float32), (codes, np.arange(len(codes)))),
                           shape=(len(uniques), len(codes)))
    summed = np.asarray((onehot @ adata.layers["counts"]).todense()).round().astype(np.int64)
    n_cells = np.bincount(codes)
    meta = pd.DataFrame([u.split("|") for u in uniques], columns=["patient_id", "cell_type"], index=uniques)
    meta["n_cells"] = n_cells
    response = adata.obs.groupby("patient_id", observed=True)["response"].first().astype(str)
    meta["response"] = meta["patient_id"].map(response).to_numpy()
    counts = pd.DataFrame(summed, index=uniques, columns=adata.var_names)
    keep = meta["n_cells"].to_numpy() >= MIN_CELLS
    return counts[keep], meta[keep]


def deseq_per_cell_type(counts: pd.DataFrame, meta: pd.DataFrame, threads: int) -> dict[str, int]:
    """pydeseq2 NR vs CR (CR the reference) per cell type with >= 2 patients per group, on genes with >= 10
    counts in that cell type: the number of genes with padj < 0.05 per cell type tested."""
    inference = DefaultInference(n_cpus=threads)
    hits = {}
    for ct, m in meta.groupby("cell_type"):
        per_group = m["response"].value_counts()
        if per_group.get("CR", 0) < 2 or per_group.get("NR", 0) < 2:
            continue
        c = counts.loc[m.index]
        c = c.loc[:, c.sum(axis=0) >= 10]
        dds = DeseqDataSet(counts=c, metadata=m[["response"]], design="~response", refit_cooks=True,
                           inference=inference, quiet=True)
        dds.deseq2()
        stats = DeseqStats(dds, contrast=["response", "NR", "CR"], inference=inference, quiet=True)
        stats.summary()
        hits[ct] = int((stats.results_df["padj"] < 0.05).sum())
    return hits


def main(h5ad: str, out: str) -> None:
    threads = int(os.environ.get("DR_THREADS", "2"))
    sc.settings.n_jobs = threads
    sc.settings.verbosity = 1
    t = StageTimer()
    with t("read"):
        adata = read_counts(Path(h5ad))
    n_in = adata.n_obs
    with t("qc_filter"):
        adata = qc_filter(adata)
    with t("scrublet"):
        sc.pp.scrublet(adata, batch_key="sample_id", random_state=SEED)
        adata = adata[~adata.obs["predicted_doublet"].to_numpy()].copy()
    with t("normalize_log1p"):
        sc.pp.normalize_total(adata)
        sc.pp.log1p(adata)
    with t("hvg"):
        sc.pp.highly_variable_genes(adata, n_top_genes=2000, batch_key="sample_id")
    with t("pca"):
        sc.tl.pca(adata, n_comps=50, random_state=SEED)
    with t("neighbors"):
        sc.pp.neighbors(adata, random_state=SEED)
    with t("leiden"):
        sc.tl.leiden(adata, flavor="igraph", n_iterations=2, random_state=SEED)
    with t("umap"):
        sc.tl.umap(adata, random_state=SEED)
    with t("rank_genes_groups"):
        sc.tl.rank_genes_groups(adata, groupby="leiden", method="wilcoxon")
    with t("label_clusters"):
        adata.obs["cell_type"] = label_clusters(adata)
    with t("pseudobulk"):
        counts, meta = pseudobulk(adata)
    with t("deseq2"):
        hits = deseq_per_cell_type(counts, meta, threads)
    Path(out).write_text(json.dumps({
        "stages": t.seconds, "n_cells_in": int(n_in), "n_cells_kept": int(adata.n_obs),
        "n_clusters": int(adata.obs["leiden"].nunique()),
        "cell_types": adata.obs["cell_type"].value_counts().to_dict(), "de_genes_padj_0.05": hits,
    }, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: peer_workflow.py CELLS_H5AD OUT_JSON")
    main(*sys.argv[1:3])
