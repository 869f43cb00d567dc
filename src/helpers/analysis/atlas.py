"""Resistance-mechanism atlas (notebook 08): per-patient measures of each resistance mechanism, compared
between response groups in two stages, fixed in advance.

Mechanisms and their genes / gene sets are declared, each with the direction that means resistance, in
``data/resistance_atlas.yaml``:
- expression mechanisms (target loss, complement inhibitors, cereblon pathway, drug efflux, epigenetic regulators,
  DNA repair, ...) in the malignant plasma-cell pseudobulk: genes as log2 CPM, gene sets as mean z-scored log2 CPM;
- protective microenvironment: liana magnitudes per sample from stromal / myeloid senders to tumour cells;
- genetic heterogeneity: infercnvpy copy-number burden and number of CNV subclones per patient.

Stage 1 (:func:`mechanism_table`): one signed score per mechanism (:func:`mechanism_scores`), NR vs CR, one BH
FDR over the mechanisms. Stage 2 (:func:`atlas_table`'s ``stage2`` column): the features of the mechanisms
significant in stage 1, BH within each mechanism. The feature table also keeps one exploratory FDR over all features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from helpers.analysis import subclones
from helpers.analysis.power import clopper_pearson, simulate_pseudobulks
from helpers.analysis.pseudobulk import log_cpm, n_cells_of, pseudobulk_by_patient, set_score
from helpers.analysis.stats import bh_fdr, compare_two_groups, spearman_ci
from helpers.annotation.malignant import DYNAMIC_THRESHOLD
from helpers.claims import not_testable
from helpers.data.cohort import project_root
from helpers.data.genesets import centromeres, gene_set
from helpers.data.simulate import cohort_model, knob, load_planted, load_resistance
from helpers.preprocessing import per_sample

TUMOUR = "malignant_PC"
CNV_FEATURES = ["cnv_burden", "cnv_subclones"]
CELL_MECHANISMS = ("microenvironment", "genetic_heterogeneity")  # measured from cells, not from the tumour pseudobulk
DIRECTIONS = {"up": 1, "down": -1}


def load_atlas(path: str | Path | None = None) -> dict[str, Any]:
    """The atlas definition (data/resistance_atlas.yaml or another file with the same keys)."""
    import yaml

    path = Path(path) if path else project_root() / "data" / "resistance_atlas.yaml"
    if not path.exists():
        raise FileNotFoundError(f"atlas definition {path} does not exist")
    spec = yaml.safe_load(path.read_text()) or {}
    if "mechanisms" not in spec:
        raise ValueError(f"{path}: needs a 'mechanisms' mapping (name: {{genes: [...], sets: [...]}})")
    blocks = {**spec["mechanisms"], **{k: spec[k] for k in CELL_MECHANISMS if k in spec}}
    for name, m in blocks.items():
        if m.get("direction") not in DIRECTIONS:
            raise ValueError(f"{path}: mechanism '{name}' needs 'direction: up' or 'direction: down' (the direction "
                             f"that means resistance), not {m.get('direction')!r}")
    return spec


def mechanism_genes(m: dict[str, Any]) -> list[str]:
    """An expression mechanism's genes: its listed genes and the genes of its sets, minus ``exclude``."""
    genes = list(m.get("genes", []))
    for entry in m.get("sets", []):
        genes += next(iter(entry.values())) if isinstance(entry, dict) else gene_set(entry)
    drop = set(m.get("exclude", []))
    return [g for g in dict.fromkeys(genes) if g not in drop]


def signed_score(values: pd.DataFrame, sign: int) -> pd.Series:
    """``sign`` x the mean over columns of each column's z-score across patients (constant columns left out)."""
    sd = values.std(ddof=1).replace(0, np.nan)
    return sign * ((values - values.mean()) / sd).mean(1, skipna=True)


