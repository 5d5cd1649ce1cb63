"""`dogmacache demo`: the offline end-to-end run on bundled, synthetic data (`make demo`).

Today it exercises the cache contract end to end: an HDF5 file in the CDT authors' layout
(`embeddings` (N, L, D) float32, `chroms`, `centers`) is streamed into a cache, the cache is verified, and
it is read back with plain `zarr` and through `open_cache`, checked against the source.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

DEMO_ITEMS = 48  # enhancer windows
DEMO_BINS = 16  # positions per window (Enformer: 896)
DEMO_WIDTH = 32  # features per position (Enformer trunk: 3072)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="offline end-to-end run on synthetic data (what `make demo` runs)")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def write_cdt_style_h5(path: Path, seed: int) -> np.ndarray:
    """A small HDF5 file laid out like the CDT authors' Enformer embeddings."""
    import h5py

    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((DEMO_ITEMS, DEMO_BINS, DEMO_WIDTH), dtype=np.float32)
    chroms = np.array([f"chr{1 + i % 3}".encode() for i in range(DEMO_ITEMS)])
    centers = 1_000_000 + 5_000 * np.arange(DEMO_ITEMS, dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("embeddings", data=embeddings, chunks=(1, DEMO_BINS, DEMO_WIDTH))
        h5.create_dataset("chroms", data=chroms)
        h5.create_dataset("centers", data=centers)
    return embeddings


def run(args: argparse.Namespace) -> int:
    import zarr
    from dogmacache.cache import import_h5, open_cache, verify_cache
    from dogmacache.errors import CacheError

    out = Path(args.out)
    t0 = time.perf_counter()
    source = write_cdt_style_h5(out / "enformer_embeddings.h5", args.seed)
    cache_dir = out / "cache" / "dna-enformer-demo.zarr"
    manifest, written = import_h5(
        out / "enformer_embeddings.h5", cache_dir, dataset="embeddings", modality="dna",
        model="demo/enformer-like", model_revision="synthetic", shard_items=8, overwrite=True,
    )  # fmt: skip
    print(f"[1/3] imported {manifest.n_items} windows into {cache_dir} ({written} shards)")

    report = verify_cache(cache_dir, progress=False)
    if not report.ok:
        raise CacheError(f"demo cache failed verification: {report.problems}")
    print(f"[2/3] verified {report.checked}/{report.n_shards} shard checksums")

    group = zarr.open_group(cache_dir, mode="r")  # plain zarr, no dogmacache code
    plain = group["embeddings"][:]
    ids = group["ids"][:].tolist()
    cache = open_cache(cache_dir)
    by_id = cache.get([ids[5], ids[0]], dtype=np.float32)
    max_err = float(np.max(np.abs(plain.astype(np.float32) - source)))
    if not (np.array_equal(by_id[0], plain[5].astype(np.float32)) and max_err < 2e-3 * np.abs(source).max()):
        raise CacheError(f"demo cache reads back wrong values (max abs error {max_err})")
    print(
        f"[3/3] plain zarr reads {plain.shape} {plain.dtype}, ids like {ids[0]!r}; "
        f"max abs error vs the float32 source {max_err:.2e} (float16 storage)"
    )
    print(f"demo finished in {time.perf_counter() - t0:.1f} s; outputs in {out}")
    return 0
