"""Bad input and faults: nothing half-written ever looks complete."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import zarr
from cache_writer_proc import rows_for
from conftest import TESTS, write_cache
from dogmacache.cache import CacheWriter, digest_strings, open_cache, verify_cache
from dogmacache.cache.layout import SHARD_SHA256
from dogmacache.cli import main
from dogmacache.errors import CacheError, IncompleteCacheError

PROC = [sys.executable, str(TESTS / "cache_writer_proc.py")]


def _complete(path) -> bool:
    return bool(zarr.open_group(path, mode="r").attrs["dogmacache"]["complete"])


def _new_writer(path, ids, item_shape=(2, 3), **kwargs):
    return CacheWriter.create(
        path, ids=ids, modality="dna", model="m", model_revision="r", layer=-1, pooling="none",
        item_shape=item_shape, input_digest=digest_strings(ids), shard_items=2, **kwargs,
    )  # fmt: skip


def test_resume_after_kill_gives_identical_arrays(tmp_path):
    n, per = 20, 2  # 10 shards
    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen([*PROC, str(killed), str(n), str(per), "all", "0.3"], stdout=subprocess.PIPE, text=True)
    lines = [proc.stdout.readline() for _ in range(3)]  # three shards are on disk
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lines == ["wrote 0\n", "wrote 1\n", "wrote 2\n"]
    assert not _complete(killed)
    with pytest.raises(IncompleteCacheError, match="not complete"):
        open_cache(killed)

    resumed = subprocess.run([*PROC, str(killed), str(n), str(per), "all"], capture_output=True, text=True, check=True)
    redone = [int(line.split()[1]) for line in resumed.stdout.splitlines()]
    assert 0 not in redone and 1 not in redone and 2 not in redone and redone[-1] == 9  # only unfinished shards
    fresh = tmp_path / "fresh.zarr"
    subprocess.run([*PROC, str(fresh), str(n), str(per), "all"], capture_output=True, check=True)

    a, b = open_cache(killed), open_cache(fresh)
    np.testing.assert_array_equal(a[:], b[:])
    np.testing.assert_array_equal(a.extra("n_padded")[:], b.extra("n_padded")[:])
    assert a.ids.tolist() == b.ids.tolist()
    assert a.manifest.shards == b.manifest.shards
    np.testing.assert_array_equal(a[:], rows_for(0, n).astype(np.float16))


def test_two_processes_writing_disjoint_shards_lose_nothing(tmp_path):
    n, per = 17, 2  # 9 shards, the last one short
    path = tmp_path / "c.zarr"
    # one process creates the cache, then two write the even and the odd shards at the same time
    subprocess.run([*PROC, str(path), str(n), str(per), "none", "--no-finalize"], check=True, capture_output=True)
    procs = [subprocess.Popen([*PROC, str(path), str(n), str(per), half, "0.05", "--no-finalize"],
                              stdout=subprocess.PIPE, text=True) for half in ("even", "odd")]  # fmt: skip
    outs = [p.communicate()[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(outs[0].splitlines()) == 5 and len(outs[1].splitlines()) == 4
    manifest = CacheWriter.open(path).finalize()
    assert manifest.complete and len(manifest.shards) == 9
    cache = open_cache(path)
    np.testing.assert_array_equal(cache[:], rows_for(0, n).astype(np.float16))
    np.testing.assert_array_equal(cache.extra("n_padded")[:], np.arange(n))
    assert verify_cache(path, progress=False).ok


def test_verify_finds_a_corrupted_shard(tmp_path, rng, capsys):
    data = rng.standard_normal((9, 4, 8)).astype(np.float32)
    write_cache(tmp_path / "c.zarr", data, shard_items=3)
    assert verify_cache(tmp_path / "c.zarr", progress=False).ok
    shard_file = tmp_path / "c.zarr" / "embeddings" / "c" / "1" / "0" / "0"
    raw = bytearray(shard_file.read_bytes())
    raw[100:108] = b"\xff" * 8  # inside the first item's values, not the shard index
    shard_file.write_bytes(bytes(raw))
    report = verify_cache(tmp_path / "c.zarr", progress=False)
    assert not report.ok and report.checked == 3 and len(report.problems) == 1
    assert report.problems[0].startswith("shard 1 ")
    assert main(["cache", "verify", str(tmp_path / "c.zarr")]) == 1
    assert "BROKEN shard 1 " in capsys.readouterr().err


def test_nan_rows_are_refused_and_nothing_is_complete(tmp_path):
    writer = _new_writer(tmp_path / "c.zarr", ["a", "b", "c", "d"])
    good = np.ones((2, 2, 3), dtype=np.float32)
    writer.write_shard(0, good)
    bad = good.copy()
    bad[1, 0, 2] = np.nan
    with pytest.raises(CacheError, match=r"item 'd' \(row 3\) has 1 NaN/Inf"):
        writer.write_shard(1, bad)
    assert writer.pending_shards() == [1]  # the bad shard left no digest
    with pytest.raises(IncompleteCacheError, match="1 of 2 shards are not written"):
        writer.finalize()
    assert not _complete(tmp_path / "c.zarr")


def test_values_beyond_float16_are_refused(tmp_path):
    writer = _new_writer(tmp_path / "c.zarr", ["a", "b"])
    with pytest.raises(CacheError, match=r"item 'a' \(row 0\).*after the cast to float16.*store float32"):
        writer.write_shard(0, np.full((2, 2, 3), 1e6, dtype=np.float32))
    assert writer.pending_shards() == [0]


def test_duplicate_ids_are_refused(tmp_path):
    with pytest.raises(CacheError, match=r"ids are not unique \(1 repeated: 'b' x2\)"):
        _new_writer(tmp_path / "c.zarr", ["a", "b", "c", "b"])
    assert not (tmp_path / "c.zarr").exists()


def test_shape_that_differs_from_the_manifest_is_refused(tmp_path):
    writer = _new_writer(tmp_path / "c.zarr", ["a", "b", "c"])
    with pytest.raises(CacheError, match=r"takes embeddings of shape \(2, 2, 3\).*got \(2, 2, 4\)"):
        writer.write_shard(0, np.zeros((2, 2, 4), dtype=np.float32))
    with pytest.raises(CacheError, match=r"shard 5 does not exist"):
        writer.write_shard(5, np.zeros((2, 2, 3), dtype=np.float32))
    assert not _complete(tmp_path / "c.zarr")


def test_resume_refuses_other_content_and_skips_a_complete_cache(tmp_path, rng):
    data = rng.standard_normal((4, 2, 3)).astype(np.float32)
    write_cache(tmp_path / "c.zarr", data, ids=["a", "b", "c", "d"], shard_items=2)
    with pytest.raises(CacheError, match=r"other content \(.*n_items: 4 there, 3 now.*--overwrite"):
        _new_writer(tmp_path / "c.zarr", ["a", "b", "c"])
    same = CacheWriter.create(
        tmp_path / "c.zarr", ids=["a", "b", "c", "d"], modality="dna", model="test/model", model_revision="r1",
        layer=-1, pooling="none", item_shape=(2, 3), input_digest=digest_strings(["a", "b", "c", "d"]), shard_items=2,
    )  # fmt: skip
    assert same.manifest.complete and same.pending_shards() == []


def test_torn_digest_counts_as_unfinished(tmp_path):
    writer = _new_writer(tmp_path / "c.zarr", ["a", "b", "c", "d"])
    writer.write_shard(0, np.ones((2, 2, 3), dtype=np.float32))
    writer.write_shard(1, np.ones((2, 2, 3), dtype=np.float32))
    digest_file = tmp_path / "c.zarr" / SHARD_SHA256 / "c" / "1" / "0"
    digest_file.write_bytes(digest_file.read_bytes()[:5])  # a kill in the middle of the digest write
    assert _new_writer(tmp_path / "c.zarr", ["a", "b", "c", "d"]).pending_shards() == [1]


def test_not_a_cache_is_named(tmp_path):
    with pytest.raises(CacheError, match="does not exist"):
        open_cache(tmp_path / "missing.zarr")
    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    with pytest.raises(CacheError, match="without a 'dogmacache' manifest"):
        open_cache(tmp_path / "plain.zarr")
