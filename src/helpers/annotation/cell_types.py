"""Marker-based annotation from the committed marker table (data/markers.yaml): compartments, then subsets,
NK CD54 (ICAM1) states, and malignant vs normal plasma cells (light-chain restriction + inferred CNV).

All scores are means of log1p(counts per 10k) over a list's markers, computed straight from raw counts so
they do not depend on how X was transformed. Nothing here reads truth columns.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml

from helpers.data.cohort import project_root
from helpers.preprocessing.normalise import counts_matrix, lognorm, lognorm_matrix


@lru_cache(maxsize=None)
def _load_markers_cached(path: str) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def load_markers(path: str | Path | None = None) -> dict[str, Any]:
    path = Path(path) if path else project_root() / "data" / "markers.yaml"
    if not path.exists():
        raise FileNotFoundError(f"marker table {path} does not exist")
    return _load_markers_cached(str(path))


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


# ----------------------------------------------------------------------------------------------------
# compartments and subsets: decoupler ULM on the marker sets, neighbour smoothing, celltypist-style majority voting
# ----------------------------------------------------------------------------------------------------
def marker_network(sets: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """decoupler network of marker sets: positive markers weight +1, ``negative`` markers weight -1."""
    rows = [(name, g, 1.0) for name, s in sets.items() for g in s["markers"]]
    rows += [(name, g, -1.0) for name, s in sets.items() for g in s.get("negative", [])]
    return pd.DataFrame(rows, columns=["source", "target", "weight"]).drop_duplicates(["source", "target"])


BLOCK_CELLS = 10_000  # cells whose evidence is measured at once: bounds the copies (counts, log-normalised) held


def cell_blocks(n_obs: int, block_size: int = BLOCK_CELLS) -> list[slice]:
    """Consecutive row slices of at most ``block_size`` cells covering ``n_obs`` cells (none for no cells)."""
    if block_size < 1:
        raise ValueError(f"block_size must be a positive number of cells, got {block_size}")
    return [slice(i, min(i + block_size, n_obs)) for i in range(0, n_obs, block_size)]


def detected_genes(adata: ad.AnnData, layer: str | None = "counts", block_size: int = BLOCK_CELLS) -> np.ndarray:
    """Boolean mask over var: genes with at least one count among ``adata``'s cells (OR the masks of a cohort's
    samples to get the cohort's), read ``block_size`` cells at a time."""
    mask = np.zeros(adata.n_vars, bool)
    for rows in cell_blocks(adata.n_obs, block_size):
        a = adata[rows]
        X = counts_matrix(a, layer) if layer is not None and layer in a.layers else sp.csr_matrix(a.X)
        mask |= np.asarray(X.getnnz(axis=0) > 0).ravel()
    return mask


def ulm_scores(adata: ad.AnnData, sets: dict[str, dict[str, Any]], layer: str | None = "counts",
               min_markers: int = 2, batch_size: int = 2000, genes: np.ndarray | None = None) -> pd.DataFrame:
    """Per cell and marker set, decoupler's univariate linear model t-value of log1p(CP10k) expression on the set's
    weights across the genes detected in the cells scored together (comparable between sets of different sizes;
    near 0 when a cell has no evidence). ``genes`` (a mask over var) names that universe explicitly, e.g. the genes
    detected in a whole compartment when its cells are scored sample by sample; default: detected among
    ``adata``'s cells (what decoupler's removal of empty genes does). Given the universe, a cell's score depends on
    that cell alone. Sets with fewer than ``min_markers`` genes in the universe are scored 0 (named in a warning)."""
    import decoupler as dc

    X = lognorm_matrix(adata, layer=layer)
    universe = np.asarray(detected_genes(adata, layer) if genes is None else genes, bool)
    names = adata.var_names[universe]
    net = marker_network(sets)
    present = net[net["target"].isin(names) & (net["weight"] > 0)].groupby("source").size()
    missing = [n for n in sets if present.get(n, 0) < min_markers]
    if missing:
        warnings.warn(f"marker sets {missing} have fewer than {min_markers} markers in the data and are not scored")
    if len(missing) == len(sets):
        raise KeyError(f"none of the marker sets {list(sets)} has {min_markers} markers in the data "
                       "(gene symbols expected in var_names)")
    tmp = ad.AnnData(sp.csr_matrix(X[:, universe]), obs=pd.DataFrame(index=adata.obs_names),
                     var=pd.DataFrame(index=names))
    # empty=False: the universe is fixed above, so decoupler must not drop genes without counts in this batch
    dc.mt.ulm(tmp, net[~net["source"].isin(missing)], tmin=min_markers, bsize=batch_size, empty=False)
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


