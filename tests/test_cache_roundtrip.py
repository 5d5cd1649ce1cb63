"""Round trips through the writer and the readers (dogmacache's and plain zarr), both cache shapes."""

import numpy as np
import pytest
import zarr
from conftest import write_cache
from dogmacache.cache import MANIFEST_KEY, open_cache
from dogmacache.cache.layout import choose_shard_items, item_nbytes
from dogmacache.errors import CacheError


@pytest.mark.parametrize("shape", [(7, 5, 4), (7, 12)], ids=["per-position", "pooled"])
def test_round_trip_plain_zarr_and_open_cache(tmp_path, rng, shape):
    data = rng.standard_normal(shape).astype(np.float32)
    ids = [f"enh{i}" for i in range(shape[0])]
    manifest = write_cache(tmp_path / "c.zarr", data, ids=ids, shard_items=3)
    assert manifest.complete and manifest.n_shards == 3 and len(manifest.shards) == 3

    group = zarr.open_group(tmp_path / "c.zarr", mode="r")  # no dogmacache code
    assert group["embeddings"].shape == shape
    assert group["embeddings"].dtype == np.float16  # default storage
    assert group["embeddings"].chunks == (1, *shape[1:])  # one item per chunk
    np.testing.assert_array_equal(group["embeddings"][:], data.astype(np.float16))
    assert group["ids"][:].tolist() == ids
    meta = group.attrs[MANIFEST_KEY]
    for key in (
        "schema_version",
        "modality",
        "model",
        "model_revision",
        "layer",
        "pooling",
        "dtype",
        "n_items",
        "item_shape",
        "input_digest",
        "created_by",
        "complete",
        "shards",
        "config",
    ):
        assert key in meta, key
    assert meta["item_shape"] == list(shape[1:]) and meta["n_items"] == shape[0]

    cache = open_cache(tmp_path / "c.zarr")
    assert len(cache) == shape[0] and cache.item_shape == shape[1:]
    got = cache.get(["enh6", "enh0", "enh3", "enh0"], dtype=np.float32)
    np.testing.assert_array_equal(got, data[[6, 0, 3, 0]].astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(cache[2:5], data[2:5].astype(np.float16))
    np.testing.assert_array_equal(cache[4], data[4].astype(np.float16))
    assert cache.row_of("enh5") == 5


@pytest.mark.parametrize(
    ("dtype", "compression", "tolerance"),
    [
        ("float32", "none", 0.0),
        ("float32", "zstd", 0.0),
        ("bfloat16", "none", 8e-3),
        ("float16", "bitround", 5e-3),
    ],
)
def test_storage_dtypes_and_compression(tmp_path, rng, dtype, compression, tolerance):
    data = rng.standard_normal((5, 3, 8)).astype(np.float32)
    write_cache(tmp_path / "c.zarr", data, shard_items=2, dtype=dtype, compression=compression)
    cache = open_cache(tmp_path / "c.zarr")
    got = cache.read_rows(range(5), dtype=np.float32)
    rel = np.abs(got - data) / np.maximum(np.abs(data), 1e-3)
    assert got.shape == data.shape
    assert rel.max() <= tolerance
    if dtype == "bfloat16":  # plain zarr sees the bits as uint16, recorded in the array's attributes
        arr = zarr.open_group(tmp_path / "c.zarr", mode="r")["embeddings"]
        assert arr.dtype == np.uint16 and arr.attrs["storage_dtype"] == "bfloat16"


def test_extra_arrays_round_trip(tmp_path, rng):
    data = rng.standard_normal((4, 3, 2)).astype(np.float32)
    n_padded = np.array([0, 7, 0, 128], dtype=np.int32)
    mask = np.tril(np.ones((4, 3), dtype=bool))
    write_cache(tmp_path / "c.zarr", data, shard_items=3, extras={"n_padded": n_padded, "mask": mask})
    cache = open_cache(tmp_path / "c.zarr")
    np.testing.assert_array_equal(cache.extra("n_padded")[:], n_padded)
    np.testing.assert_array_equal(cache.extra("mask")[:], mask)
    with pytest.raises(CacheError, match="no extra array 'strand'"):
        cache.extra("strand")


def test_unknown_id_is_named(tmp_path, rng):
    write_cache(tmp_path / "c.zarr", rng.standard_normal((3, 4)).astype(np.float32))
    cache = open_cache(tmp_path / "c.zarr")
    with pytest.raises(CacheError, match=r"'nope'.*different inputs"):
        cache.get(["id0", "nope"])


def test_shard_sizes_respect_hub_limits():
    enformer_item = item_nbytes((896, 3072), "float16")
    assert enformer_item == 5_505_024
    per_shard = choose_shard_items(30_000, enformer_item)
    assert per_shard == (1 << 30) // enformer_item == 195  # ~1 GiB shard files
    assert choose_shard_items(10, 4) == 10  # small caches: one shard
    many = choose_shard_items(10_000_000, 2560)  # pooled ESM-2 650M rows: capped at 9,000 shards
    assert -(-10_000_000 // many) <= 9_000
    with pytest.raises(CacheError, match="split the input table"):
        choose_shard_items(10**9, enformer_item)


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [("float16", (11, 5, 4)), ("bfloat16", (11, 6)), ("float32", (11, 3, 2)), ("float16", (11, 256, 1024))],
)  # 13 rows = 6.8 MB: a huge-page buffer
def test_direct_shard_reads_match_plain_zarr(tmp_path, rng, dtype, shape):
    data = rng.standard_normal(shape).astype(np.float32)
    write_cache(tmp_path / "c.zarr", data, shard_items=4, dtype=dtype)  # last shard holds 3 of 4 rows
    cache = open_cache(tmp_path / "c.zarr")
    assert cache._direct is not None  # local and uncompressed: read by byte range
    plain = zarr.open_group(tmp_path / "c.zarr", mode="r")["embeddings"][:]
    rows = np.array([10, 0, 3, 4, 5, 10, 7, 1, 2, 9, 8, 6, 0])  # repeats, runs across shard boundaries
    got = cache.read_rows(rows)
    assert got.shape == (13, *shape[1:]) and got.flags.writeable
    np.testing.assert_array_equal(got.view(plain.dtype), plain[rows])
    np.testing.assert_array_equal(
        cache.read_rows(rows, dtype=np.float32),
        open_cache(tmp_path / "c.zarr").get([f"id{r}" for r in rows], dtype=np.float32),
    )


def test_compressed_cache_reads_through_zarr_and_names_a_broken_shard(tmp_path, rng):
    data = rng.standard_normal((6, 4, 8)).astype(np.float32)
    write_cache(tmp_path / "c.zarr", data, shard_items=3, compression="zstd")
    cache = open_cache(tmp_path / "c.zarr")
    assert cache._direct is None
    np.testing.assert_array_equal(cache.read_rows([5, 0, 2]), data[[5, 0, 2]].astype(np.float16))
    shard = tmp_path / "c.zarr" / "embeddings" / "c" / "1" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[5] ^= 0x40
    shard.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match=r"array `embeddings`, shard 1 \(.*embeddings/c/1/0/0\) cannot be read"):
        open_cache(tmp_path / "c.zarr").read_rows([0, 3])


