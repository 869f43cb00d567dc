"""Notebooks are kept in git without outputs (enforced here), each has one tagged parameters cell whose defaults
work when it is opened in JupyterLab, and each is paired with a jupytext percent script that matches it."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHAIN = ["00_cohort", "01_qc_integration", "02_annotation", "03_inflammation", "04_monocytes", "05_nk_cd16",
         "06_tumour_nfkb", "07_classifier", "08_resistance_atlas", "09_power", "10_scorecard"]


def test_chain_names():
    assert NOTEBOOKS, "no notebooks found"
    names = [p.stem for p in NOTEBOOKS]
    assert all(n in CHAIN for n in names), names
    assert names == [n for n in CHAIN if n in names]  # numbered in chain order
    assert names[0] == "00_cohort"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stripped_and_parameterised(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for c in code:
        assert not c.get("outputs"), f"{path.name}: committed with outputs (run nbstripout)"
        assert c.get("execution_count") is None, f"{path.name}: execution counts committed"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    src = "".join(tagged[0]["source"])
    names = {t.id for node in ast.parse(src).body if isinstance(node, ast.Assign) for t in node.targets}
    from helpers.data.cohort import load_cohort, notebook_parameters
    expected = set(notebook_parameters(load_cohort("tiny", root=ROOT), path.stem))
    assert expected <= names, f"{path.name}: parameters cell lacks {expected - names}"
    # the first markdown cell says what the notebook reproduces
    assert nb["cells"][0]["cell_type"] == "markdown"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_paired_script_in_sync(path):
    """The percent-format .py next to each .ipynb (what reviewers read and diff) holds the same cells:
    after editing one, run ``jupytext --sync notebooks/*.ipynb`` (JupyterLab with jupytext does it on save)."""
    import jupytext

    script = path.with_suffix(".py")
    assert script.exists(), f"{path.name} has no paired script: jupytext --set-formats ipynb,py:percent {path}"
    nb, py = jupytext.read(path), jupytext.read(script)
    assert nb.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent", f"{path.name}: not paired"
    cells = lambda n: [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in n.cells]  # noqa: E731
    assert cells(nb) == cells(py), f"{path.name} and {script.name} differ: jupytext --sync {path}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_work_as_opened(path):
    """Defaults a reader can run: the cohort is the default one, the project root is found, not a relative path."""
    nb = json.loads(path.read_text())
    src = next("".join(c["source"]) for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    values = {t.id: ast.literal_eval(node.value) for node in ast.parse(src).body if isinstance(node, ast.Assign)
              for t in node.targets}
    assert values["cohort"] == "ifm2017_sim" and values["root"] is None, values
    assert not {"processed_dir", "results_dir", "figures_dir"} & set(values), "folders come from the cohort"
