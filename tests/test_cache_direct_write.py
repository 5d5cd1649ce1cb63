"""The writer's direct path (`cache/shards.py`: shard files laid out here, not through zarr's pipeline) writes
the same files, byte for byte, as zarr itself does for the same shards."""

import os
from pathlib import Path

import numpy as np
import pytest
import zarr
from dogmacache.cache import open_cache
from dogmacache.cache.layout import ExtraArray
from dogmacache.cache.shards import write_chunk_file, write_shard_file
from dogmacache.cache.spec import CacheSpec
from dogmacache.cache.writer import CacheWriter

EXTRAS = (
    ExtraArray("n_tokens", "int32", ()),
    ExtraArray("mask", "bool", (5,)),
    ExtraArray("item_sha256", "uint8", (32,)),
)


def _write(path: Path, data: np.ndarray, dtype: str, shard_items: int, direct: bool, extras) -> CacheWriter:
    n = len(data)
    spec = CacheSpec(
        modality="dna",
        model="m",
        model_revision="r",
        layer=-1,
        pooling="none" if data.ndim == 3 else "mean",
        item_shape=data.shape[1:],
        input_digest="x",
        dtype=dtype,
        shard_items=shard_items,
        extras=EXTRAS,
    )
    writer = CacheWriter.create(path, spec, ids=[f"i{k}" for k in range(n)])
    assert writer._direct  # an uncompressed cache takes the direct path unless told not to
    writer._direct = direct
    for shard in writer.pending_shards():
        a, b = writer.manifest.shard_rows(shard)
        writer.write_shard(shard, data[a:b], **{e.name: v[a:b] for e, v in zip(EXTRAS, extras, strict=True)})
    writer.finalize()
    return writer


def _files(root: Path) -> dict[str, bytes]:
    """Every file but the group's zarr.json (the manifest, with its creation time and the path's lock)."""
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    return {name: data for name, data in files.items() if name != "zarr.json"}


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("item_shape", [(6, 4), (9,)], ids=["per-position", "pooled"])
@pytest.mark.parametrize("interleaved", [True, False], ids=["small-rows", "large-rows"])
def test_direct_shard_files_equal_zarr_byte_for_byte(tmp_path, rng, dtype, item_shape, interleaved, monkeypatch):
    """Both layouts of a shard's rows in memory (small rows copied into one buffer with their checksums, large
    rows written from where they lie) give zarr's bytes."""
    if not interleaved:
        monkeypatch.setattr("dogmacache.cache.shards._INTERLEAVE_BELOW", 0)
    n = 11  # three shards of 4, the last one partial
    data = rng.standard_normal((n, *item_shape)).astype(np.float32)
    data[2] = 0.0  # an all-zero row is still written (write_empty_chunks)
    extras = [
        rng.integers(0, 100, n).astype(np.int32),
        rng.random((n, 5)) > 0.5,
        rng.integers(0, 256, (n, 32)).astype(np.uint8),
    ]
    _write(tmp_path / "zarr.zarr", data, dtype, 4, False, extras)
    _write(tmp_path / "direct.zarr", data, dtype, 4, True, extras)
    via_zarr, direct = _files(tmp_path / "zarr.zarr"), _files(tmp_path / "direct.zarr")
    assert sorted(direct) == sorted(via_zarr)
    differing = [name for name in via_zarr if via_zarr[name] != direct[name]]
    assert differing == []
    assert not any(name.endswith(".partial") for name in direct)
    cache = open_cache(tmp_path / "direct.zarr")  # and both readers take it back
    plain = zarr.open_group(tmp_path / "direct.zarr", mode="r")
    np.testing.assert_array_equal(cache[:].view(np.uint8), plain["embeddings"][:].view(np.uint8))
    np.testing.assert_array_equal(plain["mask"][:], extras[1])


