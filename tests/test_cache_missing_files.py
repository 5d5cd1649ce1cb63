"""A complete cache whose shard or chunk file is absent is refused with one line, never read as zeros."""

import os

import numpy as np
import pytest
from conftest import serve, write_cache
from dogmacache.cache import open_cache, verify_cache
from dogmacache.cache.shards import write_shard_file
from dogmacache.errors import CacheError


def _cache(tmp_path, rng, compression="none", extras=None):
    data = (rng.standard_normal((6, 4)) + 5).astype(np.float32)
    write_cache(tmp_path / "c.zarr", data, shard_items=2, dtype="float32", compression=compression, extras=extras)
    return tmp_path / "c.zarr", data


@pytest.mark.parametrize("compression", ["none", "zstd"])  # read from the shard files / through zarr
def test_a_missing_shard_file_of_a_complete_cache_is_an_error_not_zeros(tmp_path, rng, compression):
    path, data = _cache(tmp_path, rng, compression)
    os.remove(path / "embeddings" / "c" / "1" / "0")
    cache = open_cache(path)
    assert (cache._direct is not None) == (compression == "none")
    np.testing.assert_array_equal(cache[0:2], data[0:2])  # the shards that are there still read
    for key in (slice(0, 6), [5, 2], 3):
        with pytest.raises(CacheError, match=r"shard 1 .*c/1/0\) is missing.*cache verify") as err:
            cache[key]
        assert "\n" not in str(err.value) and str(path) in str(err.value)
    report = verify_cache(path, progress=False)
    assert not report.ok and "shard 1" in report.problems[0] and "is missing" in report.problems[0]


def test_a_chunk_marked_never_written_in_a_complete_cache_is_an_error(tmp_path, rng):
    path, data = _cache(tmp_path, rng)
    write_shard_file(str(path / "embeddings" / "c" / "1" / "0"), data[2:3], 2)  # row 3 left out of its shard
    cache = open_cache(path)
    np.testing.assert_array_equal(cache[2], data[2])
    with pytest.raises(CacheError, match="row 3 as never written"):
        cache[3]


def test_a_missing_extra_chunk_of_a_complete_cache_is_an_error(tmp_path, rng):
    n_padded = np.arange(6, dtype=np.int32) + 1
    path, _ = _cache(tmp_path, rng, extras={"n_padded": n_padded})
    os.remove(path / "n_padded" / "c" / "2")
    cache = open_cache(path)
    np.testing.assert_array_equal(cache.extra("n_padded")[0:4], n_padded[0:4])
    for read in (
        lambda: cache.read_extra("n_padded"),
        lambda: cache.extra("n_padded")[5],
        lambda: cache.shard_blocks(2),
    ):
        with pytest.raises(CacheError, match=r"`n_padded`, chunk 2 .* is missing"):
            read()


def test_a_missing_shard_file_is_an_error_over_http(tmp_path, rng):
    path, data = _cache(tmp_path, rng)
    os.remove(path / "embeddings" / "c" / "1" / "0")
    with serve(tmp_path) as base:
        cache = open_cache(f"{base}/c.zarr")
        np.testing.assert_array_equal(cache[[0, 1, 4]], data[[0, 1, 4]])
        with pytest.raises(CacheError, match=r"shard 1 .*/c.zarr/embeddings/c/1/0\) is missing"):
            cache[2]


def test_an_unfinished_cache_still_reads_its_pending_shards_as_zeros(tmp_path, rng):
    from dogmacache.cache import CacheSpec, CacheWriter

    spec = CacheSpec("protein", "m", "r", -1, "mean", (4,), "sha256:x", dtype="float32", shard_items=2)
    writer = CacheWriter.create(tmp_path / "p.zarr", spec, ids=[f"i{k}" for k in range(6)])
    writer.write_shard(0, np.ones((2, 4), np.float32))
    writer.close()
    cache = open_cache(tmp_path / "p.zarr", allow_partial=True)
    np.testing.assert_array_equal(cache[:], np.r_[np.ones((2, 4)), np.zeros((4, 4))])
