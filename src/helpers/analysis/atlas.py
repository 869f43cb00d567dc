"""Resistance-mechanism atlas (notebook 08): per-patient measures of each resistance mechanism, compared
between response groups (and with age) with one FDR over the whole atlas.

Mechanisms and their genes / gene sets are declared in ``data/resistance_atlas.yaml``:
- expression mechanisms (drug efflux, epigenetic regulators, DNA repair, therapy targets) in the malignant
  plasma-cell pseudobulk: genes as log2 CPM, gene sets as mean z-scored log2 CPM;
- protective microenvironment: liana magnitudes per sample from stromal / myeloid senders to tumour cells;
- genetic heterogeneity: infercnvpy copy-number burden and number of CNV subclones per patient.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from helpers.analysis.pseudobulk import log_cpm, pseudobulk_by_patient, set_score
from helpers.analysis.stats import bh_fdr, compare_two_groups, spearman_ci
from helpers.claims import not_testable
from helpers.data.cohort import project_root
from helpers.data.genesets import gene_set

TUMOUR = "malignant_PC"
CNV_FEATURES = ["cnv_burden", "cnv_subclones"]


def load_atlas(path: str | Path | None = None) -> dict[str, Any]:
    """The atlas definition (data/resistance_atlas.yaml or another file with the same keys)."""
    import yaml

    path = Path(path) if path else project_root() / "data" / "resistance_atlas.yaml"
    if not path.exists():
        raise FileNotFoundError(f"atlas definition {path} does not exist")
    spec = yaml.safe_load(path.read_text()) or {}
    if "mechanisms" not in spec:
        raise ValueError(f"{path}: needs a 'mechanisms' mapping (name: {{genes: [...], sets: [...]}})")
    return spec


def expression_features(logcpm: pd.DataFrame, spec: dict[str, Any], min_mean: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Patients x features for the expression mechanisms, and a feature table (feature, mechanism, kind,
    genes, measured). A gene absent or unexpressed (mean log2 CPM below ``min_mean``), or a set with fewer
    than 5 expressed genes, is listed with ``measured=False`` instead of silently dropped."""
    values, meta = {}, []
    for mech, m in spec["mechanisms"].items():
        for g in m.get("genes", []):
            ok = g in logcpm.columns and logcpm[g].mean() >= min_mean
            meta.append({"feature": g, "mechanism": mech, "kind": "gene", "genes": [g], "measured": bool(ok),
                         "note": "" if ok else ("not in the data" if g not in logcpm.columns else "not expressed")})
            if ok:
                values[g] = logcpm[g]
        for entry in m.get("sets", []):
            # a named set from data/genesets, or an inline {name: [genes]}
            s, genes = next(iter(entry.items())) if isinstance(entry, dict) else (entry, gene_set(entry))
            try:
                values[s] = set_score(logcpm, genes, min_mean=min_mean)
                meta.append({"feature": s, "mechanism": mech, "kind": "set", "genes": genes, "measured": True, "note": ""})
            except ValueError as e:
                meta.append({"feature": s, "mechanism": mech, "kind": "set", "genes": genes, "measured": False,
                             "note": str(e)})
    return pd.DataFrame(values), pd.DataFrame(meta)