def mechanism_scores(logcpm: pd.DataFrame, spec: dict[str, Any], cell_values: pd.DataFrame | None = None,
                     cell_meta: pd.DataFrame | None = None, min_mean: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stage 1's input: patients x mechanisms signed scores (:func:`signed_score`; positive = toward resistance)
    and one row per mechanism (label, direction, features used, measured, note).

    Expression mechanisms use their genes (:func:`mechanism_genes`) with mean log2 CPM >= ``min_mean`` in
    ``logcpm``; the microenvironment uses the measured named pairs of ``cell_values`` (``cell_meta`` note
    'named pair'); genetic heterogeneity uses the CNV features when measured."""
    scores, info = {}, []
    blocks = [(n, m, "expression") for n, m in spec["mechanisms"].items()]
    blocks += [(n, spec[n], n) for n in CELL_MECHANISMS if n in spec]
    for name, m, kind in blocks:
        if kind == "expression":
            genes = mechanism_genes(m)
            cols = [g for g in genes if g in logcpm.columns and logcpm[g].mean() >= min_mean]
            table, why = logcpm[cols], f"none of its {len(genes)} genes expressed (mean log2 CPM >= {min_mean})"
        else:
            cm = cell_meta if cell_meta is not None else pd.DataFrame(columns=["feature", "mechanism", "note"])
            pick = cm["mechanism"] == name
            if name == "microenvironment":
                pick &= cm["note"] == "named pair"
            cols = [f for f in cm.loc[pick, "feature"] if cell_values is not None and f in cell_values.columns]
            table = cell_values[cols] if cols else pd.DataFrame(index=logcpm.index)
            why = ("no named pair expressed in enough patients" if name == "microenvironment"
                   else "CNV features not measured")
        info.append({"mechanism": name, "label": m.get("label", name), "direction": m["direction"],
                     "n_features": len(cols), "features": cols, "measured": bool(cols), "note": "" if cols else why})
        if cols:
            scores[name] = signed_score(table.astype(float), DIRECTIONS[m["direction"]])
    return pd.DataFrame(scores), pd.DataFrame(info)


def mechanism_table(scores: pd.DataFrame, info: pd.DataFrame, groups: pd.Series, reference: str, test: str,
                    alpha: float = 0.05) -> pd.DataFrame:
    """Stage 1: per measured mechanism, the NR-minus-CR Hodges-Lehmann shift of its signed score (95% CI; positive =
    toward resistance), two-sided Mann-Whitney p, BH q over the mechanisms, and ``significant`` (q < ``alpha``)."""
    rows = [{"mechanism": m, **compare_two_groups(scores[m], groups, reference, test,
                                                   "signed mechanism score, Hodges-Lehmann, Mann-Whitney")}
            for m in scores.columns]
    df = pd.DataFrame(rows, columns=["mechanism", "effect", "ci_low", "ci_high", "p", "direction", "n_cr", "n_nr"])
    df = df.merge(info[["mechanism", "label", "n_features"]], on="mechanism", how="left")
    df["q"] = bh_fdr(pd.to_numeric(df["p"], errors="coerce").to_numpy())
    df["significant"] = df["q"] < alpha
    df["toward_resistance"] = pd.to_numeric(df["effect"], errors="coerce") > 0
    return df


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
            genes = [g for g in genes if g not in set(m.get("exclude", []))]
            try:
                values[s] = set_score(logcpm, genes, min_mean=min_mean)
                meta.append({"feature": s, "mechanism": mech, "kind": "set", "genes": genes, "measured": True, "note": ""})
            except ValueError as e:
                meta.append({"feature": s, "mechanism": mech, "kind": "set", "genes": genes, "measured": False,
                             "note": str(e)})
    return pd.DataFrame(values), pd.DataFrame(meta)


def tumour_logcpm(adata: ad.AnnData, tissue: str | None = None, min_cells: int = 10,
                  label: str = "cell_type") -> pd.DataFrame:
    """log2 CPM of the per-patient pseudobulk of malignant plasma cells (patients with ``min_cells`` of them)."""
    return log_cpm(pseudobulk_by_patient(adata, [TUMOUR], label=label, tissue=tissue, min_cells=min_cells))


def microenvironment_features(adata: ad.AnnData, spec: dict[str, Any], min_cells: int = 10,
                              label: str = "cell_type", compartment: str = "compartment",
                              client: Any = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """liana magnitudes per patient of every interaction from the sender compartments' cell types to tumour
    cells (kept when expressed in at least ``min_present`` of patients; the named pairs are always reported).
    ``client``: a Dask client for cells kept in shards (one sample per task; the same result)."""
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
    lr = liana_by_sample(adata, label, pairs=pairs, min_cells=min_cells, return_all_lrs=True, client=client)
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


def cnv_features(adata: ad.AnnData, spec: dict[str, Any], seed: int = 0, label: str = "cell_type",
                 compartment: str = "compartment", patient: str = "patient_id",
                 client: Any = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """infercnvpy on the tumour cells against the T/NK/myeloid cells, without the dynamic noise threshold (see
    :mod:`helpers.analysis.subclones`). Per patient: CNV burden (mean |CNV score| of the tumour cells minus that of
    the patient's reference cells) and number of CNV subclones (:func:`~helpers.analysis.subclones.call_subclones`
    on arm-level scores); patients with fewer than ``min_cells`` tumour cells get NaN. Also returns one row per
    analysed tumour cell: its patient, called clone and, in a simulated cohort, planted clone (``truth_clone``).
    ``client``: a Dask client for cells kept in shards (profiles per sample on workers; the same result)."""
    gh = spec.get("genetic_heterogeneity", {})
    min_cells = int(gh.get("min_cells", 30))
    cells = per_sample.cell_table(adata)  # the cells (with cell groups: their labels; values read shard by shard)
    query = (cells.obs[label].astype(str) == TUMOUR).to_numpy()
    ref = cells.obs[compartment].astype(str).isin(["T", "NK", "myeloid"]).to_numpy()
    if query.sum() < min_cells:
        raise ValueError(f"only {int(query.sum())} '{TUMOUR}' cells: cannot infer copy numbers")
    window_size = int(gh.get("window_size", 100))
    cnv = per_sample.infer_cnv_cells(cells, query, ref, None, client, seed=seed, window_size=window_size,
                                     dynamic_threshold=None)
    X = cnv.obsm["X_cnv"]
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    arms = subclones.window_arms(cnv.var, cnv.uns["cnv"]["chr_pos"], X.shape[1], centromeres()["centromere_mb"],
                                 window_size=window_size)
    A = subclones.arm_scores(X, arms).to_numpy()
    obs = cnv.obs
    # burden on the thresholded scores, as infercnvpy would give them (the subclones need the unthresholded ones)
    absx = np.where(np.abs(X) < DYNAMIC_THRESHOLD * X.std(), 0.0, np.abs(X)).mean(1)
    is_query = (obs["cnv_group"] == "query").to_numpy()
    called = pd.Series(-1, index=obs.index, name="called_clone")
    rows = {}
    for p in sorted(obs[patient].astype(str).unique()):
        m = (obs[patient].astype(str) == p).to_numpy()
        q, r = m & is_query, m & ~is_query
        if q.sum() < min_cells:
            rows[p] = {"cnv_burden": np.nan, "cnv_subclones": np.nan, "n_tumour_cells": int(q.sum())}
            continue
        labels = subclones.call_subclones(A[q], max_clones=int(gh.get("max_subclones", 4)), min_cells=min_cells,
                                          seed=seed)
        called[q] = labels
        base = absx[r].mean() if r.sum() >= 10 else absx[~is_query].mean()
        rows[p] = {"cnv_burden": float(absx[q].mean() - base), "cnv_subclones": float(labels.max() + 1),
                   "n_tumour_cells": int(q.sum())}
    cells = obs.loc[is_query, [patient]].astype(str).join(called)
    if "truth_clone" in obs:
        cells["truth_clone"] = obs.loc[is_query, "truth_clone"].astype(int)
    return pd.DataFrame(rows).T.rename_axis(patient), cells


def atlas_table(values: pd.DataFrame, meta: pd.DataFrame, groups: pd.Series, reference: str, test: str,
                ages: pd.Series | None = None, significant_mechanisms: list[str] | None = None,
                alpha: float = 0.05) -> pd.DataFrame:
    """One row per measured feature: Hodges-Lehmann shift (test minus reference) with 95% CI, Mann-Whitney p,
    BH q within the feature's mechanism (``q_within_mechanism``) and ``stage2``: the feature's mechanism is among
    ``significant_mechanisms`` (stage 1) and its within-mechanism q < ``alpha``. ``q``: one exploratory BH over
    every feature of the atlas. With ``ages`` (numeric, varying), Spearman rho with age and its own BH q."""
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
    df["stage2"] = df["mechanism"].isin(significant_mechanisms or []) & (df["q_within_mechanism"] < alpha)
    if "age_p" in df:
        df["age_q"] = bh_fdr(pd.to_numeric(df["age_p"], errors="coerce").to_numpy())
    return df


def planted_genes_by_type(truth: dict[str, Any]) -> dict[str, set[str]]:
    """Per cell type, the genes carrying a planted effect of non-zero strength: the study's effects and the
    resistance mechanisms (those with at least one carrier)."""
    by_type: dict[str, set[str]] = {}
    for eff in truth.get("effects", {}).values():
        if eff.get("strength_log2", 0) != 0:
            for ct in eff["cell_types"]:
                by_type.setdefault(ct, set()).update(eff["genes"])
    for mech in truth.get("resistance", {}).values():
        if mech.get("strength_log2", 0) != 0 and mech.get("carriers"):
            for ct in mech["cell_types"]:
                by_type.setdefault(ct, set()).update(mech["genes"])
    return by_type


def planted_features(meta: pd.DataFrame, truth: dict[str, Any]) -> pd.Series:
    """True where a feature could carry a planted effect (simulated cohorts): one of its genes is planted in
    tumour cells (expression features) or in the sender / tumour for an interaction. CNV features: never."""
    by_type = planted_genes_by_type(truth)
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


def planted_mechanisms(info: pd.DataFrame, meta: pd.DataFrame, truth: dict[str, Any]) -> pd.DataFrame:
    """Simulated cohorts: per mechanism, whether a feature its score uses carries a planted effect (expression
    mechanisms: one of its measured genes is planted in tumour cells; microenvironment: :func:`planted_features` of
    its interactions; CNV measures: never), how many of its features do, and which truth entries plant them."""
    by_type = planted_genes_by_type(truth)
    tumour_genes = by_type.get(TUMOUR, set())
    feat_planted = planted_features(meta, truth)
    sources = {**{f"study:{n}": e for n, e in truth.get("effects", {}).items() if e.get("strength_log2", 0) != 0},
               **{f"resistance:{n}": m for n, m in truth.get("resistance", {}).items()
                  if m.get("strength_log2", 0) != 0 and m.get("carriers")}}
    rows = []
    for r in info.itertuples():
        feats = list(r.features)
        if r.mechanism == "microenvironment":
            hit = [f for f in feats if bool(feat_planted.get(f, False))]
            genes = set().union(*(set(meta.set_index("feature").at[f, "genes"]) for f in hit)) if hit else set()
        elif r.mechanism == "genetic_heterogeneity":
            hit, genes = [], set()
        else:
            hit = [g for g in feats if g in tumour_genes]
            genes = set(hit)
        by = sorted(k for k, e in sources.items() if genes & set(e["genes"]))
        rows.append({"mechanism": r.mechanism, "planted": bool(hit), "n_planted_features": len(hit),
                     "n_features": len(feats), "planted_by": by})
    return pd.DataFrame(rows, columns=["mechanism", "planted", "n_planted_features", "n_features", "planted_by"])


def atlas_against_truth(mechanisms: pd.DataFrame, planted_mech: pd.DataFrame, table: pd.DataFrame,
                        meta: pd.DataFrame, cnv: pd.DataFrame, truth: dict[str, Any],
                        cnv_cells: pd.DataFrame | None = None) -> tuple[pd.Series, dict[str, Any]]:
    """Simulated cohorts: stage 1 against the planted mechanisms (:func:`planted_mechanisms`): how many planted
    ones are significant toward resistance, how many unplanted ones are significant at all; stage 2 against the
    planted features (:func:`planted_features`, returned aligned to ``table``); and how often the CNV subclone count
    equals the planted number of clones (:func:`~helpers.analysis.subclones.subclone_agreement`), among the patients
    whose clones meet the detectability rule in the analysed cells (``cnv_cells``, from :func:`cnv_features`)."""
    pm = planted_mech.set_index("mechanism")["planted"]
    mt = mechanisms.assign(planted=mechanisms["mechanism"].map(pm).fillna(False).astype(bool))
    found = mt["significant"] & mt["toward_resistance"]
    planted = planted_features(meta, truth).reindex(table["feature"]).fillna(False).astype(bool).to_numpy()
    st2 = table["stage2"].to_numpy(bool)
    cells = cnv_cells if cnv_cells is not None else pd.DataFrame(columns=["patient_id", "truth_clone"])
    agreement = subclones.subclone_agreement(cnv["cnv_subclones"], subclones.subclone_truth(truth, cells))
    summary = {
        "n_mechanisms": int(len(mt)),
        "n_planted_mechanisms": int(mt["planted"].sum()),
        "planted_mechanisms": mt.loc[mt["planted"], "mechanism"].tolist(),
        "n_planted_significant": int((found & mt["planted"]).sum()),
        "planted_significant": mt.loc[found & mt["planted"], "mechanism"].tolist(),
        "n_unplanted_significant": int((mt["significant"] & ~mt["planted"]).sum()),
        "unplanted_significant": mt.loc[mt["significant"] & ~mt["planted"], "mechanism"].tolist(),
        "stage2_n_planted_features": int((st2 & planted).sum()),
        "stage2_n_unplanted_features": int((st2 & ~planted).sum()),
        "stage2_unplanted_features": table.loc[st2 & ~planted, "feature"].tolist(),
        "exploratory_n_unplanted_q005": int(((table["q"] < 0.05).to_numpy() & ~planted).sum()),
        **agreement,
    }
    return pd.Series(planted, index=table.index, name="planted"), summary


def run_atlas(adata: ad.AnnData, spec: dict[str, Any], groups: pd.Series, reference: str, test: str,
              min_cells: int = 10, seed: int = 0, ages: pd.Series | None = None, alpha: float = 0.05,
              client: Any = None) -> dict[str, Any]:
    """The whole atlas on one tissue's annotated cells (notebook 08): tumour expression features
    (:func:`expression_features` on :func:`tumour_logcpm`), microenvironment interactions
    (:func:`microenvironment_features`) and, with at least ``genetic_heterogeneity.min_cells`` tumour cells, CNV
    burden and subclones (:func:`cnv_features`); then stage 1 (:func:`mechanism_scores`, :func:`mechanism_table`)
    and stage 2 with every feature's test (:func:`atlas_table`; ``ages`` with more than two distinct values adds the
    age correlation). ``client``: a Dask client for cells kept in shards (liana and CNV one sample per task).

    Returns ``values`` (patients x features), ``meta`` (one row per feature, measured or not, with a note),
    ``scores`` (patients x mechanisms), ``mechanism_info``, ``mechanisms`` (stage 1), ``table`` (features),
    ``cnv`` (per patient), ``cnv_cells`` (per analysed tumour cell) and ``cnv_untestable`` (None, or the
    not-testable record of the CNV features)."""
    logcpm = tumour_logcpm(adata, min_cells=min_cells)
    expr, expr_meta = expression_features(logcpm, spec)
    me, me_meta = microenvironment_features(adata, spec, min_cells=min_cells, client=client)
    n_tumour = n_cells_of(adata, (adata.obs["cell_type"].astype(str) == TUMOUR).to_numpy())
    cnv_min = int(spec.get("genetic_heterogeneity", {}).get("min_cells", 30))  # infercnvpy's minimum of tumour cells
    cnv_untestable = (not_testable(f"only {n_tumour} malignant plasma cells (infercnvpy needs {cnv_min})")
                      if n_tumour < cnv_min else None)
    cnv, cnv_cells = (cnv_features(adata, spec, seed=seed, client=client) if cnv_untestable is None
                      else (pd.DataFrame(columns=CNV_FEATURES, dtype=float), None))
    cnv_meta = pd.DataFrame({"feature": CNV_FEATURES, "mechanism": "genetic_heterogeneity", "kind": "cnv",
                             "genes": [[], []], "measured": cnv_untestable is None,
                             "note": "" if cnv_untestable is None else cnv_untestable["reason"]})
    cnv_values = [cnv[CNV_FEATURES].astype(float)] if cnv_untestable is None else []
    values = pd.concat([expr, me, *cnv_values], axis=1)
    meta = pd.concat([expr_meta, me_meta, cnv_meta], ignore_index=True)
    cell_meta = meta[meta["mechanism"].isin(CELL_MECHANISMS) & meta["measured"].astype(bool)]
    scores, info = mechanism_scores(logcpm, spec, values, cell_meta)
    mechanisms = mechanism_table(scores, info, groups, reference, test, alpha)
    use_ages = ages if ages is not None and ages.nunique() > 2 else None
    table = atlas_table(values, meta, groups, reference, test, ages=use_ages,
                        significant_mechanisms=mechanisms.loc[mechanisms["significant"], "mechanism"].tolist(),
                        alpha=alpha)
    return {"values": values, "meta": meta, "scores": scores, "mechanism_info": info, "mechanisms": mechanisms,
            "table": table, "cnv": cnv, "cnv_cells": cnv_cells, "cnv_untestable": cnv_untestable}


def atlas_findings(result: dict[str, Any] | None, n_patients: dict[str, int], untestable: dict | None = None,
                   truth: dict[str, Any] | None = None, alpha: float = 0.05) -> dict[str, Any]:
    """Notebook 08's findings record from :func:`run_atlas`'s ``result``: stage 1 per mechanism (effect, CI, p, q,
    significant), the stage-2 features, the ten smallest feature p, the features and mechanisms not measured, the
    age correlations and, for a simulated cohort (``truth``), the comparison with the planted truth
    (:func:`atlas_against_truth`; the feature table gains a ``planted`` column, the mechanism table ``planted`` and
    ``planted_by``). ``untestable``: the atlas's not-testable record (no tumour cells), recorded as such."""
    if untestable is not None or result is None:
        return {"atlas": untestable, "n_features": 0, "n_mechanisms": 0, "n_patients": n_patients,
                "n_mechanisms_significant": 0, "n_significant_q005": 0}
    table, meta, mech, info = result["table"], result["meta"], result["mechanisms"], result["mechanism_info"]
    cols = ["effect", "ci_low", "ci_high", "p", "q", "significant", "toward_resistance", "n_features"]
    findings = {
        "n_features": int(len(table)),
        "n_mechanisms": int(len(mech)),
        "n_patients": n_patients,
        "n_mechanisms_significant": int(mech["significant"].sum()),
        "mechanisms": {r["mechanism"]: {c: (r[c].item() if hasattr(r[c], "item") else r[c]) for c in cols}
                       for r in mech.to_dict("records")},
        "mechanisms_not_measured": info.loc[~info["measured"], ["mechanism", "note"]].to_dict("records"),
        "stage2": table.loc[table["stage2"], ["feature", "mechanism", "effect", "ci_low", "ci_high", "p",
                                              "q_within_mechanism"]].to_dict("records"),
        "n_significant_q005": int((table["q"] < alpha).sum()),
        "top": table.nsmallest(10, "p")[["feature", "mechanism", "effect", "ci_low", "ci_high", "p", "q"]].to_dict(
            "records"),
        "not_measured": meta.loc[~meta["measured"].astype(bool), ["feature", "note"]].to_dict("records"),
        "age": ({"n_age_q_below_0.05": int((table["age_q"] < alpha).sum())} if "age_q" in table else None),
    }
    if result["cnv_untestable"] is not None:
        findings["cnv"] = result["cnv_untestable"]
    if truth is not None:
        pm = planted_mechanisms(info, meta, truth)
        mech["planted"] = mech["mechanism"].map(pm.set_index("mechanism")["planted"]).fillna(False).astype(bool)
        mech["planted_by"] = mech["mechanism"].map(pm.set_index("mechanism")["planted_by"].map(", ".join))
        table["planted"], findings["truth"] = atlas_against_truth(mech, pm, table, meta, result["cnv"], truth,
                                                                 result.get("cnv_cells"))
        for m, rec in findings["mechanisms"].items():
            rec["planted"] = bool(mech.set_index("mechanism").at[m, "planted"])
    return findings


