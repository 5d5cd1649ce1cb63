"""The shard writer of `embed`: shards go to one writer thread in order; small ones queue (a resume or --reuse
may finish several per batch) while a shard as large as the queue's budget waits for the one before it; a failed
write is raised on the feeding thread. A stand-in writer whose writes wait for the test to let them go."""

import threading

import numpy as np
import pytest
from dogmacache.embed import shard_filler
from dogmacache.embed.shard_filler import ShardFiller


class SlowWriter:
    """Records the shards written, each write waiting until `go` is set; `fail` names a shard that raises."""

    def __init__(self, fail: int | None = None):
        self.go, self.written, self.fail = threading.Event(), [], fail
        self.started = threading.Semaphore(0)

    def write_shard(self, shard, block, checked=False, **extras):
        self.started.release()
        assert self.go.wait(10)
        if shard == self.fail:
            raise OSError(28, "No space left on device")
        self.written.append((shard, block.copy(), {k: v.copy() for k, v in extras.items()}))


def shards(n: int, size: int) -> list[tuple[int, int, int]]:
    return [(k, k * size, (k + 1) * size) for k in range(n)]


def feed(filler: ShardFiller, rows: np.ndarray) -> None:
    filler.add(rows, {"n": np.arange(len(rows), dtype=np.int32)})


def test_small_shards_queue_and_are_written_in_order():
    writer = SlowWriter()
    filler = ShardFiller(writer, shards(5, 2))
    rows = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    done = threading.Event()
    feeding = threading.Thread(target=lambda: (feed(filler, rows), done.set()))
    feeding.start()
    assert done.wait(10)  # five shards handed over while the first write still waits: none blocked the feeder
    assert writer.written == []
    writer.go.set()
    filler.close()
    feeding.join()
    assert [w[0] for w in writer.written] == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(np.concatenate([w[1] for w in writer.written]), rows)
    np.testing.assert_array_equal(np.concatenate([w[2]["n"] for w in writer.written]), np.arange(10))


def test_a_shard_the_size_of_the_budget_waits_for_the_one_before(monkeypatch):
    monkeypatch.setattr(shard_filler, "QUEUE_BYTES", 2 * 3 * 4)  # one shard of 2 rows x 3 float32
    writer = SlowWriter()
    filler = ShardFiller(writer, shards(3, 2))
    rows = np.ones((6, 3), dtype=np.float32)
    done = threading.Event()
    feeding = threading.Thread(target=lambda: (feed(filler, rows), done.set()))
    feeding.start()
    assert writer.started.acquire(timeout=10)  # shard 0 is being written
    assert not done.wait(0.3)  # shard 1 (with its extras, more than the budget beside shard 0) waits for it
    writer.go.set()
    assert done.wait(10)
    filler.close()
    feeding.join()
    assert [w[0] for w in writer.written] == [0, 1, 2]


def test_a_failed_write_is_raised_to_the_feeder():
    writer = SlowWriter(fail=1)
    writer.go.set()
    filler = ShardFiller(writer, shards(3, 2))
    with pytest.raises(OSError, match="No space left"):
        feed(filler, np.ones((6, 3), dtype=np.float32))
        filler.close()
    written = [w[0] for w in writer.written]
    assert written[0] == 0 and 1 not in written  # shard 2, queued behind it, is dropped unless already started
    assert filler.pool._shutdown  # settled: nothing more is taken
