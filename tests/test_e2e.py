"""End to end: every numbered notebook runs on the tiny cohort through the Makefile's runner, in chain order, in a
scratch project root linked to this checkout, and leaves its executed notebook (figures inline), HTML, findings
JSON and figures; two runs give identical results."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
from conftest import GOAL_GAP, HARD_GOALS, NOTEBOOKS, SOFT_GOALS, linked_project, missed_goals, run_chain

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(chain_project) -> Path:
    return chain_project


@pytest.fixture(scope="module")
def tiny_run(tiny_chain):
    """The whole chain on the tiny cohort, from scratch (shared with the per-sample tests)."""
    return tiny_chain


@pytest.mark.slow
@pytest.mark.parametrize("nb", [p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_tiny(project, tiny_run, nb):
    """Each notebook runs as opened in JupyterLab (from notebooks/, only ``cohort`` set), shows its figures inline
    (and writes them as PNG + PDF) and prints no progress-bar warning."""
    assert tiny_run.get(nb) == 0, f"{nb} failed on the tiny cohort (see results/tiny/notebooks/{nb}.failed.ipynb)"
    res = project / "results" / "tiny"
    executed = nbformat.read(res / "notebooks" / f"{nb}.ipynb", as_version=4)
    assert executed.metadata["papermill"]["parameters"] == {"cohort": "tiny"}, "the runner injects only the cohort"
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    texts = "".join(o.get("text", "") for o in outputs)
    assert "TqdmWarning" not in texts and "IProgress not found" not in texts
    num = nb[:2]
    findings = json.loads((res / "findings" / f"{num}.json").read_text())
    assert findings, f"{nb} wrote an empty findings JSON"
    figs = list((project / "figures" / "tiny").glob(f"{num}_*.png"))
    assert figs, f"{nb} saved no figure"
    assert all((f.with_suffix(".pdf")).exists() for f in figs)
    inline = sum("image/png" in o.get("data", {}) for o in outputs)
    assert inline >= len(figs), f"{nb}: {len(figs)} figures saved, {inline} shown in the notebook"
    html = (res / "html" / f"{nb}.html").read_text()
    assert html.count("data:image/png;base64") >= len(figs), f"{nb}: figures missing from the HTML export"


# QC and annotation goals against the planted truth (helpers.validation.snapshot.GOALS, which the README states)
GOALS = {**HARD_GOALS, **SOFT_GOALS}


@pytest.mark.slow
def test_tiny_chain_meets_the_qc_and_annotation_goals(project, tiny_run):
    assert tiny_run.get("02_annotation") == 0, tiny_run
    res = project / "results" / "tiny"
    found = {**json.loads((res / "findings" / "01.json").read_text()),
             **json.loads((res / "findings" / "02.json").read_text())}
    measured = {k: round(found[k], 3) for k in GOALS}
    print(f"\ntiny cohort QC/annotation against truth: {measured}")
    assert all(found[k] >= v for k, v in HARD_GOALS.items()), (measured, GOALS)
    assert found["unassigned_fraction"] < 0.05 and found["n_malignant"] > 0
    assert found["junk_removed_fraction"] > 0.5 and found["good_kept_fraction"] > 0.85  # floors against regressions
    missed = missed_goals(found)
    if missed:  # reported as XFAIL with the measured values
        pytest.xfail(f"goals missed {missed} (goals {SOFT_GOALS}): " + GOAL_GAP)


@pytest.mark.slow
def test_second_make_all_executes_nothing(project, tiny_run):
    if not list((ROOT / ".venv").glob(".installed-*")):
        pytest.skip("environment stamp absent (pytest run outside make); make's up-to-date check needs it")
    r = subprocess.run(["make", "-n", "all", "COHORT=tiny"], cwd=project, capture_output=True, text=True)
    assert r.returncode == 0 and "helpers.runner run" not in r.stdout, \
        f"make all COHORT=tiny would re-execute notebooks although nothing changed:\n{r.stdout}"


@pytest.mark.slow
def test_broken_cohort_through_make_exits_2(tmp_path):
    """The Makefile reports a bad samples.csv with the named error and exit status 2."""
    project = linked_project(tmp_path / "project")
    cdir = project / "data" / "cohorts" / "zz_broken_test"
    shutil.copytree(ROOT / "data" / "cohorts" / "tiny", cdir)
    text = (cdir / "cohort.yaml").read_text().replace("name: tiny", "name: zz_broken_test")
    (cdir / "cohort.yaml").write_text(text)
    s = (cdir / "samples.csv").read_text().replace(",NR,", ",PR,", 1)
    (cdir / "samples.csv").write_text(s)
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "helpers.runner", "run", "--cohort",
                        "zz_broken_test", "--notebook", "notebooks/00_cohort.ipynb"], cwd=project,
                       capture_output=True, text=True, env={**os.environ, "DR_ROOT": str(project)})
    assert r.returncode == 2 and "response 'PR' is not one of" in r.stderr
    r = subprocess.run(["make", "all", "COHORT=zz_broken_test"], cwd=project, capture_output=True, text=True)
    assert r.returncode == 2 and "response 'PR' is not one of" in r.stderr


def _result_hashes(project: Path, cohort: str = "tiny") -> dict[str, str]:
    import hashlib

    res = project / "results" / cohort
    files = sorted([*(res / "findings").glob("*.json"), *(res / "tables").glob("*.csv"), res / "scorecard.csv"])
    return {f.relative_to(res).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.exists()}


@pytest.mark.slow
def test_two_runs_give_identical_results(project, tiny_run):
    """Determinism: the whole chain run a second time from scratch (cohort rebuilt) gives byte-identical findings
    JSON, results tables and scorecard. Run last: it replaces the first run's outputs with identical ones."""
    assert tiny_run and all(code == 0 for code in tiny_run.values()), tiny_run
    first = _result_hashes(project)
    assert len(first) > 20, first
    res = project / "results" / "tiny"
    for d in (res / "findings", res / "tables", project / "data" / "processed" / "tiny"):
        shutil.rmtree(d, ignore_errors=True)
    (res / "scorecard.csv").unlink(missing_ok=True)
    assert all(code == 0 for code in run_chain(project).values())
    second = _result_hashes(project)
    changed = sorted(k for k in set(first) | set(second) if first.get(k) != second.get(k))
    assert not changed, f"results differ between two runs: {changed}"
