"""The writer lock: a token joins only a live owner's write, and every path to one cache shares its lock."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from dogmacache.cache import CacheSpec, CacheWriter
from dogmacache.cache.lock import lock_file
from dogmacache.errors import CacheError

SPEC = CacheSpec("protein", "m", "r", -1, "mean", (4,), "sha256:x", dtype="float32", shard_items=2)
IDS = [f"i{k}" for k in range(6)]

OWNER = """
import sys, time
from dogmacache.cache import CacheSpec, CacheWriter
spec = CacheSpec("protein", "m", "r", -1, "mean", (4,), "sha256:x", dtype="float32", shard_items=2)
w = CacheWriter.create(sys.argv[1], spec, ids=[f"i{k}" for k in range(6)])
print(w.lock_token, flush=True)
time.sleep(60)
"""


def _owner(path):
    """A process owning a write of `path`, and its lock token."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(OWNER), str(path)], stdout=subprocess.PIPE, text=True
    )
    return proc, proc.stdout.readline().strip()


def test_a_token_joins_a_live_owner_but_not_a_killed_one(tmp_path):
    path = tmp_path / "c.zarr"
    proc, token = _owner(path)
    try:
        helper = CacheWriter.open(path, lock_token=token)  # the owner runs: the helper writes with it
        assert helper.pending_shards() == [0, 1, 2]
        helper.close()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert token in lock_file(path).read_text()  # a kill -9 leaves the lock file, but not its flock
    with pytest.raises(CacheError, match=rf"process {proc.pid} .* no longer holds it.*re-run the command") as err:
        CacheWriter.open(path, lock_token=token)
    assert "\n" not in str(err.value)
    writer = CacheWriter.open(path)  # the write is free for a new owner
    assert writer.pending_shards() == [0, 1, 2]
    writer.close()
    # an owner on another machine: its flock may be invisible here (node-local locks), so its liveness is not asked
    lock_file(path).write_text("4242 elsewhere.example:4242-0123456789abcdef\n")
    helper = CacheWriter.open(path, lock_token="elsewhere.example:4242-0123456789abcdef")
    assert helper.pending_shards() == [0, 1, 2]
    helper.close()


def test_a_symlink_to_a_cache_being_written_shares_its_lock(tmp_path):
    real, alias = tmp_path / "real.zarr", tmp_path / "alias.zarr"
    proc, _ = _owner(real)
    try:
        alias.symlink_to(real)
        assert lock_file(alias) == lock_file(real)
        with pytest.raises(CacheError, match=rf"alias.zarr is being written by process {proc.pid}"):
            CacheWriter.create(alias, SPEC, ids=IDS)
        assert sorted(os.listdir(tmp_path)) == ["alias.zarr", "real.zarr", "real.zarr.lock"]
    finally:
        proc.kill()
        proc.wait()