PLASMA_EVIDENCE_COLUMNS = ["plasma_genes_detected", "ig_fraction", "plasma_evidence", "ig_measured"]


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
        X = counts_matrix(adata, layer, np.float64)
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


def compartment_evidence(adata: ad.AnnData, markers: dict[str, Any] | None = None, layer: str | None = "counts",
                         genes: np.ndarray | None = None, block_size: int = BLOCK_CELLS) -> pd.DataFrame:
    """What the compartment step measures in each cell on its own, given the gene universe ``genes`` (default:
    detected among ``adata``'s cells; a cohort scored sample by sample passes the cohort's,
    :func:`detected_genes`): ULM scores of every compartment programme (``ulm:<programme>``), the plasma evidence
    (:func:`plasma_evidence`), the light-chain counts (``kappa``, ``lambda``) and, from raw counts, the NK CD54
    gene's counts and the library size. The decisions that need the other cells (smoothing, majority votes, the
    ICAM1 mixture) are in :func:`compartments_from_evidence` and :func:`annotate_from_evidence`.
    More than ``block_size`` cells are measured block by block over one universe (the same result: a cell's
    evidence depends on that cell and the universe only), so memory does not grow with copies of the whole matrix."""
    markers = markers or load_markers()
    if adata.n_obs > block_size:
        genes = detected_genes(adata, layer, block_size) if genes is None else genes
        return pd.concat([compartment_evidence(adata[rows], markers, layer, genes, block_size)
                          for rows in cell_blocks(adata.n_obs, block_size)])
    parts = [ulm_scores(adata, markers["compartments"], layer, genes=genes).add_prefix("ulm:"),
             plasma_evidence(adata, markers["plasma_evidence"], layer)]
    chains = {}
    X = counts_matrix(adata, layer) if layer is not None else None
    for chain, genes_ in markers.get("light_chains", {}).items():
        g = [x for x in genes_ if x in adata.var_names]
        chains[chain] = (np.asarray(X[:, adata.var_names.get_indexer(g)].sum(1)).ravel()
                         if g and X is not None else np.zeros(adata.n_obs))
    nk_gene = markers.get("nk_cd54", {}).get("gene", "ICAM1")
    if X is not None:
        chains["library_size"] = np.asarray(X.sum(1), dtype=np.float64).ravel()
        chains["nk_cd54_counts"] = (np.asarray(X[:, adata.var_names.get_loc(nk_gene)].todense()).ravel()
                                    if nk_gene in adata.var_names else np.nan)
    parts.append(pd.DataFrame(chains, index=adata.obs_names))
    return pd.concat(parts, axis=1)


def subset_evidence(adata: ad.AnnData, compartment: pd.Series, markers: dict[str, Any] | None = None,
                    layer: str | None = "counts", universes: dict[str, np.ndarray] | None = None,
                    block_size: int = BLOCK_CELLS) -> pd.DataFrame:
    """ULM scores of each compartment's subset programmes in that compartment's cells (``ulm:<compartment>/<subset>``;
    NaN elsewhere), over the genes detected in the compartment's cells (``universes[compartment]``, a mask over var;
    default: detected among the compartment's cells of ``adata``), ``block_size`` cells at a time (the same result)."""
    markers = markers or load_markers()
    parts = []
    comp = np.asarray(compartment).astype(str)
    for c, sets in markers["subsets"].items():
        mask = comp == c
        if len(sets) < 2 or not mask.any():
            continue
        cells = adata[mask]
        genes = None if universes is None else universes.get(c)
        genes = detected_genes(cells, layer, block_size) if genes is None else genes
        parts.append(pd.concat([ulm_scores(cells[rows], sets, layer, genes=genes)
                                for rows in cell_blocks(cells.n_obs, block_size)]).add_prefix(f"ulm:{c}/"))
    return (pd.concat(parts).reindex(adata.obs_names) if parts
            else pd.DataFrame(index=adata.obs_names))


