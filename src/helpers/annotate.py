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
from scipy import stats
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


def lognorm_matrix(adata: ad.AnnData, genes: list[str] | None = None, layer: str | None = "counts") -> sp.csr_matrix:
    """Sparse log1p(counts per 10k) of all genes (or ``genes``, in that order) from raw counts in ``layer``;
    ``layer=None`` means X already holds log-normalised values, returned as they are."""
    if layer is None:
        X = sp.csr_matrix(adata.X, dtype=np.float32)
        return X if genes is None else sp.csr_matrix(X[:, adata.var_names.get_indexer(genes)])
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


def above_ambient(X: sp.csr_matrix, genes_idx: np.ndarray, samples: np.ndarray, max_ambient: float,
                  quantile: float = 0.999) -> np.ndarray:
    """Per cell: do its counts of ``genes_idx`` exceed what ambient RNA alone could give?

    The ambient profile of a sample is approximated by its pooled expression (as SoupX does without empty droplets);
    a cell of library l could carry up to ``max_ambient`` x l x (the genes' pooled share) ambient counts of them, and
    its count must exceed the Poisson ``quantile`` of that (a real programme, not soup)."""
    lib = np.asarray(X.sum(1)).ravel()
    k = np.asarray(X[:, genes_idx].sum(1)).ravel()
    out = np.zeros(X.shape[0], dtype=bool)
    for s in np.unique(samples):
        m = samples == s
        share = k[m].sum() / max(lib[m].sum(), 1.0)
        out[m] = k[m] > stats.poisson.ppf(quantile, max_ambient * lib[m] * share)
    return out


def coexpression_doublets(adata: ad.AnnData, markers: dict[str, Any] | None = None, layer: str = "counts",
                          on_fraction: float = 0.3, sample_key: str = "sample_id") -> pd.Series:
    """Cells expressing the programmes of two lineage compartments at once (heterotypic doublets), judged on the
    marker table's ``lineage_exclusive`` genes (genes shared between lineages would flag singlets).

    Each compartment's typical 'on' level is the median score of the cells above its Otsu threshold (the
    data-driven split of the bimodal on/off distribution); a compartment counts as expressed in a cell when the
    score exceeds ``on_fraction`` of that level (a doublet carries each partner's programme diluted about
    two-fold, and log-scale means shrink further with dropouts), at least two of its genes are detected, and its
    counts exceed what the sample's ambient RNA could put there (:func:`above_ambient`, with the marker table's
    ``rules.max_ambient_fraction``): in marrow, soup of abundant myeloid, erythroid and plasma-cell transcripts
    reaches every droplet."""
    markers = markers or load_markers()
    lineages = markers["lineage_exclusive"]
    max_ambient = float(markers.get("rules", {}).get("max_ambient_fraction", 0.2))
    S = marker_scores(adata, lineages, layer)
    X = sp.csr_matrix(adata.layers[layer] if layer in adata.layers else adata.X)
    samples = (adata.obs[sample_key].astype(str).to_numpy() if sample_key in adata.obs
               else np.zeros(adata.n_obs, dtype=str))
    on = {}
    for c in S:
        idx = adata.var_names.get_indexer([g for g in lineages[c]["markers"] if g in adata.var_names])
        n_detected = np.asarray((X[:, idx] > 0).sum(1)).ravel()
        # two markers detected at least: one stray UMI of one marker never turns a programme on
        on[c] = ((S[c] > on_fraction * on_level(S[c])).to_numpy() & (n_detected >= min(2, len(idx)))
                 & above_ambient(X, idx, samples, max_ambient))
    on = pd.DataFrame(on, index=S.index)
    labels = pd.Series({c: v.get("label", c) for c, v in lineages.items()})
    n_on = on.T.groupby(labels[on.columns].to_numpy()).any().T.sum(1)  # programmes of one compartment count once
    return (n_on >= 2).rename("coexpression_doublet")


