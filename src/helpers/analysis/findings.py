"""Building blocks the finding notebooks share: per-patient set scores in chosen cell types, a cell type x
gene-set grid of NR-vs-CR shifts, the claim record written to findings JSON, and the record of a claim that
cannot be measured in a cohort.

The record of each study claim is built by one helper here (:func:`measure_claim` for the cell readouts,
:func:`measure_prognosis` for the bulk survival claim; the AUCs' in :func:`helpers.analysis.classifier.auc_record`)
in the form :mod:`helpers.claims` defines: a comparison (``effect``, ``ci_low``, ``ci_high``, ``p``,
``direction``, ``n_cr``, ``n_nr``, ``method``) or ``{"status": "not testable", "reason": ...}`` (plus
``n_cr``/``n_nr`` when known): :func:`attempt` turns :class:`helpers.claims.NotTestable` (a cell type, tissue,
side table or gene absent; fewer than two patients per group with enough cells) into the latter. Any other
exception is a bug and propagates. Controls and secondary measures use the same record form."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterator

import anndata as ad
import numpy as np
import pandas as pd

from helpers.analysis.pseudobulk import CELL_GROUPS, gene_per_patient, log_cpm, progeny_activity
from helpers.analysis.stats import bh_fdr, compare_two_groups, spearman_ci
from helpers.analysis.survival import survival_by_score
from helpers.claims import (  # noqa: F401  (NOT_TESTABLE, is_not_testable, not_testable: the record form, re-exported)
    CLAIMS,
    MIN_PATIENTS_PER_GROUP,
    NOT_TESTABLE,
    UNASSIGNED,
    NotTestable,
    claim_pseudobulk,
    claim_value_from_pseudobulk,
    is_not_testable,
    not_testable,
    record,
    testable_pseudobulk,
    testable_set_score,
)
from helpers.data.cohort import Cohort, load_cohort
from helpers.data.genesets import gene_set
from helpers.preprocessing import per_sample


def attempt(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, dict | None]:
    """``(fn(*args, **kwargs), None)``, or ``(None, not-testable record)`` when the quantity cannot be measured
    here (:class:`helpers.claims.NotTestable`). Other exceptions propagate: they are bugs."""
    try:
        return fn(*args, **kwargs), None
    except NotTestable as e:
        return None, not_testable(e.reason, e.n_cr, e.n_nr)


def describe(rec: dict | None, unit: str = "") -> str:
    """One line for a conclusion: the shift with its CI and p, or ``not testable: <reason>``."""
    if is_not_testable(rec):
        return f"{NOT_TESTABLE}: {rec['reason']}"
    if not rec or rec.get("effect") is None:
        return "not estimable"
    return (f"shift {rec['effect']:+.2f}{unit} (95% CI {rec['ci_low']:+.2f} to {rec['ci_high']:+.2f}), "
            f"p = {rec['p']:.2g}, {rec['n_nr']} NR vs {rec['n_cr']} CR")


def not_testable_records(findings: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every not-testable record in a findings JSON object, with its key path (e.g. ``claims/ifn_mono_nfkb``)."""
    if is_not_testable(findings):
        yield path, findings
    elif isinstance(findings, dict):
        for k, v in findings.items():
            yield from not_testable_records(v, f"{path}/{k}" if path else str(k))


