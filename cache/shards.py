"""Reading rows of a local, uncompressed `embeddings` array straight from its shard files.

zarr's async pipeline costs ~7 ms per 5.5 MB item (docs/formats.md#zarr-read-cost), so training read a cache at
under half the speed of a memmap of the same bytes. A shard file is its inner chunks followed by an index;
with one item per inner chunk, encoded as little-endian bytes then a crc32c, each item is one byte range:
this reads each shard's index once (checking its crc32c), then reads every row with one `os.preadv` into
the caller's output buffer plus 4 bytes of checksum, and checks the checksum there (no extra copy); rows under
4 KiB are read as one block per run and copied out, since per row the views cost more than the copy.
Runs of rows whose chunks lie back to back are read with one call. Anything else (remote stores,
compression, another codec layout) goes through zarr, which checks the same checksums.

The output buffer comes from `empty_rows`: an anonymous mapping advised for transparent huge pages, so the
kernel's copy into it takes one page fault per 2 MiB instead of one per 4 KiB (warm reads of Enformer rows went
from ~5.2 to ~8.6 GB/s per `preadv` on the CI-class machine; where huge pages are off it is a plain mapping).

Index layout (zarr v3 sharding, `index_location: end`): per inner chunk (offset, nbytes) as little-endian
uint64, (2^64 - 1, 2^64 - 1) for a chunk never written, then a crc32c of those bytes.

Writing takes the same shortcut (`write_shard_file`, `write_chunk_file`): zarr encodes and writes each inner
chunk through its async pipeline, about 0.15 ms per chunk whatever its size, which for a small model's rows
(a tiny ESM-2's 128-byte pooled protein, a tiny Enformer's 3 KB window) costs more than computing them. The
writer here lays out the same bytes zarr would (each row, its crc32c, the index, the index's crc32c; a plain
chunk as its bytes padded to the chunk shape with the fill value, then its crc32c), and writes them to a
temporary file renamed into place, as zarr's local store does. Tests compare the files with zarr's byte for byte.
"""

from __future__ import annotations

import json
import mmap
import os
import sys
import uuid
from collections.abc import Sequence

import google_crc32c
import numpy as np
import zarr
from dogmacache.errors import CacheError

_EMPTY = np.uint64(2**64 - 1)
_CRC_BYTES = 4
_MAX_IOV = 512  # (row, checksum) pairs per preadv, below every platform's IOV_MAX of 1024
_SMALL_ROW_BYTES = 4096  # runs of rows smaller than this are read as one block (`ShardFiles._read_small_run`)
_HUGE_MIN_BYTES = 4 << 20  # below this, numpy's own allocation
_INTERLEAVE_BELOW = 64 << 10  # rows smaller than this are copied into one buffer with their checksums to be written


