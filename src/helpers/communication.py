"""Cell-cell communication per patient from liana's bundled consensus ligand-receptor resource.

For each patient, sender and receiver group, an interaction's score is the product of the ligand's mean
log-normalised expression in the sender and the receptor's (complexes: minimum over subunits) in the
receiver (liana's 'expression product'); CR and NR are then compared per interaction at the patient level."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd


def lr_resource(name: str = "consensus") -> pd.DataFrame:
    import liana as li

    return li.resource.select_resource(name)


def _mean_expr(adata: ad.AnnData, genes: list[str], group: pd.Series) -> pd.DataFrame:
    from .annotate import lognorm

    L = lognorm(adata, genes)
    return L.groupby(group.to_numpy(), observed=True).mean()


def lr_scores_per_patient(adata: ad.AnnData, group_key: str, ligands: set[str] | None = None,
                          senders: list[str] | None = None, receivers: list[str] | None = None,
                          patient: str = "patient_id", min_cells: int = 10,
                          resource: pd.DataFrame | None = None) -> pd.DataFrame:
    """Long table: patient, sender, receiver, ligand, receptor, score (expression product)."""
    res = resource if resource is not None else lr_resource()
    if ligands is not None:
        res = res[res["ligand"].isin(ligands)]
    rec_sub = {r: r.split("_") for r in res["receptor"].unique()}
    genes = sorted(set(res["ligand"]) | {g for subs in rec_sub.values() for g in subs})
    genes = [g for g in genes if g in adata.var_names]
    res = res[res["ligand"].isin(genes) & res["receptor"].map(lambda r: all(g in genes for g in rec_sub[r]))]
    rows = []
    grp = adata.obs[group_key].astype(str)
    for p in adata.obs[patient].astype(str).unique():
        m = (adata.obs[patient].astype(str) == p).to_numpy()
        sizes = grp[m].value_counts()
        ok = sizes.index[sizes >= min_cells]
        E = _mean_expr(adata[m], genes, grp[m])
        E = E.loc[E.index.isin(ok)]
        for s in senders or E.index:
            if s not in E.index:
                continue
            for r in receivers or E.index:
                if r not in E.index:
                    continue
                lig = E.loc[s, res["ligand"]].to_numpy()
                rec = np.array([min(E.loc[r, g] for g in rec_sub[x]) for x in res["receptor"]])
                rows.append(pd.DataFrame({"patient_id": p, "sender": s, "receiver": r, "ligand": res["ligand"].to_numpy(),
                                          "receptor": res["receptor"].to_numpy(), "score": lig * rec}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