def tumour_expression_features(adata: ad.AnnData, spec: dict[str, Any], tissue: str | None = None,
                               min_cells: int = 10, label: str = "cell_type") -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`expression_features` on the per-patient pseudobulk of malignant plasma cells."""
    pb = pseudobulk_by_patient(adata, [TUMOUR], label=label, tissue=tissue, min_cells=min_cells)
    return expression_features(log_cpm(pb), spec)


def microenvironment_features(adata: ad.AnnData, spec: dict[str, Any], min_cells: int = 10,
                              label: str = "cell_type", compartment: str = "compartment") -> tuple[pd.DataFrame, pd.DataFrame]:
    """liana magnitudes per patient of every interaction from the sender compartments' cell types to tumour
    cells (kept when expressed in at least ``min_present`` of patients; the named pairs are always reported)."""
    from helpers.analysis.communication import (
        interaction_key,
        interaction_matrix,
        liana_by_sample,
    )

    me = spec.get("microenvironment", {})
    min_present = float(me.get("min_present", 0.5))
    senders = sorted(adata.obs.loc[adata.obs[compartment].astype(str).isin(me.get("sender_compartments", [])),
                                   label].astype(str).unique())
    pairs = [(s, TUMOUR) for s in senders if s != TUMOUR]
    lr = liana_by_sample(adata, label, pairs=pairs, min_cells=min_cells, return_all_lrs=True)
    W = interaction_matrix(lr, adata.obs, value="lr_means", min_present=min_present)
    lr["feature"] = interaction_key(lr)
    lr["pair"] = lr["ligand"] + "-" + lr["receptor"]
    named = set(me.get("named_pairs", []))
    info = lr.drop_duplicates("feature").set_index("feature")
    meta = [{"feature": f, "mechanism": "microenvironment", "kind": "interaction",
             "genes": [*info.at[f, "ligand"].split("_"), *info.at[f, "receptor"].split("_")], "measured": True,
             "note": "named pair" if info.at[f, "pair"] in named else "", "sender": info.at[f, "source"]}
            for f in W.columns]
    for pair in sorted(named - set(info.loc[W.columns, "pair"]) if len(W.columns) else named):
        meta.append({"feature": f"any>{TUMOUR}: {pair}", "mechanism": "microenvironment", "kind": "interaction",
                     "genes": [], "measured": False, "sender": "",
                     "note": f"named pair not expressed in >= {min_present:.0%} of patients (or not in the resource)"})
    return W, pd.DataFrame(meta)


def count_subclones(X: np.ndarray, max_k: int = 4, seed: int = 0, min_silhouette: float = 0.25,
                    min_fraction: float = 0.1, n_pcs: int = 10) -> int:
    """Number of CNV subclones among one patient's tumour cells: k-means on the first PCs of the CNV profiles
    for k = 2..max_k; the k with the best silhouette is accepted when its silhouette is at least
    ``min_silhouette`` and every cluster holds ``min_fraction`` of the cells, otherwise 1 clone."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score

    X = np.asarray(X, dtype=float)
    if X.shape[0] < 20:
        return 1
    Z = PCA(n_components=min(n_pcs, X.shape[0] - 1, X.shape[1]), random_state=seed).fit_transform(X)
    best_k, best_s = 1, -1.0
    for k in range(2, max_k + 1):
        lab = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(Z)
        if np.bincount(lab, minlength=k).min() < min_fraction * len(lab):
            continue
        s = silhouette_score(Z, lab, random_state=seed)
        if s > best_s:
            best_k, best_s = k, s
    return best_k if best_s >= min_silhouette else 1


def cnv_features(adata: ad.AnnData, spec: dict[str, Any], seed: int = 0, label: str = "cell_type",
                 compartment: str = "compartment", patient: str = "patient_id") -> pd.DataFrame:
    """Per patient: CNV burden (mean |infercnv score| of tumour cells minus that of the patient's reference
    cells) and number of CNV subclones (:func:`count_subclones`); patients with fewer than ``min_cells``
    tumour cells get NaN."""
    import scipy.sparse as sp

    from helpers.annotation.malignant import infer_cnv

    gh = spec.get("genetic_heterogeneity", {})
    min_cells = int(gh.get("min_cells", 30))
    query = (adata.obs[label].astype(str) == TUMOUR).to_numpy()
    ref = adata.obs[compartment].astype(str).isin(["T", "NK", "myeloid"]).to_numpy()
    if query.sum() < min_cells:
        raise ValueError(f"only {int(query.sum())} '{TUMOUR}' cells: cannot infer copy numbers")
    cnv = infer_cnv(adata, query, ref, seed=seed)
    X = cnv.obsm["X_cnv"]
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    obs = cnv.obs
    absx = np.abs(X).mean(1)
    rows = {}
    for p in sorted(obs[patient].astype(str).unique()):
        m = (obs[patient].astype(str) == p).to_numpy()
        q = m & (obs["cnv_group"] == "query").to_numpy()
        r = m & (obs["cnv_group"] == "reference").to_numpy()
        if q.sum() < min_cells:
            rows[p] = {"cnv_burden": np.nan, "cnv_subclones": np.nan, "n_tumour_cells": int(q.sum())}
            continue
        base = absx[r].mean() if r.sum() >= 10 else absx[(obs["cnv_group"] == "reference").to_numpy()].mean()
        rows[p] = {"cnv_burden": float(absx[q].mean() - base),
                   "cnv_subclones": float(count_subclones(X[q], int(gh.get("max_subclones", 4)), seed)),
                   "n_tumour_cells": int(q.sum())}
    return pd.DataFrame(rows).T.rename_axis(patient)


