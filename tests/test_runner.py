"""The papermill runner: atomic outputs, a failing notebook names its cell and keeps previous good outputs."""
from __future__ import annotations

import nbformat
import pytest

from helpers.runner import main as runner_main


def _nb(path, fail: bool):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell("cohort = 'x'\nroot = None")
    p.metadata["tags"] = ["parameters"]
    body = "raise ValueError('planted failure')" if fail else ("from helpers.data.cohort import load_cohort\n"
                                                      "(load_cohort(cohort, root=root).results_dir / 'ok.txt').write_text(cohort)")
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), p, nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.mark.slow
def test_failure_names_cell_and_keeps_previous_output(scratch_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DR_ROOT", str(scratch_root))
    nbp = tmp_path / "99_probe.ipynb"
    _nb(nbp, fail=False)
    assert runner_main(["run", "--cohort", "tiny", "--notebook", str(nbp)]) == 0
    out = scratch_root / "results" / "tiny" / "notebooks" / "99_probe.ipynb"
    html = scratch_root / "results" / "tiny" / "html" / "99_probe.html"
    assert out.exists() and html.exists()
    assert (scratch_root / "results" / "tiny" / "ok.txt").read_text() == "tiny"  # parameters were injected
    good = out.read_bytes()
    _nb(nbp, fail=True)
    assert runner_main(["run", "--cohort", "tiny", "--notebook", str(nbp)]) == 1
    err = capsys.readouterr().err
    assert "99_probe" in err and "cell" in err and "planted failure" in err
    assert out.read_bytes() == good  # previous good output intact
    assert (scratch_root / "results" / "tiny" / "notebooks" / "99_probe.failed.ipynb").exists()
    assert not list((scratch_root / "results" / "tiny" / "notebooks").glob(".*tmp*"))


def test_missing_notebook_exit_2(scratch_root, monkeypatch):
    monkeypatch.setenv("DR_ROOT", str(scratch_root))
    assert runner_main(["run", "--cohort", "tiny", "--notebook", "notebooks/none.ipynb"]) == 2


def test_not_testable_summary_printed_when_written_by_this_run(tmp_path, capsys):
    import os
    import time

    from helpers.report.scorecard import NOT_TESTABLE_FILE
    from helpers.runner import print_not_testable

    t0 = time.time()
    print_not_testable(tmp_path, since=t0)  # no summary: nothing printed
    (tmp_path / NOT_TESTABLE_FILE).write_text("Not testable on cohort 'x': 1 of 10 scorecard claims\n")
    print_not_testable(tmp_path, since=t0 - 1)
    assert capsys.readouterr().out == "Not testable on cohort 'x': 1 of 10 scorecard claims\n"
    os.utime(tmp_path / NOT_TESTABLE_FILE, (t0 - 100, t0 - 100))  # left by an earlier run: not repeated
    print_not_testable(tmp_path, since=t0)
    assert capsys.readouterr().out == ""


def test_kernel_that_dies_at_start_up_is_restarted_but_cell_errors_are_not(monkeypatch):
    import helpers.runner as runner

    monkeypatch.setattr(runner.time, "sleep", lambda s: None)
    calls = []

    def dies_twice(*args, **kwargs):
        calls.append((args, kwargs))
        if len(calls) < 3:
            raise RuntimeError("Kernel died before replying to kernel_info")
        return "executed"

    assert runner.execute_with_kernel_retry(dies_twice, "in.ipynb", "out.ipynb", kernel_name="python3") == "executed"
    assert len(calls) == 3 and all(c == (("in.ipynb", "out.ipynb"), {"kernel_name": "python3"}) for c in calls)

    def always_dies(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("Kernel died before replying to kernel_info")

    calls.clear()
    with pytest.raises(RuntimeError, match="kernel_info"):
        runner.execute_with_kernel_retry(always_dies, attempts=3)
    assert len(calls) == 3  # gives up after the last attempt

    def other_error(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("a cell failed")

    calls.clear()
    with pytest.raises(RuntimeError, match="a cell failed"):
        runner.execute_with_kernel_retry(other_error)
    assert len(calls) == 1  # anything else is not retried
