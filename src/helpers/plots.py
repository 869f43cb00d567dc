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
