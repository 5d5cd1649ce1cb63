"""The input table embed reads (parquet or TSV from a recipe): one row per item with a unique `id`, and the
columns its modality needs. The digest of the ordered ids and their inputs makes a cache joinable only with
tables built from the same inputs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
from dogmacache.cache.layout import check_ids
from dogmacache.contracts import provenance
from dogmacache.contracts.tables import INPUT_COLUMNS, TSV_SUFFIXES, digest_columns, read_table
from dogmacache.errors import InputError


def read_input_table(path: str | os.PathLike, modality: str) -> pd.DataFrame:
    """The `modality` input table at `path` (`contracts.tables.read_table`), with embed's own checks: a known
    modality and file type, the modality's columns (a dna table may give start/end instead of center), at least
    one row, unique ids, no empty sequence."""
    path = Path(path)
    if modality not in INPUT_COLUMNS:
        raise InputError(f"modality {modality!r} is not one of {', '.join(INPUT_COLUMNS)}")
    if path.is_file() and path.suffix not in (".parquet", *TSV_SUFFIXES):
        raise InputError(f"{path}: expected a .parquet or .tsv table, got {path.suffix!r}")
    table = read_table(path, recipe="...", what="input table")
    if modality == "dna" and "center" not in table.columns and {"start", "end"} <= set(table.columns):
        table = table.assign(center=(table["start"].astype("int64") + table["end"].astype("int64")) // 2)
    missing = [c for c in INPUT_COLUMNS[modality] if c not in table.columns]
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
    """The cache's identity: the ordered rows' ids and the columns that feed the model, after `extra` (e.g. the
    genome file's name and size); `contracts.provenance.input_digest` is the one definition."""
    return provenance.input_digest(table, digest_columns(table, modality), [extra] if extra else [])


def check_embedded_from(table: pd.DataFrame, modality: str, manifest: Any, url: str, path: Any, fix: str) -> bool:
    """Refuse `table` (as `read_input_table` gives it) unless it is the table the cache of `manifest` was embedded
    from: the same ids in order with the same inputs (for windows: chrom, center, strand) under the same genome
    (the name and digest the cache records). A table that only shares the ids would place each row elsewhere.
    False (nothing checked) for a cache embed did not write from a table (`cache import-h5`: its input digest
    covers the imported file, and no table of positions)."""
    if "input" not in (manifest.config or {}):
        return False
    genome = (manifest.config or {}).get("genome") or {}
    tag = f"{genome['name']}:{genome['sha256']}" if genome else ""
    if input_digest(table, modality, tag) != manifest.input_digest:
        raise InputError(
            f"{path} is not the table {url} was embedded from ("
            f"{', '.join(digest_columns(table, modality))} differ in some row, or the order does); {fix}"
        )
    return True