# ----------------------------------------------------------------------------------------------------
# compartments and subsets: decoupler ULM on the marker sets, neighbour smoothing, celltypist-style majority voting
# ----------------------------------------------------------------------------------------------------
def marker_network(sets: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """decoupler network of marker sets: positive markers weight +1, ``negative`` markers weight -1."""
    rows = [(name, g, 1.0) for name, s in sets.items() for g in s["markers"]]
    rows += [(name, g, -1.0) for name, s in sets.items() for g in s.get("negative", [])]
    return pd.DataFrame(rows, columns=["source", "target", "weight"]).drop_duplicates(["source", "target"])


def ulm_scores(adata: ad.AnnData, sets: dict[str, dict[str, Any]], layer: str | None = "counts",
               min_markers: int = 2, batch_size: int = 2000) -> pd.DataFrame:
    """Per cell and marker set, decoupler's univariate linear model t-value of log1p(CP10k) expression on the set's
    weights across all genes (comparable between sets of different sizes; near 0 when a cell has no evidence).
    Sets with fewer than ``min_markers`` genes in the data are scored 0 (named in a warning)."""
    import decoupler as dc

    net = marker_network(sets)
    present = net[net["target"].isin(adata.var_names) & (net["weight"] > 0)].groupby("source").size()
    missing = [n for n in sets if present.get(n, 0) < min_markers]
    if missing:
        warnings.warn(f"marker sets {missing} have fewer than {min_markers} markers in the data and are not scored")
    if len(missing) == len(sets):
        raise KeyError(f"none of the marker sets {list(sets)} has {min_markers} markers in the data "
                       "(gene symbols expected in var_names)")
    X = lognorm_matrix(adata, layer=layer)
    tmp = ad.AnnData(X, obs=pd.DataFrame(index=adata.obs_names), var=pd.DataFrame(index=adata.var_names))
    dc.mt.ulm(tmp, net[~net["source"].isin(missing)], tmin=min_markers, bsize=batch_size)
    scores = pd.DataFrame(tmp.obsm["score_ulm"], index=adata.obs_names)
    return scores.reindex(columns=list(sets)).fillna(0.0).astype(float)


def over_cluster(graph: sp.spmatrix, seed: int = 0, resolution: float | None = None) -> pd.Series:
    """Leiden over-clustering of a cell graph for majority voting, at celltypist's resolution for the cohort size
    (5 below 5,000 cells up to 30 above 200,000) unless ``resolution`` is given."""
    import scanpy as sc

    n = graph.shape[0]
    if resolution is None:
        resolution = next((r for lim, r in ((5_000, 5), (20_000, 10), (40_000, 15), (100_000, 20), (200_000, 25))
                           if n < lim), 30)
    tmp = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(n)]))
    sc.tl.leiden(tmp, resolution=resolution, adjacency=sp.csr_matrix(graph), random_state=seed, key_added="over",
                 flavor="igraph", n_iterations=2, directed=False)
    return pd.Series(tmp.obs["over"].astype(str).to_numpy(), name="over_cluster")


def convincing_label(scores: pd.DataFrame, min_score: float, unassigned: str = "unassigned") -> pd.Series:
    """The best-scoring label of each cell when its score exceeds ``min_score``, else ``unassigned``."""
    best = scores.idxmax(1).astype(object)
    best[scores.max(1) <= min_score] = unassigned
    return best


def majority_vote(scores: pd.DataFrame, clusters: pd.Series | np.ndarray | None, min_score: float,
                  min_prop: float = 0.5, alpha: float = 0.01, unassigned: str = "unassigned") -> pd.Series:
    """celltypist-style majority voting on per-cell scores: a cluster whose cells' best labels agree in at least
    ``min_prop`` of them, and whose cells score that label above 0 more often than chance (one-sided sign test,
    p < ``alpha``: the cluster as a whole carries the programme, whatever the depth of single cells), gives that
    label to all its cells; elsewhere a cell keeps its own label when convincing (``convincing_label``), else it
    is ``unassigned``."""
    from scipy.stats import binomtest

    out = convincing_label(scores, min_score, unassigned)
    if clusters is None:
        return out
    best = scores.idxmax(1).to_numpy()
    cl = np.asarray(clusters).astype(str)
    for c in np.unique(cl):
        m = cl == c
        values, counts = np.unique(best[m], return_counts=True)
        top = values[np.argmax(counts)]
        n_pos = int((scores[top].to_numpy()[m] > 0).sum())
        if counts.max() >= min_prop * m.sum() and binomtest(n_pos, int(m.sum()), 0.5, "greater").pvalue < alpha:
            out[m] = top
    return out


