"""Marker-based annotation from the committed marker table (data/markers.yaml): compartments, then subsets,
NK CD54 (ICAM1) states, and malignant vs normal plasma cells (light-chain restriction + inferred CNV).

All scores are means of log1p(counts per 10k) over a list's markers, computed straight from raw counts so
they do not depend on how X was transformed. Nothing here reads truth columns.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml

from .cohort import project_root


@lru_cache(maxsize=None)
def _load_markers_cached(path: str) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def load_markers(path: str | Path | None = None) -> dict[str, Any]:
    path = Path(path) if path else project_root() / "data" / "markers.yaml"
    if not path.exists():
        raise FileNotFoundError(f"marker table {path} does not exist")
    return _load_markers_cached(str(path))


def lognorm(adata: ad.AnnData, genes: list[str], layer: str | None = "counts") -> pd.DataFrame:
    """log1p(counts per 10k) of ``genes`` per cell, from raw counts in ``layer`` (or X when the layer is absent);
    ``layer=None`` means X already holds log-normalised values (e.g. a published object), used as is.
    Genes absent from the data are left out."""
    genes = [g for g in dict.fromkeys(genes) if g in adata.var_names]
    if layer is None:
        X = adata[:, genes].X
        X = X.toarray() if sp.issparse(X) else np.asarray(X)
        return pd.DataFrame(X.astype(np.float64), index=adata.obs_names, columns=genes)
    X = sp.csr_matrix(adata.layers[layer] if layer in adata.layers else adata.X)
    total = np.asarray(X.sum(1)).ravel()
    sub = X[:, adata.var_names.get_indexer(genes)].toarray().astype(np.float64)
    return pd.DataFrame(np.log1p(sub / np.maximum(total, 1)[:, None] * 1e4), index=adata.obs_names, columns=genes)


def lognorm_matrix(adata: ad.AnnData, genes: list[str] | None = None, layer: str = "counts") -> sp.csr_matrix:
    """Sparse log1p(counts per 10k) of all genes (or ``genes``, in that order) from raw counts in ``layer``."""
    X = sp.csr_matrix(adata.layers[layer] if layer in adata.layers else adata.X, dtype=np.float32)
    total = np.asarray(X.sum(1)).ravel()
    X = sp.csr_matrix(sp.diags((1e4 / np.maximum(total, 1)).astype(np.float32)) @ X)
    if genes is not None:
        X = X[:, adata.var_names.get_indexer(genes)]
    X.data = np.log1p(X.data)
    return sp.csr_matrix(X)


def marker_scores(adata: ad.AnnData, sets: dict[str, dict[str, Any]], layer: str | None = "counts") -> pd.DataFrame:
    """Per cell and set: mean log-expression of the set's ``markers`` minus half the mean of its ``negative``."""
    genes = [g for s in sets.values() for g in s.get("markers", []) + s.get("negative", [])]
    L = lognorm(adata, genes, layer)
    out = {}
    for name, s in sets.items():
        pos = [g for g in s["markers"] if g in L]
        if not pos:
            warnings.warn(f"none of the markers of '{name}' ({s['markers']}) is in the data; '{name}' is not scored")
            continue
        sc = L[pos].mean(1)
        neg = [g for g in s.get("negative", []) if g in L]
        if neg:
            sc = sc - 0.5 * L[neg].mean(1)
        out[name] = sc
    if not out:
        raise KeyError(f"none of the marker lists {list(sets)} has a gene in the data (gene symbols expected)")
    return pd.DataFrame(out)


MIN_ON_LEVEL = 1.0  # log1p(CP10k) units: a programme whose markers average below ~1.7 CP10k is not 'on'


def on_level(x: pd.Series, floor: float = MIN_ON_LEVEL) -> float:
    """Typical level of a marker score in the cells that express the programme: the median above the Otsu
    split of the on/off distribution (robust for rare types, unlike an upper quantile), never below ``floor``
    so that a programme absent from the data (only noise to split) cannot be inflated to look expressed."""
    t = otsu_threshold(x.to_numpy())
    above = x[x > t]
    return max(float(above.median()) if len(above) else float(x.max()), floor)


