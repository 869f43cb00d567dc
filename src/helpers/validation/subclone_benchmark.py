"""The CNV subclone caller's development benchmark (:mod:`helpers.analysis.subclones`), reproducible.

A cohort is simulated with its own design seed (not the default cohort's), its good-quality cells are labelled from
the simulated truth (malignant plasma cells as tumour, T/NK/myeloid as reference: no QC or annotation, so the
benchmark measures the caller, not the chain), and notebook 08's CNV step (:func:`helpers.analysis.atlas.cnv_features`)
calls the clones. Written: per patient the called and planted counts and whether the planted clones meet the
detectability rule, and the agreement summary.

    python -m helpers.validation.subclone_benchmark       # validation/subclone_development.json, about 3 minutes
"""

from __future__ import annotations

import argparse
from typing import Any

import anndata as ad
import pandas as pd

from helpers.analysis import atlas, subclones
from helpers.data.cohort import load_cohort, project_root
from helpers.data.simulate import make_design, simulate_cohort
from helpers.io import write_json
from helpers.preprocessing.normalise import normalize_log

DEVELOPMENT_SEED = 4242  # the design seed the caller was chosen on (the default cohort's is not used)


def truth_labelled_cells(n_per_group: int, seed: int, cohort: str = "ifm2017_sim", n_jobs: int = 2
                         ) -> tuple[ad.AnnData, dict[str, Any]]:
    """A simulated marrow cohort (the settings of ``cohort``, design ``seed``): good-quality cells, log-normalised,
    with ``cell_type`` 'malignant_PC' for the planted malignant cells and ``compartment`` from the truth."""
    sim = load_cohort(cohort).simulation
    samples = make_design(n_per_group, n_per_group, seed=seed, prefix="D")
    adata, truth = simulate_cohort(samples, sim, seed=seed, n_jobs=n_jobs, progress=True)
    adata = adata[(adata.obs["truth_quality"].astype(str) == "good").to_numpy()].copy()
    normalize_log(adata)
    malignant = adata.obs["truth_malignant"].astype(bool).to_numpy()
    adata.obs["cell_type"] = pd.Categorical(["malignant_PC" if m else "other" for m in malignant])
    adata.obs["compartment"] = adata.obs["truth_compartment"].astype(str)
    return adata, truth


def subclone_benchmark(adata: ad.AnnData, truth: dict[str, Any], seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Called against planted clone counts per patient (notebook 08's CNV step) and the summary: agreement among
    rule-meeting patients and among all, and how many single-clone tumours were split."""
    called, cells = atlas.cnv_features(adata, atlas.load_atlas(), seed=seed)
    planted = subclones.subclone_truth(truth, cells)
    table = called[["cnv_subclones", "n_tumour_cells"]].join(planted, how="inner")
    single = table[(table["planted"] == 1) & table["cnv_subclones"].notna()]
    summary = {**subclones.subclone_agreement(called["cnv_subclones"], planted),
               "n_single_clone": int(len(single)), "n_single_clone_split": int((single["cnv_subclones"] > 1).sum())}
    return table, summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.validation.subclone_benchmark", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-per-group", type=int, default=15)
    ap.add_argument("--seed", type=int, default=DEVELOPMENT_SEED)
    ap.add_argument("--out", default=str(project_root() / "validation" / "subclone_development.json"))
    args = ap.parse_args(argv)
    adata, truth = truth_labelled_cells(args.n_per_group, args.seed)
    table, summary = subclone_benchmark(adata, truth)
    print(table.to_string())
    print(summary)
    write_json({"design": {"n_per_group": args.n_per_group, "seed": args.seed}, "summary": summary,
                "patients": table.reset_index(names="patient_id").to_dict("records")}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
