"""Figures shared by the notebooks (one style: CR blue, NR red, patients as points)."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg") if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline") else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from helpers.analysis.power import is_balanced  # noqa: E402
from helpers.claims import claim_by_label  # noqa: E402

RESPONSE_COLORS = {"CR": "#3b75af", "NR": "#c8453c"}


def palette(groups: list[str]) -> dict[str, str]:
    default = ["#3b75af", "#c8453c"]
    return {g: RESPONSE_COLORS.get(g, default[i % 2]) for i, g in enumerate(groups)}


def design_figure(summary: pd.DataFrame, truth: dict[str, Any] | None, groups: list[str]) -> plt.Figure:
    """Cells and median UMIs per sample by response; planted per-patient activations when known."""
    pal = palette(groups)
    ncol = 3 if truth is not None else 2
    fig, axes = plt.subplots(1, ncol, figsize=(5.2 * ncol, 4.2))
    s = summary.sort_values(["tissue", "response", "sample_id"])
    for ax, col, lab in ((axes[0], "n_cells", "cells per sample"), (axes[1], "median_umis", "median UMIs per cell")):
        ax.bar(range(len(s)), s[col], color=[pal.get(r, "grey") for r in s["response"]])
        ax.set_xticks(range(len(s)))
        ax.set_xticklabels(s["sample_id"], rotation=90, fontsize=6)
        ax.set_ylabel(lab)
        ax.set_title(lab)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in pal.values()]
    axes[0].legend(handles, list(pal), title="response", fontsize=8)
    if truth is not None:
        rows = []
        for eff, e in truth["effects"].items():
            for pid, a in e["per_patient_activation"].items():
                rows.append({"effect": eff, "patient": pid, "activation": a * (-1 if e["direction"] == "down" else 1),
                             "response": truth["patients"][pid]["response"]})
        df = pd.DataFrame(rows)
        sns.stripplot(data=df, y="effect", x="activation", hue="response", palette=pal, ax=axes[2], dodge=True, size=4)
        axes[2].axvline(0, color="k", lw=0.6)
        axes[2].set_xlabel("planted log2 fold change per patient")
        axes[2].set_title("planted effects (truth)")
    fig.tight_layout()
    return fig


def qc_figure(table: pd.DataFrame, thresholds: pd.DataFrame, sample_key: str = "sample_id") -> plt.Figure:
    """Per-sample distributions of UMIs, genes and mito % with each sample's thresholds drawn (red ticks)."""
    samples = sorted(table[sample_key].unique())
    fig, axes = plt.subplots(3, 1, figsize=(max(8, 0.28 * len(samples)), 9), sharex=True)
    spec = [("total_counts", "min_counts", "UMIs per cell", True), ("n_genes", "min_genes", "genes per cell", True),
            ("pct_mt", "max_pct_mt", "mitochondrial %", False)]
    by_sample = dict(list(table.groupby(sample_key, observed=True, sort=False)))  # one pass, not samples x cells
    for ax, (col, thr, lab, log) in zip(axes, spec):
        data = [by_sample[s][col].to_numpy() for s in samples]
        ax.violinplot([np.log10(d + 1) if log else d for d in data], showextrema=False, widths=0.8)
        t = thresholds.loc[samples, thr].to_numpy()
        ax.scatter(np.arange(1, len(samples) + 1), np.log10(t + 1) if log else t, marker="_", s=120, color="#c8453c",
                   zorder=3, label="threshold")
        ax.set_ylabel(("log10 " if log else "") + lab)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xticks(np.arange(1, len(samples) + 1))
    axes[-1].set_xticklabels(samples, rotation=90, fontsize=6)
    fig.suptitle("Per-sample QC: median - 3 MAD on log UMIs and genes, median + 3 MAD on mito %")
    fig.tight_layout()
    return fig