def mechanism_power_raw(samples: pd.DataFrame, sim: dict[str, Any], seed: int, spec: dict[str, Any], n_reps: int,
                        reference: str = "CR", test: str = "NR", model=None, min_cells: int = 10,
                        alpha: float = 0.05, n_jobs: int = 1, progress: bool = True) -> pd.DataFrame:
    """Stage 1 on ``n_reps`` cohorts of a design (``samples``: one tissue's sample sheet) drawn from the simulator
    with new patients (seed ``seed + 1 + r``; the tumour pseudobulk drawn directly,
    :func:`helpers.analysis.power.simulate_pseudobulks`), each scored and tested as in notebook 08 (BH over the
    expression mechanisms: the microenvironment and CNV mechanisms need cells). One :func:`mechanism_table` row per
    mechanism and cohort (column ``rep``), with ``planted`` (a gene of the mechanism carries a planted tumour effect
    in these settings)."""
    model = model if model is not None else cohort_model(sim, seed)
    expr_spec = {"mechanisms": spec["mechanisms"]}

    def one(r: int) -> pd.DataFrame:
        pb = simulate_pseudobulks(samples, sim, int(seed) + 1 + r, {TUMOUR: [TUMOUR]}, model=model,
                                  min_cells=min_cells)[TUMOUR]
        scores, info = mechanism_scores(log_cpm(pb), expr_spec)
        return mechanism_table(scores, info, pb.obs["response"], reference, test, alpha).assign(rep=r)

    reps = Parallel(n_jobs=n_jobs)(delayed(one)(r) for r in tqdm(range(n_reps), desc="atlas power cohorts",
                                                                    disable=not progress))
    raw = pd.concat(reps, ignore_index=True)
    tumour_planted = planted_genes_by_type(model_truth(model, sim)).get(TUMOUR, set())
    planted = {m: bool(set(mechanism_genes(spec["mechanisms"][m])) & tumour_planted) for m in raw["mechanism"].unique()}
    raw["planted"] = raw["mechanism"].map(planted)
    raw["found"] = raw["significant"] & raw["toward_resistance"]
    return raw


