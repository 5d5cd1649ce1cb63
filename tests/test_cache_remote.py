"""Reading a cache over HTTP from a local server, without downloading it whole."""

import numpy as np
import pytest
from conftest import RangeHandler, serve, write_cache
from dogmacache.cache import open_cache, verify_cache


def test_open_cache_over_http_reads_only_what_it_needs(tmp_path, rng):
    data = rng.standard_normal((40, 16, 32)).astype(np.float32)
    write_cache(tmp_path / "c.zarr", data, ids=[f"w{i}" for i in range(40)], shard_items=20)
    total = sum(p.stat().st_size for p in (tmp_path / "c.zarr").rglob("*") if p.is_file())
    with serve(tmp_path) as base:
        url = f"{base}/c.zarr"
        cache = open_cache(url)
        assert cache.manifest.n_items == 40 and RangeHandler.served < 20_000  # metadata only so far
        got = cache.get(["w3", "w31"], dtype=np.float32)
        np.testing.assert_array_equal(got, data[[3, 31]].astype(np.float16).astype(np.float32))
        assert RangeHandler.served < total / 3, (RangeHandler.served, total)
        assert verify_cache(url, progress=False).ok  # the full read happens only when asked for


def test_a_cache_url_that_cannot_be_reached_is_one_line():
    from dogmacache.cache import open_cache
    from dogmacache.errors import CacheError

    with pytest.raises(CacheError, match=r"cannot reach http://127\.0\.0\.1:9/x\.zarr \(.*\); check the network"):
        open_cache("http://127.0.0.1:9/x.zarr")  # nothing listens on the discard port
