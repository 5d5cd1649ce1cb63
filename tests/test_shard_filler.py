"""The shard writer of `embed`: shards go to one writer thread in order; small ones queue (a resume or --reuse
may finish several per batch) up to the queue's budget, beyond which the feeder waits; a failed write is raised on
the feeding thread and nothing after it is written; settling (an error or Ctrl-C) writes what was handed over.
A stand-in writer whose writes wait for the test to let them go."""

import threading

import numpy as np
import pytest
from dogmacache.embed import shard_filler
from dogmacache.embed.shard_filler import ShardFiller

ROWS, WIDTH = 2, 3  # rows per shard, float32 values per row
SHARD_BYTES = ROWS * WIDTH * 4 + ROWS * 4  # the rows and their int32 extra


class SlowWriter:
    """Records the shards written, each write waiting until `go` is set; `fail` names a shard that raises."""

    def __init__(self, fail: int | None = None):
        self.go, self.written, self.fail = threading.Event(), [], fail
        self.started: list[int] = []

    def write_shard(self, shard, block, checked=False, note=None, **extras):
        self.started.append(shard)
        assert self.go.wait(10)
        if shard == self.fail:
            raise OSError(28, "No space left on device")
        self.written.append((shard, block.copy(), {k: v.copy() for k, v in extras.items()}))


@pytest.fixture
def slow():
    made = []

    def make(n_shards: int, fail: int | None = None) -> tuple[SlowWriter, ShardFiller]:
        writer = SlowWriter(fail)
        filler = ShardFiller(writer, [(k, k * ROWS, (k + 1) * ROWS) for k in range(n_shards)])
        made.append((writer, filler))
        return writer, filler

    yield make
    for writer, filler in made:  # a failed assertion leaves no write waiting
        writer.go.set()
        filler.settle()


def rows(n: int) -> np.ndarray:
    return np.arange(n * WIDTH, dtype=np.float32).reshape(n, WIDTH)


def feeding(filler: ShardFiller, block: np.ndarray) -> tuple[threading.Thread, threading.Event]:
    """`block` handed to the filler on another thread; the event is set once `add` returned."""
    done = threading.Event()

    def feed():
        filler.add(block, {"n": np.arange(len(block), dtype=np.int32)})
        done.set()

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread, done


def test_small_shards_queue_and_are_written_in_order(slow):
    writer, filler = slow(5)
    thread, done = feeding(filler, rows(10))
    assert done.wait(10)  # five shards handed over while the first write still waits: none blocked the feeder
    assert writer.written == []
    writer.go.set()
    filler.close()
    thread.join()
    assert [w[0] for w in writer.written] == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(np.concatenate([w[1] for w in writer.written]), rows(10))
    np.testing.assert_array_equal(np.concatenate([w[2]["n"] for w in writer.written]), np.arange(10))


@pytest.mark.parametrize("budget, handed_over", [(2 * SHARD_BYTES, 2), (SHARD_BYTES + SHARD_BYTES // 2, 1)])
def test_the_feeder_waits_once_the_queue_is_full(slow, monkeypatch, budget, handed_over):
    """Two shards fit a budget of two; with a budget of one and a half, the second waits for the first."""
    monkeypatch.setattr(shard_filler, "QUEUE_BYTES", budget)
    writer, filler = slow(3)
    thread, done = feeding(filler, rows(6))
    assert not done.wait(0.3)  # the third shard does not fit beside the first two, nor the second beside one
    assert len(filler.queued) == handed_over  # the oldest, waited for, among them
    assert writer.started == [0]
    writer.go.set()
    assert done.wait(10)
    filler.close()
    thread.join()
    assert [w[0] for w in writer.written] == [0, 1, 2]


def test_a_failed_write_is_raised_to_the_feeder_and_nothing_after_it_is_written(slow):
    writer, filler = slow(4, fail=1)
    writer.go.set()
    with pytest.raises(OSError, match="No space left"):
        filler.add(rows(8), {"n": np.arange(8, dtype=np.int32)})
        filler.close()
    assert [w[0] for w in writer.written] == [0]  # 2 and 3 were handed over behind 1, and are left for the re-run


def test_settling_writes_what_was_handed_over(slow):
    """On Ctrl-C the runner settles the filler before the cache's lock goes: the queued shards are written."""
    writer, filler = slow(4)
    thread, done = feeding(filler, rows(6))  # three of the four shards
    assert done.wait(10) and writer.written == []
    settled = threading.Thread(target=filler.settle, daemon=True)
    settled.start()
    writer.go.set()
    settled.join(10)
    assert not settled.is_alive() and [w[0] for w in writer.written] == [0, 1, 2]


def test_ctrl_c_while_settling_still_waits_for_the_writes(slow, capsys):
    """The lock goes once settling returns: a real SIGINT during the wait (on Python 3.11 an interrupted
    Thread.join counts the thread as finished) must not end it before the shards are written, and SIGINT works
    as before afterwards."""
    import os
    import signal
    import time

    handler = signal.getsignal(signal.SIGINT)
    writer, filler = slow(2)
    filler.add(rows(4), {"n": np.arange(4, dtype=np.int32)})  # both shards handed over, the first write waiting
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
    threading.Timer(0.6, writer.go.set).start()
    start = time.perf_counter()
    try:
        filler.settle()
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C ended settle() before the writes")
    assert time.perf_counter() - start >= 0.5 and [w[0] for w in writer.written] == [0, 1]
    assert "waiting for the shards being written to finish" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is handler
