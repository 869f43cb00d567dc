"""Benchmark of the compendium on this machine (``make bench``): wall time and peak memory (max RSS of the
notebook's kernel, from GNU time) of

1. every notebook on the default cohort, read from the runner's records of the last ``make all``
   (results/<cohort>/timings/notebooks.tsv) when present, and
2. the core pipeline (notebook 01 QC + doublets + integration, notebook 02 annotation) on simulated cohorts of
   the default design (21 bone-marrow samples) scaled to 50k, 100k and 200k cells, each built by notebook 00
   (not timed) and run through the same runner as ``make all``.

Writes benchmarks/results.md (and results.tsv). The baseline to beat (plain scanpy 1.11.5, same design, 20k
genes; issue 8): 63k cells 429 s / 7.4 GiB, 126k cells 867 s / 13.9 GiB.

    .venv/bin/python benchmarks/run.py [--sizes 50000 100000 200000] [--keep]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
BASELINE = {63_000: (429.0, 7.4), 126_000: (867.0, 13.9)}


def timed_notebook(cohort: str, notebook: str) -> tuple[float, float]:
    """(wall seconds, peak GiB) of one runner call under GNU time."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "helpers.runner", "run", "--cohort", cohort,
           "--notebook", f"notebooks/{notebook}.ipynb"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{notebook} failed on {cohort} (exit {r.returncode}):\n{r.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", r.stderr)
    h, m, s = (float(x) if x else 0.0 for x in wall.groups())
    rss = float(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1)) / 2**20
    return 3600 * h + 60 * m + s, rss


def scaled_cohort_name(n_cells: int, per_sample: int | None = None) -> str:
    """The name :func:`scaled_cohort` gives the cohort of ~n_cells (samples of ``per_sample`` cells, or the 21
    default samples made larger)."""
    if per_sample:
        return f"bench_{n_cells // 1000}k_{max(4, int(round(n_cells / per_sample)))}s"
    return f"bench_{n_cells // 1000}k"


