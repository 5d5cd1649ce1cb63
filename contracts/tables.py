"""What a recipe's tables hold, for the stages that read them.

- Input tables (one per modality, read by `embed`): one row per item with a unique `id` and the columns of
  `INPUT_COLUMNS[modality]`; `DIGEST_COLUMNS` are those that feed the model and so make up the cache's
  `input_digest` (`digest_columns`).
- Labelled tables (read by `train`): one row per labelled example with a `split` column in `SPLITS` and the
  columns `LABEL_COLUMNS[task]` names; ids join with cache ids.
- Gene alignment: where a task joins an RNA and a protein table by position, index i names one gene in both.

Every stage reads these tables with `read_table`: parquet, or tab-separated when named `.tsv`, `.txt` or `.gz`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from dogmacache.errors import InputError

MODALITIES = ("dna", "rna", "protein", "gene", "context", "other")
SPLITS = ("train", "validation", "test")

INPUT_COLUMNS: dict[str, tuple[str, ...]] = {
    # center 1-based (windows.py), a whole number; + strand (optional: '+', '-'; '.', empty or none read as '+');
    # or start/end instead of center, BED-like 0-based half-open (embed/inputs.py)
    "dna": ("id", "chrom", "center"),
    "rna": ("id", "sequence"),
    "protein": ("id", "sequence"),
    "gene": ("id",),
    "context": ("id",),  # + one numeric column per gene
}

# The columns whose values feed the model; a modality not listed digests every column of its table.
DIGEST_COLUMNS: dict[str, tuple[str, ...]] = {
    "dna": ("id", "chrom", "center", "strand"),
    "rna": ("id", "sequence"),
    "protein": ("id", "sequence"),
    "gene": ("id",),
}

# Labelled tables, per task: the columns besides `split` and the target column (named in the train config).
LABEL_COLUMNS: dict[str, tuple[str, ...]] = {
    "cdt": ("enhancer", "gene", "gene_index"),  # enhancer = DNA cache id, gene = RNA/protein cache id
}


def digest_columns(table: pd.DataFrame, modality: str) -> list[str]:
    """The columns of `table` that make up a `modality` cache's input digest."""
    return list(DIGEST_COLUMNS.get(modality, table.columns))


def check_splits(table: pd.DataFrame, where: str, id_column: str | None = None) -> None:
    """Every row's `split` is one of SPLITS; else InputError naming the rows (and their ids) and the fix."""
    bad = table.index[~table["split"].isin(SPLITS)]
    if len(bad):
        shown = ", ".join(
            f"row {i} ({table.loc[i, 'split']!r}"
            + (f", {id_column} {table.loc[i, id_column]!r})" if id_column else ")")
            for i in bad[:5]
        )
        raise InputError(
            f"{where}: {len(bad)} row(s) have a split other than {list(SPLITS)}: {shown}; "
            "fix the split column or re-run the recipe"
        )


def check_one_split(table: pd.DataFrame, column: str, where: str) -> None:
    """Every value of `column` (an item, or a group of items) lies in one `split`: one in two splits would be fitted
    on in training and scored in validation or test. Else InputError naming how many, one of them and the fix."""
    n_splits = table.groupby(column, sort=False)["split"].nunique()
    spanning = n_splits[n_splits > 1]
    if len(spanning):
        example = spanning.index[0]
        splits = [s for s in SPLITS if s in set(table.loc[table[column] == example, "split"])]
        raise InputError(
            f"{where}: {len(spanning)} value(s) of {column!r} sit in more than one split, e.g. {example!r} in "
            f"{' and '.join(splits)}; give each {column} one split (split by it, or by a coarser unit)"
        )


def check_gene_alignment(rna_ids: list[str], protein_ids: list[str], where: str = "") -> None:
    """Index i must name the same gene in the RNA and the protein tables (CDT joins them by position)."""
    if len(rna_ids) != len(protein_ids):
        raise InputError(f"{where}RNA has {len(rna_ids)} genes but protein {len(protein_ids)}; they must align 1:1")
    for i, (r, p) in enumerate(zip(rna_ids, protein_ids, strict=True)):
        if r != p:
            raise InputError(f"{where}gene order differs at index {i}: RNA {r!r} vs protein {p!r}; re-run the recipe")


