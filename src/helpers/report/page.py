"""The reproduction report: one self-contained HTML page per cohort that reads top-down, claim by claim.

A summary first (the cohort, what "reproduced" means, the verdict counts, the null twin's count when it has
been run), then one ``<section class="claim">`` per study claim of :func:`helpers.claims.scorecard_claims`: the
study's sentence and value, our figure, the effect with its CI and p, the power at this design, the verdict with
its rule, the planted truth (simulated cohorts), notes and a link to the executed notebook; then the remaining
figures and the notebooks. Figures are downscaled and palette-compressed PNGs embedded as data URIs, so the page
works offline and stays small.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pandas as pd
from PIL import Image

from helpers.claims import ALPHA, Claim, claim_by_label, scorecard_claims
from helpers.io import atomic_path
from helpers.report.scorecard import verdict_counts

UNITS = {"set": "z units (gene-set score shift, NR - CR)", "gene": "log2 CPM (shift, NR - CR)",
         "progeny": "PROGENy activity (shift, NR - CR)", "survival": "hazard ratio per SD", "auc": "AUC"}
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 16px;line-height:1.45;
color:#222}h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;width:100%;table-layout:fixed}td,th{padding:4px 6px;border-bottom:1px solid #eee;
font-size:13px;text-align:left;vertical-align:top;overflow-wrap:anywhere}section.claim{margin:1.2em 0 2em}
.verdict{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:13px}
.v-reproduced{background:#2e8b57}.v-not-reproduced{background:#c8453c}.v-not-applicable,.v-not-testable{background:#888}
figure{margin:8px 0;max-width:100%}img{max-width:100%;height:auto;display:block}figcaption{font-size:12px;color:#555}
dl{display:grid;grid-template-columns:minmax(120px,200px) 1fr;gap:4px 12px;margin:0}dt{font-weight:600}dd{margin:0}
.gallery figure{display:inline-block;width:calc(50% - 12px);vertical-align:top;margin:4px}"""


def compressed_png(path: Path, max_width: int = 1000, colors: int = 256) -> bytes:
    """The figure downscaled to at most ``max_width`` pixels wide and palette-quantised (plots keep their sharp
    lines; a page of a dozen figures stays at a few MB or less)."""
    img = Image.open(path).convert("RGB")
    if img.width > max_width:
        img = img.resize((max_width, round(img.height * max_width / img.width)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def figure_html(path: Path, caption: str = "", max_width: int = 1000) -> str:
    data = base64.b64encode(compressed_png(path, max_width)).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}" loading="eager">'
            f'<figcaption>{html.escape(caption or path.stem)}</figcaption></figure>')


def _num(v, fmt: str = ".3g") -> str:
    return "" if v is None or pd.isna(v) else format(float(v), fmt)


def effect_text(row: pd.Series, claim: Claim) -> str:
    """The measured effect with its 95% CI and p, in the claim's unit, or why there is none."""
    if pd.isna(row.get("measured")):
        return html.escape(str(row["verdict"]))
    p_col = "permutation_p" if claim.kind == "auc" else "p"
    p_name = {"auc": "label-permutation p", "survival": "Cox p"}.get(claim.kind, "Mann-Whitney p")
    return (f"{_num(row['measured'])} [{_num(row['ci_low'])}, {_num(row['ci_high'])}] {UNITS[claim.kind]}; "
            f"{p_name} = {_num(row[p_col], '.2g')}")


def verdict_badge(verdict: str) -> str:
    kind = "not-testable" if verdict.startswith("not testable") else verdict.replace(" ", "-")
    return f'<span class="verdict v-{kind}">{html.escape(verdict)}</span>'


def notebook_link(html_dir: Path, notebook: str) -> str:
    pages = sorted(html_dir.glob(f"{notebook}_*.html"))
    return (f'<a href="html/{html.escape(pages[0].name)}">executed notebook {html.escape(pages[0].stem)}</a>'
            if pages else f"notebook {notebook} has no executed page in this run")