def immunoglobulin_genes(var_names: pd.Index) -> list[str]:
    """Immunoglobulin heavy/kappa/lambda V, D, J and constant genes (not IGLL1/IGLL5 surrogate or pseudo genes)."""
    names = pd.Index(var_names).astype(str)
    hit = names.str.match(r"^(IGH[VDJGAMEC]|IGK[VJC]|IGL[VJC])[0-9A-Z-]*$") & ~names.str.startswith(("IGLL", "IGHMBP"))
    return list(names[hit])


def plasma_evidence(adata: ad.AnnData, spec: dict[str, Any], layer: str | None = "counts") -> pd.DataFrame:
    """Per cell: plasma-specific genes detected, immunoglobulin fraction of UMIs, and whether both pass the
    thresholds of ``spec`` (markers.yaml ``plasma_evidence``). With log-normalised input (``layer=None``) the
    fraction is computed from expm1 of the values (counts per 10k). When the data hold no immunoglobulin constant
    gene (a targeted panel), the load cannot be measured: ``ig_measured`` is False and only the genes count."""
    genes = [g for g in spec["genes"] if g in adata.var_names]
    ig = immunoglobulin_genes(adata.var_names)
    ig_measured = any(g.startswith(("IGKC", "IGLC", "IGHG", "IGHA", "IGHM")) for g in ig)
    if layer is None:
        X = sp.csr_matrix(adata.X, dtype=np.float64).expm1()
        total = np.full(adata.n_obs, 1e4)
    else:
        X = sp.csr_matrix(adata.layers[layer] if layer in adata.layers else adata.X, dtype=np.float64)
        total = np.maximum(np.asarray(X.sum(1)).ravel(), 1)
    n_genes = np.asarray((X[:, adata.var_names.get_indexer(genes)] > 0).sum(1)).ravel() if genes else \
        np.zeros(adata.n_obs, int)
    ig_frac = np.asarray(X[:, adata.var_names.get_indexer(ig)].sum(1)).ravel() / total if ig else np.zeros(adata.n_obs)
    ok = n_genes >= int(spec["min_genes"])
    if ig_measured:
        ok &= ig_frac >= float(spec["min_ig_fraction"])
    else:
        warnings.warn("no immunoglobulin constant gene (IGKC/IGLC/IGHG/IGHA/IGHM) in the data: plasma calls rest on "
                      "the plasma programme and its specific genes only")
    return pd.DataFrame({"plasma_genes_detected": n_genes, "ig_fraction": ig_frac, "plasma_evidence": ok,
                         "ig_measured": ig_measured}, index=adata.obs_names)


