"""Execute one numbered notebook for one cohort with papermill (the Makefile's runner).

    python -m helpers.runner validate --cohort ifm2017_sim
    python -m helpers.runner run --cohort ifm2017_sim --notebook notebooks/01_qc_integration.ipynb

``run`` validates the cohort (exit 2 with the named error if it is wrong), writes the parameters to
results/<cohort>/params/<notebook>.yaml, executes the notebook into a temporary file, and only when every
cell succeeded moves it to results/<cohort>/notebooks/ and exports HTML to results/<cohort>/html/.
A failing notebook leaves the previous good outputs in place, keeps the failed copy as
``<name>.failed.ipynb`` and exits 1 naming the notebook and the cell; when the cell raised an input error
(``helpers.data.cohort.InputError``: unusable counts, missing panel genes, no cell left after QC, ...) it exits 2
with that error's message instead. A claim the cohort cannot measure is not an error: the notebooks record it
as not testable, and when a run writes results/<cohort>/not_testable.txt (notebook 10) the runner prints it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml

from helpers.data.cohort import CohortError, load_cohort, notebook_parameters
from helpers.data.describe import batch_response_association
from helpers.io import atomic_path

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def pin_environment(root: Path, threads: int | None = None) -> None:
    """Pin BLAS/OpenMP/numba threads and caches so runs are reproducible; kernels inherit this."""
    threads = threads or int(os.environ.get("DR_THREADS", "2"))
    for v in THREAD_VARS:
        os.environ.setdefault(v, str(threads))
    os.environ.setdefault("NUMBA_CACHE_DIR", str(root / ".cache" / "numba"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    os.environ["DR_ROOT"] = str(root)


def export_html(ipynb: Path, html: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(ipynb, as_version=4)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    with atomic_path(html) as tmp:
        tmp.write_text(body)


def run_notebook(cohort_name: str, notebook: str | Path, kernel: str = "python3", log_output: bool = False) -> Path:
    """Execute ``notebook`` for ``cohort_name``; return the executed notebook path. Raises on failure."""
    import papermill as pm

    cohort = load_cohort(cohort_name)
    root = cohort.root
    pin_environment(root)
    nb = Path(notebook)
    if not nb.is_absolute():
        nb = root / nb
    if not nb.exists():
        raise FileNotFoundError(f"notebook {nb} does not exist")
    cohort.make_dirs()
    name = nb.stem
    params = notebook_parameters(cohort, name)
    pdir = cohort.results_dir / "params"
    pdir.mkdir(parents=True, exist_ok=True)
    params_file = pdir / f"{name}.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=True))
    params = yaml.safe_load(params_file.read_text())  # the notebook gets exactly what the YAML file records
    out_dir = cohort.results_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{name}.ipynb"
    failed = out_dir / f"{name}.failed.ipynb"
    t0 = time.time()
    with atomic_path(final) as tmp:
        try:
            execute_with_kernel_retry(pm.execute_notebook, str(nb), str(tmp), parameters=params, kernel_name=kernel,
                                      cwd=str(nb.parent), progress_bar=False, log_output=log_output)
        except pm.PapermillExecutionError as e:
            os.replace(tmp, failed)
            if e.ename in INPUT_ERRORS:  # the user's input is wrong, not the code: a named error and exit 2
                raise NotebookInputError(
                    f"{e.ename} in notebook {nb.relative_to(root)} (cohort '{cohort_name}', cell {e.cell_index}): "
                    f"{e.evalue}\nNothing was overwritten; the executed copy is {failed}.") from None
            raise NotebookFailed(
                f"notebook {nb.relative_to(root)} failed for cohort '{cohort_name}' in cell {e.cell_index} "
                f"(execution count {e.exec_count}): {e.ename}: {e.evalue}\n"
                f"The executed copy with the traceback is {failed}; previous good outputs were left in place."
            ) from None
    if failed.exists():
        failed.unlink()
    export_html(final, cohort.results_dir / "html" / f"{name}.html")
    seconds = time.time() - t0
    record_timing(cohort.results_dir / "timings" / "notebooks.tsv", name, seconds)
    print(f"[runner] {name} ({cohort_name}) done in {seconds:.0f} s -> {final.relative_to(root)}")
    print_not_testable(cohort.results_dir, since=t0)
    return final


# jupyter_client picks the kernel's ports, closes them and hands them to the kernel; when several kernels start at
# once (calibration runs cohorts in parallel) another process can take a port in between and the kernel dies at
# start-up ("Address already in use"). No cell has run then, so starting a fresh kernel is safe.
KERNEL_START_FAILURES = ("Kernel died before replying to kernel_info", "Kernel didn't respond in")
KERNEL_START_ATTEMPTS = 3


def execute_with_kernel_retry(execute, *args, attempts: int = KERNEL_START_ATTEMPTS, **kwargs):
    """Call ``execute(*args, **kwargs)`` (papermill's ``execute_notebook``), starting a new kernel up to
    ``attempts`` times when the kernel dies before it answered; any other error, and a cell's error, propagate."""
    for attempt in range(1, attempts + 1):
        try:
            return execute(*args, **kwargs)
        except RuntimeError as e:
            if not any(m in str(e) for m in KERNEL_START_FAILURES) or attempt == attempts:
                raise
            print(f"[runner] kernel failed to start ({e}); attempt {attempt + 1} of {attempts}", file=sys.stderr)
            time.sleep(2 * attempt)


def print_not_testable(results_dir: Path, since: float) -> None:
    """Print the cohort's summary of what could not be tested (written by the scorecard notebook) when this run
    wrote it, so ``make all`` ends with it."""
    from helpers.report.scorecard import NOT_TESTABLE_FILE

    summary = results_dir / NOT_TESTABLE_FILE
    if summary.exists() and summary.stat().st_mtime >= since:
        print(summary.read_text(), end="")


def record_timing(path: Path, notebook: str, seconds: float) -> None:
    """Keep one row per notebook (latest run): wall seconds and the kernel's peak memory (max RSS of this
    process's children, GiB). Timings are not results: they live apart from findings and tables."""
    import resource

    import pandas as pd

    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    row = pd.DataFrame([{"notebook": notebook, "seconds": round(seconds, 1), "peak_gib": round(peak, 2)}])
    old = pd.read_csv(path, sep="\t") if path.exists() else row.iloc[:0]
    table = pd.concat([old[old["notebook"] != notebook], row]).sort_values("notebook")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False)


