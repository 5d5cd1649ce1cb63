"""The shard writer: streamed batch outputs gathered into whole shards, each written by a background thread
(`CacheWriter.write_shard`) while the device computes the next. With `--reuse`, a shard's rows that an earlier
cache holds are copied into it from there (`embed/reuse.py`) and only the others come from the stream.

Streamed rows are copied once, straight into the buffer of the shard they belong to (a full-size Enformer row is
5.5 MB: gathering a shard from a list of batches and cutting it out again cost two more copies per row on the
thread that feeds the device)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass

import numpy as np
from dogmacache.cache.shards import empty_rows
from dogmacache.cache.writer import CacheWriter

SETTLE_QUIET_S = 0.5  # an error or Ctrl-C waits this long for the shard writes in silence, then says so


@dataclass(frozen=True)
class ReusedRows:
    """Rows of one shard copied from sources: their offsets in the shard, and (source, row) of each."""

    offsets: np.ndarray  # (k,) sorted offsets within the shard
    source: np.ndarray  # (k,) index into the copier's sources
    row: np.ndarray  # (k,) row in that source


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT (Ctrl-C) has no effect inside the block, in the main thread; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@contextlib.contextmanager
def settled(fillers):
    """On an error or interrupt inside the block, every one of `fillers` settles (`ShardFiller.settle`) before the
    error goes on, so the caller lets its caches' locks go only once no shard is being written."""
    try:
        yield
    except BaseException:
        for filler in fillers:
            filler.settle()
        raise


QUEUE_BYTES = 64 << 20  # shards handed to the writer thread and not yet written: at most this much, or one shard


