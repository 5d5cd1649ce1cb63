"""Enhancer-gene pairs: a labelled table (from a recipe) joined by id with a per-position DNA cache, and the
batches of the tasks that read it (CDT, the DNA-only MLP).

- Labels: one row per (enhancer, gene) pair with `enhancer` (a DNA cache id), `gene`, `gene_index`, `split`
  (train / validation / test) and the target column; a NaN or infinite target, an unknown split or a
  non-numeric target is refused naming the rows.
- DNA (N_enh, L, D_dna): read from the streaming cache reader, or kept in RAM when all rows fit
  `preload_bytes`, or (`dna_on_device`) held once in the training device's memory in the cache's float16,
  so chunks carry only row numbers and each step gathers its rows there (on a GPU this takes the host, the
  loader and the PCIe copy out of every step; the Gasperini DNA cache is ~25 GB in float16). Optional
  z-scoring with training-split statistics (`standardize_dna`), applied where the rows are gathered.
- Training batches, `batching = "pairs"` (the authors'): each epoch a seeded permutation of all training pairs
  cut into batches of `train.batch_size`, the last partial batch dropped; one Chunk per batch holds only that
  batch's DNA rows, so memory is one batch per DataLoader worker plus the prefetch queue.
  `batching = "enhancer_blocks"` (for DNA caches too large to read per pair): a Chunk is a block of
  `block_enhancers` enhancers with all their pairs, each enhancer read once per epoch; the loop cuts it into
  steps. Evaluation always reads each enhancer once (`eval_enhancers` per Chunk).

Chunk layout: rows {"dna": (n_rows, L, D) float32} (or {"dna_rows": (n_rows,) int64} with the DNA on the
device: `DeviceDna` turns them into the same tensor); examples {"index", "local" (row in `dna`), "gene_index",
"target"} each (P,).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from dogmacache.cache import EmbeddingCache
from dogmacache.contracts.provenance import digest_strings
from dogmacache.contracts.tables import LABEL_COLUMNS, SPLITS
from dogmacache.errors import InputError
from dogmacache.train.config import required
from dogmacache.train.task import Chunk, TaskData, feature_scale, open_task_cache, read_table
from torch import Tensor
from tqdm.auto import tqdm


@dataclass(frozen=True)
class PairDataConfig:
    labels: str = required()  # labelled pairs from the recipe (cdt/labels.parquet)
    dna_cache: str = required()  # per-position DNA cache (N_enh, L, D_dna)
    dna_table: str = ""  # optional: the recipe's dna_windows table, to check the DNA cache's inputs
    target: str = "beta"  # label column
    batching: str = "pairs"  # pairs (the authors': uniform over pairs, last partial batch dropped) | enhancer_blocks
    block_enhancers: int = 64  # enhancer_blocks: enhancers read together (each once per epoch)
    eval_enhancers: int = 16  # evaluation: enhancers per forward pass (each gives all its genes' outputs)
    preload_bytes: int = 2 << 30  # keep all DNA rows in RAM when they fit this budget (bytes, as float32)
    standardize_dna: bool = False  # z-score DNA features with training-split statistics (the authors: off)
    # keep every DNA row in the training device's memory (float16 as stored): auto = on a GPU when the table takes
    # at most `device_fraction` of its free memory; yes = always (an error when it does not fit); no = stream
    dna_on_device: str = "auto"
    device_fraction: float = 0.5

    LIMITS: ClassVar[dict[str, str]] = {
        "block_enhancers": ">=1",
        "eval_enhancers": ">=1",
        "preload_bytes": ">=0",
        "device_fraction": ">0",
    }
    CHOICES: ClassVar[dict[str, tuple]] = {
        "batching": ("pairs", "enhancer_blocks"),
        "dna_on_device": ("auto", "yes", "no"),
    }


@dataclass
class PairData(TaskData):
    dna: EmbeddingCache | None = None
    preload: np.ndarray | None = None  # (N_enh, L, D) float32, or None to stream
    dna_scale: dict[str, np.ndarray] | None = None  # per-feature mean / std (D,), or None
    rows_only: bool = False  # chunks carry DNA row numbers (the rows are on the device: `DeviceDna`)
    device_dna: dict[str, DeviceDna] = field(default_factory=dict)  # device name -> its table; never pickled

    def __getstate__(self) -> dict[str, Any]:  # loader workers get the data without any device table
        return {**self.__dict__, "device_dna": {}}


def _table_dtype(dna: EmbeddingCache) -> torch.dtype:
    """A device table keeps float16 caches in float16 (exact) and anything else in float32."""
    return torch.float16 if dna.manifest.dtype == "float16" else torch.float32


def table_bytes(dna: EmbeddingCache) -> int:
    return len(dna) * int(np.prod(dna.item_shape)) * _table_dtype(dna).itemsize


class DeviceDna:
    """Every DNA row of a cache in one device tensor (N_enh, L, D) (`_table_dtype`), copied from the rows already
    preloaded in RAM when there are, else read from the cache; `rows(chunk)` gives a chunk's DNA (its
    `dna_rows`) as float32 on the device, z-scored when the data is."""

    def __init__(self, data: PairData, device: torch.device, block: int = 64):
        dna = data.dna
        dtype = _table_dtype(dna)
        read_as = np.float16 if dtype == torch.float16 else np.float32
        self.table = torch.empty((len(dna), *dna.item_shape), dtype=dtype, device=device)
        bar = tqdm(total=len(dna), desc=f"DNA rows -> {device}", unit="row", leave=False, disable=None)
        for a in range(0, len(dna), block):
            rows = np.arange(a, min(a + block, len(dna)))
            host = data.preload[rows] if data.preload is not None else dna.read_rows(rows, dtype=read_as)
            self.table[a : a + len(rows)] = torch.from_numpy(host).to(device=device, dtype=dtype)
            bar.update(len(rows))
        bar.close()
        scale = data.dna_scale
        self.mean = torch.from_numpy(scale["mean"]).to(device) if scale is not None else None
        self.std = torch.from_numpy(scale["std"]).to(device) if scale is not None else None

    def rows(self, chunk: Chunk) -> Tensor:
        dna = self.table[chunk.rows["dna_rows"]].float()
        return dna if self.mean is None else (dna - self.mean) / self.std


def dna_to_device(data: PairData, config: PairDataConfig, device: torch.device) -> DeviceDna | None:
    """The data's DNA table on `device` per `dna_on_device` (loaded once per device and shared by the tasks on
    the same data, e.g. CDT and its DNA-MLP baseline), or None to keep reading rows on the host."""
    key = str(device)
    if key in data.device_dna:
        return data.device_dna[key]
    mode, need = config.dna_on_device, table_bytes(data.dna)
    if mode == "no" or (mode == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if need > config.device_fraction * free:
            if mode == "yes":
                raise InputError(
                    f"the DNA table of {data.dna.url} needs {need / 1e9:.1f} GB and [data] device_fraction = "
                    f"{config.device_fraction} of {device}'s {free / 1e9:.1f} GB free allows "
                    f'{config.device_fraction * free / 1e9:.1f} GB; set dna_on_device = "no" (stream it) or '
                    "raise device_fraction"
                )
            return None
    data.device_dna[key] = DeviceDna(data, device)
    data.rows_only, data.preload = True, None  # chunks carry row numbers from now on; no host copy needed
    return data.device_dna[key]


def chunk_dna(chunk: Chunk, device_dna: DeviceDna | None) -> Tensor:
    """A chunk's DNA rows (n_rows, L, D) float32, wherever they are kept."""
    return chunk.rows["dna"] if device_dna is None else device_dna.rows(chunk)


