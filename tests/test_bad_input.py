"""Bad input through the Makefile, as a user meets it: each case gives a clear, named error and exit status 2
(no traceback-only failure), and the outputs of an earlier good run stay intact.

The cohort is a small real one (Kang 2018 PBMC counts from tests/data, written per sample as .h5ad); the cases
are applied to data/cohorts/zz_bad_input of a scratch project root linked to this checkout (nothing is written
into the checkout). Function-level versions of the
ingest errors are in test_ingest.py; the cohort-definition errors by the runner in test_cohort.py."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import linked_project

ROOT = Path(__file__).resolve().parents[1]
KANG = ROOT / "tests" / "data" / "kang2018_pbmc_ctrl_stim_600cells.h5ad"
NAME = "zz_bad_input"
TARGET = f"results/{NAME}/notebooks/00_cohort.ipynb"

COHORT_YAML = f"""name: {NAME}
kind: real
description: bad-input test cohort (Kang 2018 PBMC counts)
seed: 1
tissues: [BM]
discovery_tissue: BM
response: {{groups: [CR, NR], reference: CR}}
samples: samples.csv
"""


def _samples() -> pd.DataFrame:
    return pd.DataFrame({"sample_id": [f"S{i}" for i in range(1, 5)], "patient_id": [f"p{i}" for i in range(1, 5)],
                         "tissue": "BM", "response": ["CR", "NR", "CR", "NR"], "age": [61, 70, 58, 66],
                         "batch": ["b1", "b1", "b2", "b2"], "path": [f"counts/S{i}.h5ad" for i in range(1, 5)]})


def _make(project: Path, *targets) -> subprocess.CompletedProcess:
    return subprocess.run(["make", *targets, f"COHORT={NAME}"], cwd=project, capture_output=True, text=True)


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A scratch project root linked to this checkout (conftest.linked_project)."""
    if not list((ROOT / ".venv").glob(".installed-*")):
        pytest.skip("environment stamp absent (pytest run outside make): make would reinstall the environment")
    return linked_project(tmp_path_factory.mktemp("bad_input"))


@pytest.fixture(scope="module")
def good_run(project):
    """The good cohort, ingested once through make (notebook 00): the outputs the bad cases must not touch."""
    cdir = project / "data" / "cohorts" / NAME
    (cdir / "counts").mkdir(parents=True)
    a = ad.read_h5ad(KANG)
    a.X = sp.csr_matrix(a.X)
    for i in range(4):
        a[i * 150:(i + 1) * 150].copy().write_h5ad(cdir / "counts" / f"S{i + 1}.h5ad")
    (cdir / "cohort.yaml").write_text(COHORT_YAML)
    _samples().to_csv(cdir / "samples.csv", index=False)
    r = _make(project, TARGET)
    assert r.returncode == 0, r.stderr[-3000:]
    outputs = [project / TARGET, project / "data" / "processed" / NAME / "cells.h5ad"]
    return {p: _digest(p) for p in outputs}


def _write_counts(cdir, X, var_names, name="S2.h5ad"):
    b = ad.AnnData(X=X, obs=pd.DataFrame(index=[f"c{i}" for i in range(X.shape[0])]), var=pd.DataFrame(index=var_names))
    b.write_h5ad(cdir / "counts" / name)


