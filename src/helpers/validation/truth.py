"""Comparisons with the simulator's planted truth (only for simulated cohorts; analysis code never calls this).

Notebooks call these in a clearly marked 'measured against truth' section, after the analysis is done."""

from __future__ import annotations

import numpy as np
import pandas as pd


def has_truth(obs: pd.DataFrame) -> bool:
    return any(c.startswith("truth_") for c in obs.columns)


def qc_against_truth(truth_quality: pd.Series, keep: pd.Series) -> dict[str, float]:
    """Share of planted junk (low-quality cells and doublets) removed and of good cells kept."""
    q = truth_quality.astype(str)
    keep = keep.reindex(q.index).astype(bool)
    junk = q != "good"
    out = {
        "junk_removed_fraction": float((~keep[junk]).mean()),
        "good_kept_fraction": float(keep[~junk].mean()),
        "low_quality_removed_fraction": float((~keep[q == "low_quality"]).mean()),
        "doublet_removed_fraction": float((~keep[q == "doublet"]).mean()),
        "n_junk": int(junk.sum()),
        "n_good": int((~junk).sum()),
    }
    return out


def annotation_against_truth(truth_type: pd.Series, truth_compartment: pd.Series, cell_type: pd.Series,
                             compartment: pd.Series) -> tuple[dict[str, float], pd.DataFrame, pd.DataFrame]:
    """Compartment accuracy, subset macro F1, per-type precision/recall/F1 and the confusion matrix."""
    from sklearn.metrics import precision_recall_fscore_support

    t, p = truth_type.astype(str), cell_type.reindex(truth_type.index).astype(str)
    labels = sorted(t.unique())
    prec, rec, f1, sup = precision_recall_fscore_support(t, p, labels=labels, zero_division=0)
    per_type = pd.DataFrame({"cell_type": labels, "precision": prec, "recall": rec, "f1": f1, "n_cells": sup})
    conf = pd.crosstab(t.rename("truth"), p.rename("called"))
    comp_acc = float((truth_compartment.astype(str) == compartment.reindex(truth_compartment.index).astype(str)).mean())
    summary = {"compartment_accuracy": comp_acc, "subset_macro_f1": float(np.mean(f1)),
               "subset_accuracy": float((t == p).mean()), "n_cells_evaluated": int(len(t))}
    return summary, per_type, conf