def read_labels(path: str | Path, target: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """The labelled table, with `split` and a finite float `target` checked row by row."""
    table = read_table(path, (*columns, "split", target), recipe="gasperini")
    values = pd.to_numeric(table[target], errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        shown = ", ".join(f"row {i} ({_plain(table[target].iloc[i])!r})" for i in bad[:5])
        raise InputError(
            f"{path}: {len(bad)} row(s) have a missing, non-numeric or infinite {target!r}: {shown}; "
            "drop or fix them in the recipe's output"
        )
    table = table.assign(target=values.astype(np.float32))
    if "gene_index" in columns:
        table = table.assign(gene_index=_gene_index(path, table))
    return table


def _gene_index(path: str | Path, table: pd.DataFrame) -> np.ndarray:
    """(rows,) int64 `gene_index`: each a whole number >= 0 (the gene's row in the RNA and protein caches, or the
    DNA-only MLP's output), one per gene and one gene per index; InputError naming the rows otherwise."""
    values = pd.to_numeric(table["gene_index"], errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0) | (values != np.floor(values)))
    if len(bad):
        shown = ", ".join(f"row {i} ({_plain(table['gene_index'].iloc[i])!r})" for i in bad[:5])
        raise InputError(
            f"{path}: {len(bad)} row(s) have a gene_index that is not a whole number >= 0: {shown}; it is the gene's "
            "row in the RNA and protein tables, as the recipe writes it: re-run the recipe"
        )
    index = values.astype(np.int64)
    pairs = pd.DataFrame({"gene": table["gene"].astype(str).to_numpy(), "gene_index": index}).drop_duplicates()
    for key, other, given in (("gene", "gene_index", "gene_index values"), ("gene_index", "gene", "genes")):
        twice = pairs[pairs[key].duplicated(keep=False)]
        if len(twice):
            first = twice.iloc[0][key]
            found = [str(v) for v in sorted(twice.loc[twice[key] == first, other].tolist())]
            raise InputError(
                f"{path}: {key} {_plain(first)!r} is given {len(found)} {given} ({', '.join(found[:4])}); each gene "
                "has one gene_index (its row in the RNA and protein tables): re-run the recipe"
            )
    return index


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (so messages show `nan`, not `np.float32(nan)`)."""
    return value.item() if isinstance(value, np.generic) else value


def open_dna(config: PairDataConfig) -> EmbeddingCache:
    dna = open_task_cache(config.dna_cache, "dna_cache", ("dna",), True, "embed the recipe's windows, no pooling")
    if config.dna_table:
        ids = (
            read_table(config.dna_table, ("id",), recipe="gasperini", what="[data] dna_table")["id"]
            .astype(str)
            .tolist()
        )
        if digest_strings(ids) != dna.manifest.ids_digest:
            raise InputError(
                f"{dna.url} was embedded from another input set than {config.dna_table} (ids differ); re-embed it"
            )
    return dna


def load_pairs(config: PairDataConfig, data_class: type[PairData] = PairData, **fields: Any) -> PairData:
    """Labels joined with the DNA cache (`dna_row`), split into train / validation / test, DNA preloaded when it
    fits the budget and scaled when asked. `fields` go to `data_class` (e.g. CDT's RNA and protein tables)."""
    table = read_labels(config.labels, config.target, LABEL_COLUMNS["cdt"])
    dna = open_dna(config)
    pairs = pd.DataFrame(
        {
            "dna_row": dna.rows_of(table["enhancer"].astype(str)),  # names missing ids in one error
            "gene_index": table["gene_index"].to_numpy(np.int64),
            "target": table["target"].values,
            "split": table["split"].values,
            "enhancer": table["enhancer"].astype(str).values,
            "gene": table["gene"].astype(str).values,
        }
    )
    splits = {s: pairs[pairs["split"] == s].reset_index(drop=True) for s in SPLITS}
    empty = [s for s in SPLITS if splits[s].empty]
    if empty:
        raise InputError(f"{config.labels} has no {empty[0]} pairs; every split needs some (re-run the recipe)")
    data = data_class(splits=splits, fingerprints={"dna": dna.fingerprint()}, dna=dna, **fields)
    need = len(dna) * int(np.prod(dna.item_shape)) * 4
    if 0 < need <= config.preload_bytes:
        data.preload = dna.read_rows(np.arange(len(dna)), dtype=np.float32)
    if config.standardize_dna:
        data.dna_scale = dna_scaler(data)
        data.extras["dna_scale"] = {k: v.tolist() for k, v in data.dna_scale.items()}
    return data


def dna_scaler(data: PairData) -> dict[str, np.ndarray]:
    """Per-feature mean and std over the training enhancers' positions (D_dna,), one pass over their rows."""
    rows = np.unique(data.splits["train"]["dna_row"].to_numpy())
    mean, std = feature_scale(_read(data, rows[a : a + 64], scaled=False) for a in range(0, len(rows), 64))
    return {"mean": mean, "std": std}


def _read(data: PairData, rows: np.ndarray, scaled: bool = True) -> np.ndarray:
    """DNA rows (sorted, unique) as float32, from RAM or the cache, scaled when the data asks for it."""
    dna = data.preload[rows] if data.preload is not None else data.dna.read_rows(rows, dtype=np.float32)
    if scaled and data.dna_scale is not None:
        dna = (dna - data.dna_scale["mean"]) / data.dna_scale["std"]
    return dna


def _chunk(data: PairData, pairs: pd.DataFrame, positions: np.ndarray) -> Chunk:
    """The pairs at `positions` of `pairs` and the DNA rows they read (each once)."""
    dna_rows = pairs["dna_row"].to_numpy()[positions]
    rows, local = np.unique(dna_rows, return_inverse=True)
    if data.rows_only:
        dna_part = {"dna_rows": torch.from_numpy(rows.astype(np.int64))}
    else:
        dna_part = {"dna": torch.from_numpy(np.ascontiguousarray(_read(data, rows)))}
    return Chunk(
        examples={
            "index": torch.from_numpy(positions.astype(np.int64)),
            "local": torch.from_numpy(local.astype(np.int64)),
            "gene_index": torch.from_numpy(pairs["gene_index"].to_numpy()[positions]),
            "target": torch.from_numpy(pairs["target"].to_numpy()[positions]),
        },
        rows=dna_part,
    )


class PairBatches(torch.utils.data.Dataset):
    """Item k = the k-th batch of `batch_size` pairs of a seeded permutation of all pairs (last partial dropped)."""

    def __init__(self, data: PairData, pairs: pd.DataFrame, batch_size: int, seed: int, epoch: int):
        self.data, self.pairs = data, pairs
        order = np.random.default_rng([seed, epoch]).permutation(len(pairs))
        self.batches = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> Chunk:
        return _chunk(self.data, self.pairs, self.batches[k])


class EnhancerBlocks(torch.utils.data.Dataset):
    """Item k = the k-th block of enhancers (a seeded shuffle per epoch when `seed` is given) with all their
    pairs (shuffled within the block when `seed` is given); every enhancer is read once."""

    def __init__(
        self, data: PairData, pairs: pd.DataFrame, block_enhancers: int, seed: int | None = None, epoch: int = 0
    ):
        self.data, self.pairs, self.seed, self.epoch = data, pairs, seed, epoch
        rows = np.unique(pairs["dna_row"].to_numpy())
        order = rows if seed is None else np.random.default_rng([seed, epoch]).permutation(rows)
        self.blocks = [order[i : i + block_enhancers] for i in range(0, len(order), block_enhancers)]
        self.by_row = {r: idx.to_numpy() for r, idx in pairs.groupby("dna_row").groups.items()}

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, k: int) -> Chunk:
        rows = np.sort(self.blocks[k])
        positions = np.concatenate([self.by_row[r] for r in rows])
        if self.seed is not None:
            positions = positions[np.random.default_rng([self.seed, self.epoch, k]).permutation(len(positions))]
        return _chunk(self.data, self.pairs, positions)


def train_chunks(data: PairData, config: Any, epoch: int) -> torch.utils.data.Dataset:
    d, t = config.data, config.train
    pairs = data.splits["train"]
    if d.batching == "pairs":
        return PairBatches(data, pairs, t.batch_size, t.seed, epoch)
    return EnhancerBlocks(data, pairs, d.block_enhancers, t.seed, epoch)


def per_gene_mean(data: TaskData, split: str) -> np.ndarray:
    """The training mean of the target for the pair's gene (the global training mean for unseen genes)."""
    train = data.splits["train"]
    means = train.groupby("gene_index")["target"].mean()
    return data.splits[split]["gene_index"].map(means).fillna(float(train["target"].mean())).to_numpy(np.float32)
