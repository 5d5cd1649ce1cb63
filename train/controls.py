"""Controls that can refute a result, run by the loop for every task in the same call as the model and its
baselines (`[train] controls`, `[train] control_caches`), scored on the same test split once:

- `permuted_labels`, the null: the same model trained and selected on labels permuted within the training and
  validation splits (the test split keeps its real targets); every column a loss reads as a target moves
  together (the task's `target_columns`: CDBridge's contrastive protein too). A model that scores well on test
  here reads something other than its inputs.
- `shuffled_inputs`: each input cache's rows permuted across the items of each split (the task's
  `input_columns`; an item keeps one row, so the marginal distribution and any grouping of examples by item stay,
  while the item-embedding link is broken). A model that scores as well as here does not use the embeddings.
- `control_caches`: the same task with a [data] cache key pointing at another cache, e.g. the k-mer features
  of `dogmacache embed --model kmer` in place of a foundation model's: does the foundation model help?

Each is another task instance on its own `TaskData`, so the model's own run is untouched.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dogmacache.errors import InputError
from dogmacache.train.task import Task, TaskData


def permuted_labels(data: TaskData, seed: int, columns: tuple[str, ...] = ("target",)) -> TaskData:
    """The training and validation splits' target `columns` permuted across each split's rows, all with one seeded
    permutation per split (a row's targets move together); the test split as it is. Validation is permuted too: it
    chooses the checkpoint, and a checkpoint chosen on real labels carries them into the null (measured on the
    demo's CDBridge, whose frozen stage-1 features are informative: Spearman up to 0.43 with real validation)."""
    splits = dict(data.splits)
    for k, name in enumerate(("train", "validation")):
        table = splits[name]
        order = np.random.default_rng([seed, 1, k]).permutation(len(table))
        moved = {}
        for column in columns:
            values = table[column].to_numpy()[order]
            moved[column] = pd.Series(list(values) if values.dtype == object else values, index=table.index)
        splits[name] = table.assign(**moved)
    return dataclasses.replace(data, splits=splits)


def shuffled_inputs(data: TaskData, columns: tuple[str, ...], seed: int) -> TaskData:
    """Within each split, each `<modality>_row` column remapped by a seeded permutation of the rows that split's
    items use (only rows flagged present, where a `<modality>_present` column says which)."""
    if not columns:
        raise InputError("this task declares no input columns to shuffle; drop shuffled_inputs from [train] controls")
    splits = {}
    for k, (name, table) in enumerate(data.splits.items()):
        table = table.copy()
        for j, column in enumerate(columns):
            if column not in table.columns:
                continue
            flag = column.replace("_row", "_present")
            present = table[flag].to_numpy(bool) if flag in table.columns else np.ones(len(table), bool)
            rows = table[column].to_numpy()
            used = np.unique(rows[present])
            moved = np.random.default_rng([seed, 2, k, j]).permutation(used)
            mapping = dict(zip(used.tolist(), moved.tolist(), strict=True))
            table.loc[present, column] = [mapping[r] for r in rows[present].tolist()]
        splits[name] = table
    return dataclasses.replace(data, splits=splits)


def cache_swap(entry: str) -> tuple[str, str]:
    """`KEY=PATH` of [train] control_caches -> (KEY, PATH)."""
    key, sep, path = entry.partition("=")
    if not sep or not key or not path:
        raise InputError(f"[train] control_caches entry {entry!r} is not KEY=PATH (e.g. dna_cache=caches/kmer.zarr)")
    return key.strip(), path.strip()


def controls(task: Task, data: TaskData) -> dict[str, tuple[Task, TaskData]]:
    """name -> (task, data) of every control the run's [train] asks for."""
    config = task.config
    t = config.train
    plain = without_ablations(config)
    found: dict[str, tuple[Task, TaskData]] = {}
    if "permuted_labels" in t.controls:
        found["control_permuted_labels"] = (
            type(task)(plain),
            permuted_labels(data, t.seed, type(task).target_columns),
        )
    if "shuffled_inputs" in t.controls:
        found["control_shuffled_inputs"] = (
            type(task)(plain),
            shuffled_inputs(data, type(task).input_columns, t.seed),
        )
    for entry in t.control_caches:
        key, path = cache_swap(entry)
        if not hasattr(config.data, key):
            known = [f.name for f in dataclasses.fields(config.data) if f.name.endswith("_cache")]
            raise InputError(
                f"[train] control_caches names {key!r}, which is not a [data] key; expected one of {known}"
            )
        swapped = dataclasses.replace(plain, data=dataclasses.replace(plain.data, **{key: path}))
        other = type(task)(swapped)
        found[f"control_{key.removesuffix('_cache')}_{Path(path).name.removesuffix('.zarr')}"] = (other, other.load())
    return found


def without_ablations(config: Any) -> Any:
    """The run's configuration with no ablations of its own (a control is one model; the loop asks only the run's
    own task for baselines)."""
    model = config.model
    if any(f.name == "ablations" for f in dataclasses.fields(model)):
        model = dataclasses.replace(model, ablations=())
    return dataclasses.replace(config, model=model)
