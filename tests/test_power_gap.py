"""helpers.validation.power_gap: the pure pieces on tiny inputs (the chain part is exercised by its CLI run)."""
from __future__ import annotations

from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from helpers.claims import CLAIMS, claim_genes
from helpers.validation import power_gap as pg

SET = claim_genes(CLAIMS[pg.CLAIM])
GROUPS = SimpleNamespace(groups=["CR", "NR"], reference_group="CR", test_group="NR")


def toy_cells(shift: float = -1.0, n_per: int = 12, seed: int = 0) -> ad.AnnData:
    """6 CR + 6 NR patients, ``n_per`` truly classical monocytes each (plus a few others and junk); the first 20
    genes of the phagocytosis set are planted (log2 ``shift`` in NR) in classical monocytes."""
    rng = np.random.default_rng(seed)
    genes = SET[:40] + [f"G{i}" for i in range(60)]
    rows, X = [], []
    for k in range(12):
        resp = "CR" if k < 6 else "NR"
        for j in range(n_per + 4):
            ct = "mono_classical" if j < n_per else "cDC"
            quality = "doublet" if j == n_per + 3 else "good"
            mu = np.full(len(genes), 5.0) * np.exp(rng.normal(0, 0.1))
            if ct == "mono_classical" and resp == "NR":
                mu[:20] *= 2.0 ** shift
            X.append(rng.poisson(mu))
            rows.append({"patient_id": f"P{k:02d}", "sample_id": f"P{k:02d}_BM", "response": resp, "tissue": "BM",
                         "truth_cell_type": ct, "truth_compartment": "myeloid", "truth_quality": quality})
    obs = pd.DataFrame(rows, index=[f"c{i}" for i in range(len(rows))])
    a = ad.AnnData(X=sp.csr_matrix(np.array(X, dtype=np.float32)), obs=obs, var=pd.DataFrame(index=genes))
    a.layers["counts"] = a.X.copy()
    return a


def test_truth_labelled_uses_truth_and_drops_junk():
    a = toy_cells()
    t = pg.truth_labelled(a, good_only=True)
    assert (t.obs["truth_quality"] == "good").all()
    assert (t.obs["cell_type"] == t.obs["truth_cell_type"].astype(str)).all()
    assert t.n_obs == a.n_obs - 12  # one doublet per patient
    assert pg.truth_labelled(a, good_only=False).n_obs == a.n_obs


def test_without_contamination_drops_only_false_target_calls():
    a = toy_cells()
    a.obs["cell_type"] = a.obs["truth_cell_type"].astype(str)
    a.obs.iloc[-1, a.obs.columns.get_loc("cell_type")] = "mono_classical"  # a doublet called classical
    a.obs.iloc[0, a.obs.columns.get_loc("cell_type")] = "cDC"  # a true classical called cDC: stays
    out = pg.without_contamination(a)
    assert out.n_obs == a.n_obs - 1
    assert a.obs_names[-1] not in out.obs_names and a.obs_names[0] in out.obs_names


def test_annotation_purity_counts():
    mc, mi = "mono_classical", "mono_IFN"
    obs = pd.DataFrame({"cell_type": [mc, mc, mc, "cDC", mi], "truth_cell_type": [mc, mi, mc, mc, mi],
                        "truth_quality": ["good", "good", "doublet", "good", "good"]})
    r = pg.annotation_purity(obs)
    assert (r["n_truth"], r["n_called"], r["n_called_and_true"]) == (2, 3, 1)
    assert r["recall"] == pytest.approx(0.5) and r["purity"] == pytest.approx(1 / 3)
    assert r["called_cells_truly"] == {"mono_classical": 1, "mono_IFN": 1, "junk:doublet": 1}
    assert r["truth_cells_called"] == {"mono_classical": 1, "cDC": 1}


def test_cells_per_patient_includes_zeros_and_below():
    obs = pd.DataFrame({"cell_type": ["mono_classical"] * 3 + ["cDC"], "patient_id": ["A", "A", "B", "C"]})
    counts = pg.cells_per_patient(obs, pd.Series(["CR", "NR", "NR"], index=["A", "B", "C"]))
    assert counts == {"A": 2, "B": 1, "C": 0}
    assert pg.patients_below(counts, 2) == ["B", "C"]


def test_planted_set_shift_separates_planted_from_unplanted():
    rng = np.random.default_rng(1)
    genes = SET[:30] + [f"G{i}" for i in range(300)]  # genes outside the set keep the library nearly constant
    resp = np.array(["CR"] * 6 + ["NR"] * 6)
    mu = np.full((12, 330), 2000.0)
    mu[resp == "NR", :10] *= 0.5  # planted: log2 -1
    pb = ad.AnnData(X=rng.poisson(mu).astype(float), obs=pd.DataFrame({"response": resp},
                                                                        index=[f"P{i}" for i in range(12)]),
                    var=pd.DataFrame(index=genes))
    r = pg.planted_set_shift(pb, SET, genes[:10])
    assert r["planted_lfc"] == pytest.approx(-1.0 + np.log2(330 / 325), abs=0.05)  # minus the CPM rescaling
    assert r["unplanted_lfc"] == pytest.approx(np.log2(330 / 325), abs=0.05)
    assert (r["n_planted_genes_scored"], r["n_set_genes_scored"]) == (10, 30)


