"""The conclusions the finding notebooks print, written from their findings records (nothing typed by hand): one
function per notebook whose conclusion is more than a line, so that the notebook cell stays one call."""

from __future__ import annotations

from typing import Any

import pandas as pd

from helpers.analysis.findings import describe
from helpers.analysis.power import describe_power, describe_smallest_n
from helpers.claims import CLAIMS, verdict


def auc_sentence(claims: dict[str, dict], key: str, label: str) -> str:
    """'<label> AUC 0.81 (95% CI ..., Hanley-McNeil; permutation p = ... over N permutations; study 0.92):
    **verdict**' for one AUC claim record of notebook 07."""
    r = claims[key]
    return (f"{label} AUC {r['effect']:.2f} (95% CI {r['ci_low']:.2f}-{r['ci_high']:.2f}, Hanley-McNeil; "
            f"permutation p = {r['p']:.3g} over {r['n_permutations']} permutations; study {CLAIMS[key].study:.2f}): "
            f"**{verdict(CLAIMS[key], r)}**")


def study_auc_sentences(cal: dict[str, Any]) -> str:
    """What the study's AUCs imply (:func:`helpers.analysis.classifier.study_auc_calibration`): the binormal
    separations, the Hanley-McNeil CIs at the study's sizes and whether the blood AUC fits the blood effect scale."""
    s34, s8, spb = cal["auc_bm_34"], cal["auc_bm_top8"], cal["auc_pb_top8"]
    text = (f"**What the study's numbers imply.** Under the equal-variance binormal model the study's AUC "
            f"{s34['study_auc']:.2f} needs a standardised CR-NR separation d = {s34['binormal_d']:.2f} (0.92: d = "
            f"{s8['binormal_d']:.2f}; 0.77: d = {spb['binormal_d']:.2f}). At {s34['n_cr']} CR vs {s34['n_nr']} NR its "
            f"Hanley-McNeil 95% CI is {s34['hanley_mcneil_ci_low']:.2f}-{s34['hanley_mcneil_ci_high']:.2f}, "
            f"that of 0.92 is {s8['hanley_mcneil_ci_low']:.2f}-{s8['hanley_mcneil_ci_high']:.2f}")
    if spb["hanley_mcneil_ci_low"] is not None:
        text += (f", and that of 0.77 at {spb['n_cr']} CR vs {spb['n_nr']} NR in blood "
                 f"({cal.get('blood_design_from', 'this cohort')}'s blood design; the study does not report its blood "
                 f"n) is {spb['hanley_mcneil_ci_low']:.2f}-{spb['hanley_mcneil_ci_high']:.2f}")
    text += "."
    if "blood_from_marrow" in cal:
        b = cal["blood_from_marrow"]
        fits = b["expected_in_study_blood_ci"]
        text += (f" Scaling d by the blood effect scale {b['pb_effect_scale']:g} takes 0.92 to an expected blood AUC "
                 f"of {b['expected_blood_auc']:.2f} (study 0.77; the study's two AUCs imply a blood/marrow effect ratio "
                 f"of {b['implied_blood_scale']:.2f})" +
                 ("" if fits is None else f": {'inside' if fits else 'outside'} the CI of 0.77, so the drop from marrow "
                  f"to blood {'fits' if fits else 'does not fit'} the simulator's blood effect scale") + ".")
    return text


def classifier_conclusion(findings: dict[str, Any], top_k: int, bm_untestable: dict | None,
                          pb_untestable: dict | None) -> str:
    """Notebook 07's conclusion from its findings record (:func:`helpers.analysis.classifier.classifier_findings`)."""
    f, claims = findings, findings["claims"]
    if bm_untestable is not None:
        text = f"NF-kB classifier {describe(bm_untestable)}."
    else:
        missing = f["panel_missing_genes"]
        reduced = (f" (reduced panel: {f['n_panel_genes_used']} of {f['n_panel_genes']} genes; missing "
                   f"{', '.join(missing)})" if missing else "")
        text = (auc_sentence(claims, "auc_bm_34", f"{f['n_panel_genes_used']}-gene random forest{reduced}, marrow, "
                             "cross-validated") + ". " +
                auc_sentence(claims, "auc_bm_top8", f"Top-{top_k} model with in-fold selection,") +
                f". Final top genes: {', '.join(f['top8_genes'])}.")
    text += (" " + auc_sentence(claims, "auc_pb_top8", f"Applied unchanged to {sum(f['n_pb'].values())} independent "
                                "blood samples:") + "."
             if pb_untestable is None else f" Blood validation {describe(pb_untestable)}.")
    return text + "\n\n" + study_auc_sentences(f["study_calibration"])


def rate_text(r: dict[str, float]) -> str:
    """'35% [25%, 46%]': a rate with its exact CI."""
    return f"{r['rate']:.0%} [{r['ci_low']:.0%}, {r['ci_high']:.0%}]"


