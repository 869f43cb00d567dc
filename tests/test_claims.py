"""The claim contract (helpers.claims): one registry, one verdict rule, and the helpers that build each kind of
claim record, tested on values: a planted fixture gives the study's direction and p < 0.05, a null one does not.
(The cell claims' records, :func:`helpers.analysis.findings.measure_claim`, are tested the same way in
tests/test_not_testable.py.)"""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from toys import patient_table

from helpers.analysis import classifier as clf
from helpers.analysis.findings import measure_prognosis
from helpers.claims import (
    CLAIMS,
    STUDY_AUC,
    cell_claims,
    claim_by_label,
    claim_genes,
    not_testable,
    record,
    reproduced,
    scorecard_claims,
    verdict,
)
from helpers.data.genesets import progeny_weights


def test_registry_defines_every_scorecard_row_once():
    rows = scorecard_claims()
    labels = [c.label for c in rows]
    assert len(rows) == 10 and len(set(labels)) == len(labels)
    assert all(claim_by_label(c.label) is c for c in rows)
    with pytest.raises(KeyError, match="no claim with the scorecard label 'nope'"):
        claim_by_label("nope")
    assert STUDY_AUC == {"auc_bm_34": 0.96, "auc_bm_top8": 0.92, "auc_pb_top8": 0.77}
    assert clf.STUDY_AUC is STUDY_AUC  # the classifier reads the study's numbers from the registry
    assert [c.study for c in rows if c.kind == "survival"] == ["HR > 1"]
    for c in rows:
        assert c.notebook in {"03", "04", "05", "06", "07"} and c.statement and c.readout
        assert f"p < 0.05 and {c.effect_text()}" in c.rule()
    for name, c in cell_claims().items():  # every cell readout reads genes of a published set or a gene
        assert c.kind in ("set", "gene", "progeny") and len(claim_genes(c)) >= 1, name
    with pytest.raises(ValueError, match="unknown kind"):
        type(rows[0])("x", "s", "immune", "nope", "f", "up", None, "03")


@pytest.mark.parametrize("name", [c.name for c in scorecard_claims()])
def test_one_verdict_rule_for_every_row(name):
    """p < 0.05 and the study's direction, whatever the readout; the null value of the direction is the kind's (0
    for a shift, 1 for a hazard ratio, 0.5 for an AUC)."""
    c = CLAIMS[name]
    null = {"survival": 1.0, "auc": 0.5}.get(c.kind, 0.0)
    sign = 1 if c.expected == "up" else -1
    on_side, off_side = null + sign * 0.3, null - sign * 0.3
    assert verdict(c, record(on_side, on_side - 0.1, on_side + 0.1, 0.01, 6, 6, "m", null=null)) == "reproduced"
    assert verdict(c, record(on_side, on_side - 0.1, on_side + 0.1, 0.2, 6, 6, "m", null=null)) == "not reproduced"
    assert verdict(c, record(off_side, off_side - 0.1, off_side + 0.1, 0.01, 6, 6, "m", null=null)) == "not reproduced"
    assert verdict(c, not_testable("no cells")) == "not testable: no cells"
    assert verdict(c, None) == "not applicable" and not reproduced(c, None)


def _bulk(n: int = 160, beta: float = 0.0, seed: int = 0) -> ad.AnnData:
    """A bulk tumour cohort whose PROGENy NFkB activity follows a latent z per patient, with progression-free
    survival whose hazard is exp(beta z) (beta 0: a null cohort)."""
    rng = np.random.default_rng(seed)
    net = progeny_weights()
    nfkb = net[net["source"] == "NFkB"].drop_duplicates("target").nlargest(100, "weight", keep="all").head(100)
    genes = list(nfkb["target"]) + [f"FILL{i}" for i in range(200)]
    w = np.r_[np.sign(nfkb["weight"].to_numpy()), np.zeros(200)]
    z = rng.normal(size=n)
    log_mu = rng.normal(3, 1, len(genes))[None, :] + 0.6 * z[:, None] * w[None, :] + rng.normal(0, 0.2, (n, len(genes)))
    mu = np.exp(log_mu)
    counts = rng.poisson(mu / mu.sum(1, keepdims=True) * 2e6)
    time = rng.exponential(1 / (0.03 * np.exp(beta * z)))
    censor = rng.uniform(20, 80, n)
    obs = pd.DataFrame({"pfs_months": np.minimum(time, censor), "pfs_event": (time <= censor).astype(int)},
                       index=[f"B{i:03d}" for i in range(n)])
    return ad.AnnData(X=counts.astype(np.float64), obs=obs, var=pd.DataFrame(index=genes))


