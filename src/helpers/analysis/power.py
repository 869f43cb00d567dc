"""Power of the study's patient-level tests and of the classifier for small cohorts (notebook 09).

Cohorts are drawn from the same simulator as the default cohort (gene model, cell-type profiles, patient and
batch effects, gene modules, nuisance programmes, composition, planted effects with per-patient spread), but each
patient's pseudobulk per cell type is drawn directly instead of cell by cell: the sum of n cells' negative-binomial
counts with a common mean profile (continua and ambient soup averaged in, :func:`helpers.data.simulate.expected_cell_profiles`) is negative
binomial with n times the mean and n times the shape. That skips QC and annotation (measured separately:
validation/<cohort>/qc_annotation.json) and per-cell stress and damage, so the power here is that of the statistics
given correct cell calls, which makes thousands of cohorts affordable on two cores; the calibration run
(``make calibrate``) measures how far the whole chain falls short of it.
"""

from __future__ import annotations

import copy
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from scipy import stats as sstats

from helpers.analysis.classifier import (
    auc_reproduced,
    cross_validate,
    cv_auc_null,
    make_model,
    permutation_p,
    scale_reaching_auc,
    standardise,
)
from helpers.analysis.pseudobulk import log_cpm
from helpers.analysis.stats import bootstrap_auc_ci, compare_two_groups, hanley_mcneil_ci
from helpers.claims import IMMUNE_COMPARTMENTS, STUDY_AUC, cell_claims, claim_value_from_pseudobulk, reproduced
from helpers.data.simulate import (
    cohort_model,
    draw_patients,
    load_programs,
    make_design,
    simulate_sample_pseudobulk,
)

ALL_CELLS = "__all__"


def claim_cell_groups() -> dict[str, list[str]]:
    """The simulator's cell types behind each claim ('immune' = every type of the immune compartments), plus
    all bone-marrow cells (the classifier's input) under ``ALL_CELLS``."""
    types = load_programs()["types"]
    out = {}
    for name, c in cell_claims().items():
        out[name] = ([t for t, v in types.items() if v["compartment"] in IMMUNE_COMPARTMENTS]
                     if c.cells == "immune" else list(c.cells))
    out[ALL_CELLS] = list(types)
    return out


def simulate_pseudobulks(samples: pd.DataFrame, sim: dict[str, Any], seed: int, groups: dict[str, list[str]],
                         model=None, min_cells: int = 10) -> dict[str, ad.AnnData]:
    """Per cell-type group, a patients x genes pseudobulk of raw counts (patients with fewer than
    ``min_cells`` cells of the group left out, as in the notebooks), drawn from the cohort simulator sample by
    sample (:func:`helpers.data.simulate.simulate_sample_pseudobulk`)."""
    model = model if model is not None else cohort_model(sim, seed)
    patients = draw_patients(samples, sim, seed)
    rows = {g: [] for g in groups}
    for _, row in samples.iterrows():
        pbs = simulate_sample_pseudobulk(model, row, patients[row["patient_id"]], sim, seed, groups, min_cells)
        for g, (k_total, x) in pbs.items():
            rows[g].append((row["patient_id"], row["response"], k_total, x))
    out = {}
    for g, rs in rows.items():
        if not rs:
            continue
        obs = pd.DataFrame({"patient_id": [r[0] for r in rs], "response": [r[1] for r in rs],
                            "n_cells": [r[2] for r in rs]}, index=[r[0] for r in rs])
        out[g] = ad.AnnData(X=np.vstack([r[3] for r in rs]).astype(np.float64), obs=obs,
                            var=pd.DataFrame(index=model.genes.genes.copy()))
    return out


def scaled_config(sim: dict[str, Any], scale: float) -> dict[str, Any]:
    """A copy of the simulation config with every planted strength multiplied by ``scale``."""
    s = copy.deepcopy(sim)
    for e in s.get("effects", {}).values():
        e["strength"] = float(e.get("strength", 0.0)) * scale
    return s


