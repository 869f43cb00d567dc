"""The predict command: a model bundle trained on the tiny marrow set scores blood samples; bad input exits 2."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from helpers.analysis import classifier as clf
from helpers.analysis.predict import main as predict_main


@pytest.fixture(scope="module")
def bundle_path(tiny_sim, tmp_path_factory):
    import joblib

    a, _ = tiny_sim
    panel = clf.load_panel()
    genes = panel["gene"].tolist()
    X_bm, r_bm = clf.panel_features(a, genes, "BM", min_cells=5)
    Z, st_bm = clf.standardise(X_bm)
    X_pb, _ = clf.panel_features(a, genes, "PB", min_cells=5)
    _, st_pb = clf.standardise(X_pb)
    model = clf.make_model(0, top_k=8).fit(Z, (r_bm == "NR").astype(int).to_numpy())
    b = clf.build_bundle(model, genes, panel, {"BM": st_bm, "PB": st_pb}, None, "tiny", 0, ["CR", "NR"])
    assert len(b["top_genes"]) == 8 and b["versions"]["scikit-learn"]
    p = tmp_path_factory.mktemp("model") / "nfkb_model.joblib"
    joblib.dump(b, p)
    return p


@pytest.fixture()
def pb_file(tiny_sim, tmp_path):
    a, _ = tiny_sim
    pb = a[(a.obs["tissue"] == "PB").to_numpy()].copy()
    p = tmp_path / "pb.h5ad"
    pb.write_h5ad(p)
    return p, pb


def test_predict_scores_each_sample(bundle_path, pb_file, capsys):
    p, pb = pb_file
    assert predict_main(["--model", str(bundle_path), "--counts", str(p), "--tissue", "PB"]) == 0
    out = capsys.readouterr().out
    for s in pb.obs["sample_id"].unique():
        assert s in out
    assert "p_nonresponse" in out and "genes_used" in out


@pytest.mark.parametrize("case", ["missing genes", "log data", "empty", "unknown tissue", "no model"])
def test_predict_bad_input_exit_2(bundle_path, pb_file, tmp_path, capsys, case):
    p, pb = pb_file
    model, tissue = str(bundle_path), "PB"
    if case == "missing genes":
        pb = pb[:, ~pb.var_names.isin(["NFKB1", "RELB"])].copy()
        expect = "missing from the counts: ['NFKB1', 'RELB']"
    elif case == "log data":
        pb.X = sp.csr_matrix(np.log1p(pb.X.toarray() * 0.37))
        del pb.layers["counts"]
        expect = "log-normalised"
    elif case == "empty":
        pb = pb[:0].copy()
        expect = "no cells"
    elif case == "unknown tissue":
        tissue, expect = "CSF", "unknown tissue 'CSF'"
    else:
        model, expect = str(tmp_path / "none.joblib"), "does not exist"
    f = tmp_path / "bad.h5ad"
    pb.write_h5ad(f)
    assert predict_main(["--model", model, "--counts", str(f), "--tissue", tissue]) == 2
    assert expect in capsys.readouterr().err
