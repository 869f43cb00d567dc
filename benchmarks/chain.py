"""The whole chain against cells: wall time and peak memory of notebooks 00..10, one after the other through the
runner, on cohorts grown by samples of ~2,500 bone-marrow cells (the atlas case: more patients, not larger
samples), with the per-sample (Dask) engine.

For each size a copy of the default design is defined with ``scaled_cohort(n, per_sample=2500)`` (benchmarks/run.py:
``make_design``'s balanced CR/NR marrow sheet, blood dropped) and its ``analysis:`` block set to
``{engine: dask, power_reps: --power-reps, n_perm: --n-perm}`` (fewer power repetitions and classifier
permutations than ``make all``; both are cohort parameters). Every notebook, 00 included (the simulation is timed),
runs in its own runner process (``python -m helpers.runner run``) measured by benchmarks/memory.py ``measure``:
wall seconds and the RSS of the whole process tree sampled every 0.2 s (runner + kernel + Dask workers), the
kernel's alone (driver) and the largest other process (worker). Intermediates are written with
DR_H5AD_COMPRESSION=lzf unless the environment sets it; threads are pinned to DR_THREADS (default 2).

Writes benchmarks/chain.tsv (cells, samples, engine, seconds, peak_total_gib, peak_driver_gib, peak_worker_gib;
one row per completed size: seconds summed and peaks maxed over the notebooks, cells = cells simulated),
benchmarks/chain_details.tsv (one row per size x notebook, with status and, for a failed notebook, the last lines
of its error) and benchmarks/chain_stages.tsv (where each notebook's time went: the slowest cells of the executed
notebook, from papermill's per-cell durations; :func:`notebook_stages`), rewritten after each size together with
benchmarks/results.md. A size already in chain.tsv
is skipped unless --force. A failing notebook is recorded and stops its size (and, without --keep-going, the
run; exit status 1). After each size the cohort's data, results, figures and definition are deleted unless --keep.

Resumable per notebook: chain_details.tsv is rewritten after every notebook, and a size whose earlier run was
stopped (killed, or the session ended) before its last notebook keeps its cohort on disk; run again, it goes on from
the first notebook not measured if the cohort is still whole (:func:`missing_cohort_files`; else it starts afresh).
Each notebook is measured in its own process, so a size can span sessions: its seconds are summed and its peaks
maxed over the rows, whichever session measured them. --force starts afresh.

    .venv/bin/python benchmarks/chain.py [--sizes 100000 250000 500000 1000000] [--power-reps 20] [--n-perm 100]
                                         [--force] [--keep] [--keep-going] [--commit]
    .venv/bin/python benchmarks/chain.py --sizes 10000 --out /tmp/chain_test.tsv --power-reps 2 --n-perm 20
    .venv/bin/python benchmarks/chain.py --sizes 1000000 --stages-only   # stages of a cohort still on disk

--commit: after each size, commit benchmarks/chain.tsv, chain_details.tsv and results.md (only those paths;
other staged work is left staged) with the message "bench: whole chain at N cells"; and chain_details.tsv after
each notebook of a size not finished yet.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import CommandFailed, measure  # noqa: E402
from run import (ROOT, chain_lines, measured_points, merge_rows, remove_cohort, same_size, scaled_cohort,  # noqa: E402
                 scaled_cohort_name, write_report)

from helpers.io import indexed_files, read_annotations  # noqa: E402
from helpers.runner import pin_environment  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "chain.tsv"
COLUMNS = ["cells", "samples", "engine", "seconds", "peak_total_gib", "peak_driver_gib", "peak_worker_gib"]
PEAKS = ["peak_total_gib", "peak_driver_gib", "peak_worker_gib"]
KERNEL = "ipykernel_launcher"  # the driver of a runner call: the notebook's kernel
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[100_000, 250_000, 500_000, 1_000_000],
                    help="cells per cohort")
    ap.add_argument("--per-sample", type=int, default=2500, help="cells per sample (the cohort grows by samples)")
    ap.add_argument("--power-reps", type=int, default=20, help="the cohort's analysis: power_reps (notebooks 08, 09)")
    ap.add_argument("--n-perm", type=int, default=100, help="the cohort's analysis: n_perm (notebook 07)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the table (default benchmarks/chain.tsv)")
    ap.add_argument("--details", type=Path, default=None,
                    help="one row per size x notebook (default: <out stem>_details.tsv next to --out)")
    ap.add_argument("--force", action="store_true", help="re-measure sizes already in the table")
    ap.add_argument("--keep", action="store_true", help="keep each cohort's data, results, figures, definition")
    ap.add_argument("--keep-going", action="store_true", help="after a failed size, go on with the next sizes")
    ap.add_argument("--stages-only", action="store_true",
                    help="measure nothing: write chain_stages.tsv rows from the executed notebooks of each size's "
                         "cohort still on disk (a stopped or --keep run)")
    ap.add_argument("--commit", action="store_true",
                    help="git commit the tables and results.md after each size (only with the default --out)")
    args = ap.parse_args()
    args.out = args.out.resolve()
    args.details = (args.details or args.out.with_name(f"{args.out.stem}_details.tsv")).resolve()
    args.stages = args.out.with_name(f"{args.out.stem}_stages.tsv")
    if args.commit and args.out != DEFAULT_OUT:
        ap.error(f"--commit commits benchmarks/chain.tsv: it cannot be used with --out {args.out}")
    return args


def chain_notebooks() -> list[str]:
    """The numbered notebooks in chain order (00_cohort ... 10_scorecard)."""
    return sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def define_cohort(n_cells: int, per_sample: int, power_reps: int, n_perm: int, fresh: bool = True) -> str:
    """A benchmark cohort of ~n_cells in samples of ``per_sample`` cells, Dask engine: only its definition
    (notebook 00 builds it, timed); with ``fresh``, outputs of an earlier cohort of that name are removed first
    (else kept, for a resumed size)."""
    analysis = {"engine": "dask", "power_reps": power_reps, "n_perm": n_perm}
    name = scaled_cohort(n_cells, per_sample=per_sample, analysis=analysis)
    if fresh:
        for d in (ROOT / "data" / "processed" / name, ROOT / "results" / name, ROOT / "figures" / name):
            shutil.rmtree(d, ignore_errors=True)
    return name


def unfinished_rows(details: Path, n_cells: int, n_samples: int, settings: dict, notebooks: list[str],
                    built: bool) -> list[dict]:
    """The rows of an earlier run of this size that stopped before its last notebook, to resume from: every row
    of the size ``ok``, its notebooks the first ones of ``notebooks`` (in order, not all of them), measured with
    the same number of samples and ``settings``, and the cohort still ``built`` (whole on disk:
    :func:`missing_cohort_files`). Empty otherwise (nothing to resume: the size starts afresh)."""
    if not built or not details.exists():
        return []
    det = pd.read_csv(details, sep="\t", keep_default_na=False)
    rows = det[same_size(det["cells"], n_cells)]
    if rows.empty or len(rows) >= len(notebooks) or (rows["status"] != "ok").any():
        return []
    if list(rows["notebook"]) != notebooks[:len(rows)] or (rows["samples"] != n_samples).any():
        return []
    if any((rows[k] != v).any() for k, v in settings.items()):
        return []
    return rows.to_dict("records")


def missing_cohort_files(processed_dir: Path) -> list[Path]:
    """What a cohort on disk lacks to be resumed: its cells.h5ad, or any per-sample file that one of its .h5ad files
    names (:func:`helpers.io.indexed_files`: notebook 00's samples, 01/02's shards). Empty when it is whole."""
    cells = processed_dir / "cells.h5ad"
    if not cells.exists():
        return [cells]
    named = [f for h5ad in sorted(processed_dir.glob("*.h5ad")) for f in (indexed_files(h5ad) or {}).values()]
    return [f for f in named if not f.exists()]


STAGE_COLUMNS = ["cells", "notebook", "cell", "stage", "seconds", "share"]
MIN_STAGE_SHARE = 0.05  # a cell taking at least this share of its notebook's cell time is a stage worth listing


def notebook_stages(ipynb: Path, top: int = 5, min_share: float = MIN_STAGE_SHARE) -> pd.DataFrame:
    """Where an executed notebook's time went: its code cells by papermill's recorded duration, the ``top`` slowest
    that each take at least ``min_share`` of the cells' summed seconds (cell = index among code cells from 0, stage =
    the cell's first source line, seconds, share). Empty when the notebook has no papermill durations. The cells'
    sum is less than the notebook's measured seconds: kernel start, parameters and the runner's HTML export are not
    in a cell."""
    nb = json.loads(Path(ipynb).read_text())
    rows = []
    for i, cell in enumerate(c for c in nb.get("cells", []) if c.get("cell_type") == "code"):
        seconds = (cell.get("metadata", {}).get("papermill") or {}).get("duration")
        if seconds is None:
            continue
        src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        first = next((line.strip() for line in src.splitlines() if line.strip()), "")
        rows.append({"cell": i, "stage": first[:100], "seconds": round(float(seconds), 1)})
    d = pd.DataFrame(rows, columns=["cell", "stage", "seconds"])
    if d.empty:
        return d.assign(share=pd.Series(dtype=float))
    d["share"] = (d["seconds"] / d["seconds"].sum()).round(3)
    return d[d["share"] >= min_share].nlargest(top, "seconds").reset_index(drop=True)


def stage_rows(cohort: str, cells: int, notebooks: list[str]) -> pd.DataFrame:
    """:func:`notebook_stages` of each of ``notebooks`` executed for ``cohort`` (those not on disk are skipped), as
    chain_stages.tsv rows."""
    parts = []
    for nb in notebooks:
        path = ROOT / "results" / cohort / "notebooks" / f"{nb}.ipynb"
        if path.exists():
            parts.append(notebook_stages(path).assign(cells=cells, notebook=nb))
    return pd.concat(parts)[STAGE_COLUMNS] if parts else pd.DataFrame(columns=STAGE_COLUMNS)


def write_stages(rows: pd.DataFrame, out: Path) -> None:
    """Merge one size's stage rows into ``out`` (a size written again replaces its earlier rows)."""
    if rows.empty:
        return
    merged = merge_rows(rows, out)[STAGE_COLUMNS]
    merged.sort_values(["cells", "notebook", "seconds"], ascending=[True, True, False], kind="stable",
                       ignore_index=True).to_csv(out, sep="\t", index=False)


