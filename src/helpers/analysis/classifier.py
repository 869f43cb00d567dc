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
from joblib import Parallel, delayed
from scipy.stats import norm
from sklearn import config_context
from sklearn.base import clone
from sklearn.feature_selection import SelectFromModel
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.pipeline import Pipeline
from tqdm.auto import tqdm

from helpers.analysis.forest import PatientForest
from helpers.analysis.pseudobulk import log_cpm
from helpers.analysis.stats import auc_by_ranks, hanley_mcneil_ci
from helpers.claims import (  # noqa: F401  (STUDY_AUC, STUDY_N_BM: the study's numbers, read from the registry)
    CLAIMS,
    STUDY_AUC,
    STUDY_N_BM,
    NotTestable,
    record,
    reproduced,
    side,
    testable_pseudobulk,
)
from helpers.data.cohort import InputError, project_root

MIN_PATIENTS_CV = 3  # per group, for cross-validated AUCs (stratified k-fold needs k >= 2 per group and a test fold)
MIN_PATIENTS_EXTERNAL = 2  # per group, for the AUC of the fixed model on an independent set
AUC_CI_METHOD = ("Hanley-McNeil (1982) analytic 95% CI from the AUC and the group sizes (a fixed score's "
                 "sampling error; the variability of refitting in cross-validation is not included)")


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

    The forests are :class:`helpers.analysis.forest.PatientForest`: identical trees and probabilities to scikit-learn's
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
    # per-fit overhead (the forests themselves validate once per fit, see helpers.analysis.forest)
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


def auc_ci(auc: float, y: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """The reported 95% CI of an AUC: Hanley-McNeil (1982), analytic, from the AUC and the group sizes of ``y``
    (:func:`helpers.analysis.stats.hanley_mcneil_ci`)."""
    n_pos = int(np.sum(y == 1))
    return hanley_mcneil_ci(auc, n_pos, len(y) - n_pos, alpha)


def permuted_labels(y: np.ndarray, seed: int, k: int) -> np.ndarray:
    """The k-th label permutation of ``y`` (seeded by ``[seed, k]``: the same whatever the order of evaluation)."""
    return np.random.default_rng([seed, k]).permutation(y)


def permutation_p(observed: float, null: np.ndarray) -> float:
    """Permutation p = (1 + #null >= observed) / (1 + n); a null value equal to the observed (to 1e-12) counts."""
    null = np.asarray(null, dtype=float)
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null)))


def auc_reproduced(auc: float, permutation_p: float, alpha: float = 0.05) -> bool:
    """The claims' one rule for an AUC (:func:`helpers.claims.reproduced`): permutation p < alpha and the AUC
    above 0.5 (the expected direction)."""
    return reproduced(CLAIMS["auc_bm_34"], {"effect": auc, "p": permutation_p, "direction": side(auc, 0.5)},
                      alpha)


def _cv_auc_permuted(k: int, model: Pipeline, X: pd.DataFrame, y: np.ndarray, seed: int, n_repeats: int) -> float:
    return cross_validate(model, X, permuted_labels(y, seed, k), seed, n_repeats=n_repeats)["auc"]


def _external_auc_permuted(k: int, model: Pipeline, X_train: pd.DataFrame, y_train: np.ndarray, X_test: pd.DataFrame,
                           y_test: np.ndarray, seed: int) -> float:
    with config_context(assume_finite=True, skip_parameter_validation=True):
        fitted = clone(model).fit(X_train.to_numpy(dtype=float), permuted_labels(y_train, seed, k))
        return auc_by_ranks(y_test, fitted.predict_proba(X_test.to_numpy(dtype=float))[:, 1])


def _run_permutations(one, n_perm: int, n_jobs: int, desc: str, progress: bool, **kw) -> np.ndarray:
    bar = tqdm(range(n_perm), desc=desc, disable=not progress)
    return np.array(Parallel(n_jobs=n_jobs)(delayed(one)(k, **kw) for k in bar), dtype=float)


def cv_auc_null(model: Pipeline, X: pd.DataFrame, y: np.ndarray, seed: int, n_perm: int, n_repeats: int = 1,
                n_jobs: int = 1, progress: bool = False) -> np.ndarray:
    """Null distribution of :func:`cross_validate`'s AUC: the whole cross-validation (same model and seeds, the
    in-fold gene selection of a top-k pipeline refitted in every fold) re-run on ``n_perm`` label permutations.
    With ``n_repeats`` below the observed AUC's repeats the null is wider than the observed statistic's (one
    repeat varies more than a mean of several), so the p is conservative. Same result whatever ``n_jobs``.
    (scikit-learn's ``permutation_test_score`` averages per-fold AUCs; this pools the out-of-fold predictions
    of a repeat, as the reported AUC does.)"""
    return _run_permutations(_cv_auc_permuted, n_perm, n_jobs, "permutations (CV)", progress, model=model, X=X, y=y,
                             seed=seed, n_repeats=n_repeats)


