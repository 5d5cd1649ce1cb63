"""The input table embed reads (parquet or TSV from a recipe): one row per item with a unique `id`, and the
columns its modality needs. The digest of the ordered ids and their inputs makes a cache joinable only with
tables built from the same inputs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
from dogmacache.cache.writer import check_ids
from dogmacache.errors import InputError

REQUIRED = {
    "dna": ("id", "chrom", "center"),  # + strand (optional, default '+'); or start/end instead of center
    "rna": ("id", "sequence"),
    "protein": ("id", "sequence"),
    "gene": ("id",),
    "context": ("id",),  # + one numeric column per gene
}


def read_input_table(path: str | os.PathLike, modality: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input table {str(path)!r} does not exist; run the recipe first (dogmacache recipe ...)")
    if modality not in REQUIRED:
        raise InputError(f"modality {modality!r} is not one of {', '.join(REQUIRED)}")
    if path.suffix == ".parquet":
        table = pd.read_parquet(path)
    elif path.suffix in (".tsv", ".txt", ".gz"):
        table = pd.read_csv(path, sep="\t")
    else:
        raise InputError(f"{path}: expected a .parquet or .tsv table, got {path.suffix!r}")
    if modality == "dna" and "center" not in table.columns and {"start", "end"} <= set(table.columns):
        table = table.assign(center=(table["start"].astype("int64") + table["end"].astype("int64")) // 2)
    missing = [c for c in REQUIRED[modality] if c not in table.columns]
    if missing:
        raise InputError(
            f"{path} has no column {missing[0]!r}, which --modality {modality} needs; it has {list(table.columns)[:10]}"
        )
    if table.empty:
        raise InputError(f"{path} has no rows")
    table = table.assign(id=table["id"].astype(str))
    check_ids(table["id"].tolist())
    if modality == "dna" and "strand" not in table.columns:
        table = table.assign(strand="+")
    if modality in ("rna", "protein"):
        empty = table.index[table["sequence"].fillna("").astype(str).str.len() == 0]
        if len(empty):
            raise InputError(
                f"{path}: item {table.loc[empty[0], 'id']!r} has an empty sequence ({len(empty)} such rows); "
                "drop them in the recipe or fix the source"
            )
    return table.reset_index(drop=True)


def input_digest(table: pd.DataFrame, modality: str, extra: str = "") -> str:
    """sha256 over the ordered rows' ids and the columns that feed the model (and e.g. the genome file)."""
    columns = {"dna": ["id", "chrom", "center", "strand"], "rna": ["id", "sequence"], "protein": ["id", "sequence"],
               "gene": ["id"]}.get(modality, list(table.columns))  # fmt: skip
    h = hashlib.sha256(extra.encode())
    for row in table[columns].astype(str).itertuples(index=False):
        h.update("\t".join(row).encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()
