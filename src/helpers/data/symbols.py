"""Gene symbols from older references (hg19-era names such as IGJ, FAM46C, WHSC1) mapped to current symbols at
ingest, offline, from the committed table data/genesets/symbol_previous_to_current_orghs_3.16.tsv.gz (NCBI Gene
aliases as shipped in Bioconductor org.Hs.eg.db 3.16.0; how it was made: data/genesets/README.md).

Rules (:func:`update_symbols`): a name is renamed only when it is not a current symbol, the table maps it to
exactly one gene, and the rename creates no duplicate: when the current symbol is already in the data the current
row is kept and the old-named row keeps its old name (no summing); when several names of the data map to the same
current symbol none is renamed. Every decision is recorded in ``uns["symbol_renames"]``.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import anndata as ad
import pandas as pd
import yaml

from helpers.data.cohort import project_root
from helpers.data.genesets import genesets_dir

SYMBOL_TABLE = "symbol_previous_to_current_orghs_3.16.tsv.gz"
RENAMED = "renamed"
SHOW = 30  # absent genes named per file in the warning
GENE_LIST_KEYS = ("markers", "negative", "genes", "kappa", "lambda")  # the lists of genes in data/markers.yaml


@lru_cache(maxsize=1)
def previous_to_current() -> pd.Series:
    """previous symbol -> current symbol (index unique)."""
    t = pd.read_csv(genesets_dir() / SYMBOL_TABLE, sep="\t", dtype=str, keep_default_na=False)  # NA is a symbol
    return pd.Series(t["current"].to_numpy(), index=pd.Index(t["previous"].to_numpy(), name="previous"), name="current")


def symbol_renames(var_names) -> pd.DataFrame:
    """The decision for every name of ``var_names`` the table knows: columns previous, current, action
    ('renamed', or why it was kept under its old name)."""
    names = pd.Index(var_names).astype(str)
    table = previous_to_current()
    old = names[names.isin(table.index)]
    df = pd.DataFrame({"previous": old, "current": table.reindex(old).to_numpy()})
    present = df["current"].isin(names)
    shared = df["current"].duplicated(keep=False)
    df["action"] = RENAMED
    df.loc[shared, "action"] = "kept: several names of the data map to this symbol"
    df.loc[present, "action"] = "kept: the current symbol is also in the data"
    return df.reset_index(drop=True)


def update_symbols(adata: ad.AnnData) -> ad.AnnData:
    """A copy of ``adata`` with previous symbols renamed to current ones (rules in the module docstring); the
    decisions in ``uns['symbol_renames']`` (empty table when nothing was known)."""
    decisions = symbol_renames(adata.var_names)
    mapping = dict(decisions.loc[decisions["action"] == RENAMED, ["previous", "current"]].to_numpy())
    out = adata.copy()
    if mapping:
        out.var_names = [mapping.get(g, g) for g in adata.var_names.astype(str)]
    out.uns["symbol_renames"] = decisions
    return out


def required_genes() -> dict[str, list[str]]:
    """The genes the analysis names: marker table (data/markers.yaml) and classifier panel
    (data/genesets/nfkb_panel.csv), by source."""
    markers: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in GENE_LIST_KEYS and isinstance(v, list):
                    markers.extend(map(str, v))
                else:
                    walk(v)

    walk(yaml.safe_load((project_root() / "data" / "markers.yaml").read_text()))
    panel = pd.read_csv(genesets_dir() / "nfkb_panel.csv")["gene"].astype(str).tolist()
    return {"data/markers.yaml": list(dict.fromkeys(markers)), "data/genesets/nfkb_panel.csv": panel}


def warn_missing_genes(var_names, src: str) -> dict[str, list[str]]:
    """Warn naming the marker and panel genes absent from ``var_names`` (after symbol mapping); returns them."""
    names = set(pd.Index(var_names).astype(str))
    missing = {f: [g for g in genes if g not in names] for f, genes in required_genes().items()}
    missing = {f: g for f, g in missing.items() if g}
    if missing:
        warnings.warn(f"{src}: genes absent after symbol mapping: "
                      + "; ".join(f"{f}: {g[:SHOW]}" + (f" and {len(g) - SHOW} more" if len(g) > SHOW else "")
                                  for f, g in missing.items())
                      + ". Analyses using them will lack these genes.", stacklevel=2)
    return missing
