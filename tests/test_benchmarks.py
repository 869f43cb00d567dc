"""The benchmark harness's memory accounting (benchmarks/memory.py ``measure``): a fork child is charged the
memory it does not share with its parent, not its whole RSS."""
import sys
import textwrap
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from memory import measure  # noqa: E402

PARENT_MB = 600

SCRIPT = textwrap.dedent("""
    import multiprocessing as mp, sys, time
    import numpy as np

    def child(own_mb):
        extra = np.ones(own_mb * 2**20 // 8) if own_mb else None  # pages only the child holds
        time.sleep(2.0)

    if __name__ == "__main__":
        held = np.ones({parent_mb} * 2**20 // 8)  # touched: resident in the parent, shared with the fork
        p = mp.get_context("fork").Process(target=child, args=(int(sys.argv[1]),))
        p.start(); p.join()
        sys.exit(p.exitcode)
""")


@pytest.fixture
def forking_script(tmp_path):
    path = tmp_path / "fork.py"
    path.write_text(SCRIPT.format(parent_mb=PARENT_MB))
    return path


def test_fork_child_shared_pages_counted_once(forking_script):
    peaks = measure([sys.executable, str(forking_script), "0"], interval=0.1)
    # summing the two RSS would read ~2 x 600 MB; the fork holds almost nothing of its own
    assert PARENT_MB / 1024 * 0.9 < peaks["peak_total_gib"] < PARENT_MB / 1024 * 1.35


def test_fork_child_own_memory_counted(forking_script):
    peaks = measure([sys.executable, str(forking_script), "400"], interval=0.1)
    assert peaks["peak_total_gib"] > (PARENT_MB + 400 * 0.9) / 1024
    assert peaks["peak_total_gib"] < (2 * PARENT_MB + 400) / 1024 * 0.85


# --- benchmarks/chain.py: a size stopped before its last notebook resumes from the first one not measured ---

NOTEBOOKS = ["00_cohort", "01_qc_integration", "02_annotation", "03_inflammation"]
SETTINGS = {"power_reps": 20, "n_perm": 100}


def _details(tmp_path, rows):
    import pandas as pd

    base = {"samples": 400, **SETTINGS, "seconds": 10.0, "peak_total_gib": 1.0, "peak_driver_gib": 0.5,
            "peak_worker_gib": 0.4, "error": ""}
    path = tmp_path / "chain_details.tsv"
    pd.DataFrame([{**base, **r} for r in rows]).to_csv(path, sep="\t", index=False)
    return path


def _unfinished(path, built=True, settings=SETTINGS, samples=400):
    from chain import unfinished_rows

    return unfinished_rows(path, 1_000_000, samples, settings, NOTEBOOKS, built)


def test_a_stopped_size_resumes_after_its_measured_notebooks(tmp_path):
    path = _details(tmp_path, [
        {"cells": 101_114, "samples": 40, "notebook": nb, "status": "ok"} for nb in NOTEBOOKS] + [
        {"cells": 1_012_345, "notebook": nb, "status": "ok"} for nb in NOTEBOOKS[:2]])
    rows = _unfinished(path)
    assert [r["notebook"] for r in rows] == NOTEBOOKS[:2] and {r["cells"] for r in rows} == {1_012_345}


@pytest.mark.parametrize("case", ["complete", "failed", "not_built", "other_settings", "other_samples", "gap"])
def test_nothing_to_resume_starts_the_size_afresh(tmp_path, case):
    rows = [{"cells": 1_012_345, "notebook": nb, "status": "ok"} for nb in NOTEBOOKS[:2]]
    if case == "complete":
        rows = [{"cells": 1_012_345, "notebook": nb, "status": "ok"} for nb in NOTEBOOKS]
    elif case == "failed":
        rows[-1]["status"] = "failed"
    elif case == "gap":
        rows[-1]["notebook"] = NOTEBOOKS[2]
    path = _details(tmp_path, rows)
    kwargs = {"not_built": {"built": False}, "other_settings": {"settings": {**SETTINGS, "n_perm": 20}},
              "other_samples": {"samples": 401}}.get(case, {})
    assert _unfinished(path, **kwargs) == []


def test_a_cohort_missing_files_its_index_names_is_not_resumed(tmp_path):
    """A resumed size needs its cohort whole: cells.h5ad and every per-sample file an index on disk names (a run
    that found integrated.h5ad without its shards failed in notebook 02 instead of starting afresh)."""
    from chain import missing_cohort_files

    from helpers.io import index_h5ad_rows

    assert missing_cohort_files(tmp_path) == [tmp_path / "cells.h5ad"]
    (tmp_path / "shards").mkdir()
    files = []
    for s in ("S0", "S1"):
        a = ad.AnnData(X=sp.csr_matrix(np.ones((3, 2), dtype=np.float32)),
                       obs=pd.DataFrame({"sample_id": [s] * 3}, index=[f"{s}_c{k}" for k in range(3)]),
                       var=pd.DataFrame(index=["G0", "G1"]))
        files.append(tmp_path / "shards" / f"{s}.h5ad")
        a.write_h5ad(files[-1])
    index_h5ad_rows(files, tmp_path / "cells.h5ad")
    index_h5ad_rows(files, tmp_path / "integrated.h5ad")
    assert missing_cohort_files(tmp_path) == []
    files[1].unlink()
    assert missing_cohort_files(tmp_path) == [files[1].resolve()] * 2


