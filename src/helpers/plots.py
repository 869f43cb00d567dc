"""Figures shared by the notebooks (one style: CR blue, NR red, patients as points)."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg") if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline") else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

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
    for ax, (col, thr, lab, log) in zip(axes, spec):
        data = [table.loc[table[sample_key] == s, col].to_numpy() for s in samples]
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
