"""Cell-cell communication per sample with liana, compared between response groups at the patient level.

liana's method ensemble (``rank_aggregate``: CellPhoneDB, Connectome, log2FC, NATMI, SingleCellSignalR,
CellChat-style scores, aggregated by rank) runs on every sample separately with liana's bundled
consensus resource (no download). Groups are compared on each interaction's per-sample ``lr_means`` (mean of
ligand and receptor expression; the aggregate rank ``magnitude`` is kept too, but ranks within a sample shift
whenever other interactions change), NR vs CR by a rank test across patients, never across cells. Permutation-based specificity is skipped (``n_perms=None``):
the comparison between groups, not the within-sample specificity, is the question here.
"""

from __future__ import annotations

import warnings
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from helpers.preprocessing.normalise import lognorm_matrix
from helpers.preprocessing.per_sample import map_cells_by_sample


def lr_resource(name: str = "consensus") -> pd.DataFrame:
    """liana's bundled ligand-receptor resource (ligand, receptor; complexes joined by '_')."""
    import liana as li

    return li.resource.select_resource(name)


LIANA_COLUMNS = ["source", "target", "ligand", "receptor", "magnitude", "lr_means", "expr_prod", "expressed"]


def liana_by_sample(adata: ad.AnnData, groupby: str, sample_key: str = "sample_id",
                    pairs: list[tuple[str, str]] | None = None, resource_name: str = "consensus",
                    ligands: set[str] | None = None, expr_prop: float = 0.1, min_cells: int = 10,
                    layer: str = "counts", return_all_lrs: bool = True, client: Any = None) -> pd.DataFrame:
    """liana ``rank_aggregate`` per sample on log-normalised counts; long table with one row per sample and
    interaction: sample, source, target, ligand, receptor, magnitude (-log10 rank), lr_means, expr_prod.

    ``pairs`` restricts (source, target) groups (e.g. myeloid -> tumour), ``ligands`` the resource's ligands.
    Groups with fewer than ``min_cells`` cells in a sample are left out of that sample. With a Dask ``client`` and
    cells kept in shards, each sample is one task on a worker (:func:`helpers.preprocessing.per_sample.map_cells_by_sample`:
    the same table)."""
    for col in (groupby, sample_key):
        if col not in adata.obs:
            raise KeyError(f"obs column '{col}' not found (needed for liana by sample)")
    res = lr_resource(resource_name)
    if ligands is not None:
        res = res[res["ligand"].isin(ligands)]
    subunits = {g for x in pd.concat([res["ligand"], res["receptor"]]).unique() for g in x.split("_")}
    genes = [g for g in adata.var_names if g in subunits]
    if not genes:
        raise ValueError(f"none of the {resource_name} resource's genes is in var_names (gene symbols expected)")
    # one sample's cells at a time (from the shards when adata holds cell groups); log-normalised per cell
    out = map_cells_by_sample(liana_one_sample, adata, [groupby], client, desc="liana per sample", groupby=groupby,
                              sample_key=sample_key, pairs=pairs, resource=res[["ligand", "receptor"]], genes=genes,
                              expr_prop=expr_prop, min_cells=min_cells, layer=layer, return_all_lrs=return_all_lrs)
    out = [r for r in out if r is not None]
    if not out:
        return pd.DataFrame(columns=[sample_key, *LIANA_COLUMNS])
    return pd.concat(out, ignore_index=True)


