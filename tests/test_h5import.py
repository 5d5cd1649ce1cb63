"""`cache import-h5`: the CDT authors' HDF5 layout streamed into a cache, resumable, with clear errors."""

import os
import re

import h5py
import numpy as np
import pytest
import zarr
from conftest import interrupt_on_call
from dogmacache.cache import import_h5, open_cache
from dogmacache.cache.layout import SHARD_SHA256
from dogmacache.cli import main
from dogmacache.errors import InputError


def _cdt_h5(path, n=10, bins=6, width=8, seed=0):
    """`embeddings` (N, bins, width) float32 with `centers` and `chroms` beside it, as the CDT files have."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((n, bins, width)).astype(np.float32)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("embeddings", data=data, chunks=(1, bins, width))
        h5.create_dataset("centers", data=np.arange(n, dtype=np.int64) * 1000 + 5000)
        h5.create_dataset("chroms", data=np.array([b"chr1", b"chrX"] * (n // 2)))
        h5.create_dataset("names", data=np.array([f"ENH{i:03d}".encode() for i in range(n)]))
    return data


def test_import_builds_ids_from_chroms_and_centers(tmp_path):
    data = _cdt_h5(tmp_path / "e.h5")
    manifest, written = import_h5(
        tmp_path / "e.h5",
        tmp_path / "c.zarr",
        dataset="embeddings",
        modality="dna",
        model="EleutherAI/enformer-official-rough",
        shard_items=4,
        progress=False,
    )
    assert written == 3 and manifest.complete and manifest.pooling == "none" and manifest.item_shape == (6, 8)
    cache = open_cache(tmp_path / "c.zarr")
    assert cache.ids[:3].tolist() == ["chr1:5000", "chrX:6000", "chr1:7000"]
    np.testing.assert_array_equal(cache[:], data.astype(np.float16))
    assert manifest.config["dataset"] == "embeddings"


def test_import_with_ids_dataset_via_cli(tmp_path, capsys):
    data = _cdt_h5(tmp_path / "e.h5")
    args = [
        "cache",
        "import-h5",
        str(tmp_path / "e.h5"),
        str(tmp_path / "c.zarr"),
        "--dataset",
        "embeddings",
        "--ids",
        "names",
        "--modality",
        "dna",
        "--model",
        "enformer",
        "--dtype",
        "float32",
        "--shard-items",
        "3",
    ]
    assert main(args) == 0
    assert "wrote 4 of 4 shards" in capsys.readouterr().out
    group = zarr.open_group(tmp_path / "c.zarr", mode="r")
    assert group["ids"][:].tolist()[-1] == "ENH009"
    np.testing.assert_array_equal(group["embeddings"][:], data)
    assert main(args) == 0  # the same command on a complete cache does nothing and says so
    assert "already complete" in capsys.readouterr().out


def test_import_resumes_only_unfinished_shards(tmp_path):
    data = _cdt_h5(tmp_path / "e.h5", n=12)
    kwargs = dict(dataset="embeddings", modality="dna", model="enformer", shard_items=4, progress=False)
    import_h5(tmp_path / "e.h5", tmp_path / "c.zarr", **kwargs)
    # turn it back into an interrupted write: shard 2 unfinished, manifest not complete
    group = zarr.open_group(tmp_path / "c.zarr", mode="r+")
    meta = dict(group.attrs["dogmacache"])
    meta.update(complete=False, shards=[])
    group.attrs["dogmacache"] = meta
    group[SHARD_SHA256][2] = np.zeros(32, dtype=np.uint8)
    group["embeddings"][8:12] = np.zeros((4, 6, 8), dtype=np.float16)
    manifest, written = import_h5(tmp_path / "e.h5", tmp_path / "c.zarr", **kwargs)
    assert written == 1 and manifest.complete
    np.testing.assert_array_equal(open_cache(tmp_path / "c.zarr")[:], data.astype(np.float16))


def test_missing_dataset_is_named_with_what_exists(tmp_path):
    _cdt_h5(tmp_path / "e.h5")
    with pytest.raises(InputError, match=r"has no dataset 'emb'.*embeddings \(10, 6, 8\) float32.*--dataset"):
        import_h5(tmp_path / "e.h5", tmp_path / "c.zarr", dataset="emb", modality="dna", model="m")
    assert not (tmp_path / "c.zarr").exists()
    assert (
        main(
            [
                "cache",
                "import-h5",
                str(tmp_path / "e.h5"),
                str(tmp_path / "c.zarr"),
                "--dataset",
                "emb",
                "--modality",
                "dna",
                "--model",
                "m",
            ]
        )
        == 2
    )


def test_ids_cannot_be_guessed(tmp_path):
    with h5py.File(tmp_path / "e.h5", "w") as h5:
        h5.create_dataset("x", data=np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(InputError, match="neither an ids dataset nor `chroms` \\+ `centers`.*--ids NAME"):
        import_h5(tmp_path / "e.h5", tmp_path / "c.zarr", dataset="x", modality="protein", model="m", pooling="mean")
    with h5py.File(tmp_path / "e.h5", "a") as h5:
        h5.create_dataset("names", data=np.array([b"a", b"b", b"a"]))
    with pytest.raises(Exception, match=r"'a' x2"):
        import_h5(
            tmp_path / "e.h5",
            tmp_path / "c.zarr",
            dataset="x",
            ids="names",
            modality="protein",
            model="m",
            pooling="mean",
        )
    assert not (tmp_path / "c.zarr").exists()


def test_a_finite_value_beyond_float16_is_named_before_the_cast(tmp_path):
    data = _cdt_h5(tmp_path / "e.h5", n=6)
    with h5py.File(tmp_path / "e.h5", "a") as h5:
        h5["embeddings"][4, 2, 3] = 1e6
    with pytest.raises(
        InputError, match=r"row 4 \('chr1:9000'\) holds 1e\+06, beyond float16's range.*--dtype float32"
    ):
        import_h5(
            tmp_path / "e.h5",
            tmp_path / "c.zarr",
            dataset="embeddings",
            modality="dna",
            model="m",
            shard_items=2,
            progress=False,
        )
    manifest, _ = import_h5(
        tmp_path / "e.h5",
        tmp_path / "f32.zarr",
        dataset="embeddings",
        modality="dna",
        model="m",
        dtype="float32",
        progress=False,
    )
    assert open_cache(tmp_path / "f32.zarr")[4][2, 3] == 1e6 and data.shape == (6, 6, 8)
    with h5py.File(tmp_path / "e.h5", "a") as h5:
        h5["embeddings"][1, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"row 1 \('chrX:6000'\) holds NaN or Inf in .*e.h5:embeddings"):
        import_h5(
            tmp_path / "e.h5",
            tmp_path / "nan.zarr",
            dataset="embeddings",
            modality="dna",
            model="m",
            dtype="float32",
            progress=False,
        )


def test_pooling_that_contradicts_the_shape_is_refused(tmp_path):
    _cdt_h5(tmp_path / "e.h5", n=4)
    with pytest.raises(InputError, match=r"--pooling mean.*\(4, 6, 8\).*per-position.*--pooling none"):
        import_h5(
            tmp_path / "e.h5", tmp_path / "c.zarr", dataset="embeddings", modality="dna", model="m", pooling="mean"
        )
    with h5py.File(tmp_path / "p.h5", "w") as h5:
        h5.create_dataset("x", data=np.zeros((3, 4), dtype=np.float32))
        h5.create_dataset("names", data=np.array([b"a", b"b", b"c"]))
    with pytest.raises(InputError, match=r"--pooling none.*\(3, 4\).*pooled.*--pooling mean"):
        import_h5(
            tmp_path / "p.h5",
            tmp_path / "c.zarr",
            dataset="x",
            ids="names",
            modality="protein",
            model="m",
            pooling="none",
        )
    assert not (tmp_path / "c.zarr").exists()


@pytest.mark.parametrize("dedupe", ["keep-first", "suffix"])
def test_repeated_built_ids_are_deduplicated_as_asked(tmp_path, capsys, dedupe):
    data = _cdt_h5(tmp_path / "e.h5", n=6)
    with h5py.File(tmp_path / "e.h5", "a") as h5:  # rows 3 and 5 repeat row 1's (chrom, center), as in the merged file
        h5["centers"][3], h5["centers"][5] = 6000, 6000
        h5["chroms"][3], h5["chroms"][5] = b"chrX", b"chrX"
    base = [
        "cache",
        "import-h5",
        str(tmp_path / "e.h5"),
        str(tmp_path / "c.zarr"),
        "--dataset",
        "embeddings",
        "--modality",
        "dna",
        "--model",
        "m",
        "--shard-items",
        "2",
    ]
    assert main(base) == 2
    assert "--dedupe" in capsys.readouterr().err
    assert main([*base, "--dedupe", dedupe]) == 0
    out = capsys.readouterr().out
    cache = open_cache(tmp_path / "c.zarr")
    if dedupe == "keep-first":
        assert "1 repeated id (2 rows): kept the first row of each, dropped rows [3, 5]" in out
        assert cache.ids.tolist() == ["chr1:5000", "chrX:6000", "chr1:7000", "chr1:9000"]
        np.testing.assert_array_equal(cache[:], data[[0, 1, 2, 4]].astype(np.float16))
    else:
        assert "1 repeated id (2 rows): renamed rows [3, 5] to <id>#2, <id>#3" in out
        assert cache.ids.tolist()[3] == "chrX:6000#2" and cache.ids.tolist()[5] == "chrX:6000#3"
        np.testing.assert_array_equal(cache[:], data.astype(np.float16))
    assert cache.manifest.config["dedupe"] == {"mode": dedupe, "rows": [3, 5], "repeated_ids": 1}


def _interrupt_after_first_shard(monkeypatch):
    """Make the next import stop (as a Ctrl-C would) when it starts its second shard."""
    from dogmacache.cache.writer import CacheWriter

    interrupt_on_call(monkeypatch, CacheWriter, "write_shard", 2)


def test_a_resume_from_another_file_of_the_same_name_and_shape_is_refused(tmp_path, monkeypatch):
    from dogmacache.errors import CacheError

    src, dest = tmp_path / "e.h5", tmp_path / "c.zarr"
    kwargs = dict(dataset="embeddings", modality="dna", model="enformer", shard_items=4, progress=False)
    _cdt_h5(src, n=12, seed=0)
    stamp = src.stat()
    _interrupt_after_first_shard(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        import_h5(src, dest, **kwargs)
    monkeypatch.undo()
    other = _cdt_h5(src, n=12, seed=1)  # another file: same name, shape, size, ids and mtime
    os.utime(src, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert src.stat().st_size == stamp.st_size
    with pytest.raises(CacheError, match=r"holds a cache of other content \(input_digest: .*--overwrite") as err:
        import_h5(src, dest, **kwargs)
    assert "\n" not in str(err.value)
    manifest, written = import_h5(src, dest, overwrite=True, **kwargs)
    assert written == 3 and manifest.complete
    np.testing.assert_array_equal(open_cache(dest)[:], other.astype(np.float16))


def test_the_sampled_rows_span_the_dataset(tmp_path):
    from dogmacache.cache.h5import import sample_rows

    rows = sample_rows(1000)
    assert {0, 500, 999} <= set(rows.tolist()) and len(rows) > 3 and rows.max() < 1000
    assert sample_rows(1).tolist() == [0]


def test_a_touched_or_copied_source_of_the_same_bytes_resumes(tmp_path, monkeypatch):
    src, dest = tmp_path / "e.h5", tmp_path / "c.zarr"
    kwargs = dict(dataset="embeddings", modality="dna", model="enformer", shard_items=4, progress=False)
    data = _cdt_h5(src, n=12, seed=0)
    _interrupt_after_first_shard(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        import_h5(src, dest, **kwargs)
    monkeypatch.undo()
    os.utime(src, ns=(1, 2))  # a copy without -p, a touch, a download of the same bytes
    manifest, written = import_h5(src, dest, **kwargs)
    assert written == 2 and manifest.complete  # the first shard was kept
    np.testing.assert_array_equal(open_cache(dest)[:], data.astype(np.float16))


def test_ids_of_shape_n_by_1_are_read_per_row_and_fractional_centers_are_named(tmp_path):
    """An (N, 1) ids dataset is one id per row (not "[b'ENH000']"); a center that is no whole number is one line
    naming its row, where cutting it would give two windows one id."""
    _cdt_h5(tmp_path / "e.h5", n=4)
    with h5py.File(tmp_path / "e.h5", "a") as h5:
        h5.create_dataset("column", data=np.array([[f"ENH{i:03d}".encode()] for i in range(4)]))
    manifest, _ = import_h5(
        tmp_path / "e.h5",
        tmp_path / "c.zarr",
        dataset="embeddings",
        ids="column",
        modality="dna",
        model="m",
        progress=False,
    )
    assert open_cache(tmp_path / "c.zarr").ids.tolist() == ["ENH000", "ENH001", "ENH002", "ENH003"]
    with h5py.File(tmp_path / "e.h5", "a") as h5:
        del h5["centers"]
        h5.create_dataset("centers", data=np.array([5000.0, 5000.6, 7000.0, 8000.0]))
    with pytest.raises(InputError, match=r"dataset 'centers' row 1 is 5000.6, not a whole-number position"):
        import_h5(
            tmp_path / "e.h5", tmp_path / "d.zarr", dataset="embeddings", modality="dna", model="m", progress=False
        )
    with h5py.File(tmp_path / "e.h5", "a") as h5:
        h5["centers"][1] = np.inf
    with pytest.raises(InputError, match=r"dataset 'centers' row 1 is inf, not a whole-number position"):
        import_h5(
            tmp_path / "e.h5", tmp_path / "d.zarr", dataset="embeddings", modality="dna", model="m", progress=False
        )
    with h5py.File(tmp_path / "e.h5", "a") as h5:
        h5.create_dataset("wide", data=np.zeros((4, 2), dtype="S3"))
    with pytest.raises(InputError, match=r"dataset 'wide' has shape \(4, 2\); it must hold one value per row"):
        import_h5(
            tmp_path / "e.h5",
            tmp_path / "f.zarr",
            dataset="embeddings",
            ids="wide",
            modality="dna",
            model="m",
            progress=False,
        )


def _import(src, dest, **kwargs):
    return import_h5(src, dest, dataset="embeddings", modality="dna", model="m", progress=False, **kwargs)


def test_a_refused_import_removes_its_own_cache_and_only_empty_new_folders(tmp_path, monkeypatch):
    """A refused import into a new folder removed that whole folder, with any cache another run was writing there;
    now it removes DEST, its lock and the folders it created while they are empty."""
    from dogmacache.cache import h5import

    _cdt_h5(tmp_path / "e.h5", n=6)
    with h5py.File(tmp_path / "e.h5", "a") as h5:
        h5["embeddings"][3, 0, 0] = np.nan
    with pytest.raises(InputError, match="holds NaN or Inf"):
        _import(tmp_path / "e.h5", tmp_path / "new" / "deeper" / "a.zarr", shard_items=2)
    assert not (tmp_path / "new").exists()  # nothing else there: every folder it made is gone
    beside = tmp_path / "shared" / "deeper" / "other.zarr"  # another run's cache, begun while this one ran
    real = h5import._check_range

    def another_run_writes_beside(*args):
        (beside / "c").mkdir(parents=True, exist_ok=True)
        return real(*args)

    monkeypatch.setattr(h5import, "_check_range", another_run_writes_beside)
    with pytest.raises(InputError, match="holds NaN or Inf"):
        _import(tmp_path / "e.h5", tmp_path / "shared" / "deeper" / "a.zarr", shard_items=2)
    assert sorted(p.name for p in (tmp_path / "shared" / "deeper").iterdir()) == ["other.zarr"]
    assert (beside / "c").is_dir()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.zeros((0, 3, 4), np.float32), "has no rows"),
        (np.array([[b"ab", b"cd"]] * 4), "holds |S2 values; an embedding dataset holds real numbers"),
        (np.ones((4, 3), np.complex64), "holds complex64 values"),
    ],
)
def test_a_dataset_that_is_no_embedding_is_refused_before_anything_is_written(tmp_path, values, message):
    with h5py.File(tmp_path / "e.h5", "w") as h5:
        h5.create_dataset("embeddings", data=values)
        h5.create_dataset("names", data=np.array([f"x{i}".encode() for i in range(len(values))]))
    with pytest.raises(InputError, match=message.replace("|", r"\|")):
        _import(tmp_path / "e.h5", tmp_path / "c.zarr", ids="names", pooling="mean")
    assert not (tmp_path / "c.zarr").exists()


@pytest.mark.parametrize(("value", "dtype"), [(1e39, "float32"), (3.4e38, "bfloat16")])
def test_a_float64_value_beyond_the_storage_range_is_named(tmp_path, value, dtype):
    with h5py.File(tmp_path / "e.h5", "w") as h5:
        h5.create_dataset("embeddings", data=np.array([[1.0, 2.0], [value, 0.0]]))
        h5.create_dataset("names", data=np.array([b"a", b"b"]))
    with pytest.raises(InputError, match=rf"row 1 \('b'\) holds {re.escape(f'{value:g}')}, beyond {dtype}'s range"):
        _import(tmp_path / "e.h5", tmp_path / "c.zarr", ids="names", pooling="mean", dtype=dtype)


def test_float64_values_are_rounded_once_to_the_storage_dtype(tmp_path):
    """numpy rounds a float64 to float16 once; through float32 first, a value just above a halfway point (here
    1 + 2**-11 + 2**-30) would round down twice, to 1.0."""
    import ml_dtypes

    rng = np.random.default_rng(0)
    data = rng.standard_normal((200, 4, 6)) * 3
    data[0, 0, 0] = 1 + 2**-11 + 2**-30  # float16: through float32 it would round to 1.0
    data[0, 0, 1] = 1 + 2**-8 + 2**-40  # bfloat16: likewise
    with h5py.File(tmp_path / "e.h5", "w") as h5:
        h5.create_dataset("embeddings", data=data)
        h5.create_dataset("names", data=np.array([f"E{i}".encode() for i in range(200)]))
    for dtype in ("float16", "bfloat16", "float32"):
        out = tmp_path / f"{dtype}.zarr"
        import_h5(tmp_path / "e.h5", out, dataset="embeddings", ids="names", modality="dna", model="m", dtype=dtype)
        got = open_cache(out)[:].astype(np.float64)
        np.testing.assert_array_equal(
            got, _nearest(data, np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else dtype)
        )
    assert open_cache(tmp_path / "float16.zarr")[0, 0, 0] == np.float16(1.001)
    assert open_cache(tmp_path / "bfloat16.zarr")[0, 0, 1].astype(np.float64) == 1.0078125


def _nearest(x: np.ndarray, dtype) -> np.ndarray:
    """Each float64 of `x` rounded once to the nearest value of `dtype` (a float format of 16 or 32 bits), as
    float64: the nearest of the three values whose bits neighbour a first guess (ties, of measure zero here, aside)."""
    dtype = np.dtype(dtype)
    unsigned = {2: np.uint16, 4: np.uint32}[dtype.itemsize]
    guess = x.astype(dtype).view(unsigned).astype(np.int64)
    candidates = np.stack([guess - 1, guess, guess + 1]).astype(unsigned).view(dtype).astype(np.float64)
    return np.take_along_axis(candidates, np.abs(candidates - x).argmin(axis=0)[None], axis=0)[0]


def test_ids_that_are_not_utf8_are_one_line_naming_the_row(tmp_path):
    with h5py.File(tmp_path / "e.h5", "w") as h5:
        h5.create_dataset("embeddings", data=np.zeros((3, 4), np.float32))
        h5.create_dataset("names", data=np.array([b"a", b"\xffb", b"c"]))
    named = {"dataset": "embeddings", "ids": "names", "modality": "dna", "model": "m", "pooling": "mean"}
    with pytest.raises(InputError, match=r"dataset 'names' row 1: b'\\xffb' is not UTF-8 text"):
        import_h5(tmp_path / "e.h5", tmp_path / "c.zarr", **named)


def test_a_suffix_that_names_an_id_already_there_is_refused_naming_the_dedupe():
    from dogmacache.cache.h5import import dedupe_ids

    with pytest.raises(InputError, match=r"--dedupe suffix would rename a repeated id to 'a#2', which the file"):
        dedupe_ids(["a", "a", "a#2"], "suffix", "e.h5")
    assert dedupe_ids(["a", "a", "b"], "suffix", "e.h5")[0] == ["a", "a#2", "b"]
