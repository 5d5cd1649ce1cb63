"""Importing an HDF5 embedding file (e.g. the CDT authors' Enformer outputs) into a cache.

Streams one shard at a time (memory: one shard in the storage dtype plus one read block), so a 50 GB file
imports on a laptop; resumable like any write (re-running redoes only unfinished shards).
The CDT authors' files hold `embeddings` (N, 896, 3072) float32 with `chroms` and `centers` beside it;
without an `--ids` dataset, ids are built as `<chrom>:<center>`.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
from dogmacache.cache import convert, layout
from dogmacache.cache.manifest import Manifest
from dogmacache.cache.writer import CacheWriter
from dogmacache.contracts.provenance import digest_strings
from dogmacache.errors import InputError
from tqdm.auto import tqdm

READ_BLOCK_BYTES = 64 << 20  # HDF5 rows per read: about 64 MiB of source data


def _describe(h5: h5py.File) -> str:
    found = []
    h5.visititems(lambda name, obj: found.append(f"{name} {obj.shape} {obj.dtype}") if isinstance(obj, h5py.Dataset) else None)
    return ", ".join(found) or "no datasets"


def _decode(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values.tolist()]


def read_ids(h5: h5py.File, src: str, n_items: int, ids_name: str | None) -> list[str]:
    """Ids from a dataset named by the user, else `<chrom>:<center>` from `chroms` and `centers`."""
    if ids_name is not None:
        if ids_name not in h5:
            raise InputError(f"{src} has no dataset {ids_name!r} for --ids; it has: {_describe(h5)}")
        ids = _decode(h5[ids_name][:])
    elif "chroms" in h5 and "centers" in h5:
        ids = [f"{c}:{int(p)}" for c, p in zip(_decode(h5["chroms"][:]), h5["centers"][:].tolist(), strict=True)]
    else:
        raise InputError(
            f"{src} has neither an ids dataset nor `chroms` + `centers` to build ids from; it has: {_describe(h5)}; "
            "pass --ids NAME with the dataset that names each row"
        )
    if len(ids) != n_items:
        raise InputError(f"{src}: {len(ids)} ids for {n_items} embedding rows; the ids dataset must have one per row")
    return ids


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
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[Manifest, int]:
    """Import `dataset` of `src` into a cache at `dest`. Returns the final manifest and the shards written now."""
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
            raise InputError(f"{src}:{dataset} has shape {data.shape}; expected (N, D) pooled or (N, L, D) per-position")
        if pooling is None:
            if data.ndim == 2:
                raise InputError(
                    f"{src}:{dataset} is pooled, shape {data.shape}; say how it was pooled with --pooling (mean, cls, ...)"
                )
            pooling = "none"
        item_ids = read_ids(h5, str(src), data.shape[0], ids)
        input_digest = digest_strings(
            ["h5import", src.name, dataset, str(data.shape), str(data.dtype), str(src.stat().st_size), *item_ids]
        )
        writer = CacheWriter.create(
            dest,
            ids=item_ids,
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
            config={"source": "import-h5", "src": str(src.resolve()), "dataset": dataset, "ids": ids},
            overwrite=overwrite,
        )
        if writer.manifest.complete:
            return writer.manifest, 0
        pending = writer.pending_shards()
        m = writer.manifest
        item_bytes = data.dtype.itemsize * int(np.prod(data.shape[1:]))
        block_rows = max(1, READ_BLOCK_BYTES // item_bytes)
        view = layout.numpy_view(dtype)
        n_pending = sum(m.shard_rows(s)[1] - m.shard_rows(s)[0] for s in pending)
        bar = tqdm(total=n_pending, unit="item", desc=f"import {src.name}", disable=None if progress else True)  # None: off when not a terminal
        for shard in pending:
            start, stop = m.shard_rows(shard)
            buffer = np.empty((stop - start, *m.item_shape), dtype=np.float32 if dtype == "bfloat16" else view)
            for a in range(start, stop, block_rows):
                b = min(stop, a + block_rows)
                block = data[a:b]
                # torch's cast (cache.convert) is ~10x faster than numpy's float32 -> float16 assignment;
                # bfloat16 stays float32 here and the writer casts it once
                buffer[a - start : b - start] = block if dtype == "bfloat16" else convert.to_storage(block, dtype)
                bar.update(b - a)
            writer.write_shard(shard, buffer)
        bar.close()
    return writer.finalize(), len(pending)