def runner_cmd(cohort: str, notebook: str) -> list[str]:
    """The runner call `make all` makes for one notebook."""
    return [sys.executable, "-m", "helpers.runner", "run", "--cohort", cohort, "--notebook",
            f"notebooks/{notebook}.ipynb"]


def notebook_traceback(cohort: str, notebook: str, n_lines: int = 6) -> str:
    """The last lines of the traceback in the runner's failed copy of ``notebook`` (empty if there is none)."""
    failed = ROOT / "results" / cohort / "notebooks" / f"{notebook}.failed.ipynb"
    if not failed.exists():
        return ""
    nb = json.loads(failed.read_text())
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                lines = ANSI.sub("", "\n".join(out.get("traceback", []))).splitlines()
                return "\n".join([line for line in lines if line.strip()][-n_lines:])
    return ""


def error_summary(e: CommandFailed, traceback: str) -> str:
    """One line for the TSV: the runner's ERROR line (or the last stderr lines) and the end of the traceback."""
    lines = [ANSI.sub("", line).strip() for line in e.stderr.splitlines()]
    lines = [line for line in lines if line and "IPKernelApp" not in line]
    head = next((line for line in lines if line.startswith("ERROR")), " | ".join(lines[-3:]))
    tail = " | ".join(line.strip() for line in traceback.splitlines()[-2:])
    text = f"exit {e.returncode}: {head}" + (f" || {tail}" if tail else "")
    return re.sub(r"\s+", " ", text)[:700]


