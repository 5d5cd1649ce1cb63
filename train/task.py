"""The task interface: what one model needs from the shared training loop, and nothing more.

The life of a run (`dogmacache train --config F`, `run.run_training`):

1. `registry.config_from_dict` looks the task up by name in `TASKS`; `RunConfig.from_dict` checks [data] and
   [model] against its `data_config` / `model_config` dataclasses (types and ranges) before anything is opened.
2. `task.load()` opens the caches and the labelled table, joins them by id and checks them; errors name the id,
   the file and the fix. It returns a `TaskData`: the labelled examples of each split (a `target` column, in a
   fixed order), the caches' fingerprints, and whatever the task's batches read.
3. `task.prerequisites(data)` declares the runs this model needs first (CDBridge's stage 1): each a
   `Prerequisite` that the run trains through the same loop (or evaluates, given a finished checkpoint) and
   hands back by name to `build_model`. A task never runs the loop itself.
4. `task.build_model(data, prerequisites)` builds the model from [model], the caches' shapes and the finished
   prerequisites; the checkpoint stores its class name and config dict, and `task.models[class name](config
   dict)` rebuilds it (`registry.load_model`).
5. The loop (`loop.fit`) asks `task.on_device(data, device)` once for the tables every step shares (moved to the
   device) and passes them to every call below; it asks for `task.train_chunks(data, epoch)` (a map-style
   Dataset; each item a `Chunk` of examples and the rows they share, bounded in size), cuts each chunk into
   optimiser steps of `train.batch_size` examples, calls `task.train_outputs` and `task.loss`, and after each
   epoch `loop.predict` (`task.eval_chunks`, `task.predict_chunk`) and `task.metrics` on the validation split;
   `task.score` of those metrics drives early stopping and the LR schedule.
6. After training, the best-on-validation checkpoint predicts the test split once; `task.inspect` reads any
   further numbers off the model itself (also before training, for a comparison); and `task.baselines(data)`
   run in the same call: a `FittedBaseline` is another task trained by the same loop on the same data; a
   `FixedBaseline` is a function of the training split.

Shapes in a chunk: P examples; `rows` tensors (n_rows, ...) shared by the chunk's examples, which point into
them with an index; `examples` tensors (P, ...).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from dogmacache.contracts.tables import check_one_split, read_table  # noqa: F401 (the tasks read their tables with it)
from dogmacache.contracts.windows import site_of
from dogmacache.errors import InputError
from dogmacache.train.metrics import regression_metrics
from torch import Tensor, nn


def open_task_cache(url: str, key: str, modalities: tuple[str, ...], per_position: bool, fix: str = "") -> Any:
    """Open the cache [data] `key` names and check what it holds against what the task reads: its manifest's
    modality (one of `modalities`) and per-position (L, D) or pooled (D,) items; otherwise one line naming the
    cache, what it holds, what the key needs and how to make one (`fix`)."""
    from dogmacache.cache import open_cache

    cache = open_cache(url)
    shape = tuple(cache.item_shape)
    wanted = f"{'/'.join(modalities)} embeddings, {'per position (L, D)' if per_position else 'pooled (D,)'}"
    if cache.manifest.modality not in modalities or (len(shape) == 2) != per_position or len(shape) not in (1, 2):
        raise InputError(
            f"{cache.url} holds {cache.manifest.modality} embeddings of shape {shape} ({cache.manifest.model}); "
            f"[data] {key} needs {wanted}{'; ' + fix if fix else ''}"
        )
    return cache


def feature_scale(blocks: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (mean, std) over every row of `blocks` (arrays (..., D), taken one at a time so a large cache
    never sits in RAM), summed in float64, returned as float32 with std at least 1e-6."""
    total = square = 0.0
    count = 0
    for block in blocks:
        flat = block.reshape(-1, block.shape[-1]).astype(np.float64)
        total, square, count = total + flat.sum(0), square + (flat**2).sum(0), count + len(flat)
    if not count:
        raise ValueError("feature_scale needs at least one row")
    mean = total / count
    std = np.sqrt(np.maximum(square / count - mean**2, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


@dataclass
class Chunk:
    """A slice of examples: `examples` tensors (P, ...) including `index` (position in the split's table) and
    `target`; `rows` tensors shared by the examples (e.g. DNA windows (n_rows, L, D))."""

    examples: dict[str, Tensor]
    rows: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples["index"])

    def select(self, idx: Tensor) -> Chunk:
        return Chunk({k: v[idx] for k, v in self.examples.items()}, self.rows)

    def to(self, device: torch.device) -> Chunk:
        return Chunk(
            {k: v.to(device) for k, v in self.examples.items()}, {k: v.to(device) for k, v in self.rows.items()}
        )


class Batches(torch.utils.data.Dataset):
    """Item k = the Chunk of the examples at positions `order[k*size : (k+1)*size]` (every example, in table order,
    when `order` is None); a subclass says how positions become a Chunk (`chunk`)."""

    def __init__(self, n_examples: int, size: int, order: np.ndarray | None = None):
        order = np.arange(n_examples) if order is None else order
        self.batches = [order[i : i + size] for i in range(0, len(order), size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> Chunk:
        return self.chunk(self.batches[k])

    def chunk(self, positions: np.ndarray) -> Chunk:
        raise NotImplementedError


@dataclass
class TaskData:
    """What `load` returns: the labelled examples per split and the fingerprints of every cache read."""

    splits: dict[str, pd.DataFrame]  # train / validation / test, each with a `target` column
    fingerprints: dict[str, dict[str, Any]]  # per cache name: model, revision, input and ids digests, shards digest
    extras: dict[str, Any] = field(default_factory=dict)  # saved in checkpoints (e.g. the DNA scaling)
    # tables that stand in for a split in some runs, name -> (split, table): CDBridge's training cells of every
    # tissue, held-out ones included. The controls change each as they change its split, so a run reading one
    # trains its null on permuted labels and its shuffled-inputs control on shuffled rows too
    variants: dict[str, tuple[str, pd.DataFrame]] = field(default_factory=dict)
    # per labelled row, its `split` and the items it may share with other rows (`linked_items`: its gene, DNA window,
    # protein): `check_examples` keeps each in one split, as the recipes do; None for a task whose rows share none
    links: pd.DataFrame | None = None
    # files read from their default place, for [data] keys left empty (CDBridge's tissues.parquet and
    # labels_log1p.parquet beside the labels): key -> path. Checkpoints record them by content with the files
    # [data] names (`checkpoint.data_files`), so that a resume refuses a run whose such file changed
    files_read: dict[str, str] = field(default_factory=dict)
    _split_digests: Any = field(default=None, init=False, repr=False, compare=False)  # (a replace() starts anew)

    def split_digests(self) -> dict[str, str] | None:
        """`checkpoint.split_digests` of these splits, worked out once (a run checks and records it per model)."""
        if self._split_digests is None:
            from dogmacache.train.checkpoint import split_digests

            self._split_digests = split_digests(self.splits) or {}
        return self._split_digests or None


@dataclass(frozen=True)
class FittedBaseline:
    """A baseline model trained by the shared loop on the same data: `task` forms its batches and builds it."""

    task: Task


@dataclass(frozen=True)
class Prerequisite:
    """A run a model needs before it is built (CDBridge's stage 1): `task` trained by the shared loop on `data`
    into `<output>/<folder>/<model>_<role>_best.pt` (the run names it after the model that declares it), or, when
    `checkpoint` names a finished one, only evaluated. Runs with the same configuration are trained once per
    `train` call, whichever model declared them first."""

    task: Task
    data: TaskData
    folder: str
    checkpoint: str = ""
    # the [data] keys its examples and inputs come from: a finished `checkpoint` must have been trained with the
    # same (and on caches of the same fingerprints), or this run's test examples may be among its training ones
    reads: tuple[str, ...] = ()
    # the [model] keys a finished `checkpoint` must share with `task`'s (what its weights mean: their sizes, the
    # merging they were trained with); a key its config lacks (an older checkpoint) counts as the default
    model_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class FixedBaseline:
    """A baseline with no training: predictions for a split from the training split alone."""

    predict: Callable[[TaskData, str], np.ndarray]


class Task(ABC):
    """One model on the shared loop: its data, its batches, its model, its loss, its metrics, its baselines."""

    name: ClassVar[str]
    data_config: ClassVar[type]  # the [data] dataclass
    model_config: ClassVar[type]  # the [model] dataclass
    models: ClassVar[dict[str, Callable[[dict[str, Any]], nn.Module]]]  # class name -> rebuild from config dict
    metric: ClassVar[str] = "pearson"  # validation metric for early stopping and the LR schedule (higher = better)
    # the test metrics set beside the permutation null's draws ([train] null_draws; higher = better); () = `metric`
    null_metrics: ClassVar[tuple[str, ...]] = ()
    # the FixedBaseline that reads no input (the training mean per gene, per tissue, the mean token): the score the
    # permutation null's draws may not exceed, labels drawn apart from the inputs (`controls.null_summary`)
    no_input_baseline: ClassVar[str] = ""
    # columns of the split tables that point into input caches (row numbers): what the shuffled-inputs control
    # permutes (`controls.py`); a `<modality>_present` column beside one says which rows are real
    input_columns: ClassVar[tuple[str, ...]] = ()
    # [data] caches whose items must each stay in one split (`check_inputs_in_one_split`): read through the split
    # tables' `<name>_row` columns, compared by the cache's item digests, so one input under two ids is caught
    one_split_caches: ClassVar[tuple[str, ...]] = ()
    # columns of the split tables a loss reads as a target: what the permutation null permutes (together, one
    # permutation, so a row's targets stay one row's)
    target_columns: ClassVar[tuple[str, ...]] = ("target",)
    # [data] cache keys whose rows are the targets (Bio-DTA's token cache): a cache control may not swap them, since
    # its numbers would score other answers beside the model's
    target_caches: ClassVar[tuple[str, ...]] = ()
    # the files `figures` writes into the run's folder: removed with metrics.json before a run trains
    figure_names: ClassVar[tuple[str, ...]] = ()
    # columns of the split tables whose values must each lie in one split (an item in two would be trained on and
    # scored), and the columns that name one example (an example twice would be counted twice); `check_examples`
    split_keys: ClassVar[tuple[str, ...]] = ()
    example_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any):
        self.config = config  # the RunConfig

    @abstractmethod
    def load(self) -> TaskData:
        """Open, join and check the caches and labels named in [data]."""

    def prerequisites(self, data: TaskData) -> dict[str, Prerequisite]:
        """Runs this model needs first, by the role `build_model` knows them under (none by default)."""
        return {}

    @abstractmethod
    def build_model(
        self, data: TaskData, prerequisites: dict[str, dict[str, Any]]
    ) -> tuple[nn.Module, str, dict[str, Any]]:
        """(model, its class name in `models`, its config dict) from [model], the caches' shapes and the finished
        prerequisites (by role: `checkpoint` path, `validation` / `test` metrics, `inspect`)."""

    @abstractmethod
    def train_chunks(self, data: TaskData, epoch: int) -> torch.utils.data.Dataset:
        """The training split for one epoch, in the seeded order of that epoch, as Chunks."""

    @abstractmethod
    def eval_chunks(self, data: TaskData, split: str) -> torch.utils.data.Dataset:
        """The examples of `split` as Chunks (any order; each example once)."""

    @abstractmethod
    def train_outputs(self, model: nn.Module, batch: Chunk, tables: dict[str, Any]) -> Tensor:
        """Predictions (P, ...) for one optimiser step's examples, in training mode; `tables` from `on_device`."""

    @abstractmethod
    def predict_chunk(self, model: nn.Module, chunk: Chunk, tables: dict[str, Any]) -> Tensor:
        """Predictions (P, ...) for a whole evaluation chunk, in eval mode."""

    def on_device(self, data: TaskData, device: torch.device) -> dict[str, Any]:
        """The tables every step shares, on `device` (asked once per training or prediction; passed to
        `train_outputs`, `predict_chunk` and `loss`)."""
        return {}

    def loss(self, outputs: Tensor, batch: Chunk, tables: dict[str, Any]) -> Tensor:
        """SmoothL1 (beta = [train] smooth_l1_beta) against the examples' targets."""
        target = batch.examples["target"]
        return nn.functional.smooth_l1_loss(outputs.float(), target, beta=self.config.train.smooth_l1_beta)

    def metrics(self, predictions: np.ndarray, data: TaskData, split: str) -> dict[str, Any]:
        """Pearson, Spearman, R², MSE, MAE and n of the split, pooled over its examples."""
        return regression_metrics(predictions, data.splits[split]["target"].to_numpy())

    def score(self, metrics: dict[str, Any]) -> float:
        return float(metrics[self.metric])

    def observed(self, data: TaskData, split: str) -> np.ndarray:
        """The split's targets, in the order `predict` returns predictions (for figures)."""
        return data.splits[split]["target"].to_numpy()

    def plotted(self, predictions: np.ndarray) -> np.ndarray:
        """Predictions on the scale `metrics` scores them (the test scatter draws these): as they are, unless a task
        scores a transform of its outputs (CDBridge's stage 1: probabilities of its logits)."""
        return predictions

    def inspect(self, model: nn.Module, data: TaskData, device: torch.device) -> dict[str, Any]:
        """Numbers read off the model itself rather than its predictions (e.g. which tokens a merging keeps),
        asked for the freshly built model and for the best checkpoint's; none by default."""
        return {}

    def baselines(self, data: TaskData) -> dict[str, FittedBaseline | FixedBaseline]:
        return {}

    def items_read(self, data: TaskData, key: str, cache: Any) -> np.ndarray:
        """The ids this run reads from `cache`, the one [data] `key` names: a cache control swapping it must hold
        each. By default the items the split tables (and their variants) point at through `<name>_row` for
        `<name>_cache` (those flagged present where a `<name>_present` column says), else every id of the cache
        (a task reading it whole, as CDT its gene tables)."""
        column = f"{key.removesuffix('_cache')}_row"
        tables = [*data.splits.values(), *(t for _, t in data.variants.values())]
        found = [t[column].to_numpy()[present_rows(t, column)] for t in tables if column in t.columns]
        ids = np.asarray(cache.ids)
        return ids[np.unique(np.concatenate(found)).astype(np.int64)] if found else ids

    def summary(self, results: dict[str, Any], data: TaskData) -> dict[str, Any]:
        """Entries this task adds to metrics.json (and to the summary `run_training` returns), from every model's
        and baseline's result (with its `inspect` numbers and finished prerequisites)."""
        return {}

    def figures(self, results: dict[str, Any], data: TaskData, out_dir: Any) -> list[Any]:
        """Figures of this task beside the shared learning curves and test scatter; returns their paths."""
        return []


def present_rows(table: pd.DataFrame, column: str) -> np.ndarray:
    """The rows whose `<name>_row` `column` names a present item: its `<name>_present` flag where there is one."""
    flag = column.replace("_row", "_present")
    return table[flag].to_numpy(bool) if flag in table.columns else np.ones(len(table), bool)


LINK_COLUMNS = ("gene_id", "dna_id", "rna_id", "protein_id")  # a labels table's items several rows may share


def linked_items(table: pd.DataFrame, columns: Iterable[str] = LINK_COLUMNS) -> pd.DataFrame:
    """`TaskData.links` of a labels table: its `split` and those of `columns` it has, as text, missing where a
    row names none (an empty `protein_id`: a transcript without a protein); beside `dna_id`, `dna_site`: the window
    without its strand (`chrom:center:+` and `:-` are cut from the same bases of the reference strand)."""
    present = [c for c in columns if c in table.columns]
    out = table[["split", *present]].reset_index(drop=True)
    for column in present:
        text = out[column].astype("string")
        out[column] = text.mask(text.fillna("") == "")
    if "dna_id" in out.columns:
        out["dna_site"] = site_of(out["dna_id"])
    return out


def tissue_columns(
    table: pd.DataFrame,
    path: Any,
    listed: Sequence[str] | None,
    listed_from: str,
    named: Sequence[str],
    not_tissues: Sequence[str],
) -> list[str]:
    """The tissues a labels table's columns hold, and those a run models: the columns the recipe's tissues table
    lists (`listed`, read from `listed_from`), or without one every column but `not_tissues`, each holding numbers
    (a text column is refused unless `named` picks the tissues); `named` ([data] tissues) or all of them, each once
    and each one of those columns. A column someone added (a length, a strand) is then no tissue."""
    if listed is not None:
        available = [c for c in table.columns if c in set(map(str, listed))]
    else:
        available = [c for c in table.columns if c not in not_tissues]
        text = [c for c in available if not pd.api.types.is_numeric_dtype(table[c])]
        if text and not named:
            raise InputError(
                f"{path} column {text[0]!r} holds text: without the recipe's tissues table, every column but "
                f"{', '.join(not_tissues)} is read as a tissue's labels; drop it, or name the tissues with [data] "
                "tissues"
            )
    if not available:
        raise InputError(
            f"{path} has no tissue columns (its columns: {', '.join(map(str, table.columns))}"
            + (f"; {listed_from} lists none of them" if listed is not None else "")
            + "); expected the gtex recipe's labels: id, split, join ids and one column of labels per tissue"
        )
    tissues = list(named) or available
    repeated = [t for t in dict.fromkeys(tissues) if tissues.count(t) > 1]
    if repeated:
        raise InputError(f"[data] tissues names {repeated[0]!r} {tissues.count(repeated[0])} times; name each once")
    unknown = [t for t in tissues if t not in available]
    if unknown:
        if listed is not None and unknown[0] in table.columns:
            raise InputError(
                f"[data] tissues names {unknown[0]!r}, which {listed_from} does not list among {path}'s columns (the "
                f"tissues: {', '.join(available)}); fix the tissue list, or add it to the tissues table"
            )
        raise InputError(
            f"[data] tissues names {unknown[0]!r}, which {path} does not have (its tissues: {', '.join(available)}); "
            "fix the tissue list or re-run the recipe"
        )
    return tissues


def item_keys(cache: Any, rows: np.ndarray) -> np.ndarray | None:
    """(len(rows),) each row's item digest in `cache` (`item_sha256`: what the model saw) as text, only the rows
    asked for converted; None for a cache that records none (imported, or written before digests)."""
    from dogmacache.cache.layout import ITEM_SHA256

    if ITEM_SHA256 not in cache.manifest.extra_arrays:
        return None
    unique, inverse = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
    digests = cache.read_extra(ITEM_SHA256)[unique]
    return np.array([bytes(d).hex() for d in digests], dtype=object)[inverse]


def inputs_across_splits(keys: np.ndarray, splits: np.ndarray, ids: np.ndarray) -> tuple[int, list[tuple]] | None:
    """Where one input (`keys`, `item_keys`) sits in two splits under its rows' `ids`: (how many inputs do, two
    (id, split) of the first); None where none does. The one check behind the trainer's and the probe's."""
    table = pd.DataFrame({"key": keys, "split": splits, "id": ids})
    spread = table.groupby("key")["split"].nunique()
    if not (spread > 1).any():
        return None
    both = table[table["key"] == spread.index[spread > 1][0]].drop_duplicates("split")
    return int((spread > 1).sum()), [(str(i), s) for i, s in zip(both["id"], both["split"], strict=True)][:2]


def check_inputs_in_one_split(task: Task, data: TaskData, where: str) -> None:
    """Two rows of different splits whose items are one input to the model (the same `item_sha256` in a cache the
    task keeps in one split, `Task.one_split_caches`): a window under a '+' and a '-' id read forward, one copied
    under another name. The id checks of `check_examples` cannot see it; a model would be scored on what it trained
    on. InputError naming the two ids and their splits; caches without item digests (imported) pass unchecked."""
    from dogmacache.cache import open_cache

    for key in type(task).one_split_caches:
        url = getattr(task.config.data, key, "")
        column = f"{key.removesuffix('_cache')}_row"
        tables = [(name, t) for name, t in data.splits.items() if column in t.columns and len(t)]
        if not url or not tables:
            continue
        frames = []
        for name, t in tables:
            rows = t[column].to_numpy()[present_rows(t, column)].astype(np.int64)
            frames.append(pd.DataFrame({"split": name, "row": np.unique(rows[rows >= 0])}))
        rows = pd.concat(frames, ignore_index=True)
        cache = open_cache(url)
        keys = item_keys(cache, rows["row"].to_numpy())
        if keys is None:
            continue
        found = inputs_across_splits(keys, rows["split"].to_numpy(), np.asarray(cache.ids)[rows["row"].to_numpy()])
        if found:
            n, ((a, sa), (b, sb)) = found
            raise InputError(
                f"{where}: {n} input(s) of [data] {key} sit in two splits under other ids, e.g. {a!r} ({sa}) and "
                f"{b!r} ({sb}) are one input to the model (the same item_sha256 in {url}); give the ids of one input "
                "one split"
            )


def check_examples(task: Task, data: TaskData, where: str) -> None:
    """The split tables as the task loaded them: each `split_keys` value in one split, each item the labelled
    rows share (`data.links`: a gene's isoforms, a window or protein two transcripts read) in one split, each
    example once. The recipes write labels that way; a table made by hand or edited may not, and would score a
    model on examples, or inputs, it trained on, or count some twice. InputError naming how many, one of them and
    the fix."""
    table = pd.concat([t.assign(split=name) for name, t in data.splits.items()], ignore_index=True)
    for column in task.split_keys:
        check_one_split(table, column, where)
    if data.links is not None:
        for column in data.links.columns.drop("split"):
            check_one_split(data.links, column, where)
    keys = [k for k in task.example_keys if k in table.columns]  # (CDBridge's stage 1 alone: one row per transcript)
    twice = table[table.duplicated(keys, keep=False)] if keys else table.iloc[:0]
    if len(twice):
        first = twice.iloc[0]
        rows = int((twice[keys] == first[keys]).all(axis=1).sum())
        raise InputError(
            f"{where}: {int(twice.duplicated(keys).sum())} example(s) appear more than once, e.g. "
            f"{', '.join(f'{k} {first[k]!r}' for k in keys)} ({rows} rows); keep one row per example"
        )