def annotate_compartments(adata: ad.AnnData, graph: sp.spmatrix | None = None, clusters: pd.Series | None = None,
                          markers: dict[str, Any] | None = None, layer: str | None = "counts"
                          ) -> tuple[pd.Series, pd.DataFrame]:
    """Compartment per cell: ULM scores of the compartment programmes (a programme with a ``label`` reports that
    compartment), smoothed over neighbours, convincing above ``rules.min_score``, majority-voted over ``clusters``.
    Plasma needs positive per-cell evidence (``plasma_evidence``): a cell without it is never plasma (it becomes
    ``unassigned`` if plasma was its only convincing label) and, where immunoglobulin load is measured, a cell with
    it is plasma whatever its cluster.
    Returns the labels and the per-cell evidence table (smoothed scores by compartment and the plasma evidence)."""
    markers = markers or load_markers()
    rules = markers.get("rules", {})
    raw = ulm_scores(adata, markers["compartments"], layer)
    labels = pd.Series({c: v.get("label", c) for c, v in markers["compartments"].items()})
    by_comp = raw.T.groupby(labels[raw.columns].to_numpy()).max().T
    S = smooth_scores(by_comp, graph)
    call = majority_vote(S, clusters, float(rules.get("min_score", 2.0)), float(rules.get("majority_min_prop", 0.5)),
                         float(rules.get("cluster_alpha", 0.01)))
    ev = plasma_evidence(adata, markers["plasma_evidence"], layer)
    call[(call == "plasma") & ~ev["plasma_evidence"]] = "unassigned"
    if ev["ig_measured"].all():  # with the full evidence a plasma cell is one whatever its neighbours
        call[ev["plasma_evidence"]] = "plasma"
    return call.rename("compartment"), pd.concat([S.add_prefix("score_"), ev], axis=1)


def _restrict_graph(graph: sp.spmatrix | None, mask: np.ndarray) -> sp.spmatrix | None:
    if graph is None:
        return None
    idx = np.where(mask)[0]
    return sp.csr_matrix(graph)[idx][:, idx]


def annotate_subsets(adata: ad.AnnData, compartment: pd.Series, graph: sp.spmatrix | None = None,
                     clusters: pd.Series | None = None, markers: dict[str, Any] | None = None,
                     layer: str | None = "counts") -> pd.Series:
    """Subset per cell within its compartment: ULM scores of the subset programmes on the compartment's cells,
    smoothed over same-compartment neighbours, convincing above ``rules.min_score``, majority-voted within each
    over-cluster; cells of a compartment without a convincing subset are ``unassigned``. CD56dim NK cells are then
    split by CD54 (``split_nk_cd54``) when the cohort's NK cells show two ICAM1 states."""
    markers = markers or load_markers()
    rules = markers.get("rules", {})
    out = pd.Series("unassigned", index=adata.obs_names, dtype=object)
    for comp, sets in markers["subsets"].items():
        mask = (compartment == comp).to_numpy()
        if not mask.any():
            continue
        if len(sets) == 1:
            out[mask] = next(iter(sets))
            continue
        S = smooth_scores(ulm_scores(adata[mask], sets, layer), _restrict_graph(graph, mask))
        call = majority_vote(S, None if clusters is None else np.asarray(clusters)[mask],
                             float(rules.get("min_score", 2.0)), float(rules.get("majority_min_prop", 0.5)),
                             float(rules.get("cluster_alpha", 0.01)))
        out[mask] = call.to_numpy()
    return out.rename("cell_type")


# ----------------------------------------------------------------------------------------------------
# NK CD54 (ICAM1) states: a two-state negative-binomial mixture against one state
# ----------------------------------------------------------------------------------------------------
def _nb_logpmf(k: np.ndarray, mu: np.ndarray, phi: float) -> np.ndarray:
    from scipy.special import gammaln

    r = 1.0 / phi
    return gammaln(k + r) - gammaln(r) - gammaln(k + 1) + r * np.log(r / (r + mu)) + k * np.log(mu / (r + mu))


