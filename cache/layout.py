"""How a cache lies on disk: array names, chunk and shard sizes, codecs.

One item per chunk (training reads random items; several items in one chunk multiply the bytes read),
items grouped into shard files sized for the Hugging Face Hub's limits (files < 20 GB, < 10k entries
per folder, < 100k files per repository). Each shard file has exactly one writer.

Every chunk of every array ends in a crc32c checksum (zarr's `crc32c` codec, last in the pipeline), and the
shard index carries its own: a flipped byte fails the read that meets it, in dogmacache and in plain zarr
(cost measured by `dogmacache bench --only cache`; crc32c runs at ~13 GB/s, a cold read at ~1.5 GB/s).
Every array has dimension names; per-item arrays share `item` with `embeddings`, so xarray opens a cache.
"""

from __future__ import annotations

import glob
import math
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from dogmacache.errors import CacheError

EMBEDDINGS = "embeddings"  # (N, L, D) or (N, D)
IDS = "ids"  # (N,) strings: the join key for train
SHARD_SHA256 = "shard_sha256"  # (n_shards, 32) uint8: digest of each finished shard; zeros = not finished
# (N, 32) uint8 extra array: sha256 of exactly what the model saw for each item (embed/digest.py: item_digest)
ITEM_SHA256 = "item_sha256"
SHARD_NOTES = "shard_notes.partial"  # folder of per-shard JSON notes (how a shard was written) of an unfinished cache

DEFAULT_SHARD_BYTES = 1 << 30  # 1 GiB: a few hundred Enformer windows; quick to retry on an upload
HUB_MAX_FILE_BYTES = 20 * 10**9
HUB_MAX_FOLDER_ENTRIES = 10_000
HUB_MAX_FILES = 100_000
MAX_SHARDS = 9_000  # below the per-folder limit with room for the other files of a repository
IDS_CHUNK = 1 << 20  # ids per chunk of the `ids` array

CHUNK_KEY_ENCODING = {"name": "default", "separator": "/"}
EMBEDDING_DIMS = {1: ("item", "feature"), 2: ("item", "position", "feature")}  # by len(item_shape)
SHARD_SHA256_DIMS = ("shard", "sha256_byte")


def checksum() -> list:
    """The codec that ends every chunk's pipeline: a crc32c of the encoded bytes, checked on every decode."""
    from zarr.codecs import Crc32cCodec

    return [Crc32cCodec()]


def extra_dims(extra: ExtraArray) -> tuple[str, ...]:
    """`item` first (shared with `embeddings`), then one name per item axis, private to the array."""
    return ("item", *(f"{extra.name}_{axis}" for axis in range(len(extra.item_shape))))


@dataclass(frozen=True)
class ExtraArray:
    """A per-item array stored beside `embeddings`, e.g. `n_padded` (int32, ()) or `mask` (bool, (L,))."""

    name: str
    dtype: str
    item_shape: tuple[int, ...] = ()


def check_ids(ids: Sequence[str]) -> list[str]:
    """Ids as a list of non-empty, unique strings, or a CacheError naming the offenders. None and NaN (a table's
    empty cell) are empty ids, not the strings "None" and "nan"."""
    ids = ["" if i is None or (isinstance(i, float) and math.isnan(i)) else str(i) for i in ids]
    if not ids:
        raise CacheError("no ids given: a cache needs at least one item")
    empty = [row for row, i in enumerate(ids) if not i.strip()]
    if empty:
        raise CacheError(f"ids at rows {empty[:5]} are empty; every item needs a non-empty id (the join key)")
    counts = Counter(ids)
    dupes = [(i, n) for i, n in counts.items() if n > 1]
    if dupes:
        shown = ", ".join(f"{i!r} x{n}" for i, n in dupes[:5])
        raise CacheError(
            f"ids are not unique ({len(dupes)} repeated: {shown}); ids are the join key for train, "
            "so give each row its own id (e.g. append the target gene or the strand)"
        )
    return ids


def item_nbytes(item_shape: tuple[int, ...], dtype: str) -> int:
    return math.prod(item_shape) * np.dtype(zarr_dtype(dtype)).itemsize


def zarr_dtype(dtype: str) -> str:
    """Dtype as zarr stores it. Zarr v3 has no bfloat16: its bits are stored as uint16 (see `numpy_view`)."""
    return "uint16" if dtype == "bfloat16" else dtype


def numpy_view(dtype: str) -> np.dtype:
    """Dtype that the stored bits mean (bfloat16 via ml_dtypes; others as stored)."""
    if dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


# the largest finite value of each storage dtype: above it a cast gives inf (bfloat16: ml_dtypes.finfo's max)
STORAGE_MAX = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38, "float32": float(np.finfo(np.float32).max)}