def run_chain(cohort: str, n_cells: int, settings: dict, done: list[dict] | None = None,
              on_row: Callable[[list[dict]], None] | None = None) -> tuple[list[dict], int | None]:
    """Every notebook of the chain on ``cohort`` after those already ``done`` (their details rows, from
    :func:`unfinished_rows`), each measured in its own runner process, stopping at the first that fails: (one
    details row per notebook, ``done`` first; the cells notebook 00 simulated or None if it failed). ``on_row`` is
    called with the rows so far after every notebook (to write them: a stopped run keeps what it measured)."""
    n_samples = len(pd.read_csv(ROOT / "data" / "cohorts" / cohort / "samples.csv"))
    rows = [dict(r) for r in done or []]
    cells = int(rows[0]["cells"]) if rows else None
    measured = {r["notebook"] for r in rows}
    for nb in chain_notebooks():
        if nb in measured:
            print(f"[chain.py] {cells} cells, {nb}: measured in an earlier run, resumed after it", flush=True)
            continue
        row = {"cells": cells or n_cells, "samples": n_samples, "notebook": nb, **settings}
        try:
            m = measure(runner_cmd(cohort, nb), driver=KERNEL)
        except CommandFailed as e:
            tb = notebook_traceback(cohort, nb)
            rows.append({**row, "status": "failed", **e.measures, "error": error_summary(e, tb)})
            print(f"\n[chain.py] FAILED: notebook {nb} on cohort {cohort} ({row['cells']} cells, exit "
                  f"{e.returncode}); the size is stopped here.\n--- runner stderr (end) ---\n{e.stderr[-3000:]}"
                  + (f"\n--- traceback (end) ---\n{tb}" if tb else "") + "\n", flush=True)
            if on_row:
                on_row(rows)
            break
        if nb.startswith("00_"):
            cells = read_annotations(ROOT / "data" / "processed" / cohort / "cells.h5ad").n_obs
            for r in rows:
                r["cells"] = cells
            row["cells"] = cells
        rows.append({**row, "status": "ok", **m, "error": ""})
        print(f"[chain.py] {row['cells']} cells, {nb}: {m}", flush=True)
        if on_row:
            on_row(rows)
    return rows, cells