def liana_one_sample(sample: str, cells: ad.AnnData, groupby: str, sample_key: str,
                     pairs: list[tuple[str, str]] | None, resource: pd.DataFrame, genes: list[str],
                     expr_prop: float = 0.1, min_cells: int = 10, layer: str = "counts",
                     return_all_lrs: bool = True) -> pd.DataFrame | None:
    """:func:`liana_by_sample`'s rows of one sample's ``cells`` (None when no pair of groups has ``min_cells``)."""
    import liana as li

    if pairs is not None:
        groups = {g for p in pairs for g in p}
        cells = cells[cells.obs[groupby].astype(str).isin(groups).to_numpy()]
    a = ad.AnnData(X=lognorm_matrix(cells, genes, layer=layer), obs=cells.obs[[groupby]].astype(str),
                   var=pd.DataFrame(index=genes))
    sizes = a.obs[groupby].value_counts()
    ok = set(sizes.index[sizes >= min_cells])
    a = a[a.obs[groupby].isin(ok).to_numpy()].copy()
    gp = None
    if pairs is not None:
        gp = pd.DataFrame([p for p in pairs if p[0] in ok and p[1] in ok], columns=["source", "target"])
        if gp.empty:
            return None
    elif len(ok) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = li.mt.rank_aggregate(a, groupby=groupby, resource=resource, expr_prop=expr_prop, min_cells=min_cells,
                                 use_raw=False, n_perms=None, groupby_pairs=gp, return_all_lrs=return_all_lrs,
                                 verbose=False, inplace=False)
    if r is None or len(r) == 0:
        return None
    r = r.rename(columns={"ligand_complex": "ligand", "receptor_complex": "receptor"})
    r.insert(0, sample_key, sample)
    r["magnitude"] = -np.log10(r["magnitude_rank"].clip(lower=1e-300))
    # return_all_lrs keeps interactions below expr_prop with their values and flags them via the ranks
    props = _detected_fraction(a, groupby)
    r["expressed"] = (_complex_prop(props, r["source"], r["ligand"]) >= expr_prop) & \
                     (_complex_prop(props, r["target"], r["receptor"]) >= expr_prop)
    return r[[sample_key, *LIANA_COLUMNS]]


def _detected_fraction(a: ad.AnnData, groupby: str) -> pd.DataFrame:
    """Groups x genes: fraction of the group's cells with the gene detected."""
    import scipy.sparse as sp

    X = sp.csr_matrix(a.X)
    g = a.obs[groupby].astype(str).to_numpy()
    rows = {k: np.asarray((X[g == k] > 0).mean(0)).ravel() for k in np.unique(g)}
    return pd.DataFrame(rows, index=a.var_names).T


def _complex_prop(props: pd.DataFrame, groups: pd.Series, complexes: pd.Series) -> np.ndarray:
    """Per row, the smallest detected fraction over a complex's subunits ('A_B') in the row's group."""
    out = np.zeros(len(groups))
    for i, (grp, cx) in enumerate(zip(groups.to_numpy(), complexes.to_numpy())):
        subs = [x for x in str(cx).split("_")]
        out[i] = min(float(props.at[grp, x]) if x in props.columns else 0.0 for x in subs)
    return out


def interaction_key(lr: pd.DataFrame) -> pd.Series:
    """'source>target: ligand-receptor' labels of a liana table."""
    return lr["source"] + ">" + lr["target"] + ": " + lr["ligand"] + "-" + lr["receptor"]


def interaction_matrix(lr: pd.DataFrame, obs: pd.DataFrame, value: str = "lr_means", sample_key: str = "sample_id",
                       patient_key: str = "patient_id", min_present: float = 0.5) -> pd.DataFrame:
    """Patients x interactions (:func:`interaction_key`) of ``value`` (default ``lr_means``: the mean of ligand
    and receptor expression, an absolute quantity; ranks shift with every other interaction of the sample).
    With ``return_all_lrs`` every interaction has a value in every sample where both groups exist; an
    interaction is kept when it passes liana's expression filter (``expressed``) in at least ``min_present``
    of the patients."""
    if lr.empty:
        return pd.DataFrame()
    lr = lr.copy()
    lr["interaction"] = interaction_key(lr)
    to_patient = obs.drop_duplicates(sample_key).set_index(sample_key)[patient_key].astype(str)
    lr[patient_key] = lr[sample_key].map(to_patient)
    wide = lr.pivot_table(index=patient_key, columns="interaction", values=value, aggfunc="mean")
    expressed = lr.pivot_table(index=patient_key, columns="interaction", values="expressed", aggfunc="max")
    patients = sorted(obs[patient_key].astype(str).unique())
    frac = expressed.reindex(index=patients, columns=wide.columns).fillna(False).astype(bool).mean()
    return wide.reindex(patients).loc[:, frac >= min_present]
