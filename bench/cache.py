"""The cache section of `dogmacache bench`: shard writes, random single-item reads (what training does), and
batched reads through `EmbeddingCache.read_rows`, of random Enformer-shaped items in a temporary cache; and the
table `dogmacache bench --only cache` prints. No target: the numbers are for comparing machines and codecs.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from dogmacache.bench.report import Table, fmt, table
from dogmacache.cache import convert
from dogmacache.cache.reader import open_cache
from dogmacache.cache.writer import CacheWriter
from dogmacache.contracts.provenance import digest_strings


def _significant(x: float, digits: int = 4) -> float:
    """Rounded to significant digits, not decimals: a tiny cache's 0.004 MB/s must not print as 0."""
    return float(f"{x:.{digits}g}")


def bench_cache(
    n_items: int = 64,
    item_shape: tuple[int, ...] = (896, 3072),  # Enformer trunk output per window
    dtype: str = "float16",
    compression: str = "none",
    shard_items: int = 16,
    batch: int = 8,
    seed: int = 0,
    workdir: str | None = None,
) -> dict:
    rng = np.random.default_rng(seed)
    root = Path(tempfile.mkdtemp(prefix="dogmacache-bench-", dir=workdir))
    path = root / "bench.zarr"
    ids = [f"item{i}" for i in range(n_items)]
    try:
        writer = CacheWriter.create(
            path, ids=ids, modality="dna", model="bench/random", model_revision="none", layer=-1, pooling="none",
            item_shape=item_shape, input_digest=digest_strings(ids), dtype=dtype, compression=compression,
            shard_items=shard_items,
        )  # fmt: skip
        block = rng.standard_normal((shard_items, *item_shape), dtype=np.float32)
        convert.to_storage(block[:1], dtype)  # warm-up: torch's import is not write time
        t0 = time.perf_counter()
        for shard in writer.pending_shards():
            start, stop = writer.manifest.shard_rows(shard)
            writer.write_shard(shard, block[: stop - start])
        writer.finalize()
        write_s = time.perf_counter() - t0
        item_bytes = int(np.prod(item_shape)) * np.dtype("float32" if dtype == "float32" else "float16").itemsize
        total = n_items * item_bytes
        on_disk = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

        cache = open_cache(path)
        order = rng.permutation(n_items)
        t0 = time.perf_counter()
        for row in order:
            cache.read_rows([int(row)])
        random_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for a in range(0, n_items, batch):
            cache.read_rows(order[a : a + batch], dtype=np.float32)
        batched_s = time.perf_counter() - t0
        return {
            "n_items": n_items,
            "item_shape": list(item_shape),
            "dtype": dtype,
            "compression": compression,
            "shard_items": shard_items,
            "logical_MB": _significant(total / 1e6),
            "on_disk_MB": _significant(on_disk / 1e6),
            "write_MB_per_s": _significant(total / 1e6 / write_s),
            "random_item_read_MB_per_s": _significant(total / 1e6 / random_s),
            "random_items_per_s": _significant(n_items / random_s),
            f"batch{batch}_read_as_float32_items_per_s": _significant(n_items / batched_s),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def cache_tables(r: dict[str, Any]) -> list[Table]:
    batch_key = next((k for k in r if k.startswith("batch") and k.endswith("_items_per_s")), None)
    rows = [["shard writes (cast, checks, sha256, write)", r["write_MB_per_s"], "MB/s"],
            ["random single-item reads", r["random_item_read_MB_per_s"], "MB/s"],
            ["random single-item reads", r["random_items_per_s"], "items/s"]]  # fmt: skip
    if batch_key:
        rows.append([f"{batch_key.split('_')[0]} reads as float32", r[batch_key], "items/s"])
    rows.append(["size logical / on disk", f"{fmt(r['logical_MB'])} / {fmt(r['on_disk_MB'])}", "MB"])
    shape = "×".join(str(s) for s in r["item_shape"])
    return [table(f"cache: {r['n_items']} items of {shape} {r['dtype']}, {r['shard_items']} per shard, "
                  f"compression {r['compression']} (no target)", ["measurement", "measured", "unit"], rows)]  # fmt: skip