def claim_section(row: pd.Series, claim: Claim, figures_dir: Path, html_dir: Path, simulated: bool,
                  shown: dict[str, str] | None = None) -> str:
    """One claim: the study's sentence and value, our figure, effect, power, verdict with rule, truth, notes.
    ``shown`` maps figures already on the page to the claim section holding them (a figure shared by several
    claims is embedded once, the later sections link to it); this section's figure is added to it."""
    shown = {} if shown is None else shown
    fig = figures_dir / f"{claim.figure}.png" if claim.figure else None
    if fig is None or not fig.exists():
        figure = "<p><i>No figure: the claim could not be measured in this cohort.</i></p>"
    elif claim.figure in shown:
        figure = f'<p>Figure {html.escape(claim.figure)}: <a href="#{shown[claim.figure]}">shown above</a>.</p>'
    else:
        figure, shown[claim.figure] = figure_html(fig, f"{claim.figure}: {claim.readout}"), claim.name
    power = row.get("power_at_design")
    facts = [("The study", f"{html.escape(claim.statement)} (study value: {html.escape(str(claim.study))})"),
             ("Measured", f"{html.escape(claim.readout)}; cells: {html.escape(str(claim.cells))}"),
             ("Effect", effect_text(row, claim)),
             ("Verdict", f"{verdict_badge(str(row['verdict']))} {html.escape(str(row['rule']))}"),
             ("Power at this design", "not simulated by notebook 09" if power is None or pd.isna(power)
              else f"{float(power):.2f} (notebook 09, planted effects)"),
             ("Study value in our CI", "" if pd.isna(row.get("study_value_in_ci")) else str(row["study_value_in_ci"]))]
    if simulated:
        facts.append(("Planted truth", html.escape(str(row.get("truth") or "none planted"))))
    if isinstance(row.get("null_twin_verdict"), str):
        facts.append(("Null twin", verdict_badge(row["null_twin_verdict"])))
    if isinstance(row.get("note"), str) and row["note"]:
        facts.append(("Note", html.escape(row["note"])))
    facts.append(("Notebook", notebook_link(html_dir, claim.notebook)))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return (f'<section class="claim" id="{claim.name}"><h2>{html.escape(claim.label)}</h2>'
            f"<dl>{dl}</dl>{figure}</section>")


def design_text(patients: dict[str, dict[str, int]] | None) -> str:
    """The summary's design text (e.g. ``; BM: 11 CR, 10 NR patients``) from
    :func:`helpers.data.describe.patients_per_group`."""
    return "".join(f"; {html.escape(t)}: " + ", ".join(f"{n} {html.escape(g)}" for g, n in by_group.items())
                   + " patients" for t, by_group in (patients or {}).items())


def summary_html(cohort: str, card: pd.DataFrame, counts: dict[str, int], simulated: bool,
                 patients: dict[str, dict[str, int]] | None = None) -> str:
    """The page's opening: cohort and design, what reproduced means, verdict counts, the null twin's count."""
    verdicts = ", ".join(f"{n} {html.escape(v)}" for v, n in counts.items())
    twin = card["null_twin_verdict"].dropna()
    twin_text = (f"<p>On this cohort's null twin (same design, nothing planted) {int((twin == 'reproduced').sum())} "
                 f"of {len(twin)} rows are called reproduced.</p>" if len(twin) else
                 "<p>The null twin has not been run for this cohort.</p>")
    rows = "".join(f'<tr><td><a href="#{claim_by_label(r.claim).name}">{html.escape(r.claim)}</a></td>'
                   f"<td>{verdict_badge(str(r.verdict))}</td></tr>" for r in card.itertuples())
    return (f"<h1>Daratumumab-lenalidomide resistance: reproduction report</h1>"
            f"<p>Cohort <b>{html.escape(cohort)}</b> ({'simulated' if simulated else 'real'}){design_text(patients)}. "
            f"{len(card)} study claims: {verdicts}.</p>"
            f"<p><b>Reproduced</b> means: the claim's p is below {ALPHA} (patient-level Mann-Whitney for shifts, Cox "
            "for the hazard ratio, the label permutation of the whole pipeline for an AUC) and the effect points the "
            "study's way. <b>Not testable</b> means this cohort cannot measure the claim (the reason is given); "
            "<b>not applicable</b> that its notebook has not produced a record.</p>"
            f"{twin_text}<table><thead><tr><th>claim</th><th>verdict</th></tr></thead><tbody>{rows}</tbody></table>")


def render_report(cohort: str, card: pd.DataFrame, html_dir: Path, figures_dir: Path, out: Path,
                  simulated: bool = False, patients: dict[str, dict[str, int]] | None = None) -> Path:
    """Write the report page (see the module docstring) to ``out`` and return it; ``patients``: the design
    ({tissue: {group: patients}}) for the summary."""
    html_dir, figures_dir = Path(html_dir), Path(figures_dir)
    counts = verdict_counts(card)
    by_label = {c.label: c for c in scorecard_claims()}
    shown: dict[str, str] = {}
    sections = "".join(claim_section(r, by_label[r["claim"]], figures_dir, html_dir, simulated, shown)
                       for _, r in card.iterrows() if r["claim"] in by_label)
    claim_figs = {c.figure for c in scorecard_claims()}
    others = "".join(figure_html(p, max_width=700) for p in sorted(figures_dir.glob("*.png")) if p.stem not in claim_figs)
    links = "".join(f'<li><a href="html/{html.escape(p.name)}">{html.escape(p.stem)}</a></li>'
                    for p in sorted(html_dir.glob("*.html")))
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>Reproduction report: {html.escape(cohort)}</title>'
            f"<style>{CSS}</style></head><body>{summary_html(cohort, card, counts, simulated, patients)}{sections}"
            f'<h2>Other figures</h2><div class="gallery">{others}</div>'
            f"<h2>Executed notebooks</h2><ul>{links}</ul></body></html>")
    with atomic_path(out) as tmp:
        tmp.write_text(page)
    return out
