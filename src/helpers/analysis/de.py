"""Pseudobulk differential expression (pydeseq2) and gene-set enrichment of the DE statistics (decoupler ULM)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd


def filter_genes(pb: ad.AnnData, min_count: int = 10, min_samples: int = 3) -> ad.AnnData:
    """Keep genes with at least ``min_count`` counts in at least ``min_samples`` pseudobulk samples."""
    X = np.asarray(pb.X)
    keep = (X >= min_count).sum(0) >= min(min_samples, pb.n_obs)
    return pb[:, keep].copy()


def deseq2(pb: ad.AnnData, reference: str, test: str, factor: str = "response", covariates: list[str] | None = None,
           n_cpus: int = 2, min_count: int = 10) -> pd.DataFrame:
    """pydeseq2 Wald test ``test`` vs ``reference`` on a patients x genes pseudobulk (raw counts).

    Covariates (sample-level columns of ``pb.obs``) enter the design before the factor; a covariate with a
    single level, or one that is fully confounded with the factor, is dropped with a note in ``attrs``."""
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.default_inference import DefaultInference
    from pydeseq2.ds import DeseqStats

    pb = filter_genes(pb, min_count=min_count)
    meta = pb.obs.copy()
    meta[factor] = meta[factor].astype(str)
    used, dropped = [], []
    for c in covariates or []:
        if c not in meta or meta[c].nunique() < 2 or pd.crosstab(meta[c], meta[factor]).gt(0).sum(1).eq(1).all():
            dropped.append(c)
            continue
        meta[c] = meta[c].astype(str)
        used.append(c)
    design = "~" + " + ".join(used + [factor])
    counts = pd.DataFrame(np.round(np.asarray(pb.X)).astype(int), index=pb.obs_names, columns=pb.var_names)
    inference = DefaultInference(n_cpus=n_cpus)
    dds = DeseqDataSet(counts=counts, metadata=meta, design=design, refit_cooks=True, inference=inference, quiet=True)
    dds.deseq2()
    ds = DeseqStats(dds, contrast=[factor, test, reference], inference=inference, quiet=True)
    ds.summary()
    res = ds.results_df.copy()
    res.index.name = "gene"
    res.attrs["design"] = design
    res.attrs["dropped_covariates"] = dropped
    return res


def enrichment_ulm(stat: pd.Series, sets: dict[str, list[str]], tmin: int = 5) -> pd.DataFrame:
    """decoupler ULM of a gene-level statistic (e.g. the DESeq2 Wald stat) on gene sets: per set the t-value of
    the slope of stat ~ membership, and its p-value (positive = set genes up in the test group)."""
    import decoupler as dc

    from helpers.data.genesets import as_network

    s = stat.dropna()
    df = pd.DataFrame([s.to_numpy()], index=["stat"], columns=s.index)
    es, pv = dc.mt.ulm(df, as_network(sets), tmin=tmin)
    out = pd.DataFrame({"score": es.loc["stat"], "p": pv.loc["stat"]})
    out.index.name = "set"
    return out.reset_index()