def load_annotated(path: str | Path) -> ad.AnnData:
    """The annotated cells without the ``unassigned`` ones (not a cell type: left out of every analysis). A cohort
    annotated with the dask engine gives its cell groups instead (``cell_groups.h5ad`` next to ``path``: counts
    summed per sample and cell type, :func:`helpers.analysis.pseudobulk.group_pseudobulk`), from which every finding
    helper measures what it measures from cells; the cells themselves stay in their shards
    (:func:`helpers.preprocessing.per_sample.cells_by_sample`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: notebook 02 writes it; run `make all COHORT=<cohort>` (or "
                                "notebooks 00-02 in order) before the finding notebooks")
    if per_sample.is_sharded_file(path):
        groups_path = path.parent / "cell_groups.h5ad"
        if not groups_path.exists():
            raise FileNotFoundError(f"{groups_path} does not exist: notebook 02 (dask engine) writes it with {path}")
        adata = ad.read_h5ad(groups_path)
        adata.uns[CELL_GROUPS] = {**dict(adata.uns[CELL_GROUPS]), "annotated": str(path)}
    else:
        adata = ad.read_h5ad(path)
    keep = (adata.obs["cell_type"].astype(str) != UNASSIGNED).to_numpy()
    return adata if keep.all() else adata[keep].copy()


def load_discovery_cells(cohort: Cohort) -> ad.AnnData:
    """The cohort's annotated cells of its discovery tissue (the marrow), without ``unassigned`` ones: the cells
    the finding notebooks measure (a view; ``uns`` holds the annotation's records)."""
    adata = load_annotated(cohort.processed_dir / "annotated.h5ad")
    return adata[adata.obs["tissue"] == cohort.discovery_tissue]


def open_finding(cohort: str, root: str | Path | None = None, min_cells: int = 10) -> tuple[Cohort, ad.AnnData, int]:
    """What a finding notebook starts from: the cohort (:func:`helpers.data.cohort.load_cohort`), its
    discovery-tissue cells (:func:`load_discovery_cells`) and ``min_cells`` (the cohort's ``analysis.min_cells``
    when it sets one, else the notebook's)."""
    C = load_cohort(cohort, root=root)
    return C, load_discovery_cells(C), int(C.analysis("min_cells", min_cells))


def patient_responses(pb_or_obs) -> pd.Series:
    obs = pb_or_obs.obs if hasattr(pb_or_obs, "obs") else pb_or_obs
    return obs.drop_duplicates("patient_id").set_index("patient_id")["response"].astype(str)


def patient_scores(adata: ad.AnnData, cell_types: list[str], genes: list[str], cohort: Cohort, min_cells: int = 10,
                   tissue: str | None = None, name: str = "the set") -> tuple[pd.Series, pd.Series]:
    """Per-patient set score in the pooled ``cell_types`` (pseudobulk, z-scored log CPM) and the responses;
    :class:`helpers.claims.NotTestable` when too few patients have the cells or too few set genes are expressed."""
    pb = testable_pseudobulk(adata, cell_types, cohort.groups, min_cells=min_cells, tissue=tissue)
    return testable_set_score(log_cpm(pb), genes, name), patient_responses(pb)


def claim(values: pd.Series, groups: pd.Series, cohort: Cohort, method: str) -> dict:
    """The findings-JSON record of one comparison (test group minus reference group); not testable when fewer
    than two patients of a group have a value."""
    rec = compare_two_groups(values, groups, cohort.reference_group, cohort.test_group, method)
    if rec["effect"] is None:
        return not_testable(f"only {rec['n_cr']} {cohort.reference_group} and {rec['n_nr']} {cohort.test_group} "
                            f"patients have a value (need {MIN_PATIENTS_PER_GROUP} per group)", rec["n_cr"], rec["n_nr"])
    return rec


def measure_set_score(adata: ad.AnnData, cell_types: list[str], set_name: str, cohort: Cohort, method: str,
                      min_cells: int = 10, genes: list[str] | None = None) -> tuple[pd.Series | None, dict]:
    """Per-patient score of a gene set (``genes``, default the named set) in ``cell_types`` and its :func:`claim`
    record; ``(None, not-testable record)`` when it cannot be measured."""
    genes = gene_set(set_name) if genes is None else genes
    values, untestable = attempt(patient_scores, adata, cell_types, genes, cohort, min_cells, name=set_name)
    if untestable is not None:
        return None, untestable
    return values[0], claim(*values, cohort, method)


def measure_claim(adata: ad.AnnData, name: str, cohort: Cohort, min_cells: int = 10,
                  method: str | None = None) -> tuple[pd.Series | None, dict]:
    """The record of one of the study's cell claims (:data:`helpers.claims.CLAIMS`) in ``adata``: the per-patient
    values and the comparison record (``method`` defaults to the claim's own text) with ``measured_in`` (the cell
    types used) and a ``note`` when the claim's fallback cells were used; ``(None, not-testable record)`` when it
    cannot be measured."""
    def run():
        pb, types, note = claim_pseudobulk(adata, name, min_cells, groups=cohort.groups)
        values = claim_value_from_pseudobulk(pb, name)
        rec = claim(values, pb.obs["response"].astype(str), cohort, method or CLAIMS[name].method(types))
        return values, {**rec, "measured_in": types, **({"note": note} if note else {})}
    result, untestable = attempt(run)
    return (None, untestable) if untestable is not None else result


def with_enrichment(rec: dict, enrichment: pd.DataFrame, cell_type: str, set_name: str) -> dict:
    """``rec`` plus ``ulm_score`` and ``ulm_p``: the enrichment of ``set_name`` in ``cell_type`` (a table with
    columns cell_type, set, score, p, e.g. decoupler ULM on DE statistics), the gene-level view of the same
    contrast; unchanged when the record is not testable or the table has no such row."""
    sub = enrichment[(enrichment["cell_type"] == cell_type) & (enrichment["set"] == set_name)]
    if is_not_testable(rec) or not len(sub):
        return rec
    return {**rec, "ulm_score": float(sub["score"].iloc[0]), "ulm_p": float(sub["p"].iloc[0])}


def measure_prognosis(bulk: ad.AnnData | None, pathway: str = "NFkB") -> tuple[pd.Series | None, dict]:
    """The prognosis claim's record (``CLAIMS['prognosis']``) from a bulk tumour cohort (raw counts, ``obs``
    ``pfs_months`` and ``pfs_event``): per patient the PROGENy ``pathway`` activity of the log CPM, and the Cox
    hazard ratio per SD (``effect``, Wald ``ci_low``/``ci_high`` and ``p``, ``direction`` up when HR > 1) with
    the pre-declared median split's log-rank p beside it. Not testable without a bulk cohort or with fewer than
    5 events."""
    if bulk is None:
        return None, not_testable("no bulk cohort with survival (bulk.h5ad) for this cohort")
    for col in ("pfs_months", "pfs_event"):
        if col not in bulk.obs:
            return None, not_testable(f"the bulk cohort has no '{col}' column")
    score = progeny_activity(log_cpm(bulk), pathway)
    try:
        s = survival_by_score(score, bulk.obs["pfs_months"], bulk.obs["pfs_event"])
    except ValueError as e:  # too few events
        return score, not_testable(str(e))
    method = (CLAIMS["prognosis"].method() if pathway == "NFkB" else
              f"PROGENy {pathway} activity of bulk tumour expression, Cox hazard ratio per SD; p: Cox (Wald)")
    return score, record(s["hazard_ratio_per_sd"], s["hr_ci_low"], s["hr_ci_high"], s["cox_p"], None, None,
                         method, null=1.0, p_method="Cox Wald", n=s["n"],
                         n_events=s["n_events"], n_high=s["n_high"], logrank_p=s["logrank_p"], split=s["split"])


def measure_scores(adata: ad.AnnData, cell_types: list[str], cohort: Cohort,
                   scores: dict[str, tuple[str, Callable[[ad.AnnData], pd.Series]]],
                   min_cells: int = 10) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Several per-patient scores of one pseudobulk (``cell_types``): ``scores`` maps a record name to (method
    text, function of the pseudobulk). Returns the patients x scores table and one :func:`claim` record per score
    (with ``measured_in``); a score, or all when the pseudobulk is not testable, gets the not-testable record."""
    pb, untestable = attempt(testable_pseudobulk, adata, cell_types, cohort.groups, min_cells=min_cells)
    if untestable is not None:
        return pd.DataFrame(), {name: untestable for name in scores}
    responses = patient_responses(pb)
    values, records = {}, {}
    for name, (method, fn) in scores.items():
        v, records[name] = attempt(fn, pb)
        if v is not None:
            values[name] = v
            records[name] = {**claim(v, responses, cohort, method), "measured_in": cell_types}
    return pd.DataFrame(values).assign(response=responses), records


def measure_gene(adata: ad.AnnData, cell_types: list[str], gene: str, cohort: Cohort, method: str,
                 min_cells: int = 10) -> tuple[pd.DataFrame | None, dict[str, dict]]:
    """One gene per patient in ``cell_types`` (:func:`helpers.analysis.pseudobulk.gene_per_patient`: pseudobulk log2 CPM,
    fraction of positive cells) and one record per measure (``log2cpm``, ``fraction_positive``) with
    ``measured_in``; ``(None, not-testable records)`` when the gene or the patients are missing."""
    def run():
        if gene not in adata.var_names:
            raise NotTestable(f"gene {gene} is not in the data")
        testable_pseudobulk(adata, cell_types, cohort.groups, min_cells=min_cells)
        return gene_per_patient(adata, cell_types, gene, min_cells=min_cells)
    table, untestable = attempt(run)
    if untestable is not None:
        return None, {"log2cpm": untestable, "fraction_positive": untestable}
    t = table.set_index("patient_id")
    return table, {m: {**claim(t[col], t["response"].astype(str), cohort, f"{gene} {m} {method}"), "measured_in": cell_types}
                   for m, col in (("log2cpm", "log2_cpm"), ("fraction_positive", "fraction_positive"))}


def measure_gene_by_subset(adata: ad.AnnData, subsets: dict[str, tuple[str, list[str]]], gene: str, cohort: Cohort,
                           min_cells: int = 10, absent: dict[str, str] | None = None
                           ) -> tuple[pd.DataFrame, dict[str, dict], dict[str, dict], dict[str, tuple]]:
    """:func:`measure_gene` in each subset (``name -> ('claim' | 'control', cell types)``, e.g. the NK subsets of
    notebook 05). Returns the per-patient table of all subsets (``cell_type``, ``measured_in``, log2 CPM, fraction
    positive), the claim subsets' records and the control subsets' records, keyed ``<subset>_<gene>_<measure>``
    (a claim subset's log2 CPM is left out: the claim registry defines it), and the figure panels (per-patient log2
    CPM). A subset named in ``absent`` gets not-testable records with that reason (e.g. a split the annotation did
    not make)."""
    tables, claims, controls, panels = [], {}, {}, {}
    for name, (kind, types) in subsets.items():
        t, recs = measure_gene(adata, types, gene, cohort, f"per patient in {'+'.join(types)} (pseudobulk), "
                               "Hodges-Lehmann, Mann-Whitney", min_cells)
        if absent and name in absent:
            recs = {m: not_testable(absent[name]) for m in recs}
        if t is not None:
            t.insert(0, "cell_type", name)
            t.insert(1, "measured_in", "+".join(types))
            tables.append(t)
            panels[f"{name}_{gene}_log2cpm"] = (t.set_index("patient_id")["log2_cpm"], f"{gene} log2 CPM")
        for measure, rec in recs.items():
            if not (kind == "claim" and measure == "log2cpm"):
                (claims if kind == "claim" else controls)[f"{name}_{gene}_{measure}"] = rec
    per_patient = (pd.concat(tables, ignore_index=True) if tables
                   else pd.DataFrame(columns=["cell_type", "measured_in", "patient_id", "log2_cpm"]))
    return per_patient, claims, controls, panels


def correlation(x: pd.Series, y: pd.Series, what: str, min_n: int = 2 * MIN_PATIENTS_PER_GROUP) -> dict:
    """Spearman rho with its 95% CI (:func:`helpers.analysis.stats.spearman_ci`) over the patients that have both values,
    or the not-testable record when fewer than ``min_n`` have."""
    both = pd.concat([x.rename("x"), y.rename("y")], axis=1, join="inner").dropna()
    if len(both) < min_n:
        return not_testable(f"only {len(both)} patients have both {what} (need {min_n})")
    return spearman_ci(both["x"].to_numpy(), both["y"].to_numpy())



def protein_column(adata: ad.AnnData, marker: str) -> str | None:
    """The antibody-capture column of ``marker`` in ``obsm['protein_counts']`` (a cells x antibodies table added at
    ingest for CITE-seq data): the first column whose name contains the marker not followed by a digit (CD16,
    not CD160), or None when the cohort has no such counts."""
    P = adata.obsm.get("protein_counts") if "protein_counts" in adata.obsm else None
    if not isinstance(P, pd.DataFrame):
        return None
    pattern = re.compile(re.escape(marker) + r"(?![0-9])", re.IGNORECASE)
    return next((str(c) for c in P.columns if pattern.search(str(c))), None)


def protein_per_patient(adata: ad.AnnData, column: str, cell_types: list[str], min_cells: int = 10) -> pd.Series:
    """Per-patient mean CLR-normalised antibody counts of one antibody in ``cell_types``: CLR as Seurat's
    ``NormalizeData(method='CLR', margin=1)`` over all cells of ``adata`` (log1p of the count over the geometric
    mean-like scale exp(sum log1p(x > 0) / n)). Cells without antibody counts (NaN: samples sequenced without
    antibodies) are left out, and so are patients with fewer than ``min_cells`` such cells with counts."""
    x = adata.obsm["protein_counts"][column].astype(float).to_numpy()
    has = ~np.isnan(x)
    clr = np.log1p(x / np.exp(np.log1p(x[has & (x > 0)]).sum() / max(int(has.sum()), 1)))
    m = adata.obs["cell_type"].astype(str).isin(cell_types).to_numpy() & has
    per = pd.DataFrame({"clr": clr[m], "patient": adata.obs["patient_id"].astype(str).to_numpy()[m]})
    agg = per.groupby("patient")["clr"].agg(["mean", "size"])
    return agg.loc[agg["size"] >= min_cells, "mean"].rename(column)


def score_grid(adata: ad.AnnData, cell_types: list[str], sets: dict[str, list[str]], cohort: Cohort,
               min_cells: int = 10) -> pd.DataFrame:
    """NR-vs-CR shift of each gene-set score in each cell type (patient-level), with BH q over the grid; cell
    types or sets that cannot be measured are left out of the grid."""
    rows = []
    for ct in cell_types:
        try:
            pb = testable_pseudobulk(adata, [ct], cohort.groups, min_cells=min_cells)
        except NotTestable:
            continue
        g = patient_responses(pb)
        L = log_cpm(pb)
        for name, genes in sets.items():
            try:
                s = testable_set_score(L, genes, name)
            except NotTestable:
                continue
            rows.append({"cell_type": ct, "gene_set": name,
                         **compare_two_groups(s, g, cohort.reference_group, cohort.test_group, "set score per patient")})
    df = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["cell_type", "gene_set", "effect", "ci_low", "ci_high",
                                                                "p", "n_cr", "n_nr"])
    df["q"] = bh_fdr(pd.to_numeric(df["p"], errors="coerce").to_numpy()) if len(df) else []
    return df

