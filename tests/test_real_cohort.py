"""A cohort of real cells (tests/realcohort.py: the celltypist sample resampled and thinned, hg19-era symbols,
antibody rows, a planted NK CD16 effect; bone marrow only) read by the ingest and run through the whole pipeline.

The end-to-end run is hermetic: a project root in a temporary folder links the checkout's code, notebooks,
environment and shared data, holds the cohort, and receives every output (nothing is written to the checkout)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml
from conftest import linked_project
from realcohort import ANTIBODIES, PLANTED_FILE, build_real_cohort

from helpers.data.cohort import load_cohort
from helpers.data.ingest import ingest_samples

ROOT = Path(__file__).resolve().parents[1]
NAME = "zz_real_cells"
def selected_fcgr3a_cpm(adata: ad.AnnData, planted: dict) -> pd.DataFrame:
    """Per patient: FCGR3A counts per million in the cells the planted rule selected (raw counts)."""
    sel = adata.obs_names.isin([f"{s}_{b}" for s, bcs in planted["selected_cells"].items() for b in bcs])
    X = sp.csr_matrix(adata.layers["counts"])[sel]
    df = pd.DataFrame({"fcgr3a": X[:, adata.var_names.get_loc("FCGR3A")].toarray().ravel(),
                       "total": np.asarray(X.sum(1)).ravel(),
                       "patient_id": adata.obs["patient_id"].astype(str).to_numpy()[sel],
                       "response": adata.obs["response"].astype(str).to_numpy()[sel]})
    out = df.groupby(["patient_id", "response"])[["fcgr3a", "total"]].sum().reset_index()
    out["cpm"] = out["fcgr3a"] / out["total"] * 1e6
    return out


def test_builder_writes_a_readable_real_cohort(tmp_path):
    cdir = build_real_cohort(tmp_path / "data" / "cohorts", NAME)
    c = load_cohort(NAME, root=tmp_path)
    s = c.samples
    assert c.kind == "real" and list(s["response"].value_counts().sort_index()) == [5, 5]
    assert set(s["tissue"]) == {"BM"} and s["age"].between(4, 17).all() and s["patient_id"].is_unique
    assert (s.groupby("batch")["response"].nunique() == 2).all()  # batches stratified by response
    for p in s["path"]:
        assert sorted(f.name for f in (cdir / p).iterdir()) == ["barcodes.tsv.gz", "features.tsv.gz", "matrix.mtx.gz"]
    feats = pd.read_csv(cdir / s["path"][0] / "features.tsv.gz", sep="\t", header=None)
    assert feats.shape[1] == 3 and list(feats[2].value_counts().index) == ["Gene Expression", "Antibody Capture"]

    with pytest.warns(UserWarning, match="genes absent after symbol mapping"):
        a = ingest_samples(s, cdir)
    assert a.var_names.is_unique and "JCHAIN" in a.var_names and "IGJ" not in a.var_names  # hg19 names mapped
    assert a.obs["sample_id"].value_counts().between(350, 500).all()
    # no two cells identical (resampled cells are thinned independently)
    X = sp.csr_matrix(a.layers["counts"])
    rows = {hash((X.indices[X.indptr[i]:X.indptr[i + 1]].tobytes(), X.data[X.indptr[i]:X.indptr[i + 1]].tobytes()))
            for i in range(X.shape[0])}
    assert len(rows) == X.shape[0]
    # antibodies only in the first four samples (2 CR, 2 NR), not counted as genes
    prot = a.obsm["protein_counts"]
    sid = a.obs["sample_id"].astype(str).to_numpy()
    with_ab = np.isin(sid, ["S01", "S02", "S03", "S04"])
    assert list(prot.columns) == ANTIBODIES and prot[with_ab].notna().all().all()
    assert prot[~with_ab].isna().all().all() and "CD16" not in a.var_names

    planted = json.loads((cdir / PLANTED_FILE).read_text())
    assert planted["direction"] == "down" and planted["claim"] == "nk_cd54dim_cd16"
    cpm = selected_fcgr3a_cpm(a, planted)
    means = cpm.groupby("response")["cpm"].mean()
    log2_effect = np.log2(means["NR"] / means["CR"])
    print(f"\nplanted FCGR3A in selected cells, raw counts: log2 NR/CR {log2_effect:+.2f} "
          f"(expected {planted['expected_log2_effect']:+.2f})\n{cpm.round(1).to_string(index=False)}")
    assert -2.0 < log2_effect < -0.8
    assert cpm.loc[cpm.response == "NR", "cpm"].max() < cpm.loc[cpm.response == "CR", "cpm"].min()
    # the CD16 antibody of the NK-like cells is lower in the NR antibody samples (S02, S04) too
    sel = a.obs_names.isin([f"{k}_{b}" for k, v in planted["selected_cells"].items() for b in v])
    cd16 = prot.loc[sel & with_ab, "CD16"].groupby(sid[sel & with_ab]).mean()
    assert max(cd16["S02"], cd16["S04"]) < 0.6 * min(cd16["S01"], cd16["S03"])


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project root in a temporary folder: the checkout's code, notebooks, environment, shared data and cohort
    definitions linked, the real-cell cohort built under its data/cohorts."""
    if not list((ROOT / ".venv").glob(".installed-*")):
        pytest.skip("environment stamp absent (pytest run outside make): make would reinstall the environment")
    root = linked_project(tmp_path_factory.mktemp("project"))
    build_real_cohort(root / "data" / "cohorts", NAME)
    return root


def measured(root: Path) -> dict:
    """What the run produced, as far as it got: plasma fraction, malignant calls, the NK CD16 claim."""
    out: dict = {}
    ann = root / "data" / "processed" / NAME / "annotated.h5ad"
    if ann.exists():
        obs = ad.read_h5ad(ann, backed="r").obs
        out["cells annotated"] = len(obs)
        out["plasma fraction"] = float((obs["compartment"].astype(str) == "plasma").mean())
        out["n malignant_PC"] = int((obs["cell_type"].astype(str) == "malignant_PC").sum())
        out["compartments"] = obs["compartment"].astype(str).value_counts().to_dict()
    f05 = root / "results" / NAME / "findings" / "05.json"
    if f05.exists():
        claims = json.loads(f05.read_text()).get("claims", {})
        for name in ("nk_cd54dim_cd16", "nk_cd16_protein"):  # RNA (the assertion), and the antibody readout
            out[name] = {k: claims.get(name, {}).get(k) for k in ("effect", "ci_low", "ci_high", "p", "direction",
                                                                  "n_cr", "n_nr", "measured_in", "status", "reason")}
    planted = json.loads((root / "data" / "cohorts" / NAME / PLANTED_FILE).read_text())
    out["planted log2 effect"] = planted["expected_log2_effect"]
    return out


@pytest.mark.slow
def test_real_cohort_end_to_end(project):
    r = subprocess.run(["make", "all", f"COHORT={NAME}", "DR_JOBS=1"], cwd=project, capture_output=True, text=True)
    m = measured(project)
    print("\nreal-cell cohort (compartment agreement not measurable: the reference is unlabelled)\n"
          + yaml.safe_dump(m, sort_keys=False))
    assert r.returncode == 0, f"make all exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    assert (project / "results" / NAME / "scorecard.csv").exists()
    assert m["plasma fraction"] < 0.01, m
    assert m["n malignant_PC"] == 0, m
    claim = m["nk_cd54dim_cd16"]
    assert claim["direction"] == "down" and claim["effect"] < 0, claim