def empty_rows(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised, writable array for `read_into`, huge-page backed where the kernel allows it."""
    dtype = np.dtype(dtype)
    n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if n_bytes < _HUGE_MIN_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.empty(shape, dtype=dtype)
    buffer = mmap.mmap(-1, n_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buffer.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # huge pages unsupported here: a plain mapping still works
        pass
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)  # the array keeps the mapping alive


def _codec(entry) -> dict:
    return entry if isinstance(entry, dict) else entry.to_dict()


def _plain_with_checksum(codecs) -> bool:
    names = [_codec(c) for c in codecs]
    return (
        len(names) == 2
        and names[0]["name"] == "bytes"
        and names[0].get("configuration", {}).get("endian", "little") == "little"
        and names[1]["name"] == "crc32c"
    )


def direct_readable(array: zarr.Array, item_shape: tuple[int, ...]) -> bool:
    """Whether `array`'s shard files can be read by byte range: sharded, one item per inner chunk, no codec
    but bytes + crc32c on the chunks and the index, index at the end, on a little-endian machine."""
    codecs = array.metadata.to_dict().get("codecs", [])
    if sys.byteorder != "little" or len(codecs) != 1 or _codec(codecs[0])["name"] != "sharding_indexed":
        return False
    config = _codec(codecs[0])["configuration"]
    return (
        tuple(config["chunk_shape"]) == (1, *item_shape)
        and config.get("index_location", "end") == "end"
        and _plain_with_checksum(config["codecs"])
        and _plain_with_checksum(config["index_codecs"])
    )


def direct_writable(array: zarr.Array) -> bool:
    """Whether a plain (unsharded) array's chunk files can be written here: bytes + crc32c only, little-endian."""
    return sys.byteorder == "little" and _plain_with_checksum(array.metadata.to_dict().get("codecs", []))


def _crc(data) -> bytes:
    return google_crc32c.value(data).to_bytes(_CRC_BYTES, "little")


def _write_file(path: str, buffers: Sequence) -> None:
    """`buffers` written back to back into `path` through a temporary file renamed into place (a crash leaves
    the old file or none, never a torn one), with the folders above it made as needed."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.{uuid.uuid4().hex}.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        views = [v for v in (memoryview(b).cast("B") for b in buffers) if len(v)]
        k = 0
        while k < len(views):
            written = os.writev(fd, views[k : k + _MAX_IOV])
            while written and k < len(views):  # skip what went out; a partly written buffer keeps its rest
                if written >= len(views[k]):
                    written -= len(views[k])
                    k += 1
                else:
                    views[k], written = views[k][written:], 0
        os.fsync(fd)  # on the disk before its name is: a machine that stops leaves the old file or the whole new one
        os.close(fd)
        fd = -1
        os.replace(partial, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise


def chunk_path(root: str, name: str, coords: Sequence[int]) -> str:
    """The file of chunk (or shard) `coords` of array `name` under the "default" key encoding with "/"."""
    return os.path.join(root, name, "c", *(str(int(c)) for c in coords))


def write_shard_file(path: str, rows: np.ndarray, shard_items: int) -> None:
    """A shard file of `rows` (k <= shard_items rows, one inner chunk each, as stored: the zarr dtype,
    C order) exactly as zarr writes it: each row then its crc32c, then the index and its crc32c; the
    chunks k.. (past the array's end, in a last shard) marked never written."""
    rows = np.ascontiguousarray(rows)
    k = len(rows)
    flat = rows.reshape(k, -1).view(np.uint8)
    row_bytes = flat.shape[1]
    crcs = np.empty((k, _CRC_BYTES), dtype=np.uint8)
    words = crcs.view("<u4").reshape(k)  # each row's crc32c as little-endian bytes
    for j in range(k):
        words[j] = google_crc32c.value(flat[j])
    index = np.full((shard_items, 2), _EMPTY, dtype="<u8")
    index[:k, 0] = np.arange(k, dtype=np.uint64) * np.uint64(row_bytes + _CRC_BYTES)
    index[:k, 1] = row_bytes + _CRC_BYTES
    if row_bytes < _INTERLEAVE_BELOW:  # small rows: one buffer of (row, crc) pairs, not two iovecs per row
        chunks = np.empty((k, row_bytes + _CRC_BYTES), dtype=np.uint8)
        chunks[:, :row_bytes], chunks[:, row_bytes:] = flat, crcs
        buffers: list = [chunks]
    else:  # large rows are written from where they lie, without a copy
        buffers = [b for j in range(k) for b in (flat[j], crcs[j])]
    buffers += [index, _crc(index)]
    _write_file(path, buffers)


def write_chunk_file(path: str, block: np.ndarray, chunk_rows: int) -> None:
    """One plain chunk of (chunk_rows, ...) as zarr writes it: `block`'s rows, then zeros (the fill value) up
    to `chunk_rows` rows, then a crc32c of all of it."""
    block = np.ascontiguousarray(block)
    if len(block) < chunk_rows:
        full = np.zeros((chunk_rows, *block.shape[1:]), dtype=block.dtype)
        full[: len(block)] = block
        block = full
    data = block.reshape(-1).view(np.uint8)
    _write_file(path, [data, _crc(data)])


_PLAIN_TYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
_PLAIN_TYPES |= {"float16", "float32", "float64"}


def plain_layout(root: str, name: str) -> tuple[tuple[int, ...], tuple[int, ...], np.dtype] | None:
    """(shape, chunk shape, dtype) of the local array `name` under `root` when its chunk files can be read by
    `read_chunk_file`: zarr v3, regular chunks under "default" keys with "/", bytes (little-endian) + crc32c,
    a plain numeric type, on a little-endian machine; else None. Read from its zarr.json, not through zarr
    (opening an array there costs more than reading its chunk: docs/formats.md)."""
    try:
        with open(os.path.join(root, name, "zarr.json"), "rb") as fh:
            meta = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    keys = meta.get("chunk_key_encoding") or {}
    grid = meta.get("chunk_grid") or {}
    data_type = meta.get("data_type")  # a name, or a dict for types such as fixed-length strings
    if (
        sys.byteorder != "little"
        or meta.get("zarr_format") != 3
        or meta.get("node_type") != "array"
        or meta.get("storage_transformers")
        or not isinstance(data_type, str)
        or data_type not in _PLAIN_TYPES
        or grid.get("name") != "regular"
        or keys.get("name") != "default"
        or (keys.get("configuration") or {}).get("separator", "/") != "/"
        or not _plain_with_checksum(meta.get("codecs") or [])
    ):
        return None
    chunks = tuple(int(n) for n in grid["configuration"]["chunk_shape"])
    return tuple(int(n) for n in meta["shape"]), chunks, np.dtype(data_type)


def read_chunk_file(path: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """One plain chunk as `write_chunk_file` (and zarr) lays it out, its crc32c checked: an array of `shape`;
    None where the file does not exist (a chunk never written). A wrong size or checksum is a CacheError."""
    dtype = np.dtype(dtype)
    n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return None
    if len(raw) != n_bytes + _CRC_BYTES:
        raise CacheError(
            f"the file has {len(raw)} bytes, a chunk of {tuple(shape)} {dtype} takes {n_bytes + _CRC_BYTES}"
        )
    if _crc(raw[:n_bytes]) != raw[n_bytes:]:
        raise CacheError("the chunk fails its crc32c checksum")
    return np.frombuffer(raw, dtype=dtype, count=n_bytes // dtype.itemsize).reshape(shape)  # read-only


class PlainChunks:
    """Chunks of one local plain array (`plain_layout`), each read whole and checked (`read_chunk_file`)."""

    def __init__(self, root: str, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype):
        self.root, self.name, self.shape, self.chunks, self.dtype = root, name, shape, chunks, dtype

    @classmethod
    def open(cls, root: str, name: str) -> PlainChunks | None:
        found = plain_layout(root, name)
        return None if found is None else cls(root, name, *found)

    def read(self, chunk: int) -> np.ndarray | None:
        """Chunk `chunk` along the first axis; None where it was never written; a CacheError where it is torn."""
        path = chunk_path(self.root, self.name, (chunk, *[0] * (len(self.chunks) - 1)))
        return read_chunk_file(path, self.chunks, self.dtype)


def missing_file(url: str, array: str, unit: str, index: int, where: str) -> CacheError:
    """A chunk or shard file absent from a cache whose manifest says complete, as one line: which cache, which
    file, what to do. (Zarr would read its rows as the fill value, 0.)"""
    return CacheError(
        f"{url}: array `{array}`, {unit} {index} ({where}) is missing, yet the manifest says the cache is complete "
        f"(an interrupted copy or download); run `dogmacache cache verify {url}`, then copy or pull the cache again "
        "(or re-create it: re-run the command that wrote it, with --overwrite)"
    )


class ShardFiles:
    """Byte-range reads of rows of one local sharded array (see the module docstring). With `complete` (the
    manifest says every shard is written), a missing shard file or a chunk marked never written is a CacheError;
    otherwise their rows read as zeros (zarr's fill value), as in an unfinished cache's pending shards."""

    def __init__(
        self, root: str, name: str, shape: tuple[int, ...], shard_items: int, itemsize: int, complete: bool = False
    ):
        self.root, self.name, self.complete = root, name, complete
        self.n_items, self.shard_items = shape[0], shard_items
        self.n_dims = len(shape)
        self.row_bytes = int(np.prod(shape[1:])) * itemsize
        self._index: dict[int, np.ndarray] = {}  # shard -> (shard_items, 2) uint64: read once per shard

    def file(self, shard: int) -> str:
        return chunk_path(self.root, self.name, (shard, *(0,) * (self.n_dims - 1)))

    def _broken(self, shard: int, what: str) -> CacheError:
        return CacheError(
            f"array `{self.name}`, shard {shard} ({self.file(shard)}): {what}; the file is corrupted: run "
            f"`dogmacache cache verify {self.root}`, then re-create or re-download the cache"
        )

    def index(self, shard: int, fd: int) -> np.ndarray:
        if shard not in self._index:
            n_bytes = self.shard_items * 16
            size = os.fstat(fd).st_size
            raw = os.pread(fd, n_bytes + _CRC_BYTES, size - n_bytes - _CRC_BYTES) if size >= n_bytes + 4 else b""
            if len(raw) != n_bytes + _CRC_BYTES:
                raise self._broken(shard, f"the file has {size} bytes, too few for its index")
            if google_crc32c.value(raw[:n_bytes]) != int.from_bytes(raw[n_bytes:], "little"):
                raise self._broken(shard, "the shard index fails its crc32c checksum")
            self._index[shard] = np.frombuffer(raw[:n_bytes], dtype="<u8").reshape(self.shard_items, 2)
        return self._index[shard]

    def read_into(self, out: np.ndarray, rows: np.ndarray, targets: np.ndarray) -> None:
        """out[targets[k]] = row rows[k], for `rows` sorted ascending; every row's checksum checked.

        Every row's byte range is announced to the kernel (`POSIX_FADV_WILLNEED`) before the first is read, so
        a cold batch's reads queue on the disk together instead of one after another."""
        plans: list[tuple[int, int, np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]] = []
        try:
            k = 0
            while k < rows.size:
                shard = int(rows[k]) // self.shard_items
                stop = int(np.searchsorted(rows, (shard + 1) * self.shard_items, side="left"))
                plan = self._plan(out, shard, rows[k:stop], targets[k:stop])
                if plan is not None:
                    plans.append(plan)
                k = stop
            if hasattr(os, "posix_fadvise"):
                for fd, _, offsets, runs, _, _ in plans:
                    for run in runs:
                        if run.size:
                            length = run.size * (self.row_bytes + _CRC_BYTES)
                            os.posix_fadvise(fd, int(offsets[run[0]]), length, os.POSIX_FADV_WILLNEED)
            for fd, shard, offsets, runs, shard_rows, shard_targets in plans:
                for run in runs:
                    self._read_run(fd, shard, out, run, offsets, shard_rows, shard_targets)
        finally:
            for plan in plans:
                os.close(plan[0])

    def _plan(self, out: np.ndarray, shard: int, rows: np.ndarray, targets: np.ndarray):
        """(fd, shard, chunk offsets, runs of back-to-back chunks, rows, targets) for one shard's rows; rows of
        a shard or chunk never written are filled with zeros (zarr's fill value) here, and give no plan, unless
        `complete`, where they are a CacheError."""
        try:
            fd = os.open(self.file(shard), os.O_RDONLY)
        except FileNotFoundError:
            if self.complete:
                raise missing_file(self.root, self.name, "shard", shard, self.file(shard)) from None
            out[targets] = 0
            return None
        try:
            index = self.index(shard, fd)
            local = rows - shard * self.shard_items
            offsets, sizes = index[local, 0], index[local, 1]
            empty = offsets == _EMPTY
            if empty.any():
                if self.complete:
                    raise self._broken(shard, f"the index marks row {int(rows[empty][0])} as never written")
                out[targets[empty]] = 0
            if np.any(sizes[~empty] != self.row_bytes + _CRC_BYTES):
                raise self._broken(shard, f"the index gives chunk sizes other than {self.row_bytes + _CRC_BYTES} bytes")
            todo = np.flatnonzero(~empty)
            # back-to-back chunks (a shard is written in row order) become one preadv
            breaks = np.flatnonzero(np.diff(offsets[todo].astype(np.int64)) != self.row_bytes + _CRC_BYTES) + 1
            return fd, shard, offsets, np.split(todo, breaks), rows, targets
        except BaseException:
            os.close(fd)
            raise

    def _read_run(self, fd, shard, out, run, offsets, rows, targets) -> None:
        """A run of back-to-back rows: small rows as one block, others straight into `out`, _MAX_IOV at a time."""
        if run.size == 0:
            return
        if self.row_bytes < _SMALL_ROW_BYTES and run.size > 1 and out.flags.c_contiguous:
            self._read_small_run(fd, shard, out, run, offsets, rows, targets)
            return
        for a in range(0, run.size, _MAX_IOV):
            self._read_iov(fd, shard, out, run[a : a + _MAX_IOV], offsets, rows, targets)

    def _read_iov(self, fd, shard, out, run, offsets, rows, targets) -> None:
        crcs = np.empty((run.size, _CRC_BYTES), dtype=np.uint8)
        row_bytes = [out[targets[k]].reshape(-1).view(np.uint8) for k in run]  # views into `out`, no copy
        buffers = [b for j, row in enumerate(row_bytes) for b in (row, crcs[j])]
        got = os.preadv(fd, buffers, int(offsets[run[0]]))
        if got != run.size * (self.row_bytes + _CRC_BYTES):
            raise self._broken(shard, f"rows {int(rows[run[0]])}..{int(rows[run[-1]])} lie past the end of the file")
        stored = crcs.view("<u4").reshape(-1)
        for j, k in enumerate(run):
            if google_crc32c.value(row_bytes[j]) != int(stored[j]):
                raise self._broken(shard, f"row {int(rows[k])} fails its crc32c checksum")

    def _read_small_run(self, fd, shard, out, run, offsets, rows, targets) -> None:
        """A run of small rows read as one block, each row's checksum taken from a slice of it and compared all at
        once, then the rows copied out in one assignment: per row, the views and the call of the general path cost
        more than the row itself (a whole shard of 8,192 rows of 64 bytes: 2.2 ms instead of 10.2)."""
        stride = self.row_bytes + _CRC_BYTES
        raw = os.pread(fd, run.size * stride, int(offsets[run[0]]))
        if len(raw) != run.size * stride:
            raise self._broken(shard, f"rows {int(rows[run[0]])}..{int(rows[run[-1]])} lie past the end of the file")
        block = np.frombuffer(raw, dtype=np.uint8).reshape(run.size, stride)
        value, n = google_crc32c.value, self.row_bytes
        computed = np.fromiter((value(raw[a : a + n]) for a in range(0, len(raw), stride)), np.uint32, run.size)
        stored = np.ascontiguousarray(block[:, n:]).view("<u4").reshape(-1)
        bad = np.flatnonzero(computed != stored)
        if bad.size:
            raise self._broken(shard, f"row {int(rows[run[bad[0]]])} fails its crc32c checksum")
        out.reshape(len(out), -1).view(np.uint8)[targets[run]] = block[:, :n]