def scaled_cohort(n_cells: int, per_sample: int | None = None, analysis: dict | None = None) -> str:
    """A copy of the default cohort's design, bone marrow only, with ~n_cells cells in all: the 21 samples made
    larger (default), or, with ``per_sample``, more samples of that size (the atlas case: more patients).
    ``analysis`` replaces the default cohort's ``analysis:`` block (e.g. ``{engine: dask}``)."""
    src = ROOT / "data" / "cohorts" / "ifm2017_sim"
    cfg = yaml.safe_load((src / "cohort.yaml").read_text())
    name = scaled_cohort_name(n_cells, per_sample)
    if per_sample:
        from helpers.data.simulate import make_design

        n_s = max(4, int(round(n_cells / per_sample)))
        samples = make_design(n_s // 2, n_s - n_s // 2, seed=cfg["seed"], n_batches=4)
    else:
        samples = pd.read_csv(src / "samples.csv")
        samples = samples[samples["tissue"] == "BM"]
    dst = ROOT / "data" / "cohorts" / name
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)  # (a kept build under data/processed/<name> is reused by bench_cohort)
    cfg.update(name=name, tissues=["BM"], description=f"benchmark: default design scaled to {n_cells} cells")
    cfg.pop("validation_tissue", None)
    if analysis is not None:
        cfg["analysis"] = dict(analysis)
    sim = cfg["simulation"]
    sim["cells"] = {"BM": {"per_sample": int(n_cells / len(samples)), "sd": 0.25}}
    sim["bulk"]["n_patients"] = 50
    (dst / "cohort.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    samples.to_csv(dst / "samples.csv", index=False)
    return name


SIZE_TOLERANCE = 0.05  # a cohort asked for as n cells gives n +- a few % (the simulator draws each sample's size)


def same_size(cells, n_cells: float, tolerance: float = SIZE_TOLERANCE):
    """Whether ``cells`` (a number or a Series) is the benchmark size ``n_cells``: within ``tolerance`` of it,
    relative (48,479 and 1,012,345 cells are the sizes 50,000 and 1,000,000; 100,000 and 247,281 are not)."""
    return abs(cells - n_cells) <= tolerance * n_cells


def merge_rows(new: pd.DataFrame, previous: Path, by: tuple[str, ...] = ("cells",),
               derived: tuple[str, ...] = ()) -> pd.DataFrame:
    """This run's rows plus the earlier runs' rows at other points (a point measured again is replaced). A point
    is its size (:func:`same_size`: 48,479 and 50,000 cells are the same point) and its other ``by`` columns;
    ``derived`` columns of the earlier rows are dropped (the caller recomputes them)."""
    if not previous.exists():
        return new
    old = pd.read_csv(previous, sep="\t").drop(columns=list(derived), errors="ignore")
    others = [c for c in by if c != "cells"]
    replaced = pd.Series(False, index=old.index)
    for r in new.drop_duplicates(list(by)).itertuples(index=False):
        r = r._asdict()
        hit = same_size(old["cells"], r["cells"])
        for c in others:
            hit &= old[c] == r[c]
        replaced |= hit
    return pd.concat([old[~replaced], new], ignore_index=True).sort_values(list(by), ignore_index=True)


def markdown_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(out)


def cohort_dirs(name: str) -> list[Path]:
    """Everything a benchmark cohort writes: its processed data, results, figures and definition."""
    return [ROOT / "data" / "processed" / name, ROOT / "results" / name, ROOT / "figures" / name,
            ROOT / "data" / "cohorts" / name]


def remove_cohort(name: str) -> None:
    """Delete a benchmark cohort's data, results, figures and definition (disk is limited)."""
    for d in cohort_dirs(name):
        shutil.rmtree(d, ignore_errors=True)


def measured_points(path: Path, sizes: list[int]) -> set[int]:
    """The requested sizes already in the table at ``path`` (:func:`same_size`: a size asked for as 50,000 is
    found as the 48,479 cells it gave)."""
    if not path.exists():
        return set()
    done = pd.read_csv(path, sep="\t")["cells"]
    return {n for n in sizes if same_size(done, n).any()}


@contextmanager
def bench_cohort(n_cells: int, keep: bool = False, per_sample: int | None = None) -> Iterator[tuple[str, int]]:
    """(name, cells) of the default design scaled to ~n_cells (see :func:`scaled_cohort`), built by notebook 00
    unless a kept build exists; its data, results and figures are removed afterwards unless ``keep``."""
    import anndata as ad

    name = scaled_cohort(n_cells, per_sample)
    try:
        if not (ROOT / "data" / "processed" / name / "cells.h5ad").exists():
            timed_notebook(name, "00_cohort")
        yield name, ad.read_h5ad(ROOT / "data" / "processed" / name / "cells.h5ad", backed="r").n_obs
    finally:
        if not keep:
            remove_cohort(name)


def parse_args(doc: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[50_000, 100_000, 200_000])
    ap.add_argument("--keep", action="store_true", help="keep the benchmark cohorts' processed data")
    ap.add_argument("--per-sample", type=int, default=None,
                    help="grow the cohort by adding samples of this many cells (default: 21 larger samples)")
    args = ap.parse_args()
    os.environ.setdefault("DR_ROOT", str(ROOT))
    return args


def main() -> None:
    args = parse_args(__doc__)
    rows = []
    for n in args.sizes:
        with bench_cohort(n, args.keep, args.per_sample) as (name, cells):
            t1, m1 = timed_notebook(name, "01_qc_integration")
            t2, m2 = timed_notebook(name, "02_annotation")
            rows.append({"cells": cells, "qc_integration_s": round(t1), "annotation_s": round(t2),
                         "core_s": round(t1 + t2), "peak_gib": round(max(m1, m2), 1),
                         "s_per_1k_cells": round((t1 + t2) / cells * 1000, 2)})
            print(rows[-1], flush=True)
    out = ROOT / "benchmarks"
    core = merge_rows(pd.DataFrame(rows), out / "results.tsv", derived=("baseline_s_same_cells", "speed_vs_baseline"))
    if len(core):
        per_k = BASELINE[63_000][0] / 63.0  # baseline seconds per 1k cells at 63k
        core["baseline_s_same_cells"] = (core["cells"] / 1000 * per_k).round()
        core["speed_vs_baseline"] = (core["baseline_s_same_cells"] / core["core_s"]).round(2)
    core.to_csv(out / "results.tsv", sep="\t", index=False)
    write_report()


def write_report() -> Path:
    """benchmarks/results.md from the tables: notebook timings of the last make all, the core pipeline against
    cells (results.tsv) and peak memory with and without the per-sample path (memory.tsv, benchmarks/memory.py)."""
    out = ROOT / "benchmarks"
    nb_file = ROOT / "results" / "ifm2017_sim" / "timings" / "notebooks.tsv"
    nbs = pd.read_csv(nb_file, sep="\t") if nb_file.exists() else pd.DataFrame()
    core = pd.read_csv(out / "results.tsv", sep="\t") if (out / "results.tsv").exists() else pd.DataFrame()
    mem = pd.read_csv(out / "memory.tsv", sep="\t") if (out / "memory.tsv").exists() else pd.DataFrame()
    lines = ["# Benchmarks (2 cores, 24 GiB)", "",
             "Written by `make bench` (benchmarks/run.py, benchmarks/memory.py, benchmarks/peer.py, "
             "benchmarks/chain.py).", ""]
    if len(nbs):
        lines += ["## Notebooks on the default cohort (last `make all`)", "", markdown_table(nbs), ""]
    lines += ["## Core pipeline (notebooks 01 + 02) against cells", "",
              markdown_table(core) if len(core) else "(not run)", "",
              "Baseline (issue 8, plain scanpy 1.11.5, 21 samples, 20k genes): 63k cells 429 s / 7.4 GiB; "
              "126k cells 867 s / 13.9 GiB. `baseline_s_same_cells` scales the 63k baseline linearly (its own "
              "growth was slightly super-linear), `speed_vs_baseline` = baseline / measured. `peak_gib` is the "
              "largest single process (GNU time). The baseline also ran an all-gene Wilcoxon test on all cells, "
              "which this pipeline does not (markers are scored from a curated table): not like for like.", ""]
    if len(mem):
        lines += ["## Peak memory of the per-sample steps, in memory and sample by sample (Dask)", "",
                  markdown_table(mem), "",
                  "The steps notebook 01 can run either way: read counts, QC metrics and thresholds, Scrublet and "
                  "co-expression doublets, normalisation, HVGs, PCA. `memory`: one process holds the cohort "
                  "(helpers.preprocessing.qc.qc_filter, helpers.preprocessing.integrate). `dask`: helpers.preprocessing.per_sample.preprocess_by_sample on a "
                  "LocalCluster of 2 single-threaded workers, one sample per task, shards written to disk. "
                  "`peak_total_gib`: largest sum of RSS over the process tree (driver + workers), sampled every "
                  "0.2 s; `peak_driver_gib`: the driver alone; `peak_worker_gib`: the largest child process (a "
                  "Dask worker, or a Scrublet worker of the in-memory path). `samples` = 21: the default design "
                  "with larger samples; more samples: the cohort grown by adding samples of ~2,300 cells (the "
                  "atlas case; `memory.py --per-sample 2300`). A worker's peak follows the largest sample "
                  "(Scrublet's kNN on the sample and its simulated doublets dominates), the driver's the number "
                  "of cells (obs and the 50-dimensional embedding).", ""]
    lines += peer_lines(out / "peer.tsv")
    lines += chain_lines(out / "chain.tsv", out / "chain_details.tsv")
    lines += stage_lines(out / "chain_stages.tsv")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print((out / "results.md").read_text())
    return out / "results.md"


def readme_lines(bench_dir: Path | None = None) -> list[str]:
    """The measured rows the README's scaling section quotes, one line per row of chain.tsv and peer.tsv (kept
    equal to the tables by tests/test_readme.py): never typed by hand."""
    bench_dir = bench_dir or ROOT / "benchmarks"
    lines = []
    if (bench_dir / "chain.tsv").exists():
        for r in pd.read_csv(bench_dir / "chain.tsv", sep="\t").itertuples():
            lines.append(f"`benchmarks/chain.tsv`: {r.cells:,} cells ({r.samples} samples, {r.engine}) in "
                         f"{r.seconds:,} s, peak {r.peak_total_gib:.1f} GiB in all (kernel {r.peak_driver_gib:.1f}, "
                         f"largest worker {r.peak_worker_gib:.1f})")
    for r in unfinished_sizes(bench_dir / "chain.tsv", bench_dir / "chain_details.tsv"):
        lines.append(f"`benchmarks/chain_details.tsv`: {r['cells']:,} cells ({r['samples']} samples, dask), not "
                     f"finished: notebooks {r['first']}-{r['last']} in {r['seconds']:,.0f} s, peak "
                     f"{r['peak_total_gib']:.1f} GiB in all (kernel {r['peak_driver_gib']:.1f}, largest worker "
                     f"{r['peak_worker_gib']:.1f}); resumes at notebook {r['next']}")
    if (bench_dir / "peer.tsv").exists():
        for r in pd.read_csv(bench_dir / "peer.tsv", sep="\t").itertuples():
            lines.append(f"`benchmarks/peer.tsv`: {r.cells:,} cells: notebooks 01+02 {r.ours_s:,.0f} s, "
                         f"{r.ours_peak_gib:.1f} GiB; scanpy peer {r.peer_s:,.0f} s, {r.peer_peak_gib:.1f} GiB "
                         f"(peer / ours {r.ratio:.2f}; {peer_goal_verdict(r.ratio, r.ours_peak_gib, r.peer_peak_gib)})")
    return lines


PEER_GOAL_RATIO = 1.5  # the goal: ours at least 1.5x faster than the peer at every size, at no more memory


def peer_goal_verdict(ratio: float, ours_peak_gib: float, peer_peak_gib: float) -> str:
    """Whether one peer.tsv row meets the goal (peer_s / ours_s >= PEER_GOAL_RATIO and our peak <= the peer's),
    naming the part missed."""
    missed = ([f"speed missed (goal >= {PEER_GOAL_RATIO})"] if ratio < PEER_GOAL_RATIO else []) + \
        (["memory missed (ours above the peer's)"] if ours_peak_gib > peer_peak_gib else [])
    return "; ".join(missed) if missed else f"goal met: >= {PEER_GOAL_RATIO}x faster at no more memory"


def unfinished_sizes(table: Path, details: Path) -> list[dict]:
    """Sizes of chain_details.tsv measured in part (benchmarks/chain.py stopped before the last notebook, every
    notebook measured so far ``ok``, no chain.tsv row of that size): their cells, samples, first and last
    notebooks measured, the next one, seconds summed and peaks maxed over the measured notebooks."""
    if not details.exists():
        return []
    det = pd.read_csv(details, sep="\t")
    done = pd.read_csv(table, sep="\t")["cells"] if table.exists() else pd.Series([], dtype=float)
    chain = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    out = []
    for cells, d in det.groupby("cells"):
        if same_size(done, cells).any() or (d["status"] != "ok").any() or len(d) >= len(chain):
            continue
        nbs = sorted(d["notebook"])
        out.append({"cells": int(cells), "samples": int(d["samples"].iloc[0]), "first": nbs[0][:2],
                    "last": nbs[-1][:2], "next": chain[len(nbs)] if nbs == chain[:len(nbs)] else "?",
                    "seconds": float(d["seconds"].sum()),
                    **{k: float(d[k].max()) for k in ("peak_total_gib", "peak_driver_gib", "peak_worker_gib")}})
    return out


def peer_lines(table: Path) -> list[str]:
    """The results.md section on the peer (benchmarks/peer.py, peer.tsv): a plain scanpy workflow against
    notebooks 01 + 02 on the same cells, or nothing when the table does not exist."""
    if not table.exists():
        return []
    peer = pd.read_csv(table, sep="\t")
    peer["goal"] = [peer_goal_verdict(r.ratio, r.ours_peak_gib, r.peer_peak_gib) for r in peer.itertuples()]
    return ["## Peer: plain scanpy workflow vs notebooks 01+02", "", markdown_table(peer), "",
            "The peer (benchmarks/peer_workflow.py) is the workflow a user would otherwise write with scanpy's "
            "tutorial defaults, run as one Python script on the same cells (data/processed/<cohort>/cells.h5ad of "
            "the default design scaled up, 21 marrow samples): QC metrics (mito genes `MT-`), cells with >= 200 "
            "genes and < 20% mito, genes in >= 3 cells, Scrublet per sample (doublets removed), normalize_total + "
            "log1p, 2,000 HVGs with the sample as batch, PCA (50), neighbours, Leiden (igraph, 2 iterations), UMAP, "
            "Wilcoxon markers per Leiden cluster on all genes, each cluster labelled by its best-scoring marker set "
            "(`sc.tl.score_genes`, a small compartment marker dict), then pseudobulk counts per patient x cell type "
            "and pydeseq2 (NR vs CR) per cell type with >= 2 patients per group. Ours: notebooks 01 (QC, Scrublet "
            "and co-expression doublets, HVGs, PCA, Harmony, neighbours, Leiden, UMAP) and 02 (marker-table "
            "annotation, malignant plasma cells by light chains and CNV, composition test) through the runner, "
            "as `make all` runs them, writing their h5ad, tables, figures and HTML. Both were measured in the same "
            "run, one after the other on the same cohort, each in fresh processes by the same harness "
            "(benchmarks/memory.py `measure`: wall time, summed RSS of the process tree sampled every 0.2 s, a fork "
            "child counted by the memory it does not share with its parent) "
            "with the same thread limits (DR_THREADS). `ours_s` = 01 + 02, `ours_peak_gib` = the larger of the "
            "two; `ratio` = peer_s / ours_s (> 1: ours is faster). Not like for like: the peer runs pseudobulk DE "
            "(done by notebooks 03-08 here) and writes no files; ours runs Harmony and the malignant-cell calls. "
            "Per-stage seconds of the peer and per-notebook seconds of ours: benchmarks/peer_details.tsv.", ""]


def chain_lines(table: Path, details: Path) -> list[str]:
    """The results.md section on the whole chain against cells (benchmarks/chain.py, chain.tsv and
    chain_details.tsv), with how time and memory grow and any notebook that failed; nothing when not run."""
    if not table.exists() and not details.exists():
        return []
    chain = pd.read_csv(table, sep="\t") if table.exists() else pd.DataFrame()
    det = pd.read_csv(details, sep="\t") if details.exists() else pd.DataFrame()
    lines = ["## Whole chain against cells", "", markdown_table(chain) if len(chain) else "(no size completed)", ""]
    if len(det):
        reps = ", ".join(f"{c} {sorted(det[c].dropna().astype(int).unique().tolist())}"
                         for c in ("power_reps", "n_perm") if c in det)
        per_sample = ", ".join(f"{c / s:,.0f}" for c, s in det.groupby("cells")["samples"].first().items())
        lines += ["Notebooks 00-10 one after the other through the runner on cohorts grown by adding marrow samples "
                  f"(benchmarks/chain.py --per-sample, default 2,500 cells; here {per_sample} cells per sample; the "
                  "default design's simulator, CR/NR balanced), the cohort's `analysis: {engine: dask, power_reps, "
                  f"n_perm}}` (here {reps}), intermediates written with DR_H5AD_COMPRESSION=lzf. The "
                  "benchmark uses fewer power repetitions (notebooks 08, 09) and classifier permutations (07) than "
                  "`make all` on the default cohort; both are cohort parameters. Each notebook is measured by "
                  "benchmarks/memory.py `measure` (process tree sampled every 0.2 s, so Dask workers count; a fork child "
                  "such as infercnvpy's chunk worker by the memory it does not share with its parent): "
                  "`seconds` = sum over notebooks, peaks = max over notebooks; `peak_driver_gib` = the notebook's "
                  "kernel, `peak_worker_gib` = the largest other process (a Dask worker).", ""]
    if len(chain):
        growth = "; ".join(f"{r.cells:,} cells: {r.seconds / r.cells * 1000:.1f} s per 1k cells, "
                           f"{r.peak_total_gib} GiB" for r in chain.itertuples())
        steps = "; ".join(f"{a.cells:,} to {b.cells:,} cells ({b.cells / a.cells:.1f}x): time "
                          f"{b.seconds / a.seconds:.1f}x, peak {b.peak_total_gib / a.peak_total_gib:.1f}x"
                          for a, b in zip(chain.iloc[:-1].itertuples(), chain.iloc[1:].itertuples()))
        lines += [f"Growth: {growth}." + (f" From size to size: {steps}." if steps else ""), ""]
    if len(det) and "status" in det:
        ok = det[det["status"] == "ok"]
        if len(ok):
            pivot = ok.pivot_table(index="notebook", columns="cells", values="seconds", aggfunc="first")
            pivot.columns = [f"{c:,} cells (s)" for c in pivot.columns]
            lines += ["Seconds per notebook (chain_details.tsv):", "",
                      markdown_table(pivot.reset_index().fillna("")), ""]
        for r in det[det["status"] != "ok"].itertuples():
            lines += [f"Failed at {r.cells:,} cells: notebook {r.notebook} ({r.error}).", ""]
    for r in unfinished_sizes(table, details):
        lines += [f"Not finished at {r['cells']:,} cells ({r['samples']} samples): notebooks {r['first']}-{r['last']} "
                  f"measured ({r['seconds']:,.0f} s, peak {r['peak_total_gib']} GiB in all, kernel "
                  f"{r['peak_driver_gib']} GiB, largest worker {r['peak_worker_gib']} GiB); benchmarks/chain.py with "
                  f"that size resumes at notebook {r['next']} (its cohort is kept on disk until the size completes).",
                  ""]
    return lines


def stage_lines(stages: Path) -> list[str]:
    """The results.md section on where the chain's time goes (benchmarks/chain.py ``notebook_stages``,
    chain_stages.tsv): the slowest cells of each notebook at the largest size measured; nothing when not run."""
    if not stages.exists():
        return []
    st = pd.read_csv(stages, sep="\t")
    if st.empty:
        return []
    largest = st[st["cells"] == st["cells"].max()].drop(columns="cells")
    return [f"### Where the time goes at {int(st['cells'].max()):,} cells", "",
            "The slowest code cells of each notebook measured at the largest size (chain_stages.tsv, papermill's "
            "per-cell durations; `share` of the notebook's summed cell seconds; cells under "
            "5% not listed; `cell` counts code cells from 0):", "", markdown_table(largest), ""]


if __name__ == "__main__":
    main()