def embedding_grid(panels: list[tuple[str, np.ndarray, pd.DataFrame]], keys: list[str], groups_palette=None,
                   s: float = 1.0) -> plt.Figure:
    """Rows = embeddings (title, coordinates, obs), columns = obs keys coloured categorically."""
    fig, axes = plt.subplots(len(panels), len(keys), figsize=(4.2 * len(keys), 4.0 * len(panels)), squeeze=False)
    for r, (title, xy, obs) in enumerate(panels):
        for c, k in enumerate(keys):
            ax = axes[r, c]
            cat = obs[k].astype(str)
            levels = sorted(cat.unique())
            pal = (groups_palette if (groups_palette and set(levels) <= set(groups_palette)) else
                   dict(zip(levels, sns.color_palette("tab20", len(levels)) if len(levels) <= 20 else
                            sns.color_palette("husl", len(levels)))))
            order = np.random.default_rng(0).permutation(len(cat))
            ax.scatter(xy[order, 0], xy[order, 1], c=[pal[v] for v in cat.to_numpy()[order]], s=s, linewidths=0,
                       rasterized=True)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{title}: {k}", fontsize=10)
            if len(levels) <= 12:
                ax.legend(handles=[plt.Line2D([], [], marker="o", ls="", color=pal[v], label=v) for v in levels],
                          fontsize=6, loc="best", markerscale=0.8, frameon=False)
    fig.tight_layout()
    return fig


def confusion_figure(conf: pd.DataFrame, title: str = "") -> plt.Figure:
    """Row-normalised confusion matrix (truth rows, called columns)."""
    norm = conf.div(conf.sum(1), axis=0)
    fig, ax = plt.subplots(figsize=(0.42 * conf.shape[1] + 3, 0.36 * conf.shape[0] + 2))
    sns.heatmap(norm, cmap="Blues", vmin=0, vmax=1, ax=ax, cbar_kws={"label": "fraction of truth row"},
                annot=conf.shape[0] <= 30, fmt=".2f", annot_kws={"fontsize": 5})
    ax.set_title(title)
    fig.tight_layout()
    return fig


def composition_figure(fractions: pd.DataFrame, groups: pd.Series, stats_table: pd.DataFrame,
                       group_order: list[str]) -> plt.Figure:
    """Per-patient fraction of each cell type by response (points = patients), q-value in the titles."""
    cols = list(fractions.columns)
    n = len(cols)
    ncol = 6
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 2.4 * nrow), squeeze=False)
    pal = palette(group_order)
    q = stats_table.set_index("cell_type")["q"] if "q" in stats_table else pd.Series(dtype=float)
    df = fractions.assign(response=groups.reindex(fractions.index).astype(str))
    for ax, c in zip(axes.ravel(), cols):
        sns.boxplot(data=df, x="response", y=c, order=group_order, ax=ax, palette=pal, hue="response",
                    showfliers=False, width=0.5, legend=False)
        sns.stripplot(data=df, x="response", y=c, order=group_order, ax=ax, color="k", size=3)
        ax.set_title(f"{c}\nq={q.get(c, np.nan):.2g}", fontsize=8)
        ax.set_xlabel("")
        ax.set_ylabel("fraction")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def effect_heatmap(grid: pd.DataFrame, row: str, col: str, title: str = "", q_col: str = "q") -> plt.Figure:
    """Heat map of NR-vs-CR effects (rows x columns) with '*' where q < 0.05."""
    eff = grid.pivot(index=row, columns=col, values="effect").astype(float)
    q = grid.pivot(index=row, columns=col, values=q_col).astype(float)
    ann = q.map(lambda v: "*" if v < 0.05 else "").reindex_like(eff)
    lim = np.nanmax(np.abs(eff.to_numpy())) if eff.size else 1
    fig, ax = plt.subplots(figsize=(1.4 * eff.shape[1] + 3, 0.32 * eff.shape[0] + 1.8))
    sns.heatmap(eff, cmap="RdBu_r", center=0, vmin=-lim, vmax=lim, annot=ann, fmt="", ax=ax,
                cbar_kws={"label": "shift (NR - CR)"})
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def patient_points(panels: dict[str, tuple[pd.Series, str | None]], responses: pd.Series, groups: list[str],
                   records: dict[str, dict] | None = None, ylabel: str = "score (z)") -> plt.Figure:
    """One panel per measure: per-patient values by response with the claim's effect, CI and p in the title."""
    pal = palette(groups)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, (values, ylab)) in zip(axes.ravel(), panels.items()):
        df = pd.DataFrame({"value": values, "response": responses.reindex(values.index).astype(str)}).dropna()
        if df["response"].value_counts().reindex(groups).fillna(0).min() >= 2:  # seaborn fails on empty groups
            sns.boxplot(data=df, x="response", y="value", order=groups, hue="response", palette=pal, ax=ax,
                        showfliers=False, width=0.5, legend=False)
        sns.stripplot(data=df, x="response", y="value", order=groups, color="k", size=4, ax=ax)
        r = (records or {}).get(name)
        sub = (f"\nshift {r['effect']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}], p={r['p']:.2g}"
               if r and r.get("effect") is not None else "")
        ax.set_title(name + sub, fontsize=8)
        ax.set_xlabel("")
        ax.set_ylabel(ylab or ylabel)
    fig.tight_layout()
    return fig


