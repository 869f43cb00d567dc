"""Scorecard verdict rules on hand-made findings, and the report renders (headless Chromium where present)."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from helpers.scorecard import build_scorecard, render_report


def _rec(effect, p, lo, hi):
    return {"effect": effect, "p": p, "ci_low": lo, "ci_high": hi, "direction": "up" if effect > 0 else "down"}


@pytest.fixture()
def findings(tmp_path):
    d = tmp_path / "findings"
    d.mkdir()
    (d / "03.json").write_text(json.dumps({"claims": {"inflammatory_bme_cytokines": _rec(0.6, 0.01, 0.2, 0.9)}}))
    (d / "04.json").write_text(json.dumps({"claims": {"classical_mono_phagocytosis": _rec(0.3, 0.01, 0.1, 0.5),
                                                      "ifn_mono_nfkb": _rec(1.0, 0.2, -0.2, 2.0)}}))
    (d / "07.json").write_text(json.dumps({"auc_bm_34": 0.8, "auc_bm_34_ci_low": 0.6, "auc_bm_34_ci_high": 0.95,
                                           "permutation_p": 0.01, "auc_bm_top8": 0.6, "auc_bm_top8_ci_low": 0.4,
                                           "auc_bm_top8_ci_high": 0.8, "auc_pb_top8": None}))
    return d


def test_verdicts_by_rule(findings):
    card = build_scorecard(findings).set_index("claim")
    v = card["verdict"]
    assert v["inflammatory BME (cytokine signalling up in NR)"] == "reproduced"
    assert v["monocyte phagocytosis, classical (down in NR)"] == "not reproduced"  # wrong direction
    assert v["IFN-monocyte NF-kB (up in NR)"] == "not reproduced"  # p = 0.2
    assert v["CD54dim NK CD16 (down in NR)"] == "not applicable"  # no 05.json
    assert v["AUC 34 NF-kB genes, marrow"] == "reproduced"
    assert v["AUC top-8, marrow"] == "not reproduced"  # CI includes 0.5
    assert v["AUC top-8, blood"] == "not applicable"
    assert len(card) == 10


def test_report_renders(findings, tmp_path):
    card = build_scorecard(findings)
    (tmp_path / "html").mkdir()
    (tmp_path / "html" / "03_inflammation.html").write_text("<html></html>")
    figs = tmp_path / "figs"
    figs.mkdir()
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    fig.savefig(figs / "03_x.png")
    out = render_report("c", card, tmp_path / "html", figs, tmp_path / "report.html")
    text = out.read_text()
    assert "data:image/png;base64" in text and 'href="html/03_inflammation.html"' in text and "Scorecard" in text
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("Chromium is not installed (Debian packages chromium, chromium-driver): render check skipped")
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert "Scorecard" in r.stdout