def test_prognosis_record_planted_and_null():
    score, rec = measure_prognosis(_bulk(beta=0.8, seed=1))
    assert rec["direction"] == "up" and rec["effect"] > 1.5 and rec["p"] < 0.001 and rec["ci_low"] > 1
    assert verdict(CLAIMS["prognosis"], rec) == "reproduced" and len(score) == 160
    assert {"n", "n_events", "logrank_p", "method"} <= set(rec) and "n_cr" not in rec
    _, rec = measure_prognosis(_bulk(beta=0.0, seed=2))
    assert rec["p"] > 0.05 and verdict(CLAIMS["prognosis"], rec) == "not reproduced"


def test_prognosis_not_testable_without_bulk_or_events():
    _, rec = measure_prognosis(None)
    assert rec["reason"] == "no bulk cohort with survival (bulk.h5ad) for this cohort"
    b = _bulk(n=30)
    b.obs["pfs_event"] = 0
    _, rec = measure_prognosis(b)
    assert verdict(CLAIMS["prognosis"], rec).startswith("not testable: only 0 events")
    _, rec = measure_prognosis(ad.AnnData(X=b.X, var=b.var))
    assert rec["reason"] == "the bulk cohort has no 'pfs_months' column"


def test_auc_records_planted_and_null():
    """The AUC claims' records from notebook 07's evaluation: a separable cohort is reproduced by the permutation
    rule in marrow and blood, a noise cohort is not."""
    X, y = patient_table(p=12, signal=2.5, seed=5)
    res = clf.evaluate_marrow(X, y, seed=0, top_k=4, n_repeats=1, n_perm=39)
    for key, name in (("bm_34", "auc_bm_34"), ("bm_top8", "auc_bm_top8")):
        rec = clf.auc_record(name, res[key], None)
        assert rec["direction"] == "up" and rec["effect"] > 0.85 and rec["p"] == pytest.approx(1 / 40)
        assert (rec["n_cr"], rec["n_nr"]) == (12, 12) and rec["ci_low"] < rec["effect"] <= rec["ci_high"]
        assert verdict(CLAIMS[name], rec) == "reproduced"
    Xe, ye = patient_table(p=12, n=16, signal=2.5, seed=9)
    model = clf.make_model(0, top_k=4)
    ext = clf.evaluate_external(model.fit(X, y), Xe, ye)
    blood = clf.evaluate_blood_permutation(clf.make_model(0, top_k=4), X, y, {**ext, "Z": Xe, "y": ye}, seed=0,
                                           n_perm=39)
    rec = clf.auc_record("auc_pb_top8", blood, None)
    assert rec["n_cr"] == rec["n_nr"] == 8 and verdict(CLAIMS["auc_pb_top8"], rec) == "reproduced"
    Xn, yn = patient_table(p=12, signal=0.0, seed=11)
    res = clf.evaluate_marrow(Xn, yn, seed=0, top_k=4, n_repeats=1, n_perm=39)
    for key, name in (("bm_34", "auc_bm_34"), ("bm_top8", "auc_bm_top8")):
        rec = clf.auc_record(name, res[key], None)
        assert rec["p"] > 0.05 and verdict(CLAIMS[name], rec) == "not reproduced", (name, rec)
    untestable = not_testable("no PB samples in this cohort")
    assert clf.auc_record("auc_pb_top8", None, untestable) is untestable
