"""The reproduction scorecard: one row per study claim, the study's value, the reproduced value with its CI,
the planted truth (simulated cohorts) and a verdict computed by rule; and the one-page HTML report."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

# claim, study value, findings file, how to read it
ROWS = [
    ("inflammatory BME (cytokine signalling up in NR)", "up", "03", ("claims", "inflammatory_bme_cytokines"), "inflammation"),
    ("monocyte phagocytosis, classical (down in NR)", "down", "04", ("claims", "classical_mono_phagocytosis"), "phagocytosis"),
    ("monocyte phagocytosis, nonclassical (down in NR)", "down", "04", ("claims", "nonclassical_mono_phagocytosis"),
     "phagocytosis"),
    ("IFN-monocyte NF-kB (up in NR)", "up", "04", ("claims", "ifn_mono_nfkb"), "ifn_mono_nfkb"),
    ("CD54dim NK CD16 (down in NR)", "down", "05", ("claims", "nk_cd54dim_cd16"), "nk_cd16"),
    ("tumour NF-kB (up in NR)", "up", "06", ("claims", "tumour_nfkb_progeny"), "tumour_nfkb"),
    ("prognosis (NF-kB high = shorter PFS)", "HR > 1", "06", ("prognosis",), "bulk"),
    ("AUC 34 NF-kB genes, marrow", 0.96, "07", ("auc_bm_34",), None),
    ("AUC top-8, marrow", 0.92, "07", ("auc_bm_top8",), None),
    ("AUC top-8, blood", 0.77, "07", ("auc_pb_top8",), None),
]
COLUMNS = ["claim", "study_value", "reproduced", "ci_low", "ci_high", "p", "truth", "verdict", "rule"]


def _get(d: dict, path: tuple[str, ...]):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def verdict_directional(rec: dict | None, expected: str, alpha: float = 0.05) -> tuple[str, str]:
    rule = f"reproduced if the patient-level p < {alpha} and the shift is {expected} (NR vs CR)"
    if not rec or rec.get("effect") is None or rec.get("p") is None:
        return "not applicable", rule + "; not estimable here"
    ok = rec["p"] < alpha and rec.get("direction") == expected
    return ("reproduced" if ok else "not reproduced"), rule


def build_scorecard(findings_dir: str | Path, truth: dict | None = None) -> pd.DataFrame:
    """Read findings/NN.json and return the scorecard table (one row per study claim)."""
    findings_dir = Path(findings_dir)
    cache: dict[str, dict | None] = {}

    def load(nn):
        if nn not in cache:
            f = findings_dir / f"{nn}.json"
            cache[nn] = json.loads(f.read_text()) if f.exists() else None
        return cache[nn]

    rows = []
    for claim, study, nn, path, planted in ROWS:
        d = load(nn)
        rec = _get(d, path) if d else None
        truth_txt = ""
        if truth and planted and planted in truth.get("effects", {}):
            e = truth["effects"][planted]
            truth_txt = f"{e['direction']} {e['strength_log2']:.2f} log2 (spread {e['spread_log2']:.2f})"
        elif truth and planted == "bulk" and "bulk" in truth:
            truth_txt = f"HR {truth['bulk'].get('hazard_ratio')} per SD"
        elif truth and path[0].startswith("auc"):
            truth_txt = "NF-kB effects planted (see rows above)"
        if path[0] == "prognosis":
            rule = "reproduced if the Cox hazard ratio per SD of NF-kB is > 1 with its 95% CI above 1"
            if rec:
                ok = rec["hr_ci_low"] > 1
                rows.append([claim, study, rec["hazard_ratio_per_sd"], rec["hr_ci_low"], rec["hr_ci_high"], rec["cox_p"],
                             truth_txt, "reproduced" if ok else "not reproduced", rule])
            else:
                rows.append([claim, study, None, None, None, None, truth_txt, "not applicable", rule + "; no bulk cohort"])
        elif path[0].startswith("auc"):
            rule = "reproduced if the 95% CI of the AUC lies above 0.5 (better than chance)"
            key = path[0]
            if d and d.get(key) is not None:
                lo, hi = d.get(f"{key}_ci_low"), d.get(f"{key}_ci_high")
                p = d.get("permutation_p") if key == "auc_bm_34" else None
                ok = lo is not None and lo > 0.5 and (p is None or p < 0.05)
                rows.append([claim, study, d[key], lo, hi, p, truth_txt, "reproduced" if ok else "not reproduced",
                             rule + ("; and permutation p < 0.05" if key == "auc_bm_34" else "")])
            else:
                rows.append([claim, study, None, None, None, None, truth_txt, "not applicable", rule])
        else:
            v, rule = verdict_directional(rec, study)
            rows.append([claim, study, rec.get("effect") if rec else None, rec.get("ci_low") if rec else None,
                         rec.get("ci_high") if rec else None, rec.get("p") if rec else None, truth_txt, v, rule])
    return pd.DataFrame(rows, columns=COLUMNS)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}"><figcaption>' \
           f'{html.escape(path.stem)}</figcaption></figure>'


def render_report(cohort: str, scorecard: pd.DataFrame, html_dir: Path, figures_dir: Path, out: Path) -> Path:
    """One offline page: the scorecard, links to every executed notebook's HTML, every figure embedded."""
    from .io import atomic_path

    links = "".join(f'<li><a href="html/{p.name}">{html.escape(p.stem)}</a></li>' for p in sorted(html_dir.glob("*.html")))
    figs = "".join(_img(p) for p in sorted(figures_dir.glob("*.png")))
    table = scorecard.drop(columns=["rule"]).to_html(index=False, float_format=lambda v: f"{v:.3g}", na_rep="",
                                                     classes="scorecard", border=0)
    rules = "".join(f"<li><b>{html.escape(r.claim)}</b>: {html.escape(r.rule)}</li>" for r in scorecard.itertuples())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Reproduction report: {html.escape(cohort)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;}} table.scorecard td,table.scorecard th{{padding:4px 8px;
border-bottom:1px solid #ddd;font-size:13px}} figure{{display:inline-block;margin:8px;max-width:560px}} img{{max-width:100%}}
figcaption{{font-size:12px;color:#555}}</style></head><body>
<h1>Daratumumab-lenalidomide resistance: reproduction report</h1><p>Cohort <b>{html.escape(cohort)}</b>.</p>
<h2>Scorecard</h2>{table}<h3>Verdict rules</h3><ul>{rules}</ul>
<h2>Executed notebooks</h2><ul>{links}</ul><h2>Figures</h2>{figs}</body></html>"""
    with atomic_path(out) as tmp:
        tmp.write_text(page)
    return out