def compartments_from_evidence(evidence: pd.DataFrame, graph: sp.spmatrix | None = None,
                               clusters: pd.Series | None = None, markers: dict[str, Any] | None = None
                               ) -> tuple[pd.Series, pd.DataFrame]:
    """Compartment per cell: ULM scores of the compartment programmes (a programme with a ``label`` reports that
    compartment), smoothed over neighbours, convincing above ``rules.min_score``, majority-voted over ``clusters``.
    Plasma needs positive per-cell evidence (``plasma_evidence``): a cell without it is never plasma (it becomes
    ``unassigned`` if plasma was its only convincing label) and, where immunoglobulin load is measured, a cell with
    it is plasma whatever its cluster.
    Returns the labels and the per-cell evidence table (smoothed scores by compartment and the plasma evidence)."""
    markers = markers or load_markers()
    rules = markers.get("rules", {})
    raw = evidence[[f"ulm:{c}" for c in markers["compartments"]]].rename(columns=lambda c: c[4:])
    labels = pd.Series({c: v.get("label", c) for c, v in markers["compartments"].items()})
    by_comp = raw.T.groupby(labels[raw.columns].to_numpy()).max().T
    S = smooth_scores(by_comp, graph)
    call = majority_vote(S, clusters, float(rules.get("min_score", 2.0)), float(rules.get("majority_min_prop", 0.5)),
                         float(rules.get("cluster_alpha", 0.01)))
    ev = evidence[PLASMA_EVIDENCE_COLUMNS]
    call[(call == "plasma") & ~ev["plasma_evidence"].astype(bool)] = "unassigned"
    if ev["ig_measured"].astype(bool).all():  # with the full evidence a plasma cell is one whatever its neighbours
        call[ev["plasma_evidence"].astype(bool)] = "plasma"
    return call.rename("compartment"), pd.concat([S.add_prefix("score_"), ev], axis=1)


def annotate_compartments(adata: ad.AnnData, graph: sp.spmatrix | None = None, clusters: pd.Series | None = None,
                          markers: dict[str, Any] | None = None, layer: str | None = "counts"
                          ) -> tuple[pd.Series, pd.DataFrame]:
    """:func:`compartments_from_evidence` on the cells of ``adata`` (:func:`compartment_evidence`)."""
    return compartments_from_evidence(compartment_evidence(adata, markers, layer), graph, clusters, markers)


def _restrict_graph(graph: sp.spmatrix | None, mask: np.ndarray) -> sp.spmatrix | None:
    if graph is None:
        return None
    idx = np.where(mask)[0]
    return sp.csr_matrix(graph)[idx][:, idx]


def subsets_from_evidence(evidence: pd.DataFrame, compartment: pd.Series, graph: sp.spmatrix | None = None,
                          clusters: pd.Series | None = None, markers: dict[str, Any] | None = None) -> pd.Series:
    """Subset per cell within its compartment: ULM scores of the subset programmes on the compartment's cells,
    smoothed over same-compartment neighbours, convincing above ``rules.min_score``, majority-voted within each
    over-cluster; cells of a compartment without a convincing subset are ``unassigned``. CD56dim NK cells are then
    split by CD54 (``split_nk_cd54``) when the cohort's NK cells show two ICAM1 states."""
    markers = markers or load_markers()
    rules = markers.get("rules", {})
    out = pd.Series("unassigned", index=evidence.index, dtype=object)
    for comp, sets in markers["subsets"].items():
        mask = (compartment == comp).to_numpy()
        if not mask.any():
            continue
        if len(sets) == 1:
            out[mask] = next(iter(sets))
            continue
        scores = evidence.loc[mask, [f"ulm:{comp}/{s}" for s in sets]].rename(columns=lambda c: c.split("/", 1)[1])
        S = smooth_scores(scores, _restrict_graph(graph, mask))
        call = majority_vote(S, None if clusters is None else np.asarray(clusters)[mask],
                             float(rules.get("min_score", 2.0)), float(rules.get("majority_min_prop", 0.5)),
                             float(rules.get("cluster_alpha", 0.01)))
        out[mask] = call.to_numpy()
    return out.rename("cell_type")


def annotate_subsets(adata: ad.AnnData, compartment: pd.Series, graph: sp.spmatrix | None = None,
                     clusters: pd.Series | None = None, markers: dict[str, Any] | None = None,
                     layer: str | None = "counts") -> pd.Series:
    """:func:`subsets_from_evidence` on the cells of ``adata`` (:func:`subset_evidence`)."""
    return subsets_from_evidence(subset_evidence(adata, compartment, markers, layer), compartment, graph, clusters,
                                 markers)


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
    """:func:`split_nk_cd54_counts` on the CD56dim NK cells (``nk_dim`` mask) of ``adata``."""
    gene = spec.get("gene", "ICAM1")
    X = counts_matrix(adata, layer) if layer is not None else None
    k = (np.asarray(X[:, adata.var_names.get_loc(gene)].todense()).ravel() if X is not None and gene in adata.var_names
         else None)
    lib = np.asarray(X.sum(1)).ravel() if X is not None else None
    return split_nk_cd54_counts(None if k is None else k[nk_dim], None if lib is None else lib[nk_dim], spec,
                                gene_present=gene in adata.var_names, n_cells=int(nk_dim.sum()))