def atlas_table(values: pd.DataFrame, meta: pd.DataFrame, groups: pd.Series, reference: str, test: str,
                ages: pd.Series | None = None) -> pd.DataFrame:
    """One row per measured feature: Hodges-Lehmann shift (test minus reference) with 95% CI, Mann-Whitney p
    and BH q over the whole atlas (``q``; BH within the feature's mechanism as ``q_within_mechanism``); with ``ages`` (numeric, varying), Spearman rho with age and its own BH q."""
    rows = []
    for f in values.columns:
        rec = compare_two_groups(values[f], groups, reference, test, "per-patient value, Hodges-Lehmann, Mann-Whitney")
        if ages is not None:
            a = ages.reindex(values.index).astype(float)
            if a.nunique() > 2:
                sc = spearman_ci(values[f].to_numpy(), a.to_numpy())
                rec.update({"age_rho": sc["rho"], "age_p": sc["p"]})
        rows.append({"feature": f, **rec})
    df = pd.DataFrame(rows)
    m = meta.drop_duplicates("feature").set_index("feature")
    df.insert(1, "mechanism", m["mechanism"].reindex(df["feature"]).to_numpy())
    df.insert(2, "kind", m["kind"].reindex(df["feature"]).to_numpy())
    df["q"] = bh_fdr(pd.to_numeric(df["p"], errors="coerce").to_numpy())
    # secondary: BH within each mechanism (the many ligand-receptor pairs otherwise dominate the atlas-wide FDR)
    df["q_within_mechanism"] = df.groupby("mechanism")["p"].transform(
        lambda p: pd.Series(bh_fdr(pd.to_numeric(p, errors="coerce").to_numpy()), index=p.index))
    if "age_p" in df:
        df["age_q"] = bh_fdr(pd.to_numeric(df["age_p"], errors="coerce").to_numpy())
    return df


def planted_features(meta: pd.DataFrame, truth: dict[str, Any]) -> pd.Series:
    """True where a feature could carry a planted effect (simulated cohorts): one of its genes is planted in
    tumour cells (expression features) or in the sender / tumour for an interaction. CNV features: never."""
    by_type: dict[str, set[str]] = {}
    for eff in truth.get("effects", {}).values():
        if eff.get("strength_log2", 0) == 0:
            continue
        for ct in eff["cell_types"]:
            by_type.setdefault(ct, set()).update(eff["genes"])
    out = {}
    for _, r in meta.iterrows():
        genes = set(r["genes"]) if isinstance(r["genes"], (list, tuple, set)) else set()
        if r["kind"] in ("gene", "set"):
            out[r["feature"]] = bool(genes & by_type.get(TUMOUR, set()))
        elif r["kind"] == "interaction":
            sender = str(r.get("sender", ""))
            out[r["feature"]] = bool(genes & (by_type.get(sender, set()) | by_type.get(TUMOUR, set())))
        else:
            out[r["feature"]] = False
    return pd.Series(out, name="planted")


def atlas_against_truth(table: pd.DataFrame, meta: pd.DataFrame, cnv: pd.DataFrame, truth: dict[str, Any],
                        alpha: float = 0.05, min_clone_fraction: float = 0.1) -> tuple[pd.Series, dict[str, Any]]:
    """Simulated cohorts: which features carry a planted effect (:func:`planted_features`, aligned to ``table``),
    how many planted / unplanted ones reach q < ``alpha``, and how often the CNV subclone count equals the planted
    number of clones holding at least ``min_clone_fraction`` of the tumour cells."""
    planted = planted_features(meta, truth).reindex(table["feature"]).fillna(False).astype(bool).to_numpy()
    sig = (table["q"] < alpha).to_numpy()
    true_clones = pd.Series({p: sum(c["fraction"] >= min_clone_fraction for c in v["clones"])
                             for p, v in truth["patients"].items()})
    both = cnv["cnv_subclones"].dropna().astype(int).to_frame("called").join(true_clones.rename("planted"), how="inner")
    summary = {
        "n_planted_features": int(planted.sum()),
        "n_unplanted_significant": int((sig & ~planted).sum()),
        "unplanted_significant": table.loc[sig & ~planted, "feature"].tolist(),
        "n_planted_significant": int((sig & planted).sum()),
        "subclones_exact_agreement": float((both["called"] == both["planted"]).mean()) if len(both) else None,
        "subclones_n_patients": int(len(both)),
    }
    return pd.Series(planted, index=table.index, name="planted"), summary


