"""The smooth power curve of notebook 09 (helpers.analysis.power.fit_power_curve): on synthetic tables of simulated
cohorts with a known logistic truth the fitted curve recovers it inside its band, the band covers at about its
nominal rate, it is increasing when the truth is, a null gives a flat curve near the false-positive rate, and it
stays finite when every cohort (or none) is a hit or hits and misses are separated by n. Seconds, no simulation."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize
from scipy.special import expit, logit

from helpers.analysis import power

SIZES = [4, 5, 6, 8, 10, 12, 16, 24, 32]
GRID = range(4, 33)
A, B = -6.0, 3.0  # truth: logit(power) = A + B log(n); 14% at n = 4, 56% at 8, 91% at 16, 99% at 32


def truth(n):
    return expit(A + B * np.log(np.asarray(n, dtype=float)))


def synthetic_raw(p_of_n, reps: int, seed: int, test: str = "t", scale: float = 1.0, sizes=SIZES,
                  designs=None) -> pd.DataFrame:
    """A raw table as power_grid returns it: ``reps`` cohorts per design, each a hit with probability p(n)."""
    rng = np.random.default_rng(seed)
    designs = designs if designs is not None else [(n, n) for n in sizes]
    rows = []
    for a, b in designs:
        p = float(p_of_n(power.harmonic_n(a, b)))
        for r, hit in enumerate(rng.random(reps) < p):
            rows.append({"n_per_group": a if a == b else f"{a}/{b}", "n_cr": a, "n_nr": b, "effect_scale": scale,
                         "rep": r, "test": test, "effect": 0.1, "p": 0.5, "significant": bool(hit)})
    return pd.DataFrame(rows)


def curve(fit: pd.DataFrame, test: str = "t", scale: float = 1.0) -> pd.DataFrame:
    c = fit[(fit["test"] == test) & (fit["effect_scale"] == scale)]
    return c[c["n_per_group"].map(lambda v: isinstance(v, (int, np.integer)))].sort_values("n_eff")


def test_firth_matches_penalised_likelihood():
    """firth_logistic's fixed point maximises the Jeffreys-penalised log-likelihood (checked by direct numerical
    maximisation), also where the plain maximum-likelihood fit does not exist (separation, no hits)."""
    x = np.log([4, 6, 8, 12, 16, 32.0])
    X = np.column_stack([np.ones_like(x), x])
    m = np.full(6, 10.0)

    def neg_penalised(b, k):
        p = expit(X @ b)
        w = m * p * (1 - p)
        ll = np.sum(k * np.log(p) + (m - k) * np.log1p(-p))
        return -(ll + 0.5 * np.linalg.slogdet((X * w[:, None]).T @ X)[1])

    for k in ([1, 3, 5, 8, 9, 10], [5, 10, 10, 10, 10, 10], [0, 0, 0, 0, 0, 0], [10] * 6):
        k = np.asarray(k, float)
        beta, cov = power.firth_logistic(k, m, X)
        ref = minimize(neg_penalised, np.zeros(2), args=(k,), method="Nelder-Mead",
                       options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000}).x
        assert np.allclose(beta, ref, atol=1e-5), (k, beta, ref)
        assert np.all(np.isfinite(cov)) and np.all(np.diag(cov) > 0)


def test_fit_recovers_logistic_truth_and_band_covers():
    """40 synthetic tables (30 cohorts per design): the pointwise 95% band covers the true power at about its
    nominal rate (a band too narrow or a biased curve fails), the slope's CI covers the true slope, and each
    fitted curve stays close to the truth."""
    raw = pd.concat([synthetic_raw(truth, 30, seed, test=f"t{seed}") for seed in range(40)], ignore_index=True)
    fit = power.fit_power_curve(raw, n_grid=GRID)
    covered, slope_covered, worst = [], [], 0.0
    for seed in range(40):
        c = curve(fit, f"t{seed}")
        p = truth(c["n_eff"])
        covered.append(((c["fitted_ci_low"] <= p) & (p <= c["fitted_ci_high"])).mean())
        slope_covered.append(c["slope_ci_low"].iloc[0] <= B <= c["slope_ci_high"].iloc[0])
        worst = max(worst, float(np.abs(c["fitted_power"] - p).max()))
    assert 0.88 <= np.mean(covered) <= 0.995, np.mean(covered)
    assert np.mean(slope_covered) >= 0.85, np.mean(slope_covered)
    assert worst < 0.25, worst
    c = curve(fit, "t0")
    assert np.abs(c["fitted_power"] - truth(c["n_eff"])).max() < 0.12


def test_increasing_truth_gives_monotone_curve_inside_its_band():
    fit = power.fit_power_curve(synthetic_raw(truth, 20, 1), n_grid=GRID)
    c = curve(fit)
    assert list(c["n_per_group"]) == list(GRID)
    assert (np.diff(c["fitted_power"]) > 0).all()
    assert (c["fitted_ci_low"] <= c["fitted_power"]).all() and (c["fitted_power"] <= c["fitted_ci_high"]).all()
    assert ((c["fitted_ci_low"] > 0) & (c["fitted_ci_high"] < 1)).all()
    assert set(c["trend"]) == {"increasing"} and c["slope"].iloc[0] > 0 and not c["separated"].any()


def test_flat_null_gives_flat_curve_near_false_positive_rate():
    """A null (every design's hit rate 2.5%, the directional test's size): a flat fit (slope CI includes 0) whose
    fitted power stays near 2.5% at every n and whose band covers it; not forced to increase."""
    fpr = 0.025
    fit = power.fit_power_curve(synthetic_raw(lambda n: fpr, 40, 3), n_grid=GRID)
    c = curve(fit)
    assert set(c["trend"]) == {"flat"}
    assert c["slope_ci_low"].iloc[0] < 0 < c["slope_ci_high"].iloc[0]
    assert c["fitted_power"].between(0.005, 0.07).all(), c["fitted_power"].describe()
    assert c["fitted_power"].max() - c["fitted_power"].min() < 0.05
    assert ((c["fitted_ci_low"] <= fpr) & (fpr <= c["fitted_ci_high"])).all()
    assert power.smallest_n_from_fit(fit)["t"]["n"] is None


def test_a_decreasing_truth_is_reported_as_decreasing():
    fit = power.fit_power_curve(synthetic_raw(lambda n: 1 - truth(n), 30, 5), n_grid=GRID)
    c = curve(fit)
    assert set(c["trend"]) == {"decreasing"} and (np.diff(c["fitted_power"]) < 0).all()


@pytest.mark.parametrize("case", ["all hits", "no hits", "separated"])
def test_degenerate_tables_give_finite_curves(case):
    """Where the plain maximum-likelihood fit does not exist, Firth's fit is finite, flagged ``separated``, and
    sensible: near 1 (0) everywhere when every (no) cohort is a hit; rising steeply where hits start."""
    p_of_n = {"all hits": lambda n: 1.0, "no hits": lambda n: 0.0, "separated": lambda n: float(n >= 8)}[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no separation or overflow warnings either
        fit = power.fit_power_curve(synthetic_raw(p_of_n, 20, 7), n_grid=GRID)
    c = curve(fit)
    cols = ["fitted_power", "fitted_ci_low", "fitted_ci_high", "slope", "slope_ci_low", "slope_ci_high"]
    assert np.isfinite(c[cols].to_numpy(float)).all() and c["separated"].all()
    assert ((c["fitted_ci_low"] <= c["fitted_power"]) & (c["fitted_power"] <= c["fitted_ci_high"])).all()
    if case == "all hits":
        assert (c["fitted_power"] > 0.95).all() and (c["fitted_ci_low"] > 0.5).all()
    elif case == "no hits":
        assert (c["fitted_power"] < 0.05).all() and (c["fitted_ci_high"] < 0.5).all()
    else:
        assert set(c["trend"]) == {"increasing"}
        assert c.loc[c["n_per_group"] == 4, "fitted_power"].item() < 0.2
        assert c.loc[c["n_per_group"] == 12, "fitted_power"].item() > 0.8


def test_observed_columns_unbalanced_design_and_classifier_rows():
    """Observed power and exact CI at each simulated design are summarise_power's; an unbalanced design sits at
    the harmonic mean of its groups; grid-only sizes have no observed values; classifier rows are left out."""
    raw = synthetic_raw(truth, 12, 9, designs=[(4, 4), (8, 8), (11, 10), (16, 16)])
    clf = raw[raw["n_per_group"] == 8].assign(test="classifier_auc", significant=None, effect=0.8, p=None)
    raw = pd.concat([raw, clf], ignore_index=True)
    fit = power.fit_power_curve(raw, n_grid=[4, 6, 8])
    assert set(fit["test"]) == {"t"}
    obs = fit[fit["n_cohorts"].notna()].set_index("n_per_group")
    summ = power.summarise_power(raw)
    summ = summ[summ["test"] == "t"].set_index("n_per_group")
    for col in ("power", "power_ci_low", "power_ci_high"):
        assert np.allclose(obs.loc[summ.index, col].astype(float), summ[col].astype(float)), col
    assert obs.loc["11/10", "n_eff"] == pytest.approx(2 / (1 / 11 + 1 / 10))
    grid_only = fit[fit["n_per_group"] == 6]
    assert len(grid_only) == 1 and grid_only["power"].isna().all() and grid_only["fitted_power"].notna().all()
    assert list(fit["n_eff"]) == sorted(fit["n_eff"])


def test_smallest_n_from_fit_reads_curve_and_band():
    """On a hand-made curve: n where the fitted power first reaches the target, n_low where the band's upper edge
    does, n_high where its lower edge does; None beyond the grid. On a well-estimated truth: the true n."""
    n = np.arange(4, 11)
    fitted = np.array([0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95])
    hand = pd.DataFrame({"test": "t", "effect_scale": 1.0, "n_per_group": n, "n_eff": n.astype(float),
                         "fitted_power": fitted, "fitted_ci_low": fitted - 0.12, "fitted_ci_high": fitted + 0.12,
                         "trend": "increasing", "slope": 2.0})
    hand = pd.concat([hand, hand.assign(test="u", fitted_power=fitted / 2, fitted_ci_low=fitted / 3,
                                        fitted_ci_high=fitted / 2 + 0.1)])
    got = power.smallest_n_from_fit(hand, 0.8, 1.0)
    assert got["t"] == {"n": 7, "n_low": 6, "n_high": 10, "min_n": 4, "max_n": 10, "trend": "increasing", "slope": 2.0}
    assert got["u"]["n"] is None and got["u"]["n_high"] is None and got["u"]["n_low"] is None
    n_true = int(np.ceil(np.exp((logit(0.8) - A) / B)))  # 12
    fit = power.fit_power_curve(synthetic_raw(truth, 100, 11), n_grid=GRID)
    s = power.smallest_n_from_fit(fit)["t"]
    assert s["n_low"] <= n_true <= s["n_high"] and abs(s["n"] - n_true) <= 2, s


def test_power_figure_draws_fitted_curves_and_bands():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.collections import PolyCollection

    from helpers.report import plots

    raw = pd.concat([synthetic_raw(truth, 10, 2, test="a"), synthetic_raw(truth, 10, 4, test="a", scale=0.5),
                     synthetic_raw(lambda n: 0.0, 10, 6, test="b")], ignore_index=True)
    summary, fit = power.summarise_power(raw), power.fit_power_curve(raw, n_grid=GRID)
    fig = plots.power_figure(summary, fit=fit)
    bands = [sum(isinstance(c, PolyCollection) for c in ax.collections) for ax in fig.axes[:2]]
    assert bands == [2, 1]  # one band per test and effect scale
    assert len(fig.axes[0].lines) >= 2 + 1  # two fitted curves and the 80% line
    plain = plots.power_figure(summary)
    assert sum(isinstance(c, PolyCollection) for c in plain.axes[0].collections) == 0
    matplotlib.pyplot.close("all")