# columns read as text from a tab-separated table, whatever they look like (and every `*_id` column): ids such as
# "0001" or chromosome names such as "1" must not become numbers
TEXT_COLUMNS = ("id", "chrom", "strand", "split", "enhancer", "gene", "item", "sequence", "tissue")
TSV_SUFFIXES = (".tsv", ".txt", ".gz")  # read as tab-separated (gzip inferred from the name); anything else: parquet


def read_table(
    path: str | os.PathLike,
    columns: tuple[str, ...] = (),
    recipe: str = "the recipe",
    what: str = "labels table",
    expected: str = "",
    text_columns: tuple[str, ...] = (),
) -> pd.DataFrame:
    """A recipe's table (parquet; `.tsv` / `.txt` / `.gz` as tab-separated) holding `columns`: a missing file or
    column is one line naming the file, what it should hold (`expected`) and the recipe that writes it. When
    `columns` name `split`, every row's split is checked (`check_splits`). A tab-separated table's id columns
    (TEXT_COLUMNS, `*_id`, and `text_columns`) are read as text, as written."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {str(path)!r} is a folder; pass the table file in it (a .parquet or .tsv)")
    if not path.is_file():
        raise InputError(f"{what} {str(path)!r} does not exist; run `dogmacache recipe {recipe}` or fix the path")
    try:
        if path.suffix in TSV_SUFFIXES:
            header = pd.read_csv(path, sep="\t", nrows=0).columns
            text = {c: str for c in header if c in TEXT_COLUMNS or c in text_columns or c.endswith("_id")}  # "0001"
            # index_col=False: a first row with a field more than the header is refused (pandas would take the first
            # column as the index, shifting every name by one); it only warns of it, so the warning is the error
            with warnings.catch_warnings():
                warnings.simplefilter("error", pd.errors.ParserWarning)
                try:
                    table = pd.read_csv(path, sep="\t", dtype=text, index_col=False)
                except pd.errors.ParserWarning:
                    raise ValueError(
                        f"the first row under the header has {len(header) + 1} fields, the header {len(header)}"
                    ) from None
        else:
            table = pd.read_parquet(path)
    except (ValueError, OSError, UnicodeDecodeError) as err:  # pyarrow's ArrowInvalid is a ValueError
        kind = "tab-separated text" if path.suffix in TSV_SUFFIXES else "parquet"
        raise InputError(
            f"{what} {str(path)!r} is not a readable {kind} table ({str(err).splitlines()[0][:120]}); tables are "
            f".parquet, or tab-separated {'/'.join(TSV_SUFFIXES)}: convert it, or re-run `dogmacache recipe {recipe}`"
        ) from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(f"{path} has no column {missing[0]!r}; {expected or f'this {what} needs {list(columns)}'}")
    if "split" in columns:
        check_splits(table, str(path), "id" if "id" in table.columns else None)
    return table


def standardise_tissues(
    log1p: np.ndarray, train: np.ndarray, held_out: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    """The one rule for scaling per-tissue labels, used by `recipe gtex` and by CDBridge for the tissues a run
    holds out. Labels (T, K) scaled per tissue, with the mean (K,) and population std (K,) each tissue used and the seen
    tissues' pooled (mean, std). `train` (T,) marks train-split rows, `held_out` (K,) the held-out tissues.

    A seen tissue is scaled with its own train-split values. A held-out tissue is scored zero-shot, so its own
    values (train split included) must not shape its labels: it is scaled with the mean and std of every seen
    tissue's train-split values pooled. A std of 0 divides by 1 (the tissue is only centred)."""
    if held_out.all():
        raise InputError(
            f"all {len(held_out)} tissues are held out; held-out tissues are scaled with the seen tissues' "
            "statistics, so leave at least one tissue out of --holdout-tissues"
        )
    seen_train = log1p[np.ix_(train, ~held_out)]
    pooled = (float(seen_train.mean()), float(seen_train.std()))
    mean = np.where(held_out, pooled[0], log1p[train].mean(axis=0))
    std = np.where(held_out, pooled[1], log1p[train].std(axis=0))
    return (log1p - mean) / np.where(std > 0, std, 1.0), mean, std, pooled
