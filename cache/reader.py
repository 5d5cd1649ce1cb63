"""Reading a cache: lazy, local or remote (any fsspec URL: file://, http(s)://, hf://), by row or by id.

Nothing is loaded when a cache is opened but the manifest; `ids` load on the first lookup by id. Rows of a
local uncompressed cache are read by byte range from the shard files (`cache/shards.py`, at about the speed
of a memmap); other caches read through zarr, by contiguous runs within one shard (on sharded arrays a loop
of single reads is ~10x faster than fancy indexing). Every read checks the chunks' crc32c checksums, and a
failed one is a one-line CacheError naming the array and the shard or chunk file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import zarr
from dogmacache.cache import convert, layout
from dogmacache.cache.manifest import MANIFEST_KEY, Manifest, digest_strings, manifest_mapping
from dogmacache.cache.shards import PlainChunks, ShardFiles, direct_readable, empty_rows, missing_file
from dogmacache.cache.storage import local_path
from dogmacache.errors import CacheError, IncompleteCacheError


def chunk_file(url: str, array: str, chunk: int, n_dims: int) -> str:
    """Where chunk (or shard) `chunk` along the item axis of `array` lies (default keys, '/' separator)."""
    return f"{url.rstrip('/')}/{array}/c/{chunk}" + "/0" * (n_dims - 1)


def unreadable(url: str, array: str, unit: str, index: int, n_dims: int, err: Exception) -> CacheError:
    """A failed decode as one line: which array, which shard or chunk file, what to do."""
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return CacheError(
        f"array `{array}`, {unit} {index} ({chunk_file(url, array, index, n_dims)}) cannot be read "
        f"({type(err).__name__}: {reason}); the file is corrupted: run `dogmacache cache verify {url}`, "
        "then re-create or re-download the cache"
    )


def _open_group(url: str, storage_options: dict[str, Any] | None) -> zarr.Group:
    text = os.fspath(url)
    try:
        local = local_path(text)
        if local is None:
            from zarr.storage import FsspecStore

            try:
                store = FsspecStore.from_url(text, read_only=True, storage_options=storage_options)
                return zarr.open_group(store, mode="r", zarr_format=3)
            except FileNotFoundError:
                raise
            except ImportError as err:  # a protocol whose fsspec package is not installed (s3fs, gcsfs, ...)
                raise CacheError(
                    f"cannot read {text}: {' '.join(str(err).split())}; install that package, or copy the cache to "
                    "a local folder first"
                ) from None
            except ValueError as err:  # a protocol fsspec does not know
                if "protocol" not in str(err).lower():
                    raise
                raise CacheError(
                    f"cannot read {text}: {err}; give a local path, or a URL fsspec reads (https://, hf://, s3://, "
                    "gs://, ...)"
                ) from None
            except OSError as err:  # aiohttp's and requests' connection errors are OSErrors
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise CacheError(
                    f"cannot reach {text} ({type(err).__name__}: {reason}); check the network and the URL, or pull "
                    "the cache to a local folder first (dogmacache cache pull)"
                ) from None
        if os.path.isfile(local):
            raise CacheError(f"no cache at {text!r}: it is a file, and a cache is a folder (NAME.zarr); check the path")
        if not os.path.isdir(local):
            raise CacheError(f"no cache at {text!r}: the directory does not exist; check the path")
        return zarr.open_group(local, mode="r", zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
        raise CacheError(f"no Zarr v3 group at {text!r} ({err}); check the path or URL") from err
    except zarr.errors.ContainsArrayError:
        raise CacheError(
            f"{text!r} is an array of a cache, not a cache; pass the cache's own folder (the NAME.zarr above it)"
        ) from None
    except json.JSONDecodeError as err:
        raise damaged_metadata(text, "", err) from None


REREAD_FIX = "copy or pull the cache again, or re-create it (re-run the command that wrote it, with --overwrite)"


def damaged_metadata(url: str, name: str, err: Exception, fix: str = REREAD_FIX, what: str = "") -> CacheError:
    """A zarr.json (the group's, or array `name`'s) that does not parse (or, with `what`, says what is wrong with it
    otherwise), as one line naming the file and `fix`."""
    where = f"{url.rstrip('/')}/{name + '/' if name else ''}zarr.json"
    return CacheError(f"{where} {what or 'is not valid JSON'} ({err}); the cache's metadata is damaged: {fix}")


def member(group: zarr.Group, url: str, name: str, fix: str = REREAD_FIX) -> zarr.Array:
    """Array `name` of a cache's group, or one CacheError naming its zarr.json and `fix`: one that does not parse,
    one that names a codec or field zarr does not know, or one that is gone (an interrupted copy or download)."""
    try:
        return group[name]
    except json.JSONDecodeError as err:
        raise damaged_metadata(url, name, err, fix) from None
    except (KeyError, FileNotFoundError) as err:  # the array's folder or its zarr.json is gone
        raise damaged_metadata(url, name, err, fix, "is missing") from None
    except (TypeError, ValueError) as err:  # parses, but names a codec or field zarr does not know
        raise damaged_metadata(url, name, err, fix, "cannot be read as zarr array metadata") from None


def open_cache(
    url: str | os.PathLike,
    *,
    allow_partial: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> EmbeddingCache:
    """Open a cache for reading. Refuses one whose manifest is not complete unless `allow_partial`."""
    url = os.fspath(url)
    group = _open_group(url, storage_options)
    if MANIFEST_KEY not in group.attrs:
        raise CacheError(f"{url} is a Zarr group without a '{MANIFEST_KEY}' manifest; it is not a dogmacache cache")
    manifest = Manifest.from_dict(manifest_mapping(group.attrs[MANIFEST_KEY], url), where=url)
    if not manifest.complete and not allow_partial:
        raise IncompleteCacheError(
            f"{url} is not complete (its write was interrupted or is still running); re-run the command that "
            "writes it to finish, or open it with allow_partial=True to read the finished shards"
        )
    return EmbeddingCache(url, group, manifest)


class EmbeddingCache:
    """One opened cache. `cache[rows]` and `cache.get(ids)` return arrays of shape (B, *item_shape)."""

    def __init__(self, url: str, group: zarr.Group, manifest: Manifest):
        self.url = url
        self.manifest = manifest
        self._group = group
        self.embeddings = self._member(layout.EMBEDDINGS)
        expected = (manifest.n_items, *manifest.item_shape)
        if tuple(self.embeddings.shape) != expected:
            raise CacheError(
                f"{url}: `embeddings` has shape {tuple(self.embeddings.shape)} but the manifest says {expected}; "
                "the cache was altered after it was written: re-create it"
            )
        stored = np.dtype(layout.zarr_dtype(manifest.dtype))
        if self.embeddings.dtype != stored:  # the bits would be read as another number type
            raise CacheError(
                f"{url}: `embeddings` stores {self.embeddings.dtype} but the manifest says {manifest.dtype} (stored as "
                f"{stored}); the cache was altered after it was written: re-create it, or copy or pull it again"
            )
        self._view = layout.numpy_view(manifest.dtype)
        self._plain: dict[str, PlainChunks | None] = {}  # extra array -> its chunk files, where read directly
        self._present: set[tuple[str, int]] = set()  # (array, block) whose file was found (`_require`)
        root = local_path(url)
        itemsize = self.embeddings.dtype.itemsize
        self._direct = (
            ShardFiles(root, layout.EMBEDDINGS, expected, manifest.shard_items, itemsize, complete=manifest.complete)
            if root is not None and direct_readable(self.embeddings, manifest.item_shape)
            else None
        )

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"EmbeddingCache({self.url!r}, {m.modality}/{m.model}, layer={m.layer}, pooling={m.pooling}, "
            f"n_items={m.n_items}, item_shape={m.item_shape}, dtype={m.dtype}, complete={m.complete})"
        )

    def __len__(self) -> int:
        return self.manifest.n_items

    @property
    def item_shape(self) -> tuple[int, ...]:
        return self.manifest.item_shape

    @property
    def dtype(self) -> np.dtype:
        return self._view

    @cached_property
    def ids(self) -> np.ndarray:
        array = self._member(layout.IDS)
        self._require(layout.IDS, array, (0, array.shape[0]))
        try:
            values = array[:]
        except Exception as err:  # a chunk that fails its checksum or no longer decodes
            chunk = _first_bad_chunk(array)
            raise unreadable(self.url, layout.IDS, "chunk", chunk, 1, err) from None
        ids = np.asarray(values.tolist(), dtype=str)
        if ids.shape != (self.manifest.n_items,):
            raise CacheError(f"{self.url}: `ids` has shape {ids.shape}, expected ({self.manifest.n_items},)")
        return ids

    @cached_property
    def _row_of(self) -> dict[str, int]:
        return {item: row for row, item in enumerate(self.ids.tolist())}

    def row_of(self, item_id: str) -> int:
        try:
            return self._row_of[item_id]
        except KeyError:
            raise CacheError(
                f"id {item_id!r} is not in {self.url} ({self.manifest.n_items} ids, e.g. {self.ids[:3].tolist()}); "
                "the table and the cache come from different inputs: re-embed from the same recipe output"
            ) from None

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this cache's numbers (not where it lies): model, revision, layer, pooling, inputs, ids
        and shard checksums. Checkpoints keep it, so a rerun, `explain` or `mutate` can refuse another cache."""
        m = self.manifest
        return {
            "url": self.url,
            "model": m.model,
            "model_revision": m.model_revision,
            "layer": m.layer,
            "pooling": m.pooling,
            "input_digest": m.input_digest,
            "ids_digest": m.ids_digest,
            "shards_digest": digest_strings(m.shards),
        }

    def rows_of(self, item_ids: Iterable[str]) -> np.ndarray:
        """Rows for many ids; names every missing id (up to five) in one error."""
        item_ids = list(item_ids)
        missing = [i for i in item_ids if i not in self._row_of]
        if missing:
            raise CacheError(
                f"{len(missing)} of {len(item_ids)} ids are not in {self.url} (e.g. {missing[:5]}); "
                "the table and the cache come from different inputs: re-embed from the same recipe output"
            )
        return np.fromiter((self._row_of[i] for i in item_ids), dtype=np.int64, count=len(item_ids))

    # ---- reading rows -------------------------------------------------------------------------------
    def read_rows(self, rows: Sequence[int] | np.ndarray, dtype: np.dtype | str | None = None) -> np.ndarray:
        """Rows in the order given, shape (B, *item_shape); `dtype` converts (e.g. float32 for training)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = self.manifest.n_items
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            bad = rows[(rows < 0) | (rows >= n)][0]
            raise CacheError(f"row {int(bad)} is outside {self.url}, which has rows 0..{n - 1}")
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        if self._direct is not None:
            out = empty_rows((rows.size, *self.item_shape), layout.zarr_dtype(self.manifest.dtype))
            self._direct.read_into(out, sorted_rows, order)
            return convert.from_storage(out, self.manifest.dtype, dtype)
        out = np.empty((rows.size, *self.item_shape), dtype=layout.zarr_dtype(self.manifest.dtype))
        # runs of consecutive sorted rows in one shard become one slice read each (a repeated row starts a run)
        per_shard = self.manifest.shard_items
        breaks = np.flatnonzero((np.diff(sorted_rows) != 1) | (np.diff(sorted_rows // per_shard) != 0)) + 1
        for run in np.split(np.arange(rows.size), breaks):
            if run.size == 0:
                continue
            first, last = int(sorted_rows[run[0]]), int(sorted_rows[run[-1]])
            self._require(layout.EMBEDDINGS, self.embeddings, (first, last + 1))
            try:
                out[order[run]] = self.embeddings[first : last + 1]
            except Exception as err:  # a chunk or shard index that fails its checksum, or no longer decodes
                shard = first // per_shard
                raise unreadable(self.url, layout.EMBEDDINGS, "shard", shard, self.embeddings.ndim, err) from None
        return convert.from_storage(out, self.manifest.dtype, dtype)

    def get(self, item_ids: Iterable[str], dtype: np.dtype | str | None = None) -> np.ndarray:
        """Rows for ids, in the order given."""
        return self.read_rows(self.rows_of(item_ids), dtype=dtype)

    def __getitem__(self, key: int | slice | Sequence[int] | np.ndarray | tuple) -> np.ndarray:
        """Rows by an int, a slice, a sequence of row numbers or a boolean mask over every row; a tuple picks
        the rows by its first element, then indexes within them by the rest (`cache[:, 0]`: every row's first
        position or feature), reading whole rows."""
        if isinstance(key, tuple):
            if not key or key[0] is Ellipsis:
                return self[:][key]
            rows = self[key[0]]
            return rows[key[1:]] if isinstance(key[0], (int, np.integer)) else rows[(slice(None), *key[1:])]
        if isinstance(key, (int, np.integer)):
            return self.read_rows([int(key)])[0]
        if isinstance(key, slice):
            return self.read_rows(np.arange(self.manifest.n_items)[key])
        rows = np.asarray(key)
        n = self.manifest.n_items
        if rows.dtype == bool:
            if rows.shape != (n,):
                raise CacheError(
                    f"a boolean mask over {self.url} needs one value per row, shape ({n},), got shape {rows.shape}"
                )
            return self.read_rows(np.flatnonzero(rows))
        if rows.size and rows.dtype.kind not in "iu":
            shown = repr(key) if len(repr(key)) <= 60 else f"{type(key).__name__} of dtype {rows.dtype}"
            raise CacheError(
                f"cannot index {self.url} with {shown}: a cache is indexed by rows (an int, a slice, row numbers or "
                "a boolean mask), then within them as a tuple (e.g. cache[:, 0]); for ids use cache.get(ids)"
            )
        return self.read_rows(rows)

    def extra(self, name: str) -> CheckedArray:
        """A per-item array stored beside `embeddings` (e.g. `n_padded`, `mask`), lazily; index it to read."""
        if name not in self.manifest.extra_arrays:
            raise CacheError(f"{self.url} has no extra array {name!r}; it has {list(self.manifest.extra_arrays)}")
        array = self._member(name)
        return CheckedArray(self.url, name, array, lambda rows: self._require(name, array, rows))

    def done_shards(self) -> np.ndarray:
        """Boolean per shard: finished (useful on a partial cache)."""
        return self.shard_digests().any(axis=1)

    def shard_digests(self) -> np.ndarray:
        """(n_shards, 32) uint8: each finished shard's sha256 as the writer recorded it beside the manifest's list
        (zeros: not finished); a chunk that cannot be read is a CacheError naming its file."""
        array = self._member(layout.SHARD_SHA256)
        digests = CheckedArray(
            self.url, layout.SHARD_SHA256, array, lambda rows: self._require(layout.SHARD_SHA256, array, rows)
        )
        return np.asarray(digests[:])

    def shard_blocks(self, shard: int, embeddings: bool = True) -> list[np.ndarray]:
        """Decoded rows of one shard, as the writer hashed them: stored embeddings (unless `embeddings` is
        False), then extras. A block that cannot be read is a CacheError naming its array and file."""
        start, stop = self.manifest.shard_rows(shard)
        blocks = []
        for name in (*([layout.EMBEDDINGS] if embeddings else []), *self.manifest.extra_arrays):
            block = None if name == layout.EMBEDDINGS else self._plain_shard(name, shard)
            if block is not None:
                blocks.append(block)
                continue
            array = self._member(name)
            self._require(name, array, (start, stop))
            try:
                blocks.append(np.asarray(array[start:stop]))
            except Exception as err:  # each array's chunks carry their own checksum: name the one that failed
                raise unreadable(self.url, name, "shard", shard, array.ndim, err) from None
        return blocks

    def read_extra(self, name: str) -> np.ndarray:
        """The whole extra array `name` (every shard's rows, checked), straight from its chunk files where they
        allow it (see `_plain_shard`), else through zarr."""
        if name not in self.manifest.extra_arrays:
            raise CacheError(f"{self.url} has no extra array {name!r}; it has {list(self.manifest.extra_arrays)}")
        blocks = [self._plain_shard(name, shard) for shard in range(self.manifest.n_shards)]
        if blocks and all(b is not None for b in blocks):
            return np.concatenate(blocks)
        return np.asarray(self.extra(name)[:])

    def _plain_shard(self, name: str, shard: int) -> np.ndarray | None:
        """Rows of `shard` of the extra array `name` read from its one chunk file and checked against its crc32c
        (zarr's decode pipeline costs more per chunk than a small model's row: docs/formats.md): for a local array
        of bytes + crc32c chunked one shard per chunk; None for any other (zarr reads it) or a chunk never
        written."""
        if name not in self._plain:
            root = local_path(self.url)
            found = PlainChunks.open(root, name) if root is not None else None
            m = self.manifest
            one_per_shard = found is not None and found.shape[0] == m.n_items
            self._plain[name] = found if one_per_shard and found.chunks == (m.shard_items, *found.shape[1:]) else None
        chunks = self._plain[name]
        if chunks is None:
            return None
        start, stop = self.manifest.shard_rows(shard)
        try:
            block = chunks.read(shard)
        except CacheError as err:
            raise unreadable(self.url, name, "chunk", shard, len(chunks.shape), err) from None
        if block is None and self.manifest.complete:
            where = chunk_file(self.url, name, shard, len(chunks.shape))
            raise missing_file(self.url, name, "chunk", shard, where)
        return None if block is None else block[: stop - start]

    def _member(self, name: str) -> zarr.Array:
        """Array `name` of the group (`member`)."""
        return member(self._group, self.url, name)

    def _require(self, name: str, array: zarr.Array, rows: tuple[int, int] | np.ndarray) -> None:
        """In a complete cache, a CacheError (`missing_file`) when a chunk or shard file holding `rows` (a span
        (start, stop) or an array of rows) of `array` is absent, where zarr would read the fill value. Each file
        is looked up once (a stat locally, a read of its last 4 bytes remotely) and remembered; an unfinished
        cache is not checked."""
        if not self.manifest.complete:
            return
        sharded = getattr(array, "shards", None) is not None
        step = array.shards[0] if sharded else array.chunks[0]
        if isinstance(rows, tuple):
            start, stop = rows
            blocks = range(start // step, (stop - 1) // step + 1) if stop > start else range(0)
        else:
            blocks = np.unique(rows[(rows >= 0) & (rows < array.shape[0])] // step).tolist()
        root = local_path(self.url)
        for block in blocks:
            if (name, block) in self._present:
                continue
            key = array.metadata.encode_chunk_key((block, *[0] * (array.ndim - 1)))
            if root is not None:
                found = os.path.exists(os.path.join(root, name, *key.split("/")))
            else:  # the file's last 4 bytes (a HEAD may be answered with the whole file's cost)
                from zarr.abc.store import SuffixByteRequest
                from zarr.core.buffer import default_buffer_prototype
                from zarr.core.sync import sync

                store, where = array.store_path.store, f"{array.store_path.path}/{key}".lstrip("/")
                tail = store.get(where, default_buffer_prototype(), byte_range=SuffixByteRequest(4))
                found = sync(tail) is not None
            if not found:
                unit = "shard" if sharded else "chunk"
                raise missing_file(self.url, name, unit, block, chunk_file(self.url, name, block, array.ndim))
            self._present.add((name, block))


class CheckedArray:
    """A lazily read array of a cache whose failed reads (a chunk failing its crc32c, a file that no longer
    decodes) are one-line CacheErrors naming the array and the first bad chunk or shard file."""

    def __init__(self, url: str, name: str, array: zarr.Array, require: Callable[[Any], None] | None = None):
        self.url, self.name, self._array, self._require = url, name, array, require

    shape = property(lambda self: self._array.shape)
    dtype = property(lambda self: self._array.dtype)
    ndim = property(lambda self: self._array.ndim)
    chunks = property(lambda self: self._array.chunks)

    def __len__(self) -> int:
        return self._array.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if self._require is not None:
            self._require(_rows_read(key, self._array.shape[0]))
        try:
            return self._array[key]
        except Exception as err:
            sharded = getattr(self._array, "shards", None) is not None
            block = _first_bad_chunk(self._array, self._array.shards[0] if sharded else None)
            raise unreadable(
                self.url, self.name, "shard" if sharded else "chunk", block, self._array.ndim, err
            ) from None

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[:], dtype=dtype)

    def __repr__(self) -> str:
        return f"<CheckedArray {self.name!r} of {self.url}: shape {self.shape}, {self.dtype}>"


def _rows_read(key: Any, n: int) -> tuple[int, int] | np.ndarray:
    """The rows along the first axis that indexing with `key` reads: a span (start, stop) or an array of rows
    (every row for a key not understood here; zarr then judges the key)."""
    first = key[0] if isinstance(key, tuple) and key else key
    if (isinstance(key, tuple) and not key) or first is Ellipsis:
        return (0, n)
    if isinstance(first, slice):
        start, stop, step = first.indices(n)
        if step == 1:
            return (start, max(start, stop))
        return np.arange(start, stop, step)
    try:
        return np.asarray(np.arange(n)[first]).reshape(-1)
    except (IndexError, TypeError, ValueError):
        return (0, n)


def _first_bad_chunk(array: zarr.Array, step: int | None = None) -> int:
    """The first chunk (or block of `step` items, e.g. a shard) along the item axis that fails to decode."""
    step = step or array.chunks[0]
    for chunk in range(-(-array.shape[0] // step)):
        try:
            array[chunk * step : (chunk + 1) * step]
        except Exception:
            return chunk
    return 0
