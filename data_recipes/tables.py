"""What every recipe shares: group splits that cannot leak, the leak check, and writing the output folder
(parquet tables + `recipe.json` with row counts, missing counts, sources and parameters).

Split units: a recipe draws its splits over groups, never over rows. Where two units (genes) share an input item
(a DNA window, a protein), one item in two splits would let the model see a test input in training, so the units
that share items, directly or through others, form one group (`linked_groups`) and the whole group falls in one
split (`split_linked`)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dogmacache.cache.storage import replace_whole
from dogmacache.contracts.provenance import package_versions
from dogmacache.contracts.tables import SPLITS, check_one_split
from dogmacache.errors import InputError


def split_groups(
    groups: Sequence[str],
    fractions: Sequence[float],
    seed: int,
    strata: Sequence[Any] | None = None,
) -> dict[str, str]:
    """Assign each distinct group (enhancer, gene) to train/validation/test by `fractions`, within each stratum
    when `strata` (one value per group, aligned with `groups`) is given. Seeded; the same inputs give the same split."""
    _check_fractions(fractions)
    groups = list(groups)
    if len(set(groups)) != len(groups):
        raise InputError("split_groups takes each group once; pass the distinct groups")
    strata = list(strata) if strata is not None else [0] * len(groups)
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for stratum in sorted(set(strata), key=str):
        members = sorted(g for g, s in zip(groups, strata, strict=True) if s == stratum)
        members = [members[i] for i in rng.permutation(len(members))]
        n = len(members)
        n_train = int(round(fractions[0] * n))
        n_val = int(round(fractions[1] * n))
        n_val = min(n_val, n - n_train)
        for i, group in enumerate(members):
            out[group] = SPLITS[0] if i < n_train else SPLITS[1] if i < n_train + n_val else SPLITS[2]
    return out


def comma_list(text: str | None) -> tuple[str, ...]:
    """A comma-separated option (e.g. --test-chroms) as a tuple of its non-empty names."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def _check_fractions(fractions: Sequence[float]) -> None:
    if len(fractions) != 3 or not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise InputError(f"split fractions {list(fractions)} must be three non-negative numbers summing to 1")


def split_holding_out(
    groups: Sequence[str],
    fractions: Sequence[float],
    seed: int,
    strata: Sequence[Any] | None = None,
    test: set[str] | frozenset[str] = frozenset(),
) -> dict[str, str]:
    """`split_groups`, with the groups in `test` (those on held-out chromosomes, `held_out_groups`) put in the test
    split and the others drawn into train and validation in the ratio of `fractions`' first two: a region-level
    hold-out, where no test window shares sequence with a training one (windows of neighbouring items overlap
    across a per-item split wherever they lie closer than the model's input width)."""
    if not test:
        return split_groups(groups, fractions, seed, strata)
    _check_fractions(fractions)
    if fractions[0] + fractions[1] <= 0:
        raise InputError(
            f"split fractions {list(fractions)} leave nothing for train and validation beside the held-out chromosomes"
        )
    groups = list(groups)
    strata = list(strata) if strata is not None else [0] * len(groups)
    rest = [(g, s) for g, s in zip(groups, strata, strict=True) if g not in test]
    if not rest:
        raise InputError("every group lies on the held-out chromosomes; hold out fewer (--test-chroms)")
    train, validation = float(fractions[0]), float(fractions[1])
    total = train + validation
    drawn = split_groups([g for g, _ in rest], (train / total, validation / total, 0.0), seed, [s for _, s in rest])
    return {**drawn, **{g: SPLITS[2] for g in groups if g in test}}


def held_out_groups(
    chrom_of_unit: dict[str, str], group_of: dict[str, str], test_chroms: Sequence[str]
) -> tuple[set[str], set[str]]:
    """(the groups whose units all lie on `test_chroms`, the groups with units on both sides): a group reaching
    several chromosomes (genes sharing a peptide, such as histone H4's on chr1, chr6 and chr12) is in neither
    split cleanly, since its genes' neighbours on the other side would share their windows' sequence. An
    InputError for a name no unit's chromosome has."""
    chroms = set(chrom_of_unit.values())
    unknown = [c for c in test_chroms if c not in chroms]
    if unknown:
        raise InputError(
            f"--test-chroms {unknown[0]!r} is no chromosome of the recipe's items (they lie on "
            f"{sorted(chroms, key=_chrom_order)[:8]}{' ...' if len(chroms) > 8 else ''}); use those names"
        )
    wanted = set(test_chroms)
    on = {group_of[u] for u, c in chrom_of_unit.items() if c in wanted}
    off = {group_of[u] for u, c in chrom_of_unit.items() if c not in wanted}
    return on - off, on & off


def _chrom_order(name: str) -> tuple[int, str]:
    bare = name.removeprefix("chr")
    return (int(bare), "") if bare.isdigit() else (1000, bare)


def linked_groups(table: pd.DataFrame, unit: str, items: Sequence[str]) -> dict[str, str]:
    """Each distinct `unit` (a gene) -> the name of its split group, the smallest unit in the group: units that
    share a value of any `items` column (a DNA window id, a protein id) are linked, and the groups are the
    connected components of those links (union-find). Empty values ("" or missing) link nothing. A unit linked to
    no other is its own group, so without shared items the groups are the units themselves."""
    root = {u: u for u in table[unit].unique()}

    def find(u):
        while root[u] != u:
            root[u] = root[root[u]]  # path halving
            u = root[u]
        return u

    for column in items:
        rows = table.loc[table[column].notna() & (table[column] != ""), [column, unit]].drop_duplicates()
        shared = rows[rows.duplicated(column, keep=False)]  # items carried by two or more units
        for members in shared.groupby(column)[unit]:
            first = find(members[1].iloc[0])
            for other in members[1].iloc[1:]:
                other = find(other)
                first, other = min(first, other), max(first, other)
                root[other] = first  # the smaller name stays the root: a group is named by its smallest unit
    return {u: find(u) for u in root}