def top_effects(table: pd.DataFrame, label: str, n: int = 20, title: str = "") -> plt.Figure:
    """Horizontal effect plot with 95% CIs for the first ``n`` rows of a comparison table."""
    t = table.dropna(subset=["effect"]).head(n).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(t) + 1.5))
    y = np.arange(len(t))
    colors = ["#c8453c" if e > 0 else "#3b75af" for e in t["effect"]]
    ax.errorbar(t["effect"], y, xerr=[t["effect"] - t["ci_low"], t["ci_high"] - t["effect"]], fmt="none",
                ecolor="grey", lw=1)
    ax.scatter(t["effect"], y, c=colors, zorder=3)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{l}  (q={q:.1g})" for l, q in zip(t[label], t["q"])], fontsize=7)
    ax.set_xlabel("shift NR - CR (95% CI)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def volcano_grid(de: dict[str, pd.DataFrame], highlight: dict[str, list[str]] | None = None) -> plt.Figure:
    """One volcano per DE table (log2 fold change vs -log10 p), genes of highlighted sets coloured."""
    fig, axes = plt.subplots(1, max(len(de), 1), figsize=(4.5 * max(len(de), 1), 4), squeeze=False)
    cols = ["#c8453c", "#e39a2d", "#5b8f3a"]
    for ax, (name, res) in zip(axes.ravel(), de.items()):
        r = res.dropna(subset=["pvalue"])
        ax.scatter(r["log2FoldChange"], -np.log10(r["pvalue"]), s=3, c="lightgrey", rasterized=True)
        for (hname, genes), col in zip((highlight or {}).items(), cols):
            h = r[r.index.isin(genes)]
            ax.scatter(h["log2FoldChange"], -np.log10(h["pvalue"]), s=8, c=col, label=hname[:32])
        ax.set_title(name)
        ax.set_xlabel("log2 fold change NR / CR")
        ax.set_ylabel("-log10 p")
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def enrichment_bars(enr: pd.DataFrame) -> plt.Figure:
    """ULM enrichment scores per cell type and set."""
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(enr) + 1.5))
    e = enr.assign(label=enr["cell_type"] + " | " + enr["set"].str.slice(0, 45)).iloc[::-1]
    ax.barh(e["label"], e["score"], color=["#c8453c" if v > 0 else "#3b75af" for v in e["score"]])
    for y, (v, p) in enumerate(zip(e["score"], e["p"])):
        ax.text(v, y, f" p={p:.1g}", va="center", fontsize=6)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel("ULM score on DESeq2 Wald statistics (NR vs CR)")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig


