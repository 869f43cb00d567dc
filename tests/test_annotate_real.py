"""Annotation on real labelled cells: scanpy's bundled pbmc68k_reduced (700 real PBMC, log-normalised, 765 genes,
published `bulk_labels`; coarse and partly noisy labels from correlation with sorted bulk profiles).

The agreement thresholds below were fixed before the annotator was run on these cells (2026-11-23) and are not
tuned to what it reaches; the measured values are written to stdout (`pytest -s`) for the closing notes.
Types both sides know: CD14 monocytes, NK, B, CD4 T, CD8 T, dendritic cells (and the CD34+ progenitors).

Two facts about these cells, found on the first run and kept visible here rather than hidden in thresholds:
- 30 of the 95 'CD19+ B' cells form a cluster of plasmablasts (MS4A1 low; TNFRSF17, MZB1, FKBP11, IGJ high):
  a bulk-profile label cannot tell them from B cells, so a plasma call counts as B lineage for that label, and the
  plasma test asks that plasma calls come from the B lineage and never from T, NK or myeloid cells.
- the 'CD14+ Monocyte' cells carry FCGR3A at 3.1 log units (0.7 in the 'Dendritic' cells, which are mostly
  classical monocytes by LYZ/S100A9): the label does not separate classical from nonclassical monocytes, so the
  monocyte subset check asks for a monocyte subset (not a DC), and the classical share is printed."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers.annotation import cell_types

# bulk label -> (expected compartment, acceptable subsets or None)
EXPECTED = {
    "CD14+ Monocyte": ("myeloid", {"mono_classical", "mono_nonclassical", "mono_IFN"}),
    "CD56+ NK": ("NK", None),
    "CD19+ B": ("B", None),  # plasma calls count as B lineage (see above)
    "CD4+/CD25 T Reg": ("T", {"CD4_naive", "CD4_memory", "CD4_effector", "Treg"}),
    "CD4+/CD45RO+ Memory": ("T", {"CD4_naive", "CD4_memory", "CD4_effector", "Treg"}),
    "CD4+/CD45RA+/CD25- Naive T": ("T", {"CD4_naive", "CD4_memory", "CD4_effector", "Treg"}),
    "CD8+ Cytotoxic T": ("T", {"CD8_naive", "CD8_memory", "CD8_effector"}),
    "CD8+/CD45RA+ Naive Cytotoxic": ("T", {"CD8_naive", "CD8_memory", "CD8_effector"}),
    "Dendritic": ("myeloid", None),
}
GROUP = {"CD14+ Monocyte": "CD14 monocytes", "CD56+ NK": "NK", "CD19+ B": "B", "CD4+/CD25 T Reg": "CD4 T",
         "CD4+/CD45RO+ Memory": "CD4 T", "CD4+/CD45RA+/CD25- Naive T": "CD4 T", "CD8+ Cytotoxic T": "CD8 T",
         "CD8+/CD45RA+ Naive Cytotoxic": "CD8 T", "Dendritic": "dendritic"}
# fixed in advance: compartment agreement per type, subset agreement where the labels carry a subset
MIN_COMPARTMENT = {"CD14 monocytes": 0.90, "B": 0.90, "NK": 0.70, "CD4 T": 0.85, "CD8 T": 0.80, "dendritic": 0.85}
MIN_SUBSET = {"CD14 monocytes": 0.70, "CD4 T": 0.50, "CD8 T": 0.50}
MIN_OVERALL_COMPARTMENT = 0.85


@pytest.fixture(scope="module")
def pbmc68k():
    import scanpy as sc

    a = sc.datasets.pbmc68k_reduced()
    cells = a.raw.to_adata()  # log1p(CP10k) of 765 genes
    calls = cell_types.annotate_cells(cells, graph=a.obsp["connectivities"], layer=None, seed=0)
    return a.obs["bulk_labels"].astype(str), calls


def _compartment_ok(label: str, called: str) -> bool:
    return called == EXPECTED[label][0] or (label == "CD19+ B" and called == "plasma")


def agreement_table(labels: pd.Series, calls: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for group in dict.fromkeys(GROUP.values()):
        sel = labels.map(GROUP).eq(group).to_numpy()
        comp_ok = [_compartment_ok(labels.iloc[i], calls["compartment"].iloc[i]) for i in np.where(sel)[0]]
        subs = [EXPECTED[labels.iloc[i]][1] for i in np.where(sel)[0]]
        sub_ok = [calls["cell_type"].iloc[i] in s for i, s in zip(np.where(sel)[0], subs) if s is not None]
        rows.append({"type": group, "n": int(sel.sum()), "compartment_agreement": float(np.mean(comp_ok)),
                     "subset_agreement": float(np.mean(sub_ok)) if sub_ok else np.nan,
                     "unassigned": float((calls["compartment"].to_numpy()[sel] == "unassigned").mean())})
    return pd.DataFrame(rows).set_index("type")


def test_pbmc68k_agreement_per_type(pbmc68k):
    labels, calls = pbmc68k
    table = agreement_table(labels, calls)
    print("\npbmc68k_reduced agreement with bulk_labels\n" + table.round(3).to_string())
    for group, lo in MIN_COMPARTMENT.items():
        assert table.loc[group, "compartment_agreement"] >= lo, (group, table.loc[group].to_dict())
    for group, lo in MIN_SUBSET.items():
        assert table.loc[group, "subset_agreement"] >= lo, (group, table.loc[group].to_dict())
    known = labels.isin(list(EXPECTED)).to_numpy()
    overall = np.mean([_compartment_ok(labels.iloc[i], calls["compartment"].iloc[i]) for i in np.where(known)[0]])
    classical = float(calls["cell_type"][(labels == "CD14+ Monocyte").to_numpy()].eq("mono_classical").mean())
    print(f"overall compartment agreement {overall:.3f}; 'CD14+ Monocyte' cells called classical: {classical:.3f}")
    assert overall >= MIN_OVERALL_COMPARTMENT


def test_pbmc68k_plasma_calls_only_from_the_b_lineage(pbmc68k):
    """Plasma needs positive evidence: no T, NK or myeloid cell is called plasma (under 1% of them), and the plasma
    calls are cells the bulk labels put in the B lineage (the plasmablast cluster)."""
    labels, calls = pbmc68k
    plasma = (calls["compartment"] == "plasma").to_numpy()
    non_b = labels.map(lambda lab: EXPECTED.get(lab, ("other",))[0] in ("T", "NK", "myeloid")).to_numpy()
    print(f"\npbmc68k_reduced plasma calls: {plasma.sum()} ({plasma.mean():.3f}); among T/NK/myeloid-labelled cells "
          f"{plasma[non_b].mean():.4f}; B-labelled among plasma calls {(labels[plasma] == 'CD19+ B').mean():.3f}")
    assert plasma[non_b].mean() < 0.01
    assert (labels[plasma] == "CD19+ B").mean() >= 0.9