def nb_two_state_test(counts: np.ndarray, size: np.ndarray) -> dict[str, Any]:
    """Fit one negative-binomial state (rate x size factor, dispersion phi) and a two-state mixture with a shared
    dispersion to one gene's counts by maximum likelihood; return both fits, the BIC difference (one minus two
    states: positive favours two states), the states' rates and each cell's posterior of the high state."""
    from scipy.optimize import minimize
    from scipy.special import expit, logsumexp

    k = np.asarray(counts, float)
    s = np.asarray(size, float)
    n = len(k)
    m0 = max(k.sum() / s.sum(), 1e-4)

    def nll1(t):
        return -_nb_logpmf(k, np.exp(t[0]) * s, np.exp(t[1])).sum()

    def comps(t):
        lo, hi = np.exp(t[0]), np.exp(t[0] + np.exp(t[1]))  # high rate > low rate by construction
        w, phi = expit(t[2]), np.exp(t[3])
        return np.stack([np.log1p(-w) + _nb_logpmf(k, lo * s, phi), np.log(w) + _nb_logpmf(k, hi * s, phi)])

    def nll2(t):
        return -logsumexp(comps(t), axis=0).sum()

    f1 = min((minimize(nll1, [np.log(m0), np.log(p)], method="Nelder-Mead") for p in (0.1, 1.0)),
             key=lambda r: r.fun)
    starts = [[np.log(m0 / f), np.log(np.log(f * f)), w, np.log(0.1)] for f in (2.0, 5.0, 20.0) for w in (-1.5, 0.0)]
    f2 = min((minimize(nll2, x0, method="Nelder-Mead", options={"maxiter": 4000, "xatol": 1e-6, "fatol": 1e-8})
              for x0 in starts), key=lambda r: r.fun)
    c = comps(f2.x)
    post = np.exp(c[1] - logsumexp(c, axis=0))
    lo, hi = float(np.exp(f2.x[0])), float(np.exp(f2.x[0] + np.exp(f2.x[1])))
    bic1, bic2 = 2 * f1.fun + 2 * np.log(n), 2 * f2.fun + 4 * np.log(n)
    return {"delta_bic": float(bic1 - bic2), "rate_low": lo, "rate_high": hi, "fold": hi / max(lo, 1e-12),
            "high_fraction": float(expit(f2.x[2])), "posterior_high": post, "n_cells": int(n)}


def split_nk_cd54(adata: ad.AnnData, nk_dim: np.ndarray, spec: dict[str, Any], layer: str | None = "counts"
                  ) -> tuple[np.ndarray | None, dict[str, Any]]:
    """CD54bright vs CD54dim among CD56dim NK cells (``nk_dim`` mask) from their own ICAM1 counts: separable only
    when two states beat one by ``min_delta_bic`` with the minor state at least ``min_minor_fraction`` of the cells
    and the states ``min_fold`` apart. Returns per-cell bright calls (or None) and a record saying why."""
    gene = spec.get("gene", "ICAM1")
    info: dict[str, Any] = {"gene": gene, "n_cells": int(nk_dim.sum()), "separable": False}
    if gene not in adata.var_names:
        return None, {**info, "reason": f"{gene} is not among the cohort's genes"}
    if nk_dim.sum() < 50:
        return None, {**info, "reason": f"only {int(nk_dim.sum())} CD56dim NK cells (at least 50 needed)"}
    if layer is None:
        return None, {**info, "reason": "raw counts needed to model ICAM1 states"}
    X = sp.csr_matrix(adata.layers[layer] if layer in adata.layers else adata.X)[np.where(nk_dim)[0]]
    k = np.asarray(X[:, adata.var_names.get_loc(gene)].todense()).ravel()
    lib = np.asarray(X.sum(1)).ravel()
    fit = nb_two_state_test(k, lib / np.median(lib))
    post = fit.pop("posterior_high")
    info.update({key: (round(v, 4) if isinstance(v, float) else v) for key, v in fit.items()})
    minor = min(fit["high_fraction"], 1 - fit["high_fraction"])
    checks = [(fit["delta_bic"] >= spec["min_delta_bic"], f"BIC gain {fit['delta_bic']:.1f} < {spec['min_delta_bic']}"),
              (minor >= spec["min_minor_fraction"], f"minor state {minor:.1%} of cells"),
              (fit["fold"] >= spec["min_fold"], f"states {fit['fold']:.1f}-fold apart < {spec['min_fold']}")]
    failed = [why for ok, why in checks if not ok]
    if failed:
        return None, {**info, "reason": "one ICAM1 state fits: " + "; ".join(failed)}
    bright = post > 0.5
    return bright, {**info, "separable": True, "reason": "two ICAM1 states", "n_bright": int(bright.sum())}