def one_cohort(n_cr: int, n_nr: int, scale: float, rep: int, sim: dict[str, Any], seed: int, model,
               panel: list[str] | None = None, min_cells: int = 10) -> list[dict[str, Any]]:
    """Simulate one cohort of the design and return one record per claim test (and the classifier's AUC)."""
    cseed = int(seed + 7919 * rep + 104729 * n_cr + 13 * n_nr + int(round(scale * 1000)))
    samples = make_design(n_cr, n_nr, seed=cseed, n_batches=max(2, min(4, (n_cr + n_nr) // 4)))
    groups = claim_cell_groups()
    if panel is None:
        groups.pop(ALL_CELLS)
    pbs = simulate_pseudobulks(samples, scaled_config(sim, scale), cseed, groups, model=model, min_cells=min_cells)
    base = {"n_per_group": n_cr if n_cr == n_nr else f"{n_cr}/{n_nr}", "n_cr": n_cr, "n_nr": n_nr,
            "effect_scale": scale, "rep": rep}
    out = []
    for name, c in cell_claims().items():
        rec = {"effect": None, "p": None, "direction": None}
        counts = pbs[name].obs["response"].value_counts() if name in pbs else None
        if counts is not None and len(counts) == 2 and counts.min() >= 2:  # else: not testable in this cohort
            try:
                v = claim_value_from_pseudobulk(pbs[name], name)
                rec = compare_two_groups(v, pbs[name].obs["response"], "CR", "NR")
            except ValueError:
                pass
        hit = reproduced(c, rec)  # the scorecard's rule (helpers.claims)
        out.append({**base, "test": name, "effect": rec["effect"], "p": rec["p"], "significant": bool(hit)})
    if panel is not None and ALL_CELLS in pbs:
        from helpers.analysis.pseudobulk import log_cpm

        pb = pbs[ALL_CELLS]
        Z, _ = standardise(log_cpm(pb)[panel])
        y = (pb.obs["response"] == "NR").astype(int).to_numpy()
        if min(np.bincount(y, minlength=2)) >= 2:
            cv = cross_validate(make_model(cseed), Z, y, cseed, n_repeats=1)
            lo, hi = bootstrap_auc_ci(y, cv["oof_by_repeat"], cseed, n_boot=200)
            out.append({**base, "test": "classifier_auc", "effect": cv["auc"], "p": None, "significant": None,
                        "ci_low": lo, "ci_high": hi})
    return out


def power_grid(sim: dict[str, Any], seed: int, designs: list[tuple[int, int]], scales: list[float], n_reps: int,
               panel: list[str] | None = None, classifier_scales: list[float] | None = None, n_jobs: int = 2,
               min_cells: int = 10, progress: bool = True) -> pd.DataFrame:
    """Every (design, effect scale, repetition) cohort's test results, in parallel; deterministic for a
    seed whatever ``n_jobs``. The classifier runs only at ``classifier_scales`` (it costs most)."""
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    model = cohort_model(sim, seed)
    cls = set(classifier_scales or [])
    jobs = [(a, b, s, r) for (a, b) in designs for s in scales for r in range(n_reps)]
    it = tqdm(jobs, desc="simulated cohorts", disable=not progress)
    res = Parallel(n_jobs=n_jobs)(
        delayed(one_cohort)(a, b, s, r, sim, seed, model, panel if s in cls else None, min_cells) for a, b, s, r in it)
    return pd.DataFrame([rec for rs in res for rec in rs])


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact binomial CI of a proportion k/n."""
    if n == 0:
        return (np.nan, np.nan)
    ci = sstats.binomtest(int(k), int(n)).proportion_ci(confidence_level=1 - alpha, method="exact")
    return float(ci.low), float(ci.high)


def summarise_power(raw: pd.DataFrame) -> pd.DataFrame:
    """Per design, effect scale and test: power (share of cohorts with p < 0.05 in the study's direction) with
    an exact 95% CI; for the classifier, mean AUC, its 2.5-97.5% spread over cohorts (refitted in every cohort)
    and the mean width of the cohorts' Hanley-McNeil 95% CIs (the CI notebook 07 reports)."""
    rows = []
    for (n, scale, test), d in raw.groupby(["n_per_group", "effect_scale", "test"], sort=False):
        if test == "classifier_auc":
            a = d["effect"].astype(float)
            cis = [hanley_mcneil_ci(v, nr, cr) for v, nr, cr in zip(a, d["n_nr"], d["n_cr"])]
            rows.append({"n_per_group": n, "effect_scale": scale, "test": test, "n_cohorts": len(d),
                         "power": np.nan, "power_ci_low": np.nan, "power_ci_high": np.nan,
                         "mean_auc": a.mean(), "auc_q025": a.quantile(0.025), "auc_q975": a.quantile(0.975),
                         "mean_ci_width": float(np.mean([hi - lo for lo, hi in cis]))})
            continue
        k, m = int(d["significant"].sum()), int(len(d))
        lo, hi = clopper_pearson(k, m)
        rows.append({"n_per_group": n, "effect_scale": scale, "test": test, "n_cohorts": m, "power": k / m,
                     "power_ci_low": lo, "power_ci_high": hi, "n_tested": int(d["p"].notna().sum()),
                     "median_effect": pd.to_numeric(d["effect"], errors="coerce").median()})
    return pd.DataFrame(rows)


def is_balanced(n_per_group: pd.Series) -> pd.Series:
    """Which designs are balanced: ``n_per_group`` is an int (n vs n) for those, a string ('11/10') otherwise."""
    return n_per_group.map(lambda v: isinstance(v, (int, np.integer)))


def smallest_n_for_power(summary: pd.DataFrame, target: float = 0.8, scale: float = 1.0) -> dict[str, Any]:
    """Per test, the smallest balanced group size reaching ``target`` power at ``scale`` (None if none does)."""
    s = summary[(summary["effect_scale"] == scale) & summary["power"].notna()]
    s = s[is_balanced(s["n_per_group"])]
    out = {}
    for test, d in s.groupby("test"):
        ok = d[d["power"] >= target]
        out[test] = int(ok["n_per_group"].min()) if len(ok) else None
    return out


# -- a smooth power curve fitted to the simulated cohorts --------------------------------------------------------------

def harmonic_n(n_cr, n_nr):
    """The design axis of the fitted curve: the harmonic mean of the two group sizes (n for a balanced n vs n design;
    a two-group test's precision scales with it, so an unbalanced design sits where its balanced equivalent does)."""
    a, b = np.asarray(n_cr, dtype=float), np.asarray(n_nr, dtype=float)
    return 2.0 / (1.0 / a + 1.0 / b)


def firth_logistic(k: np.ndarray, m: np.ndarray, X: np.ndarray, max_iter: int = 200,
                   tol: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """Firth's (1993) bias-reduced logistic regression of ``k`` successes out of ``m`` trials on the design matrix
    ``X``: coefficients and their covariance (inverse Fisher information at the estimate).

    Computed in its pseudo-data form: the maximum-likelihood binomial GLM (statsmodels, logit link) of k + h/2
    successes out of m + h trials, h the leverages of the fit (hat diagonal of W^1/2 X with W = m p (1 - p)),
    iterated to its fixed point, where the score equals Firth's penalised score. Unlike the plain maximum-likelihood
    fit it is finite when every cohort is (or none is) significant and when hits and misses are separated by n
    (Heinze & Schemper 2002), which happens at strong effects with few repetitions."""
    import warnings

    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import PerfectSeparationWarning

    k, m, X = np.asarray(k, float), np.asarray(m, float), np.asarray(X, float)
    h = np.full(len(k), X.shape[1] / len(k))
    beta = None
    for _ in range(max_iter):
        endog = np.column_stack([k + h / 2, m - k + h / 2])
        with warnings.catch_warnings():  # fitted values near 0 or 1 are expected here; the pseudo-data keep it finite
            warnings.simplefilter("ignore", PerfectSeparationWarning)
            res = sm.GLM(endog, X, family=sm.families.Binomial()).fit(start_params=beta)
        new = np.asarray(res.params, float)
        p = 1.0 / (1.0 + np.exp(-(X @ new)))
        xw = X * np.sqrt(m * p * (1 - p))[:, None]
        cov = np.linalg.pinv(xw.T @ xw)
        h = np.einsum("ij,jk,ik->i", xw, cov, xw)
        if beta is not None and np.max(np.abs(new - beta)) < tol:
            return new, cov
        beta = new
    raise RuntimeError(f"Firth logistic regression did not converge in {max_iter} iterations")


def _separated(x: np.ndarray, k: np.ndarray, m: np.ndarray) -> bool:
    """True when the plain maximum-likelihood logistic fit on one covariate does not exist: no hit, no miss, or all
    misses at or below (above) every hit's x (quasi-complete separation)."""
    hit_x, miss_x = x[k > 0], x[k < m]
    if not len(hit_x) or not len(miss_x):
        return True
    return bool(miss_x.max() <= hit_x.min() or hit_x.max() <= miss_x.min())


FIT_METHOD = ("per test and effect scale, logistic regression of each simulated cohort's hit (p < 0.05 in the "
              "study's direction) on log(n per group) (harmonic mean of the two groups for an unbalanced design), "
              "fitted by Firth's bias-reduced likelihood (finite when every or no cohort is a hit, or hits and misses "
              "are separated by n); band: pointwise 95% Wald interval of the linear predictor mapped through the "
              "logistic (inside 0-1). The curve is monotone in n, increasing only when the fitted slope is positive "
              "(trend 'increasing': its 95% CI above 0; 'flat': the CI includes 0; 'decreasing': below 0).")


def fit_power_curve(raw: pd.DataFrame, n_grid=None, alpha: float = 0.05) -> pd.DataFrame:
    """A smooth power curve per test and effect scale, fitted to the simulated cohorts (``raw``, as from
    :func:`power_grid`; the classifier's rows are left out): see ``FIT_METHOD``.

    One row per test, effect scale and design: the simulated designs (``n_per_group`` as in ``raw``, the observed
    power with its exact 95% CI as in :func:`summarise_power`) and, with ``n_grid``, balanced group sizes where
    the curve is only predicted (observed columns NA). Columns: test, effect_scale, n_per_group, n_eff (the design
    axis), n_cohorts, n_significant, power, power_ci_low, power_ci_high (observed), fitted_power, fitted_ci_low,
    fitted_ci_high, slope (log-odds per unit log n), slope_ci_low, slope_ci_high, trend, separated (the plain
    maximum-likelihood fit would not exist)."""
    from scipy.special import expit

    observed = summarise_power(raw)[["n_per_group", "effect_scale", "test", "power", "power_ci_low", "power_ci_high"]]
    d = raw[raw["test"] != "classifier_auc"].copy()
    d["hit"] = d["significant"].eq(True).astype(int)  # as in summarise_power: a cohort not tested is not a hit
    z = sstats.norm.ppf(1 - alpha / 2)
    rows = []
    for (test, scale), g in d.groupby(["test", "effect_scale"], sort=False):
        obs = (g.groupby(["n_cr", "n_nr"], sort=True)
               .agg(n_per_group=("n_per_group", "first"), n_cohorts=("hit", "size"), n_significant=("hit", "sum"))
               .reset_index())
        obs["n_eff"] = harmonic_n(obs["n_cr"], obs["n_nr"])
        obs = obs.merge(observed[(observed["test"] == test) & (observed["effect_scale"] == scale)]
                        .drop(columns=["test", "effect_scale"]), on="n_per_group", how="left")
        have = {int(v) for v in obs.loc[is_balanced(obs["n_per_group"]), "n_per_group"]}
        extra = [int(n) for n in (n_grid if n_grid is not None else []) if int(n) not in have]
        pred = pd.concat([obs, pd.DataFrame({"n_per_group": extra, "n_cr": extra, "n_nr": extra,
                                             "n_eff": np.asarray(extra, dtype=float)})], ignore_index=True)
        x = np.log(obs["n_eff"].to_numpy(float))
        k, m = obs["n_significant"].to_numpy(float), obs["n_cohorts"].to_numpy(float)
        fit = {"fitted_power": np.nan, "fitted_ci_low": np.nan, "fitted_ci_high": np.nan, "slope": np.nan,
               "slope_ci_low": np.nan, "slope_ci_high": np.nan, "trend": "one design: no curve",
               "separated": _separated(x, k, m)}
        if len(np.unique(x)) >= 2:
            beta, cov = firth_logistic(k, m, np.column_stack([np.ones_like(x), x]))
            X0 = np.column_stack([np.ones(len(pred)), np.log(pred["n_eff"].to_numpy(float))])
            eta = X0 @ beta
            se = np.sqrt(np.einsum("ij,jk,ik->i", X0, cov, X0))
            s_se = float(np.sqrt(cov[1, 1]))
            lo, hi = beta[1] - z * s_se, beta[1] + z * s_se
            fit.update(fitted_power=expit(eta), fitted_ci_low=expit(eta - z * se), fitted_ci_high=expit(eta + z * se),
                       slope=float(beta[1]), slope_ci_low=float(lo), slope_ci_high=float(hi),
                       trend="increasing" if lo > 0 else "decreasing" if hi < 0 else "flat")
        pred = pred.assign(test=test, effect_scale=scale, **fit)
        rows.append(pred.sort_values("n_eff"))
    cols = ["test", "effect_scale", "n_per_group", "n_cr", "n_nr", "n_eff", "n_cohorts", "n_significant", "power",
            "power_ci_low", "power_ci_high", "fitted_power", "fitted_ci_low", "fitted_ci_high", "slope",
            "slope_ci_low", "slope_ci_high", "trend", "separated"]
    if not rows:
        return pd.DataFrame(columns=cols)
    out = pd.concat(rows, ignore_index=True)[cols]
    for c in ("n_cohorts", "n_significant"):
        out[c] = out[c].astype("Int64")
    return out


def smallest_n_from_fit(fit: pd.DataFrame, target: float = 0.8, scale: float = 1.0) -> dict[str, dict[str, Any]]:
    """Per test, the smallest balanced group size whose fitted power reaches ``target`` at ``scale`` (``n``), and
    the same read off the 95% band: ``n_low`` where its upper edge reaches the target (the optimistic end) and
    ``n_high`` where its lower edge does. Only group sizes in ``fit`` (its ``n_grid``) are read: None means not
    reached within them; ``n`` equal to ``min_n`` means at or below the smallest size fitted. With the fit's
    ``trend`` and ``slope``."""
    f = fit[(fit["effect_scale"] == scale) & is_balanced(fit["n_per_group"])]
    out = {}

    def first(d: pd.DataFrame, col: str) -> int | None:
        ok = d.loc[d[col] >= target, "n_per_group"]
        return int(ok.iloc[0]) if len(ok) else None

    for test, d in f.groupby("test", sort=False):
        d = d.sort_values("n_eff")
        out[test] = {"n": first(d, "fitted_power"), "n_low": first(d, "fitted_ci_high"),
                     "n_high": first(d, "fitted_ci_low"),
                     "min_n": int(d["n_per_group"].min()), "max_n": int(d["n_per_group"].max()),
                     "trend": str(d["trend"].iloc[0]), "slope": float(d["slope"].iloc[0])}
    return out


def describe_smallest_n(v: dict[str, Any]) -> str:
    """'6 (band 5 to 8)': one test's entry of :func:`smallest_n_from_fit` as text (with the trend unless
    increasing)."""
    def fmt(n):
        return f"> {v['max_n']}" if n is None else f"<= {n}" if n == v["min_n"] else str(n)

    trend = "" if v["trend"] == "increasing" else f"; fitted curve {v['trend']}"
    return f"{fmt(v['n'])} (band {fmt(v['n_low'])} to {fmt(v['n_high'])}{trend})"


def describe_power(test: str, v: dict[str, Any]) -> str:
    """'name 70% [35%, 93%]; fitted 68% [45%, 85%]': observed power at a design with its exact CI, and the fitted
    curve's (notebook 09's ``default_design.power`` entries)."""
    f = v.get("fitted_power")
    fitted = (f"; fitted {f:.0%} [{v['fitted_ci_low']:.0%}, {v['fitted_ci_high']:.0%}]"
              if f is not None and np.isfinite(f) else "")
    return f"{test.replace('_', ' ')} {v['power']:.0%} [{v['ci_low']:.0%}, {v['ci_high']:.0%}]{fitted}"


FIT_COLUMNS = ["fitted_power", "fitted_ci_low", "fitted_ci_high", "slope", "slope_ci_low", "slope_ci_high", "trend",
               "separated"]


def with_fit(summary: pd.DataFrame, fit: pd.DataFrame) -> pd.DataFrame:
    """:func:`summarise_power`'s table with the fitted curve's columns (:data:`FIT_COLUMNS`) at the simulated
    designs."""
    keys = ["n_per_group", "effect_scale", "test"]
    return summary.merge(fit.loc[fit["n_cohorts"].notna(), keys + FIT_COLUMNS], on=keys, how="left")


def classifier_at_design(raw: pd.DataFrame, design: tuple[int, int], sim: dict[str, Any], seed: int,
                         panel: list[str], n_null_perm: int, min_cells: int = 10, n_jobs: int = 1
                         ) -> tuple[dict[str, float] | None, dict[str, Any]]:
    """Notebook 09's classifier at a cohort's design ((CR, NR) patients): its power by the AUC rule (the share of
    :func:`power_grid`'s cohorts of this design at 1x whose CV AUC has permutation p < 0.05 and AUC > 0.5, against
    the ``n_null_perm``-permutation null of one more simulated cohort of the design; exact CI) and the effect scale
    at which the mean CV AUC reaches the study's 34-gene AUC (linear interpolation between simulated scales)."""
    null_cohort = make_design(*design, seed=seed + 1)
    null_pb = simulate_pseudobulks(null_cohort, sim, seed + 1, {"all": claim_cell_groups()[ALL_CELLS]},
                                   min_cells=min_cells)["all"]
    y_null = (null_pb.obs["response"] == "NR").astype(int).to_numpy()  # the simulator's groups
    null_auc = cv_auc_null(make_model(seed), standardise(log_cpm(null_pb)[panel])[0], y_null, seed, n_null_perm,
                           n_jobs=n_jobs, progress=True)
    at_design = raw[(raw["test"] == "classifier_auc") & (raw["n_cr"] == design[0]) & (raw["n_nr"] == design[1])]
    hits = [auc_reproduced(a, permutation_p(a, null_auc))
            for a in at_design.loc[at_design["effect_scale"] == 1.0, "effect"].astype(float)]
    auc_power = None
    if hits:
        lo, hi = clopper_pearson(sum(hits), len(hits))
        auc_power = {"power": sum(hits) / len(hits), "ci_low": lo, "ci_high": hi, "n_cohorts": len(hits),
                     "null_q95": float(np.quantile(null_auc, 0.95))}
    by_scale = at_design.groupby("effect_scale")["effect"].mean()
    study_auc = STUDY_AUC["auc_bm_34"]
    calibration = {
        "design": {"n_cr": design[0], "n_nr": design[1]}, "study_auc": study_auc,
        "mean_cv_auc_by_effect_scale": {str(k): float(v) for k, v in by_scale.items()},
        "effect_scale_for_study_auc": scale_reaching_auc(list(by_scale.index), list(by_scale), study_auc),
        "method": "mean cross-validated AUC (34 genes, one 5-fold repeat) of the simulated cohorts of this design per "
                  "effect scale, linearly interpolated to the study's AUC; None when no simulated scale reaches it",
    }
    return auc_power, calibration


def design_label(design: tuple[int, int]) -> int | str:
    """A design's ``n_per_group`` in :func:`summarise_power`: n for n vs n, 'n_cr/n_nr' otherwise."""
    return design[0] if design[0] == design[1] else f"{design[0]}/{design[1]}"


def power_findings(summary: pd.DataFrame, fit: pd.DataFrame, design: tuple[int, int], simulator: str, n_reps: int,
                   group_sizes: list[int], effect_scales: list[float], n_genes: int, n_null_perm: int,
                   calibration: dict[str, Any], auc_power: dict[str, float] | None) -> dict[str, Any]:
    """Notebook 09's findings record: the cohort's own design (observed and fitted power per test, the classifier's
    mean AUC and power), the smallest n for 80% power (observed points and fitted curve with its band), the fitted
    curves' parameters, the classifier's AUC by n and the study-AUC calibration. ``summary`` is :func:`with_fit`'s
    table."""
    dflt = summary[(summary["n_per_group"] == design_label(design)) & (summary["effect_scale"] == 1.0)].set_index("test")
    clf = summary[(summary["test"] == "classifier_auc") & (summary["effect_scale"] == 1.0)].set_index("n_per_group")
    per_test = {t: {"power": float(r.power), "ci_low": float(r.power_ci_low), "ci_high": float(r.power_ci_high),
                    "fitted_power": float(r.fitted_power), "fitted_ci_low": float(r.fitted_ci_low),
                    "fitted_ci_high": float(r.fitted_ci_high)}
                for t, r in dflt.iterrows() if t != "classifier_auc"}
    if auc_power:
        per_test["auc_bm_34"] = {k: auc_power[k] for k in ("power", "ci_low", "ci_high")}
    curves = {t: {f"{sc:g}": {k: (bool(v) if k == "separated" else v if k == "trend" else float(v))
                              for k, v in g[FIT_COLUMNS[3:]].iloc[0].items()}
                  for sc, g in d.groupby("effect_scale")}
              for t, d in fit.groupby("test", sort=False)}
    return {
        "simulator": simulator, "n_reps": n_reps, "group_sizes": list(group_sizes), "effect_scales": list(effect_scales),
        "n_genes_simulated": int(n_genes),
        "default_design": {
            "n_cr": design[0], "n_nr": design[1], "power": per_test,
            "classifier_mean_auc": (float(dflt.loc["classifier_auc", "mean_auc"]) if "classifier_auc" in dflt.index
                                    else None),
            "auc_power_method": (f"share of simulated cohorts whose CV AUC has permutation p < 0.05 and AUC > 0.5 "
                                 f"against a {n_null_perm}-permutation null of one simulated cohort of the design")},
        "smallest_n_for_80pct_power": smallest_n_for_power(summary, 0.8, 1.0),  # the observed points
        "smallest_n_for_80pct_power_fitted": smallest_n_from_fit(fit, 0.8, 1.0),  # the fitted curve and its band
        "power_fit": {"method": FIT_METHOD, "curves": curves},
        "classifier": {str(n): {"mean_auc": float(r.mean_auc), "auc_q025": float(r.auc_q025),
                                "auc_q975": float(r.auc_q975), "mean_hanley_mcneil_ci_width": float(r.mean_ci_width)}
                       for n, r in clf.iterrows()},
        "study_auc_calibration": calibration,
    }
