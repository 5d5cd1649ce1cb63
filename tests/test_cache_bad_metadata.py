"""A damaged zarr.json or manifest, and an index a cache does not take, are one-line errors, not tracebacks."""

import json

import numpy as np
import pytest
from conftest import write_cache
from dogmacache.cache import CacheSpec, CacheWriter, open_cache
from dogmacache.cache.hub import find_caches
from dogmacache.errors import CacheError


@pytest.fixture
def cache(tmp_path, rng):
    data = rng.standard_normal((6, 3, 4)).astype(np.float32)
    write_cache(tmp_path / "c.zarr", data, shard_items=2, dtype="float32")
    return tmp_path / "c.zarr", data


@pytest.mark.parametrize("member", ["", "embeddings/", "ids/"])
def test_a_zarr_json_that_does_not_parse_is_named(cache, member):
    path, _ = cache
    (path / f"{member}zarr.json").write_text("{broken")
    with pytest.raises(CacheError, match=rf"c.zarr/{member}zarr.json is not valid JSON .*pull the cache again") as err:
        assert open_cache(path).ids is None  # not reached
    assert "\n" not in str(err.value)


def test_find_caches_names_a_zarr_json_that_does_not_parse(cache):
    path, _ = cache
    (path / "zarr.json").write_text("{broken")
    with pytest.raises(CacheError, match=r"c.zarr/zarr.json is not valid JSON"):
        find_caches(path.parent)


def test_resuming_onto_a_zarr_json_that_does_not_parse_is_named(cache):
    path, _ = cache
    (path / "zarr.json").write_text("{broken")
    spec = CacheSpec("dna", "m", "r", -1, "none", (3, 4), "sha256:x", dtype="float32", shard_items=2)
    with pytest.raises(CacheError, match=r"c.zarr/zarr.json is not valid JSON .*--overwrite"):
        CacheWriter.create(path, spec, ids=[f"id{i}" for i in range(6)])


def test_a_manifest_missing_a_key_is_named(cache):
    path, _ = cache
    meta = json.loads((path / "zarr.json").read_text())
    del meta["attributes"]["dogmacache"]["item_shape"]
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(CacheError, match=r"manifest lacks keys \['item_shape'\]; it is damaged"):
        open_cache(path)


def test_a_tuple_index_picks_rows_then_indexes_within_them(cache):
    path, data = cache
    c = open_cache(path)
    np.testing.assert_array_equal(c[:, 0], data[:, 0])
    np.testing.assert_array_equal(c[[4, 1], 2, 1:3], data[[4, 1], 2, 1:3])
    np.testing.assert_array_equal(c[3, 1], data[3, 1])
    np.testing.assert_array_equal(c[..., 0], data[..., 0])
    mask = np.arange(6) % 2 == 1
    np.testing.assert_array_equal(c[mask], data[mask])


@pytest.mark.parametrize("key", [[0.5, 1.0], ["id1"], np.ones(3, dtype=bool)])
def test_an_index_that_is_not_rows_is_refused_in_one_line(cache, key):
    path, _ = cache
    with pytest.raises(CacheError, match=r"cannot index|boolean mask") as err:
        open_cache(path)[key]
    assert "\n" not in str(err.value)