def summary_row(details: list[dict]) -> dict:
    """The chain.tsv row of a completed size: seconds summed and peaks maxed over its notebooks."""
    d = pd.DataFrame(details)
    return {"cells": int(d["cells"].iloc[0]), "samples": int(d["samples"].iloc[0]), "engine": "dask",
            "seconds": round(float(d["seconds"].sum())), **{p: float(d[p].max()) for p in PEAKS}}


def write_tables(row: dict | None, details: list[dict], out: Path, details_out: Path) -> None:
    """Merge one size into chain.tsv (only a completed size: after a failure an earlier row of that size is
    kept) and into chain_details.tsv (all its rows; a size measured again replaces its earlier rows)."""
    if row:
        merge_rows(pd.DataFrame([row], columns=COLUMNS), out)[COLUMNS].to_csv(out, sep="\t", index=False)
    det = merge_rows(pd.DataFrame(details), details_out)
    det = det.sort_values(["cells", "notebook"], kind="stable", ignore_index=True)
    det.to_csv(details_out, sep="\t", index=False)


def git_commit(paths: list[Path], message: str) -> None:
    """Commit only ``paths`` (``git commit -m MSG -- paths``: other staged work stays staged, uncommitted)."""
    rel = [str(p.relative_to(ROOT)) for p in paths if p.exists()]
    subprocess.run(["git", "add", "--", *rel], cwd=ROOT, check=True)
    if subprocess.run(["git", "diff", "--cached", "--quiet", "--", *rel], cwd=ROOT).returncode == 0:
        print(f"[chain.py] nothing to commit in {rel}")
        return
    subprocess.run(["git", "commit", "-q", "-m", message, "--", *rel], cwd=ROOT, check=True)
    print(f"[chain.py] committed {rel}: {message}")


