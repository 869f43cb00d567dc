"""Building blocks the finding notebooks share: per-patient set scores in chosen cell types, a cell type x
gene-set grid of NR-vs-CR shifts, and the claim record written to findings JSON."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from .cohort import Cohort
from .pseudobulk import log_cpm, pseudobulk_by_patient, set_score
from .stats import bh_fdr, compare_two_groups


def patient_responses(pb_or_obs) -> pd.Series:
    obs = pb_or_obs.obs if hasattr(pb_or_obs, "obs") else pb_or_obs
    return obs.drop_duplicates("patient_id").set_index("patient_id")["response"].astype(str)


def patient_scores(adata: ad.AnnData, cell_types: list[str], genes: list[str], cohort: Cohort, min_cells: int = 10,
                   tissue: str | None = None) -> tuple[pd.Series, pd.Series]:
    """Per-patient set score in the pooled ``cell_types`` (pseudobulk, z-scored log CPM) and the responses."""
    pb = pseudobulk_by_patient(adata, cell_types, tissue=tissue, min_cells=min_cells)
    return set_score(log_cpm(pb), genes), patient_responses(pb)


def claim(values: pd.Series, groups: pd.Series, cohort: Cohort, method: str) -> dict:
    """The findings-JSON record of one comparison (test group minus reference group)."""
    return compare_two_groups(values, groups, cohort.reference_group, cohort.test_group, method)


def score_grid(adata: ad.AnnData, cell_types: list[str], sets: dict[str, list[str]], cohort: Cohort,
               min_cells: int = 10) -> pd.DataFrame:
    """NR-vs-CR shift of each gene-set score in each cell type (patient-level), with BH q over the grid."""
    rows = []
    for ct in cell_types:
        try:
            pb = pseudobulk_by_patient(adata, [ct], min_cells=min_cells)
        except ValueError:
            continue
        g = patient_responses(pb)
        if g.value_counts().min() < 2 or g.nunique() < 2:
            continue
        L = log_cpm(pb)
        for name, genes in sets.items():
            try:
                s = set_score(L, genes)
            except ValueError:
                continue
            rows.append({"cell_type": ct, "gene_set": name, **claim(s, g, cohort, "set score per patient")})
    df = pd.DataFrame(rows)
    df["q"] = bh_fdr(pd.to_numeric(df["p"], errors="coerce").to_numpy()) if len(df) else []
    return df
