"""Reading rows of a local, uncompressed `embeddings` array straight from its shard files.

zarr's async pipeline costs ~7 ms per 5.5 MB item (docs/formats.md#zarr-read-cost), so training read a cache at
under half the speed of a memmap of the same bytes. A shard file is its inner chunks followed by an index;
with one item per inner chunk, encoded as little-endian bytes then a crc32c, each item is one byte range:
this reads each shard's index once (checking its crc32c), then reads every row with one `os.preadv` into
the caller's output buffer plus 4 bytes of checksum, and checks the checksum there (no extra copy).
Runs of rows whose chunks lie back to back are read with one call. Anything else (remote stores,
compression, another codec layout) goes through zarr, which checks the same checksums.

The output buffer comes from `empty_rows`: an anonymous mapping advised for transparent huge pages, so the
kernel's copy into it takes one page fault per 2 MiB instead of one per 4 KiB (warm reads of Enformer rows went
from ~5.2 to ~8.6 GB/s per `preadv` on the CI-class machine; where huge pages are off it is a plain mapping).

Index layout (zarr v3 sharding, `index_location: end`): per inner chunk (offset, nbytes) as little-endian
uint64, (2^64 - 1, 2^64 - 1) for a chunk never written, then a crc32c of those bytes.
"""

from __future__ import annotations

import mmap
import os
import sys

import google_crc32c
import numpy as np
import zarr
from dogmacache.errors import CacheError

_EMPTY = np.uint64(2**64 - 1)
_CRC_BYTES = 4
_MAX_IOV = 512  # (row, checksum) pairs per preadv, below every platform's IOV_MAX of 1024
_HUGE_MIN_BYTES = 4 << 20  # below this, numpy's own allocation


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


class ShardFiles:
    """Byte-range reads of rows of one local sharded array (see the module docstring)."""

    def __init__(self, root: str, name: str, shape: tuple[int, ...], shard_items: int, itemsize: int):
        self.root, self.name = root, name
        self.n_items, self.shard_items = shape[0], shard_items
        self.n_dims = len(shape)
        self.row_bytes = int(np.prod(shape[1:])) * itemsize
        self._index: dict[int, np.ndarray] = {}  # shard -> (shard_items, 2) uint64: read once per shard

    def file(self, shard: int) -> str:
        return os.path.join(self.root, self.name, "c", str(shard), *("0",) * (self.n_dims - 1))

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
                    for a in range(0, run.size, _MAX_IOV):
                        self._read_run(fd, shard, out, run[a : a + _MAX_IOV], offsets, shard_rows, shard_targets)
        finally:
            for plan in plans:
                os.close(plan[0])

    def _plan(self, out: np.ndarray, shard: int, rows: np.ndarray, targets: np.ndarray):
        """(fd, shard, chunk offsets, runs of back-to-back chunks, rows, targets) for one shard's rows; rows of
        a shard or chunk never written are filled with zeros (zarr's fill value) here, and give no plan."""
        try:
            fd = os.open(self.file(shard), os.O_RDONLY)
        except FileNotFoundError:
            out[targets] = 0
            return None
        try:
            index = self.index(shard, fd)
            local = rows - shard * self.shard_items
            offsets, sizes = index[local, 0], index[local, 1]
            empty = offsets == _EMPTY
            if empty.any():
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
        if run.size == 0:
            return
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
