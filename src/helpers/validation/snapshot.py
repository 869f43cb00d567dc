"""Committed evidence: a snapshot of what ``make all`` measured on a cohort, written under validation/<cohort>/ so
that the README and the closing notes cite generated files, never pasted numbers.

``python -m helpers.validation.snapshot --cohort NAME`` (or ``make snapshot COHORT=NAME``) after ``make all COHORT=NAME``
writes:

- ``scorecard.csv``: the cohort's scorecard (notebook 10);
- ``qc_annotation.json``: QC and annotation against the planted truth (notebooks 01-02) with the goals and whether
  each is met (simulated cohorts; real cohorts have no truth and get the unassigned/plasma fractions only);
- ``planted.json``: per claim, the share of its tested set the simulator planted (truth.json), simulated cohorts;
- ``realism.json``: the realism recipe (:mod:`helpers.validation.realism`) when the cohort has blood samples.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import anndata as ad

from helpers.data.cohort import Cohort, load_cohort
from helpers.io import indexed_files
from helpers.validation.realism import silhouette_against_reference

# QC/annotation goals of the default cohort (issue 4, unchanged since): key in 01.json/02.json -> goal
GOALS = {"junk_removed_fraction": 0.80, "good_kept_fraction": 0.95, "compartment_accuracy": 0.95,
         "subset_macro_f1": 0.85}
REPORTED = ["unassigned_fraction", "plasma_fraction", "nk_cd54_split", "n_malignant"]


def _findings(cohort: Cohort, notebook: str) -> dict[str, Any]:
    path = cohort.findings_dir / f"{notebook}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run make all COHORT={cohort.name} first")
    return json.loads(path.read_text())


def qc_annotation_summary(cohort: Cohort) -> dict[str, Any]:
    """The QC/annotation goals as measured (notebooks 01-02), each with its goal and whether it is met."""
    found = {**_findings(cohort, "01"), **_findings(cohort, "02")}
    out: dict[str, Any] = {"cohort": cohort.name, "goals": {}}
    for key, goal in GOALS.items():
        value = found.get(key)
        out["goals"][key] = {"measured": value, "goal": goal,
                             "met": None if value is None else bool(value >= goal)}
    out.update({k: found.get(k) for k in REPORTED})
    return out


def planted_summary(cohort: Cohort) -> dict[str, Any]:
    """Per claim, the planted share of its tested set, and per effect the planted share of its pathway."""
    truth = json.loads((cohort.processed_dir / "truth.json").read_text())
    return {"claims": truth.get("claims_tested_set_planted", {}),
            "effects": {k: {"pathway": v.get("pathway"), "fraction_of_pathway_planted":
                            v.get("fraction_of_pathway_planted"), "n_genes": len(v["genes"]),
                            "n_genes_outside_tested_sets": len(v.get("genes_outside_tested_sets", []))}
                        for k, v in truth["effects"].items()}}


def snapshot(cohort: Cohort, out_dir: Path | None = None, realism: bool = True) -> dict[str, Path]:
    """Write the cohort's evidence files (see the module text) and return their paths."""
    out_dir = out_dir or cohort.root / "validation" / cohort.name
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    card = cohort.results_dir / "scorecard.csv"
    if card.exists():
        written["scorecard"] = Path(shutil.copyfile(card, out_dir / "scorecard.csv"))
    summary = qc_annotation_summary(cohort)
    written["qc_annotation"] = _write(out_dir / "qc_annotation.json", summary)
    if cohort.kind == "simulated" and (cohort.processed_dir / "truth.json").exists():
        written["planted"] = _write(out_dir / "planted.json", planted_summary(cohort))
    cells_path = cohort.processed_dir / "cells.h5ad"
    if realism and cohort.kind == "simulated" and cells_path.exists() and "PB" in cohort.config.get("tissues", []):
        files = indexed_files(cells_path)  # cells.h5ad naming per-sample files (dask engine), or None
        if files is None:
            cells = ad.read_h5ad(cells_path, backed="r")
            blood = cells[(cells.obs["tissue"].astype(str) == "PB").to_numpy()].to_memory()
        else:
            pb = cohort.samples.loc[cohort.samples["tissue"].astype(str) == "PB", "sample_id"].astype(str)
            blood = ad.concat([ad.read_h5ad(files[s]) for s in pb], merge="same")
        written["realism"] = _write(out_dir / "realism.json", silhouette_against_reference(blood))
    return written


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Snapshot a built cohort's measured evidence into validation/<cohort>/")
    ap.add_argument("--cohort", default="ifm2017_sim")
    ap.add_argument("--no-realism", action="store_true", help="skip the realism recipe")
    args = ap.parse_args(argv)
    for name, path in snapshot(load_cohort(args.cohort), realism=not args.no_realism).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
