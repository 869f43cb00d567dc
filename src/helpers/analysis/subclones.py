"""CNV subclones within one patient's tumour cells, and the rule a planted clone structure is judged by.

**Detectability rule** (fixed before the caller was tested, issue 17): a patient's planted clones are detectable
when every clone holds at least ``MIN_CELLS`` (30) of the patient's analysed tumour cells and every two clones differ
by at least ``MIN_EVENTS`` (2) arm-level copy-number events. Agreement is scored on the patients that meet the rule;
the others are reported, not hidden.

**Caller** (:func:`call_subclones`), on arm-level CNV scores (:func:`arm_scores`: the mean infercnvpy score over the
windows of each chromosome arm, computed without infercnvpy's dynamic noise threshold, which zeroes most windows and
makes the arm scores skewed): divisive. A group of cells is split in two by a two-component Gaussian mixture (full
covariance) on its first ``n_pcs`` principal components; the split is kept when both parts hold at least
``min_cells`` cells and the cells' projection on the discriminant direction between the parts (Fisher's LDA) is
multimodal by Hartigan's dip test at p < ``alpha``. The dip test's p is calibrated against the uniform distribution,
the least favourable unimodal one, so it is conservative: a unimodal cloud split by the mixture is not called two
clones. The most significant split among the current groups is made first, until none passes or ``max_clones`` is
reached.

How it was chosen: on a development cohort simulated with its own design seed (30 patients, truth-labelled tumour
and reference cells; :mod:`helpers.validation.subclone_benchmark`), among k-means or mixture splits on 3, 5 or 10
PCs, projections on the centroid difference or the LDA direction, per-arm or per-PC dip tests and MAD-scaled or raw
arm scores; a Gaussian-calibrated dip was rejected because it split single-clone tumours. That comparison was made
with a prototype whose window-to-arm mapping was wrong (found afterwards); this code's agreement on the development
cohort is in ``validation/subclone_development.json`` (``python -m helpers.validation.subclone_benchmark``). The
default cohort's agreement is measured by notebook 08 and was not used to choose.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd

MIN_CELLS = 30
MIN_EVENTS = 2


def window_arms(var: pd.DataFrame, chr_pos: dict[str, int], n_windows: int, centromere_mb: pd.Series,
                window_size: int = 100, step: int = 10) -> np.ndarray:
    """Chromosome arm ('1p', '1q', ...) of each infercnvpy window. infercnvpy sorts each chromosome's genes by start
    and averages ``window_size`` genes every ``step`` genes; a window lies on the arm of its middle gene.
    ``var`` needs 'chromosome' and 'start' (bp); ``chr_pos`` is ``uns['cnv']['chr_pos']``; ``centromere_mb`` maps
    chromosome to the centromere's midpoint (Mb)."""
    starts = list(chr_pos.values()) + [n_windows]
    arms: list[str] = []
    for (chrom, first), last in zip(chr_pos.items(), starts[1:]):
        pos = np.sort(var.loc[var["chromosome"] == chrom, "start"].to_numpy(float))
        n_here = int(last - first)
        expected = len(range(0, len(pos) - window_size + 1, step)) if len(pos) > window_size else 1
        if n_here != expected:
            raise ValueError(f"{chrom}: {n_here} CNV windows but {len(pos)} genes make {expected} windows of "
                             f"{window_size} genes every {step}: window_size/step differ from the infercnvpy run")
        if chrom not in centromere_mb.index:
            raise KeyError(f"no centromere position for '{chrom}' (data/genesets/centromeres_grch38.tsv)")
        middle = np.minimum(np.arange(n_here) * step + window_size // 2, len(pos) - 1)
        cen = float(centromere_mb[chrom]) * 1e6
        arms += [f"{chrom.removeprefix('chr')}{'p' if p < cen else 'q'}" for p in pos[middle]]
    return np.asarray(arms)


def arm_scores(X_cnv: np.ndarray, arms: np.ndarray, min_windows: int = 5) -> pd.DataFrame:
    """Cells x arms: the mean CNV score over each arm's windows; arms with fewer than ``min_windows`` windows (too
    short to average the noise) are left out."""
    X = np.asarray(X_cnv, dtype=float)
    keep = [a for a in pd.unique(arms) if (arms == a).sum() >= min_windows]
    return pd.DataFrame({a: X[:, arms == a].mean(1) for a in keep})


def lda_dip_p(Z: np.ndarray, labels: np.ndarray) -> float:
    """Hartigan's dip-test p of the cells' projection on the discriminant direction between two groups."""
    import diptest

    a, b = Z[labels == 0], Z[labels == 1]
    within = np.cov(np.vstack([a - a.mean(0), b - b.mean(0)]).T) + 1e-12 * np.eye(Z.shape[1])
    w = np.linalg.solve(within, b.mean(0) - a.mean(0))
    return float(diptest.diptest(Z @ w)[1])


def best_split(Z: np.ndarray, min_cells: int = MIN_CELLS, n_pcs: int = 3, seed: int = 0
               ) -> tuple[float, np.ndarray] | None:
    """One group's candidate split (two-component mixture on the first PCs) and its dip p (:func:`lda_dip_p`);
    None when the group is too small or a part would hold fewer than ``min_cells`` cells."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    if len(Z) < 2 * min_cells:
        return None
    P = PCA(n_components=min(n_pcs, *Z.shape), random_state=seed).fit_transform(Z - Z.mean(0))
    labels = GaussianMixture(2, covariance_type="full", n_init=5, random_state=seed).fit(P).predict(P)
    if np.bincount(labels, minlength=2).min() < min_cells:
        return None
    return lda_dip_p(Z, labels), labels


def call_subclones(Z: np.ndarray | pd.DataFrame, max_clones: int = 4, min_cells: int = MIN_CELLS,
                   alpha: float = 0.01, n_pcs: int = 3, seed: int = 0) -> np.ndarray:
    """Clone label (0..k-1) of each of one patient's tumour cells from its arm-level CNV scores (see the module
    docstring); all zeros when no split passes."""
    Z = np.asarray(Z, dtype=float)
    groups = [np.arange(len(Z))]
    while len(groups) < max_clones:
        tried = [(i, best_split(Z[g], min_cells, n_pcs, seed)) for i, g in enumerate(groups)]
        passing = [(r[0], i, r[1]) for i, r in tried if r is not None and r[0] < alpha]
        if not passing:
            break
        _, i, labels = min(passing, key=lambda t: t[0])
        g = groups.pop(i)
        groups += [g[labels == 0], g[labels == 1]]
    out = np.zeros(len(Z), dtype=int)
    for k, g in enumerate(groups):
        out[g] = k
    return out


def meets_detectability_rule(clone_events: list[list[str]], cell_clones: np.ndarray,
                             min_cells: int = MIN_CELLS, min_events: int = MIN_EVENTS) -> bool:
    """Whether planted clones (their arm-level events) are detectable among the analysed cells (their planted clone
    index): every clone has ``min_cells`` cells and every two clones differ by ``min_events`` events."""
    counts = pd.Series(np.asarray(cell_clones)).value_counts()
    if any(counts.get(k, 0) < min_cells for k in range(len(clone_events))):
        return False
    return all(len(set(a) ^ set(b)) >= min_events for a, b in itertools.combinations(clone_events, 2))


def subclone_truth(truth: dict[str, Any], cell_clones: pd.DataFrame, patient: str = "patient_id",
                   clone: str = "truth_clone", min_cells: int = MIN_CELLS, min_events: int = MIN_EVENTS
                   ) -> pd.DataFrame:
    """Per patient of a simulated cohort: the planted number of clones and whether they meet the detectability rule
    (:func:`meets_detectability_rule`) among the analysed tumour cells (``cell_clones``: one row per analysed cell
    with its patient and planted clone, -1 for a cell that is not malignant)."""
    rows = {}
    for p, v in truth["patients"].items():
        cells = cell_clones.loc[cell_clones[patient].astype(str) == p, clone].to_numpy()
        events = [c["events"] for c in v["clones"]]
        rows[p] = {"planted": len(events), "detectable": meets_detectability_rule(events, cells, min_cells, min_events),
                   "n_analysed_cells": int(len(cells))}
    return pd.DataFrame(rows).T.astype({"planted": int, "detectable": bool, "n_analysed_cells": int})


def subclone_agreement(called: pd.Series, planted: pd.DataFrame) -> dict[str, Any]:
    """How often the called count equals the planted one: among patients meeting the rule (the issue's measure) and
    among all called patients."""
    both = called.dropna().astype(int).to_frame("called").join(planted, how="inner")
    rule = both[both["detectable"]]
    return {"subclones_exact_agreement": float((rule["called"] == rule["planted"]).mean()) if len(rule) else None,
            "subclones_n_detectable": int(len(rule)),
            "subclones_agreement_all": float((both["called"] == both["planted"]).mean()) if len(both) else None,
            "subclones_n_patients": int(len(both)),
            "subclones_rule": f">= {MIN_CELLS} cells per clone, >= {MIN_EVENTS} arm-level events between clones"}
