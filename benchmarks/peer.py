"""A peer, side by side, in the same run: the plain scanpy workflow a user would otherwise write against the
compendium's core pipeline (notebooks 01 QC + integration and 02 annotation), on the same cells.

For each size a scaled copy of the default cohort (its 21 bone-marrow samples made larger, as in
benchmarks/run.py) is built by notebook 00 (not timed), then, one after the other, in fresh processes measured by
the same harness (benchmarks/memory.py ``measure``: wall time and the summed RSS of the process tree sampled every
0.2 s) with the same thread limits (OMP_NUM_THREADS etc. = DR_THREADS, default 2):

* OURS: notebooks 01_qc_integration and 02_annotation through the runner (``python -m helpers.runner run``), the
  cohort as configured (in-memory engine); seconds = the sum of the two, peak = the larger peak_total_gib;
* PEER: benchmarks/peer_workflow.py (scanpy tutorial defaults, Scrublet per sample, Leiden, UMAP, Wilcoxon
  markers, cluster labels from a marker dict, pseudobulk + pydeseq2 per cell type) on the cohort's cells.h5ad.

Writes benchmarks/peer.tsv (cells, ours_s, peer_s, ratio = peer_s / ours_s, ours_peak_gib, peer_peak_gib; one row
per size, merged with earlier runs), benchmarks/peer_details.tsv (seconds per notebook of ours, per stage of the
peer) and rewrites benchmarks/results.md; all after each size, so a killed run keeps the finished sizes. A size
already in the table is skipped unless --force.

    .venv/bin/python benchmarks/peer.py [--sizes 50000 100000 200000] [--force] [--keep]
    .venv/bin/python benchmarks/peer.py --sizes 8000 --out /tmp/peer_test.tsv   # a test: results.md untouched
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import CommandFailed, measure  # noqa: E402
from run import ROOT, bench_cohort, measured_points, merge_rows, peer_lines, write_report  # noqa: E402

from helpers.runner import pin_environment  # noqa: E402

OURS = ("01_qc_integration", "02_annotation")
PEER_SCRIPT = Path(__file__).resolve().parent / "peer_workflow.py"
DEFAULT_OUT = ROOT / "benchmarks" / "peer.tsv"
COLUMNS = ["cells", "ours_s", "peer_s", "ratio", "ours_peak_gib", "peer_peak_gib"]
KERNEL = "ipykernel_launcher"  # the driver of a runner call: the notebook's kernel


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[50_000, 100_000, 200_000], help="cells per cohort")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the table (default benchmarks/peer.tsv)")
    ap.add_argument("--details", type=Path, default=None,
                    help="per-notebook / per-stage seconds (default: <out stem>_details.tsv next to --out)")
    ap.add_argument("--force", action="store_true", help="re-measure sizes already in the table")
    ap.add_argument("--keep", action="store_true", help="keep the benchmark cohorts' data, results and figures")
    args = ap.parse_args()
    args.out = args.out.resolve()
    args.details = (args.details or args.out.with_name(f"{args.out.stem}_details.tsv")).resolve()
    return args


def runner_cmd(cohort: str, notebook: str) -> list[str]:
    """The runner call `make all` makes for one notebook."""
    return [sys.executable, "-m", "helpers.runner", "run", "--cohort", cohort, "--notebook",
            f"notebooks/{notebook}.ipynb"]


def run_ours(cohort: str, cells: int) -> list[dict]:
    """Notebooks 01 and 02 on ``cohort``, each measured in its own runner process: one details row each."""
    rows = []
    for step, nb in enumerate(OURS, 1):
        try:
            m = measure(runner_cmd(cohort, nb), driver=KERNEL)
        except CommandFailed as e:
            raise SystemExit(f"peer.py: ours, notebook {nb}, failed on cohort {cohort} ({cells} cells; exit "
                             f"{e.returncode}):\n{e.stderr[-3000:]}") from None
        rows.append({"cells": cells, "side": "ours", "step": step, "stage": nb, **m})
        print(f"[peer.py] {cells} cells, ours {nb}: {m}", flush=True)
    return rows


def run_peer(cohort: str, cells: int, tmp: Path) -> list[dict]:
    """The peer workflow on the cohort's cells.h5ad in one process: one details row per stage, then its total."""
    h5ad = ROOT / "data" / "processed" / cohort / "cells.h5ad"
    out = tmp / f"{cohort}_peer.json"
    try:
        m = measure([sys.executable, str(PEER_SCRIPT), str(h5ad), str(out)])
    except CommandFailed as e:
        raise SystemExit(f"peer.py: the peer workflow failed on {h5ad} (cohort {cohort}, {cells} cells; exit "
                         f"{e.returncode}):\n{e.stderr[-3000:]}") from None
    res = json.loads(out.read_text())
    rows = [{"cells": cells, "side": "peer", "step": i, "stage": stage, "seconds": s}
            for i, (stage, s) in enumerate(res["stages"].items(), 1)]
    rows.append({"cells": cells, "side": "peer", "step": len(rows) + 1, "stage": "total", **m})
    print(f"[peer.py] {cells} cells, peer: {m}; kept {res['n_cells_kept']} of {res['n_cells_in']} cells, "
          f"{res['n_clusters']} clusters, DE genes (padj < 0.05) per cell type {res['de_genes_padj_0.05']}",
          flush=True)
    return rows


def summary_row(cells: int, details: list[dict]) -> dict:
    """The peer.tsv row of one size from its details rows."""
    ours = [r for r in details if r["side"] == "ours"]
    peer = next(r for r in details if r["side"] == "peer" and r["stage"] == "total")
    ours_s = sum(r["seconds"] for r in ours)
    return {"cells": cells, "ours_s": round(ours_s, 1), "peer_s": round(peer["seconds"], 1),
            "ratio": round(peer["seconds"] / ours_s, 2), "ours_peak_gib": max(r["peak_total_gib"] for r in ours),
            "peer_peak_gib": peer["peak_total_gib"]}


def write_tables(row: dict, details: list[dict], out: Path, details_out: Path) -> pd.DataFrame:
    """Merge one size into the table and the details (a size measured again replaces its earlier rows)."""
    table = merge_rows(pd.DataFrame([row], columns=COLUMNS), out, derived=("ratio",))
    table["ratio"] = (table["peer_s"] / table["ours_s"]).round(2)
    table[COLUMNS].to_csv(out, sep="\t", index=False)
    det = merge_rows(pd.DataFrame(details), details_out)
    det = det.sort_values(["cells", "side", "step"], kind="stable", ignore_index=True)
    det.to_csv(details_out, sep="\t", index=False)
    return table


def main() -> None:
    args = parse_args()
    pin_environment(ROOT)  # the thread limits and caches the runner gives the notebooks, for the peer too
    skip = set() if args.force else measured_points(args.out, args.sizes)
    for n in skip:
        print(f"[peer.py] {n} cells: already in {args.out}, skipped (--force to re-measure)")
    with tempfile.TemporaryDirectory() as tmp:
        for n in [s for s in args.sizes if s not in skip]:
            with bench_cohort(n, args.keep) as (name, cells):
                details = run_ours(name, cells) + run_peer(name, cells, Path(tmp))
                row = summary_row(cells, details)
                write_tables(row, details, args.out, args.details)
                print(f"[peer.py] {row} -> {args.out}", flush=True)
                if args.out == DEFAULT_OUT:
                    write_report()
    if args.out != DEFAULT_OUT:  # a test run: the committed report is left alone
        print("\n".join(peer_lines(args.out)))


if __name__ == "__main__":
    main()