def annotate_cells(adata: ad.AnnData, graph: sp.spmatrix | None = None, clusters: pd.Series | None = None,
                   markers: dict[str, Any] | None = None, layer: str | None = "counts", seed: int = 0
                   ) -> pd.DataFrame:
    """Compartment and cell type of every cell (``unassigned`` when no label is convincing), with the evidence.

    ``graph``: the cells' neighbour connectivities (e.g. ``obsp['connectivities']``); without ``clusters`` the
    graph is over-clustered (``over_cluster``) for majority voting. ``layer=None`` reads log-normalised X.
    The frame's ``attrs['nk_cd54_split']`` says whether CD56dim NK cells were split by CD54 and why (not)."""
    markers = markers or load_markers()
    if clusters is None and graph is not None:
        clusters = over_cluster(graph, seed=seed).set_axis(adata.obs_names)
    compartment, evidence = annotate_compartments(adata, graph, clusters, markers, layer)
    cell_type = annotate_subsets(adata, compartment, graph, clusters, markers, layer)
    nk_dim = (cell_type == "NK_CD56dim").to_numpy()
    bright, info = split_nk_cd54(adata, nk_dim, markers.get("nk_cd54", {}), layer)
    if bright is not None:
        cell_type[nk_dim] = np.where(bright, "NK_CD56dim_CD54bright", "NK_CD56dim_CD54dim")
    out = pd.concat([compartment, cell_type], axis=1).join(evidence)
    if clusters is not None:
        out["over_cluster"] = np.asarray(clusters).astype(str)
    out.attrs["nk_cd54_split"] = info
    return out


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
                   patient_key: str = "patient_id", min_restriction: float = 0.75, kappa_share: float = 0.6,
                   alpha: float = 0.01, cnv_null_rate: float = 0.05) -> pd.DataFrame:
    """Malignant vs normal plasma cells per patient, only where the patient's plasma cells show a clone.

    Evidence of a clone, each by a one-sided binomial test at p < ``alpha``: light-chain restriction (the dominant
    chain's share above its polyclonal share, kappa ``kappa_share``, and at least ``min_restriction``), or a CNV
    clone (more plasma cells whose CNV profile correlates with the patient's consensus above the reference cells'
    95th percentile than the ``cnv_null_rate`` expected by chance). Without either, no cell of the patient is
    malignant. With both, malignant = CNV-positive and not of the other chain; with restriction only, the cells of
    the dominant chain; with a CNV clone only, the CNV-positive cells."""
    from scipy.stats import binomtest

    out = []
    for p, idx in plasma_obs.groupby(patient_key, observed=True).groups.items():
        ch = chains.loc[idx, "light_chain"]
        called = ch[ch != "none"]
        dom = called.value_counts().idxmax() if len(called) else "none"
        n_dom = int((called == dom).sum())
        share = n_dom / len(called) if len(called) else 0.0
        expected = kappa_share if dom == "kappa" else 1 - kappa_share
        restricted = bool(len(called) and share >= min_restriction
                          and binomtest(n_dom, len(called), expected, "greater").pvalue < alpha)
        c = cnv_corr.reindex(idx)
        cnv_pos = (c["cnv_corr"] > c["cut"]).to_numpy()
        cnv_clone = bool(binomtest(int(cnv_pos.sum()), len(idx), cnv_null_rate, "greater").pvalue < alpha)
        other = (ch == ("lambda" if dom == "kappa" else "kappa")).to_numpy()
        if restricted and cnv_clone:
            mal = cnv_pos & ~other
        elif restricted:
            mal = (ch == dom).to_numpy()
        elif cnv_clone:
            mal = cnv_pos
        else:
            mal = np.zeros(len(idx), bool)
        out.append(pd.DataFrame({"light_chain": ch, "dominant_chain": dom, "restriction": share,
                                 "restricted": restricted, "cnv_clone": cnv_clone, "cnv_corr": c["cnv_corr"],
                                 "cnv_cut": c["cut"], "malignant": mal}, index=idx))
    return pd.concat(out).loc[plasma_obs.index]
