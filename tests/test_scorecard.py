"""Scorecard verdict rules on hand-made findings, and the report renders (headless Chromium where present)."""
from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from browser import chromium, measure_page
from PIL import Image

from helpers.claims import CLAIMS, record
from helpers.report.page import compressed_png, render_report
from helpers.report.scorecard import build_scorecard

INFLAMMATION = next(n for n, c in CLAIMS.items() if c.label.startswith("inflammatory"))  # the row's claim


def _rec(effect, p, lo, hi):
    return {"effect": effect, "p": p, "ci_low": lo, "ci_high": hi, "direction": "up" if effect > 0 else "down"}


def _auc(auc, lo, hi, p):
    """An AUC claim record as notebook 07 writes it (helpers.claims.record, null 0.5)."""
    return record(auc, lo, hi, p, 6, 6, "test", null=0.5)


@pytest.fixture()
def findings(tmp_path):
    d = tmp_path / "findings"
    d.mkdir()
    (d / "03.json").write_text(json.dumps({"claims": {INFLAMMATION: _rec(0.6, 0.01, 0.2, 0.9)}}))
    (d / "04.json").write_text(json.dumps({"claims": {"classical_mono_phagocytosis": _rec(0.3, 0.01, 0.1, 0.5),
                                                      "ifn_mono_nfkb": _rec(1.0, 0.2, -0.2, 2.0)}}))
    (d / "07.json").write_text(json.dumps({"claims": {"auc_bm_34": _auc(0.8, 0.6, 0.95, 0.01),
                                                      "auc_bm_top8": _auc(0.6, 0.4, 0.8, 0.2), "auc_pb_top8": None}}))
    return d


def test_verdicts_by_rule(findings):
    card = build_scorecard(findings).set_index("claim")
    v = card["verdict"]
    assert v["inflammatory BME (cytokine signalling up in NR)"] == "reproduced"
    assert v["monocyte phagocytosis, classical (down in NR)"] == "not reproduced"  # wrong direction
    assert v["IFN-monocyte NF-kB (up in NR)"] == "not reproduced"  # p = 0.2
    assert v["CD54dim NK CD16 (down in NR)"] == "not applicable"  # no 05.json
    assert v["AUC 34 NF-kB genes, marrow"] == "reproduced"
    assert v["AUC top-8, marrow"] == "not reproduced"  # permutation p = 0.2
    assert v["AUC top-8, blood"] == "not applicable"
    assert len(card) == 10


def _auc_findings(d, **aucs):
    """07.json with the given (auc, ci_low, ci_high, permutation_p) per AUC key."""
    (d / "07.json").write_text(json.dumps({"claims": {key: _auc(*v) for key, v in aucs.items()}}))


def test_auc_verdict_uses_permutation_p_and_direction(tmp_path):
    """Every AUC row, blood included, is judged by its permutation p (< 0.05) and the AUC above 0.5; the CI does
    not enter the verdict (a CI above 0.5 with p = 0.3 is not reproduced, one covering 0.5 with p = 0.01 is)."""
    from helpers.claims import verdict
    from helpers.report.scorecard import COLUMNS

    _auc_findings(tmp_path, auc_bm_34=(0.7, 0.55, 0.85, 0.3), auc_bm_top8=(0.62, 0.45, 0.8, 0.01),
                  auc_pb_top8=(0.2, 0.05, 0.35, 0.001))
    card = build_scorecard(tmp_path).set_index("claim")
    assert list(card.reset_index().columns) == COLUMNS
    assert {"permutation_p", "study_value_in_ci", "power_at_design", "null_twin_verdict"} <= set(COLUMNS)
    assert card.loc["AUC 34 NF-kB genes, marrow", "verdict"] == "not reproduced"
    assert card.loc["AUC top-8, marrow", "verdict"] == "reproduced"
    assert card.loc["AUC top-8, blood", "verdict"] == "not reproduced"  # below 0.5: the wrong direction
    assert card.loc["AUC top-8, blood", "permutation_p"] == 0.001
    assert "permutation" in card.loc["AUC top-8, blood", "rule"] and "blood" in card.loc["AUC top-8, blood", "rule"]
    assert "Hanley-McNeil" in card.loc["AUC 34 NF-kB genes, marrow", "rule"]
    assert pd.isna(card.loc["inflammatory BME (cytokine signalling up in NR)", "permutation_p"])
    auc = CLAIMS["auc_pb_top8"]
    assert verdict(auc, {**_auc(0.9, 0.8, 1.0, 0.049), "p": None}) == "not applicable"
    assert verdict(auc, _auc(0.9, 0.8, 1.0, 0.049)) == "reproduced"
    assert verdict(auc, _auc(0.5, 0.3, 0.7, 0.001)) == "not reproduced"  # AUC 0.5: no direction


