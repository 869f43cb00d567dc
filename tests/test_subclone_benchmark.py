"""The subclone caller on simulated cells with planted 1-3 clone structures (the development benchmark, small)."""
from __future__ import annotations

import pytest

from helpers.validation.subclone_benchmark import DEVELOPMENT_SEED, subclone_benchmark, truth_labelled_cells


@pytest.mark.slow
def test_benchmark_on_planted_clones():
    adata, truth = truth_labelled_cells(4, DEVELOPMENT_SEED, n_jobs=1)
    table, summary = subclone_benchmark(adata, truth)
    assert len(table) == 8 and set(table["planted"]) <= {1, 2, 3}
    assert summary["subclones_n_detectable"] >= 3, table
    # bound fixed before the first run: the rule-meeting patients are mostly called right
    assert summary["subclones_exact_agreement"] >= 0.5, table
    assert summary["n_single_clone_split"] <= 1, table