def scale_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """Divide each score by its on-level so lists with different expression levels compare."""
    lv = pd.Series({c: on_level(scores[c]) for c in scores}).replace(0, np.nan)
    return (scores / lv).fillna(0.0)


def smooth_scores(scores: pd.DataFrame, graph: sp.spmatrix | None, self_weight: float = 0.5) -> pd.DataFrame:
    """``self_weight`` x the cell's own scores + the rest x the connectivity-weighted mean of its neighbours'
    (rare types keep their identity: a cell is not outvoted by 15 neighbours of another type)."""
    if graph is None:
        return scores
    G = sp.csr_matrix(graph, dtype=np.float64)
    G = sp.diags(1.0 / np.maximum(np.asarray(G.sum(1)).ravel(), 1e-12)) @ G
    S = scores.to_numpy()
    return pd.DataFrame(self_weight * S + (1 - self_weight) * (G @ S), index=scores.index, columns=scores.columns)


def otsu_threshold(x: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    x = np.asarray(x, dtype=float)
    return float(threshold_otsu(x)) if np.ptp(x) > 0 else float(x.max())


def coexpression_doublets(adata: ad.AnnData, markers: dict[str, Any] | None = None, layer: str = "counts",
                          on_fraction: float = 0.3) -> pd.Series:
    """Cells expressing the programmes of two lineage compartments at once (heterotypic doublets).

    Each compartment's typical 'on' level is the median score of the cells above its Otsu threshold (the
    data-driven split of the bimodal on/off distribution); a compartment counts as expressed in a cell when the
    score exceeds ``on_fraction`` of that level (a doublet carries each partner's programme diluted about
    two-fold, and log-scale means shrink further with dropouts)."""
    markers = markers or load_markers()
    S = marker_scores(adata, markers["compartments"], layer)
    X = sp.csr_matrix(adata.layers[layer] if layer in adata.layers else adata.X)
    on = {}
    for c in S:
        genes = [g for g in markers["compartments"][c]["markers"] if g in adata.var_names]
        n_detected = np.asarray((X[:, adata.var_names.get_indexer(genes)] > 0).sum(1)).ravel()
        # two markers detected at least: one stray UMI of one marker never turns a programme on
        on[c] = (S[c] > on_fraction * on_level(S[c])) & (n_detected >= min(2, len(genes)))
    on = pd.DataFrame(on, index=S.index)
    labels = pd.Series({c: v.get("label", c) for c, v in markers["compartments"].items()})
    n_on = on.T.groupby(labels[on.columns].to_numpy()).any().T.sum(1)  # programmes of one compartment count once
    return (n_on >= 2).rename("coexpression_doublet")


def annotate_compartments(adata: ad.AnnData, graph: sp.spmatrix | None = None,
                          markers: dict[str, Any] | None = None, layer: str | None = "counts") -> tuple[pd.Series, pd.DataFrame]:
    """Compartment per cell: argmax of scaled, neighbour-smoothed compartment programme scores (a programme
    with a ``label`` reports that compartment, e.g. pDC programme -> myeloid)."""
    markers = markers or load_markers()
    S = smooth_scores(scale_scores(marker_scores(adata, markers["compartments"], layer)), graph)
    labels = {c: v.get("label", c) for c, v in markers["compartments"].items()}
    return S.idxmax(1).map(labels).rename("compartment"), S


def _restrict_graph(graph: sp.spmatrix | None, mask: np.ndarray) -> sp.spmatrix | None:
    if graph is None:
        return None
    idx = np.where(mask)[0]
    return sp.csr_matrix(graph)[idx][:, idx]


def annotate_subsets(adata: ad.AnnData, compartment: pd.Series, graph: sp.spmatrix | None = None,
                     markers: dict[str, Any] | None = None) -> pd.Series:
    """Subset per cell within its compartment: argmax of subset scores scaled by their 99th percentile within
    the compartment and smoothed over same-compartment neighbours (half self, half neighbour mean). NK CD56dim
    cells are then split per cell by ICAM1 (CD54) into CD54bright and CD54dim, without smoothing (the two
    states differ in that one gene, so neighbours do not inform it)."""
    markers = markers or load_markers()
    out = pd.Series("unassigned", index=adata.obs_names, dtype=object)
    for comp, sets in markers["subsets"].items():
        mask = (compartment == comp).to_numpy()
        if not mask.any():
            continue
        if len(sets) == 1:
            out[mask] = next(iter(sets))
            continue
        S = marker_scores(adata[mask], sets)
        # scale by the 99th percentile within the compartment, floored so an absent subset (stray counts only)
        # is not inflated to compete with the present ones
        S = S / S.quantile(0.99).clip(lower=MIN_ON_LEVEL)
        out[mask] = smooth_scores(S, _restrict_graph(graph, mask)).idxmax(1).to_numpy()
    nk_dim = (out == "NK_CD56dim").to_numpy()
    if nk_dim.any():
        icam = lognorm(adata[nk_dim], ["ICAM1"]).iloc[:, 0].to_numpy() if "ICAM1" in adata.var_names else \
            np.zeros(nk_dim.sum())
        thr = float(markers.get("nk_icam1_threshold", 0.0))
        out[nk_dim] = np.where(icam > thr, "NK_CD56dim_CD54bright", "NK_CD56dim_CD54dim")
    return out.rename("cell_type")


# ----------------------------------------------------------------------------------------------------
# malignant vs normal plasma cells
# ----------------------------------------------------------------------------------------------------
def light_chain_calls(adata: ad.AnnData, markers: dict[str, Any] | None = None, layer: str = "counts") -> pd.DataFrame:
    """Per cell: kappa and lambda constant-region counts and the call (kappa / lambda / none)."""
    markers = markers or load_markers()
    X = sp.csr_matrix(adata.layers[layer] if layer in adata.layers else adata.X)
    res = {}
    for chain, genes in markers["light_chains"].items():
        g = [x for x in genes if x in adata.var_names]
        res[chain] = np.asarray(X[:, adata.var_names.get_indexer(g)].sum(1)).ravel() if g else np.zeros(adata.n_obs)
    df = pd.DataFrame(res, index=adata.obs_names)
    df["light_chain"] = np.where(df.sum(1) == 0, "none", np.where(df["kappa"] >= df["lambda"], "kappa", "lambda"))
    return df


def add_gene_positions(adata: ad.AnnData) -> None:
    """Put GRCh38 chromosome/start/end (data/genesets/gene_positions_grch38.tsv) into adata.var for infercnvpy."""
    from .genesets import gene_positions

    pos = gene_positions().reindex(adata.var_names)
    adata.var["chromosome"] = pos["chromosome"].to_numpy()
    adata.var["start"] = pos["start"].to_numpy()
    adata.var["end"] = pos["end"].to_numpy()


def infer_cnv(adata: ad.AnnData, query: np.ndarray, reference: np.ndarray, seed: int = 0, n_ref_max: int = 3000,
              window_size: int = 100) -> ad.AnnData:
    """infercnvpy on the ``query`` cells (e.g. plasma cells) against ``reference`` cells (T/NK/myeloid, a
    seeded subsample of at most ``n_ref_max``), genes placed by the committed GRCh38 table. Returns the
    subset AnnData with ``obsm['X_cnv']`` and ``obs['cnv_group']`` (query / reference)."""
    import infercnvpy as cnv

    rng = np.random.default_rng(seed)
    ref_idx = np.where(reference & ~query)[0]
    if len(ref_idx) > n_ref_max:
        ref_idx = np.sort(rng.choice(ref_idx, n_ref_max, replace=False))
    q_idx = np.where(query)[0]
    sub = adata[np.concatenate([q_idx, ref_idx])].copy()
    sub.obs["cnv_group"] = ["query"] * len(q_idx) + ["reference"] * len(ref_idx)
    add_gene_positions(sub)
    sub = sub[:, sub.var["chromosome"].notna().to_numpy()].copy()
    cnv.tl.infercnv(sub, reference_key="cnv_group", reference_cat=["reference"], window_size=window_size,
                    n_jobs=1, calculate_gene_values=False)
    return sub


def cnv_profile_correlation(cnv_adata: ad.AnnData, patient_key: str = "patient_id") -> pd.DataFrame:
    """Per cell, Pearson correlation of its CNV profile with its patient's consensus query profile (the mean
    over the patient's query cells, dominated by the clone). Reference cells of the same patient give the
    null: ``cut`` is their 95th percentile (or the pooled reference's when a patient has fewer than 20)."""
    X = cnv_adata.obsm["X_cnv"]
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    obs = cnv_adata.obs
    is_q = (obs["cnv_group"] == "query").to_numpy()
    r = np.full(len(obs), np.nan)
    for p in obs[patient_key].astype(str).unique():
        m = (obs[patient_key].astype(str) == p).to_numpy()
        if not (m & is_q).any():
            continue
        prof = X[m & is_q].mean(0)
        prof = prof - prof.mean()
        Xm = X[m] - X[m].mean(1, keepdims=True)
        den = np.linalg.norm(Xm, axis=1) * np.linalg.norm(prof)
        r[m] = np.where(den > 0, Xm @ prof / np.where(den > 0, den, 1), 0.0)
    df = pd.DataFrame({"cnv_corr": r, "cnv_group": obs["cnv_group"].to_numpy(),
                       patient_key: obs[patient_key].astype(str).to_numpy()}, index=obs.index)
    ref = df[df.cnv_group == "reference"]
    pooled = float(np.nanpercentile(ref["cnv_corr"], 95)) if len(ref) else 0.3
    cuts = ref.groupby(patient_key)["cnv_corr"].agg(lambda x: np.nanpercentile(x, 95) if len(x) >= 20 else np.nan)
    df["cut"] = df[patient_key].map(cuts).fillna(pooled)
    return df


def call_malignant(plasma_obs: pd.DataFrame, chains: pd.DataFrame, cnv_corr: pd.DataFrame,
                   patient_key: str = "patient_id", min_restriction: float = 0.75) -> pd.DataFrame:
    """Malignant vs normal plasma cells per patient, from light-chain restriction and inferred CNV.

    A patient's dominant light chain is the chain of most of its plasma cells; above ``min_restriction`` the
    compartment is restricted (a clone). A plasma cell is malignant when its CNV profile correlates with the
    patient's consensus profile above the patient's reference-cell 95th percentile and, in a restricted
    patient, it carries the dominant chain (a normal plasma cell of the other chain is never malignant)."""
    out = []
    for p, idx in plasma_obs.groupby(patient_key, observed=True).groups.items():
        ch = chains.loc[idx, "light_chain"]
        called = ch[ch != "none"]
        dom = called.value_counts().idxmax() if len(called) else "none"
        share = float((called == dom).mean()) if len(called) else 0.0
        c = cnv_corr.reindex(idx)
        cnv_pos = (c["cnv_corr"] > c["cut"]).to_numpy()
        restricted = share >= min_restriction
        mal = cnv_pos & (ch != ("lambda" if dom == "kappa" else "kappa")).to_numpy() if restricted else cnv_pos
        out.append(pd.DataFrame({"light_chain": ch, "dominant_chain": dom, "restriction": share,
                                 "cnv_corr": c["cnv_corr"], "cnv_cut": c["cut"], "malignant": mal}, index=idx))
    return pd.concat(out).loc[plasma_obs.index]