def summarise_mechanism_power(raw: pd.DataFrame) -> pd.DataFrame:
    """Per mechanism of :func:`mechanism_power_raw`: the share of cohorts in which it is significant toward
    resistance (``rate_found``, exact 95% CI) and significant at all (``rate_significant``); with every resistance
    strength at zero these are the mechanisms' false-positive rates."""
    rows = []
    for m, d in raw.groupby("mechanism", sort=False):
        found = int(d["found"].sum())
        lo, hi = clopper_pearson(found, len(d))
        rows.append({"mechanism": m, "planted": bool(d["planted"].iloc[0]), "n_cohorts": len(d),
                     "rate_found": found / len(d), "ci_low": lo, "ci_high": hi,
                     "rate_significant": float(d["significant"].mean()), "median_effect": float(d["effect"].median())})
    return pd.DataFrame(rows)


def mechanism_power(samples: pd.DataFrame, sim: dict[str, Any], seed: int, spec: dict[str, Any], n_reps: int,
                    reference: str = "CR", test: str = "NR", model=None, min_cells: int = 10, alpha: float = 0.05,
                    n_jobs: int = 1, progress: bool = True) -> pd.DataFrame:
    """Stage 1's power per mechanism at a design: :func:`summarise_mechanism_power` of
    :func:`mechanism_power_raw`."""
    return summarise_mechanism_power(mechanism_power_raw(samples, sim, seed, spec, n_reps, reference, test, model,
                                                         min_cells, alpha, n_jobs, progress))