def external_auc_null(model: Pipeline, X_train: pd.DataFrame, y_train: np.ndarray, X_test: pd.DataFrame,
                      y_test: np.ndarray, seed: int, n_perm: int, n_jobs: int = 1,
                      progress: bool = False) -> np.ndarray:
    """Null distribution of an external AUC: the training labels permuted, the whole model (gene selection
    included) refitted on the training set, applied unchanged to the test set and scored against the test set's
    true labels; ``n_perm`` permutations, same result whatever ``n_jobs``."""
    return _run_permutations(_external_auc_permuted, n_perm, n_jobs, "permutations (external)", progress, model=model,
                             X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test, seed=seed)


def evaluate_external(model: Pipeline, X: pd.DataFrame, y: np.ndarray) -> dict:
    """AUC of an already fitted model on an independent set, with its Hanley-McNeil 95% CI."""
    p = model.predict_proba(X)[:, 1]
    auc = auc_by_ranks(y, p)
    lo, hi = auc_ci(auc, y)
    return {"auc": float(auc), "ci_low": lo, "ci_high": hi, "prob": p}


def evaluate_tissue(model: Pipeline, adata: ad.AnnData, genes: list[str], tissue: str | None, groups: list[str],
                    test_group: str, cell_types: list[str] | None = None, min_cells: int = 10) -> dict:
    """A fitted model applied unchanged to an independent tissue set (standardised with that set's own gene-wise
    statistics, no labels used): :func:`evaluate_external` plus the set's ``Z``, ``y``, ``responses`` and
    ``stats``. :class:`NotTestable` when no such tissue is declared or sampled, or fewer than
    ``MIN_PATIENTS_EXTERNAL`` patients per group have ``min_cells`` cells."""
    if not tissue:
        raise NotTestable("no validation tissue declared (validation_tissue in cohort.yaml)")
    X, r = panel_features(adata, genes, tissue, cell_types, min_cells, groups, MIN_PATIENTS_EXTERNAL)
    Z, stats = standardise(X)
    y = (r == test_group).astype(int).to_numpy()
    return {**evaluate_external(model, Z, y), "Z": Z, "y": y, "responses": r, "stats": stats}


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
                    perm_repeats: int = 1, n_jobs: int = 1, progress: bool = False) -> dict:
    """The marrow evaluation of notebook 07, for the all-gene model (``bm_34``) and the in-fold top-k model
    (``bm_top8``): cross-validated AUC, its Hanley-McNeil 95% CI, the permutation null of the whole pipeline
    (``perm_repeats`` CV repeats per permutation) and its p; and how often each gene was selected."""
    res = {}
    for name, k in (("bm_34", None), ("bm_top8", top_k)):
        model = make_model(seed, top_k=k)
        cv = cross_validate(model, Z, y, seed, n_repeats=n_repeats)
        lo, hi = auc_ci(cv["auc"], y)
        null = cv_auc_null(model, Z, y, seed, n_perm, perm_repeats, n_jobs, progress)
        res[name] = {**cv, "ci_low": lo, "ci_high": hi, "model": model, "null": null, "y": y,
                     "permutation_p": permutation_p(cv["auc"], null)}
    sel = res["bm_top8"]["selection_frequency"].sort_values(ascending=False)
    return {**res, "selection": sel}


def evaluate_blood_permutation(model: Pipeline, Z_train: pd.DataFrame, y_train: np.ndarray, external: dict, seed: int,
                               n_perm: int, n_jobs: int = 1, progress: bool = False) -> dict:
    """:func:`evaluate_tissue`'s result with the permutation null of the external AUC (marrow labels permuted,
    ``model`` refitted on marrow, applied to the external set, scored against its true labels) and its p."""
    null = external_auc_null(model, Z_train, y_train, external["Z"], external["y"], seed, n_perm, n_jobs, progress)
    return {**external, "null": null, "permutation_p": permutation_p(external["auc"], null)}


def auc_record(name: str, res: dict | None, untestable: dict | None) -> dict:
    """The claim record of one AUC (:data:`helpers.claims.CLAIMS` ``name``): ``effect`` the AUC, ``ci_low`` /
    ``ci_high`` its Hanley-McNeil CI, ``p`` the label-permutation p of the whole pipeline, ``direction`` up when
    the AUC is above 0.5, the group sizes (from ``res['y']``), the null's mean and size; ``untestable`` when it
    could not be measured."""
    if untestable is not None:
        return untestable
    y = np.asarray(res["y"])
    n_nr, n_cr = int(y.sum()), int(len(y) - y.sum())
    return record(res["auc"], res["ci_low"], res["ci_high"], res["permutation_p"], n_cr, n_nr,
                  CLAIMS[name].method(), null=0.5, p_method="label permutation", ci_method=AUC_CI_METHOD,
                  null_mean=float(np.mean(res["null"])), n_permutations=int(len(res["null"])))


def binormal_d(auc: float) -> float:
    """Standardised separation d of the equal-variance binormal model with this AUC: AUC = Phi(d / sqrt 2)."""
    return float(np.sqrt(2) * norm.ppf(auc))


def binormal_auc(d: float) -> float:
    """AUC of the equal-variance binormal model with standardised separation ``d``."""
    return float(norm.cdf(d / np.sqrt(2)))


