"""The benchmark harness's memory accounting (benchmarks/memory.py ``measure``): a fork child is charged the
memory it does not share with its parent, not its whole RSS."""
import sys
import textwrap
from pathlib import Path

import pytest

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
