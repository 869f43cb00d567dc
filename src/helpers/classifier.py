"""NF-kB random-forest response classifier evaluated by patient-level cross-validation.

Features are per-patient pseudobulk log2 CPM of a gene panel, standardised gene-wise within each tissue
cohort (label-free, so a marrow-trained model can be applied to blood). Gene selection for the top-k model
happens inside every training fold (a scikit-learn Pipeline), never on all data.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from sklearn import config_context
from sklearn.base import clone
from sklearn.feature_selection import SelectFromModel
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.pipeline import Pipeline

from .claims import NotTestable, testable_pseudobulk
from .cohort import InputError, project_root
from .forest import PatientForest
from .pseudobulk import log_cpm
from .stats import auc_by_ranks

MIN_PATIENTS_CV = 3  # per group, for cross-validated AUCs (stratified k-fold needs k >= 2 per group and a test fold)
MIN_PATIENTS_EXTERNAL = 2  # per group, for the AUC of the fixed model on an independent set (rank AUC + bootstrap)


def load_panel(path: str | Path | None = None) -> pd.DataFrame:
    """The 34-gene NF-kB panel (data/genesets/nfkb_panel.csv: gene, role, source) or another panel file."""
    path = Path(path) if path else project_root() / "data" / "genesets" / "nfkb_panel.csv"
    if not path.exists():
        raise FileNotFoundError(f"panel file {path} does not exist")
    df = pd.read_csv(path)
    if "gene" not in df:
        raise ValueError(f"{path}: a panel file needs a 'gene' column")
    return df


def panel_in_data(genes: list[str], var_names, top_k: int) -> tuple[list[str], list[str]]:
    """The panel genes present in the data and those missing. The rule, fixed in advance: the classifier runs on
    the genes present when at least ``max(2 * top_k, ceil(len(genes) / 2))`` remain (enough for the top-k
    selection to choose, and most of the panel); otherwise :class:`NotTestable` naming the missing genes."""
    present = set(var_names)
    used = [g for g in genes if g in present]
    missing = [g for g in genes if g not in present]
    need = max(2 * top_k, -(-len(genes) // 2))
    if len(used) < need:
        raise NotTestable(f"only {len(used)} of the {len(genes)} panel genes are in the data (need {need}: "
                          f"2 x top-{top_k} and half the panel); missing: {', '.join(missing)}")
    return used, missing


def cohort_panel_features(adata: ad.AnnData, genes: list[str], top_k: int, tissue: str, groups: list[str],
                          cell_types: list[str] | None = None, min_cells: int = 10,
                          min_per_group: int = MIN_PATIENTS_CV) -> tuple[pd.DataFrame, pd.Series]:
    """:func:`panel_features` of the panel genes present in the data (:func:`panel_in_data`'s rule) in one tissue,
    with at least ``min_per_group`` patients per group; :class:`NotTestable` otherwise."""
    used, _ = panel_in_data(genes, adata.var_names, top_k)
    return panel_features(adata, used, tissue, cell_types, min_cells, groups, min_per_group)


def panel_features(adata: ad.AnnData, genes: list[str], tissue: str, cell_types: list[str] | None = None,
                   min_cells: int = 10, groups: list[str] | None = None,
                   min_per_group: int = 1) -> tuple[pd.DataFrame, pd.Series]:
    """Per-patient log2 CPM of the panel genes (pseudobulk of the chosen cells) and the responses. Every gene
    must be in the data (:class:`InputError` naming the missing ones; :func:`panel_in_data` picks the usable
    genes first); fewer than ``min_per_group`` patients of a group raise :class:`NotTestable`."""
    missing = [g for g in genes if g not in adata.var_names]
    if missing:
        raise InputError(f"{len(missing)} panel gene(s) missing from the data: {missing}; use gene symbols, or give "
                         "a panel file without them (analysis.classifier_panel in cohort.yaml)")
    pb = testable_pseudobulk(adata, cell_types, groups, min_cells=min_cells, tissue=tissue, min_per_group=min_per_group)
    return log_cpm(pb)[genes], pb.obs["response"].astype(str)


def standardise(X: pd.DataFrame, stats: dict[str, pd.Series] | None = None) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """Gene-wise z-score; with ``stats`` given (mean, sd) they are reused (label-free, per tissue)."""
    if stats is None:
        stats = {"mean": X.mean(), "sd": X.std(ddof=1).replace(0, 1.0).fillna(1.0)}
    return (X - stats["mean"]) / stats["sd"], stats


def make_model(seed: int, top_k: int | None = None, n_estimators: int = 100) -> Pipeline:
    """Random forest, optionally preceded by in-fold selection of the ``top_k`` genes by RF importance.

    The forests are :class:`helpers.forest.PatientForest`: identical trees and probabilities to scikit-learn's
    ``RandomForestClassifier(n_estimators, random_state=seed)``, ~25x faster on patient tables."""
    rf = PatientForest(n_estimators=n_estimators, random_state=seed)
    if top_k is None:
        return Pipeline([("rf", rf)])
    sel = SelectFromModel(PatientForest(n_estimators=n_estimators, random_state=seed + 1),
                          max_features=top_k, threshold=-np.inf)
    return Pipeline([("select", sel), ("rf", rf)])


def cross_validate(model: Pipeline, X: pd.DataFrame, y: np.ndarray, seed: int, n_splits: int = 5,
                   n_repeats: int = 5) -> dict:
    """Repeated stratified k-fold over patients (one sample per patient). Per repeat the out-of-fold
    probabilities of all patients are pooled into one AUC; the estimate is the mean over repeats. Also
    returns the mean out-of-fold probability per patient and how often each gene was selected."""
    n_splits = min(n_splits, int(np.bincount(y).min()))
    if n_splits < 2:
        raise ValueError("need at least two patients per group for cross-validation")
    cv = RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=seed)
    oof = np.zeros((n_repeats, len(y)))
    selected = pd.Series(0, index=X.columns, dtype=int)
    Xv = X.to_numpy(dtype=float)
    # the inputs are checked once here; skipping scikit-learn's validation in the pipeline steps saves more
    # per-fit overhead (the forests themselves validate once per fit, see helpers.forest)
    if not np.isfinite(Xv).all():
        raise ValueError("features contain NaN or infinite values")
    with config_context(assume_finite=True, skip_parameter_validation=True):
        for i, (tr, te) in enumerate(cv.split(Xv, y)):
            m = clone(model).fit(Xv[tr], y[tr])
            oof[i // n_splits, te] = m.predict_proba(Xv[te])[:, 1]
            if "select" in m.named_steps:
                selected[X.columns[m.named_steps["select"].get_support()]] += 1
    aucs = [float(a) for a in auc_by_ranks(y, oof)]
    return {"auc": float(np.mean(aucs)), "auc_per_repeat": aucs, "oof": oof.mean(0), "oof_by_repeat": oof,
            "n_splits": n_splits, "n_repeats": n_repeats, "selection_frequency": selected / (n_splits * n_repeats)}


def bootstrap_auc_ci(y: np.ndarray, p: np.ndarray, seed: int, n_boot: int = 2000, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile CI of the AUC, resampling patients within each group. ``p`` is one score per patient, or a
    repeats x patients matrix of out-of-fold scores: the statistic is then the mean AUC over repeats, as
    reported by :func:`cross_validate` (no refitting: the out-of-fold predictions are resampled)."""
    rng = np.random.default_rng(seed)
    P = np.atleast_2d(p)
    i0, i1 = np.where(y == 0)[0], np.where(y == 1)[0]
    idx = np.stack([np.concatenate([rng.choice(i0, len(i0)), rng.choice(i1, len(i1))]) for _ in range(n_boot)])
    y_boot = np.r_[np.zeros(len(i0), bool), np.ones(len(i1), bool)]  # every resample has this label layout
    aucs = auc_by_ranks(y_boot, P[:, idx]).mean(axis=0)  # repeats x boots -> mean over repeats
    lo, hi = np.quantile(aucs, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def permutation_pvalue(model: Pipeline, X: pd.DataFrame, y: np.ndarray, observed: float, seed: int,
                       n_perm: int = 1000, n_jobs: int = 2) -> tuple[float, np.ndarray]:
    """Label-permutation p of the cross-validated AUC: the whole CV (selection included) is re-run on
    permuted labels, one repeat of stratified k-fold per permutation; p = (1 + #null >= observed)/(1 + n)."""
    from joblib import Parallel, delayed

    def one(k):
        yp = np.random.default_rng([seed, k]).permutation(y)
        return cross_validate(model, X, yp, seed + k, n_repeats=1)["auc"]

    null = np.array(Parallel(n_jobs=n_jobs)(delayed(one)(k) for k in range(n_perm)))
    return float((1 + np.sum(null >= observed)) / (1 + n_perm)), null


def evaluate_external(model: Pipeline, X: pd.DataFrame, y: np.ndarray, seed: int) -> dict:
    """AUC of an already fitted model on an independent set, with a bootstrap CI."""
    p = model.predict_proba(X)[:, 1]
    auc = auc_by_ranks(y, p)
    lo, hi = bootstrap_auc_ci(y, p, seed)
    return {"auc": float(auc), "ci_low": lo, "ci_high": hi, "prob": p}


def evaluate_tissue(model: Pipeline, adata: ad.AnnData, genes: list[str], tissue: str | None, groups: list[str],
                    test_group: str, cell_types: list[str] | None = None, min_cells: int = 10, seed: int = 0) -> dict:
    """A fitted model applied unchanged to an independent tissue set (standardised with that set's own gene-wise
    statistics, no labels used): :func:`evaluate_external` plus the set's ``Z``, ``y``, ``responses`` and
    ``stats``. :class:`NotTestable` when no such tissue is declared or sampled, or fewer than
    ``MIN_PATIENTS_EXTERNAL`` patients per group have ``min_cells`` cells."""
    if not tissue:
        raise NotTestable("no validation tissue declared (validation_tissue in cohort.yaml)")
    X, r = panel_features(adata, genes, tissue, cell_types, min_cells, groups, MIN_PATIENTS_EXTERNAL)
    Z, stats = standardise(X)
    y = (r == test_group).astype(int).to_numpy()
    return {**evaluate_external(model, Z, y, seed), "Z": Z, "y": y, "responses": r, "stats": stats}


def build_bundle(model: Pipeline, genes: list[str], panel: pd.DataFrame, tissue_stats: dict[str, dict],
                 cell_types: list[str] | None, cohort: str, seed: int, classes: list[str]) -> dict:
    """Everything a prediction needs, with provenance: fitted pipeline, input genes, selected genes, the panel
    and its sources, per-tissue normalisation statistics, training cohort and package versions."""
    import platform
    from importlib.metadata import version

    top = list(np.asarray(genes)[model.named_steps["select"].get_support()]) if "select" in model.named_steps else genes
    return {"model": model, "genes_in": list(genes), "top_genes": top, "panel": panel.to_dict("records"),
            "normalisation": "log2(CPM+1) of per-sample pseudobulk, gene-wise z-score with the tissue's statistics",
            "tissue_stats": tissue_stats, "cell_types": cell_types, "training_cohort": cohort, "seed": seed,
            "classes": classes,
            "versions": {p: version(p) for p in ("scikit-learn", "numpy", "pandas", "anndata", "scanpy")} |
                        {"python": platform.python_version()}}


def evaluate_marrow(Z: pd.DataFrame, y: np.ndarray, seed: int, top_k: int, n_repeats: int = 5, n_perm: int = 1000,
                    n_boot: int = 1000) -> dict:
    """The marrow evaluation of notebook 07: cross-validated AUC with a bootstrap CI of the all-gene model
    (``bm_34``) and of the in-fold top-k model (``bm_top8``), the all-gene model's permutation p and null, and
    how often each gene was selected."""
    res = {}
    for name, k in (("bm_34", None), ("bm_top8", top_k)):
        model = make_model(seed, top_k=k)
        cv = cross_validate(model, Z, y, seed, n_repeats=n_repeats)
        lo, hi = bootstrap_auc_ci(y, cv["oof_by_repeat"], seed, n_boot=n_boot)
        res[name] = {**cv, "ci_low": lo, "ci_high": hi, "model": model}
    perm_p, null = permutation_pvalue(res["bm_34"]["model"], Z, y, res["bm_34"]["auc"], seed, n_perm=n_perm)
    sel = res["bm_top8"]["selection_frequency"].sort_values(ascending=False)
    return {**res, "permutation_p": perm_p, "null": null, "selection": sel}


def auc_entries(key: str, res: dict | None, untestable: dict | None) -> dict:
    """The findings entries of one AUC: ``key``, ``key_ci_low``, ``key_ci_high``; ``key`` holds the
    not-testable record (and the CI None) when it could not be measured."""
    if untestable is not None:
        return {key: untestable, f"{key}_ci_low": None, f"{key}_ci_high": None}
    return {key: res["auc"], f"{key}_ci_low": res["ci_low"], f"{key}_ci_high": res["ci_high"]}
