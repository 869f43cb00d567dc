"""Calibration of the whole chain (issue 15): how often each scorecard claim is called ``reproduced`` over many
simulated cohorts, with no effect planted (null) and with the default cohort's effects planted (planted).

    python -m helpers.validation.calibration --k 20 --bm 6 6 --pb 6 6 --bm-cells 600 --pb-cells 300 --jobs 2

Each cohort gets its own seed (:func:`cohort_seed`: planted cohorts even, null cohorts odd offsets from a base
seed), a sample sheet made by :func:`helpers.data.simulate.make_design` (marrow discovery set and an independent
blood validation set) and the simulation settings of ``ifm2017_sim`` (planted) or ``ifm2017_null`` (null) with
fewer cells per sample. Every notebook of the chain except 09_power runs on it through the Makefile's runner, one
subprocess per notebook, in a scratch project root under ``.cache/calibration/`` whose code, notebooks and shared
data are links to this checkout (nothing is written into the checkout's data/cohorts, results or figures).
A finished cohort's scorecard is kept: a rerun skips it (and a cohort whose settings changed is rebuilt).

Predicted rates come from notebook 09's model (:func:`helpers.analysis.power.power_grid`) for the same design and
settings, once per design and kind; rows that model does not cover (prognosis, classifier AUCs) get NA and a note.
Only the summary is written to ``validation/``: calibration.csv, calibration.md, calibration.png and
calibration_runs.csv (every cohort's scorecard rows, from which the summary can be recomputed).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml
from scipy import stats as sstats
from tqdm.auto import tqdm

from helpers.analysis.power import clopper_pearson, power_grid, summarise_power
from helpers.claims import CELL_KINDS, NOT_TESTABLE, claim_by_label
from helpers.claims import scorecard_claims as registry_rows
from helpers.data.cohort import load_cohort, project_root
from helpers.data.simulate import make_design
from helpers.io import atomic_path, write_table
from helpers.runner import THREAD_VARS

KINDS = ("null", "planted")
SOURCE_COHORTS = {"null": "ifm2017_null", "planted": "ifm2017_sim"}
SKIPPED_NOTEBOOKS = ("09_power",)
POOLED = "all rows, pooled"
ALPHA = 0.05
NULL_TAIL = 0.02  # a null row fails when a calibrated 5% test would exceed its count with less than this chance
DEFAULT_MIN_CELLS = 10  # the notebooks' default `min_cells` (overridden by the cohort's analysis block)
POWER_GENES = 4000  # notebook 09 simulates at most this many genes
SUMMARY_COLUMNS = ["claim", "cohort_kind", "n_runs", "n_reproduced", "rate", "ci_low", "ci_high", "predicted_power",
                   "n_not_testable", "n_not_applicable", "note"]
RUN_COLUMNS = ["cohort", "kind", "seed", "claim", "verdict", "p"]
# what a scratch project root links from the checkout (calibration runs and the hermetic tests)
PROJECT_LINKS = ["Makefile", "pyproject.toml", "requirements.lock", "notebooks", "src", ".venv", ".cache",
                 "data/genesets", "data/markers.yaml", "data/reference", "data/resistance_atlas.yaml",
                 "data/simulation"]


class ChainFailed(RuntimeError):
    """A notebook of a calibration cohort's chain failed; the message names the cohort, notebook and log."""


@dataclass(frozen=True)
class Design:
    """The calibration design: patients per group in marrow (discovery) and blood (validation), cells per sample,
    genes simulated (None: the source cohort's) and analysis settings written into every cohort.yaml."""

    n_cr_bm: int = 6
    n_nr_bm: int = 6
    n_cr_pb: int = 6
    n_nr_pb: int = 6
    bm_cells: int = 600
    pb_cells: int = 300
    n_genes: int | None = None
    analysis: dict[str, Any] = field(default_factory=dict)

    def tag(self) -> str:
        genes = f"_g{self.n_genes}" if self.n_genes else ""
        return (f"bm{self.n_cr_bm}v{self.n_nr_bm}_pb{self.n_cr_pb}v{self.n_nr_pb}"
                f"_cells{self.bm_cells}-{self.pb_cells}{genes}")

    def text(self) -> str:
        return (f"marrow {self.n_cr_bm} CR + {self.n_nr_bm} NR, blood validation {self.n_cr_pb} CR + {self.n_nr_pb} NR "
                f"patients; {self.bm_cells} marrow / {self.pb_cells} blood cells per sample (median)"
                + (f"; {self.n_genes} genes" if self.n_genes else "")
                + (f"; analysis {self.analysis}" if self.analysis else ""))


# -- cohorts ---------------------------------------------------------------------------------------------------

def cohort_seed(base_seed: int, kind: str, index: int) -> int:
    """The seed of calibration cohort ``index`` of ``kind``: planted cohorts take base + 2 i, null cohorts
    base + 2 i + 1, so the two kinds never share a seed."""
    if kind not in KINDS:
        raise ValueError(f"cohort kind '{kind}' is unknown: use one of {list(KINDS)}")
    if index < 0:
        raise ValueError(f"cohort index must be >= 0, got {index}")
    return int(base_seed) + 2 * int(index) + (1 if kind == "null" else 0)


def cohort_name(kind: str, index: int) -> str:
    return f"cal_{kind}_{index:03d}"