class NotebookFailed(RuntimeError):
    pass


class NotebookInputError(RuntimeError):
    pass


# exceptions raised inside a notebook that mean "the input is wrong" (helpers.data.cohort.InputError and subclasses)
INPUT_ERRORS = {"InputError", "CohortError", "IngestError"}


# exit codes: 2 for a problem with the inputs (cohort definition, input data, a missing file), 1 for a failed notebook
EXIT_CODES = {CohortError: (" (cohort definition)", 2), NotebookInputError: (" (input)", 2), NotebookFailed: ("", 1),
              FileNotFoundError: ("", 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.runner", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="validate a cohort definition")
    v.add_argument("--cohort", required=True)
    r = sub.add_parser("run", help="execute one notebook for a cohort")
    r.add_argument("--cohort", required=True)
    r.add_argument("--notebook", required=True)
    r.add_argument("--kernel", default="python3")
    r.add_argument("--log-output", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "validate":
            c = load_cohort(args.cohort)
            print(f"cohort '{c.name}' is valid: {len(c.samples)} samples, "
                  f"{c.samples['patient_id'].nunique()} patients, tissues {sorted(c.samples['tissue'].unique())}")
            assoc = batch_response_association(c.samples)
            print("batch-response association (Fisher exact, Cramér's V):")
            print(assoc.to_string(index=False))
            for r in assoc[assoc["confounded"]].itertuples():
                print(f"WARNING: in {r.tissue} the processing batch is associated with the response (Cramér's V "
                      f"{r.cramers_v:.2f}, p = {r.p:.2g}): differences there may be batch effects", file=sys.stderr)
            return 0
        run_notebook(args.cohort, args.notebook, kernel=args.kernel, log_output=args.log_output)
        return 0
    except (CohortError, NotebookInputError, NotebookFailed, FileNotFoundError) as e:
        prefix, code = next(v for k, v in EXIT_CODES.items() if isinstance(e, k))
        print(f"ERROR{prefix}: {e}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
