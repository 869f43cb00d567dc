"""The cohort spec: loading, path resolution and every validation error (named file, row, fix; exit 2)."""
from __future__ import annotations

import pandas as pd
import pytest

from helpers.data.cohort import CohortError, load_cohort, notebook_parameters
from helpers.runner import main as runner_main


@pytest.mark.parametrize("name", ["ifm2017_sim", "ifm2017_null", "tiny"])
def test_shipped_cohorts_are_valid(root, name):
    c = load_cohort(name, root=root)
    assert c.groups == ["CR", "NR"] and c.reference_group == "CR" and c.test_group == "NR"
    assert c.processed_dir == root / "data" / "processed" / name
    assert set(c.samples["tissue"]) == {"BM", "PB"}
    assert notebook_parameters(c, "00_cohort") == {"cohort": name}  # the rest comes from the cohort


def test_default_design_matches_study(root):
    c = load_cohort("ifm2017_sim", root=root)
    bm = c.samples[c.samples.tissue == "BM"]
    assert bm.response.value_counts().to_dict() == {"CR": 11, "NR": 10}
    pb = c.samples[c.samples.tissue == "PB"]
    assert pb.response.value_counts().to_dict() == {"CR": 10, "NR": 10}
    assert not set(bm.patient_id) & set(pb.patient_id), "blood validation patients must be independent"
    # processing batches are not identical to response: several batches, most hold both groups
    mixed = (pd.crosstab(bm.batch, bm.response) > 0).all(axis=1)
    assert bm.batch.nunique() >= 3 and mixed.mean() >= 0.5


def _break(scratch_root, fn):
    f = scratch_root / "data" / "cohorts" / "tiny" / "samples.csv"
    df = pd.read_csv(f, dtype=str)
    df = fn(df)
    df.to_csv(f, index=False)
    return f


CASES = {
    "missing column": (lambda d: d.drop(columns=["response"]), "missing column(s) ['response']"),
    "unknown column": (lambda d: d.assign(respnse="x"), "unknown column(s) ['respnse']"),
    "duplicate sample": (lambda d: pd.concat([d, d.iloc[[0]]]), "duplicate sample_id"),
    "bad response label": (lambda d: d.assign(response=d.response.replace({"NR": "PR"})), "response 'PR' is not one of"),
    "missing response": (lambda d: d.assign(response=d.response.where(d.index != 1, None)), "response '' is not one of"),
    "non-numeric age": (lambda d: d.assign(age=d.age.where(d.index != 2, "sixty")), "age 'sixty' is not a number"),
    "one patient per group": (lambda d: d[~((d.response == "NR") & (d.tissue == "BM"))].pipe(
        lambda x: pd.concat([x, d[(d.response == "NR") & (d.tissue == "BM")].iloc[[0]]])), "group 'NR' has 1 patient(s)"),
    "one group only": (lambda d: d.assign(response="CR"), "group 'NR' has 0 patient(s)"),
    "bad tissue": (lambda d: d.assign(tissue=d.tissue.replace({"PB": "blood"})), "tissue 'blood' is not one of"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_samples_csv_named_error_and_exit_2(scratch_root, monkeypatch, capsys, case):
    fn, expected = CASES[case]
    f = _break(scratch_root, fn)
    with pytest.raises(CohortError) as e:
        load_cohort("tiny", root=scratch_root)
    msg = str(e.value)
    assert expected in msg, msg
    assert str(f) in msg  # names the file
    monkeypatch.setenv("DR_ROOT", str(scratch_root))
    assert runner_main(["validate", "--cohort", "tiny"]) == 2
    assert expected in capsys.readouterr().err


def test_error_names_the_row(scratch_root):
    _break(scratch_root, lambda d: d.assign(response=d.response.where(d.index != 3, "VGPR")))
    with pytest.raises(CohortError, match=r"row 5 \(sample_id=.*\): response 'VGPR'"):
        load_cohort("tiny", root=scratch_root)


def test_real_cohort_missing_counts_path(scratch_root):
    cdir = scratch_root / "data" / "cohorts" / "tiny"
    cfg = (cdir / "cohort.yaml").read_text().replace("kind: simulated", "kind: real")
    (cdir / "cohort.yaml").write_text(cfg)
    _break(scratch_root, lambda d: d.assign(path="counts/" + d.sample_id + ".h5ad"))
    with pytest.raises(CohortError, match=r"counts path 'counts/P01_BM.h5ad' does not exist"):
        load_cohort("tiny", root=scratch_root)


def test_unknown_cohort_lists_available(root):
    with pytest.raises(CohortError, match="Available: .*ifm2017_sim"):
        load_cohort("no_such_cohort", root=root)


def test_paediatric_ages_and_missing_age_pass(scratch_root):
    _break(scratch_root, lambda d: d.assign(age=["4", "9.5", "", "12", "16", "17", "3", "8", "11", "15"][: len(d)]))
    with pytest.warns(UserWarning, match="without age"):
        c = load_cohort("tiny", root=scratch_root)
    assert c.samples["age"].min() == 3 and c.samples["age"].isna().sum() == 1


def test_simulation_base_is_inherited_and_a_missing_base_is_named(scratch_root):
    from helpers.data.cohort import load_cohort
    tiny = load_cohort("tiny", root=scratch_root)
    assert tiny.simulation["ambient"]["fraction"] == 0.05 and tiny.simulation["n_genes"] == 5000  # base + override
    cfg = scratch_root / "data" / "cohorts" / "tiny" / "cohort.yaml"
    cfg.write_text(cfg.read_text().replace("base: ifm2017_sim", "base: no_such_cohort"))
    with pytest.raises(CohortError, match="simulation.base names base cohort 'no_such_cohort'"):
        load_cohort("tiny", root=scratch_root)


def test_project_root_found_from_a_notebook_folder(root, monkeypatch, tmp_path):
    """A notebook opened in JupyterLab runs in notebooks/ without $DR_ROOT: the root is found by walking up."""
    from helpers.data.cohort import project_root

    monkeypatch.delenv("DR_ROOT", raising=False)
    monkeypatch.chdir(root / "notebooks")
    assert project_root() == root
    monkeypatch.setenv("DR_ROOT", str(tmp_path))
    assert project_root() == tmp_path.resolve()  # the runner's scratch roots win over the working directory
