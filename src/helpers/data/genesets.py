"""Committed gene sets (data/genesets/, sources and licences in data/genesets/README.md).

No gene set is ever downloaded at run time: decoupler's ``op.progeny()`` and friends fetch from the
network, so the compendium reads its own copies here.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

from helpers.data.cohort import project_root


def genesets_dir() -> Path:
    return project_root() / "data" / "genesets"


def read_gmt(path: str | Path) -> dict[str, list[str]]:
    """Parse a GMT file into {set name: [genes]} (order kept, duplicates removed)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"gene-set file {path} does not exist")
    out: dict[str, list[str]] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            raise ValueError(f"{path}, line {n}: a GMT line needs name, description and at least one gene")
        out[fields[0]] = list(dict.fromkeys(g for g in fields[2:] if g))
    return out


@lru_cache(maxsize=None)
def _collection(name: str) -> dict[str, tuple[str, ...]]:
    files = {
        "hallmark": "h.all.v7.5.1.symbols.gmt",
        "canonical": "c2.cp.v7.5.1.selected.symbols.gmt",
    }
    return {k: tuple(v) for k, v in read_gmt(genesets_dir() / files[name]).items()}


def gene_set(name: str) -> list[str]:
    """One named set from Hallmark, the canonical pathways (Reactome, WikiPathways, PID, BioCarta),
    a GO list (file stem in data/genesets, e.g. ``GO_0006909_phagocytosis_with_descendants``), the TRRUST
    NF-kB targets (``TRRUST_NFKB_family_targets_union``) or the project's curated lists (data/genesets/curated.yaml)."""
    for coll in ("hallmark", "canonical"):
        sets = _collection(coll)
        if name in sets:
            return list(sets[name])
    txt = genesets_dir() / f"{name}.txt"
    if txt.exists():
        return [g.strip() for g in txt.read_text().split() if g.strip()]
    cur = curated_sets()
    if name in cur:
        return list(cur[name])
    raise KeyError(f"gene set '{name}' is not in data/genesets (Hallmark, canonical GMT, GO/TRRUST .txt or curated.yaml)")


@lru_cache(maxsize=None)
def curated_sets() -> dict[str, tuple[str, ...]]:
    import yaml

    path = genesets_dir() / "curated.yaml"
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    return {k: tuple(v["genes"]) for k, v in data.items()}


@lru_cache(maxsize=None)
def progeny_weights(top: int = 100) -> pd.DataFrame:
    """PROGENy human model (top genes per pathway) as a decoupler-style network: source, target, weight."""
    df = pd.read_csv(genesets_dir() / "progeny_human_top100.csv")
    df = df.sort_values(["pathway", "p.value"]).groupby("pathway", sort=True).head(top)
    return df.rename(columns={"pathway": "source", "gene": "target"})[["source", "target", "weight"]].reset_index(drop=True)


def gene_positions() -> pd.DataFrame:
    """GRCh38 gene positions (symbol, chromosome, start, end), for CNV simulation and inference (a copy of
    the table read once per process)."""
    return _gene_positions(str(genesets_dir())).copy()


@lru_cache(maxsize=2)
def _gene_positions(folder: str) -> pd.DataFrame:
    df = pd.read_csv(Path(folder) / "gene_positions_grch38.tsv", sep="\t")
    return df.drop_duplicates("symbol").set_index("symbol")


@lru_cache(maxsize=1)
def centromeres() -> pd.DataFrame:
    """GRCh38 centromere midpoints and chromosome lengths (Mb), indexed by chromosome ('chr1', ...): where the p arm
    ends, for simulated arm-level copy-number events and for arm-level CNV scores (read once; do not modify)."""
    return pd.read_csv(genesets_dir() / "centromeres_grch38.tsv", sep="\t").set_index("chromosome")


def as_network(sets: dict[str, list[str]]) -> pd.DataFrame:
    """{set: genes} to a long source/target/weight table (weight 1) as decoupler expects."""
    rows = [(s, g, 1.0) for s, genes in sets.items() for g in genes]
    return pd.DataFrame(rows, columns=["source", "target", "weight"]).drop_duplicates(["source", "target"])
