"""A writer process for the kill/resume and concurrent-writer tests (run as a script, not collected).

usage: python cache_writer_proc.py PATH N_ITEMS SHARD_ITEMS {all|even|odd|none} [SECONDS_PER_SHARD] [--no-finalize]
       [--join LOCK_TOKEN]  (write under another process's lock, as the dask fan-out does)
Row r holds rows_for(r): deterministic, so any two runs must write identical arrays.
"""

import sys
import time

import numpy as np
from dogmacache.cache import CacheSpec, CacheWriter, ExtraArray, digest_strings

ITEM_SHAPE = (6, 4)


def rows_for(start: int, stop: int) -> np.ndarray:
    return np.stack([np.random.default_rng(r).standard_normal(ITEM_SHAPE) for r in range(start, stop)]).astype(
        "float32"
    )


def spec(ids: list[str], shard_items: int) -> CacheSpec:
    return CacheSpec(
        modality="dna",
        model="test/proc",
        model_revision="r0",
        layer=-1,
        pooling="none",
        item_shape=ITEM_SHAPE,
        input_digest=digest_strings(ids),
        shard_items=shard_items,
        extras=(ExtraArray("n_padded", "int32"),),
    )


def main(argv: list[str]) -> None:
    path, n_items, shard_items, which = argv[0], int(argv[1]), int(argv[2]), argv[3]
    delay = float(argv[4]) if len(argv) > 4 and not argv[4].startswith("--") else 0.0
    ids = [f"item{r}" for r in range(n_items)]
    if "--join" in argv:
        writer = CacheWriter.open(path, lock_token=argv[argv.index("--join") + 1])
    else:
        writer = CacheWriter.create(path, spec(ids, shard_items), ids=ids)
    for shard in writer.pending_shards():
        if which == "none" or which == "even" and shard % 2 or which == "odd" and not shard % 2:
            continue
        start, stop = writer.manifest.shard_rows(shard)
        writer.write_shard(shard, rows_for(start, stop), n_padded=np.arange(start, stop, dtype="int32"))
        print(f"wrote {shard}", flush=True)
        time.sleep(delay)
    if "--no-finalize" not in argv:
        writer.finalize()


if __name__ == "__main__":
    main(sys.argv[1:])
