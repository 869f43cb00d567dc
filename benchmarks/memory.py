"""Peak memory against cells of notebook 01's per-sample steps, with and without the per-sample (Dask) path.

For each size a scaled copy of the default design is built by notebook 00 (as in benchmarks/run.py), then the
same steps run twice in fresh processes: ``memory`` (the cohort in one AnnData: helpers.preprocessing.qc.qc_filter,
normalisation, HVGs, PCA) and ``dask`` (helpers.preprocessing.per_sample.preprocess_by_sample on a LocalCluster of two
single-threaded workers). The process tree's summed RSS is sampled every 0.2 s. Writes benchmarks/memory.tsv
and rewrites benchmarks/results.md.

    .venv/bin/python benchmarks/memory.py [--sizes 50000 100000 200000] [--per-sample 2300] [--keep]

``--per-sample`` grows the cohort by adding samples of a fixed size (the atlas case) instead of making the
21 samples larger: a worker's memory depends on the largest sample, the driver's on the number of cells.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, bench_cohort, merge_rows, parse_args, write_report  # noqa: E402

STEP = r"""
import json, sys, time
from pathlib import Path

def main(engine, cohort, out):
    import anndata as ad
    from helpers.preprocessing import integrate
    from helpers.preprocessing.normalise import normalize_log
    from helpers.preprocessing import per_sample
    from helpers.data.cohort import load_cohort
    from helpers.preprocessing.qc import qc_filter

    C = load_cohort(cohort)
    t = time.time()
    if engine == "memory":
        adata = ad.read_h5ad(C.processed_dir / "cells.h5ad")
        kept, table, thr = qc_filter(adata, seed=1)
        del adata
        normalize_log(kept)
        integrate.select_hvg(kept, n_top=2000, batch_key="sample_id")
        integrate.run_pca(kept, n_comps=50, seed=1)
        n_kept = kept.n_obs
    else:
        with per_sample.dask_client(n_workers=2) as client:
            pre = per_sample.preprocess_by_sample(C, Path(out).parent / "shards", client, seed=1, n_hvg=2000, n_pcs=50)
        n_kept = pre.embedding.n_obs
    Path(out).write_text(json.dumps({"seconds": time.time() - t, "n_kept": int(n_kept)}))

if __name__ == "__main__":
    main(*sys.argv[1:4])
"""


class CommandFailed(SystemExit):
    """A measured command exited non-zero: ``returncode``, the tail of its ``stderr`` and the ``measures`` taken
    until it ended (a SystemExit, so a caller that does not catch it stops with the message)."""

    def __init__(self, cmd: list[str], returncode: int, stderr: str, measures: dict[str, float]):
        self.cmd, self.returncode, self.stderr, self.measures = cmd, returncode, stderr, measures
        super().__init__(f"{' '.join(cmd)} failed (exit {returncode}):\n{stderr[-3000:]}")


def _is_driver(proc, driver: str | None, top) -> bool:
    """Whether ``proc`` is the driver: the top process when ``driver`` is None, else a process whose command line
    contains ``driver`` (e.g. 'ipykernel_launcher': the kernel a runner call starts)."""
    if driver is None:
        return proc.pid == top.pid
    try:
        return any(driver in part for part in proc.cmdline())
    except psutil.Error:
        return False


def fork_child(proc, parent_cmdline: dict[int, list[str]]) -> bool:
    """Whether ``proc`` is a fork of its parent that has not exec'd (the same command line as its parent, e.g. the
    worker a ``ProcessPoolExecutor`` forks, as infercnvpy does even with ``n_jobs=1``). ``parent_cmdline``: the
    command lines of the tree's processes by pid."""
    try:
        cmd = proc.cmdline()
        return cmd == parent_cmdline.get(proc.ppid())
    except psutil.Error:
        return False