def main() -> None:
    args = parse_args()
    pin_environment(ROOT)  # threads pinned to DR_THREADS, as the Makefile and the runner do
    os.environ.setdefault("DR_H5AD_COMPRESSION", "lzf")
    settings = {"power_reps": args.power_reps, "n_perm": args.n_perm}
    skip = set() if args.force else measured_points(args.out, args.sizes)
    for n in skip:
        print(f"[chain.py] {n} cells: already in {args.out}, skipped (--force to re-measure)")
    failed = []
    notebooks = chain_notebooks()
    if args.stages_only:
        for n in args.sizes:
            name = scaled_cohort_name(n, args.per_sample)
            cells = read_annotations(ROOT / "data" / "processed" / name / "cells.h5ad").n_obs
            write_stages(stage_rows(name, cells, notebooks), args.stages)
            print(f"[chain.py] stages of {name} ({cells} cells) -> {args.stages}")
        return
    for n in [s for s in args.sizes if s not in skip]:
        name = define_cohort(n, args.per_sample, args.power_reps, args.n_perm, fresh=False)
        n_samples = len(pd.read_csv(ROOT / "data" / "cohorts" / name / "samples.csv"))
        missing = missing_cohort_files(ROOT / "data" / "processed" / name)
        built = not missing
        if missing and (ROOT / "data" / "processed" / name).exists():
            print(f"[chain.py] cohort {name}: {len(missing)} of its files are missing (e.g. {missing[0]}): "
                  "not resumed, started afresh", flush=True)
        done = [] if args.force else unfinished_rows(args.details, n, n_samples, settings, notebooks, built)
        if done:
            print(f"[chain.py] cohort {name}: resuming after {done[-1]['notebook']} (measured earlier)", flush=True)
        else:
            define_cohort(n, args.per_sample, args.power_reps, args.n_perm, fresh=True)
        print(f"[chain.py] cohort {name}: ~{n} cells, analysis {dict(engine='dask', **settings)}", flush=True)
        def save(rows: list[dict]) -> None:  # after every notebook: a stopped run keeps what it measured
            write_tables(None, rows, args.out, args.details)
            write_stages(stage_rows(name, int(rows[-1]["cells"]), [r["notebook"] for r in rows]), args.stages)
            if args.commit and rows[-1]["status"] == "ok" and len(rows) < len(notebooks):
                git_commit([args.details, args.stages], f"bench: whole chain at {rows[-1]['cells']} cells, notebook "
                                                        f"{rows[-1]['notebook']} measured (size not finished)")

        details, cells = run_chain(name, n, settings, done, on_row=save)
        if not args.keep:  # a completed or failed size; a stopped one (killed) keeps its cohort, to resume
            remove_cohort(name)
        ok = all(r["status"] == "ok" for r in details)
        row = summary_row(details) if ok else None
        write_tables(row, details, args.out, args.details)
        if row:
            print(f"[chain.py] {row} -> {args.out}", flush=True)
        if args.out == DEFAULT_OUT:
            write_report()
        else:  # a test run: the committed report is left alone
            print("\n".join(chain_lines(args.out, args.details)))
        if args.commit:
            bad = "" if ok else f" (notebook {details[-1]['notebook']} failed)"
            git_commit([args.out, args.details, args.stages, ROOT / "benchmarks" / "results.md"],
                       f"bench: whole chain at {cells or n} cells{bad}")
        if not ok:
            failed.append(f"{details[-1]['cells']} cells: {details[-1]['notebook']}")
            if not args.keep_going:
                break
    if failed:
        raise SystemExit(f"[chain.py] failed: {'; '.join(failed)} (recorded in {args.details})")


if __name__ == "__main__":
    main()