def n_batches_for(n_patients: int) -> int:
    """Batches of a simulated design, the rule of notebook 09's power model (2-4, about 4 patients each)."""
    return max(2, min(4, n_patients // 4))


def calibration_samples(design: Design, seed: int) -> pd.DataFrame:
    """The sample sheet: a marrow discovery set and an independent blood validation set, batches stratified by
    response (helpers.data.simulate.make_design); the blood sheet's seed is derived from the cohort's."""
    bm = make_design(design.n_cr_bm, design.n_nr_bm, seed=seed, tissue="BM", prefix="P",
                     n_batches=n_batches_for(design.n_cr_bm + design.n_nr_bm))
    parts = [bm]
    if design.n_cr_pb + design.n_nr_pb > 0:
        pb_seed = int(np.random.SeedSequence([seed, 2]).generate_state(1)[0])
        parts.append(make_design(design.n_cr_pb, design.n_nr_pb, seed=pb_seed, tissue="PB", prefix="V",
                                 n_batches=n_batches_for(design.n_cr_pb + design.n_nr_pb)))
    return pd.concat(parts, ignore_index=True)


def simulation_settings(source: dict[str, Any], design: Design) -> dict[str, Any]:
    """The source cohort's simulation block with the design's cells per sample (and genes, when set)."""
    sim = copy.deepcopy(source)
    sim["cells"]["BM"]["per_sample"] = int(design.bm_cells)
    if "PB" in sim["cells"]:
        sim["cells"]["PB"]["per_sample"] = int(design.pb_cells)
    if design.n_genes:
        sim["n_genes"] = int(design.n_genes)
    return sim


def calibration_config(source_config: dict[str, Any], name: str, kind: str, seed: int,
                       design: Design) -> dict[str, Any]:
    """cohort.yaml of a calibration cohort: the source cohort's definition with its own name, seed, cells per
    sample and the design's analysis settings."""
    cfg = copy.deepcopy(source_config)
    has_blood = design.n_cr_pb + design.n_nr_pb > 0
    cfg.update(name=name, seed=int(seed), samples="samples.csv",
               description=f"calibration cohort ({kind}, from {source_config['name']}): {design.text()}",
               simulation=simulation_settings(source_config["simulation"], design),
               analysis={**{k: v for k, v in source_config.get("analysis", {}).items() if k != "null_twin"},
                         **design.analysis})  # a calibration cohort has no null twin of its own
    if not has_blood:
        cfg["tissues"] = [t for t in cfg["tissues"] if t != "PB"]
        cfg.pop("validation_tissue", None)
    return cfg


def cohort_files(config: dict[str, Any], samples: pd.DataFrame) -> dict[str, str]:
    """The text of a calibration cohort's cohort.yaml and samples.csv."""
    header = "# generated by helpers.validation.calibration; edit the source cohort or the calibration design instead\n"
    return {"cohort.yaml": header + yaml.safe_dump(config, sort_keys=False),
            "samples.csv": samples.to_csv(index=False)}


# -- scratch project root and chain ------------------------------------------------------------------------------

def committed_cohorts(checkout: Path) -> list[str]:
    """The checkout's cohort definitions a chain may read besides its own (notebook 07 reads ifm2017_sim's blood
    design); scratch cohorts of the tests and benchmarks (zz_*, bench_*) are left out."""
    return sorted(f"data/cohorts/{d.name}" for d in (checkout / "data" / "cohorts").iterdir()
                  if (d / "cohort.yaml").exists() and not d.name.startswith(("zz_", "bench_", "cal_")))


def link_project(scratch: Path, checkout: Path, cohorts: bool = True) -> Path:
    """A project root at ``scratch`` whose code, notebooks, environment, shared data and (unless ``cohorts`` is
    False) committed cohort definitions are links to ``checkout``; runs there write only under ``scratch``."""
    scratch.mkdir(parents=True, exist_ok=True)
    for rel in PROJECT_LINKS + (committed_cohorts(checkout) if cohorts else []):
        target, link = checkout / rel, scratch / rel
        if not target.exists() or link.is_symlink():
            continue
        if link.exists():
            raise FileExistsError(f"{link} exists and is not a link to the checkout: remove {scratch} and rerun")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    (scratch / "data" / "cohorts").mkdir(parents=True, exist_ok=True)
    return scratch


def scratch_root(checkout: Path, design: Design) -> Path:
    return checkout / ".cache" / "calibration" / design.tag()


def cohort_outputs(project: Path, name: str) -> list[Path]:
    return [project / "results" / name, project / "data" / "processed" / name, project / "figures" / name]


def definition_content(files: dict[str, str]) -> dict[str, Any]:
    """What a cohort definition says, without comments or formatting: parsed YAML, CSV text as is."""
    return {f: yaml.safe_load(text) if f.endswith((".yaml", ".yml")) else text for f, text in files.items()}


def write_cohort(project: Path, name: str, files: dict[str, str]) -> bool:
    """Write a calibration cohort's definition; when an older definition says something else (a comment or the
    layout of the file does not count), remove its outputs first. Returns True when the definition was (re)written."""
    cdir = project / "data" / "cohorts" / name
    old = {f: (cdir / f).read_text() for f in files if (cdir / f).exists()}
    if old == files:
        return False
    if old.keys() == files.keys() and definition_content(old) == definition_content(files):
        for f, text in files.items():  # same content: refresh the text, keep the finished outputs
            with atomic_path(cdir / f) as tmp:
                tmp.write_text(text)
        return False
    for d in cohort_outputs(project, name):
        shutil.rmtree(d, ignore_errors=True)
    cdir.mkdir(parents=True, exist_ok=True)
    for f, text in files.items():
        with atomic_path(cdir / f) as tmp:
            tmp.write_text(text)
    return True


def chain_notebooks(checkout: Path, skipped: tuple[str, ...] = SKIPPED_NOTEBOOKS) -> list[str]:
    """The chain's notebook names in order, without ``skipped``."""
    names = sorted(p.stem for p in (checkout / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not names:
        raise FileNotFoundError(f"no numbered notebooks in {checkout / 'notebooks'}")
    return [n for n in names if n not in skipped]


def chain_environment(project: Path, threads: int) -> dict[str, str]:
    """The environment of one chain: project root, pinned threads (as the Makefile pins them), numba cache."""
    env = dict(os.environ)
    env.update({"DR_ROOT": str(project), "DR_THREADS": str(threads), "DR_JOBS": "1", "MPLBACKEND": "Agg",
                "PYTHONHASHSEED": "0", "NUMBA_CACHE_DIR": str(project / ".cache" / "numba")})
    env.update({v: str(threads) for v in THREAD_VARS})
    return env


def is_finished(project: Path, name: str, last_notebook: str) -> bool:
    res = project / "results" / name
    return (res / "scorecard.csv").exists() and (res / "notebooks" / f"{last_notebook}.ipynb").exists()


def run_chain(project: Path, name: str, notebooks: list[str], threads: int = 1) -> None:
    """Run ``notebooks`` in order on cohort ``name`` through the Makefile's runner (one subprocess each), skipping
    those already executed (the runner writes an executed notebook only when every cell succeeded). The runner's
    output goes to results/<name>/calibration.log. Raises :class:`ChainFailed`."""
    env = chain_environment(project, threads)
    done_dir = project / "results" / name / "notebooks"
    log = project / "results" / name / "calibration.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    for nb in notebooks:
        if (done_dir / f"{nb}.ipynb").exists():
            continue
        cmd = [sys.executable, "-m", "helpers.runner", "run", "--cohort", name, "--notebook", f"notebooks/{nb}.ipynb"]
        r = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
        with log.open("a") as fh:
            fh.write(f"$ {' '.join(cmd[1:])}\n{r.stdout}{r.stderr}\n")
        if r.returncode != 0:
            tail = "\n".join(r.stderr.strip().splitlines()[-15:])
            raise ChainFailed(f"cohort {name}: notebook {nb} exited {r.returncode} (log {log}):\n{tail}")


def chain_seconds(project: Path, name: str) -> float:
    """Wall seconds of a cohort's notebooks as the runner recorded them (results/<name>/timings/notebooks.tsv)."""
    f = project / "results" / name / "timings" / "notebooks.tsv"
    return float(pd.read_csv(f, sep="\t")["seconds"].sum()) if f.exists() else float("nan")


def run_one_cohort(project: Path, name: str, notebooks: list[str], threads: int, keep_processed: bool) -> float:
    """Run one cohort's chain; drop its processed data (h5ad) afterwards unless ``keep_processed``; return its
    chain seconds."""
    run_chain(project, name, notebooks, threads)
    if not keep_processed:
        shutil.rmtree(project / "data" / "processed" / name, ignore_errors=True)
    return chain_seconds(project, name)


def run_cohorts(project: Path, names: list[str], notebooks: list[str], jobs: int = 2, threads: int = 1,
                keep_processed: bool = False, progress: bool = True) -> dict[str, str]:
    """Run every unfinished cohort of ``names``, ``jobs`` at a time, with a progress bar over cohorts.
    Returns the failures (cohort -> message); the other cohorts keep running when one fails."""
    last = notebooks[-1]
    todo = [n for n in names if not is_finished(project, n, last)]
    failures: dict[str, str] = {}
    bar = tqdm(total=len(names), initial=len(names) - len(todo), desc="calibration cohorts", unit="cohort",
               disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(run_one_cohort, project, n, notebooks, threads, keep_processed): n for n in todo}
        for fut in as_completed(futures):
            name = futures[fut]
            try:
                fut.result()
            except ChainFailed as e:
                failures[name] = str(e)
                bar.set_postfix(failed=len(failures))
            bar.update(1)
    bar.close()
    return failures


# -- verdicts and summary ------------------------------------------------------------------------------------------

def verdict_kind(verdict: str) -> str:
    """reproduced, not reproduced, not applicable or not testable (every ``not testable: <reason>``)."""
    v = str(verdict)
    if v.startswith(NOT_TESTABLE):
        return NOT_TESTABLE
    if v in ("reproduced", "not reproduced", "not applicable"):
        return v
    raise ValueError(f"unknown scorecard verdict '{v}': the calibration counts reproduced, not reproduced, "
                     f"not applicable and '{NOT_TESTABLE}: <reason>'")


def read_cohort_runs(project: Path, name: str, kind: str, seed: int) -> pd.DataFrame:
    """One cohort's scorecard rows (claim, verdict, p and permutation_p when the scorecard has it)."""
    card = pd.read_csv(project / "results" / name / "scorecard.csv")
    cols = ["claim", "verdict", "p"] + (["permutation_p"] if "permutation_p" in card.columns else [])
    return card[cols].assign(cohort=name, kind=kind, seed=int(seed))


def collect_runs(project: Path, cohorts: list[tuple[str, str, int]], last_notebook: str) -> pd.DataFrame:
    """Every finished cohort's scorecard rows, one table (columns RUN_COLUMNS [+ permutation_p])."""
    parts = [read_cohort_runs(project, name, kind, seed) for name, kind, seed in cohorts
             if is_finished(project, name, last_notebook)]
    if not parts:
        return pd.DataFrame(columns=RUN_COLUMNS)
    runs = pd.concat(parts, ignore_index=True)
    cols = RUN_COLUMNS + (["permutation_p"] if "permutation_p" in runs.columns else [])
    return runs[cols]


def binomial_rate(k: int, n: int, alpha: float = ALPHA) -> tuple[float, float, float]:
    """k/n with its exact (Clopper-Pearson) 1 - alpha CI; NaN for n = 0."""
    if n == 0:
        return (float("nan"), float("nan"), float("nan"))
    lo, hi = clopper_pearson(k, n, alpha)
    return (k / n, lo, hi)


def count_verdicts(runs: pd.DataFrame, claims: list[str]) -> pd.DataFrame:
    """Per claim and cohort kind: reproduced, not reproduced, not testable and not applicable counts (zeros for a
    claim or kind without runs)."""
    kinds = runs["verdict"].map(verdict_kind) if len(runs) else pd.Series(dtype=object)
    counts = (pd.crosstab([runs["claim"], runs["kind"]], kinds) if len(runs)
              else pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=["claim", "kind"])))
    full = pd.MultiIndex.from_product([claims, list(KINDS)], names=["claim", "kind"])
    verdicts = ["reproduced", "not reproduced", NOT_TESTABLE, "not applicable"]
    counts = counts.reindex(index=full, columns=verdicts, fill_value=0).fillna(0).astype(int)
    return counts.reset_index()


def summary_row(claim: str, kind: str, n_reproduced: int, n_not_reproduced: int, n_not_testable: int,
                n_not_applicable: int, alpha: float = ALPHA) -> dict[str, Any]:
    n = int(n_reproduced + n_not_reproduced)
    rate, lo, hi = binomial_rate(int(n_reproduced), n, alpha)
    return {"claim": claim, "cohort_kind": kind, "n_runs": n, "n_reproduced": int(n_reproduced), "rate": rate,
            "ci_low": lo, "ci_high": hi, "n_not_testable": int(n_not_testable),
            "n_not_applicable": int(n_not_applicable)}


def pooled_null_row(table: pd.DataFrame, alpha: float = ALPHA) -> dict[str, Any]:
    """All null claim rows pooled: summed counts, exact CI (rows of one cohort are not independent)."""
    null = table[(table["cohort_kind"] == "null") & (table["claim"] != POOLED)]
    k, n = int(null["n_reproduced"].sum()), int(null["n_runs"].sum())
    row = summary_row(POOLED, "null", k, n - k, int(null["n_not_testable"].sum()),
                      int(null["n_not_applicable"].sum()), alpha)
    return {**row, "predicted_power": np.nan,
            "note": f"{len(null)} claim rows pooled; compare with {alpha} (rows of one cohort are correlated)"}


def summarise_runs(runs: pd.DataFrame, claims: list[str], predicted: pd.DataFrame | None = None,
                   alpha: float = ALPHA) -> pd.DataFrame:
    """calibration.csv: per claim and kind the reproduced rate with its exact CI over the cohorts where the claim
    was testable (n_runs), the predicted rate (``predicted``: claim, cohort_kind, predicted_power, note) and the
    not-testable / not-applicable counts; then the pooled null row."""
    counts = count_verdicts(runs, claims)
    table = pd.DataFrame([summary_row(r["claim"], r["kind"], r["reproduced"], r["not reproduced"], r[NOT_TESTABLE],
                                      r["not applicable"], alpha) for _, r in counts.iterrows()])
    pred = predicted if predicted is not None else pd.DataFrame(columns=["claim", "cohort_kind", "predicted_power",
                                                                          "note"])
    table = table.merge(pred[["claim", "cohort_kind", "predicted_power", "note"]], on=["claim", "cohort_kind"],
                        how="left")
    table["note"] = table["note"].fillna("")
    table = pd.concat([table, pd.DataFrame([pooled_null_row(table, alpha)])], ignore_index=True)
    return table[SUMMARY_COLUMNS]


def scorecard_claims() -> list[str]:
    """The scorecard's row labels in order (:func:`helpers.claims.scorecard_claims`)."""
    return [c.label for c in registry_rows()]


def claims_in_order(runs: pd.DataFrame) -> list[str]:
    """The scorecard's claims in its order, then any claim the runs have that the scorecard module does not."""
    known = scorecard_claims()
    return known + [c for c in dict.fromkeys(runs["claim"]) if c not in known] if len(runs) else known


# -- predicted rates (notebook 09's model) ---------------------------------------------------------------------------

def power_tests_by_claim() -> dict[str, str]:
    """Scorecard claim -> the power model's test for the rows it covers (the cell claims)."""
    return {c.label: c.name for c in registry_rows() if c.kind in CELL_KINDS}


def claim_kind(label: str) -> str:
    """The readout kind of a scorecard row (``set``, ``gene``, ``progeny``, ``survival``, ``auc``); empty for a
    row the registry does not know (e.g. from an older run)."""
    try:
        return claim_by_label(label).kind
    except KeyError:
        return ""


def uncovered_note(claim: str) -> str:
    """Why the power model gives no prediction for a scorecard row."""
    kind = claim_kind(claim)
    if kind == "survival":
        return "not predicted: power.py models no bulk survival cohort"
    if kind == "auc":
        return "not predicted: power.py gives the classifier's expected AUC, not this row's verdict rule"
    return "not predicted: not modelled by power.py"


def settings_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def power_raw(sim: dict[str, Any], n_cr: int, n_nr: int, seed: int, n_reps: int, min_cells: int, n_jobs: int = 1,
              n_genes: int = POWER_GENES) -> pd.DataFrame:
    """notebook 09's simulated cohorts for one design at the configured effects (at most ``n_genes`` genes, as 09)."""
    sim = dict(sim, n_genes=min(int(sim.get("n_genes", 16000)), int(n_genes)))
    return power_grid(sim, int(seed), [(int(n_cr), int(n_nr))], [1.0], int(n_reps), n_jobs=n_jobs,
                      min_cells=int(min_cells), progress=False)


def predicted_rates(raw: pd.DataFrame, kind: str, context: str) -> pd.DataFrame:
    """Per scorecard claim row, the predicted share of ``reproduced`` among the simulated cohorts where the claim
    was testable (the calibration's own denominator); NA with a note for rows the model does not cover."""
    summary = summarise_power(raw).set_index("test")
    tests = power_tests_by_claim()
    rows = []
    for claim in scorecard_claims():
        test = tests.get(claim)
        if test is None or test not in summary.index:
            rows.append({"claim": claim, "cohort_kind": kind, "predicted_power": np.nan, "note": uncovered_note(claim)})
            continue
        s = summary.loc[test]
        n_tested = int(s["n_tested"])
        k = int(round(s["power"] * s["n_cohorts"]))
        rows.append({"claim": claim, "cohort_kind": kind, "predicted_power": k / n_tested if n_tested else np.nan,
                     "note": f"predicted: {context}; testable in {n_tested} of {int(s['n_cohorts'])}"})
    return pd.DataFrame(rows)


def predicted_table(sims: dict[str, dict[str, Any]], design: Design, base_seed: int, n_reps: int, min_cells: int,
                    cache_dir: Path, n_jobs: int = 1) -> pd.DataFrame:
    """Predicted rates of both kinds for the design (seeded: base seed for planted, base + 1 for null), cached in
    ``cache_dir`` under a key of every setting that enters them."""
    parts = []
    for kind in KINDS:
        seed = int(base_seed) + (1 if kind == "null" else 0)
        key = settings_key(sims[kind], design.n_cr_bm, design.n_nr_bm, seed, n_reps, min_cells, POWER_GENES)
        cache = cache_dir / f"power_{kind}_{key}.csv"
        if cache.exists():
            raw = pd.read_csv(cache)
        else:
            raw = power_raw(sims[kind], design.n_cr_bm, design.n_nr_bm, seed, n_reps, min_cells, n_jobs)
            write_table(raw, cache)
        context = (f"power.py, {n_reps} simulated {design.n_cr_bm} vs {design.n_nr_bm} marrow cohorts "
                   f"(seed {seed}, {min(int(sims[kind].get('n_genes', 16000)), POWER_GENES)} genes)")
        parts.append(predicted_rates(raw, kind, context))
    return pd.concat(parts, ignore_index=True)


# -- checks, report and figure --------------------------------------------------------------------------------------

def max_null_hits(n: int, alpha: float = ALPHA, tail: float = NULL_TAIL) -> int:
    """The largest reproduced count a null row may show: the smallest c that a calibrated ``alpha`` test exceeds
    with chance < ``tail`` over ``n`` cohorts (3 for n = 20)."""
    c = 0
    while c < n and sstats.binom.sf(c, n, alpha) >= tail:
        c += 1
    return c


def nominal_null_rate(claim: str, alpha: float = ALPHA) -> float:
    """The false-positive rate a row's verdict rule has by construction when the power model does not give one:
    AUC rows, a one-sided label-permutation p < alpha (alpha); prognosis, a two-sided Cox p < alpha with the hazard ratio
    above 1 (alpha / 2)."""
    return alpha / 2 if claim_kind(claim) == "survival" else alpha


def expected_null_count(table: pd.DataFrame, alpha: float = ALPHA) -> tuple[float, float, float]:
    """Expected reproduced count over the null rows under each row's own rule (the power model's false-positive rate
    where it has one, else :func:`nominal_null_rate`), and the exact Poisson-binomial chances of at most and at
    least the observed count (cohorts and rows taken as independent)."""
    rows = table[(table["cohort_kind"] == "null") & (table["claim"] != POOLED) & (table["n_runs"] > 0)]
    pmf, expected = np.array([1.0]), 0.0
    for r in rows.itertuples():
        q = float(r.predicted_power) if pd.notna(r.predicted_power) else nominal_null_rate(r.claim, alpha)
        expected += q * r.n_runs
        pmf = np.convolve(pmf, sstats.binom.pmf(np.arange(r.n_runs + 1), r.n_runs, q))
    k = int(rows["n_reproduced"].sum())
    return expected, float(pmf[:k + 1].sum()), float(pmf[k:].sum())


def calibration_checks(table: pd.DataFrame, alpha: float = ALPHA) -> list[dict[str, Any]]:
    """The reading rules, evaluated: pooled null CI contains alpha and its upper bound < 2 alpha; no null row above
    :func:`max_null_hits`; each planted row's predicted rate inside the planted rate's CI."""
    out = []
    pooled = table[table["claim"] == POOLED].iloc[0]
    out.append({"check": f"pooled null rate CI contains {alpha}",
                "passed": bool(pooled["ci_low"] <= alpha <= pooled["ci_high"]),
                "detail": f"{pooled['n_reproduced']} of {pooled['n_runs']}, {fmt(pooled['rate'])} "
                          f"[{fmt(pooled['ci_low'])}, {fmt(pooled['ci_high'])}]"})
    out.append({"check": f"pooled null CI upper bound < {2 * alpha:g}", "passed": bool(pooled["ci_high"] < 2 * alpha),
                "detail": fmt(pooled["ci_high"])})
    expected, p_low, p_high = expected_null_count(table, alpha)
    out.append({"check": "pooled null count consistent with the rows' own false-positive rates (both tails > 0.025)",
                "passed": bool(min(p_low, p_high) > 0.025),
                "detail": f"{pooled['n_reproduced']} observed, {expected:.2f} expected "
                          f"({expected / max(int(pooled['n_runs']), 1):.3f} of {pooled['n_runs']}); "
                          f"P(at most observed) = {p_low:.3f}, P(at least) = {p_high:.3f}"})
    for r in table[(table["cohort_kind"] == "null") & (table["claim"] != POOLED)].itertuples():
        if r.n_runs:
            c = max_null_hits(r.n_runs, alpha)
            out.append({"check": f"null: {r.claim} at most {c} of {r.n_runs}", "passed": bool(r.n_reproduced <= c),
                        "detail": f"{r.n_reproduced} of {r.n_runs}"})
    for r in table[(table["cohort_kind"] == "planted") & table["predicted_power"].notna()].itertuples():
        if r.n_runs:
            out.append({"check": f"planted: {r.claim} predicted {fmt(r.predicted_power)} inside the rate's CI",
                        "passed": bool(r.ci_low <= r.predicted_power <= r.ci_high),
                        "detail": f"{r.n_reproduced} of {r.n_runs}, {fmt(r.rate)} [{fmt(r.ci_low)}, {fmt(r.ci_high)}]"})
    return out


def fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "NA"
    if isinstance(v, (float, np.floating)):
        return f"{v:.3f}"
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v).replace("|", "/") for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def plot_calibration(table: pd.DataFrame, path: Path, alpha: float = ALPHA) -> Path:
    """Per claim: planted rate with its CI against the predicted power (left); null rate with its CI against
    ``alpha`` (right, with the pooled null row)."""
    claims = [c for c in dict.fromkeys(table["claim"]) if c != POOLED]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * len(claims) + 2.2), sharey=False)
    for ax, kind in zip(axes, ("planted", "null")):
        names = claims + ([POOLED] if kind == "null" else [])
        t = table[table["cohort_kind"] == kind].set_index("claim").reindex(names)
        y = np.arange(len(names))[::-1]
        rate = t["rate"].to_numpy(float)
        err = np.vstack([rate - t["ci_low"].to_numpy(float), t["ci_high"].to_numpy(float) - rate])
        ax.errorbar(rate, y, xerr=err, fmt="o", color="black", capsize=3, label=f"{kind} rate, exact 95% CI")
        if kind == "null":
            ax.axvline(alpha, color="tab:red", ls="--", label=f"{alpha}")
        what = "power" if kind == "planted" else "rate"
        ax.plot(t["predicted_power"].to_numpy(float), y, "x", color="tab:red", ms=9, mew=2, zorder=3,
                label=f"predicted {what} (notebook 09's model)")
        for yi, n in zip(y, t["n_runs"].fillna(0).astype(int)):
            ax.annotate(f"n={n}", (1.02, yi), xycoords=("axes fraction", "data"), fontsize=8, va="center")
        ax.set_yticks(y, [n if len(n) < 52 else n[:50] + "..." for n in names], fontsize=9)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("share of cohorts with verdict 'reproduced'")
        ax.set_title(f"{kind} cohorts")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=130, format="png", bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def minutes_text(s: float) -> str:
    return "NA" if s != s else f"{s / 60:.1f} min"