def split_linked(
    table: pd.DataFrame,
    unit: str,
    items: Sequence[str],
    fractions: Sequence[float],
    seed: int,
    what: str = "units",
    test_chroms: Sequence[str] = (),
) -> tuple[dict[str, str], dict[str, int]]:
    """Each `unit` -> its split, drawn over the `linked_groups` (units sharing an item) by `split_groups`, so no
    item sits in two splits; and counts for recipe.json: split_groups, split_groups_merged (groups of two or more
    units), `what`_in_merged_groups (units in those), split_group_largest (units in the largest group). With
    `test_chroms`, the groups on those chromosomes (the table's `chrom`) are the test split (`split_holding_out`),
    and the units of groups on both sides get no split (the recipe drops them; counted)."""
    group_of = linked_groups(table, unit, items)
    sizes = pd.Series(group_of).value_counts()
    test, mixed = (
        held_out_groups(dict(zip(table[unit], table["chrom"].astype(str), strict=True)), group_of, test_chroms)
        if test_chroms
        else (set(), set())
    )
    split_of_group = split_holding_out(sorted(g for g in sizes.index if g not in mixed), fractions, seed, test=test)
    counts = {
        "split_groups": len(sizes),
        "split_groups_merged": int((sizes > 1).sum()),
        f"{what}_in_merged_groups": int(sizes[sizes > 1].sum()),
        "split_group_largest": int(sizes.max()) if len(sizes) else 0,
    }
    if test_chroms:  # dropped: on both sides of the hold-out (the recipe leaves their rows out)
        counts["split_groups_across_test_chroms_dropped"] = len(mixed)
        counts[f"{what}_across_test_chroms_dropped"] = int(sizes[sorted(mixed)].sum()) if mixed else 0
    return {u: split_of_group[g] for u, g in group_of.items() if g not in mixed}, counts


def assert_no_leak(table: pd.DataFrame, group_column: str, split_column: str = "split") -> None:
    """Every split name is one of SPLITS and every value of `group_column` lies in exactly one split, or an
    InputError naming one that does not (`contracts.tables.check_one_split`)."""
    unknown = set(table[split_column]) - set(SPLITS)
    if unknown:
        raise InputError(f"unknown split names {sorted(unknown)}; expected {SPLITS}")
    check_one_split(table.assign(split=table[split_column]), group_column, "recipe labels")


STAGING = ".staging"  # write_outputs' folder of a run's tables until all are written


def _listed_tables(recipe_json: Path) -> set[str]:
    """The table files a recipe.json lists (plain names in its folder); none when it is absent or unreadable."""
    try:
        listed = json.loads(recipe_json.read_text())["tables"].values()
        return {t["file"] for t in listed if isinstance(t, dict) and Path(str(t.get("file"))).name == t["file"]}
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return set()


def write_outputs(
    out: str | Path,
    recipe: str,
    tables: dict[str, pd.DataFrame],
    *,
    counts: dict[str, int],
    missing: dict[str, int],
    sources: dict[str, dict[str, str]],
    params: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write each table as `<name>.parquet` and `recipe.json`; print the counts. Returns the manifest.

    Every table is written first into a staging folder inside `out` (STAGING, on the same disk), while an earlier
    run's folder stays whole, recipe.json included; then that recipe.json goes, the tables are renamed into place
    (a moment's work) and this run's recipe.json is written last. A run stopped while writing leaves the earlier
    recipe as it was (and a staging folder the next run clears); one stopped among the renames leaves no
    recipe.json, never one over tables of two runs. Tables an earlier recipe.json listed that this run does not
    write are deleted (a gasperini `proteins.parquet` would otherwise stay beside a gtex run's tables)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # a stopped run's
    staging.mkdir()
    for name, table in tables.items():
        table.to_parquet(staging / f"{name}.parquet", index=False)
    earlier = _listed_tables(out / "recipe.json")
    (out / "recipe.json").unlink(missing_ok=True)
    for name in tables:
        os.replace(staging / f"{name}.parquet", out / f"{name}.parquet")
    for file in earlier - {f"{name}.parquet" for name in tables}:
        (out / file).unlink(missing_ok=True)
    staging.rmdir()
    manifest = {
        "recipe": recipe,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "created_by": package_versions(("dogmacache", "pandas", "pyarrow", "liftover")),
        "tables": {
            name: {"file": f"{name}.parquet", "rows": int(len(t)), "columns": list(map(str, t.columns))[:50]}
            for name, t in tables.items()
        },
        "counts": {k: int(v) for k, v in counts.items()},
        "missing": {k: int(v) for k, v in missing.items()},
        "sources": sources,
        "params": params,
        **(extra or {}),
    }
    text = json.dumps(manifest, indent=2, default=str)
    with replace_whole(out / "recipe.json") as tmp:
        tmp.write_text(text)
    manifest = json.loads(text)  # what a reader of recipe.json sees (tuples become lists)
    width = max(len(k) for k in [*counts, *missing, *tables]) + 2
    print(f"recipe {recipe} -> {out}")
    for name, table in tables.items():
        print(f"  {name + '.parquet':<{width + 8}} {len(table):>10,} rows")
    for key, value in counts.items():
        print(f"  {key:<{width + 8}} {value:>10,}")
    for key, value in missing.items():
        print(f"  missing: {key:<{width - 1}} {value:>10,}")
    return manifest
