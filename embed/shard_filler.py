"""The shard writer: streamed batch outputs gathered into whole shards, each written by a background thread
(`CacheWriter.write_shard`) while the device computes the next."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from dogmacache.cache.writer import CacheWriter


class ShardFiller:
    """Collects streamed batch outputs into whole shards and writes each in a background thread
    (at most one write in flight, so memory stays at about two shards)."""

    def __init__(self, writer: CacheWriter, shards: list[tuple[int, int, int]]):
        self.writer, self.shards = writer, list(shards)
        self.outputs: list[np.ndarray] = []
        self.extras: dict[str, list[np.ndarray]] = {}
        self.n = 0
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.in_flight = None
        self.padded = 0

    def add(self, embedded: np.ndarray, extras: dict[str, np.ndarray]) -> None:
        self.outputs.append(embedded)
        for key, value in extras.items():
            self.extras.setdefault(key, []).append(value)
        self.n += len(embedded)
        while self.shards and self.n >= self.shards[0][2] - self.shards[0][1]:
            shard, a, b = self.shards.pop(0)
            size = b - a
            block = np.concatenate(self.outputs)
            ex = {k: np.concatenate(v) for k, v in self.extras.items()}
            self.outputs, self.extras = [block[size:]], {k: [v[size:]] for k, v in ex.items()}
            self.n -= size
            self.padded += int(np.count_nonzero(ex.get("n_padded", np.zeros(0))[:size]))
            self._wait()
            self.in_flight = self.pool.submit(
                self.writer.write_shard, shard, block[:size], **{k: v[:size] for k, v in ex.items()}
            )

    def _wait(self) -> None:
        if self.in_flight is not None:
            self.in_flight.result()  # re-raises a failed write here
            self.in_flight = None

    def close(self) -> None:
        self._wait()
        self.pool.shutdown()
        if self.shards:
            raise RuntimeError(f"{len(self.shards)} shards got no outputs; the adapter returned too few items")
