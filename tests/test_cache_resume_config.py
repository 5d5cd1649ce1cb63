"""A cache is resumed only under the config it was begun with, except the keys that do not change its numbers."""

import numpy as np
import pytest
from dogmacache.cache import CacheSpec, CacheWriter, open_cache
from dogmacache.errors import CacheError

IDS = [f"i{k}" for k in range(6)]


def _spec(**config):
    return CacheSpec("protein", "m", "r", -1, "mean", (4,), "sha256:x", dtype="float32", shard_items=2, config=config)


def _begin(path, **config):
    writer = CacheWriter.create(path, _spec(**config), ids=IDS)
    writer.write_shard(0, np.ones((2, 4), np.float32))
    writer.close()


def test_a_resume_under_another_config_is_refused_naming_the_setting(tmp_path):
    path = tmp_path / "c.zarr"
    _begin(path, precision="fp32", device="cuda")
    with pytest.raises(CacheError, match=r"precision: 'fp32' there, 'bf16' now\);.*--overwrite") as err:
        CacheWriter.create(path, _spec(precision="bf16", device="cuda"), ids=IDS)
    assert "\n" not in str(err.value)
    with pytest.raises(CacheError, match=r"window: None there, 196608 now"):  # a key the cache lacks
        CacheWriter.create(path, _spec(precision="fp32", device="cuda", window=196608), ids=IDS)
    writer = CacheWriter.create(path, _spec(precision="bf16", device="cuda"), ids=IDS, overwrite=True)
    assert writer.pending_shards() == [0, 1, 2] and writer.manifest.config["precision"] == "bf16"
    writer.close()


def test_a_finished_cache_of_another_config_is_not_returned_as_is(tmp_path):
    path = tmp_path / "c.zarr"
    writer = CacheWriter.create(path, _spec(precision="fp32"), ids=IDS)
    for shard in writer.pending_shards():
        writer.write_shard(shard, np.ones((2, 4), np.float32))
    writer.finalize()
    with pytest.raises(CacheError, match="other settings"):
        CacheWriter.create(path, _spec(precision="fp16"), ids=IDS)
    assert CacheWriter.create(path, _spec(precision="fp32"), ids=IDS).pending_shards() == []


def test_the_callers_rule_decides_which_settings_must_agree_and_stored_forms_compare_equal(tmp_path):
    path = tmp_path / "c.zarr"
    _begin(path, precision="fp32", max_tokens=1024, torch_threads=2, options={"window": (1, 2)})
    numbers = lambda config: {k: config.get(k) for k in ("precision", "options")}  # noqa: E731
    # the batch budget and threads are outside the caller's rule; a tuple equals the list the manifest stored
    writer = CacheWriter.create(
        path,
        _spec(precision="fp32", max_tokens=4096, torch_threads=8, options={"window": (1, 2)}),
        ids=IDS,
        settings_of=numbers,
    )
    assert writer.pending_shards() == [1, 2]
    writer.close()
    with pytest.raises(CacheError, match=r"precision: 'fp32' there, 'fp16' now"):
        CacheWriter.create(path, _spec(precision="fp16", options={"window": (1, 2)}), ids=IDS, settings_of=numbers)
    with pytest.raises(CacheError, match="max_tokens: 1024 there, 4096 now"):  # no rule: the whole config
        config = dict(precision="fp32", max_tokens=4096, torch_threads=2, options={"window": [1, 2]})
        CacheWriter.create(path, _spec(**config), ids=IDS)
    assert not open_cache(path, allow_partial=True).manifest.complete