def choose_shard_items(n_items: int, item_bytes: int, target_bytes: int = DEFAULT_SHARD_BYTES) -> int:
    """Items per shard: about `target_bytes` per shard file, never more than MAX_SHARDS shards,
    never a file over the Hub's size limit."""
    if n_items < 1 or item_bytes < 1:
        raise CacheError(f"cannot lay out {n_items} items of {item_bytes} bytes; both must be positive")
    per_shard = max(1, min(n_items, target_bytes // item_bytes))
    if math.ceil(n_items / per_shard) > MAX_SHARDS:
        per_shard = math.ceil(n_items / MAX_SHARDS)
    if per_shard * item_bytes > HUB_MAX_FILE_BYTES:
        raise CacheError(
            f"{n_items} items of {item_bytes:,} bytes need shard files of {per_shard * item_bytes:,} bytes to stay "
            f"under {MAX_SHARDS} shards, over the Hub's {HUB_MAX_FILE_BYTES:,}-byte file limit; "
            "split the input table into several caches"
        )
    return int(per_shard)


# zarr notes, every time a bitround cache's array is opened, that numcodecs' codecs are outside the Zarr v3
# specification; the manifest and README say which codecs a cache uses, and the note buried one-line results
warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3 specification")

BITROUND_KEEPBITS = 7  # mantissa bits `bitround` keeps (bfloat16's count)


def as_read(values: np.ndarray, compression: str) -> np.ndarray:
    """`values`, already in the storage dtype, as a reader of a cache of `compression` gets them back: rounded as
    `bitround` rounds (what the stored numbers are), unchanged by the lossless codecs. For comparing rows computed
    anew with rows read from a cache, number for number."""
    if compression != "bitround":
        return values
    import numcodecs

    rounded = numcodecs.BitRound(keepbits=BITROUND_KEEPBITS).encode(np.ascontiguousarray(values))
    return np.asarray(rounded).view(values.dtype).reshape(values.shape)


def codecs_for(compression: str, dtype: str) -> tuple[list, list]:
    """(filters, compressors) for the inner chunks of `embeddings`; the checksum is always the last compressor."""
    from zarr.codecs import ZstdCodec

    if compression == "none":
        return [], checksum()
    if compression == "zstd":
        return [], [ZstdCodec(level=3), *checksum()]
    if compression == "bitround":
        if dtype == "bfloat16":
            raise CacheError("bitround works on float16/float32 storage; bfloat16 already keeps 7 mantissa bits")
        import warnings

        with warnings.catch_warnings():  # numcodecs warns that its codecs are outside the v3 spec
            warnings.simplefilter("ignore")
            from numcodecs.zarr3 import BitRound

            return [BitRound(keepbits=BITROUND_KEEPBITS)], [ZstdCodec(level=3), *checksum()]
    raise CacheError(f"compression {compression!r} is not one of none, zstd, bitround")


# a new cache is built in `<dir>/.creating-<name>.<token>` and renamed into place (`CacheWriter.create`); an
# --overwrite's old cache is moved there before it is deleted
STAGED_PREFIX = ".creating-"


def staged_path(path: Path, token: str) -> Path:
    """Where the writer holding lock `token` (`lock.WriterLock.token`: "host:pid-<hex>") stages cache `path`."""
    return path.parent / f"{STAGED_PREFIX}{path.name}.{token.rsplit('-', 1)[-1]}"


def stale_staged(path: Path) -> list[Path]:
    """The staging folders of cache `path` that stopped writers left (`staged_path`'s form for any token), not
    another cache's (`x.zarr.v2`'s)."""
    start = len(STAGED_PREFIX) + len(path.name) + 1
    found = path.parent.glob(f"{STAGED_PREFIX}{glob.escape(path.name)}.*")
    return [p for p in found if re.fullmatch(r"[0-9a-f]+", p.name[start:])]


def check_shard_items(shard_items: int, n_items: int, item_bytes: int) -> int:
    """An explicit items-per-shard as given, or a CacheError where it would break the limits `choose_shard_items`
    keeps: more than MAX_SHARDS shards, or a shard file over the Hub's."""
    if shard_items < 1:
        raise CacheError(f"--shard-items {shard_items} is below 1; give a whole number of 1 or more")
    per_shard = min(shard_items, max(n_items, 1))  # the rows the largest shard file holds
    if math.ceil(n_items / per_shard) > MAX_SHARDS:
        raise CacheError(
            f"--shard-items {shard_items} cuts {n_items:,} items into {math.ceil(n_items / per_shard):,} shards, over "
            f"{MAX_SHARDS:,} (a Hub folder takes < {HUB_MAX_FOLDER_ENTRIES:,} files); give at least "
            f"{math.ceil(n_items / MAX_SHARDS):,}, or leave it out to choose"
        )
    if per_shard * item_bytes > HUB_MAX_FILE_BYTES:
        raise CacheError(
            f"--shard-items {shard_items} makes shard files of {per_shard * item_bytes:,} bytes, over the Hub's "
            f"{HUB_MAX_FILE_BYTES:,}-byte file limit; give at most {HUB_MAX_FILE_BYTES // item_bytes:,}, or leave it "
            "out to choose"
        )
    return shard_items