def resident_bytes(proc, forked: bool) -> int:
    """Physical memory to charge to ``proc``: its RSS, or for a fork child (:func:`fork_child`) its unique set size
    (the pages only it holds): the pages it still shares copy-on-write with its parent are in the parent's RSS
    already, and summing both RSS would count them twice (a 10 GiB kernel forking one CNV worker would read as
    20 GiB)."""
    return proc.memory_full_info().uss if forked else proc.memory_info().rss


def measure(cmd: list[str], interval: float = 0.2, driver: str | None = None) -> dict[str, float]:
    """Run ``cmd`` (cwd: the project root, this process's environment) and return its wall ``seconds`` and the
    peaks (GiB) of its process tree, sampled every ``interval`` s: ``peak_total_gib`` (summed RSS of every
    process, a fork child counted by the memory it does not share with its parent: :func:`resident_bytes`),
    ``peak_driver_gib`` (the driver, see :func:`_is_driver`, with its fork children) and ``peak_worker_gib`` (the
    largest other process but the top one when a driver is named, e.g. a Dask worker, with its fork children).
    Raises :class:`CommandFailed` when the command exits non-zero. stderr goes to a temporary file (a pipe read at
    the end could fill and block a long run)."""
    peak_total = peak_main = peak_child = 0.0
    with tempfile.TemporaryFile(mode="w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True)
        top = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                procs = [top, *top.children(recursive=True)]
            except psutil.Error:
                procs = []
            cmdlines = {}
            for p in procs:
                try:
                    cmdlines[p.pid] = p.cmdline()
                except psutil.Error:
                    pass
            main = total = 0
            own: dict[int, int] = {}  # bytes per process, fork children added to their parent
            for p in procs:
                try:
                    forked = p.pid != top.pid and fork_child(p, cmdlines)
                    rss = resident_bytes(p, forked)
                except psutil.Error:
                    continue
                total += rss
                if _is_driver(p, driver, top):
                    main += rss
                elif p.pid != top.pid or driver is None:
                    key = p.ppid() if forked else p.pid
                    own[key] = own.get(key, 0) + rss
            peak_total, peak_main = max(peak_total, total), max(peak_main, main)
            peak_child = max([peak_child, *own.values()])
            time.sleep(interval)
        seconds = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read()
    g = 2.0 ** 30
    measures = {"seconds": round(seconds, 1), "peak_total_gib": round(peak_total / g, 2),
                "peak_driver_gib": round(peak_main / g, 2), "peak_worker_gib": round(peak_child / g, 2)}
    if proc.returncode != 0:
        raise CommandFailed(cmd, proc.returncode, stderr, measures)
    return measures


def sampled_peak(cmd: list[str], interval: float = 0.2, driver: str | None = None) -> dict[str, float]:
    """Run ``cmd``; the largest summed RSS of its process tree, of the driver (by default the top process), and
    of any one other process (GiB): :func:`measure` without the seconds."""
    measures = measure(cmd, interval, driver)
    measures.pop("seconds")
    return measures


def main() -> None:
    args = parse_args(__doc__)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "step.py"
        script.write_text(STEP)
        for n in args.sizes:
            with bench_cohort(n, args.keep, args.per_sample) as (name, cells):
                n_samples = len(pd.read_csv(ROOT / "data" / "cohorts" / name / "samples.csv"))
                for engine in ("memory", "dask"):
                    out = Path(tmp) / engine / "out.json"
                    out.parent.mkdir(exist_ok=True)
                    peaks = sampled_peak([sys.executable, str(script), engine, name, str(out)])
                    res = json.loads(out.read_text())
                    rows.append({"cells": cells, "samples": n_samples, "engine": engine, "seconds": round(res["seconds"]),
                                 "cells_kept": res["n_kept"], **peaks})
                    print(rows[-1], flush=True)
                    shutil.rmtree(out.parent / "shards", ignore_errors=True)
    out = ROOT / "benchmarks" / "memory.tsv"
    merge_rows(pd.DataFrame(rows), out, by=("samples", "cells", "engine")).to_csv(out, sep="\t", index=False)
    write_report()


if __name__ == "__main__":
    main()
