"""Predict non-response for new patients with a saved NF-kB model.

    python -m helpers.analysis.predict --model results/<cohort>/nfkb_model.joblib --counts sample.h5ad --tissue PB

Counts: an .h5ad (raw counts in X or layers['counts']), a 10x .h5 or a 10x matrix folder; one sample per file,
or several with an obs column ``sample_id``. Prints, per sample, the probability of non-response and the genes
the model uses. Bad input (missing panel genes, non-count data, empty sample, unknown tissue) exits with 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anndata as ad
import joblib
import numpy as np
import pandas as pd

from helpers.data.ingest import IngestError, check_raw_counts, read_counts
from helpers.preprocessing.normalise import counts_matrix


class PredictionError(ValueError):
    pass


def load_bundle(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise PredictionError(f"model file {path} does not exist (run notebook 07 to make it)")
    b = joblib.load(path)
    for k in ("model", "genes_in", "tissue_stats"):
        if k not in b:
            raise PredictionError(f"{path} is not an NF-kB model bundle (no '{k}')")
    return b


def predict_samples(bundle: dict, adata: ad.AnnData, tissue: str, sample_key: str = "sample_id",
                    default_sample: str = "sample") -> pd.DataFrame:
    """Per-sample probability of non-response from raw counts, using the bundle's genes and tissue scaling."""
    if tissue not in bundle["tissue_stats"]:
        raise PredictionError(f"unknown tissue '{tissue}': the model knows {sorted(bundle['tissue_stats'])}")
    if adata.n_obs == 0:
        raise PredictionError("the sample has no cells")
    check_raw_counts(counts_matrix(adata), "counts")
    genes = bundle["genes_in"]
    missing = [g for g in genes if g not in adata.var_names]
    if missing:
        raise PredictionError(f"{len(missing)} panel gene(s) missing from the counts: {missing}")
    if bundle.get("cell_types"):
        if "cell_type" not in adata.obs:
            raise PredictionError(f"the model uses cell types {bundle['cell_types']}: obs needs a 'cell_type' column")
        adata = adata[adata.obs["cell_type"].astype(str).isin(bundle["cell_types"]).to_numpy()]
    X = counts_matrix(adata)
    samples = (adata.obs[sample_key].astype(str).to_numpy() if sample_key in adata.obs
               else np.full(adata.n_obs, default_sample))
    rows = []
    gi = adata.var_names.get_indexer(genes)
    for s in dict.fromkeys(samples):
        m = samples == s
        tot = float(X[m].sum())
        if tot == 0:
            raise PredictionError(f"sample {s}: no counts")
        v = np.asarray(X[m][:, gi].sum(0)).ravel()
        rows.append(pd.Series(np.log2(v / tot * 1e6 + 1), index=genes, name=s))
    L = pd.DataFrame(rows)
    st = bundle["tissue_stats"][tissue]
    Z = (L - st["mean"][genes]) / st["sd"][genes]
    p = bundle["model"].predict_proba(Z[genes])[:, 1]
    return pd.DataFrame({"sample": L.index, "p_nonresponse": p, "n_cells": [int((samples == s).sum()) for s in L.index],
                         "genes_used": ",".join(bundle.get("top_genes", genes))})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.analysis.predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--counts", required=True)
    ap.add_argument("--tissue", required=True)
    ap.add_argument("--sample-key", default="sample_id")
    args = ap.parse_args(argv)
    try:
        bundle = load_bundle(args.model)
        adata = read_counts(args.counts)
        out = predict_samples(bundle, adata, args.tissue, args.sample_key, default_sample=Path(args.counts).stem)
    except (PredictionError, IngestError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    print(f"model trained on cohort '{bundle.get('training_cohort')}'; tissue {args.tissue}")
    print(out.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
