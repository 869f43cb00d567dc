"""A real-cell cohort built inside the tests from the counts the project ships.

The 559 real immune cells of data/reference/celltypist_sample_559cells.h5ad (full transcriptome, hg19-era symbols
such as IGJ; mostly monocytes, some NK/T/B, no plasma cells) are resampled per patient, every drawn cell thinned
binomially (each UMI kept with a probability drawn per cell), so no two cells are identical. Written as Cell
Ranger v3 folders (with three 'Antibody Capture' rows, CD16/CD38/CD54, in some samples), a samples.csv and a
``kind: real`` cohort.yaml: bone marrow only, no blood, flow or bulk tables, paediatric ages.

One effect is planted without the project's annotator, by a rule on the reference cell's raw counts:
NK-like cells are those with NKG7 + GNLY >= 3, no CD3E/CD3D count and LYZ <= 5 (not a monocyte). In NR patients
their FCGR3A counts are thinned again (each UMI kept with probability 0.4, log2(0.4) = -1.3), and their CD16
antibody counts scaled by the same factor. Each patient gets a fixed share of NK-like cells (oversampled from the
pool, every pool cell equally often, still thinned) so the NK claim has cells to test. The rule, the selected cells
and the expected direction are in ``planted_effect.json`` beside the cohort; the pipeline does not read it.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "data" / "reference" / "celltypist_sample_559cells.h5ad"
ANTIBODIES = ["CD16", "CD38", "CD54"]
PLANTED_FILE = "planted_effect.json"
NK_RULE = "NKG7 + GNLY >= 3 and CD3E + CD3D == 0 and LYZ <= 5 (raw counts of the reference cell)"


def _gene(X: sp.csr_matrix, var_names: pd.Index, name: str) -> np.ndarray:
    return np.asarray(X[:, var_names.get_loc(name)].todense()).ravel()


def nk_like(ref: ad.AnnData) -> np.ndarray:
    """The planted rule (``NK_RULE``) on raw counts: True for the NK-like reference cells."""
    X = sp.csr_matrix(ref.X)
    g = {n: _gene(X, ref.var_names, n) for n in ("NKG7", "GNLY", "CD3E", "CD3D", "LYZ")}
    return (g["NKG7"] + g["GNLY"] >= 3) & (g["CD3E"] + g["CD3D"] == 0) & (g["LYZ"] <= 5)


def thin(X: sp.csr_matrix, keep: np.ndarray, rng: np.random.Generator) -> sp.csr_matrix:
    """Binomial thinning: each UMI of row i kept with probability keep[i] (counts stay integers)."""
    X = sp.csr_matrix(X, dtype=np.int64)
    p = np.repeat(np.asarray(keep, dtype=float), np.diff(X.indptr))
    out = sp.csr_matrix((rng.binomial(X.data, p), X.indices, X.indptr), shape=X.shape)
    out.eliminate_zeros()
    return out


def antibody_counts(src_fcgr3a: np.ndarray, nk: np.ndarray, keep: np.ndarray, cd16_factor: float,
                    rng: np.random.Generator) -> pd.DataFrame:
    """Plausible CITE-seq counts (Poisson): CD16 high on NK-like cells (times ``cd16_factor``) and on
    FCGR3A-expressing monocytes, CD38 higher on NK-like cells, CD54 (ICAM1) higher on the other (mostly myeloid)
    cells; background on the rest; scaled by each cell's capture (``keep``)."""
    mono16 = ~nk & (src_fcgr3a >= 2)
    means = {"CD16": np.where(nk, 150 * cd16_factor, np.where(mono16, 80, 8)),
             "CD38": np.where(nk, 60, 20),
             "CD54": np.where(nk, 15, 50)}
    return pd.DataFrame({k: rng.poisson(v * keep) for k, v in means.items()})[ANTIBODIES]


def write_10x_v3(X: sp.csr_matrix, symbols, barcodes, folder: Path, antibodies: pd.DataFrame | None = None) -> None:
    """A Cell Ranger v3 matrix folder (gzipped matrix.mtx, features.tsv with id/symbol/type, barcodes.tsv);
    ``antibodies`` (cells x names) appended as 'Antibody Capture' rows."""
    folder.mkdir(parents=True, exist_ok=True)
    feats = pd.DataFrame({"id": [f"ENSG{i:011d}" for i in range(len(symbols))], "name": list(symbols),
                          "type": "Gene Expression"})
    if antibodies is not None:
        X = sp.hstack([X, sp.csr_matrix(antibodies.to_numpy())]).tocsr()
        feats = pd.concat([feats, pd.DataFrame({"id": [f"{a}_TotalSeqB" for a in antibodies.columns],
                                                "name": list(antibodies.columns), "type": "Antibody Capture"})])
    buf = io.BytesIO()
    scipy.io.mmwrite(buf, sp.csr_matrix(X).T.tocoo().astype(np.int64), field="integer")
    _write_gz(folder / "matrix.mtx.gz", buf.getvalue())
    _write_gz(folder / "features.tsv.gz", feats.to_csv(sep="\t", header=False, index=False).encode())
    _write_gz(folder / "barcodes.tsv.gz", "".join(f"{b}\n" for b in barcodes).encode())