def atlas_conclusion(findings: dict[str, Any], mech: pd.DataFrame | None, untestable: dict | None,
                     cnv_untestable: dict | None, test_group: str, reference_group: str) -> str:
    """Notebook 08's conclusion from its findings record (:func:`helpers.analysis.atlas.atlas_findings`, with the
    design's power of :func:`helpers.analysis.atlas.design_power` under ``power`` when simulated) and the stage-1
    table ``mech``."""
    if untestable is not None:
        text = (f"Resistance atlas {describe(untestable)}: every mechanism is measured in malignant plasma cells or "
                "towards them.")
    else:
        sig = mech[mech["significant"]]
        text = (f"Stage 1: {len(sig)} of {len(mech)} mechanisms differ between {test_group} and {reference_group} "
                "at q < 0.05 (signed score, BH over mechanisms)" +
                (": " + "; ".join(f"{r.mechanism} shift {r.effect:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}] "
                                  f"({'toward' if r.effect > 0 else 'away from'} resistance), q = {r.q:.2g}"
                                  for r in sig.itertuples()) if len(sig) else "") + ". "
                f"Stage 2: {len(findings['stage2'])} features of these mechanisms at q < 0.05 within their mechanism"
                + (" (" + ", ".join(r["feature"] for r in findings["stage2"][:8]) + ")" if findings["stage2"] else "")
                + f". Exploratory FDR over all {findings['n_features']} features: {findings['n_significant_q005']} at "
                "q < 0.05. ")
        if cnv_untestable is not None:
            text += f"CNV burden and subclones {describe(cnv_untestable)}. "
    if "truth" in findings:
        t = findings["truth"]
        text += (f"Against the simulated truth: {t['n_planted_significant']} of {t['n_planted_mechanisms']} planted "
                 f"mechanisms are found ({', '.join(t['planted_significant']) or 'none'}), "
                 f"{t['n_unplanted_significant']} of {t['n_mechanisms'] - t['n_planted_mechanisms']} unplanted ones "
                 "reach q < 0.05"
                 + (f" ({', '.join(t['unplanted_significant'])})" if t["unplanted_significant"] else "")
                 + f"; stage 2 keeps {t['stage2_n_planted_features']} planted and {t['stage2_n_unplanted_features']} "
                 "unplanted features"
                 + (f"; the CNV subclone count equals the planted one in {t['subclones_exact_agreement']:.0%} of the "
                    f"{t['subclones_n_detectable']} patients whose clones meet the detectability rule "
                    f"({t['subclones_rule']}; {t['subclones_agreement_all']:.0%} of all {t['subclones_n_patients']})."
                    if t["subclones_exact_agreement"] is not None else "."))
    if findings.get("power"):
        pw = findings["power"]
        text += (f" Power of this design ({pw['n_reps']} simulated cohorts each): " +
                 "; ".join(f"{m} {v['planted']:.0%} (null {v['null']:.0%})" for m, v in pw["per_mechanism"].items())
                 + ".")
        if "single_draw" in pw:
            p, n = pw["single_draw"]["planted"], pw["single_draw"]["null"]
            text += (f" One cohort of this design finds at least one planted mechanism with probability "
                     f"{rate_text(p['p_any_planted_found'])} (mean {p['mean_planted_found']:.2f} found) and shows an "
                     f"unplanted one at q < 0.05 with probability {rate_text(p['p_any_unplanted_significant'])}; with "
                     f"no resistance mechanism planted, an unplanted mechanism reaches q < 0.05 with probability "
                     f"{rate_text(n['p_any_unplanted_significant'])}.")
    return text


def power_conclusion(findings: dict[str, Any], n_cohorts: int, seconds: float) -> str:
    """Notebook 09's conclusion from its findings record (:func:`helpers.analysis.power.power_findings`)."""
    need = findings["smallest_n_for_80pct_power_fitted"]
    dd = findings["default_design"]
    pw, design = dd["power"], (dd["n_cr"], dd["n_nr"])
    sizes, scales = findings["group_sizes"], findings["effect_scales"]
    small = {k: v for k, v in findings["classifier"].items() if k in ("4", "8", "32")}
    cal = findings["study_auc_calibration"]
    scale = cal["effect_scale_for_study_auc"]
    by_scale = ", ".join(f"{float(k):g}x: {v:.2f}" for k, v in cal["mean_cv_auc_by_effect_scale"].items())
    return (
        "With the configured effects (1x), the smallest group size whose fitted power reaches 80% is " +
        "; ".join(f"{k.replace('_', ' ')}: {describe_smallest_n(v)}" for k, v in need.items()) +
        f" patients per group (the curve fitted to {findings['n_reps']} simulated cohorts per design; the band's range "
        f"is where its upper and lower 95% edges reach 80%; n = {min(sizes)}-{max(sizes)} simulated). "
        f"At this cohort's own design ({design[0]} vs {design[1]}) the observed power [exact 95% CI] is " +
        "; ".join(describe_power(k, v) for k, v in pw.items()) +
        (" (the AUC's power by the permutation rule, observed only)" if "auc_bm_34" in pw else "") +
        ". The classifier's expected cross-validated AUC is " +
        ", ".join(f"{v['mean_auc']:.2f} (over cohorts {v['auc_q025']:.2f}-{v['auc_q975']:.2f}; mean Hanley-McNeil CI "
                  f"width {v['mean_hanley_mcneil_ci_width']:.2f}) at {k} per group" for k, v in small.items()) +
        f". At {design[0]} vs {design[1]} its mean AUC by effect scale is {by_scale}: the study's "
        f"{cal['study_auc']:.2f} is " +
        (f"expected at {scale:.2f}x the planted effects" if scale is not None
         else f"not reached at any simulated scale (up to {max(scales):g}x)") +
        f". {n_cohorts} cohorts took {seconds:.0f} s."
    )
