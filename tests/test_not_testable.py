"""Claims that a cohort cannot measure are recorded as not testable, with the reason, and never crash; claims it
can measure keep their values: a planted shift is found in the right direction and significant, a null one is not.

Fixtures are small hand-made AnnData cohorts (Poisson counts per cell, a per-patient log-normal spread), so the
expected values are known without the simulator."""
from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml
from conftest import linked_project

from helpers.analysis.findings import (
    attempt,
    claim,
    correlation,
    describe,
    is_not_testable,
    load_annotated,
    measure_claim,
    measure_gene,
    measure_scores,
    not_testable,
    not_testable_records,
    protein_column,
    protein_per_patient,
)
from helpers.claims import CLAIMS, NotTestable, resolve_claim_cells
from helpers.data.cohort import load_cohort

ROOT = Path(__file__).resolve().parents[1]
GENES = ["FCGR3A", "ICAM1", "NKG7", "CD14", "LYZ"] + [f"G{i}" for i in range(195)]


def _cohort(n_per_group=6, cells=30, effect_log2=0.0, types=("NK_CD56dim_CD54dim", "mono_classical"), seed=0,
            few_nr_cells: int | None = None, protein: bool = False) -> ad.AnnData:
    """``n_per_group`` CR and NR patients (marrow), ``cells`` cells per patient and type; FCGR3A in NK cells of NR
    patients shifted by ``effect_log2`` (and the CD16 antibody counts with it when ``protein``)."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 2.0, len(GENES))
    base[0] = 20.0  # FCGR3A well expressed
    rows, X, adt = [], [], []
    for i, resp in enumerate(["CR"] * n_per_group + ["NR"] * n_per_group):
        pid = f"P{i:02d}"
        patient = np.exp(rng.normal(0, 0.15, len(GENES)))
        for t in types:
            n = cells if not (few_nr_cells is not None and resp == "NR" and i > n_per_group) else few_nr_cells
            mu = base * patient
            shift = 2.0 ** effect_log2 if (resp == "NR" and t.startswith("NK")) else 1.0
            if t.startswith("NK"):
                mu = mu.copy()
                mu[0] *= shift
            X.append(rng.poisson(mu, size=(n, len(GENES))))
            adt.append(rng.poisson([50.0 * shift if t.startswith("NK") else 2.0, 30.0], size=(n, 2)))
            rows += [{"patient_id": pid, "sample_id": f"{pid}_BM", "tissue": "BM", "response": resp, "batch": "b1",
                      "age": 60, "cell_type": t, "compartment": "NK" if t.startswith("NK") else "myeloid"}] * n
    obs = pd.DataFrame(rows, index=[f"c{i}" for i in range(len(rows))])
    a = ad.AnnData(X=sp.csr_matrix(np.vstack(X).astype(np.float32)), obs=obs, var=pd.DataFrame(index=GENES))
    a.layers["counts"] = a.X.copy()
    if protein:
        a.obsm["protein_counts"] = pd.DataFrame(np.vstack(adt), index=a.obs_names, columns=["CD16_TotalSeqB", "CD160"])
    return a


def _measure(a, cohort, name="nk_cd54dim_cd16"):
    return measure_claim(a, name, cohort, min_cells=10)


def test_planted_shift_found_right_direction_and_significant(tiny_cohort):
    values, rec = _measure(_cohort(effect_log2=-1.5), tiny_cohort)
    assert rec["direction"] == "down" and rec["effect"] < -1.0 and rec["p"] < 0.01
    assert rec["n_cr"] == rec["n_nr"] == 6 and rec["measured_in"] == ["NK_CD56dim_CD54dim"] and "note" not in rec
    assert len(values) == 12


def test_null_shift_not_significant(tiny_cohort):
    _, rec = _measure(_cohort(effect_log2=0.0, seed=3), tiny_cohort)
    assert rec["p"] > 0.05 and abs(rec["effect"]) < 0.3
    assert not is_not_testable(rec)


def test_missing_cell_type_is_not_testable_and_named(tiny_cohort):
    a = _cohort(types=("mono_classical",))
    values, rec = _measure(a, tiny_cohort)
    assert values is None and is_not_testable(rec)
    assert rec == {"status": "not testable", "reason": "no NK_CD56dim_CD54dim cells in this cohort"}
    _, rec = _measure(a, tiny_cohort, "nonclassical_mono_phagocytosis")
    assert is_not_testable(rec) and "mono_nonclassical" in rec["reason"]
    assert describe(rec) == "not testable: no mono_nonclassical cells in this cohort"


def test_too_few_patients_with_enough_cells(tiny_cohort):
    """Only one NR patient keeps >= 10 NK cells: fewer than two per group, not testable with the counts."""
    _, rec = _measure(_cohort(effect_log2=-1.5, few_nr_cells=5), tiny_cohort)
    assert is_not_testable(rec) and (rec["n_cr"], rec["n_nr"]) == (6, 1)
    assert rec["reason"] == ("only 6 CR and 1 NR patients have >= 10 NK_CD56dim_CD54dim cells (need 2 per group)")


def test_cd54_split_not_separable_falls_back_to_all_cd56dim(tiny_cohort):
    a = _cohort(effect_log2=-1.5, types=("NK_CD56dim", "mono_classical"))
    _, rec = _measure(a, tiny_cohort)
    assert rec["measured_in"] == ["NK_CD56dim"] and "not separable" in rec["note"]
    assert rec["direction"] == "down" and rec["p"] < 0.01
    # the CD54bright control is absent: not testable, never a crash
    t, recs = measure_gene(a, ["NK_CD56dim_CD54bright"], "FCGR3A", tiny_cohort, "m", min_cells=10)
    assert t is None and all(is_not_testable(r) and "NK_CD56dim_CD54bright" in r["reason"] for r in recs.values())


def test_gene_absent_is_not_testable(tiny_cohort):
    a = _cohort()
    a = a[:, [g for g in GENES if g != "FCGR3A"]].copy()
    _, rec = _measure(a, tiny_cohort)
    assert rec["reason"] == "gene FCGR3A is not in the data"
    t, recs = measure_gene(a, ["NK_CD56dim_CD54dim"], "FCGR3A", tiny_cohort, "m")
    assert t is None and recs["log2cpm"]["reason"] == "gene FCGR3A is not in the data"


def test_set_and_progeny_scores_without_their_genes_are_not_testable(tiny_cohort):
    """The fixture has one PROGENy NFkB target (ICAM1) and almost none of a phagocytosis set's genes."""
    a = _cohort(types=("mono_IFN", "mono_classical"))
    _, rec = _measure(a, tiny_cohort, "ifn_mono_nfkb")
    assert is_not_testable(rec) and rec["reason"] == "PROGENy NFkB: only 1 of its target genes are expressed (need 5)"
    _, rec = _measure(a, tiny_cohort, "classical_mono_phagocytosis")
    assert is_not_testable(rec) and "genes of the set are expressed" in rec["reason"]
    scores, recs = measure_scores(a, ["malignant_PC"], tiny_cohort, {"x": ("m", lambda pb: pb.X.sum(1))})
    assert scores.empty and recs["x"]["reason"] == "no malignant_PC cells in this cohort"