def test_compressed_caches_still_go_through_zarr(tmp_path, rng):
    spec = CacheSpec(
        modality="dna", model="m", model_revision="r", layer=-1, pooling="mean", item_shape=(8,), input_digest="x",
        dtype="float32", compression="zstd", shard_items=4,
    )  # fmt: skip
    writer = CacheWriter.create(tmp_path / "z.zarr", spec, ids=["a", "b"])
    assert not writer._direct
    writer.write_shard(0, rng.standard_normal((2, 8)).astype(np.float32))
    writer.finalize()
    assert len(open_cache(tmp_path / "z.zarr")[:]) == 2


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path, monkeypatch):
    path = str(tmp_path / "e" / "c" / "0" / "0")
    write_shard_file(path, np.ones((2, 3), np.float32), 4)
    before = Path(path).read_bytes()

    def full_disk(fd, buffers):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "writev", full_disk)
    with pytest.raises(OSError):
        write_shard_file(path, np.zeros((2, 3), np.float32), 4)
    with pytest.raises(OSError):
        write_chunk_file(path, np.zeros((2, 3), np.float32), 4)
    assert Path(path).read_bytes() == before
    assert [p.name for p in Path(path).parent.iterdir()] == ["0"]


def test_short_writes_are_completed(tmp_path, monkeypatch):
    real = os.writev

    def one_byte_less(fd, buffers):  # the kernel may write less than asked; the rest must follow
        total = sum(len(memoryview(b).cast("B")) for b in buffers)
        joined = b"".join(bytes(memoryview(b).cast("B")) for b in buffers)
        return real(fd, [joined[: max(1, total - 1)]]) if total > 1 else real(fd, buffers)

    monkeypatch.setattr(os, "writev", one_byte_less)
    data = np.arange(24, dtype=np.float32).reshape(4, 6)
    write_shard_file(str(tmp_path / "s"), data, 4)
    monkeypatch.undo()
    write_shard_file(str(tmp_path / "t"), data, 4)
    assert (tmp_path / "s").read_bytes() == (tmp_path / "t").read_bytes()


def test_extras_read_straight_from_their_chunk_files_equal_zarrs_and_are_checked(tmp_path, rng):
    """`read_extra` and `shard_blocks` read a local cache's plain extra chunks themselves (zarr.json read as
    JSON, each chunk's crc32c checked): the same rows as zarr gives, and a flipped byte is a one-line error."""
    from dogmacache.errors import CacheError

    n = 11
    data = rng.standard_normal((n, 9)).astype(np.float32)
    extras = [
        rng.integers(0, 100, n).astype(np.int32),
        rng.random((n, 5)) > 0.5,
        rng.integers(0, 256, (n, 32)).astype(np.uint8),
    ]
    _write(tmp_path / "c", data, "float16", 4, True, extras)
    cache = open_cache(tmp_path / "c")
    for extra, values in zip(EXTRAS, extras, strict=True):
        assert cache._plain_shard(extra.name, 0) is not None  # the direct path, not zarr's
        assert np.array_equal(cache.read_extra(extra.name), values)
        assert np.array_equal(cache.read_extra(extra.name), np.asarray(cache.extra(extra.name)[:]))
    for shard in range(3):
        a, b = cache.manifest.shard_rows(shard)
        blocks = cache.shard_blocks(shard)
        assert [len(block) for block in blocks] == [b - a] * 4
        assert all(np.array_equal(x, v[a:b]) for x, v in zip(blocks[1:], extras, strict=True))
    chunk = tmp_path / "c" / "n_tokens" / "c" / "1"
    raw = bytearray(chunk.read_bytes())
    raw[3] ^= 1
    chunk.write_bytes(bytes(raw))
    fresh = open_cache(tmp_path / "c")
    with pytest.raises(CacheError, match=r"array `n_tokens`, chunk 1 .*crc32c") as raised:
        fresh.read_extra("n_tokens")
    assert "\n" not in str(raised.value)
    with pytest.raises(CacheError, match="crc32c"):
        fresh.shard_blocks(1)


def test_extras_of_other_types_are_read_through_zarr(tmp_path):
    """An extra whose zarr type is no plain number (zarr.json names fixed-length strings by a dict) is read by
    zarr, and the cache verifies."""
    from conftest import write_cache
    from dogmacache.cache import verify_cache
    from dogmacache.cache.shards import plain_layout

    names = np.array(["ab", "cd", "ef", "gh", "ij"]).astype("<U4")
    write_cache(tmp_path / "c", np.ones((5, 4), np.float32), shard_items=2, extras={"name": names})
    assert plain_layout(str(tmp_path / "c"), "name") is None
    assert list(open_cache(tmp_path / "c").read_extra("name")) == list(names)
    assert verify_cache(tmp_path / "c", progress=False).ok