def test_a_cache_opens_in_xarray_and_dask(tmp_path, rng):
    import dask.array as da
    import xarray as xr

    data = rng.standard_normal((5, 4, 3)).astype(np.float32)
    write_cache(
        tmp_path / "c.zarr",
        data,
        shard_items=2,
        extras={"n_padded": np.arange(5, dtype=np.int32), "mask": np.ones((5, 4), dtype=bool)},
    )
    ds = xr.open_zarr(tmp_path / "c.zarr", consolidated=False)
    assert ds["embeddings"].dims == ("item", "position", "feature") and ds["n_padded"].dims == ("item",)
    assert ds["mask"].dims[0] == "item" and ds.sizes["item"] == 5
    assert isinstance(ds["embeddings"].data, da.Array)  # lazy
    by_id = ds.set_xindex("ids") if "ids" in ds.coords else ds.set_coords("ids").set_xindex("ids")
    np.testing.assert_array_equal(by_id["embeddings"].sel(ids="id3").values, data[3].astype(np.float16))
    np.testing.assert_array_equal(
        da.from_zarr(str(tmp_path / "c.zarr"), component="embeddings")[1:3].compute(), data[1:3].astype(np.float16)
    )


def test_demo_caches_open_in_xarray_with_ids_as_the_item_coordinate(demo_run):
    import dask.array as da
    import xarray as xr

    for path in sorted((demo_run / "cache").glob("*.zarr")):
        cache = open_cache(path)
        ds = xr.open_zarr(path, consolidated=False).set_coords("ids").set_xindex("ids")
        assert ds["embeddings"].dims[0] == "item" and ds.sizes["item"] == len(cache)
        assert all(ds[name].dims[0] == "item" for name in cache.manifest.extra_arrays)
        first = str(cache.ids[1])
        np.testing.assert_array_equal(
            ds["embeddings"].sel(ids=first).values, cache.get([first])[0].view(ds["embeddings"].dtype)
        )
        lazy = da.from_zarr(str(path), component="embeddings")
        np.testing.assert_array_equal(lazy[:2].compute(), cache.read_rows([0, 1]).view(lazy.dtype))
    names = {p.name for p in (demo_run / "cache").glob("*.zarr")}
    assert {
        "dna-enformer-trunk.zarr",
        "protein-esm2.zarr",
        "gene-scgpt.zarr",
        "isoform-rna-nt.zarr",
    } <= names  # all opened
