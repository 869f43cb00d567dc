"""The reproduction scorecard: one row per study claim, the study's value, our measured value (column ``measured``)
with its CI, the planted truth (simulated cohorts) and a verdict computed by rule (the report page:
:mod:`helpers.report.page`).

Verdicts: ``reproduced``, ``not reproduced``, ``not applicable`` (no findings file) or ``not testable: <reason>``
(the cohort cannot measure the claim: a cell type, tissue, side table or panel genes absent, too few patients).
The ``note`` column says how a claim was measured when it differs from the study (e.g. a reduced classifier
panel, CD54dim NK cells replaced by all CD56dim NK cells).

The rows, their study values, readouts and the verdict rule come from one registry, :data:`helpers.claims.CLAIMS`;
each row reads its claim's record in ``findings/<notebook>.json`` under ``claims/<name>``. Every row is judged the
same way (:func:`helpers.claims.verdict`): a p below 0.05 and the effect in the study's direction. For the
directional rows the p is the patient-level Mann-Whitney p (prognosis: the Cox Wald p, with the hazard ratio
above 1); for the AUC rows it is ``permutation_p``, the label-permutation p of the whole pipeline that produced
the AUC (cross-validation with the in-fold top-k selection re-run per permutation; for blood, the marrow labels
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

import json
from pathlib import Path

import pandas as pd

from helpers.analysis.findings import not_testable_records
from helpers.claims import ALPHA, NOT_TESTABLE, Claim, is_not_testable, scorecard_claims, verdict

COLUMNS = ["claim", "study_value", "measured", "ci_low", "ci_high", "p", "permutation_p", "truth", "verdict",
           "study_value_in_ci", "power_at_design", "null_twin_verdict", "note", "rule"]
VERDICTS = ["reproduced", "not reproduced", "not applicable", NOT_TESTABLE]
NOT_TESTABLE_FILE = "not_testable.txt"  # results/<cohort>/not_testable.txt, printed by the runner after notebook 10


def claim_record(findings: dict | None, claim: Claim) -> dict | None:
    """The claim's record in its notebook's findings (``claims/<name>``), or None when absent."""
    rec = ((findings or {}).get("claims") or {}).get(claim.name)
    return rec if isinstance(rec, dict) else None


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


def power_at_design(power_findings: dict | None, claim: Claim) -> float | None:
    """Notebook 09's power of this claim's test at this cohort's design (``default_design.power``), or None."""
    rec = (((power_findings or {}).get("default_design") or {}).get("power") or {}).get(claim.name)
    return None if rec is None else rec.get("power")


def null_twin_verdicts(twin: str | None, results_root: str | Path) -> dict[str, str]:
    """Claim -> verdict on the null twin ``twin`` (``results/<twin>/scorecard.csv``); empty when the cohort names
    no twin (``twin`` None) or the twin's scorecard does not exist."""
    f = Path(results_root) / str(twin) / "scorecard.csv"
    if not twin or not f.exists():
        return {}
    card = pd.read_csv(f)
    return dict(zip(card["claim"], card["verdict"]))


def truth_text(truth: dict | None, claim: Claim) -> str:
    """The planted truth behind a claim in a simulated cohort (empty for a real one)."""
    if truth and claim.planted and claim.planted in truth.get("effects", {}):
        e = truth["effects"][claim.planted]
        return f"{e['direction']} {e['strength_log2']:.2f} log2 (spread {e['spread_log2']:.2f})"
    if truth and claim.planted == "bulk" and "bulk" in truth:
        return f"HR {truth['bulk'].get('hazard_ratio')} per SD"
    if truth and claim.kind == "auc":
        return "NF-kB effects planted (see rows above)"
    return ""


def panel_note(findings: dict | None, claim: Claim) -> str:
    """The AUC rows' note when the classifier ran on a reduced panel (notebook 07's ``n_panel_genes_used``)."""
    d = findings or {}
    used, total = d.get("n_panel_genes_used"), d.get("n_panel_genes")
    return (f"reduced panel ({used} of {total} genes)" if claim.kind == "auc" and used and total and used < total
            else "")


