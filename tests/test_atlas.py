"""Resistance-mechanism atlas (helpers.analysis.atlas): units on small inputs, then truth and calibration on simulated
cohorts with true cell labels: unplanted mechanisms stay non-significant (one FDR over the atlas), a planted
positive control is found, and a null cohort yields nothing."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from helpers.analysis import atlas
from helpers.data.cohort import load_cohort
from helpers.data.simulate import make_design


def test_expression_features_report_unmeasured_genes():
    rng = np.random.default_rng(1)
    L = pd.DataFrame(rng.normal(6, 1, (6, 30)), columns=[f"G{i}" for i in range(30)])
    L["LOW"] = 0.1
    spec = {"mechanisms": {"m": {"genes": ["G1", "LOW", "ABSENT"]}}}
    V, meta = atlas.expression_features(L, spec)
    assert list(V.columns) == ["G1"]
    notes = meta.set_index("feature")["note"]
    assert notes["LOW"] == "not expressed" and notes["ABSENT"] == "not in the data"


def test_atlas_table_one_fdr_and_age():
    rng = np.random.default_rng(2)
    idx = [f"p{i}" for i in range(12)]
    groups = pd.Series(["CR"] * 6 + ["NR"] * 6, index=idx)
    V = pd.DataFrame(rng.normal(0, 1, (12, 20)), index=idx, columns=[f"f{i}" for i in range(20)])
    V["f0"] += np.r_[np.zeros(6), np.full(6, 5.0)]
    meta = pd.DataFrame({"feature": V.columns, "mechanism": "m", "kind": "gene"})
    ages = pd.Series(np.arange(12, dtype=float), index=idx)
    t = atlas.atlas_table(V, meta, groups, "CR", "NR", ages)
    assert t.set_index("feature").loc["f0", "q"] < 0.05
    assert (t["q"] >= t["p"] - 1e-12).all() and {"age_rho", "age_q", "q_within_mechanism"} <= set(t.columns)


def test_planted_features_follow_cell_types():
    truth = {"effects": {"tumour_nfkb": {"strength_log2": 0.8, "cell_types": ["malignant_PC"], "genes": ["NFKBIA"]},
                         "inflammation": {"strength_log2": 0.8, "cell_types": ["mono_classical"], "genes": ["IL1B"]}}}
    meta = pd.DataFrame([
        {"feature": "NFKBIA", "kind": "gene", "genes": ["NFKBIA"]},
        {"feature": "IL1B", "kind": "gene", "genes": ["IL1B"]},  # planted in monocytes, measured in tumour: no
        {"feature": "mono_classical>malignant_PC: IL1B-IL1R1", "kind": "interaction", "genes": ["IL1B", "IL1R1"],
         "sender": "mono_classical"},
        {"feature": "stromal>malignant_PC: IL1B-IL1R1", "kind": "interaction", "genes": ["IL1B", "IL1R1"], "sender": "stromal"},
        {"feature": "cnv_burden", "kind": "cnv", "genes": []},
    ])
    p = atlas.planted_features(meta, truth)
    assert p.to_dict() == {"NFKBIA": True, "IL1B": False, "mono_classical>malignant_PC: IL1B-IL1R1": True,
                           "stromal>malignant_PC: IL1B-IL1R1": False, "cnv_burden": False}


def _sim(n_genes: int = 3000) -> dict:
    sim = copy.deepcopy(load_cohort("ifm2017_sim").simulation)
    sim["n_genes"] = n_genes
    return sim


def test_load_atlas_needs_a_direction(tmp_path):
    f = tmp_path / "atlas.yaml"
    f.write_text("mechanisms:\n  efflux: {genes: [ABCB1]}\n")
    with pytest.raises(ValueError, match="efflux.*direction"):
        atlas.load_atlas(f)
    assert {m["direction"] for m in atlas.load_atlas()["mechanisms"].values()} == {"up", "down"}


def test_signed_mechanism_scores_point_toward_resistance():
    rng = np.random.default_rng(3)
    idx = [f"p{i}" for i in range(12)]
    groups = pd.Series(["CR"] * 6 + ["NR"] * 6, index=idx)
    nr = np.r_[np.zeros(6), np.ones(6)]
    L = pd.DataFrame(rng.normal(6, 0.3, (12, 8)), index=idx, columns=["LOSS", "UP1", "UP2", "NULL"] + list("ABCD"))
    L["LOSS"] -= 2 * nr  # a 'down' mechanism: lower in NR
    L[["UP1", "UP2"]] += 2 * nr[:, None]
    L["QUIET"] = 0.0  # unexpressed: not part of any score
    spec = {"mechanisms": {"loss": {"direction": "down", "genes": ["LOSS", "QUIET"]},
                           "gain": {"direction": "up", "genes": ["UP1", "UP2", "ABSENT"]},
                           "null": {"direction": "up", "genes": ["NULL", "A", "B"]},
                           "silent": {"direction": "up", "genes": ["QUIET"]}}}
    scores, info = atlas.mechanism_scores(L, spec)
    assert list(scores.columns) == ["loss", "gain", "null"]
    assert info.set_index("mechanism").loc["silent", "note"].startswith("none of its 1 genes expressed")
    assert info.set_index("mechanism").loc["gain", "features"] == ["UP1", "UP2"]
    mt = atlas.mechanism_table(scores, info, groups, "CR", "NR").set_index("mechanism")
    assert mt.loc["loss", "effect"] > 0 and mt.loc["gain", "effect"] > 0  # both toward resistance
    assert mt.loc["loss", "significant"] and mt.loc["gain", "significant"] and not mt.loc["null", "significant"]
    assert (mt["q"] >= mt["p"] - 1e-12).all()


def test_stage2_only_inside_significant_mechanisms():
    rng = np.random.default_rng(4)
    idx = [f"p{i}" for i in range(16)]
    groups = pd.Series(["CR"] * 8 + ["NR"] * 8, index=idx)
    V = pd.DataFrame(rng.normal(0, 1, (16, 6)), index=idx, columns=[f"f{i}" for i in range(6)])
    V[["f0", "f3"]] += np.r_[np.zeros(8), np.full(8, 4.0)][:, None]
    meta = pd.DataFrame({"feature": V.columns, "mechanism": ["a"] * 3 + ["b"] * 3, "kind": "gene"})
    t = atlas.atlas_table(V, meta, groups, "CR", "NR", significant_mechanisms=["a"]).set_index("feature")
    assert t.loc["f0", "stage2"] and not t.loc["f3", "stage2"]  # f3 is strong, but its mechanism was not selected
    assert t.loc["f3", "q_within_mechanism"] < 0.05 and not t.loc[["f1", "f2", "f4", "f5"], "stage2"].any()


def test_simulated_resistance_is_planted_in_carriers_only():
    from helpers.data.simulate import cohort_model, draw_patients, sample_profiles

    sim = _sim()
    for k in sim["resistance"].values():
        k["prevalence"] = 0.5
    samples = make_design(6, 6, seed=11)
    pats = draw_patients(samples, sim, 11)
    carriers = {n for p in pats.values() for n, r in p["resistance"].items() if r["carrier"]}
    assert carriers and all(not r["carrier"] for p in pats.values() if p["response"] == "CR"
                            for r in p["resistance"].values())
    model = cohort_model(sim, 11)
    row = samples[samples["tissue"] == "BM"].iloc[0]
    pt = copy.deepcopy(pats[row["patient_id"]])
    for r in pt["resistance"].values():  # the same patient carrying every mechanism, then none
        r.update(carrier=True, activation=3.0)
    prof_on, _ = sample_profiles(model, row, pt, sim, 11, "bm")
    for r in pt["resistance"].values():
        r["activation"] = 0.0
    prof_off, _ = sample_profiles(model, row, pt, sim, 11, "bm")
    lfc = np.log2(prof_on / prof_off)
    last = f"malignant_PC|{len(pt['clones']) - 1}"
    assert lfc.at[last, "CD38"] < -1 and lfc.at[last, "CRBN"] < -1 and lfc.at[last, "CD55"] > 0.5
    assert lfc.at[last, "ABCB1"] > 1
    if len(pt["clones"]) > 1:  # ABCB1 only in the last-drawn clone; CD38 in every clone
        assert lfc.at["malignant_PC|0", "CD38"] < -1 and abs(lfc.at["malignant_PC|0", "ABCB1"]) < 0.2
    assert np.allclose(prof_on.loc["mono_classical"], prof_off.loc["mono_classical"])  # tumour cells only


@pytest.mark.slow
def test_mechanisms_found_when_planted_and_null_when_not():
    """Over 12 planted and 12 null cohorts of 8 vs 8 patients (tumour pseudobulk drawn from the simulator), with
    every NR tumour carrying each mechanism at the tiny cohort's strengths: the single-gene mechanisms with
    high power are found in most planted cohorts; no mechanism without a planted gene is found more often than a
    5% test allows, and the null cohorts find (almost) nothing."""
    sim = _sim()
    sim["cells"]["BM"]["per_sample"] = 800
    for name, k in load_cohort("tiny").simulation["resistance"].items():
        sim["resistance"][name].update(k)
    null = copy.deepcopy(sim)
    for k in null["resistance"].values():
        k["strength"] = 0.0
    for e in null["effects"].values():
        e["strength"] = 0.0
    design = make_design(8, 8, seed=21, n_batches=2)
    design = design[design["tissue"] == "BM"]
    spec = atlas.load_atlas()
    planted = atlas.mechanism_power(design, sim, 21, spec, 12, progress=False).set_index("mechanism")
    nullp = atlas.mechanism_power(design, null, 23, spec, 12, progress=False).set_index("mechanism")
    for m in ("cd38_loss", "cereblon_pathway_loss", "complement_inhibitors"):
        assert planted.loc[m, "planted"] and planted.loc[m, "rate_found"] >= 0.75, planted
    unplanted = planted[~planted["planted"]]
    assert len(unplanted) >= 3 and (unplanted["rate_significant"] * 12).sum() <= 2, unplanted
    assert not nullp["planted"].any() and (nullp["rate_significant"] * 12).sum() <= 2, nullp


def test_atlas_against_truth_counts():
    truth = {"effects": {"tumour_nfkb": {"strength_log2": 0.8, "cell_types": ["malignant_PC"], "genes": ["NFKBIA"]}},
             "resistance": {"cd38_loss": {"strength_log2": 1.0, "cell_types": ["malignant_PC"], "genes": ["CD38"],
                                          "carriers": ["p2"]},
                            "cereblon_loss": {"strength_log2": 1.0, "cell_types": ["malignant_PC"], "genes": ["CRBN"],
                                              "carriers": []}},  # no carrier: not planted
             "patients": {"p1": {"clones": [{"events": ["1q_gain"]}, {"events": ["1q_gain", "13_loss", "6q_loss"]}]},
                          "p2": {"clones": [{"events": ["1q_gain"]}, {"events": ["1q_gain", "13_loss"]}]},
                          "p3": {"clones": [{"events": ["1q_gain"]}]}}}
    meta = pd.DataFrame([{"feature": "NFKBIA", "mechanism": "nfkb", "kind": "gene", "genes": ["NFKBIA"]},
                         {"feature": "CD38", "mechanism": "cd38_loss", "kind": "gene", "genes": ["CD38"]},
                         {"feature": "CRBN", "mechanism": "crbn", "kind": "gene", "genes": ["CRBN"]},
                         {"feature": "MVP", "mechanism": "efflux", "kind": "gene", "genes": ["MVP"]}])
    info = pd.DataFrame({"mechanism": ["nfkb", "cd38_loss", "crbn", "efflux"],
                         "features": [["NFKBIA"], ["CD38"], ["CRBN"], ["MVP"]]})
    mech = pd.DataFrame({"mechanism": ["nfkb", "cd38_loss", "crbn", "efflux"], "significant": [False, True, True, False],
                         "toward_resistance": [True, True, False, True]})
    table = pd.DataFrame({"feature": ["CD38", "NFKBIA", "CRBN", "MVP"], "q": [0.01, 0.01, 0.01, 0.5],
                          "stage2": [True, False, True, False]})
    cnv = pd.DataFrame({"cnv_subclones": [1.0, 1.0, 1.0]}, index=["p1", "p2", "p3"])
    # p1's two clones differ by 2 events and hold >= 30 cells each: detectable; p2's differ by one event: not;
    # p3 has one clone: detectable
    cells = pd.DataFrame({"patient_id": ["p1"] * 70 + ["p2"] * 70 + ["p3"] * 40,
                          "truth_clone": [0] * 35 + [1] * 35 + [0] * 35 + [1] * 35 + [0] * 40})
    pm = atlas.planted_mechanisms(info, meta, truth)
    assert pm.set_index("mechanism")["planted"].to_dict() == {"nfkb": True, "cd38_loss": True, "crbn": False,
                                                               "efflux": False}
    assert pm.set_index("mechanism").at["cd38_loss", "planted_by"] == ["resistance:cd38_loss"]
    planted, s = atlas.atlas_against_truth(mech, pm, table, meta, cnv, truth, cells)
    assert planted.tolist() == [True, True, False, False]
    assert s["n_planted_significant"] == 1 and s["planted_significant"] == ["cd38_loss"]
    assert s["n_unplanted_significant"] == 1 and s["unplanted_significant"] == ["crbn"]  # significant either way
    assert s["stage2_n_planted_features"] == 1 and s["stage2_unplanted_features"] == ["CRBN"]
    assert s["subclones_n_detectable"] == 2 and s["subclones_exact_agreement"] == 0.5  # p3 right, p1 wrong
    assert s["subclones_n_patients"] == 3 and s["subclones_agreement_all"] == 1 / 3


def test_single_draw_odds_counts_cohorts_not_rows():
    """Per cohort: a planted mechanism found toward resistance counts; a planted one significant away from
    resistance does not; an unplanted significant one counts against the cohort whatever its direction."""
    rows = [  # rep, mechanism, planted, significant, toward_resistance
        (0, "a", True, True, True), (0, "b", False, False, False),   # found, clean
        (1, "a", True, True, False), (1, "b", False, False, True),   # planted significant the wrong way: not found
        (2, "a", True, False, True), (2, "b", False, True, False),   # unplanted significant
        (3, "a", True, True, True), (3, "b", False, True, True),     # found, but an unplanted one too
    ]
    raw = pd.DataFrame(rows, columns=["rep", "mechanism", "planted", "significant", "toward_resistance"])
    raw["found"] = raw["significant"] & raw["toward_resistance"]
    odds = atlas.single_draw_odds(raw)
    assert odds["n_cohorts"] == 4 and odds["mean_planted_found"] == 0.5
    assert odds["p_any_planted_found"]["rate"] == 0.5
    assert odds["p_any_unplanted_significant"]["rate"] == 0.5
    assert odds["p_planted_found_and_no_unplanted"]["rate"] == 0.25
    lo, hi = odds["p_any_planted_found"]["ci_low"], odds["p_any_planted_found"]["ci_high"]
    assert 0 < lo < 0.5 < hi < 1


def test_summarise_mechanism_power_rates():
    raw = pd.DataFrame({"rep": [0, 1, 2, 3], "mechanism": "a", "planted": True, "effect": [1.0, 2.0, 3.0, -1.0],
                        "significant": [True, True, False, True], "toward_resistance": [True, True, True, False]})
    raw["found"] = raw["significant"] & raw["toward_resistance"]
    s = atlas.summarise_mechanism_power(raw).iloc[0]
    assert s["rate_found"] == 0.5 and s["rate_significant"] == 0.75 and s["median_effect"] == 1.5
    assert s["ci_low"] < 0.5 < s["ci_high"]