def test_a_size_measured_in_part_is_reported_with_where_it_resumes(tmp_path):
    import pandas as pd
    from run import readme_lines, unfinished_sizes

    rows = [{"cells": 1_012_345, "notebook": nb, "status": "ok"} for nb in NOTEBOOKS[:2]]
    details = _details(tmp_path, rows)
    table = tmp_path / "chain.tsv"
    (sizes,) = unfinished_sizes(table, details)
    assert (sizes["first"], sizes["last"], sizes["next"], sizes["seconds"]) == ("00", "01", "02_annotation", 20.0)
    assert any("1,012,345 cells" in line and "resumes at notebook 02_annotation" in line
               for line in readme_lines(tmp_path))
    pd.DataFrame([{"cells": 1_003_000, "samples": 400, "engine": "dask", "seconds": 1, "peak_total_gib": 1,
                   "peak_driver_gib": 1, "peak_worker_gib": 1}]).to_csv(table, sep="\t", index=False)
    assert unfinished_sizes(table, details) == []  # that size completed in another run
    table.unlink()
    rows[-1]["status"] = "failed"
    assert unfinished_sizes(table, _details(tmp_path, rows)) == []  # failed, not resumable


def test_a_resumed_chain_measures_only_the_notebooks_left_and_saves_after_each(monkeypatch):
    import chain

    measured, saved = [], []
    monkeypatch.setattr(chain, "chain_notebooks", lambda: NOTEBOOKS[:3])
    monkeypatch.setattr(chain, "measure", lambda cmd, driver=None: measured.append(cmd[-1]) or {
        "seconds": 1.0, "peak_total_gib": 2.0, "peak_driver_gib": 1.0, "peak_worker_gib": 0.5})
    done = [{"cells": 1_012_345, "samples": 21, "notebook": NOTEBOOKS[0], **SETTINGS, "status": "ok", "seconds": 9.0}]
    rows, cells = chain.run_chain("ifm2017_sim", 1_000_000, SETTINGS, done,
                                  on_row=lambda r: saved.append([x["notebook"] for x in r]))
    assert measured == [f"notebooks/{nb}.ipynb" for nb in NOTEBOOKS[1:3]]
    assert saved == [NOTEBOOKS[:2], NOTEBOOKS[:3]] and cells == 1_012_345
    assert [r["cells"] for r in rows] == [1_012_345] * 3 and chain.summary_row(rows)["seconds"] == 11


@pytest.mark.parametrize("ratio, ours, peer, verdict", [
    (1.64, 6.39, 6.23, "memory missed (ours above the peer's)"),
    (1.49, 5.0, 6.0, "speed missed (goal >= 1.5)"),
    (1.2, 7.0, 6.0, "speed missed (goal >= 1.5); memory missed (ours above the peer's)"),
    (1.5, 6.0, 6.0, "goal met: >= 1.5x faster at no more memory"),
])
def test_peer_rows_say_whether_the_goal_is_met(ratio, ours, peer, verdict, tmp_path):
    from run import peer_goal_verdict, readme_lines

    assert peer_goal_verdict(ratio, ours, peer) == verdict
    pd.DataFrame([{"cells": 1000, "ours_s": 10.0, "peer_s": 10.0 * ratio, "ratio": ratio, "ours_peak_gib": ours,
                   "peer_peak_gib": peer}]).to_csv(tmp_path / "peer.tsv", sep="\t", index=False)
    assert readme_lines(tmp_path)[-1].endswith(f"; {verdict})")


def test_notebook_stages_lists_the_slowest_cells_from_papermill_durations(tmp_path):
    import json

    from chain import notebook_stages

    def code(src, seconds):
        meta = {"papermill": {"duration": seconds}} if seconds is not None else {}
        return {"cell_type": "code", "source": src, "metadata": meta, "outputs": []}

    cells = [code("x = 1", 0.5), {"cell_type": "markdown", "source": "# title", "metadata": {}},
             code("\n# QC per sample\nqc = run()", 60.0), code(["fit = ", "umap()"], 30.0), code("late()", None),
             code("plot()", 9.5)]
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    st = notebook_stages(path)
    assert list(st["cell"]) == [1, 2, 4] and list(st["stage"]) == ["# QC per sample", "fit = umap()", "plot()"]
    assert st["share"].tolist() == [0.6, 0.3, 0.095]  # of the 100 s the timed cells took; x = 1 (0.5%) left out
    assert notebook_stages(path, top=1)["cell"].tolist() == [1]
    path.write_text(json.dumps({"cells": [code("x = 1", None)], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert notebook_stages(path).empty
