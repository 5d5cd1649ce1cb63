"""CDBridge's data: the gtex recipe's labels, coding masks and tissues joined with the DNA, protein and tissue
caches; (transcript, tissue) examples per split (stage 2) and one example per transcript (stage 1,
`stage1_view`); the DNA z-scored with the training windows and the tissue embeddings over the seen tissues;
the chunks both stages read; and the per-tissue mean baseline.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from dogmacache.cache import EmbeddingCache
from dogmacache.contracts.tables import SPLITS, standardise_tissues
from dogmacache.contracts.windows import strand_of
from dogmacache.errors import InputError
from dogmacache.train.task import (
    Batches,
    Chunk,
    TaskData,
    feature_scale,
    linked_items,
    open_task_cache,
    read_table,
    tissue_columns,
)
from dogmacache.train.tasks.cdbridge.config import NOT_TISSUES
from torch import Tensor

TRAIN_ALL = "train_all"  # the `variants` table of the training cells of every tissue, held-out ones included


@dataclass
class CdbridgeData(TaskData):
    tissues: list[str] = dataclasses.field(default_factory=list)
    held_out: list[str] = dataclasses.field(default_factory=list)
    transcripts: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)  # per split: stage-1 examples
    dna: EmbeddingCache | None = None
    dna_rows: np.ndarray | None = None  # (N_dna, L, D_dna) float32 when it fits the preload budget
    masks: np.ndarray | None = None  # (N_transcripts_all, L) coding flags, indexed by `mask_row`
    protein: Tensor | None = None  # (N_prot, D_prot) float32
    tissue_embeddings: Tensor | None = None  # (K, D_tissue) float32, in `tissues` order
    n_bins: int = 0
    dna_scale: tuple[np.ndarray, np.ndarray] | None = None  # (mean, std) applied on read; None = none or preapplied


def load_cdbridge(config: Any) -> CdbridgeData:
    d = config.data
    table = read_table(d.labels, ("id", "split"), recipe="gtex", what="labels table")
    info_path = d.tissues_table or str(Path(d.labels).parent / "tissues.parquet")
    info = read_table(info_path, ("tissue", "held_out"), recipe="gtex", what="tissues table")
    listed = info["tissue"].astype(str).tolist()
    tissues = tissue_columns(table, d.labels, listed, info_path, d.tissues, NOT_TISSUES)
    available = [c for c in table.columns if c in set(listed)]
    flags = info["held_out"]
    if not pd.api.types.is_bool_dtype(flags) or flags.isna().any():  # NaN or "False" would read as held out
        raise InputError(
            f"{info_path}'s held_out column holds {flags.dtype} values ({flags.tolist()[:4]}), not true/false; use the "
            "tissues.parquet of the gtex recipe run that wrote the labels"
        )
    recipe_held = [str(t) for t in info.loc[flags.to_numpy(bool), "tissue"]]
    absent = [t for t in recipe_held if t not in available]
    if absent:
        raise InputError(
            f"held-out tissue {absent[0]!r} of {d.tissues_table or 'tissues.parquet'} has no column in {d.labels} "
            f"(its tissues: {', '.join(available)}); use the tissues table of the same recipe run"
        )
    held_out = (set(recipe_held) if d.recipe_holdout else set()) | set(d.holdout_tissues)
    for t in d.holdout_tissues:
        if t not in tissues:
            raise InputError(f"[data] holdout_tissues names {t!r}, which is not a modelled tissue; pick from {tissues}")
    if held_out >= set(tissues):
        raise InputError(f"every tissue of {tissues} is held out; keep at least one tissue for training")

    dna = open_task_cache(d.dna_cache, "dna_cache", ("dna",), True, "embed the recipe's TSS windows, no pooling")
    n_bins = dna.item_shape[0]
    protein_cache = open_task_cache(
        d.protein_cache, "protein_cache", ("protein",), False, "embed the recipe's proteins with --pooling mean"
    )
    tissue_cache = open_task_cache(
        d.tissue_cache, "tissue_cache", ("context",), False, "embed tissue_profiles.parquet with scgpt context"
    )
    missing = [t for t in tissues if t not in set(tissue_cache.ids)]
    if missing:
        raise InputError(
            f"tissue {missing[0]!r} is not in {tissue_cache.url} ({len(missing)} missing); embed the "
            "recipe's tissue_profiles.parquet with scgpt context or drop the tissue from [data] tissues"
        )
    tissue_embeddings = tissue_cache.read_rows(tissue_cache.rows_of(tissues), dtype=np.float32)
    extras: dict[str, Any] = {}
    if d.standardize_tissues:
        seen = tissue_embeddings[[t not in held_out for t in tissues]].astype(np.float64)
        mean, std = seen.mean(0), seen.std(0)
        std = np.where(std > 1e-6 * max(float(np.abs(seen).max()), 1e-12), std, 1.0)  # one seen tissue: centre only
        tissue_embeddings = ((tissue_embeddings - mean) / std).astype(np.float32)
        extras["tissue_scale"] = {"mean": mean.tolist(), "std": std.tolist()}
    tissue_embeddings = torch.from_numpy(tissue_embeddings)

    masks = read_masks(d.coding_masks, table["id"], n_bins)
    if masks.shape[1] != n_bins:
        pooled = dna.manifest.config.get("max_positions")
        pooled = pooled if pooled and n_bins == pooled < masks.shape[1] else None  # what pooling cut the bins to
        raise InputError(
            f"{d.coding_masks} has {masks.shape[1]} bins per mask but {dna.url} has {n_bins} positions"
            + (
                f" (it was embedded with --max-positions {pooled}, which pools the bins CDBridge's masks flag one by "
                "one): embed the DNA for CDBridge without --max-positions"
                if pooled
                else "; re-run the recipe with --window-bins matching the DNA model's output"
            )
        )
    check_mask_geometry(d.coding_masks, dna)

    frame = pd.DataFrame({"id": table["id"].astype(str), "split": table["split"]})
    frame["dna_row"] = dna.rows_of(table["dna_id"].astype(str) if "dna_id" in table else frame["id"])
    protein_ids = table["protein_id"].fillna("").astype(str) if "protein_id" in table else frame["id"]
    frame["protein_present"] = (protein_ids != "").to_numpy()
    frame["protein_row"] = 0
    frame.loc[frame["protein_present"], "protein_row"] = protein_cache.rows_of(protein_ids[frame["protein_present"]])
    frame["mask_row"] = np.arange(len(frame))
    # the window's strand, the last field of the gtex recipe's window ids ("chrom:center:strand"); "." unknown
    window_ids = (table["dna_id"] if "dna_id" in table else frame["id"]).astype(str)
    frame["strand"] = strand_of(window_ids)
    values = table[tissues].to_numpy(np.float32)
    if not np.isfinite(values).all():
        raise InputError(f"{d.labels} has missing or non-finite labels; drop or fix them in the recipe")
    log1p_path = Path(d.labels_log1p or Path(d.labels).parent / "labels_log1p.parquet")
    own = sorted(held_out - set(recipe_held))  # held out here, but scaled by the recipe with their own labels
    if own and not (d.labels_log1p or log1p_path.is_file()):
        raise InputError(
            f"held-out tissue {own[0]!r} is standardised in {d.labels} with its own training labels (the recipe did "
            f"not hold it out), and there is no {log1p_path} to scale it with the seen tissues' statistics instead; "
            "put the recipe run's labels_log1p.parquet there (or name it with [data] labels_log1p), or re-run the "
            "recipe with --holdout-tissues"
        )
    if d.labels_log1p or log1p_path.is_file():
        raw = read_table(log1p_path, ("id", *tissues), recipe="gtex", what="labels_log1p table")
        if raw["id"].astype(str).tolist() != frame["id"].tolist():
            raise InputError(f"{log1p_path} lists other transcripts than {d.labels}; use the same recipe run's files")
        if not np.isfinite(raw[tissues].to_numpy(np.float64)).all():
            raise InputError(f"{log1p_path} has missing or non-finite values; use the same recipe run's file")
    else:  # the labels as the recipe scaled them: no held-out tissue may have been scaled with its own labels
        check_held_out_scaling(values, (frame["split"] == "train").to_numpy(), tissues, held_out, d.labels, log1p_path)
    if d.labels_log1p or log1p_path.is_file():
        held = np.array([t in held_out for t in tissues])
        scaled, mean, std, _ = standardise_tissues(
            raw[tissues].to_numpy(np.float64), (frame["split"] == "train").to_numpy(), held
        )
        values = scaled.astype(np.float32)
        extras["label_scale"] = {
            t: {"mean": float(m), "std": float(d), "statistics": "seen tissues pooled" if h else "own"}
            for t, m, d, h in zip(tissues, mean, std, held, strict=True)
        }

    def cells(part: pd.DataFrame, keep: list[int]) -> pd.DataFrame:
        """(transcript, tissue) examples of `part` for the tissue indices `keep`."""
        table = part.loc[part.index.repeat(len(keep))].reset_index().rename(columns={"index": "transcript"})
        table["tissue_index"] = np.tile(keep, len(part))
        table["target"] = values[part["mask_row"].to_numpy()][:, keep].ravel()
        return table

    splits, transcripts = {}, {}
    for split in SPLITS:
        part = frame[frame["split"] == split].reset_index(drop=True)
        if part.empty:
            raise InputError(f"{d.labels} has no {split} transcripts; every split needs some (re-run the recipe)")
        transcripts[split] = part.assign(target=list(masks[part["mask_row"]]))
        splits[split] = cells(part, [k for k, t in enumerate(tissues) if split != "train" or t not in held_out])
    train_all = cells(transcripts["train"].drop(columns="target"), list(range(len(tissues))))
    preload = None
    if len(dna) * int(np.prod(dna.item_shape)) * 4 <= d.preload_bytes:
        preload = dna.read_rows(np.arange(len(dna)), dtype=np.float32).reshape(len(dna), *dna.item_shape)
    scale = None
    if d.standardize_dna:
        scale = dna_scale(dna, preload, np.unique(transcripts["train"]["dna_row"].to_numpy()))
        extras["dna_scale"] = {"mean": scale[0].tolist(), "std": scale[1].tolist()}
        if preload is not None:  # applied once, in place (no second copy of the preload)
            preload -= scale[0]
            preload /= scale[1]
            scale = None
    protein = torch.from_numpy(protein_cache.read_rows(np.arange(len(protein_cache)), dtype=np.float32))
    caches = {"dna": dna, "protein": protein_cache, "tissue": tissue_cache}
    return CdbridgeData(
        splits=splits,
        links=linked_items(table, ("gene_id", "dna_id", "protein_id")),
        fingerprints={k: c.fingerprint() for k, c in caches.items()},
        tissues=tissues,
        held_out=[t for t in tissues if t in held_out],
        transcripts=transcripts,
        dna=dna,
        dna_rows=preload,
        masks=masks,
        protein=protein,
        tissue_embeddings=tissue_embeddings,
        n_bins=n_bins,
        extras=extras,
        dna_scale=scale,
        variants={TRAIN_ALL: ("train", train_all)},  # training cells of every tissue ([data] train_held_out)
        files_read={
            **({} if d.tissues_table else {"tissues_table": info_path}),
            **({"labels_log1p": str(log1p_path)} if not d.labels_log1p and log1p_path.is_file() else {}),
        },
    )


def read_masks(path: str, ids: pd.Series, n_bins: int) -> np.ndarray:
    """(N, L) float32 coding flags of the transcripts `ids`, in their order, from the recipe's coding masks table;
    a duplicated or absent id, or a mask that is no list of flags, refused naming it. (The number of bins is checked
    against the DNA cache by the caller, which knows what pooling would explain a difference.)"""
    table = read_table(path, ("id", "mask"), recipe="gtex", what="coding masks table")
    table = table.assign(id=table["id"].astype(str))
    twice = table["id"][table["id"].duplicated()]
    if len(twice):
        raise InputError(f"transcript {twice.iloc[0]!r} has two rows in {path}; use the gtex recipe's coding_masks")
    table = table.set_index("id")
    absent = ids.loc[~ids.astype(str).isin(table.index)]
    if len(absent):
        raise InputError(f"transcript {absent.iloc[0]!r} has no row in {path}; use the same recipe output")
    rows = table.loc[ids.astype(str), "mask"].to_list()

    def flags(mask: Any) -> bool:
        return isinstance(mask, (list, tuple, np.ndarray))

    expected = len(rows[0]) if flags(rows[0]) else n_bins
    bad = next((i for i, m in zip(ids, rows, strict=True) if not flags(m) or len(m) != expected), None)
    if bad is not None:
        raise InputError(
            f"transcript {bad!r}'s mask in {path} is no list of {expected} flags like the others; use the gtex "
            "recipe's coding_masks"
        )
    return np.stack(rows).astype(np.float32)


# a tissue standardised with its own training labels has train-split mean 0 and standard deviation 1 to float32
# rounding; one scaled with the seen tissues' pooled statistics (a recipe's held-out tissue) does not
SELF_SCALED_TOLERANCE = 1e-4


def check_held_out_scaling(
    values: np.ndarray, train: np.ndarray, tissues: list[str], held_out: set[str], labels: str, log1p_path: Path
) -> None:
    """Refuse a held-out tissue whose labels were centred (or standardised) on its own labels: their mean over the
    training split, or over every split, within SELF_SCALED_TOLERANCE of 0, whatever the std (numpy's, pandas'
    ddof 1, none). Its held-out score would rest on its own statistics, the test labels' too where every split was
    used; scaled with the seen tissues' statistics, as the recipe does, its mean is that of another tissue pool,
    0 only by chance. Read from the labels themselves, so a tissues table of another recipe run cannot vouch for
    them."""
    for k, tissue in enumerate(tissues):
        if tissue not in held_out:
            continue
        for where, column in (("training", values[train, k]), ("every split's", values[:, k])):
            mean = float(np.nanmean(column.astype(np.float64)))
            if abs(mean) < SELF_SCALED_TOLERANCE:
                raise InputError(
                    f"held-out tissue {tissue!r} is centred in {labels} on its own labels (the mean of its {where} "
                    f"labels is {mean:.1e}), and there is no {log1p_path} to scale it with the seen tissues' "
                    "statistics instead; put the recipe run's labels_log1p.parquet there (or name it with [data] "
                    "labels_log1p), or re-run the recipe with --holdout-tissues"
                )


def stage1_view(data: CdbridgeData) -> CdbridgeData:
    """The same data with one example per transcript (its coding mask as target): stage 1's splits."""
    return dataclasses.replace(data, splits=data.transcripts, variants={})