def single_draw_odds(raw: pd.DataFrame) -> dict[str, Any]:
    """What one cohort of the design shows, over the cohorts of :func:`mechanism_power_raw`: the share in which at
    least one planted mechanism is found toward resistance (``p_any_planted_found``) and in which at least one
    unplanted mechanism is significant (``p_any_unplanted_significant``), each with its exact 95% CI, and the mean
    number of planted mechanisms found. This is the chance that a single draw (such as the default cohort) meets
    "a planted mechanism found, no unplanted one"."""
    per = raw.groupby("rep").apply(lambda d: pd.Series({
        "planted_found": int((d["found"] & d["planted"]).sum()),
        "unplanted_significant": int((d["significant"] & ~d["planted"]).sum())}), include_groups=False)
    n = len(per)
    out: dict[str, Any] = {"n_cohorts": int(n), "mean_planted_found": float(per["planted_found"].mean())}
    for key, hit in (("p_any_planted_found", per["planted_found"] > 0),
                     ("p_any_unplanted_significant", per["unplanted_significant"] > 0),
                     ("p_planted_found_and_no_unplanted", (per["planted_found"] > 0) & (per["unplanted_significant"] == 0))):
        k = int(hit.sum())
        lo, hi = clopper_pearson(k, n)
        out[key] = {"rate": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi}
    return out