def test_a_real_bug_still_raises():
    with pytest.raises(ZeroDivisionError):
        attempt(lambda: 1 / 0)
    with pytest.raises(KeyError):
        attempt(lambda: {}["missing"])
    assert attempt(lambda: (_ for _ in ()).throw(NotTestable("why", 1, 2))) == (None, not_testable("why", 1, 2))


def test_unassigned_cells_are_left_out(tmp_path, tiny_cohort):
    a = _cohort(effect_log2=-1.5)
    a.obs["cell_type"] = a.obs["cell_type"].astype(str)
    a.obs.iloc[:5, a.obs.columns.get_loc("cell_type")] = "unassigned"
    a.write_h5ad(tmp_path / "annotated.h5ad")
    b = load_annotated(tmp_path / "annotated.h5ad")
    assert b.n_obs == a.n_obs - 5 and "unassigned" not in set(b.obs["cell_type"])
    types, _ = resolve_claim_cells(a, CLAIMS["inflammatory_bme"])
    assert "unassigned" not in types and set(types) == {"NK_CD56dim_CD54dim", "mono_classical"}


def test_discovery_cells_are_the_cohorts_marrow_without_unassigned(scratch_root):
    from helpers.analysis.findings import load_discovery_cells

    a = _cohort(effect_log2=-1.5)
    a.obs["cell_type"] = a.obs["cell_type"].astype(str)
    a.obs.iloc[:5, a.obs.columns.get_loc("cell_type")] = "unassigned"
    a.obs["tissue"] = np.where(np.arange(a.n_obs) % 3 == 0, "PB", "BM")
    a.uns["nk_cd54_split"] = {"separable": True}
    C = load_cohort("tiny", root=scratch_root)
    C.processed_dir.mkdir(parents=True)
    a.write_h5ad(C.processed_dir / "annotated.h5ad")
    bm = load_discovery_cells(C)
    expected = (a.obs["tissue"] == "BM") & (a.obs["cell_type"] != "unassigned")
    assert list(bm.obs_names) == list(a.obs_names[expected.to_numpy()])
    assert bm.uns["nk_cd54_split"] == {"separable": True}