def run_atlas(adata: ad.AnnData, spec: dict[str, Any], groups: pd.Series, reference: str, test: str,
              min_cells: int = 10, seed: int = 0, ages: pd.Series | None = None) -> dict[str, Any]:
    """The whole atlas on one tissue's annotated cells (notebook 08): tumour expression features
    (:func:`tumour_expression_features`), microenvironment interactions (:func:`microenvironment_features`) and,
    with at least ``genetic_heterogeneity.min_cells`` tumour cells, CNV burden and subclones
    (:func:`cnv_features`); then every feature's NR-vs-CR test with one FDR (:func:`atlas_table`; ``ages`` with
    more than two distinct values adds the age correlation).

    Returns ``values`` (patients x features), ``meta`` (one row per feature, measured or not, with a note),
    ``table``, ``cnv`` (per patient) and ``cnv_untestable`` (None, or the not-testable record of the CNV
    features)."""
    expr, expr_meta = tumour_expression_features(adata, spec, min_cells=min_cells)
    me, me_meta = microenvironment_features(adata, spec, min_cells=min_cells)
    n_tumour = int((adata.obs["cell_type"].astype(str) == TUMOUR).sum())
    cnv_min = int(spec.get("genetic_heterogeneity", {}).get("min_cells", 30))  # infercnvpy's minimum of tumour cells
    cnv_untestable = (not_testable(f"only {n_tumour} malignant plasma cells (infercnvpy needs {cnv_min})")
                      if n_tumour < cnv_min else None)
    cnv = (cnv_features(adata, spec, seed=seed) if cnv_untestable is None
           else pd.DataFrame(columns=CNV_FEATURES, dtype=float))
    cnv_meta = pd.DataFrame({"feature": CNV_FEATURES, "mechanism": "genetic_heterogeneity", "kind": "cnv",
                             "genes": [[], []], "measured": cnv_untestable is None,
                             "note": "" if cnv_untestable is None else cnv_untestable["reason"]})
    cnv_values = [cnv[CNV_FEATURES].astype(float)] if cnv_untestable is None else []
    values = pd.concat([expr, me, *cnv_values], axis=1)
    meta = pd.concat([expr_meta, me_meta, cnv_meta], ignore_index=True)
    use_ages = ages if ages is not None and ages.nunique() > 2 else None
    table = atlas_table(values, meta, groups, reference, test, ages=use_ages)
    return {"values": values, "meta": meta, "table": table, "cnv": cnv, "cnv_untestable": cnv_untestable}


def atlas_findings(result: dict[str, Any] | None, n_patients: dict[str, int], untestable: dict | None = None,
                   truth: dict[str, Any] | None = None, alpha: float = 0.05) -> dict[str, Any]:
    """Notebook 08's findings record from :func:`run_atlas`'s ``result``: features tested and significant at
    q < ``alpha`` (overall and per mechanism), the ten smallest p, the features not measured, the age
    correlations and, for a simulated cohort (``truth``), the comparison with the planted truth
    (:func:`atlas_against_truth`; the table gains a ``planted`` column). ``untestable``: the atlas's not-testable
    record (no tumour cells), recorded as such."""
    if untestable is not None or result is None:
        return {"atlas": untestable, "n_features": 0, "n_patients": n_patients, "n_significant_q005": 0}
    table, meta = result["table"], result["meta"]
    by_mech = mechanism_summary(table, alpha)
    findings = {
        "n_features": int(len(table)),
        "n_patients": n_patients,
        "n_significant_q005": int((table["q"] < alpha).sum()),
        "mechanisms": {m: {"n_features": int(r.n_features), "min_q": float(r.min_q),
                           "n_q_below_0.05": int(r.n_q_below_005)} for m, r in by_mech.iterrows()},
        "top": table.nsmallest(10, "p")[["feature", "mechanism", "effect", "ci_low", "ci_high", "p", "q"]].to_dict(
            "records"),
        "not_measured": meta.loc[~meta["measured"].astype(bool), ["feature", "note"]].to_dict("records"),
        "age": ({"n_age_q_below_0.05": int((table["age_q"] < alpha).sum())} if "age_q" in table else None),
    }
    if result["cnv_untestable"] is not None:
        findings["cnv"] = result["cnv_untestable"]
    if truth is not None:
        table["planted"], findings["truth"] = atlas_against_truth(table, meta, result["cnv"], truth, alpha)
    return findings


def mechanism_summary(table: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per mechanism: features tested, smallest q and how many reach q < ``alpha``."""
    return table.groupby("mechanism").agg(n_features=("feature", "size"), min_q=("q", "min"),
                                          n_q_below_005=("q", lambda q: int((q < alpha).sum())))
