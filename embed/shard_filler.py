"""The shard writer: streamed batch outputs gathered into whole shards, each written by a background thread
(`CacheWriter.write_shard`) while the device computes the next. With `--reuse`, a shard's rows that an earlier
cache holds are copied into it from there (`embed/reuse.py`) and only the others come from the stream."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from dogmacache.cache.writer import CacheWriter


@dataclass(frozen=True)
class ReusedRows:
    """Rows of one shard copied from sources: their offsets in the shard, and (source, row) of each."""

    offsets: np.ndarray  # (k,) sorted offsets within the shard
    source: np.ndarray  # (k,) index into the copier's sources
    row: np.ndarray  # (k,) row in that source


class ShardFiller:
    """Collects streamed batch outputs into whole shards and writes each in a background thread
    (at most one write in flight, so memory stays at about two shards). `reused` maps a shard to the rows
    `copier` (a `reuse.RowCopier`) supplies; the stream then yields only that shard's other rows, in order."""

    def __init__(
        self,
        writer: CacheWriter,
        shards: list[tuple[int, int, int]],
        reused: dict[int, ReusedRows] | None = None,
        copier=None,
    ):
        self.writer, self.shards = writer, list(shards)
        self.reused, self.copier = reused or {}, copier
        self.outputs: list[np.ndarray] = []
        self.extras: dict[str, list[np.ndarray]] = {}
        self.n = 0
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.in_flight = None
        self.padded = 0
        self.copied = 0
        self._flush()  # shards wholly copied need nothing from the stream

    def _computed(self, shard: int, size: int) -> int:
        return size - (len(self.reused[shard].offsets) if shard in self.reused else 0)

    def add(self, embedded: np.ndarray, extras: dict[str, np.ndarray]) -> None:
        self.outputs.append(embedded)
        for key, value in extras.items():
            self.extras.setdefault(key, []).append(value)
        self.n += len(embedded)
        self._flush()

    def _flush(self) -> None:
        while self.shards and self.n >= self._computed(self.shards[0][0], self.shards[0][2] - self.shards[0][1]):
            shard, a, b = self.shards.pop(0)
            need = self._computed(shard, b - a)
            if self.outputs:
                block = np.concatenate(self.outputs)
                ex = {k: np.concatenate(v) for k, v in self.extras.items()}
                self.outputs, self.extras = [block[need:]], {k: [v[need:]] for k, v in ex.items()}
                block, ex = block[:need], {k: v[:need] for k, v in ex.items()}
            else:
                block, ex = None, {}
            self.n -= need
            block, ex = self._with_copied(shard, b - a, block, ex)
            self.padded += int(np.count_nonzero(ex.get("n_padded", np.zeros(0))))
            self._wait()
            self.in_flight = self.pool.submit(self.writer.write_shard, shard, block, checked=True, **ex)

    def _with_copied(
        self, shard: int, size: int, block: np.ndarray | None, ex: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The whole shard: streamed rows at the offsets not reused, copied rows at the others."""
        reused = self.reused.get(shard)
        if reused is None or not len(reused.offsets):
            return block, ex
        names = self.writer.manifest.extra_arrays
        full: list[np.ndarray] | None = None
        for s in np.unique(reused.source):
            pick = reused.source == s
            copied = self.copier.take(int(s), reused.row[pick])  # [embeddings, *extras in manifest order]
            if full is None:
                full = [np.empty((size, *c.shape[1:]), dtype=c.dtype) for c in copied]
            for target, values in zip(full, copied, strict=True):
                target[reused.offsets[pick]] = values
        assert full is not None
        computed = np.setdiff1d(np.arange(size), reused.offsets)
        if len(computed):
            full[0][computed] = block
            for i, name in enumerate(names, start=1):
                full[i][computed] = ex[name]
        self.copied += len(reused.offsets)
        return full[0], dict(zip(names, full[1:], strict=True))

    def _wait(self) -> None:
        if self.in_flight is not None:
            self.in_flight.result()  # re-raises a failed write here
            self.in_flight = None

    def close(self) -> None:
        self._flush()
        self._wait()
        self.pool.shutdown()
        if self.shards:
            raise RuntimeError(f"{len(self.shards)} shards got no outputs; the adapter returned too few items")
