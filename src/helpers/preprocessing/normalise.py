"""The one normalisation of the compendium: log1p of counts per 10k (scanpy's ``normalize_total`` + ``log1p``).

:func:`lognorm_matrix` computes it (sparse, all genes or some); :func:`lognorm` is a dense table of a few genes
(marker scores); :func:`normalize_log` puts it in an AnnData's X and keeps the raw counts in ``layers['counts']``.
Every reader accepts ``layer=None`` for data whose X is already log-normalised (e.g. a published object).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

TARGET_SUM = 1e4


def counts_matrix(adata: ad.AnnData, layer: str | None = "counts", dtype=None) -> sp.csr_matrix:
    """The raw counts in ``layer`` (X when the layer is absent, or when ``layer`` is None) as CSR, in ``dtype``
    (None: as stored)."""
    X = adata.X if layer is None or layer not in adata.layers else adata.layers[layer]
    return sp.csr_matrix(X, dtype=dtype)


def lognorm_matrix(adata: ad.AnnData, genes: list[str] | None = None, layer: str | None = "counts",
                   target_sum: float = TARGET_SUM, dtype=np.float32) -> sp.csr_matrix:
    """Sparse log1p(counts per ``target_sum``) of all genes (or ``genes``, in that order) from the raw counts in
    ``layer``, each cell scaled by its library over all genes; ``layer=None``: X is already log-normalised and
    is returned as it is."""
    X = counts_matrix(adata, layer, dtype)
    if layer is not None:
        total = np.asarray(X.sum(1), dtype=np.float64).ravel()
        X = sp.csr_matrix(sp.diags((target_sum / np.maximum(total, 1)).astype(dtype)) @ X)
    if genes is not None:
        X = sp.csr_matrix(X[:, adata.var_names.get_indexer(genes)])
    if layer is not None:
        X.data = np.log1p(X.data)
    return X


def lognorm(adata: ad.AnnData, genes: list[str], layer: str | None = "counts") -> pd.DataFrame:
    """Dense log1p(counts per 10k) of ``genes`` per cell (float64), as :func:`lognorm_matrix`; genes absent from
    the data are left out."""
    genes = [g for g in dict.fromkeys(genes) if g in adata.var_names]
    X = lognorm_matrix(adata, genes, layer, dtype=np.float64).toarray()
    return pd.DataFrame(X, index=adata.obs_names, columns=genes)


def normalize_log(adata: ad.AnnData, target_sum: float = TARGET_SUM) -> ad.AnnData:
    """In place: keep raw counts in ``layers['counts']``; X becomes log1p(counts per ``target_sum``) (float32)."""
    if "counts" not in adata.layers:
        adata.layers["counts"] = adata.X.copy()
    adata.X = lognorm_matrix(adata, layer="counts", target_sum=target_sum)
    return adata