def test_protein_readout(tiny_cohort):
    a = _cohort(effect_log2=-1.0, protein=True)
    col = protein_column(a, "CD16")
    assert col == "CD16_TotalSeqB"  # not CD160
    v = protein_per_patient(a, col, ["NK_CD56dim_CD54dim"], min_cells=10)
    rec = claim(v, a.obs.drop_duplicates("patient_id").set_index("patient_id")["response"], tiny_cohort, "m")
    assert len(v) == 12 and rec["direction"] == "down" and rec["p"] < 0.01
    assert protein_column(_cohort(), "CD16") is None
    # samples sequenced without antibodies have NaN counts: their patients have no protein value
    pids = a.obs["patient_id"].isin(["P00", "P01", "P02", "P06"]).to_numpy()
    a.obsm["protein_counts"].loc[pids, col] = np.nan
    v = protein_per_patient(a, col, ["NK_CD56dim_CD54dim"], min_cells=10)
    assert len(v) == 8 and v.notna().all()


def test_correlation_needs_enough_patients():
    x = pd.Series([1.0, 2, 3], index=list("abc"))
    r = correlation(x, x, "x and y")
    assert r == not_testable("only 3 patients have both x and y (need 4)")
    r = correlation(pd.Series([1.0, 2, 3, 4, 5], index=list("abcde")), pd.Series([2.0, 1, 4, 3, 5], index=list("abcde")), "x")
    assert r["n"] == 5 and r["rho"] == pytest.approx(0.8)


def test_not_testable_records_walks_findings():
    nt = not_testable("no bulk")
    f = {"claims": {"a": {"effect": 1.0}, "b": nt}, "prognosis": nt, "n": 3}
    assert list(not_testable_records(f)) == [("claims/b", nt), ("prognosis", nt)]


FINDING_NOTEBOOKS = ["03_inflammation", "04_monocytes", "05_nk_cd16", "06_tumour_nfkb", "07_classifier",
                     "08_resistance_atlas", "10_scorecard"]


def _degraded_annotation(tiny_sim, dropped_genes: list[str]) -> ad.AnnData:
    """The tiny cohort's good marrow cells labelled by their truth, without tumour/plasma cells, nonclassical and
    IFN monocytes, with the CD54 split not separable (all CD56dim NK cells 'NK_CD56dim'), some cells
    'unassigned', ``dropped_genes`` removed, no truth columns, and CITE-seq CD16 counts lower on NR NK cells."""
    a, _ = tiny_sim
    obs = a.obs
    keep = ((obs["truth_quality"] == "good") & (obs["tissue"] == "BM") & (obs["truth_compartment"] != "plasma")
            & ~obs["truth_cell_type"].isin(["mono_nonclassical", "mono_IFN"])).to_numpy()
    b = a[keep][:, [g for g in a.var_names if g not in set(dropped_genes)]].copy()
    b.obs["cell_type"] = b.obs["truth_cell_type"].astype(str).replace(
        {"NK_CD56dim_CD54dim": "NK_CD56dim", "NK_CD56dim_CD54bright": "NK_CD56dim"})
    b.obs["compartment"] = b.obs["truth_compartment"].astype(str)
    b.obs.iloc[::40, b.obs.columns.get_loc("cell_type")] = "unassigned"
    b.obs = b.obs[[c for c in b.obs.columns if not c.startswith("truth_")]]
    b.uns["nk_cd54_split"] = {"separable": False, "reason": "one ICAM1 state fits"}
    nk = (b.obs["cell_type"] == "NK_CD56dim").to_numpy()
    nr = (b.obs["response"] == "NR").to_numpy()
    rng = np.random.default_rng(0)
    b.obsm["protein_counts"] = pd.DataFrame({"CD16": rng.poisson(np.where(nk, np.where(nr, 60, 150), 8)),
                                             "CD160": rng.poisson(20, b.n_obs)}, index=b.obs_names).astype(float)
    return b