def scatter_by_group(x: pd.Series, y: pd.Series, groups: pd.Series, order: list[str], xlabel: str, ylabel: str,
                     corr: dict | None = None) -> plt.Figure:
    pal = palette(order)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    g = groups.reindex(x.index).astype(str)
    for lev in order:
        m = (g == lev).to_numpy()
        ax.scatter(x[m], y[m], c=pal[lev], label=lev, s=25)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if corr:
        ax.set_title(f"Spearman {corr['rho']:.2f} [{corr['ci_low']:.2f}, {corr['ci_high']:.2f}], p={corr['p']:.2g}",
                     fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def km_figure(curves: dict[str, pd.DataFrame], surv: dict, title: str = "") -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, col in (("high", "#c8453c"), ("low", "#3b75af")):
        c = curves[name]
        ax.step(c.index, c.iloc[:, 0], where="post", color=col, label=f"{name} (median split)")
        ax.fill_between(c.index, c.iloc[:, 1], c.iloc[:, 2], step="post", color=col, alpha=0.15)
    ax.set_xlabel("months")
    ax.set_ylabel("progression-free survival")
    ax.set_title(f"{title}\nHR/SD {surv['effect']:.2f} [{surv['ci_low']:.2f}, {surv['ci_high']:.2f}], "
                 f"log-rank p={surv['logrank_p']:.2g}", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray, float, float | None]]) -> plt.Figure:
    """ROC curves (name: y, score, AUC, study AUC); the study's value is given in the legend for comparison."""
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    for (name, (y, p, auc, study)), col in zip(curves.items(), ["#c8453c", "#e39a2d", "#3b75af"]):
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, color=col, label=f"{name}: AUC {auc:.2f}" + (f" (study {study:.2f})" if study else ""))
    ax.plot([0, 1], [0, 1], "k--", lw=0.6)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def selection_figure(freq: pd.Series, final: list[str]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 0.22 * len(freq) + 1))
    f = freq.iloc[::-1]
    ax.barh(f.index, f.to_numpy(), color=["#c8453c" if g in final else "lightgrey" for g in f.index])
    ax.set_xlabel("fraction of training folds selecting the gene (top 8)")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig


def scorecard_figure(card: pd.DataFrame) -> plt.Figure:
    """One panel per kind of measure (gene-set shift, gene shift, PROGENy activity shift, hazard ratio, AUC): each
    claim's measured value with its 95% CI, coloured by verdict, against the kind's null (0, 1 or 0.5); the study's
    AUCs as stars. Rows without a value (not testable, not applicable) are listed with their verdict."""
    colors = {"reproduced": "#2e8b57", "not reproduced": "#c8453c"}
    kinds = {"set": ("gene-set score shift NR - CR (z)", 0.0), "gene": ("gene shift NR - CR (log2 CPM)", 0.0),
             "progeny": ("PROGENy activity shift NR - CR", 0.0), "survival": ("hazard ratio per SD", 1.0),
             "auc": ("AUC (* study)", 0.5)}
    c = card.assign(kind=[claim_by_label(x).kind for x in card["claim"]])
    present = [k for k in kinds if (c["kind"] == k).any()]
    heights = [max(int((c["kind"] == k).sum()), 1) for k in present]
    fig, axes = plt.subplots(len(present), 1, figsize=(8, 0.5 * sum(heights) + 0.9 * len(present)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, k in zip(axes[:, 0], present):
        rows = c[c["kind"] == k].iloc[::-1].reset_index(drop=True)
        label, null = kinds[k]
        for i, r in rows.iterrows():
            if pd.isna(r["measured"]):
                continue
            ax.errorbar(r["measured"], i, xerr=[[r["measured"] - r["ci_low"]], [r["ci_high"] - r["measured"]]],
                        fmt="o", color=colors.get(r["verdict"], "grey"))
            if k == "auc" and isinstance(r["study_value"], (int, float)):
                ax.plot(float(r["study_value"]), i, marker="*", color="k", ms=10)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"{a} [{str(v).split(':')[0]}]" for a, v in zip(rows["claim"], rows["verdict"])],
                           fontsize=7)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.axvline(null, color="k", lw=0.5)
        ax.set_xlabel(label, fontsize=8)
    fig.suptitle("reproduced value with 95% CI (green: reproduced, red: not reproduced)", fontsize=9)
    fig.tight_layout()
    return fig


