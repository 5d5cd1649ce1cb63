"""The input table embed reads (parquet or TSV from a recipe): one row per item with a unique `id`, and the
columns its modality needs. The digest of the ordered ids and their inputs makes a cache joinable only with
tables built from the same inputs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dogmacache.cache.layout import check_ids
from dogmacache.contracts import provenance
from dogmacache.contracts.tables import INPUT_COLUMNS, TSV_SUFFIXES, digest_columns, read_table
from dogmacache.contracts.windows import interval_center
from dogmacache.errors import InputError

# strand cells read as "no strand": windows on the reference strand, as for a table without a strand column
NO_STRAND = (".", "")


def read_input_table(path: str | os.PathLike, modality: str) -> pd.DataFrame:
    """The `modality` input table at `path` (`contracts.tables.read_table`), with embed's own checks: a known
    modality and file type, the modality's columns, at least one row, an id in every row, unique ids, no empty
    sequence.

    A dna table's `center` is the 1-based window centre (`contracts/windows.py`), a whole number. Without `center`
    it may give `start` and `end` as BED does (0-based, half-open: [start, end) holds bases start+1..end 1-based);
    the centre is then the base at 0-based (start + end) // 2, so an interval of even length has its midpoint at
    the window's. `strand` is '+' or '-'; '.' or an empty cell means no strand and is read as '+' (the reference
    strand), as is a table without the column."""
    path = Path(path)
    if modality not in INPUT_COLUMNS:
        raise InputError(f"modality {modality!r} is not one of {', '.join(INPUT_COLUMNS)}")
    if path.is_file() and path.suffix not in (".parquet", *TSV_SUFFIXES):
        raise InputError(f"{path}: expected a .parquet or .tsv table, got {path.suffix!r}")
    table = read_table(path, recipe="...", what="input table").reset_index(drop=True)
    if modality == "dna" and "center" not in table.columns and {"start", "end"} <= set(table.columns):
        start, end = (_whole_numbers(table, c, path, "a 0-based BED coordinate") for c in ("start", "end"))
        bad = table.index[(start < 0) | (end <= start)]
        if len(bad):
            raise InputError(
                f"{_row(path, table, bad[0])}: start {int(start[bad[0]])} and end {int(end[bad[0]])} are no interval; "
                "start and end are BED coordinates (0-based, half-open), 0 <= start < end: fix the row"
            )
        table = table.assign(center=interval_center(start, end))
    missing = [c for c in INPUT_COLUMNS[modality] if c not in table.columns]
    if missing:
        instead = " (or start and end: BED coordinates, 0-based half-open)" if missing[0] == "center" else ""
        raise InputError(
            f"{path} has no column {missing[0]!r}, which --modality {modality} needs{instead}; it has "
            f"{list(table.columns)[:10]}"
        )
    if table.empty:
        raise InputError(f"{path} has no rows")
    for column in ("id", "chrom", "center") if modality == "dna" else ("id",):
        blank = table.index[table[column].isna()]
        if len(blank):
            raise InputError(
                f"{_row(path, table, blank[0])} has no {column} (an empty cell; {len(blank)} such rows); every row "
                "needs one: fill it in or drop the row"
            )
    table = table.assign(id=table["id"].astype(str))
    check_ids(table["id"].tolist())
    if modality == "dna":
        center = _whole_numbers(table, "center", path, "the 1-based window centre")
        if not pd.api.types.is_numeric_dtype(table["center"]):
            table = table.assign(center=center)  # numbers written as text
        table = table.assign(strand=_strands(table, path))
    if modality in ("rna", "protein"):
        empty = table.index[table["sequence"].fillna("").astype(str).str.len() == 0]
        if len(empty):
            raise InputError(
                f"{path}: item {table.loc[empty[0], 'id']!r} has an empty sequence ({len(empty)} such rows); "
                "drop them in the recipe or fix the source"
            )
    return table


def _row(path: Path, table: pd.DataFrame, i: int) -> str:
    """Where row `i` of the table read from `path` is: its line in a tab-separated file (the header is line 1), its
    0-based row in a parquet file; and its id when it has one."""
    where = f"{path} line {i + 2}" if path.suffix in TSV_SUFFIXES else f"{path} row {i}"
    if "id" in table.columns and pd.notna(table.at[i, "id"]):
        where += f" (id {str(table.at[i, 'id'])!r})"
    return where


def _shown(value: Any) -> str:
    """A cell's value as the table holds it (7, 2.5, 'x'), without numpy's type around it."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _whole_numbers(table: pd.DataFrame, column: str, path: Path, meaning: str) -> pd.Series:
    """`column` as int64, or an InputError naming the first row that is empty, not a number or not whole."""
    values = pd.to_numeric(table[column], errors="coerce").astype("float64")
    bad = table.index[~(np.isfinite(values) & (values == values.round()))]
    if len(bad):
        raw = table.at[bad[0], column]
        shown = "is empty" if pd.isna(raw) else f"is {_shown(raw)}"
        raise InputError(
            f"{_row(path, table, bad[0])}: {column} {shown} ({len(bad)} such rows); expected a whole number, "
            f"{meaning}: fix the {column} column"
        )
    return values.astype("int64")


def _strands(table: pd.DataFrame, path: Path) -> pd.Series:
    """The strand column checked: '+', '-', or no strand ('.' or an empty cell, kept as written: the strand is
    part of the input digest, and every model reads such an item on the reference strand, as '+'); no column:
    '+'. Any other value is an InputError naming the first."""
    if "strand" not in table.columns:
        return pd.Series("+", index=table.index)
    strand = table["strand"].astype(object).where(table["strand"].notna(), ".").astype(str)
    bad = table.index[~strand.isin(["+", "-", *NO_STRAND])]
    if len(bad):
        value = _shown(table.at[bad[0], "strand"])
        raise InputError(
            f"{_row(path, table, bad[0])}: strand {value} is not '+' or '-' ({len(bad)} such rows); '.' or an empty "
            "cell is read as no strand ('+'): write 1 / -1 as + / - and fix the strand column"
        )
    return strand


def genome_tag(config: dict[str, Any]) -> str:
    """What of a manifest `config`'s genome (its name and sha256) goes into the input digest of a DNA table: the
    same windows cut from another genome are other inputs. "" without a genome."""
    genome = config.get("genome") or {}
    return f"{genome['name']}:{genome['sha256']}" if genome else ""


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
    if input_digest(table, modality, genome_tag(manifest.config or {})) != manifest.input_digest:
        raise InputError(
            f"{path} is not the table {url} was embedded from ("
            f"{', '.join(digest_columns(table, modality))} differ in some row, or the order does); {fix}"
        )
    return True
