"""The cache bench at tiny size: the read-ratio measurement runs and reaches its table
(speed itself is `make bench`'s)."""

from dogmacache.bench.cache import bench_cache, cache_tables


def test_cache_bench_compares_reads_with_a_memmap_cold_and_warm(tmp_path):
    r = bench_cache(n_items=6, item_shape=(4, 8), shard_items=2, batch=2, workdir=str(tmp_path))
    for state in ("cold", "warm"):
        assert r[f"{state}_cache_MB_per_s"] > 0 and r[f"{state}_memmap_MB_per_s"] > 0 and r[f"{state}_ratio"] > 0
    assert r["checksum_share_of_warm_read"] > 0
    tables = cache_tables(r)
    assert len(tables) == 2 and "raw memmap" in str(tables[1])
    assert list(tmp_path.iterdir()) == []  # the temporary cache and memmap are removed


def test_a_ratio_just_below_its_target_is_judged_before_it_is_rounded(tmp_path):
    from dogmacache.bench.cache import TARGET_COLD

    r = bench_cache(n_items=6, item_shape=(4, 8), shard_items=2, batch=2, workdir=str(tmp_path))
    r["cold_ratio"] = TARGET_COLD * 0.9996  # prints as the target at 3 significant figures
    text = str(cache_tables(r)[1])
    assert "NO (" in text and f"{TARGET_COLD * 0.9996:.5g}" in text
