"""Prognosis: Kaplan-Meier by a pre-declared split of a score, log-rank test, Cox hazard ratio (lifelines)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def survival_by_score(score: pd.Series, time: pd.Series, event: pd.Series, split: str = "median") -> dict:
    """Split patients at the median score (pre-declared), log-rank test high vs low, and a Cox model of the
    standardised continuous score (hazard ratio per SD with 95% CI)."""
    from lifelines import CoxPHFitter
    from lifelines.statistics import logrank_test

    if split != "median":
        raise ValueError("only the pre-declared median split is implemented")
    df = pd.DataFrame({"score": score, "time": time, "event": event}).dropna()
    if df["event"].sum() < 5:
        raise ValueError(f"only {int(df['event'].sum())} events: too few for a survival analysis")
    high = df["score"] > df["score"].median()
    lr = logrank_test(df.loc[high, "time"], df.loc[~high, "time"], df.loc[high, "event"], df.loc[~high, "event"])
    z = (df["score"] - df["score"].mean()) / df["score"].std(ddof=1)
    cph = CoxPHFitter().fit(pd.DataFrame({"z": z, "time": df["time"], "event": df["event"]}), "time", "event")
    ci = np.exp(cph.confidence_intervals_.loc["z"].to_numpy())
    return {"hazard_ratio_per_sd": float(cph.hazard_ratios_["z"]), "hr_ci_low": float(ci[0]), "hr_ci_high": float(ci[1]),
            "cox_p": float(cph.summary.loc["z", "p"]), "logrank_p": float(lr.p_value), "n": int(len(df)),
            "n_events": int(df["event"].sum()), "n_high": int(high.sum()), "split": "median"}


def km_curves(score: pd.Series, time: pd.Series, event: pd.Series) -> dict[str, pd.DataFrame]:
    """Kaplan-Meier survival tables for the high and low halves (median split)."""
    from lifelines import KaplanMeierFitter

    df = pd.DataFrame({"score": score, "time": time, "event": event}).dropna()
    high = df["score"] > df["score"].median()
    out = {}
    for name, m in (("high", high), ("low", ~high)):
        km = KaplanMeierFitter().fit(df.loc[m, "time"], df.loc[m, "event"], label=name)
        out[name] = km.survival_function_.join(km.confidence_interval_)
    return out