def test_measure_cells_finds_a_planted_shift_and_reports_min_cells():
    a = pg.truth_labelled(toy_cells(shift=-1.5))
    r = pg.measure_cells(a, GROUPS, min_cells=10, planted=SET[:20])
    assert r["reproduced"] and r["effect"] < 0 and r["p"] < 0.05
    assert r["planted_lfc"] < -1.0
    assert set(r["cells_per_patient"].values()) == {12} and r["patients_below_min_cells"] == []
    few = pg.measure_cells(a, GROUPS, min_cells=13, planted=SET[:20])
    assert few["status"] == "not testable" and not few["reproduced"] and len(few["patients_below_min_cells"]) == 12


def test_measure_pseudobulk_matches_comparison_rule():
    rng = np.random.default_rng(2)
    genes = SET[:40]
    resp = np.array(["CR"] * 6 + ["NR"] * 6)
    mu = np.full((12, 40), 500.0) * np.exp(rng.normal(0, 0.1, (12, 40)))
    mu[resp == "NR", :20] *= 0.4
    obs = pd.DataFrame({"patient_id": [f"P{i}" for i in range(12)], "response": resp, "n_cells": 50},
                       index=[f"P{i}" for i in range(12)])
    pb = ad.AnnData(X=rng.poisson(mu).astype(float), obs=obs, var=pd.DataFrame(index=genes))
    r = pg.measure_pseudobulk(pb, genes[:20])
    assert r["reproduced"] and r["p"] == pytest.approx(2 / 924) and r["effect"] < 0
    assert r["cells_per_patient"]["P0"] == 50
    r1 = pg.measure_pseudobulk(pb[:7].copy(), genes[:20])  # one NR patient only
    assert r1["status"] == "not testable"


def test_stage_table_and_rates():
    res = {"cal_planted_000": {"stages": {
        "a_power_model": {"effect": -0.5, "ci_low": -0.8, "ci_high": -0.2, "p": 0.01, "n_cr": 6, "n_nr": 6,
                          "reproduced": True, "planted_lfc": -0.4, "cells_per_patient": {"A": 50, "B": 8}},
        "d_chain": {"status": "not testable", "reason": "x", "reproduced": False, "cells_per_patient": {"A": 3},
                    "patients_below_min_cells": ["A"]}}},
        "cal_planted_001": {"stages": {"a_power_model": {"effect": -0.1, "p": 0.4, "reproduced": False}}}}
    t = pg.stage_table(res)
    assert list(t["stage"]) == ["a_power_model", "d_chain", "a_power_model"]
    assert t.loc[0, "cells_median"] == 29 and t.loc[0, "cells_min"] == 8 and t.loc[1, "n_below_min"] == 1
    rates = pg.stage_rates(t).set_index("stage")
    assert rates.loc["a_power_model", "n_reproduced"] == 1 and rates.loc["a_power_model", "rate"] == 0.5
    assert rates.loc["d_chain", "n_cohorts"] == 1
    md = pg.markdown_report({"cohorts": res}, {"command": "x", "date": "d", "git_head": "h", "scratch": "s",
                                               "threads": 1}, keep="## Interpretation\n\ntext")
    assert "| 000 | NA | " in md and md.rstrip().endswith("text")
    res["cal_planted_000"].update(annotation=pg.annotation_purity(pd.DataFrame(
        {"cell_type": ["mono_classical"], "truth_cell_type": ["mono_IFN"], "truth_quality": ["good"]})),
        qc={"n_truth_classical_in": 2, "n_truth_classical_kept": 1, "classical_kept_fraction": 0.5})
    md = pg.markdown_report({"cohorts": res}, {"command": "x", "date": "d", "git_head": "h", "scratch": "s",
                                               "threads": 1})
    assert "| 000 | d_chain | not testable |" in md and "| 000 | 2 | 1 (50%) | 1 | 0 |" in md


def test_parse_indices_and_kept_section(tmp_path):
    assert pg.parse_indices(["0-3", "7", "2,9"]) == [0, 1, 2, 3, 7, 9]
    p = tmp_path / "x.md"
    assert pg.kept_section(p) == ""
    p.write_text("# t\n\n## Table\n\n## Interpretation\n\nwhy\n")
    assert pg.kept_section(p) == "## Interpretation\n\nwhy\n"


def test_to_jsonable():
    assert pg.to_jsonable({"a": np.int64(1), "b": [np.float64(np.nan), np.bool_(True)], 3: (1.5,)}) == \
        {"a": 1, "b": [None, True], "3": [1.5]}


def test_technical_noise_ignores_a_common_offset():
    expected = {"A": 0.0, "B": 1.0, "C": 2.0, "D": 3.0}
    assert pg.technical_noise({p: v + 5.0 for p, v in expected.items()}, expected) == pytest.approx(0.0)
    noisy = {"A": 0.1, "B": 0.9, "C": 2.1, "D": 2.9}
    assert pg.technical_noise(noisy, expected) == pytest.approx(np.std([0.1, -0.1, 0.1, -0.1], ddof=1))
    assert pg.technical_noise({"A": 1.0, "B": 2.0}, expected) is None
