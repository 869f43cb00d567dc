"""The README states the committed snapshots' verdicts, never pasted numbers: each quoted line equals what
helpers.report.scorecard.verdict_summary writes from the committed validation/<cohort>/scorecard.csv."""
from __future__ import annotations

import pandas as pd
import pytest

from helpers.report.scorecard import verdict_summary


def test_verdict_summary_names_the_rare_verdicts():
    card = pd.DataFrame({"claim": ["a", "b", "c", "d"],
                         "verdict": ["reproduced", "not reproduced", "not reproduced", "not testable: no cells"]})
    assert verdict_summary(card) == "1 of 4 reproduced (a); 2 not reproduced (b; c); 1 not testable (d: no cells)"
    card["verdict"] = "reproduced"
    assert verdict_summary(card) == "4 of 4 reproduced"


@pytest.mark.parametrize("cohort", ["ifm2017_sim", "ifm2017_null"])
def test_readme_quotes_the_committed_verdicts(root, cohort):
    card = pd.read_csv(root / "validation" / cohort / "scorecard.csv")
    line = f"`validation/{cohort}/scorecard.csv`: {verdict_summary(card)}"
    readme = (root / "README.md").read_text()
    assert line in readme, f"README.md should quote the committed verdicts of {cohort} as:\n{line}"


def test_readme_quotes_the_committed_benchmarks(root):
    """Every measured row of benchmarks/chain.tsv and peer.tsv is quoted in the README as benchmarks/run.py's
    readme_lines writes it (no benchmark number typed by hand)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_run", root / "benchmarks" / "run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    readme = (root / "README.md").read_text()
    missing = [line for line in bench.readme_lines(root / "benchmarks") if line not in readme]
    assert not missing, "README.md should quote the committed benchmark rows as:\n" + "\n".join(missing)