@pytest.mark.slow
def test_degraded_cohort_notebooks_complete(tiny_sim, tmp_path, monkeypatch, capsys):
    """Notebooks 03-08 and 10 complete on a marrow-only cohort without tumour cells, nonclassical and IFN monocytes,
    CD54 split, blood samples, flow or bulk tables and 12 of the 34 classifier genes; what cannot be measured is
    recorded as not testable (findings, scorecard, not_testable.txt), the rest is measured."""
    from helpers.analysis.classifier import load_panel
    from helpers.report.scorecard import NOT_TESTABLE_FILE
    from helpers.runner import main as runner_main

    root = linked_project(tmp_path / "project", committed_cohorts=False)
    cdir = root / "data" / "cohorts" / "zz_degraded"
    cdir.mkdir(parents=True)
    cfg = dict(load_cohort("tiny", root=ROOT).config, name="zz_degraded")  # simulation knobs resolved (base merged)
    (cdir / "cohort.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))  # declares PB; the sheet has no PB sample
    s = pd.read_csv(ROOT / "data" / "cohorts" / "tiny" / "samples.csv")
    s[s["tissue"] == "BM"].to_csv(cdir / "samples.csv", index=False)
    dropped = load_panel()["gene"].tolist()[::3][:12]
    processed = root / "data" / "processed" / "zz_degraded"
    processed.mkdir(parents=True)
    _degraded_annotation(tiny_sim, dropped).write_h5ad(processed / "annotated.h5ad")
    monkeypatch.setenv("DR_ROOT", str(root))
    for nb in FINDING_NOTEBOOKS:
        assert runner_main(["run", "--cohort", "zz_degraded", "--notebook", str(ROOT / "notebooks" / f"{nb}.ipynb")]) == 0, nb
    out = capsys.readouterr().out
    res = root / "results" / "zz_degraded"
    f = {n: json.loads((res / "findings" / f"{n}.json").read_text()) for n in ("04", "05", "06", "07", "08")}
    assert f["04"]["claims"]["nonclassical_mono_phagocytosis"]["reason"] == "no mono_nonclassical cells in this cohort"
    assert f["04"]["claims"]["classical_mono_phagocytosis"]["p"] is not None
    nk = f["05"]["claims"]["nk_cd54dim_cd16"]
    assert nk["measured_in"] == ["NK_CD56dim"] and "not separable" in nk["note"] and nk["direction"] == "down"
    assert f["05"]["claims"]["nk_cd16_protein"]["direction"] == "down"
    assert f["05"]["flow_vs_rna"]["status"] == "not testable"
    assert f["06"]["claims"]["tumour_nfkb_progeny"] == {"status": "not testable",
                                                        "reason": "no malignant_PC cells in this cohort"}
    assert "bulk" in f["06"]["claims"]["prognosis"]["reason"]
    assert f["07"]["n_panel_genes_used"] == 22 and f["07"]["panel_missing_genes"] == dropped
    assert f["07"]["claims"]["auc_pb_top8"]["reason"] == "no PB samples in this cohort"
    assert 0 <= f["07"]["claims"]["auc_bm_34"]["effect"] <= 1
    assert f["08"]["atlas"]["status"] == "not testable"
    card = pd.read_csv(res / "scorecard.csv").set_index("claim")
    assert card.loc["tumour NF-kB (up in NR)", "verdict"] == "not testable: no malignant_PC cells in this cohort"
    assert card.loc["AUC 34 NF-kB genes, marrow", "note"] == "reduced panel (22 of 34 genes)"
    summary = (res / NOT_TESTABLE_FILE).read_text()
    assert summary.startswith("Not testable on cohort 'zz_degraded': 5 of 10 scorecard claims") and summary in out


def test_finding_notebooks_say_what_to_run_first(tmp_path):
    from helpers.analysis.findings import load_annotated

    with pytest.raises(FileNotFoundError, match="annotated.h5ad does not exist: notebook 02 writes it"):
        load_annotated(tmp_path / "annotated.h5ad")