def calibration_markdown(table: pd.DataFrame, checks: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """calibration.md: what was run, the table, how to read it, the checks and any failed cohort."""
    per = meta["cohort_seconds"]
    lines = [
        "# Calibration of the whole chain (`make calibrate`)",
        "",
        f"Generated by `{meta['command']}` on {meta['date']}.",
        "",
        f"- Design: {meta['design']}.",
        f"- Cohorts: K = {meta['k']} null (settings of `ifm2017_null`) and K = {meta['k']} planted (settings of "
        f"`ifm2017_sim`), each run through notebooks {', '.join(meta['notebooks'])} (09_power skipped) in a "
        f"scratch project root ({meta['scratch']}). Finished: {meta['n_finished']['null']} null, "
        f"{meta['n_finished']['planted']} planted.",
        f"- Seeds: base {meta['base_seed']}; planted cohort i has seed base + 2i, null cohort i base + 2i + 1 "
        f"(planted {meta['seeds']['planted']}, null {meta['seeds']['null']}); the blood sheet's seed is derived "
        "from the cohort's; predicted rates are seeded with base (planted) and base + 1 (null).",
        f"- Run time: one cohort's chain took median {minutes_text(per['median'])} (range {minutes_text(per['min'])}"
        f"-{minutes_text(per['max'])}, {meta['threads']} thread(s), {meta['jobs']} cohort(s) at a time); sum over "
        f"cohorts {minutes_text(per['sum'])}; this invocation's wall time {minutes_text(meta['wall_seconds'])}"
        + (" (finished cohorts of earlier invocations were skipped)" if meta["n_skipped"] else "") + ".",
        f"- Predicted rates: notebook 09's model (helpers.analysis.power.power_grid) for the same marrow design and "
        f"settings, {meta['power_reps']} simulated cohorts per kind, at most {POWER_GENES} genes as in notebook 09; "
        "rows it does not cover are NA (see the note column).",
        "",
        "## Table (`calibration.csv`)",
        "",
        "`rate` = n_reproduced / n_runs with the exact (Clopper-Pearson) 95% CI; `n_runs` counts the cohorts where "
        "the claim was testable (verdict reproduced or not reproduced); not-testable and not-applicable verdicts are "
        "counted apart. Per-cohort rows: `calibration_runs.csv`. Read either file with "
        "`helpers.validation.calibration.read_calibration_table` (or `pd.read_csv(path, keep_default_na=False, na_values=[''])`: "
        "pandas reads the kind `null` as missing by default).",
        "",
        markdown_table(table.assign(claim=table["claim"].str.replace("|", "/"))),
        "",
        "## How to read it",
        "",
        f"- **Null**: with nothing planted every `reproduced` is a false positive. The pooled null rate should be "
        f"about {ALPHA}, its CI should contain {ALPHA} and its upper bound stay below {2 * ALPHA:g}; no single null "
        f"row should exceed {max_null_hits(20)} of 20 (in general the count a calibrated 5% test exceeds with chance "
        f"< {NULL_TAIL}). The directional rows need p < 0.05 *and* the study's direction, so a calibrated two-sided "
        "test gives about half of 0.05 there (`predicted_power` on the null rows is the model's false-positive rate); "
        "the other rows follow their own rules (the scorecard's `rule` column). The pooled CI treats rows as "
        "independent although rows of one cohort are correlated (e.g. the AUC rows): read it as approximate. Because "
        "the directional rows are one-sided, the pooled rate a calibrated chain is expected to give is below 0.05: "
        "the third check compares the pooled count with the sum of the rows' own false-positive rates (the model's "
        "where it has one; 0.05 for the one-sided AUC permutation rows, 0.025 for prognosis).",
        "- **Planted**: the rate is the chain's power at this design; it should agree with the predicted power "
        "within its CI. A planted rate clearly below the prediction means the chain (QC, annotation, the "
        "not-testable rules) loses power that the pseudobulk model does not see; clearly above means the model is "
        "pessimistic.",
        "",
        "## Checks",
        "",
        markdown_table(pd.DataFrame([{"check": c["check"], "result": "pass" if c["passed"] else "FAIL",
                                      "detail": c["detail"]} for c in checks])),
        "",
    ]
    if meta["failures"]:
        lines += ["## Cohorts that failed (not counted; a rerun retries them)", ""]
        lines += [f"- `{name}`: {msg.splitlines()[0]}" for name, msg in meta["failures"].items()]
        lines.append("")
    return "\n".join(lines)


# -- the whole calibration ----------------------------------------------------------------------------------------

def planned_cohorts(k: int, base_seed: int) -> list[tuple[str, str, int]]:
    """(name, kind, seed) of every calibration cohort, null and planted interleaved by index, so that a run stopped
    early (it resumes) leaves as many finished cohorts of each kind."""
    return [(cohort_name(kind, i), kind, cohort_seed(base_seed, kind, i)) for i in range(k) for kind in KINDS]


def source_configs(checkout: Path) -> dict[str, dict[str, Any]]:
    return {kind: load_cohort(name, root=checkout).config for kind, name in SOURCE_COHORTS.items()}


def prepare_cohorts(project: Path, cohorts: list[tuple[str, str, int]], sources: dict[str, dict[str, Any]],
                    design: Design) -> None:
    for name, kind, seed in cohorts:
        cfg = calibration_config(sources[kind], name, kind, seed, design)
        write_cohort(project, name, cohort_files(cfg, calibration_samples(design, seed)))
        load_cohort(name, root=project)  # validates the written definition now, not inside a notebook


def read_calibration_table(path: str | Path) -> pd.DataFrame:
    """Read calibration.csv or calibration_runs.csv back: the kind 'null' stays a string (pandas' default reads
    'null' as missing), only empty cells are missing."""
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def write_outputs(out_dir: Path, runs: pd.DataFrame, table: pd.DataFrame, markdown: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "calibration.csv", "md": out_dir / "calibration.md",
             "png": out_dir / "calibration.png", "runs": out_dir / "calibration_runs.csv"}
    write_table(table, paths["csv"])
    write_table(runs, paths["runs"])
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(markdown)
    plot_calibration(table, paths["png"])
    return paths


def calibrate(k: int, design: Design, base_seed: int, out_dir: Path, checkout: Path | None = None,
              scratch: Path | None = None, jobs: int = 2, threads: int = 1, power_reps: int = 500,
              keep_processed: bool = False, fresh: bool = False, progress: bool = True,
              command: str = "python -m helpers.validation.calibration") -> dict[str, Any]:
    """Run (or resume) K null and K planted cohorts through the chain and write the summary into ``out_dir``.
    Returns the output paths, the summary table, the checks and the failures."""
    if k < 1:
        raise ValueError(f"K must be at least 1, got {k}")
    t0 = time.time()
    checkout = Path(checkout or project_root()).resolve()
    scratch = Path(scratch or scratch_root(checkout, design))
    if fresh:
        shutil.rmtree(scratch, ignore_errors=True)
    project = link_project(scratch, checkout)
    sources = source_configs(checkout)
    cohorts = planned_cohorts(k, base_seed)
    prepare_cohorts(project, cohorts, sources, design)
    notebooks = chain_notebooks(checkout)
    n_skipped = sum(is_finished(project, name, notebooks[-1]) for name, _, _ in cohorts)
    min_cells = int({**sources["planted"].get("analysis", {}), **design.analysis}.get("min_cells", DEFAULT_MIN_CELLS))
    sims = {kind: simulation_settings(sources[kind]["simulation"], design) for kind in KINDS}
    predicted = predicted_table(sims, design, base_seed, power_reps, min_cells, scratch, n_jobs=jobs)
    failures = run_cohorts(project, [c[0] for c in cohorts], notebooks, jobs, threads, keep_processed, progress)
    runs = collect_runs(project, cohorts, notebooks[-1])
    table = summarise_runs(runs, claims_in_order(runs), predicted)
    checks = calibration_checks(table)
    finished = runs.drop_duplicates("cohort")
    per = pd.Series([chain_seconds(project, c) for c in finished["cohort"]], dtype=float)
    meta = {"command": command, "date": time.strftime("%Y-%m-%d"), "design": design.text(), "k": k,
            "notebooks": notebooks, "scratch": str(scratch.relative_to(checkout) if scratch.is_relative_to(checkout)
                                                    else scratch),
            "n_finished": {kind: int((finished["kind"] == kind).sum()) for kind in KINDS},
            "base_seed": base_seed, "seeds": {kind: seed_range(base_seed, kind, k) for kind in KINDS},
            "cohort_seconds": {"median": per.median(), "min": per.min(), "max": per.max(), "sum": per.sum()},
            "threads": threads, "jobs": jobs, "wall_seconds": time.time() - t0, "n_skipped": n_skipped,
            "power_reps": power_reps, "failures": failures}
    paths = write_outputs(Path(out_dir), runs, table, calibration_markdown(table, checks, meta))
    return {"paths": paths, "table": table, "checks": checks, "failures": failures, "meta": meta}


def seed_range(base_seed: int, kind: str, k: int) -> str:
    first, last = cohort_seed(base_seed, kind, 0), cohort_seed(base_seed, kind, k - 1)
    return str(first) if k == 1 else f"{first}, {first + 2}, ..., {last}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.validation.calibration", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=20, help="cohorts of each kind (null, planted)")
    ap.add_argument("--bm", type=int, nargs=2, default=[6, 6], metavar=("N_CR", "N_NR"), help="marrow patients")
    ap.add_argument("--pb", type=int, nargs=2, default=[6, 6], metavar=("N_CR", "N_NR"),
                    help="blood validation patients (0 0: none)")
    ap.add_argument("--bm-cells", type=int, default=Design.bm_cells, help="median marrow cells per sample")
    ap.add_argument("--pb-cells", type=int, default=Design.pb_cells, help="median blood cells per sample")
    ap.add_argument("--n-genes", type=int, default=None, help="genes simulated (default: the source cohort's)")
    ap.add_argument("--analysis", default="{}",
                    help="analysis settings for every cohort, as YAML, e.g. '{n_perm: 200}'")
    ap.add_argument("--seed", type=int, default=150000, help="base seed")
    ap.add_argument("--jobs", type=int, default=2, help="cohorts at a time")
    ap.add_argument("--threads", type=int, default=1, help="threads per cohort")
    ap.add_argument("--power-reps", type=int, default=500, help="simulated cohorts per kind for the predicted power")
    ap.add_argument("--out", default=None, help="output folder (default: validation/ of the checkout)")
    ap.add_argument("--scratch", default=None, help="scratch project root (default: .cache/calibration/<design>)")
    ap.add_argument("--keep-processed", action="store_true", help="keep each cohort's h5ad files")
    ap.add_argument("--fresh", action="store_true", help="discard finished cohorts of this design first")
    args = ap.parse_args(argv)
    analysis = yaml.safe_load(args.analysis) or {}
    if not isinstance(analysis, dict):
        ap.error(f"--analysis must be a YAML mapping, got {args.analysis!r}")
    design = Design(args.bm[0], args.bm[1], args.pb[0], args.pb[1], args.bm_cells, args.pb_cells, args.n_genes,
                    analysis)
    checkout = project_root()
    command = "python -m helpers.validation.calibration " + " ".join(argv if argv is not None else sys.argv[1:])
    res = calibrate(args.k, design, args.seed, Path(args.out) if args.out else checkout / "validation", checkout,
                    Path(args.scratch) if args.scratch else None, args.jobs, args.threads, args.power_reps,
                    args.keep_processed, args.fresh, command=command)
    for name, msg in res["failures"].items():
        print(f"FAILED {msg}", file=sys.stderr)
    failed_checks = [c["check"] for c in res["checks"] if not c["passed"]]
    print(f"calibration: {res['meta']['n_finished']} cohorts finished; wrote "
          + ", ".join(str(p) for p in res["paths"].values()))
    if failed_checks:
        print("checks not passed: " + "; ".join(failed_checks))
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