def test_study_value_in_ci_power_and_null_twin(findings, tmp_path):
    """study_value_in_ci: an AUC inside our CI; a direction when our whole CI is on the study's side. Power at the
    design comes from 09.json (NA with a note when 09 does not simulate the test); the null twin's verdict from
    results/<twin>/scorecard.csv of the twin the cohort names (none: no verdicts)."""
    from helpers.report.scorecard import null_twin_verdicts, study_value_in_ci

    NULL_TWIN = "ifm2017_null"

    assert study_value_in_ci(0.96, 0.85, 1.0) is True and study_value_in_ci(0.96, 0.5, 0.9) is False
    assert study_value_in_ci("up", 0.1, 0.9) is True and study_value_in_ci("up", -0.1, 0.9) is False
    assert study_value_in_ci("down", -0.9, -0.1) is True and study_value_in_ci("down", 0.1, 0.9) is False
    assert study_value_in_ci("HR > 1", 1.1, 1.5) is True and study_value_in_ci("HR > 1", 0.9, 1.5) is False
    assert study_value_in_ci("up", None, None) is None
    (findings / "09.json").write_text(json.dumps({"default_design": {"power": {
        INFLAMMATION: {"power": 0.9}, "auc_bm_34": {"power": 0.4}}}}))
    results = tmp_path / "results"
    (results / NULL_TWIN).mkdir(parents=True)
    twin_card = build_scorecard(findings).assign(verdict="not reproduced")
    twin_card.to_csv(results / NULL_TWIN / "scorecard.csv", index=False)
    twin = null_twin_verdicts(NULL_TWIN, results)
    assert null_twin_verdicts(None, results) == {} and null_twin_verdicts("x", tmp_path / "none") == {}
    card = build_scorecard(findings, null_twin=twin).set_index("claim")
    infl, auc = "inflammatory BME (cytokine signalling up in NR)", "AUC 34 NF-kB genes, marrow"
    assert card.loc[infl, "study_value_in_ci"] is True  # CI 0.2-0.9, up
    assert card.loc["monocyte phagocytosis, classical (down in NR)", "study_value_in_ci"] is False
    assert card.loc[auc, "study_value_in_ci"] is False  # 0.96 outside 0.6-0.95
    assert card.loc[infl, "power_at_design"] == 0.9 and card.loc[auc, "power_at_design"] == 0.4
    assert pd.isna(card.loc["AUC top-8, marrow", "power_at_design"])
    assert "notebook 09 does not simulate" in card.loc["AUC top-8, marrow", "note"]
    assert (card["null_twin_verdict"] == "not reproduced").all()
    assert build_scorecard(findings)["null_twin_verdict"].isna().all()


def test_report_has_one_section_per_claim_and_renders_at_1280(findings, tmp_path):
    """The report reads top-down: a summary, then one <section> per claim with the study's sentence, our figure,
    effect, power, verdict and rule; images are downscaled; in headless Chromium at 1280 px every image loads and
    nothing overflows the page width."""
    import matplotlib.pyplot as plt

    from helpers.claims import scorecard_claims
    from helpers.report.plots import scorecard_figure

    card = build_scorecard(findings)
    (tmp_path / "html").mkdir()
    (tmp_path / "html" / "03_inflammation.html").write_text("<html></html>")
    figs = tmp_path / "figs"
    figs.mkdir()
    for name in ("03_inflammation_patients", "07_roc", "08_atlas"):
        fig, ax = plt.subplots(figsize=(30, 6), dpi=100)  # 3,000 px wide: must be scaled to the page
        ax.plot([0, 1], [0, 1])
        fig.savefig(figs / f"{name}.png")
        plt.close(fig)
    scorecard_figure(card).savefig(figs / "10_scorecard.png")
    out = render_report("c", card, tmp_path / "html", figs, tmp_path / "report.html", simulated=True,
                        patients={"BM": {"CR": 6, "NR": 5}})
    text = out.read_text()
    assert "Cohort <b>c</b> (simulated); BM: 6 CR, 5 NR patients." in text
    assert text.count('<section class="claim"') == len(scorecard_claims()) == 10
    for c in scorecard_claims():
        assert f'id="{c.name}"' in text and c.statement in text
    assert "Power at this design" in text and "Planted truth" in text and "reproduced</span>" in text
    assert 'href="html/03_inflammation.html"' in text and text.count("data:image/png;base64") == 4
    big = compressed_png(figs / "07_roc.png")
    assert Image.open(io.BytesIO(big)).width == 1000 and len(big) < (figs / "07_roc.png").stat().st_size
    if not chromium():
        pytest.skip("Chromium is not installed (Debian packages chromium, chromium-driver): render check skipped")
    m = measure_page(out, width=1280)
    assert m["sections"] == 10
    assert len(m["images"]) == 4 and all(i["loaded"] for i in m["images"]), m["images"]
    assert m["scrollWidth"] <= m["clientWidth"] <= 1280 and not m["overflowing"], m


