"""Calibration of the whole chain (helpers.validation.calibration, `make calibrate`).

Fast: the summarising functions (exact binomial CI, verdict counts with not-testable rows apart, the pooled null
row, predicted rates among testable cohorts, the reading checks), seeds and the cohort definitions it writes.
Slow: the short version of `make calibrate`, one null and one planted cohort of a small design through every
notebook but 09 in a scratch project root, must give a well-formed calibration.csv, and a rerun skips both."""
from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pytest

from helpers.data.cohort import load_cohort
from helpers.validation import calibration as cal

CHECKOUT_OUTPUTS = ("data/cohorts", "results", "figures", "data/processed")


def _runs(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    """(cohort, kind, claim, verdict) rows as a runs table."""
    return pd.DataFrame([{"cohort": c, "kind": k, "seed": 0, "claim": cl, "verdict": v, "p": 0.5}
                         for c, k, cl, v in rows])


# -- fast unit tests -------------------------------------------------------------------------------------------------

def test_cohort_seeds_are_deterministic_and_disjoint():
    planted = [cal.cohort_seed(100, "planted", i) for i in range(50)]
    null = [cal.cohort_seed(100, "null", i) for i in range(50)]
    assert planted == [cal.cohort_seed(100, "planted", i) for i in range(50)]
    assert len(set(planted)) == 50 and len(set(null)) == 50 and not set(planted) & set(null)
    with pytest.raises(ValueError, match="unknown"):
        cal.cohort_seed(100, "other", 0)


def test_binomial_rate_is_the_exact_clopper_pearson_interval():
    rate, lo, hi = cal.binomial_rate(1, 20)
    assert rate == 0.05 and lo == pytest.approx(0.001265, abs=1e-5) and hi == pytest.approx(0.248733, abs=1e-5)
    rate, lo, hi = cal.binomial_rate(0, 20)
    assert rate == 0 and lo == 0 and hi == pytest.approx(0.168433, abs=1e-5)
    rate, lo, hi = cal.binomial_rate(20, 20)
    assert rate == 1 and hi == 1 and lo == pytest.approx(0.831567, abs=1e-5)
    assert all(np.isnan(v) for v in cal.binomial_rate(0, 0))


def test_counts_keep_not_testable_and_not_applicable_out_of_n_runs():
    a, b = "claim A", "claim B"
    runs = _runs([("n0", "null", a, "reproduced"), ("n1", "null", a, "not reproduced"),
                  ("n2", "null", a, "not testable: only 1 CR patient"), ("n3", "null", a, "not applicable"),
                  ("p0", "planted", a, "reproduced"), ("p1", "planted", a, "reproduced"),
                  ("p0", "planted", b, "not testable: no blood")])
    t = cal.summarise_runs(runs, [a, b]).set_index(["claim", "cohort_kind"])
    assert t.loc[(a, "null"), ["n_runs", "n_reproduced", "n_not_testable", "n_not_applicable"]].tolist() == [2, 1, 1, 1]
    assert t.loc[(a, "null"), "rate"] == 0.5
    assert t.loc[(a, "planted"), ["n_runs", "n_reproduced"]].tolist() == [2, 2]
    assert t.loc[(b, "planted"), ["n_runs", "n_not_testable"]].tolist() == [0, 1]
    assert np.isnan(t.loc[(b, "planted"), "rate"]) and np.isnan(t.loc[(b, "planted"), "ci_low"])
    assert t.loc[(b, "null"), ["n_runs", "n_not_testable", "n_not_applicable"]].tolist() == [0, 0, 0]
    assert list(t.reset_index().columns) == cal.SUMMARY_COLUMNS


def test_pooled_row_sums_the_null_rows_only():
    claims = [f"c{i}" for i in range(4)]
    rows = [(f"n{j}", "null", c, "reproduced" if (i == 0 and j < 2) else "not reproduced")
            for i, c in enumerate(claims) for j in range(5)]
    rows += [(f"p{j}", "planted", c, "reproduced") for c in claims for j in range(5)]
    rows += [("n9", "null", "c3", "not testable: x")]
    t = cal.summarise_runs(_runs(rows), claims)
    pooled = t[t["claim"] == cal.POOLED]
    assert len(pooled) == 1 and pooled["cohort_kind"].iloc[0] == "null"
    p = pooled.iloc[0]
    assert (p["n_runs"], p["n_reproduced"], p["n_not_testable"]) == (20, 2, 1)
    lo, hi = cal.binomial_rate(2, 20)[1:]
    assert p["rate"] == 0.1 and p["ci_low"] == pytest.approx(lo) and p["ci_high"] == pytest.approx(hi)
    assert len(t) == 2 * len(claims) + 1


def test_unknown_verdict_is_an_error():
    with pytest.raises(ValueError, match="unknown scorecard verdict 'maybe'"):
        cal.summarise_runs(_runs([("n0", "null", "c", "maybe")]), ["c"])


def test_predicted_rates_are_among_testable_cohorts_and_na_where_not_modelled():
    tests = cal.power_tests_by_claim()
    claim, test = next(iter(tests.items()))
    raw = pd.DataFrame([{"n_per_group": 6, "n_cr": 6, "n_nr": 6, "effect_scale": 1.0, "rep": r, "test": test,
                         "effect": None if r >= 8 else 0.1, "p": None if r >= 8 else 0.01, "significant": r < 4}
                        for r in range(10)])
    pred = cal.predicted_rates(raw, "planted", "model").set_index("claim")
    assert pred.loc[claim, "predicted_power"] == 4 / 8  # 4 significant of the 8 testable cohorts
    assert "testable in 8 of 10" in pred.loc[claim, "note"]
    prognosis = next(c for c in cal.scorecard_claims() if c.startswith("prognosis"))
    assert np.isnan(pred.loc[prognosis, "predicted_power"]) and "bulk" in pred.loc[prognosis, "note"]
    assert set(pred.index) == set(cal.scorecard_claims())


def test_checks_flag_a_miscalibrated_null_row_and_a_missed_prediction():
    assert cal.max_null_hits(20) == 3
    claims = ["c0", "c1"]
    rows = [(f"n{j}", "null", "c0", "reproduced" if j < 5 else "not reproduced") for j in range(20)]
    rows += [(f"n{j}", "null", "c1", "not reproduced") for j in range(20)]
    rows += [(f"p{j}", "planted", "c0", "reproduced" if j < 2 else "not reproduced") for j in range(20)]
    predicted = pd.DataFrame([{"claim": "c0", "cohort_kind": "planted", "predicted_power": 0.9, "note": ""}])
    table = cal.summarise_runs(_runs(rows), claims, predicted)
    checks = {c["check"]: c["passed"] for c in cal.calibration_checks(table)}
    assert checks["null: c0 at most 3 of 20"] is False and checks["null: c1 at most 3 of 20"] is True
    assert checks["planted: c0 predicted 0.900 inside the rate's CI"] is False
    assert checks["pooled null rate CI contains 0.05"] is True  # 5 of 40


def test_expected_null_count_uses_each_rows_own_rate():
    """A chain whose rows are one-sided at 0.025 and never fire: 0 of 80 fails 'CI contains 0.05' but is consistent
    with the rows' own rates (expected 2); 12 of 80 is not (too many)."""
    claims = ["c0", "c1"]
    predicted = pd.DataFrame([{"claim": c, "cohort_kind": "null", "predicted_power": 0.025, "note": ""} for c in claims])
    quiet = [(f"n{j}", "null", c, "not reproduced") for j in range(40) for c in claims]
    table = cal.summarise_runs(_runs(quiet), claims, predicted)
    expected, p_low, p_high = cal.expected_null_count(table)
    assert expected == pytest.approx(2.0) and p_low == pytest.approx(0.975 ** 80) and p_high == pytest.approx(1.0)
    checks = {c["check"].split(" (")[0]: c["passed"] for c in cal.calibration_checks(table)}
    assert checks["pooled null rate CI contains 0.05"] is False
    assert checks["pooled null count consistent with the rows' own false-positive rates"] is True
    noisy = [(f"n{j}", "null", c, "reproduced" if j < 6 else "not reproduced") for j in range(40) for c in claims]
    checks = {c["check"].split(" (")[0]: c["passed"] for c in cal.calibration_checks(cal.summarise_runs(_runs(noisy), claims, predicted))}
    assert checks["pooled null count consistent with the rows' own false-positive rates"] is False


def test_calibration_cohorts_are_valid_and_written_outside_the_checkout(tmp_path, root):
    design = cal.Design(6, 6, 0, 0, bm_cells=300, pb_cells=100, analysis={"min_cells": 5})
    project = cal.link_project(tmp_path / "scratch", root)
    cohorts = cal.planned_cohorts(2, 500)
    cal.prepare_cohorts(project, cohorts, cal.source_configs(root), design)
    for name, kind, seed in cohorts:
        c = load_cohort(name, root=project)
        assert c.seed == seed and c.simulation["cells"]["BM"]["per_sample"] == 300
        assert c.analysis("min_cells") == 5 and c.validation_tissue is None and set(c.samples["tissue"]) == {"BM"}
        assert c.samples["response"].value_counts().to_dict() == {"CR": 6, "NR": 6}
        strengths = [e["strength"] for e in c.simulation["effects"].values()]
        assert (max(strengths) == 0) == (kind == "null")
    assert not cal.write_cohort(project, cohorts[0][0], cal.cohort_files(
        cal.calibration_config(cal.source_configs(root)["null"], cohorts[0][0], "null", cohorts[0][2], design),
        cal.calibration_samples(design, cohorts[0][2])))  # same definition: kept, nothing rebuilt
    leaked = [p for d in CHECKOUT_OUTPUTS for p in (root / d).glob("cal_*")]
    assert not leaked, f"calibration cohorts written into the checkout: {leaked}"


# -- slow: the short version of `make calibrate` -----------------------------------------------------------------------

SHORT_DESIGN = cal.Design(3, 3, 2, 2, bm_cells=300, pb_cells=150, n_genes=3000, analysis={"min_cells": 5, "n_perm": 50})


JOBS = int(os.environ.get("DR_JOBS", "2"))  # the two cohorts side by side, one thread each (DR_JOBS=1: one at a time)


@pytest.fixture(scope="module")
def short_calibration(tmp_path_factory):
    """One null and one planted cohort of a small design through notebooks 00-10 (09 skipped)."""
    base = tmp_path_factory.mktemp("calibration")
    t0 = time.time()
    res = cal.calibrate(1, SHORT_DESIGN, 4242, base / "validation", scratch=base / "scratch", jobs=JOBS, threads=1,
                        power_reps=4, progress=False)
    return res, base, time.time() - t0


@pytest.mark.slow
def test_short_calibration_writes_a_well_formed_summary(short_calibration):
    res, base, seconds = short_calibration
    assert not res["failures"], res["failures"]
    print(f"\nshort calibration (1 null + 1 planted cohort): {seconds:.0f} s")
    paths = res["paths"]
    assert all(p.exists() and p.stat().st_size > 0 for p in paths.values()), paths
    table = cal.read_calibration_table(paths["csv"])
    assert list(table.columns) == cal.SUMMARY_COLUMNS
    claims = cal.scorecard_claims()
    body = table[table["claim"] != cal.POOLED]
    assert sorted(zip(body["claim"], body["cohort_kind"])) == sorted((c, k) for c in claims for k in cal.KINDS)
    assert ((body["n_runs"] + body["n_not_testable"] + body["n_not_applicable"]) == 1).all()
    assert (body["n_reproduced"] <= body["n_runs"]).all()
    tested = body[body["n_runs"] > 0]
    assert np.allclose(tested["rate"], tested["n_reproduced"] / tested["n_runs"])
    assert ((tested["ci_low"] <= tested["rate"]) & (tested["rate"] <= tested["ci_high"])).all()
    assert body.loc[body["n_runs"] == 0, "rate"].isna().all()
    covered = body["claim"].isin(cal.power_tests_by_claim())
    assert body.loc[~covered, "predicted_power"].isna().all()
    assert body.loc[~covered, "note"].str.contains("not predicted").all()
    modelled = body.loc[covered]
    never_testable = modelled["note"].str.contains("testable in 0 of")  # possible with 4 simulated cohorts
    assert modelled.loc[~never_testable, "predicted_power"].between(0, 1).all()
    assert modelled.loc[never_testable, "predicted_power"].isna().all()
    pooled = table[table["claim"] == cal.POOLED].iloc[0]
    null = body[body["cohort_kind"] == "null"]
    assert pooled["cohort_kind"] == "null" and pooled["n_runs"] == null["n_runs"].sum()
    assert pooled["n_reproduced"] == null["n_reproduced"].sum()
    runs = cal.read_calibration_table(paths["runs"])
    assert set(cal.RUN_COLUMNS) <= set(runs.columns) and len(runs) == 2 * len(claims)
    assert runs.groupby("kind")["seed"].first().to_dict() == {"null": cal.cohort_seed(4242, "null", 0),
                                                              "planted": cal.cohort_seed(4242, "planted", 0)}
    predicted = table[table["claim"] != cal.POOLED][["claim", "cohort_kind", "predicted_power", "note"]]
    recomputed = cal.summarise_runs(runs, cal.claims_in_order(runs), predicted)  # the summary from the runs file
    pd.testing.assert_frame_equal(recomputed, table, check_dtype=False)
    md = paths["md"].read_text()
    assert "K = 1 null" in md and "How to read it" in md and cal.POOLED in md


@pytest.mark.slow
def test_rerun_skips_finished_cohorts(short_calibration):
    res, base, _ = short_calibration
    cards = sorted((base / "scratch" / "results").glob("cal_*/scorecard.csv"))
    assert len(cards) == 2
    stamps = [c.stat().st_mtime_ns for c in cards]
    t0 = time.time()
    again = cal.calibrate(1, SHORT_DESIGN, 4242, base / "validation2", scratch=base / "scratch", jobs=JOBS, threads=1,
                          power_reps=4, progress=False)
    assert [c.stat().st_mtime_ns for c in cards] == stamps, "a finished cohort was run again"
    assert time.time() - t0 < 60
    pd.testing.assert_frame_equal(cal.read_calibration_table(again["paths"]["csv"]),
                                  cal.read_calibration_table(res["paths"]["csv"]))


def test_a_comment_change_keeps_a_finished_cohort(tmp_path):
    """Only what a definition says invalidates a finished cohort: a new header comment does not, a new seed does."""
    files = {"cohort.yaml": "# generated by A\nname: c\nseed: 1\n", "samples.csv": "sample_id\ns1\n"}
    assert cal.write_cohort(tmp_path, "c", files) is True
    done = tmp_path / "results" / "c" / "scorecard.csv"
    done.parent.mkdir(parents=True)
    done.write_text("x")
    assert cal.write_cohort(tmp_path, "c", {**files, "cohort.yaml": "# generated by B\nname: c\nseed: 1\n"}) is False
    assert done.exists() and "by B" in (tmp_path / "data" / "cohorts" / "c" / "cohort.yaml").read_text()
    assert cal.write_cohort(tmp_path, "c", {**files, "cohort.yaml": "name: c\nseed: 2\n"}) is True
    assert not done.exists()