def split_nk_cd54_counts(counts: np.ndarray | None, library: np.ndarray | None, spec: dict[str, Any],
                         gene_present: bool = True, n_cells: int | None = None
                         ) -> tuple[np.ndarray | None, dict[str, Any]]:
    """CD54bright vs CD54dim among CD56dim NK cells from their own ICAM1 ``counts`` (and library sizes): separable
    only when two states beat one by ``min_delta_bic`` with the minor state at least ``min_minor_fraction`` of the
    cells and the states ``min_fold`` apart. Returns per-cell bright calls (or None) and a record saying why.
    ``counts`` None: no raw counts (log-normalised input)."""
    gene = spec.get("gene", "ICAM1")
    n = int(n_cells if n_cells is not None else (0 if counts is None else len(counts)))
    info: dict[str, Any] = {"gene": gene, "n_cells": n, "separable": False}
    if not gene_present:
        return None, {**info, "reason": f"{gene} is not among the cohort's genes"}
    if n < 50:
        return None, {**info, "reason": f"only {n} CD56dim NK cells (at least 50 needed)"}
    if counts is None or library is None:
        return None, {**info, "reason": "raw counts needed to model ICAM1 states"}
    lib = np.asarray(library, float)
    fit = nb_two_state_test(np.asarray(counts, float), lib / np.median(lib))
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
    """Compartment and cell type of every cell (``unassigned`` when no label is convincing), with the evidence:
    compartments from :func:`compartment_evidence`, then subsets from :func:`subset_evidence` within them
    (:func:`annotate_from_evidence`). ``layer=None`` reads log-normalised X.

    ``graph``: the cells' neighbour connectivities (e.g. ``obsp['connectivities']``); without ``clusters`` the
    graph is over-clustered (``over_cluster``) for majority voting. The frame's ``attrs['nk_cd54_split']`` says
    whether CD56dim NK cells were split by CD54 and why (not)."""
    markers = markers or load_markers()
    if clusters is None and graph is not None:
        clusters = over_cluster(graph, seed=seed).set_axis(adata.obs_names)
    return annotate_from_evidence(compartment_evidence(adata, markers, layer),
                                  lambda comp: subset_evidence(adata, comp, markers, layer), graph, clusters, markers)


def annotate_from_evidence(evidence: pd.DataFrame, subsets_of: Callable[[pd.Series], pd.DataFrame],
                           graph: sp.spmatrix | None = None, clusters: pd.Series | None = None,
                           markers: dict[str, Any] | None = None) -> pd.DataFrame:
    """Compartment and cell type of every cell from its :func:`compartment_evidence` (one row per cell, in the
    graph's order) and the :func:`subset_evidence` that ``subsets_of(compartments)`` measures once the compartments
    are decided (in memory, or shard by shard: :func:`helpers.preprocessing.per_sample.annotate`), with the
    evidence kept for obs (smoothed compartment scores, plasma evidence) and ``attrs['nk_cd54_split']``;
    ``clusters``: the over-clusters for majority voting."""
    markers = markers or load_markers()
    compartment, kept = compartments_from_evidence(evidence, graph, clusters, markers)
    cell_type = subsets_from_evidence(subsets_of(compartment), compartment, graph, clusters, markers)
    nk_dim = (cell_type == "NK_CD56dim").to_numpy()
    spec = markers.get("nk_cd54", {})
    has_counts = "nk_cd54_counts" in evidence
    counts = evidence["nk_cd54_counts"].to_numpy()[nk_dim] if has_counts else None
    present = not has_counts or bool(np.isfinite(evidence["nk_cd54_counts"].to_numpy(float)).all())
    bright, info = split_nk_cd54_counts(counts if present else None,
                                        evidence["library_size"].to_numpy()[nk_dim] if has_counts else None, spec,
                                        gene_present=present, n_cells=int(nk_dim.sum()))
    if bright is not None:
        cell_type[nk_dim] = np.where(bright, "NK_CD56dim_CD54bright", "NK_CD56dim_CD54dim")
    out = pd.concat([compartment, cell_type], axis=1).join(kept)
    if clusters is not None:
        out["over_cluster"] = np.asarray(clusters).astype(str)
    out.attrs["nk_cd54_split"] = info
    return out
