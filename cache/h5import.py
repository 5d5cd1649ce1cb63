"""Importing an HDF5 embedding file (e.g. the CDT authors' Enformer outputs) into a cache.

Streams one shard at a time (memory: one shard in the storage dtype plus one read block), so a 50 GB file
imports on a laptop; resumable like any write (re-running redoes only unfinished shards). The input digest
covers the source file's name and size, the dataset's shape and dtype, the ids and a sha256 of a few of its rows
(`sample_digest`), so a resume onto shards written from another file is refused, while a copy of the same bytes
resumes (imports begun by versions without the sampled rows are refused and need --overwrite).
The CDT authors' files hold `embeddings` (N, 896, 3072) float32 with `chroms` and `centers` beside it;
without an `--ids` dataset, ids are built as `<chrom>:<center>`. Their merged file repeats some
(chrom, center) pairs (5,434 rows, 5,303 unique in `pilot_full_v2.h5`); ids are the join key, so repeats
are refused unless `dedupe` says what to do: "keep-first" keeps the first row of each id and drops the
others, "suffix" keeps every row and renames the 2nd, 3rd, ... as `<id>#2`, `<id>#3`. The rows affected are
recorded in the manifest config. An import refused for its values (NaN/Inf, beyond float16) removes what it
created, so the same command with the suggested fix (e.g. `--dtype float32`) starts afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
from dogmacache.cache import convert, layout
from dogmacache.cache.manifest import Manifest
from dogmacache.cache.spec import CacheSpec
from dogmacache.cache.writer import CacheWriter
from dogmacache.contracts.provenance import digest_strings
from dogmacache.errors import InputError
from tqdm.auto import tqdm

READ_BLOCK_BYTES = 64 << 20  # HDF5 rows per read: about 64 MiB of source data
DEDUPE = ("keep-first", "suffix")
SAMPLED_ROWS = 8  # rows drawn for `sample_digest`, besides the first, middle and last


def _describe(h5: h5py.File) -> str:
    found = []
    h5.visititems(
        lambda name, obj: found.append(f"{name} {obj.shape} {obj.dtype}") if isinstance(obj, h5py.Dataset) else None
    )
    return ", ".join(found) or "no datasets"


def _column(h5: h5py.File, name: str, src: str) -> np.ndarray:
    """Dataset `name` as one value per row: (N,), or (N, 1) read as (N,); any other shape is one line."""
    values = h5[name][:]
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise InputError(
            f"{src} dataset {name!r} has shape {values.shape}; it must hold one value per row, shape (N,) or (N, 1)"
        )
    return values


def _decode(values: np.ndarray, src: str = "", name: str = "") -> list[str]:
    """Text per row; bytes as UTF-8, and a row that is not UTF-8 one line naming the dataset and the row."""
    out = []
    for row, v in enumerate(values.tolist()):
        try:
            out.append(v.decode() if isinstance(v, bytes) else str(v))
        except UnicodeDecodeError as err:
            raise InputError(
                f"{src} dataset {name!r} row {row}: {v[:40]!r} is not UTF-8 text ({err.reason}); ids must be "
                "text: re-write that dataset as UTF-8 strings, or name another with --ids"
            ) from None
    return out


def _whole_positions(values: np.ndarray, src: str) -> list[int]:
    """`centers` as whole numbers; a fractional one is one line naming its row (cut to a whole number, two
    windows would share an id)."""
    numbers = np.asarray(values)
    if not np.issubdtype(numbers.dtype, np.number):
        raise InputError(f"{src} dataset 'centers' holds {numbers.dtype} values; it must hold whole-number positions")
    fractional = np.flatnonzero(~np.isfinite(numbers) | (numbers != np.round(numbers)))
    if len(fractional):
        row = int(fractional[0])
        raise InputError(
            f"{src} dataset 'centers' row {row} is {numbers[row].item()!r}, not a whole-number position "
            f"({len(fractional)} such rows); fix them, or pass --ids NAME with a dataset that names each row"
        )
    return [int(p) for p in numbers.tolist()]


def read_ids(h5: h5py.File, src: str, n_items: int, ids_name: str | None) -> list[str]:
    """Ids from a dataset named by the user, else `<chrom>:<center>` from `chroms` and `centers`."""
    if ids_name is not None:
        if ids_name not in h5:
            raise InputError(f"{src} has no dataset {ids_name!r} for --ids; it has: {_describe(h5)}")
        ids = _decode(_column(h5, ids_name, src), src, ids_name)
    elif "chroms" in h5 and "centers" in h5:
        chroms, centers = (
            _decode(_column(h5, "chroms", src), src, "chroms"),
            _whole_positions(_column(h5, "centers", src), src),
        )
        if len(chroms) != len(centers):
            raise InputError(f"{src}: {len(chroms)} chroms but {len(centers)} centers; they must pair row by row")
        ids = [f"{c}:{p}" for c, p in zip(chroms, centers, strict=True)]
    else:
        raise InputError(
            f"{src} has neither an ids dataset nor `chroms` + `centers` to build ids from; it has: {_describe(h5)}; "
            "pass --ids NAME with the dataset that names each row"
        )
    if len(ids) != n_items:
        raise InputError(f"{src}: {len(ids)} ids for {n_items} embedding rows; the ids dataset must have one per row")
    return ids


def dedupe_ids(ids: list[str], mode: str | None, src: str) -> tuple[list[str], np.ndarray, list[int]]:
    """(ids to store, source row of each, source rows dropped or renamed) for a dedupe mode."""
    counts = Counter(ids)
    repeated = {i for i, n in counts.items() if n > 1}
    rows = np.arange(len(ids))
    if not repeated:
        return ids, rows, []
    seen: Counter[str] = Counter()
    later = []  # rows after the first of their id
    for row, item in enumerate(ids):
        seen[item] += 1
        if seen[item] > 1:
            later.append(row)
    if mode is None:
        shown = ", ".join(f"{i!r} x{counts[i]}" for i in list(repeated)[:5])
        raise InputError(
            f"{src}: {len(repeated)} ids repeat ({shown}; {len(later)} rows after the first of their id); ids "
            "are the join key, so pass --dedupe keep-first (drop the later rows) or --dedupe suffix "
            "(rename them <id>#2, <id>#3, ...), or --ids with a dataset of unique ids"
        )
    if mode == "keep-first":
        keep = np.setdiff1d(rows, later)
        return [ids[r] for r in keep], keep, later
    if mode == "suffix":
        seen.clear()
        renamed = []
        for item in ids:
            seen[item] += 1
            renamed.append(item if seen[item] == 1 else f"{item}#{seen[item]}")
        after = Counter(renamed)
        clash = next((r for r in renamed if after[r] > 1), None)
        if clash is not None:
            raise InputError(
                f"{src}: --dedupe suffix would rename a repeated id to {clash!r}, which the file already holds; "
                "pass --dedupe keep-first, or --ids with a dataset of unique ids"
            )
        return renamed, rows, later
    raise InputError(f"--dedupe {mode!r} is not one of {', '.join(DEDUPE)}; pick one of those")


def dedupe_summary(mode: str, rows: list[int], n_ids: int) -> str:
    """What `dedupe` did, for the command's output."""
    head = f"{n_ids} repeated id{'s' if n_ids != 1 else ''} ({len(rows)} rows): "
    shown = f"{rows[:10]}" + (" ..." if len(rows) > 10 else "")
    if mode == "keep-first":
        return head + f"kept the first row of each, dropped rows {shown}"
    return head + f"renamed rows {shown} to <id>#2, <id>#3, ... in order"