# the DNA scale is estimated from at most this many training windows, drawn with a seed of its own: the data decide
# it, not [train] seed, so that a stage 2 (or a run of another seed) taking a named stage-1 checkpoint z-scores the
# DNA as that stage 1 was trained to read it
DNA_SCALE_WINDOWS = 512
DNA_SCALE_SEED = 0


def dna_scale(
    dna: EmbeddingCache, preload: np.ndarray | None, rows: np.ndarray, batch: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (mean, std) of the DNA tokens of `rows` (training windows, every bin); at most
    DNA_SCALE_WINDOWS windows (a sample drawn with DNA_SCALE_SEED), read `batch` at a time."""
    if len(rows) > DNA_SCALE_WINDOWS:
        rows = np.random.default_rng(DNA_SCALE_SEED).choice(rows, DNA_SCALE_WINDOWS, replace=False)
        rows = np.sort(rows)
    return feature_scale(_windows(dna, preload, None, rows[a : a + batch]) for a in range(0, len(rows), batch))


def _windows(dna: EmbeddingCache, preload: np.ndarray | None, scale: tuple | None, rows: np.ndarray) -> np.ndarray:
    """(len(rows), L, D_dna) float32 DNA windows, from the preload when there is one, z-scored with `scale`."""
    if preload is not None:
        return preload[rows]
    windows = dna.read_rows(rows, dtype=np.float32).reshape(len(rows), *dna.item_shape)
    return windows if scale is None else (windows - scale[0]) / scale[1]


class ExampleChunks(Batches):
    """Item k = examples [k*size, (k+1)*size) of `order` in `table`, with the distinct DNA windows they read
    (rows["dna"] (B, L, D_dna)) and each example's window (`dna_index`)."""

    def __init__(self, data: CdbridgeData, table: pd.DataFrame, size: int, order: np.ndarray | None = None):
        self.data, self.table = data, table
        super().__init__(len(table), size, order)

    def chunk(self, positions: np.ndarray) -> Chunk:
        part = self.table.iloc[positions]
        windows, dna_index = np.unique(part["dna_row"].to_numpy(), return_inverse=True)
        target = np.stack(part["target"].to_list()) if part["target"].dtype == object else part["target"].to_numpy()
        examples = {
            "index": torch.from_numpy(positions.astype(np.int64)),
            "target": torch.from_numpy(np.array(target, dtype=np.float32)),  # a copy: pandas arrays are read-only
            "dna_index": torch.from_numpy(dna_index.astype(np.int64)),
            "protein_row": torch.from_numpy(part["protein_row"].to_numpy(np.int64, copy=True)),
            "protein_present": torch.from_numpy(part["protein_present"].to_numpy(bool, copy=True)),
        }
        if "tissue_index" in part:
            examples["tissue_index"] = torch.from_numpy(part["tissue_index"].to_numpy(np.int64, copy=True))
        dna = _windows(self.data.dna, self.data.dna_rows, self.data.dna_scale, windows)
        return Chunk(examples, {"dna": torch.from_numpy(np.ascontiguousarray(dna))})


def per_tissue_mean(data: TaskData, split: str) -> np.ndarray:
    """Each seen tissue's training mean; a held-out tissue gets the mean over every training cell (it has none)."""
    train = data.splits["train"]
    means = train.groupby("tissue_index")["target"].mean()
    index = data.splits[split]["tissue_index"]
    return index.map(means).fillna(float(train["target"].mean())).to_numpy(np.float32)


def check_mask_geometry(coding_masks: str, dna: EmbeddingCache) -> None:
    """The masks' bins are the DNA cache's positions: the same bp per bin and the reference strand's order (the
    DNA models' bins run along it under every strand policy). Read from the recipe.json beside the masks table
    (`mask`) and the cache's model facts (`bin_bp`); a side that does not record them is not compared."""
    recipe = Path(coding_masks).parent / "recipe.json"
    try:
        mask = json.loads(recipe.read_text()).get("mask") or {}
    except (OSError, ValueError, AttributeError):
        return
    fix = "re-run the recipe with --mask-orientation reference"
    if mask.get("orientation", "reference") != "reference":
        raise InputError(
            f"{coding_masks} holds masks in {mask['orientation']!r} orientation ({recipe}) but the bins of {dna.url} "
            f"run along the reference strand; {fix}"
        )
    cache_bp = (dna.manifest.config or {}).get("bin_bp")
    if cache_bp and mask.get("bin_bp") and int(mask["bin_bp"]) != int(cache_bp):
        raise InputError(
            f"{coding_masks} has masks of {mask['bin_bp']} bp bins ({recipe}) but {dna.url} has {cache_bp} bp bins; "
            f"re-run the recipe with --bin-bp {cache_bp}"
        )