def _write_gz(path: Path, data: bytes) -> None:
    # mtime 0: the same bytes at every build
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as fh:
        fh.write(data)


def _barcodes(n: int, rng: np.random.Generator) -> list[str]:
    out: dict[str, None] = {}
    while len(out) < n:
        out["".join(rng.choice(list("ACGT"), 16)) + "-1"] = None
    return list(out)


def cohort_yaml(name: str, seed: int) -> str:
    return (f"name: {name}\nkind: real\ndescription: real cells (celltypist sample, resampled and thinned) with a "
            f"planted NK CD16 effect; bone marrow only\nseed: {seed}\ntissues: [BM]\ndiscovery_tissue: BM\n"
            "response: {groups: [CR, NR], reference: CR}\nsamples: samples.csv\n"
            "analysis: {n_perm: 100, power_reps: 2}\n")


def build_real_cohort(dest: str | Path, name: str, n_cr: int = 5, n_nr: int = 5, seed: int = 559,
                      cells: tuple[int, int] = (350, 500), nk_share: float = 0.3,
                      keep: tuple[float, float] = (0.7, 0.9), nr_fcgr3a_keep: float = 0.4,
                      antibody_samples: int = 4) -> Path:
    """Write the cohort folder ``dest/name`` (cohort.yaml, samples.csv, counts/<sample>/ Cell Ranger v3 folders,
    planted_effect.json) and return it. Patients alternate CR/NR between batches b1 and b2 (each batch holds both
    groups); the first ``antibody_samples`` samples (CR and NR alternately) carry CD16/CD38/CD54 antibody rows."""
    rng = np.random.default_rng(seed)
    ref = ad.read_h5ad(REFERENCE)
    X = sp.csr_matrix(ref.X).astype(np.int64)
    nk = nk_like(ref)
    nk_idx, other_idx = np.flatnonzero(nk), np.flatnonzero(~nk)
    fcgr3a = ref.var_names.get_loc("FCGR3A")
    src_fcgr3a = _gene(X, ref.var_names, "FCGR3A")
    cdir = Path(dest) / name
    (cdir / "counts").mkdir(parents=True, exist_ok=True)
    responses = ["CR"] * n_cr + ["NR"] * n_nr
    order = [i for pair in zip(range(n_cr), range(n_cr, n_cr + n_nr)) for i in pair]
    order += [i for i in range(n_cr + n_nr) if i not in order]  # CR, NR, CR, NR, ... then the surplus group
    rows, selected = [], {}
    for k, i in enumerate(order):
        sid, resp = f"S{k + 1:02d}", responses[i]
        n = int(rng.integers(cells[0], cells[1] + 1))
        n_nk = int(round(nk_share * n))
        # every NK-like reference cell drawn equally often (their FCGR3A counts sit in a few cells: drawn at random,
        # which ones a patient gets would swamp the planted effect); the other cells drawn at random
        src = np.concatenate([np.resize(rng.permutation(nk_idx), n_nk), rng.choice(other_idx, n - n_nk)])
        p = rng.uniform(*keep, size=n)
        Y = thin(X[src], p, rng).tolil()
        is_nk = nk[src]
        if resp == "NR":  # the planted effect: FCGR3A thinned again in the NK-like cells
            col = np.asarray(Y[:, fcgr3a].todense()).ravel()
            col[is_nk] = rng.binomial(col[is_nk], nr_fcgr3a_keep)
            Y[:, fcgr3a] = col[:, None]
        barcodes = _barcodes(n, rng)
        abs_ = None
        if k < antibody_samples:
            abs_ = antibody_counts(src_fcgr3a[src], is_nk, p, nr_fcgr3a_keep if resp == "NR" else 1.0, rng)
        write_10x_v3(sp.csr_matrix(Y), ref.var_names, barcodes, cdir / "counts" / sid, abs_)
        selected[sid] = [b for b, s in zip(barcodes, is_nk) if s]
        rows.append({"sample_id": sid, "patient_id": f"P{k + 1:02d}", "tissue": "BM", "response": resp,
                     "age": int(rng.integers(4, 18)), "batch": f"b{k // 2 % 2 + 1}", "path": f"counts/{sid}"})
    pd.DataFrame(rows).to_csv(cdir / "samples.csv", index=False)
    (cdir / "cohort.yaml").write_text(cohort_yaml(name, seed))
    planted = {
        "note": "written by tests/realcohort.py; not read by the pipeline",
        "source": str(REFERENCE.relative_to(ROOT)),
        "claim": "nk_cd54dim_cd16", "gene": "FCGR3A", "direction": "down",
        "rule": NK_RULE, "nr_keep_probability": nr_fcgr3a_keep,
        "expected_log2_effect": float(np.log2(nr_fcgr3a_keep)),
        "thinning_keep_probability": list(keep), "nk_share": nk_share, "seed": seed,
        "antibody_samples": [r["sample_id"] for r in rows[:antibody_samples]],
        "antibody_cd16_nr_factor": nr_fcgr3a_keep,
        "selected_reference_cells": list(ref.obs_names[nk]),
        "selected_cells": selected,
    }
    (cdir / PLANTED_FILE).write_text(json.dumps(planted, indent=1))
    return cdir