def mechanism_forest(mech: pd.DataFrame, power: pd.DataFrame | None = None, alpha: float = 0.05) -> plt.Figure:
    """Stage 1 of the atlas: per mechanism, the NR-minus-CR shift of its signed score (positive = toward resistance)
    with its 95% CI and q; filled markers for q < ``alpha``; with a ``planted`` column (simulated cohorts), planted
    mechanisms in red; with ``power`` (per mechanism ``rate_found``), the design's power beside each label."""
    m = mech.dropna(subset=["effect"]).sort_values("effect")
    fig, ax = plt.subplots(figsize=(7.5, 0.38 * len(m) + 1.6))
    y = np.arange(len(m))
    planted = m["planted"].to_numpy(bool) if "planted" in m else np.zeros(len(m), bool)
    colour = np.where(planted, "#c0392b", "#34495e")
    pw = power.set_index("mechanism")["rate_found"] if power is not None and len(power) else pd.Series(dtype=float)
    for i, r in enumerate(m.itertuples()):
        ax.plot([r.ci_low, r.ci_high], [i, i], color=colour[i], lw=1.5)
        ax.scatter(r.effect, i, s=40, color=colour[i] if r.q < alpha else "white", edgecolor=colour[i], zorder=3)
        ax.annotate(f"q = {r.q:.2g}", (max(r.ci_high, r.effect), i), xytext=(4, -3), textcoords="offset points",
                    fontsize=7)
    labels = [f"{r.mechanism}" + (f"  (power {pw[r.mechanism]:.0%})" if r.mechanism in pw.index else "")
              for r in m.itertuples()]
    ax.set_yticks(y, labels, fontsize=8)
    ax.axvline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("NR minus CR, signed mechanism score (Hodges-Lehmann, 95% CI; > 0 = toward resistance)")
    title = "stage 1: one signed score per mechanism, BH over mechanisms (filled: q < 0.05)"
    if planted.any():
        title += "\nred: planted in the simulated truth"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def atlas_heatmap(values: pd.DataFrame, table: pd.DataFrame, responses: pd.Series, groups: list[str],
                  n_interactions: int = 12) -> plt.Figure:
    """Mechanism x patient overview: each feature z-scored across patients, patients ordered by response,
    rows grouped by mechanism and labelled with the NR-vs-CR shift's q. Of the (many) ligand-receptor
    interactions only the ``n_interactions`` with the smallest p are drawn; the table holds them all."""
    t = table.dropna(subset=["p"]).copy()
    inter = t[t["kind"] == "interaction"].nsmallest(n_interactions, "p")
    rows = pd.concat([t[t["kind"] != "interaction"], inter]).sort_values(["mechanism", "p"])
    order = responses.reindex(values.index).astype(str)
    cols = [p for g in groups for p in order.index[order == g]]
    Z = values.loc[cols, rows["feature"]].astype(float)
    Z = ((Z - Z.mean()) / Z.std(ddof=1).replace(0, 1)).T
    Z.index = [f"{m[:14]} | {f[:48]} (q={q:.2g})" for m, f, q in zip(rows["mechanism"], rows["feature"], rows["q"])]
    fig, ax = plt.subplots(figsize=(0.28 * len(cols) + 6, 0.24 * len(Z) + 2))
    sns.heatmap(Z, cmap="RdBu_r", center=0, vmin=-2.5, vmax=2.5, ax=ax, cbar_kws={"label": "z across patients"},
                xticklabels=True, yticklabels=True)
    pal = palette(groups)
    for i, p in enumerate(cols):
        ax.add_patch(plt.Rectangle((i, -0.9), 1, 0.7, color=pal[order[p]], clip_on=False))
    ax.tick_params(axis="both", labelsize=6)
    ax.set_xlabel("patients, ordered by response (" + ", ".join(groups) + ")")
    ax.set_title("resistance-mechanism atlas (tumour cells; microenvironment -> tumour)", fontsize=9)
    fig.tight_layout()
    return fig