def _check_range(block: np.ndarray, rows: np.ndarray, ids: list[str], src: str, dtype: str) -> None:
    """NaN/Inf in the source, or values beyond float16's range, named with row and id before any cast."""
    flat = block.reshape(len(block), -1)
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        k = int(np.flatnonzero(~finite)[0])
        raise InputError(
            f"row {int(rows[k])} ({ids[k]!r}) holds NaN or Inf in {src}; the source file is damaged or was "
            "written from a failed run: re-export that row"
        )
    limit = layout.STORAGE_MAX[dtype]
    if dtype == "float16" or block.dtype.itemsize > 4:  # float32 beyond bfloat16's range: the writer refuses it
        peak = np.abs(flat).max(axis=1)
        over = np.flatnonzero(peak > limit)
        if over.size:
            k = int(over[0])
            wider = "import with --dtype float32 (or bfloat16)" if dtype == "float16" else "rescale the source"
            raise InputError(
                f"row {int(rows[k])} ({ids[k]!r}) holds {float(peak[k]):g}, beyond {dtype}'s range "
                f"(±{limit:g}), and {over.size - 1} more rows of this block do too; {wider}"
            )


def sample_rows(n_items: int, n_random: int = SAMPLED_ROWS) -> np.ndarray:
    """The rows `sample_digest` reads: first, middle and last, and `n_random` drawn with a fixed seed."""
    drawn = np.random.default_rng(0).integers(0, n_items, size=n_random)
    return np.unique(np.r_[0, n_items // 2, n_items - 1, drawn])


def sample_digest(data: h5py.Dataset) -> str:
    """sha256 over the bytes of a few rows of `data` (`sample_rows`): with the file's size in the import's input
    digest, a resume onto shards written from another file of the same name and shape is refused, without
    reading a multi-GB file whole."""
    h = hashlib.sha256()
    for row in sample_rows(data.shape[0]).tolist():
        h.update(str(row).encode())
        h.update(np.ascontiguousarray(data[row]).reshape(-1).view(np.uint8))
    return f"sha256:{h.hexdigest()}"


def import_h5(
    src: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    dataset: str,
    modality: str,
    model: str,
    ids: str | None = None,
    model_revision: str = "unknown",
    layer: int | str = -1,
    pooling: str | None = None,
    dtype: str = "float16",
    compression: str = "none",
    shard_items: int | None = None,
    dedupe: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[Manifest, int]:
    """Import `dataset` of `src` into a cache at `dest`. Returns the final manifest and the shards written now;
    `manifest.config["dedupe"]` lists the source rows `dedupe` dropped or renamed."""
    src = Path(src)
    if not src.is_file():
        raise InputError(f"HDF5 file {str(src)!r} does not exist; check the path")
    try:
        h5 = h5py.File(src, "r")
    except OSError as err:
        raise InputError(f"{src} is not a readable HDF5 file ({err})") from err
    with h5:
        if dataset not in h5 or not isinstance(h5[dataset], h5py.Dataset):
            raise InputError(f"{src} has no dataset {dataset!r}; it has: {_describe(h5)}; pass --dataset NAME")
        data = h5[dataset]
        if data.ndim not in (2, 3):
            raise InputError(
                f"{src}:{dataset} has shape {data.shape}; expected (N, D) pooled or (N, L, D) per-position"
            )
        if data.dtype.kind not in "fiu" or data.dtype.names:
            raise InputError(
                f"{src}:{dataset} holds {data.dtype} values; an embedding dataset holds real numbers (float or "
                "integer): pass the dataset of embeddings with --dataset"
            )
        if data.shape[0] == 0:
            raise InputError(f"{src}:{dataset} has no rows (shape {data.shape}); there is nothing to import")
        if pooling is None:
            if data.ndim == 2:
                raise InputError(
                    f"{src}:{dataset} is pooled, shape {data.shape}; "
                    "say how it was pooled with --pooling (mean, cls, ...)"
                )
            pooling = "none"
        if pooling == "none" and data.ndim == 2:
            raise InputError(
                f"--pooling none means per-position (N, L, D) rows, but {src}:{dataset} has shape {data.shape}, "
                "pooled (N, D); pass the pooling it was made with, e.g. --pooling mean"
            )
        if pooling != "none" and data.ndim == 3:
            raise InputError(
                f"--pooling {pooling} means pooled (N, D) rows, but {src}:{dataset} has shape {data.shape}, "
                "per-position (N, L, D); pass --pooling none (or leave it out)"
            )
        source_ids = read_ids(h5, str(src), data.shape[0], ids)
        item_ids, source_rows, affected = dedupe_ids(source_ids, dedupe, str(src))
        stat = src.resolve().stat()
        input_digest = digest_strings(
            [
                "h5import",
                src.name,
                dataset,
                str(data.shape),
                str(data.dtype),
                str(stat.st_size),
                sample_digest(data),  # values, not the file's date: a copy or a touch of the same bytes resumes
                *item_ids,
            ]
        )
        # a portable record: the file's name, not where it lay on this machine
        config = {"source": "import-h5", "src": src.name, "dataset": dataset, "ids": ids}
        if affected:
            n_repeated = len({source_ids[r] for r in affected})
            config["dedupe"] = {"mode": dedupe, "rows": [int(r) for r in affected], "repeated_ids": n_repeated}
        spec = CacheSpec(
            modality=modality,
            model=model,
            model_revision=model_revision,
            layer=layer,
            pooling=pooling,
            item_shape=data.shape[1:],
            input_digest=input_digest,
            dtype=dtype,
            compression=compression,
            shard_items=shard_items,
            config=config,
        )
        created = _made_by_this_import(dest, overwrite)  # (DEST, the folders above it this run creates)
        writer = CacheWriter.create(dest, spec, ids=item_ids, overwrite=overwrite)
        if writer.manifest.complete:
            return writer.manifest, 0
        try:
            written = _import_shards(writer, data, source_rows, item_ids, src, dataset, dtype, progress)
        except InputError as err:  # values refused: leave nothing of ours that a fixed re-run would call other content
            writer.close()
            if created is None:
                raise InputError(
                    f"{err}; {dest} keeps the shards written before this run, which a run with other settings "
                    "replaces only with --overwrite"
                ) from None
            ours, parents = created
            shutil.rmtree(ours, ignore_errors=True)  # its lock went with the writer (`WriterLock.release`)
            for folder in parents:  # deepest first; one another run has put something in stays
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
    return writer.finalize(), written


def _made_by_this_import(dest: str | os.PathLike, overwrite: bool) -> tuple[Path, list[Path]] | None:
    """What a refused import may remove: DEST (when it does not exist yet, or is replaced) and the folders above it
    that do not exist yet, deepest first (removed only while empty: another run may write beside DEST); None when
    DEST holds an earlier run's cache (its shards are kept)."""
    path = Path(os.fspath(dest).removeprefix("file://")).absolute()
    if path.exists():
        return (path, []) if overwrite else None
    parents = []
    folder = path.parent
    while not folder.exists():
        parents.append(folder)
        folder = folder.parent
    return path, parents


def _import_shards(
    writer: CacheWriter,
    data: h5py.Dataset,
    source_rows: np.ndarray,
    item_ids: list[str],
    src: Path,
    dataset: str,
    dtype: str,
    progress: bool,
) -> int:
    """Write every pending shard from the HDF5 dataset, checking each block's values before its cast."""
    pending = writer.pending_shards()
    m = writer.manifest
    item_bytes = data.dtype.itemsize * int(np.prod(data.shape[1:]))
    block_rows = max(1, READ_BLOCK_BYTES // item_bytes)
    view = layout.numpy_view(dtype)
    n_pending = sum(m.shard_rows(s)[1] - m.shard_rows(s)[0] for s in pending)
    bar = tqdm(
        total=n_pending, unit="item", desc=f"import {src.name}", disable=None if progress else True
    )  # None: off when not a terminal
    with bar:
        for shard in pending:
            start, stop = m.shard_rows(shard)
            buffer = np.empty((stop - start, *m.item_shape), dtype=np.float32 if dtype == "bfloat16" else view)
            for a in range(start, stop, block_rows):
                b = min(stop, a + block_rows)
                first, last = int(source_rows[a]), int(source_rows[b - 1])
                block = data[first : last + 1]  # dropped rows are few: read the range, keep the rows asked for
                if last + 1 - first != b - a:
                    block = block[source_rows[a:b] - first]
                _check_range(block, source_rows[a:b], item_ids[a:b], f"{src}:{dataset}", dtype)
                # torch's cast (cache.convert) is ~10x faster than numpy's float32 -> float16 assignment;
                # bfloat16 stays float32 here and the writer casts it once
                if dtype == "bfloat16":  # float32 here, cast once by the writer: float64 rounded to odd first
                    block = convert.float32_round_to_odd(block) if block.dtype == np.float64 else block
                buffer[a - start : b - start] = block if dtype == "bfloat16" else convert.to_storage(block, dtype)
                bar.update(b - a)
            writer.write_shard(shard, buffer)
    return len(pending)