def _case_truncated_h5(a, cdir):
    data = (cdir / "counts" / "S2.h5ad").read_bytes()
    (cdir / "counts" / "S2.h5ad").write_bytes(data[: len(data) // 3])


def _case_truncated_mtx(a, cdir):
    d = cdir / "counts" / "S2_mtx"
    d.mkdir()
    import scipy.io
    with open(d / "matrix.mtx", "wb") as fh:
        scipy.io.mmwrite(fh, sp.csr_matrix(a.X[150:300]).T.tocoo().astype(np.int64), field="integer")
    raw = (d / "matrix.mtx").read_bytes()
    (d / "matrix.mtx").write_bytes(raw[: len(raw) // 2])
    pd.DataFrame({0: [f"ENSG{i:011d}" for i in range(a.n_vars)], 1: a.var_names, 2: "Gene Expression"}).to_csv(
        d / "features.tsv", sep="\t", header=False, index=False)
    (d / "barcodes.tsv").write_text("\n".join(a.obs_names[150:300]) + "\n")
    s = _samples()
    s.loc[1, "path"] = "counts/S2_mtx"
    s.to_csv(cdir / "samples.csv", index=False)


def _case_ensembl(a, cdir):
    _write_counts(cdir, sp.csr_matrix(a.X[150:300]), [f"ENSG{i:011d}" for i in range(a.n_vars)])


def _case_lognorm(a, cdir):
    X = a.X[150:300].toarray()
    _write_counts(cdir, sp.csr_matrix(np.log1p(X / X.sum(1, keepdims=True) * 1e4)), a.var_names)


def _case_empty(a, cdir):
    _write_counts(cdir, sp.csr_matrix((0, a.n_vars)), a.var_names)


def _samples_case(fn):
    def apply(a, cdir):
        fn(_samples()).to_csv(cdir / "samples.csv", index=False)
    return apply


CASES = {
    "truncated .h5ad": (_case_truncated_h5, "S2.h5ad"),
    "truncated .mtx": (_case_truncated_mtx, "corrupt or truncated"),
    "Ensembl ids without symbols": (_case_ensembl, "Ensembl"),
    "log-normalised counts": (_case_lognorm, "log-normalised"),
    "empty sample": (_case_empty, "no cells"),
    "counts path does not exist": (_samples_case(lambda s: s.assign(path=s.path.replace("counts/S3.h5ad", "counts/S9.h5ad"))),
                                   "counts path 'counts/S9.h5ad' does not exist"),
    "misspelled response label": (_samples_case(lambda s: s.assign(response=s.response.replace({"NR": "NRR"}))),
                                  "response 'NRR' is not one of"),
    "missing response label": (_samples_case(lambda s: s.assign(response=s.response.where(s.index != 0, ""))),
                               "response '' is not one of"),
    "non-numeric age": (_samples_case(lambda s: s.assign(age=s.age.astype(object).where(s.index != 1, "sixty"))),
                        "age 'sixty' is not a number"),
    "one group only": (_samples_case(lambda s: s.assign(response="CR")), "group 'NR' has 0 patient(s)"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exit_2_named_error_outputs_intact(project, good_run, case):
    apply, expected = CASES[case]
    cdir = project / "data" / "cohorts" / NAME
    backup = cdir.parent / f"{NAME}.bak"
    shutil.rmtree(backup, ignore_errors=True)
    shutil.copytree(cdir, backup)
    try:
        a = ad.read_h5ad(KANG)
        a.X = sp.csr_matrix(a.X)
        apply(a, cdir)
        (cdir / "cohort.yaml").touch()  # make sees a changed cohort and re-runs notebook 00
        r = _make(project, "all")
        assert r.returncode == 2, f"{case}: exit {r.returncode}\n{r.stderr[-3000:]}"
        assert "ERROR" in r.stderr and expected in r.stderr, f"{case}: message lacks '{expected}':\n{r.stderr[-3000:]}"
        # no traceback through the project's code reaches the user (the kernel's own shutdown chatter may)
        assert "src/helpers/" not in r.stderr, f"{case}: a traceback reached the user:\n{r.stderr[-3000:]}"
        for p, digest in good_run.items():
            assert p.exists() and _digest(p) == digest, f"{case}: earlier good output {p} was changed"
        leftovers = [p for p in (project / "results" / NAME).rglob("*.tmp*")]
        assert not leftovers, f"{case}: temporary files left behind: {leftovers}"
    finally:
        shutil.rmtree(cdir)
        shutil.copytree(backup, cdir)
        shutil.rmtree(backup, ignore_errors=True)


def test_no_cell_left_after_qc_is_an_input_error():
    from helpers.data.cohort import InputError
    from helpers.preprocessing.qc import qc_filter

    a = ad.read_h5ad(KANG)[:200].copy()
    a.X = sp.csr_matrix(a.X)
    a.obs["sample_id"] = np.repeat(["A", "B"], 100)
    genes = list(a.var_names[:-2]) + ["MT-CO1", "MT-ND1"]
    a.var_names = genes
    X = a.X.tolil()
    X[100:, -2:] = 10_000  # every cell of sample B is mostly mitochondrial: above the 40% cap
    a.X = X.tocsr()
    with pytest.raises(InputError, match=r"no cell left after QC in sample\(s\) \['B'\]"):
        qc_filter(a, seed=0)


def test_missing_panel_genes_named():
    from helpers.analysis.classifier import panel_features
    from helpers.data.cohort import InputError

    a = ad.read_h5ad(KANG)[:50].copy()
    a.obs["patient_id"], a.obs["tissue"], a.obs["response"] = "p1", "BM", "CR"
    with pytest.raises(InputError, match=r"panel gene\(s\) missing from the data: \['NOT_A_GENE'\]"):
        panel_features(a, [a.var_names[0], "NOT_A_GENE"], "BM")