class ShardFiller:
    """Collects streamed batch outputs into whole shards and writes each, in order, in a background thread.
    Shards wait for it while they hold at most QUEUE_BYTES together, or one shard (memory then stays at about
    two shards: one written, one filled); small shards, of which a resume or `--reuse` may complete several per
    batch, are not written one wait at a time. `reused` maps a shard to the rows `copier` (a `reuse.RowCopier`)
    supplies; the stream then yields only that shard's other rows, in order."""

    def __init__(
        self,
        writer: CacheWriter,
        shards: list[tuple[int, int, int]],
        reused: dict[int, ReusedRows] | None = None,
        copier=None,
    ):
        self.writer, self.shards = writer, list(shards)
        self.reused, self.copier = reused or {}, copier
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.queued: deque[tuple[Future, int]] = deque()  # (write, bytes it holds), oldest first, until reaped
        self.queued_bytes = 0
        self._failed = False  # a write failed: the writer thread writes nothing after it
        self.padded = 0
        self.copied = 0
        self._buffer: tuple[np.ndarray, dict[str, np.ndarray]] | None = None  # the shard being filled
        self._filled = 0  # streamed rows in it
        self._targets: tuple[int, np.ndarray] | None = None
        try:
            self._submit_ready()  # shards wholly copied need nothing from the stream
        except BaseException:
            self.settle()
            raise

    def _streamed(self, shard: int, size: int) -> np.ndarray:
        """The shard's offsets that the stream fills, in order (kept for the shard being filled)."""
        if self._targets is None or self._targets[0] != shard:
            reused = self.reused.get(shard)
            offsets = np.arange(size)
            if reused is not None and len(reused.offsets):
                offsets = np.setdiff1d(offsets, reused.offsets)
            self._targets = (shard, offsets)
        return self._targets[1]

    def add(self, embedded: np.ndarray, extras: dict[str, np.ndarray]) -> None:
        """The next streamed rows, in row order (they may run on into the following shards)."""
        k = 0
        while k < len(embedded):
            if not self.shards:
                raise RuntimeError("the stream gave more rows than the pending shards hold")
            shard, a, b = self.shards[0]
            targets = self._streamed(shard, b - a)
            if self._buffer is None:
                self._buffer = (
                    empty_rows((b - a, *embedded.shape[1:]), embedded.dtype),  # huge pages: fewer faults to fill
                    {name: np.empty((b - a, *v.shape[1:]), dtype=v.dtype) for name, v in extras.items()},
                )
            take = min(len(targets) - self._filled, len(embedded) - k)
            at = targets[self._filled : self._filled + take]
            block, ex = self._buffer
            if take and at[-1] - at[0] == take - 1:  # a run of offsets: slices, no index arrays
                at = slice(int(at[0]), int(at[0]) + take)
            block[at] = embedded[k : k + take]
            for name, values in extras.items():
                ex[name][at] = values[k : k + take]
            self._filled += take
            k += take
            self._submit_ready()

    def _submit_ready(self) -> None:
        """Hand every shard whose streamed rows are all in (or that needs none) to the writer thread."""
        while self.shards:
            shard, a, b = self.shards[0]
            if self._filled < len(self._streamed(shard, b - a)):
                return
            self.shards.pop(0)
            block, ex, note = self._with_copied(shard, b - a, *(self._buffer or (None, {})))
            self._buffer, self._filled = None, 0
            self.padded += int(np.count_nonzero(ex.get("n_padded", np.zeros(0))))
            size = block.nbytes + sum(v.nbytes for v in ex.values())
            self._wait(QUEUE_BYTES - size)
            self.queued.append((self.pool.submit(self._write, shard, block, ex, note), size))
            self.queued_bytes += size

    def _write(self, shard: int, block: np.ndarray, ex: dict[str, np.ndarray], note: dict | None = None) -> None:
        """On the writer thread: one shard, unless a write before it failed (the run stops at that error, and this
        shard stays pending for the re-run, as it would had it not been handed over yet)."""
        if self._failed:
            return
        try:
            self.writer.write_shard(shard, block, checked=True, note=note, **ex)
        except BaseException:
            self._failed = True
            raise

    def _with_copied(
        self, shard: int, size: int, block: np.ndarray | None, ex: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray], dict | None]:
        """The whole shard: the copied rows put in at their offsets (the streamed ones are in already), and its
        note for the writer: the copied rows' records per source (`reuse.Source.record`), or None."""
        reused = self.reused.get(shard)
        if reused is None or not len(reused.offsets):
            return block, ex, None
        names = self.writer.manifest.extra_arrays
        records = []
        for s in np.unique(reused.source):
            pick = reused.source == s
            copied = self.copier.take(int(s), reused.row[pick])  # [embeddings, *extras in manifest order]
            if block is None:  # every row of the shard is copied
                block = np.empty((size, *copied[0].shape[1:]), dtype=copied[0].dtype)
                ex = {
                    name: np.empty((size, *c.shape[1:]), dtype=c.dtype)
                    for name, c in zip(names, copied[1:], strict=True)
                }
            block[reused.offsets[pick]] = copied[0]
            for name, values in zip(names, copied[1:], strict=True):
                ex[name][reused.offsets[pick]] = values
            records.append(self.copier.sources[int(s)].record(int(pick.sum())))
        self.copied += len(reused.offsets)
        return block, ex, {"reused": records}

    def _wait(self, room: int = -1) -> None:
        """Until the queued writes hold at most `room` bytes (none for a negative room); a failed write re-raises
        here, and a finished one is let go whatever the room."""
        while self.queued and (self.queued[0][0].done() or self.queued_bytes > room):
            write, size = self.queued[0]
            try:
                write.result()
            except BaseException:
                self.settle()  # the shards queued behind it are not written (`_write`): a re-run computes them
                raise
            self.queued.popleft()  # reaped only once done: the last one queued is the one to wait for
            self.queued_bytes -= size

    def settle(self) -> None:
        """On an error or interrupt, before the cache's lock goes: the shards handed over are written (at most
        QUEUE_BYTES, or one shard), none after a failed write (`_write`); each is whole or absent. Ctrl-C meanwhile
        does not cut the wait short, since the lock would go while a shard is still being written: the wait is on
        the last write's future (one writer thread, in order), with SIGINT ignored in the main thread until it is
        done (an interrupted `Thread.join` counts the thread as finished on Python 3.11). Ctrl-\\ or kill still
        stop the process at once; the lock is the kernel's, so the cache stays resumable."""
        last = self.queued[-1][0] if self.queued else None  # one writer thread, in order: when it is done, all are
        if last is not None and not last.done():
            with _sigint_ignored():
                if futures_wait([last], timeout=SETTLE_QUIET_S).not_done:  # said only where the wait is felt
                    print("waiting for the shards being written to finish (they stay whole)", file=sys.stderr)
                    futures_wait([last])
        self.pool.shutdown(wait=False)  # its thread is idle now

    def close(self) -> None:
        self._submit_ready()
        self._wait()  # all of them
        self.pool.shutdown()
        if self.shards:
            raise RuntimeError(f"{len(self.shards)} shards got no outputs; the adapter returned too few items")
