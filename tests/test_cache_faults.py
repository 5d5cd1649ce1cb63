"""Bad input and faults: nothing half-written ever looks complete."""

import errno
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import zarr
from cache_writer_proc import main as write_all
from cache_writer_proc import rows_for
from cache_writer_proc import spec as proc_spec
from conftest import TESTS, write_cache
from dogmacache.cache import CacheSpec, CacheWriter, digest_strings, open_cache, verify_cache
from dogmacache.cache.layout import SHARD_SHA256
from dogmacache.cli import main
from dogmacache.errors import CacheError, IncompleteCacheError

PROC = [sys.executable, str(TESTS / "cache_writer_proc.py")]


def _complete(path) -> bool:
    return bool(zarr.open_group(path, mode="r").attrs["dogmacache"]["complete"])


def _new_writer(path, ids, item_shape=(2, 3), **kwargs):
    spec = CacheSpec(
        modality="dna",
        model="m",
        model_revision="r",
        layer=-1,
        pooling="none",
        item_shape=item_shape,
        input_digest=digest_strings(ids),
        shard_items=2,
        **kwargs,
    )
    return CacheWriter.create(path, spec, ids=ids)


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
    write_all([str(fresh), str(n), str(per), "all"])  # uninterrupted, in this process

    a, b = open_cache(killed), open_cache(fresh)
    np.testing.assert_array_equal(a[:], b[:])
    np.testing.assert_array_equal(a.extra("n_padded")[:], b.extra("n_padded")[:])
    assert a.ids.tolist() == b.ids.tolist()
    assert a.manifest.shards == b.manifest.shards
    np.testing.assert_array_equal(a[:], rows_for(0, n).astype(np.float16))