def test_not_testable_rows_counted_and_listed(tmp_path):
    """Not-testable records become 'not testable: <reason>' verdicts, are counted apart and listed with the other
    not-testable readouts of the findings; a reduced classifier panel is noted on the AUC rows."""
    from helpers.analysis.findings import not_testable
    from helpers.report.scorecard import (
        not_testable_rows,
        not_testable_summary,
        verdict_counts,
    )

    d = tmp_path / "findings"
    d.mkdir()
    no_tumour = not_testable("no malignant_PC cells in this cohort")
    (d / "04.json").write_text(json.dumps({"claims": {"classical_mono_phagocytosis": _rec(-0.5, 0.01, -0.8, -0.2),
                                                      "ifn_mono_nfkb": not_testable("no mono_IFN cells in this cohort")},
                                           "controls": {"cdc_phagocytosis": not_testable("no cDC cells in this cohort")}}))
    (d / "05.json").write_text(json.dumps({"claims": {"nk_cd54dim_cd16": {
        **_rec(-0.9, 0.01, -1.3, -0.5), "note": "CD54 split not separable in this cohort: measured in all CD56dim NK cells"}}}))
    (d / "06.json").write_text(json.dumps({"claims": {
        "tumour_nfkb_progeny": no_tumour,
        "prognosis": not_testable("no bulk cohort with survival (bulk.h5ad) for this cohort")}}))
    (d / "07.json").write_text(json.dumps({"claims": {"auc_bm_34": _auc(0.8, 0.6, 0.95, 0.01),
                                                      "auc_bm_top8": _auc(0.7, 0.55, 0.9, 0.02),
                                                      "auc_pb_top8": not_testable("no PB samples in this cohort")},
                                           "n_panel_genes": 34, "n_panel_genes_used": 21,
                                           "panel_missing_genes": ["A"] * 13}))
    card = build_scorecard(d).set_index("claim")
    v = card["verdict"]
    assert v["IFN-monocyte NF-kB (up in NR)"] == "not testable: no mono_IFN cells in this cohort"
    assert v["tumour NF-kB (up in NR)"] == "not testable: no malignant_PC cells in this cohort"
    assert v["prognosis (NF-kB high = shorter PFS)"].startswith("not testable: no bulk cohort")
    assert v["AUC top-8, blood"] == "not testable: no PB samples in this cohort"
    assert v["monocyte phagocytosis, classical (down in NR)"] == "reproduced"
    assert v["CD54dim NK CD16 (down in NR)"] == "reproduced"
    assert "not separable" in card.loc["CD54dim NK CD16 (down in NR)", "note"]
    assert card.loc["AUC 34 NF-kB genes, marrow", "note"] == "reduced panel (21 of 34 genes)"
    assert card.loc["AUC 34 NF-kB genes, marrow", "verdict"] == "reproduced"
    assert pd.isna(card.loc["tumour NF-kB (up in NR)", "measured"])
    card = card.reset_index()
    assert verdict_counts(card) == {"reproduced": 4, "not applicable": 2, "not testable": 4}  # no 03.json, no nonclassical
    assert not_testable_rows(card)["AUC top-8, blood"] == "no PB samples in this cohort"
    text = not_testable_summary("c", card, d)
    assert text.startswith("Not testable on cohort 'c': 4 of 10 scorecard claims\n")
    assert "  - tumour NF-kB (up in NR): no malignant_PC cells in this cohort\n" in text
    assert "04.json controls/cdc_phagocytosis: no cDC cells in this cohort" in text
    assert "04.json claims/ifn_mono_nfkb" not in text  # a scorecard row is listed once


def test_confounded_design_flags_rows_of_that_tissue(tmp_path):
    """A batch confounded with the response in blood (notebook 00's association) is noted on the blood AUC row."""
    from helpers.report.scorecard import build_scorecard, confounded_design_note
    d = tmp_path / "findings"
    d.mkdir()
    assoc = [{"tissue": "PB", "confounded": True, "cramers_v": 0.8, "p": 0.01},
             {"tissue": "BM", "confounded": False, "cramers_v": 0.1, "p": 0.9}]
    (d / "00.json").write_text(json.dumps({"batch_response_association": assoc}))
    card = build_scorecard(d).set_index("claim")
    assert "design confounded" in card.loc["AUC top-8, blood", "note"]
    assert "design confounded" not in card.loc["AUC top-8, marrow", "note"]
    assert confounded_design_note(None, "PB") == ""
