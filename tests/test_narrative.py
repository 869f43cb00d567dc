"""Conclusions written from findings records (helpers.report.narrative): the numbers in the text are the record's."""
from __future__ import annotations

import numpy as np
import pandas as pd

from helpers.analysis import classifier as clf
from helpers.claims import not_testable
from helpers.report import narrative


def _auc_result(auc: float, p: float, n_cr: int = 6, n_nr: int = 5) -> dict:
    y = np.array([0] * n_cr + [1] * n_nr)
    lo, hi = clf.auc_ci(auc, y)
    return {"auc": auc, "ci_low": lo, "ci_high": hi, "permutation_p": p, "null": np.full(99, 0.5), "y": y,
            "n_splits": 3}


def _findings(pb: bool = True) -> dict:
    res = {"bm_34": _auc_result(0.9, 0.01), "bm_top8": _auc_result(0.8, 0.03),
           "selection": pd.Series({"RELB": 1.0, "NFKB2": 0.6})}
    cal = clf.study_auc_calibration((10, 11), (10, 10), 0.5)
    return clf.classifier_findings(res, _auc_result(0.7, 0.2) if pb else None, None,
                                   None if pb else not_testable("no blood samples"), ["RELB", "NFKB2", "XYZ"],
                                   ["RELB", "NFKB2"], ["XYZ"], ["RELB"], 99, 1, 5, cal)


def test_classifier_findings_record():
    f = _findings()
    assert set(f["claims"]) == {"auc_bm_34", "auc_bm_top8", "auc_pb_top8"}
    assert f["claims"]["auc_bm_34"]["effect"] == 0.9 and f["claims"]["auc_bm_34"]["p"] == 0.01
    assert f["n_bm"] == {"CR": 6, "NR": 5} and f["n_pb"] == {"CR": 6, "NR": 5}
    assert f["panel_missing_genes"] == ["XYZ"] and f["n_panel_genes_used"] == 2
    assert f["permutation"]["n_perm"] == 99 and "blood" in f["permutation"]
    assert "3-fold x 5" in f["cv"]


def test_classifier_conclusion_states_the_record():
    text = narrative.classifier_conclusion(_findings(), 8, None, None)
    assert "AUC 0.90" in text and "permutation p = 0.01" in text and "**reproduced**" in text
    assert "AUC 0.70" in text and "**not reproduced**" in text  # blood p = 0.2
    assert "reduced panel: 2 of 3 genes; missing XYZ" in text
    assert "binormal" in text and "11 CR vs 10 NR" in text
    text = narrative.classifier_conclusion(_findings(pb=False), 8, None, not_testable("no blood samples"))
    assert "Blood validation not testable: no blood samples" in text


def test_atlas_conclusion_reports_power_and_single_draw_odds():
    mech = pd.DataFrame({"mechanism": ["cd38_loss", "proteasome"], "effect": [0.9, 0.1], "ci_low": [0.2, -0.5],
                         "ci_high": [1.5, 0.6], "q": [0.01, 0.8], "significant": [True, False]})
    rate = {"rate": 0.35, "ci_low": 0.26, "ci_high": 0.45}
    findings = {"stage2": [{"feature": "CD38"}], "n_features": 40, "n_significant_q005": 1,
                "power": {"n_reps": 100, "per_mechanism": {"cd38_loss": {"planted": 0.22, "null": 0.0}},
                          "single_draw": {"planted": {"p_any_planted_found": rate, "mean_planted_found": 0.4,
                                                      "p_any_unplanted_significant": {**rate, "rate": 0.02}},
                                          "null": {"p_any_planted_found": rate, "mean_planted_found": 0.0,
                                                   "p_any_unplanted_significant": {**rate, "rate": 0.03}}}}}
    text = narrative.atlas_conclusion(findings, mech, None, None, "NR", "CR")
    assert "Stage 1: 1 of 2 mechanisms" in text and "cd38_loss shift +0.90" in text and "toward resistance" in text
    assert "Stage 2: 1 features" in text and "(CD38)" in text
    assert "cd38_loss 22% (null 0%)" in text and "probability 35% [26%, 45%]" in text and "3% [26%, 45%]" in text
    text = narrative.atlas_conclusion({}, None, not_testable("no tumour cells"), None, "NR", "CR")
    assert text.startswith("Resistance atlas not testable: no tumour cells")
