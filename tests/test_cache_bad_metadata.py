"""A damaged zarr.json or manifest, and an index a cache does not take, are one-line errors, not tracebacks."""

import json
import re

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


def test_resuming_onto_a_member_zarr_json_that_does_not_parse_is_named(cache):
    path, _ = cache
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["dogmacache"]["complete"] = False  # an unfinished cache, taken up again
    (path / "zarr.json").write_text(json.dumps(meta))
    (path / "embeddings" / "zarr.json").write_text("{broken")
    spec = CacheSpec("dna", "test/model", "r1", -1, "none", (3, 4), "sha256:x", dtype="float32", shard_items=2)
    with pytest.raises(CacheError, match=r"c.zarr/embeddings/zarr.json is not valid JSON .*--overwrite"):
        CacheWriter.create(path, spec, ids=[f"id{i}" for i in range(6)])
    (path / "embeddings" / "zarr.json").unlink()  # gone, as an interrupted copy leaves it: the writer says so too
    with pytest.raises(CacheError, match=r"c.zarr/embeddings/zarr.json is missing .*--overwrite"):
        CacheWriter.create(path, spec, ids=[f"id{i}" for i in range(6)])


def test_a_member_zarr_json_naming_an_unknown_codec_is_not_called_invalid_json(cache):
    path, _ = cache
    meta = json.loads((path / "embeddings" / "zarr.json").read_text())
    meta["codecs"][0]["name"] = "nosuchcodec"
    (path / "embeddings" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(CacheError, match=r"embeddings/zarr.json cannot be read as zarr array metadata .*nosuchcodec"):
        open_cache(path)[0]


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        (None, "a text", r"manifest is str 'a text', not a mapping"),
        ("n_items", "6", r"manifest field 'n_items' holds '6', not a whole number"),
        ("item_shape", None, r"manifest field 'item_shape' holds None, not a list of sizes"),
        ("shards", None, r"manifest field 'shards' holds None, not a list of checksums"),
        ("item_shape", [3, "4"], r"manifest field 'item_shape' holds \[3, '4'\], not a list of whole numbers"),
        ("complete", "yes", r"manifest field 'complete' holds 'yes', not true or false"),
    ],
)
def test_a_manifest_field_of_the_wrong_type_is_named(cache, field, value, said):
    path, _ = cache
    meta = json.loads((path / "zarr.json").read_text())
    if field is None:
        meta["attributes"]["dogmacache"] = value
    else:
        meta["attributes"]["dogmacache"][field] = value
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(CacheError, match=said) as err:
        open_cache(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("{cache}/embeddings", r"is an array of a cache, not a cache; pass the cache's own folder"),
        ("foo://x.zarr", r"cannot read foo://x.zarr: Protocol not known"),
    ],
)
def test_a_url_that_is_no_cache_is_one_line(cache, url, said):
    path, _ = cache
    with pytest.raises(CacheError, match=said):
        open_cache(url.format(cache=path))


@pytest.mark.parametrize("repo", ["lab/my repo", "lab/x..y", "hf://datasets/lab/x", "lab"])
def test_a_repository_id_the_hub_would_refuse_is_one_line_before_anything_runs(repo):
    from dogmacache.cache.hub import check_repo_id

    with pytest.raises(CacheError, match=rf"repository {re.escape(repr(repo))} is not a Hub repository id"):
        check_repo_id(repo)