def design_power(samples: pd.DataFrame, sim: dict[str, Any], seed: int, spec: dict[str, Any], n_reps: int,
                 reference: str = "CR", test: str = "NR", min_cells: int = 10, n_jobs: int = 1
                 ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Notebook 08's power of a simulated cohort's design: :func:`mechanism_power_raw` on ``n_reps`` cohorts with
    the cohort's settings (``planted``) and with every resistance strength at zero (``null``; the study's effects
    kept). Returns the per-mechanism table (:func:`summarise_mechanism_power`, column ``cohorts``) and the findings
    record: per mechanism the planted and null ``rate_found``, and per kind :func:`single_draw_odds`."""
    null_sim = {**sim, "resistance": {k: {**v, "strength": 0.0} for k, v in sim.get("resistance", {}).items()}}
    tables, odds = [], {}
    for kind, s in (("planted", sim), ("null", null_sim)):
        raw = mechanism_power_raw(samples, s, seed, spec, n_reps, reference, test, min_cells=min_cells, n_jobs=n_jobs)
        tables.append(summarise_mechanism_power(raw).assign(cohorts=kind))
        odds[kind] = single_draw_odds(raw)
    power = pd.concat(tables, ignore_index=True)
    n_design = samples["response"].value_counts()
    record = {"n_reps": int(n_reps), "design": {g: int(n_design.get(g, 0)) for g in (reference, test)},
              "method": "stage 1 on simulated tumour pseudobulks of this design; BH over the expression mechanisms",
              "per_mechanism": {m: {k: float(d.loc[d.cohorts == k, "rate_found"].iloc[0]) for k in ("planted", "null")}
                                for m, d in power.groupby("mechanism", sort=False)},
              "single_draw": odds}
    return power, record


def model_truth(model, sim: dict[str, Any]) -> dict[str, Any]:
    """The part of truth.json that :func:`planted_genes_by_type` reads, from a cohort model and its simulation
    config: every study effect and every resistance mechanism of non-zero strength (and prevalence) with its genes."""
    effects = {n: {"strength_log2": float(knob(sim, f"effects.{n}").get("strength", 0.0)),
                   "cell_types": e["cell_types"], "genes": list(model.weights[n])} for n, e in load_planted().items()}
    resistance = {}
    for n, m in load_resistance().items():
        k = knob(sim, f"resistance.{n}")
        resistance[n] = {"strength_log2": float(k["strength"]), "cell_types": m["cell_types"],
                         "genes": list(model.resistance_weights[n]), "carriers": [1] if float(k["prevalence"]) > 0 else []}
    return {"effects": effects, "resistance": resistance}


def mechanism_summary(table: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per mechanism: features tested, smallest q and how many reach q < ``alpha``."""
    return table.groupby("mechanism").agg(n_features=("feature", "size"), min_q=("q", "min"),
                                          n_q_below_005=("q", lambda q: int((q < alpha).sum())))