def study_auc_calibration(n_bm: tuple[int, int], n_pb: tuple[int, int] | None, pb_effect_scale: float | None,
                          alpha: float = 0.05) -> dict:
    """What the study's AUCs imply, from :data:`STUDY_AUC` and the group sizes ((NR, CR) patients in marrow, e.g.
    :data:`STUDY_N_BM`, and in blood): per AUC, the binormal separation d and the Hanley-McNeil CI at those sizes;
    and whether the blood AUC fits the marrow top-k AUC with every effect scaled by ``pb_effect_scale`` (d scales
    with the effect)."""
    sizes = {"auc_bm_34": n_bm, "auc_bm_top8": n_bm, "auc_pb_top8": n_pb}
    out = {}
    for key, auc in STUDY_AUC.items():
        n = sizes[key]
        lo, hi = hanley_mcneil_ci(auc, *n, alpha) if n else (None, None)
        out[key] = {"study_auc": auc, "binormal_d": binormal_d(auc), "n_nr": n[0] if n else None,
                    "n_cr": n[1] if n else None, "hanley_mcneil_ci_low": lo, "hanley_mcneil_ci_high": hi}
    if pb_effect_scale is not None:
        d_pb = pb_effect_scale * out["auc_bm_top8"]["binormal_d"]
        expected = binormal_auc(d_pb)
        pb = out["auc_pb_top8"]
        out["blood_from_marrow"] = {
            "pb_effect_scale": pb_effect_scale, "binormal_d_blood": d_pb, "expected_blood_auc": expected,
            "implied_blood_scale": pb["binormal_d"] / out["auc_bm_top8"]["binormal_d"],
            "expected_in_study_blood_ci": (None if pb["hanley_mcneil_ci_low"] is None else
                                           bool(pb["hanley_mcneil_ci_low"] <= expected <= pb["hanley_mcneil_ci_high"]))}
    return out


def scale_reaching_auc(scales: list[float], aucs: list[float], target: float) -> float | None:
    """The effect scale at which the expected AUC reaches ``target``, by linear interpolation between the two
    simulated scales around it (``aucs``: mean AUC per scale); the smallest scale when every AUC reaches it,
    None when none does."""
    order = np.argsort(scales)
    x, a = np.asarray(scales, float)[order], np.asarray(aucs, float)[order]
    above = np.where(a >= target)[0]
    if not len(above):
        return None
    i = int(above[0])
    if i == 0:
        return float(x[0])
    return float(x[i - 1] + (target - a[i - 1]) * (x[i] - x[i - 1]) / (a[i] - a[i - 1]))


PERMUTATION_SCHEME = {
    "marrow": "whole cross-validation (in-fold top-k selection included) re-run on permuted marrow labels",
    "blood": "marrow labels permuted, top-k model refitted on marrow, applied to blood, scored on the true blood labels",
    "p": "(1 + #null >= observed) / (1 + n_perm)",
}


def classifier_findings(res: dict | None, pb: dict | None, bm_untestable: dict | None, pb_untestable: dict | None,
                        genes: list[str], genes_used: list[str], panel_missing: list[str], top8: list[str],
                        n_perm: int, perm_repeats: int, n_repeats: int, calibration: dict) -> dict:
    """Notebook 07's findings record: one claim record per AUC (:func:`auc_record`), the CI method and
    permutation scheme, the panel (``genes`` asked, ``genes_used`` modelled, ``panel_missing`` not in the data) and
    the final top-k genes, the
    selection frequencies, the group sizes, the cross-validation scheme and the study's AUCs' calibration
    (:func:`study_auc_calibration`). ``res``: :func:`evaluate_marrow` (None when marrow is not testable), ``pb``:
    :func:`evaluate_blood_permutation` (None when blood is not)."""
    y_bm = np.asarray(res["bm_34"]["y"]) if res else None
    return {
        "claims": {"auc_bm_34": auc_record("auc_bm_34", res and res["bm_34"], bm_untestable),
                   "auc_bm_top8": auc_record("auc_bm_top8", res and res["bm_top8"], bm_untestable),
                   "auc_pb_top8": auc_record("auc_pb_top8", pb, pb_untestable)},
        "auc_ci_method": AUC_CI_METHOD,
        "permutation": {"n_perm": int(n_perm), "perm_repeats": int(perm_repeats), **PERMUTATION_SCHEME},
        "n_panel_genes": len(genes), "n_panel_genes_used": len(genes_used),
        "panel_missing_genes": list(panel_missing),
        "top8_genes": list(top8), "selection_frequency": res["selection"].round(3).to_dict() if res else {},
        "n_bm": {"CR": int((y_bm == 0).sum()), "NR": int(y_bm.sum())} if res else None,
        "n_pb": {"CR": int((pb["y"] == 0).sum()), "NR": int(pb["y"].sum())} if pb is not None else None,
        "cv": (f"repeated stratified {res['bm_34']['n_splits']}-fold x {n_repeats}, pooled out-of-fold AUC per repeat, "
               f"mean over repeats; permutation null: {perm_repeats} repeat(s) per permutation") if res else None,
        "study_calibration": calibration,
    }
