"""Notebooks are kept in git without outputs (enforced here) and each has one tagged parameters cell."""
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