def power_figure(summary: pd.DataFrame, target: float = 0.8, fit: pd.DataFrame | None = None) -> plt.Figure:
    """Power curves (one panel per test, one colour per effect scale: the observed share of significant cohorts
    with its exact 95% CI as bars) and the classifier's expected AUC (band: 2.5-97.5% of simulated cohorts) and mean
    Hanley-McNeil 95% CI width against group size. With ``fit`` (:func:`helpers.analysis.power.fit_power_curve`,
    best on a dense ``n_grid``) each scale's fitted curve is drawn with its 95% band and the observed points are
    not joined; without it, the observed points are joined by lines."""
    s = summary[is_balanced(summary["n_per_group"])].copy()
    tests = [t for t in s["test"].unique() if t != "classifier_auc"]
    has_clf = (s["test"] == "classifier_auc").any()
    n_pan = len(tests) + (2 if has_clf else 0)
    ncol = 4
    nrow = int(np.ceil(n_pan / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.7 * nrow), squeeze=False)
    scales = sorted(s["effect_scale"].unique())
    cmap = plt.get_cmap("viridis", len(scales) + 1)
    f = fit[is_balanced(fit["n_per_group"])] if fit is not None else None
    for ax, t in zip(axes.flat, tests):
        d = s[s["test"] == t]
        for i, sc in enumerate(scales):
            e = d[d["effect_scale"] == sc].sort_values("n_per_group")
            x = e["n_per_group"].astype(float) * 2 ** (0.04 * (i - (len(scales) - 1) / 2))  # dodged: bars apart
            c = f[(f["test"] == t) & (f["effect_scale"] == sc)].sort_values("n_eff") if f is not None else None
            joined = c is None or c["fitted_power"].isna().all()
            ax.errorbar(x, e["power"], yerr=[e["power"] - e["power_ci_low"], e["power_ci_high"] - e["power"]],
                        marker="o", ms=3, lw=1 if joined else 0, elinewidth=0.8, capsize=2, color=cmap(i),
                        alpha=1 if joined else 0.8, label=f"x{sc:g}")
            if not joined:
                ax.plot(c["n_eff"], c["fitted_power"], color=cmap(i), lw=1.3)
                ax.fill_between(c["n_eff"], c["fitted_ci_low"], c["fitted_ci_high"], color=cmap(i), alpha=0.15, lw=0)
        ax.axhline(target, color="grey", ls=":", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(t.replace("_", " "), fontsize=8)
        ax.set_xlabel("patients per group", fontsize=7)
        ax.set_ylabel("power (p < 0.05)", fontsize=7)
    if tests:
        axes.flat[0].legend(title="planted effect", fontsize=6, title_fontsize=6)
    if f is not None:
        fig.suptitle("points: observed power (exact 95% CI); lines: fitted logistic curve in log n (95% band)",
                     fontsize=8)
    if has_clf:
        d = s[s["test"] == "classifier_auc"].sort_values("n_per_group")
        ax = axes.flat[len(tests)]
        for i, sc in enumerate(sorted(d["effect_scale"].unique())):
            e = d[d["effect_scale"] == sc]
            x = e["n_per_group"].astype(float)
            ax.plot(x, e["mean_auc"], marker="o", ms=3, color=cmap(scales.index(sc)), label=f"x{sc:g}")
            ax.fill_between(x, e["auc_q025"], e["auc_q975"], color=cmap(scales.index(sc)), alpha=0.2)
        ax.axhline(0.5, color="grey", ls=":", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_title("classifier AUC (34 genes, CV)", fontsize=8)
        ax.set_xlabel("patients per group", fontsize=7)
        ax = axes.flat[len(tests) + 1]
        for sc in sorted(d["effect_scale"].unique()):
            e = d[d["effect_scale"] == sc]
            ax.plot(e["n_per_group"].astype(float), e["mean_ci_width"], marker="o", ms=3, color=cmap(scales.index(sc)))
        ax.set_xscale("log", base=2)
        ax.set_title("width of the AUC's 95% CI", fontsize=8)
        ax.set_xlabel("patients per group", fontsize=7)
    for ax in list(axes.flat)[n_pan:]:
        ax.axis("off")
    fig.tight_layout()
    return fig