def scorecard_row(claim: Claim, rec: dict | None, alpha: float = ALPHA) -> dict:
    """A claim's row from its record: the verdict by the claims' one rule, the effect with its CI and the p
    (an AUC's p in ``permutation_p``)."""
    row = {"claim": claim.label, "study_value": claim.study, "verdict": verdict(claim, rec, alpha),
           "rule": claim.rule(alpha), "note": (rec or {}).get("note", "")}
    if not rec or is_not_testable(rec) or rec.get("effect") is None:
        return row
    p_column = "permutation_p" if claim.kind == "auc" else "p"
    return {**row, "measured": rec["effect"], "ci_low": rec.get("ci_low"), "ci_high": rec.get("ci_high"),
            p_column: rec.get("p")}


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
    row per study claim of :func:`helpers.claims.scorecard_claims`; ``null_twin`` maps claim -> the null twin's
    verdict (:func:`null_twin_verdicts`)."""
    findings_dir = Path(findings_dir)
    cache: dict[str, dict | None] = {}

    def load(nn):
        if nn not in cache:
            f = findings_dir / f"{nn}.json"
            cache[nn] = json.loads(f.read_text()) if f.exists() else None
        return cache[nn]

    rows = []
    for claim in scorecard_claims():
        row = scorecard_row(claim, claim_record(load(claim.notebook), claim))
        power = power_at_design(load("09"), claim)
        no_power = load("09") is not None and power is None and row["verdict"] != "not applicable"
        row.update(truth=truth_text(truth, claim),
                   study_value_in_ci=study_value_in_ci(claim.study, row.get("ci_low"), row.get("ci_high")),
                   power_at_design=power, null_twin_verdict=(null_twin or {}).get(claim.label),
                   note=_join(row["note"], panel_note(load(claim.notebook), claim),
                              "no power at design: notebook 09 does not simulate this test" if no_power else "",
                              confounded_design_note(load("00"), "PB" if claim.tissue == "PB" else "BM")))
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def verdict_counts(card: pd.DataFrame) -> dict[str, int]:
    """Rows per verdict; every ``not testable: <reason>`` counts as ``not testable``."""
    kind = card["verdict"].map(lambda v: NOT_TESTABLE if v.startswith(NOT_TESTABLE) else v)
    return {v: int((kind == v).sum()) for v in VERDICTS if (kind == v).any()}


def verdict_summary(card: pd.DataFrame) -> str:
    """One line of a scorecard's verdicts, e.g. '8 of 10 reproduced; 1 not reproduced (AUC top-8, blood);
    1 not testable (IFN-monocyte NF-kB (up in NR): no mono_IFN cells)': the rows of the rarer verdicts are named
    (reproduced and not reproduced when they are at most half of the rows; not testable always, with the reason).
    The README quotes this line for the committed snapshots, and a test keeps it equal to them."""
    counts, n = verdict_counts(card), len(card)
    kind = card["verdict"].map(lambda v: NOT_TESTABLE if v.startswith(NOT_TESTABLE) else v)

    def names(v: str) -> str:
        rows = card.loc[(kind == v).to_numpy(), "claim"]
        return f" ({'; '.join(rows)})" if 0 < len(rows) <= n / 2 else ""

    parts = [f"{counts.get('reproduced', 0)} of {n} reproduced{names('reproduced')}"]
    for v in ("not reproduced", "not applicable"):
        if counts.get(v):
            parts.append(f"{counts[v]} {v}{names(v)}")
    if counts.get(NOT_TESTABLE):
        reasons = "; ".join(f"{c}: {r}" for c, r in not_testable_rows(card).items())
        parts.append(f"{counts[NOT_TESTABLE]} {NOT_TESTABLE} ({reasons})")
    return "; ".join(parts)


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
    in_card = {(c.notebook, f"claims/{c.name}") for c in scorecard_claims()}
    other = []
    for f in sorted(Path(findings_dir).glob("[0-9][0-9].json")):
        other += [f"  - {f.stem}.json {key}: {rec['reason']}" for key, rec in not_testable_records(json.loads(f.read_text()))
                  if (f.stem, key) not in in_card and f.stem != "10"]
    lines.append(f"Other readouts not testable (controls, secondary measures): {len(other)}")
    return "\n".join(lines + other) + "\n"
