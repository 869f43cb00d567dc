"""The reproduction scorecard: one row per study claim, the study's value, the reproduced value with its CI,
the planted truth (simulated cohorts) and a verdict computed by rule; and the one-page HTML report.

Verdicts: ``reproduced``, ``not reproduced``, ``not applicable`` (no findings file) or ``not testable: <reason>``
(the cohort cannot measure the claim: a cell type, tissue, side table or panel genes absent, too few patients).
The ``note`` column says how a claim was measured when it differs from the study (e.g. a reduced classifier
panel, CD54dim NK cells replaced by all CD56dim NK cells)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from .findings import NOT_TESTABLE, is_not_testable, not_testable_records

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
COLUMNS = ["claim", "study_value", "reproduced", "ci_low", "ci_high", "p", "truth", "verdict", "note", "rule"]
VERDICTS = ["reproduced", "not reproduced", "not applicable", NOT_TESTABLE]
NOT_TESTABLE_FILE = "not_testable.txt"  # results/<cohort>/not_testable.txt, printed by the runner after notebook 10


def _get(d: dict, path: tuple[str, ...]):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _directional_rule(expected: str, alpha: float = 0.05) -> str:
    return f"reproduced if the patient-level p < {alpha} and the shift is {expected} (NR vs CR)"


def verdict_directional(rec: dict | None, expected: str, alpha: float = 0.05) -> tuple[str, str]:
    rule = _directional_rule(expected, alpha)
    if not rec or rec.get("effect") is None or rec.get("p") is None:
        return "not applicable", rule + "; not estimable here"
    ok = rec["p"] < alpha and rec.get("direction") == expected
    return ("reproduced" if ok else "not reproduced"), rule


def _truth_text(truth: dict | None, planted: str | None, path: tuple[str, ...]) -> str:
    if truth and planted and planted in truth.get("effects", {}):
        e = truth["effects"][planted]
        return f"{e['direction']} {e['strength_log2']:.2f} log2 (spread {e['spread_log2']:.2f})"
    if truth and planted == "bulk" and "bulk" in truth:
        return f"HR {truth['bulk'].get('hazard_ratio')} per SD"
    if truth and path[0].startswith("auc"):
        return "NF-kB effects planted (see rows above)"
    return ""


def _not_testable_row(claim, study, truth_txt, rec, rule, note="") -> list:
    return [claim, study, None, None, None, None, truth_txt, f"{NOT_TESTABLE}: {rec['reason']}", note, rule]


def _panel_note(d: dict) -> str:
    used, total = d.get("n_panel_genes_used"), d.get("n_panel_genes")
    return f"reduced panel ({used} of {total} genes)" if used and total and used < total else ""


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
        truth_txt = _truth_text(truth, planted, path)
        if path[0] == "prognosis":
            rule = "reproduced if the Cox hazard ratio per SD of NF-kB is > 1 with its 95% CI above 1"
            if is_not_testable(rec):
                rows.append(_not_testable_row(claim, study, truth_txt, rec, rule))
            elif rec:
                ok = rec["hr_ci_low"] > 1
                rows.append([claim, study, rec["hazard_ratio_per_sd"], rec["hr_ci_low"], rec["hr_ci_high"], rec["cox_p"],
                             truth_txt, "reproduced" if ok else "not reproduced", "", rule])
            else:
                rows.append([claim, study, None, None, None, None, truth_txt, "not applicable", "", rule + "; no bulk cohort"])
        elif path[0].startswith("auc"):
            key = path[0]
            rule = "reproduced if the 95% CI of the AUC lies above 0.5 (better than chance)" + (
                "; and permutation p < 0.05" if key == "auc_bm_34" else "")
            note = _panel_note(d) if d else ""
            if is_not_testable(rec):
                rows.append(_not_testable_row(claim, study, truth_txt, rec, rule, note))
            elif rec is not None:
                lo, hi = d.get(f"{key}_ci_low"), d.get(f"{key}_ci_high")
                p = d.get("permutation_p") if key == "auc_bm_34" else None
                ok = lo is not None and lo > 0.5 and (p is None or p < 0.05)
                rows.append([claim, study, rec, lo, hi, p, truth_txt, "reproduced" if ok else "not reproduced", note, rule])
            else:
                rows.append([claim, study, None, None, None, None, truth_txt, "not applicable", note, rule])
        elif is_not_testable(rec):
            rows.append(_not_testable_row(claim, study, truth_txt, rec, _directional_rule(study), rec.get("note", "")))
        else:
            v, rule = verdict_directional(rec, study)
            rec = rec or {}
            rows.append([claim, study, rec.get("effect"), rec.get("ci_low"), rec.get("ci_high"), rec.get("p"), truth_txt, v,
                         rec.get("note", ""), rule])
    return pd.DataFrame(rows, columns=COLUMNS)


def verdict_counts(card: pd.DataFrame) -> dict[str, int]:
    """Rows per verdict; every ``not testable: <reason>`` counts as ``not testable``."""
    kind = card["verdict"].map(lambda v: NOT_TESTABLE if v.startswith(NOT_TESTABLE) else v)
    return {v: int((kind == v).sum()) for v in VERDICTS if (kind == v).any()}


def not_testable_rows(card: pd.DataFrame) -> pd.Series:
    """The reason of every not-testable scorecard row, indexed by claim."""
    nt = card[card["verdict"].str.startswith(NOT_TESTABLE)]
    return pd.Series(nt["verdict"].str.removeprefix(f"{NOT_TESTABLE}: ").to_numpy(), index=nt["claim"].to_numpy(),
                     dtype=object, name="reason")


def not_testable_summary(cohort: str, card: pd.DataFrame, findings_dir: str | Path) -> str:
    """What could not be tested in a cohort: the scorecard's not-testable claims with their reasons, then every
    other not-testable record of the findings JSON (controls, secondary readouts, atlas, flow, ...)."""
    nt = not_testable_rows(card)
    lines = [f"Not testable on cohort '{cohort}': {len(nt)} of {len(card)} scorecard claims"]
    lines += [f"  - {claim}: {reason}" for claim, reason in nt.items()]
    in_card = {(nn, "/".join(path)) for _, _, nn, path, _ in ROWS}
    other = []
    for f in sorted(Path(findings_dir).glob("[0-9][0-9].json")):
        other += [f"  - {f.stem}.json {key}: {rec['reason']}" for key, rec in not_testable_records(json.loads(f.read_text()))
                  if (f.stem, key) not in in_card and f.stem != "10"]
    lines.append(f"Other readouts not testable (controls, secondary measures): {len(other)}")
    return "\n".join(lines + other) + "\n"


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