def test_two_processes_writing_disjoint_shards_lose_nothing(tmp_path):
    n, per = 17, 2  # 9 shards, the last one short
    path = tmp_path / "c.zarr"
    # this process creates the cache and holds its lock; two processes it shares the lock with write the even
    # and the odd shards at the same time (as the dask fan-out does)
    ids = [f"item{r}" for r in range(n)]
    owner = CacheWriter.create(path, proc_spec(ids, per), ids=ids)
    procs = [
        subprocess.Popen(
            [*PROC, str(path), str(n), str(per), half, "0.05", "--no-finalize", "--join", owner.lock_token],
            stdout=subprocess.PIPE,
            text=True,
        )
        for half in ("even", "odd")
    ]
    outs = [p.communicate()[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(outs[0].splitlines()) == 5 and len(outs[1].splitlines()) == 4
    manifest = owner.finalize()
    assert manifest.complete and len(manifest.shards) == 9
    cache = open_cache(path)
    np.testing.assert_array_equal(cache[:], rows_for(0, n).astype(np.float16))
    np.testing.assert_array_equal(cache.extra("n_padded")[:], np.arange(n))
    assert verify_cache(path, progress=False).ok
    assert not (tmp_path / "c.zarr.lock").exists()  # finalize lets go of the lock


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    path = tmp_path / "c.zarr"
    proc = subprocess.Popen([*PROC, str(path), "20", "2", "all", "0.5"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "wrote 0\n"
        with pytest.raises(CacheError, match=rf"being written by process {proc.pid} \(lock .*c.zarr.lock\)") as err:
            ids = [f"item{r}" for r in range(20)]
            CacheWriter.create(path, proc_spec(ids, 2), ids=ids)
        assert "\n" not in str(err.value)
        with pytest.raises(CacheError, match=rf"process {proc.pid}"):
            CacheWriter.open(path)
        with pytest.raises(CacheError, match=rf"does not match the lock of process {proc.pid}"):
            CacheWriter.open(path, lock_token="12345-not-the-token")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    resumed = CacheWriter.open(path)  # a killed holder's lock is gone with it
    assert 0 < len(resumed.pending_shards()) < 10
    resumed.close()


@pytest.mark.parametrize(("code", "name"), [(errno.ENOSPC, "ENOSPC"), (errno.EROFS, "EROFS")])
def test_disk_full_or_read_only_is_one_line_saying_what_was_kept(tmp_path, monkeypatch, code, name):
    import zarr.storage._local as local_store
    from dogmacache.cache import shards as shard_files

    writer = _new_writer(tmp_path / "c.zarr", ["a", "b", "c", "d", "e", "f"])
    writer.write_shard(0, np.ones((2, 2, 3), dtype=np.float32))

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(local_store, "_put", refuse)  # zarr's writes
    monkeypatch.setattr(shard_files, "_write_file", refuse)  # the writer's own (uncompressed caches)
    with pytest.raises(
        CacheError,
        match=rf"shard 1 of .*c.zarr.*\({name}\).*1 of 3 shards are finished and kept.*"
        "re-run the same command",
    ) as err:
        writer.write_shard(1, np.ones((2, 2, 3), dtype=np.float32))
    assert "\n" not in str(err.value)
    monkeypatch.undo()
    assert writer.pending_shards() == [1, 2]
    writer.close()
    with pytest.raises(CacheError, match=rf"cannot create .*new.zarr.*\({name}\).*nothing was written"):
        monkeypatch.setattr(local_store, "_put", refuse)
        _new_writer(tmp_path / "new.zarr", ["a", "b"])


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
    ids = ["a", "b", "c", "d"]
    spec = CacheSpec(
        modality="dna",
        model="test/model",
        model_revision="r1",
        layer=-1,
        pooling="none",
        item_shape=(2, 3),
        input_digest=digest_strings(ids),
        shard_items=2,
    )
    same = CacheWriter.create(tmp_path / "c.zarr", spec, ids=ids)
    assert same.manifest.complete and same.pending_shards() == []


def test_torn_digest_counts_as_unfinished(tmp_path):
    writer = _new_writer(tmp_path / "c.zarr", ["a", "b", "c", "d"])
    writer.write_shard(0, np.ones((2, 2, 3), dtype=np.float32))
    writer.write_shard(1, np.ones((2, 2, 3), dtype=np.float32))
    writer.close()
    digest_file = tmp_path / "c.zarr" / SHARD_SHA256 / "c" / "1" / "0"
    digest_file.write_bytes(digest_file.read_bytes()[:5])  # a kill in the middle of the digest write
    assert _new_writer(tmp_path / "c.zarr", ["a", "b", "c", "d"]).pending_shards() == [1]


def test_not_a_cache_is_named(tmp_path):
    with pytest.raises(CacheError, match="does not exist"):
        open_cache(tmp_path / "missing.zarr")
    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    with pytest.raises(CacheError, match="without a 'dogmacache' manifest"):
        open_cache(tmp_path / "plain.zarr")


def _flip(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x40
    path.write_bytes(bytes(raw))


def test_flipped_byte_in_a_shard_fails_every_read_of_it(tmp_path, rng):
    data = rng.standard_normal((9, 4, 8)).astype(np.float32)
    write_cache(tmp_path / "c.zarr", data, shard_items=3)
    _flip(tmp_path / "c.zarr" / "embeddings" / "c" / "1" / "0" / "0", 10)  # inside row 3 (the first of shard 1)
    cache = open_cache(tmp_path / "c.zarr")
    with pytest.raises(CacheError, match=r"array `embeddings`, shard 1 \(.*embeddings/c/1/0/0\).*corrupted") as err:
        cache.read_rows([0, 3], dtype=np.float32)
    assert "\n" not in str(err.value)
    np.testing.assert_array_equal(cache.read_rows([0, 8, 4]), data[[0, 8, 4]].astype(np.float16))  # other rows fine
    with pytest.raises(Exception, match="checksum"):  # plain zarr checks the same checksum
        zarr.open_group(tmp_path / "c.zarr", mode="r")["embeddings"][3]


def test_a_flipped_byte_in_a_run_of_small_rows_names_its_row(tmp_path, rng, monkeypatch):
    """Back-to-back rows under 4 KiB are read as one block: the checksum that fails names the row it belongs to
    (also where the run is not the shard's first), and the other rows stay readable."""
    data = rng.standard_normal((9, 4, 8)).astype(np.float32)  # 64-byte float16 rows, each followed by its crc32c
    write_cache(tmp_path / "c.zarr", data, shard_items=5)
    _flip(tmp_path / "c.zarr" / "embeddings" / "c" / "0" / "0" / "0", 3 * (64 + 4) + 10)  # inside row 3
    cache = open_cache(tmp_path / "c.zarr")
    for rows in ([2, 3, 4], [0, 2, 3], [4, 3, 0, 7]):  # runs 2..4, then 2..3 after row 0 alone
        with pytest.raises(CacheError, match=r"array `embeddings`, shard 0 .*row 3 fails its crc32c") as err:
            cache.read_rows(rows)
        assert "\n" not in str(err.value)
    from dogmacache.cache.shards import ShardFiles

    blocks = []
    read_block = ShardFiles._read_small_run
    monkeypatch.setattr(
        ShardFiles, "_read_small_run", lambda self, *a: blocks.append(len(a[3])) or read_block(self, *a)
    )
    rows = [6, 1, 0, 8, 2, 4, 5, 1]  # unsorted, one repeated: returned in the order asked
    np.testing.assert_array_equal(cache.read_rows(rows), data[rows].astype(np.float16))
    assert blocks and max(blocks) >= 2  # read as blocks, not row by row


def test_flipped_byte_in_ids_or_a_shard_index_is_one_line_naming_array_and_shard(tmp_path, rng):
    data = rng.standard_normal((9, 4, 8)).astype(np.float32)
    write_cache(tmp_path / "c.zarr", data, shard_items=3)
    shard = tmp_path / "c.zarr" / "embeddings" / "c" / "2" / "0" / "0"
    _flip(shard, shard.stat().st_size - 10)  # the shard index sits at the end of the file
    with pytest.raises(CacheError, match=r"array `embeddings`, shard 2 .*index.*corrupted") as err:
        open_cache(tmp_path / "c.zarr").read_rows([7])
    assert "\n" not in str(err.value)
    _flip(tmp_path / "c.zarr" / "ids" / "c" / "0", 20)
    with pytest.raises(CacheError, match=r"array `ids`, chunk 0 \(.*ids/c/0\).*corrupted") as err:
        open_cache(tmp_path / "c.zarr").get(["id1"])
    assert "\n" not in str(err.value)


def test_verify_names_the_array_file_that_is_broken(tmp_path, rng):
    data = rng.standard_normal((6, 4, 8)).astype(np.float32)
    write_cache(tmp_path / "c.zarr", data, shard_items=3, extras={"n_padded": np.arange(6, dtype=np.int32)})
    _flip(tmp_path / "c.zarr" / "n_padded" / "c" / "1", 2)
    report = verify_cache(tmp_path / "c.zarr", progress=False)
    assert len(report.problems) == 1 and report.problems[0].startswith("shard 1 ")
    assert "n_padded/c/1" in report.problems[0] and "embeddings/" not in report.problems[0]


def test_flipped_byte_in_an_extra_or_the_shard_digests_is_one_line_naming_the_array(tmp_path, rng):
    data = rng.standard_normal((6, 4, 8)).astype(np.float32)
    write_cache(tmp_path / "c.zarr", data, shard_items=3, extras={"n_padded": np.arange(6, dtype=np.int32)})
    cache = open_cache(tmp_path / "c.zarr")
    np.testing.assert_array_equal(np.asarray(cache.extra("n_padded")), np.arange(6))
    assert cache.done_shards().tolist() == [True, True]
    _flip(tmp_path / "c.zarr" / "n_padded" / "c" / "1", 2)
    with pytest.raises(CacheError, match=r"array `n_padded`, chunk 1 \(.*n_padded/c/1\).*corrupted") as err:
        open_cache(tmp_path / "c.zarr").extra("n_padded")[:]
    assert "\n" not in str(err.value)
    np.testing.assert_array_equal(open_cache(tmp_path / "c.zarr").extra("n_padded")[:3], np.arange(3))  # chunk 0 fine
    digests = sorted((tmp_path / "c.zarr" / "shard_sha256" / "c").rglob("*"))
    _flip(next(p for p in digests if p.is_file()), 3)
    with pytest.raises(CacheError, match=r"array `shard_sha256`, .*corrupted") as err:
        open_cache(tmp_path / "c.zarr").done_shards()
    assert "\n" not in str(err.value)


def test_a_stop_while_a_new_cache_is_laid_out_leaves_nothing_a_rerun_cannot_take(tmp_path, monkeypatch):
    """The arrays and ids of a new cache are written before its manifest (a second for a million ids): built in a
    sibling folder and renamed into place, a stop there leaves no manifest-less group at the path, and the rerun
    clears the stopped attempt and creates the cache."""
    from conftest import interrupt_on_call

    ids = [f"i{k}" for k in range(6)]
    real = interrupt_on_call(monkeypatch, zarr.Group, "create_array", 2)  # Ctrl-C while the ids array is made
    with pytest.raises(KeyboardInterrupt):
        _new_writer(tmp_path / "c.zarr", ids)
    assert not (tmp_path / "c.zarr").exists()
    assert [p.name.startswith(".creating-c.zarr.") for p in tmp_path.iterdir() if p.is_dir()] == [True]
    monkeypatch.setattr(zarr.Group, "create_array", real)
    writer = _new_writer(tmp_path / "c.zarr", ids)  # the same command again
    assert writer.pending_shards() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["c.zarr"]  # the stopped attempt is gone
    for shard in writer.pending_shards():
        writer.write_shard(shard, np.ones((2, 2, 3), np.float32))
    assert writer.finalize().complete


def test_a_shard_write_a_kill_stopped_leaves_no_file_that_stays_or_is_published(tmp_path):
    """A kill during a shard write leaves its temporary `<file>.<hex>.partial` (a shard's size): the resume removes
    it, and publish neither counts nor uploads such files."""
    from dogmacache.cache.hub import NOT_UPLOADED, check_hub_limits

    ids = [f"i{k}" for k in range(4)]
    writer = _new_writer(tmp_path / "c.zarr", ids)
    writer.write_shard(0, np.ones((2, 2, 3), np.float32))
    shard_file = next(p for p in (tmp_path / "c.zarr" / "embeddings").rglob("*") if p.is_file())
    stray = shard_file.with_name(f"{shard_file.name}.0123abcd.partial")
    stray.write_bytes(b"x" * 1000)
    writer.close()  # the run stopped there
    resumed = _new_writer(tmp_path / "c.zarr", ids)  # the rerun
    assert not stray.exists() and resumed.pending_shards() == [1]
    resumed.write_shard(1, np.ones((2, 2, 3), np.float32))
    resumed.finalize()
    before = check_hub_limits(tmp_path)
    stray.write_bytes(b"x" * 1000)  # one left beside a complete cache (a kill of another writer)
    assert "*.partial" in NOT_UPLOADED and check_hub_limits(tmp_path) == before


def test_a_new_cache_clears_only_its_own_stopped_creations(tmp_path):
    ids = ["a", "b"]
    mine = tmp_path / ".creating-x.zarr.0123456789abcdef"
    other = tmp_path / ".creating-x.zarr.v2.0123456789abcdef"  # another cache's (x.zarr.v2), under its own lock
    for folder in (mine, other):
        folder.mkdir()
    _new_writer(tmp_path / "x.zarr", ids).close()
    assert not mine.exists() and other.exists()


def test_an_ordinary_folder_at_a_caches_path_says_what_to_do(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("x")
    with pytest.raises(CacheError, match=r"plain is a folder but not a cache .*pass --overwrite"):
        _new_writer(tmp_path / "plain", ["a", "b"])


def test_a_stop_while_overwrite_deletes_the_old_cache_leaves_none_that_claims_complete(tmp_path, monkeypatch, rng):
    """--overwrite renames the old cache aside in one step before deleting it: a Ctrl-C during the deletion leaves no
    cache at the path (the next create clears what is left), not a half-deleted one whose manifest says complete."""
    import shutil

    from conftest import interrupt_on_call
    from dogmacache.cache import writer as writer_module

    path = tmp_path / "c.zarr"
    write_cache(path, rng.standard_normal((6, 3)).astype(np.float32), shard_items=2)
    real = interrupt_on_call(monkeypatch, writer_module.shutil, "rmtree", 2)  # the 1st clears a stale aside name
    spec = CacheSpec("dna", "test/model", "r1", -1, "mean", (3,), digest_strings(list("abcdef")), shard_items=2)
    with pytest.raises(KeyboardInterrupt):
        CacheWriter.create(path, spec, ids=list("abcdef"), overwrite=True)
    monkeypatch.setattr(writer_module.shutil, "rmtree", real)
    assert not path.exists()
    with pytest.raises(CacheError, match="no cache at"):
        open_cache(path)
    data = np.full((6, 3), 7.0, np.float32)
    writer = CacheWriter.create(path, spec, ids=list("abcdef"))  # no --overwrite needed: nothing is there
    assert writer.pending_shards() == [0, 1, 2]
    for shard in writer.pending_shards():
        a, b = writer.manifest.shard_rows(shard)
        writer.write_shard(shard, data[a:b])
    writer.finalize()
    assert open_cache(path)[:].tolist() == data.tolist() and verify_cache(path, progress=False).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]  # the aside folder cleared
    shutil.rmtree(path)


def test_overwrite_through_a_link_is_one_line(tmp_path, rng):
    write_cache(tmp_path / "real.zarr", rng.standard_normal((4, 3)).astype(np.float32), shard_items=2)
    (tmp_path / "link.zarr").symlink_to(tmp_path / "real.zarr")
    spec = CacheSpec("dna", "test/model", "r1", -1, "mean", (3,), digest_strings(list("abcd")), shard_items=2)
    with pytest.raises(CacheError, match=r"link.zarr is a link to .*real.zarr; --overwrite replaces a cache folder"):
        CacheWriter.create(tmp_path / "link.zarr", spec, ids=list("abcd"), overwrite=True)
    assert open_cache(tmp_path / "real.zarr").manifest.complete


def test_an_explicit_shard_size_past_the_hub_limits_is_refused_before_anything_is_written(tmp_path):
    """`choose_shard_items` keeps a cache within MAX_SHARDS shards and the Hub's file size; a --shard-items given
    by hand is held to the same limits, in one line naming the bound, before the cache exists."""
    ids = [f"i{k}" for k in range(9_001)]
    small = CacheSpec("dna", "m", "r", -1, "mean", (4,), digest_strings(ids), shard_items=1)
    with pytest.raises(
        CacheError, match=r"--shard-items 1 cuts 9,001 items into 9,001 shards, over 9,000 .* at least 2"
    ):
        CacheWriter.create(tmp_path / "a.zarr", small, ids=ids)
    big = CacheSpec("dna", "m", "r", -1, "none", (1000, 1000), digest_strings(ids), dtype="float32", shard_items=6_000)
    with pytest.raises(CacheError, match=r"shard files of 24,000,000,000 bytes, over the Hub's .* at most 5,000"):
        CacheWriter.create(tmp_path / "b.zarr", big, ids=ids)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == []


def test_a_shard_whose_file_was_lost_after_its_checksum_is_written_again_not_called_complete(tmp_path, rng):
    """A machine that stops can keep a shard's checksum row while its file of rows never reached the disk: finalize
    finds the missing or empty file, clears that checksum and refuses; the same run again writes the shard."""
    data = rng.standard_normal((6, 3)).astype(np.float32)
    spec = CacheSpec("dna", "m", "r", -1, "mean", (3,), digest_strings(list("abcdef")), shard_items=2)
    writer = CacheWriter.create(tmp_path / "c.zarr", spec, ids=list("abcdef"))
    for shard in writer.pending_shards():
        a, b = writer.manifest.shard_rows(shard)
        writer.write_shard(shard, data[a:b])
    (tmp_path / "c.zarr" / "embeddings" / "c" / "1" / "0").write_bytes(b"")  # emptied by the crash
    with pytest.raises(IncompleteCacheError, match=r"1 shard\(s\) have a checksum but their file .*first: \[1\]"):
        writer.finalize()
    writer.close()
    again = CacheWriter.create(tmp_path / "c.zarr", spec, ids=list("abcdef"))
    assert again.pending_shards() == [1]
    again.write_shard(1, data[2:4])
    assert again.finalize().complete and open_cache(tmp_path / "c.zarr")[:].tolist() == data.astype(np.float16).tolist()
    assert verify_cache(tmp_path / "c.zarr", progress=False).ok


def test_a_stopped_overwrites_aside_folder_is_no_cache_to_publish_or_reuse(tmp_path, monkeypatch, rng):
    from conftest import interrupt_on_call
    from dogmacache.cache import hub
    from dogmacache.cache import writer as writer_module
    from dogmacache.embed import reuse

    write_cache(tmp_path / "x.zarr", rng.standard_normal((6, 3)).astype(np.float32), shard_items=2)
    interrupt_on_call(monkeypatch, writer_module.shutil, "rmtree", 2)
    spec = CacheSpec("dna", "test/model", "r1", -1, "mean", (3,), digest_strings(list("abcdef")), shard_items=2)
    with pytest.raises(KeyboardInterrupt):
        CacheWriter.create(tmp_path / "x.zarr", spec, ids=list("abcdef"), overwrite=True)
    assert [p.name.startswith(".creating-x.zarr.") for p in tmp_path.iterdir() if p.is_dir()] == [True]
    assert hub.find_caches(tmp_path) == [] and reuse.find_caches(str(tmp_path)) == []


def test_overwrite_onto_a_file_is_one_line_and_keeps_the_file(tmp_path):
    (tmp_path / "out.zarr").write_text("my notes")
    spec = CacheSpec("dna", "test/model", "r1", -1, "mean", (3,), digest_strings(list("ab")), shard_items=2)
    with pytest.raises(CacheError, match=r"out.zarr is a file, not a cache folder; .* remove the file"):
        CacheWriter.create(tmp_path / "out.zarr", spec, ids=list("ab"), overwrite=True)
    assert (tmp_path / "out.zarr").read_text() == "my notes" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("layer", [None, 2.0])
def test_a_manifest_value_no_reader_would_take_is_refused_before_anything_is_written(tmp_path, layer):
    spec = CacheSpec("dna", "test/model", "r1", layer, "mean", (3,), digest_strings(list("ab")), shard_items=2)
    with pytest.raises(CacheError, match=rf"manifest field 'layer' holds {layer!r}, not a layer number or name"):
        CacheWriter.create(tmp_path / "c.zarr", spec, ids=list("ab"))
    assert not (tmp_path / "c.zarr").exists()
