"""End to end: every numbered notebook runs on the tiny cohort through the Makefile's runner, in chain order,
and leaves its executed notebook, HTML, findings JSON and figures."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import GOAL_GAP, HARD_GOALS, SOFT_GOALS, missed_goals

from helpers.runner import main as runner_main

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def tiny_run():
    """Run the whole chain on the tiny cohort from scratch (its generated outputs are removed first)."""
    for d in (ROOT / "results" / "tiny", ROOT / "figures" / "tiny", ROOT / "data" / "processed" / "tiny"):
        shutil.rmtree(d, ignore_errors=True)
    codes = {}
    for nb in NOTEBOOKS:
        codes[nb.stem] = runner_main(["run", "--cohort", "tiny", "--notebook", str(nb)])
        if codes[nb.stem] != 0:
            break
    return codes


@pytest.mark.slow
@pytest.mark.parametrize("nb", [p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_tiny(tiny_run, nb):
    assert tiny_run.get(nb) == 0, f"{nb} failed on the tiny cohort (see results/tiny/notebooks/{nb}.failed.ipynb)"
    res = ROOT / "results" / "tiny"
    assert (res / "notebooks" / f"{nb}.ipynb").exists()
    assert (res / "html" / f"{nb}.html").stat().st_size > 10_000
    num = nb[:2]
    findings = json.loads((res / "findings" / f"{num}.json").read_text())
    assert findings, f"{nb} wrote an empty findings JSON"
    figs = list((ROOT / "figures" / "tiny").glob(f"{num}_*.png"))
    assert figs, f"{nb} saved no figure"
    assert all((f.with_suffix(".pdf")).exists() for f in figs)


# QC and annotation goals against the planted truth (helpers.validation.snapshot.GOALS, which the README states)
GOALS = {**HARD_GOALS, **SOFT_GOALS}


@pytest.mark.slow
def test_tiny_chain_meets_the_qc_and_annotation_goals(tiny_run):
    assert tiny_run.get("02_annotation") == 0, tiny_run
    found = {**json.loads((ROOT / "results" / "tiny" / "findings" / "01.json").read_text()),
             **json.loads((ROOT / "results" / "tiny" / "findings" / "02.json").read_text())}
    measured = {k: round(found[k], 3) for k in GOALS}
    print(f"\ntiny cohort QC/annotation against truth: {measured}")
    assert all(found[k] >= v for k, v in HARD_GOALS.items()), (measured, GOALS)
    assert found["unassigned_fraction"] < 0.05 and found["n_malignant"] > 0
    assert found["junk_removed_fraction"] > 0.5 and found["good_kept_fraction"] > 0.85  # floors against regressions
    missed = missed_goals(found)
    if missed:  # reported as XFAIL with the measured values
        pytest.xfail(f"goals missed {missed} (goals {SOFT_GOALS}): " + GOAL_GAP)


@pytest.mark.slow
def test_second_make_all_executes_nothing(tiny_run):
    if not list((ROOT / ".venv").glob(".installed-*")):
        pytest.skip("environment stamp absent (pytest run outside make); make's up-to-date check needs it")
    r = subprocess.run(["make", "-n", "all", "COHORT=tiny"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "helpers.runner run" not in r.stdout, \
        f"make all COHORT=tiny would re-execute notebooks although nothing changed:\n{r.stdout}"


@pytest.mark.slow
def test_broken_cohort_through_make_exits_2(tmp_path):
    """The Makefile reports a bad samples.csv with the named error and exit status 2."""
    cdir = ROOT / "data" / "cohorts" / "zz_broken_test"
    shutil.copytree(ROOT / "data" / "cohorts" / "tiny", cdir)
    try:
        text = (cdir / "cohort.yaml").read_text().replace("name: tiny", "name: zz_broken_test")
        (cdir / "cohort.yaml").write_text(text)
        s = (cdir / "samples.csv").read_text().replace(",NR,", ",PR,", 1)
        (cdir / "samples.csv").write_text(s)
        r = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "helpers.runner", "run", "--cohort",
                            "zz_broken_test", "--notebook", "notebooks/00_cohort.ipynb"], cwd=ROOT,
                           capture_output=True, text=True)
        assert r.returncode == 2 and "response 'PR' is not one of" in r.stderr
        r = subprocess.run(["make", "all", "COHORT=zz_broken_test"], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 2 and "response 'PR' is not one of" in r.stderr
    finally:
        shutil.rmtree(cdir, ignore_errors=True)
        shutil.rmtree(ROOT / "results" / "zz_broken_test", ignore_errors=True)


def _result_hashes(cohort: str = "tiny") -> dict[str, str]:
    import hashlib

    res = ROOT / "results" / cohort
    files = sorted([*(res / "findings").glob("*.json"), *(res / "tables").glob("*.csv"), res / "scorecard.csv"])
    return {f.relative_to(res).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.exists()}


@pytest.mark.slow
def test_two_runs_give_identical_results(tiny_run):
    """Determinism: the whole chain run a second time from scratch (cohort rebuilt) gives byte-identical findings
    JSON, results tables and scorecard. Run last: it replaces the first run's outputs with identical ones."""
    assert tiny_run and all(code == 0 for code in tiny_run.values()), tiny_run
    first = _result_hashes()
    assert len(first) > 20, first
    res = ROOT / "results" / "tiny"
    for d in (res / "findings", res / "tables", ROOT / "data" / "processed" / "tiny"):
        shutil.rmtree(d, ignore_errors=True)
    (res / "scorecard.csv").unlink(missing_ok=True)
    for nb in NOTEBOOKS:
        assert runner_main(["run", "--cohort", "tiny", "--notebook", str(nb)]) == 0, nb.stem
    second = _result_hashes()
    changed = sorted(k for k in set(first) | set(second) if first.get(k) != second.get(k))
    assert not changed, f"results differ between two runs: {changed}"
