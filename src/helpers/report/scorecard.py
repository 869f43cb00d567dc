"""The reproduction scorecard: one row per study claim, the study's value, the reproduced value with its CI,
the planted truth (simulated cohorts) and a verdict computed by rule; and the one-page HTML report.

Verdicts: ``reproduced``, ``not reproduced``, ``not applicable`` (no findings file) or ``not testable: <reason>``
(the cohort cannot measure the claim: a cell type, tissue, side table or panel genes absent, too few patients).
The ``note`` column says how a claim was measured when it differs from the study (e.g. a reduced classifier
panel, CD54dim NK cells replaced by all CD56dim NK cells).

Every row is judged the same way: a p below 0.05 and the effect in the study's direction. For the directional
rows the p is the patient-level Mann-Whitney p (prognosis: the Cox p with the hazard ratio's CI above 1); for
the AUC rows it is ``permutation_p``, the label-permutation p of the whole pipeline that produced the AUC
(cross-validation with the in-fold top-k selection re-run per permutation; for blood, the marrow labels
permuted, the model refitted on marrow and scored on blood), with the AUC above 0.5. The AUC's CI is the
Hanley-McNeil (1982) analytic 95% CI; it does not enter the verdict.

Further columns, for the reader:

- ``study_value_in_ci``: is the study's value inside our 95% CI? For an AUC row, the study's AUC lies between
  ``ci_low`` and ``ci_high``. For a directional row the study gives no number, only a side ("up", "down",
  "HR > 1"), so True means our whole CI lies on that side (excludes 0 on the expected side; for the hazard
  ratio, lies above 1). NA when there is no CI.
- ``power_at_design``: notebook 09's simulated power of this row's test at this cohort's design with the planted
  effects (``findings/09.json`` ``default_design.power``); NA when notebook 09 has not run or does not simulate
  the row (the bulk prognosis, the top-k marrow and blood AUCs: its simulation runs the all-gene marrow model
  only; the note says so).
- ``null_twin_verdict``: the verdict of the same row on the cohort's null twin (same design, no planted effect),
  which the cohort names in cohort.yaml (``analysis: {null_twin: <cohort>}``; the default names ``ifm2017_null``),
  when the twin's scorecard exists; else NA.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from helpers.analysis.classifier import STUDY_AUC, auc_reproduced
from helpers.analysis.findings import (
    NOT_TESTABLE,
    is_not_testable,
    not_testable_records,
)
from helpers.claims import CLAIMS


def primary_claim(planted: str) -> str:
    """The one primary claim of :data:`helpers.claims.CLAIMS` that realises a planted effect (the scorecard row
    follows the claim's definition there, e.g. which inflammation readout is primary)."""
    names = [n for n, c in CLAIMS.items() if c.primary and c.planted == planted]
    if len(names) != 1:
        raise ValueError(f"expected one primary claim for the planted effect {planted!r}, found {names}")
    return names[0]


# claim, study value, findings file, how to read it, planted effect
ROWS = [
    ("inflammatory BME (cytokine signalling up in NR)", "up", "03", ("claims", primary_claim("inflammation")),
     "inflammation"),
    ("monocyte phagocytosis, classical (down in NR)", "down", "04", ("claims", "classical_mono_phagocytosis"), "phagocytosis"),
    ("monocyte phagocytosis, nonclassical (down in NR)", "down", "04", ("claims", "nonclassical_mono_phagocytosis"),
     "phagocytosis"),
    ("IFN-monocyte NF-kB (up in NR)", "up", "04", ("claims", "ifn_mono_nfkb"), "ifn_mono_nfkb"),
    ("CD54dim NK CD16 (down in NR)", "down", "05", ("claims", "nk_cd54dim_cd16"), "nk_cd16"),
    ("tumour NF-kB (up in NR)", "up", "06", ("claims", "tumour_nfkb_progeny"), "tumour_nfkb"),
    ("prognosis (NF-kB high = shorter PFS)", "HR > 1", "06", ("prognosis",), "bulk"),
    ("AUC 34 NF-kB genes, marrow", STUDY_AUC["auc_bm_34"], "07", ("auc_bm_34",), None),
    ("AUC top-8, marrow", STUDY_AUC["auc_bm_top8"], "07", ("auc_bm_top8",), None),
    ("AUC top-8, blood", STUDY_AUC["auc_pb_top8"], "07", ("auc_pb_top8",), None),
]
COLUMNS = ["claim", "study_value", "reproduced", "ci_low", "ci_high", "p", "permutation_p", "truth", "verdict",
           "study_value_in_ci", "power_at_design", "null_twin_verdict", "note", "rule"]
VERDICTS = ["reproduced", "not reproduced", "not applicable", NOT_TESTABLE]
NOT_TESTABLE_FILE = "not_testable.txt"  # results/<cohort>/not_testable.txt, printed by the runner after notebook 10
ALPHA = 0.05
AUC_RULE = {
    "auc_bm_34": "cross-validation re-run on permuted labels",
    "auc_bm_top8": "cross-validation with the in-fold top-k selection re-run on permuted labels",
    "auc_pb_top8": "marrow labels permuted, top-k model refitted on marrow, applied to blood, scored on true labels",
}


def _get(d: dict, path: tuple[str, ...]):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _directional_rule(expected: str, alpha: float = ALPHA) -> str:
    return f"reproduced if the patient-level p < {alpha} and the shift is {expected} (NR vs CR)"


def verdict_directional(rec: dict | None, expected: str, alpha: float = ALPHA) -> tuple[str, str]:
    rule = _directional_rule(expected, alpha)
    if not rec or rec.get("effect") is None or rec.get("p") is None:
        return "not applicable", rule + "; not estimable here"
    ok = rec["p"] < alpha and rec.get("direction") == expected
    return ("reproduced" if ok else "not reproduced"), rule


def auc_rule(key: str, alpha: float = ALPHA) -> str:
    return (f"reproduced if the label-permutation p of the whole pipeline ({AUC_RULE[key]}) < {alpha} and the AUC "
            "> 0.5; CI: Hanley-McNeil (1982) analytic 95% CI")


def verdict_auc(auc: float | None, permutation_p: float | None, alpha: float = ALPHA) -> str:
    """``reproduced`` when the permutation p < alpha and the AUC is above 0.5 (the expected direction)."""
    if auc is None or permutation_p is None:
        return "not applicable"
    return "reproduced" if auc_reproduced(auc, permutation_p, alpha) else "not reproduced"


def study_value_in_ci(study, ci_low: float | None, ci_high: float | None) -> bool | None:
    """Is the study's value inside our CI (see the module docstring): a number between the limits; ``up`` /
    ``down`` / ``HR > 1``: the whole CI on that side of 0 (of 1 for the hazard ratio); None without a CI."""
    if ci_low is None or ci_high is None or pd.isna(ci_low) or pd.isna(ci_high):
        return None
    if isinstance(study, (int, float)):
        return bool(ci_low <= study <= ci_high)
    sides = {"up": ci_low > 0, "down": ci_high < 0, "HR > 1": ci_low > 1}
    if study not in sides:
        raise ValueError(f"unknown study value {study!r}")
    return bool(sides[study])


def power_at_design(power_findings: dict | None, path: tuple[str, ...]) -> float | None:
    """Notebook 09's power of this row's test at this cohort's design (``default_design.power``), or None."""
    key = path[1] if path[0] == "claims" else path[0]
    rec = _get(power_findings or {}, ("default_design", "power", key))
    return None if rec is None else rec.get("power")


def null_twin_verdicts(twin: str | None, results_root: str | Path) -> dict[str, str]:
    """Claim -> verdict on the null twin ``twin`` (``results/<twin>/scorecard.csv``); empty when the cohort names
    no twin (``twin`` None) or the twin's scorecard does not exist."""
    f = Path(results_root) / str(twin) / "scorecard.csv"
    if not twin or not f.exists():
        return {}
    card = pd.read_csv(f)
    return dict(zip(card["claim"], card["verdict"]))


def _truth_text(truth: dict | None, planted: str | None, path: tuple[str, ...]) -> str:
    if truth and planted and planted in truth.get("effects", {}):
        e = truth["effects"][planted]
        return f"{e['direction']} {e['strength_log2']:.2f} log2 (spread {e['spread_log2']:.2f})"
    if truth and planted == "bulk" and "bulk" in truth:
        return f"HR {truth['bulk'].get('hazard_ratio')} per SD"
    if truth and path[0].startswith("auc"):
        return "NF-kB effects planted (see rows above)"
    return ""


def _panel_note(d: dict) -> str:
    used, total = d.get("n_panel_genes_used"), d.get("n_panel_genes")
    return f"reduced panel ({used} of {total} genes)" if used and total and used < total else ""


def _row(claim, study, verdict, rule, rec=None, note="", **values) -> dict:
    """One scorecard row; ``values`` are reproduced, ci_low, ci_high, p, permutation_p (None when absent)."""
    if is_not_testable(rec):
        return {"claim": claim, "study_value": study, "verdict": f"{NOT_TESTABLE}: {rec['reason']}", "note": note,
                "rule": rule}
    return {"claim": claim, "study_value": study, "verdict": verdict, "note": note, "rule": rule, **values}


def _prognosis_row(claim, study, rec) -> dict:
    rule = "reproduced if the Cox hazard ratio per SD of NF-kB is > 1 with its 95% CI above 1"
    if not rec or is_not_testable(rec):
        return _row(claim, study, "not applicable", rule + ("" if rec else "; no bulk cohort"), rec)
    ok = rec["hr_ci_low"] > 1
    return _row(claim, study, "reproduced" if ok else "not reproduced", rule, reproduced=rec["hazard_ratio_per_sd"],
                ci_low=rec["hr_ci_low"], ci_high=rec["hr_ci_high"], p=rec["cox_p"])


def _auc_row(claim, study, key, d) -> dict:
    rec = _get(d, (key,)) if d else None
    note = _panel_note(d) if d else ""
    if rec is None or is_not_testable(rec):
        return _row(claim, study, "not applicable", auc_rule(key), rec, note)
    perm = d.get(f"{key}_permutation_p")
    return _row(claim, study, verdict_auc(rec, perm), auc_rule(key), note=note, reproduced=rec,
                ci_low=d.get(f"{key}_ci_low"), ci_high=d.get(f"{key}_ci_high"), permutation_p=perm)


def _directional_row(claim, study, rec) -> dict:
    if is_not_testable(rec):
        return _row(claim, study, None, _directional_rule(study), rec, rec.get("note", ""))
    v, rule = verdict_directional(rec, study)
    rec = rec or {}
    return _row(claim, study, v, rule, note=rec.get("note", ""), reproduced=rec.get("effect"),
                ci_low=rec.get("ci_low"), ci_high=rec.get("ci_high"), p=rec.get("p"))


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def confounded_design_note(cohort_findings: dict | None, tissue: str) -> str:
    """A warning for rows measured in ``tissue`` when notebook 00 found its processing batch confounded with the
    response (``batch_response_association`` in findings/00.json): a classifier or a shift there may read batch."""
    for rec in (cohort_findings or {}).get("batch_response_association", []):
        if rec.get("tissue") == tissue and rec.get("confounded"):
            v = rec.get("cramers_v")
            return (f"design confounded: batch and response associated in {tissue}"
                    + (f" (Cramér's V {v:.2f})" if isinstance(v, (int, float)) else "") + "; may read batch")
    return ""


def build_scorecard(findings_dir: str | Path, truth: dict | None = None,
                    null_twin: dict[str, str] | None = None) -> pd.DataFrame:
    """Read findings/NN.json (and notebook 09's power in findings/09.json) and return the scorecard table, one
    row per study claim; ``null_twin`` maps claim -> the null twin's verdict (:func:`null_twin_verdicts`)."""
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
        if path[0] == "prognosis":
            row = _prognosis_row(claim, study, _get(d, path) if d else None)
        elif path[0].startswith("auc"):
            row = _auc_row(claim, study, path[0], d)
        else:
            row = _directional_row(claim, study, _get(d, path) if d else None)
        tissue = "PB" if path[0] == "auc_pb_top8" else "BM"
        power = power_at_design(load("09"), path)
        no_power = load("09") is not None and power is None and row["verdict"] != "not applicable"
        row.update(truth=_truth_text(truth, planted, path),
                   study_value_in_ci=study_value_in_ci(study, row.get("ci_low"), row.get("ci_high")),
                   power_at_design=power, null_twin_verdict=(null_twin or {}).get(claim),
                   note=_join(row["note"], "no power at design: notebook 09 does not simulate this test" if no_power
                              else "", confounded_design_note(load("00"), tissue)))
        rows.append(row)
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
    from helpers.io import atomic_path

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
