"""Embed once, ever: per-item input digests in every cache, `--reuse` copying rows of earlier caches by digest
(byte-identical to a full embed, resumable after a crash mid-copy), and the fidelity receipt in the manifest.
Tiny Enformer and ESM-2 of the real architectures, inputs made here."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import interrupt_on_call
from dogmacache.cache import open_cache
from dogmacache.cache.layout import ITEM_SHA256
from dogmacache.cli import main
from dogmacache.embed import digest, reuse
from dogmacache.embed.adapters.enformer import write_tiny_enformer
from dogmacache.embed.fidelity import deviation
from dogmacache.embed.runner import EmbedConfig, run_embed
from dogmacache.embed.tiny import write_tiny_esm2
from dogmacache.errors import CacheError, InputError

LENGTH = 20_000


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reuse")
    rng = np.random.default_rng(0)
    (root / "g.fa").write_text(">chr1\n" + "".join(rng.choice(list("ACGT"), LENGTH)) + "\n")
    centers = rng.integers(1, LENGTH, 40)
    strands = rng.choice(["+", "-"], 40)
    old = pd.DataFrame({"id": [f"a{i}" for i in range(30)], "chrom": "chr1", "center": centers[:30]})
    old["strand"] = strands[:30]
    # 25 of the old windows under other ids and in another order, and 5 new ones
    new = pd.DataFrame(
        {"id": [f"b{i}" for i in range(30)], "chrom": "chr1", "center": np.r_[centers[5:30][::-1], centers[30:35]]}
    )
    new["strand"] = np.r_[strands[5:30][::-1], strands[30:35]]
    old.to_parquet(root / "old.parquet")
    new.to_parquet(root / "new.parquet")
    proteins = ["MKVLAAGIV", "MSTNPKPQRKTKRNTNRRPQDVKFPGG", "ACDEFGHIKLMNPQRSTVWY", "MKV", "MADEEKLPPGWEKRMSRSS"]
    pd.DataFrame({"id": [f"p{i}" for i in range(5)], "sequence": proteins}).to_parquet(root / "p_old.parquet")
    pd.DataFrame(
        {"id": [f"q{i}" for i in range(4)], "sequence": [proteins[3], "MKVW", proteins[0], proteins[2]]}
    ).to_parquet(root / "p_new.parquet")
    models = {"enformer": write_tiny_enformer(root / "enformer"), "esm2": write_tiny_esm2(root / "esm2")}
    return root, models


def config(inputs, table, out, model="enformer", **kwargs) -> EmbedConfig:
    root, models = inputs
    dna = model == "enformer"
    values = {
        "input": str(root / table),
        "modality": "dna" if dna else "protein",
        "model": model,
        "out": str(out),
        "model_path": str(models[model]),
        "genome": str(root / "g.fa") if dna else None,
        "device": "cpu",
        "num_workers": 0,
        "progress": False,
        "shard_items": 4 if dna else 2,
        **kwargs,
    }
    return EmbedConfig(**values)


def same_arrays(a: str, b: str) -> None:
    x, y = open_cache(a), open_cache(b)
    assert x.manifest.extra_arrays == y.manifest.extra_arrays
    assert x.manifest.shards == y.manifest.shards  # sha256 of every shard's decoded rows
    assert np.array_equal(x[:].view(np.uint8), y[:].view(np.uint8))
    for name in x.manifest.extra_arrays:
        assert np.array_equal(x.extra(name)[:], y.extra(name)[:]), name


@pytest.fixture(scope="module")
def old_cache(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("old") / "old"
    run_embed(config(inputs, "old.parquet", out))
    return out


@pytest.fixture(scope="module")
def full_new(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "full"
    run_embed(config(inputs, "new.parquet", out))
    return out


def test_every_cache_records_item_digests_of_what_the_model_saw(old_cache, full_new):
    old, new = open_cache(old_cache), open_cache(full_new)
    assert ITEM_SHA256 in old.manifest.extra_arrays
    old_d, new_d = np.asarray(old.extra(ITEM_SHA256)[:]), np.asarray(new.extra(ITEM_SHA256)[:])
    assert old_d.shape == (30, 32) and old_d.any(axis=1).all()
    # the same window under another id has the same digest; different windows differ
    assert np.array_equal(new_d[0], old_d[29]) and np.array_equal(new_d[24], old_d[5])
    assert len({bytes(d) for d in old_d}) == 30


def test_item_digest_covers_the_inputs_not_the_id():
    a = {"index": np.array([0, 1, 2], dtype=np.uint8), "n_padded": np.int32(0)}
    assert np.array_equal(digest.item_digest(a), digest.item_digest(dict(a)))
    assert not np.array_equal(digest.item_digest(a), digest.item_digest({**a, "index": np.array([0, 1, 3], np.uint8)}))
    assert not np.array_equal(digest.item_digest(a), digest.item_digest({**a, "index_rc": a["index"]}))
    assert np.array_equal(digest.item_digest(a), digest.item_digest({**a, "_sha256": b"x"}))


def test_the_item_digest_definition_is_fixed():
    """Caches hold these digests: they are sha256 over "name|dtype|shape|" and the bytes, names in order, scalars as
    shape (1,), whatever the memory layout of the arrays given."""
    import hashlib

    ids = np.arange(7, dtype=np.int64)[::-1]  # not contiguous
    item = {"ids": ids, "n_special": np.int32(2), "n_padded": np.int32(0), "grid": np.ones((2, 3), np.float32).T}
    h = hashlib.sha256()
    h.update(b"grid|<f4|(3, 2)|" + np.ones((3, 2), np.float32).tobytes())
    h.update(b"ids|<i8|(7,)|" + np.arange(7, dtype=np.int64)[::-1].copy().tobytes())
    h.update(b"n_padded|<i4|(1,)|" + np.int32(0).tobytes())
    h.update(b"n_special|<i4|(1,)|" + np.int32(2).tobytes())
    assert digest.item_digest(item).tobytes() == h.digest()
    assert digest.item_digest(item).tobytes() == h.digest()  # asked again: the same


def test_reuse_is_byte_identical_to_a_full_embed(inputs, old_cache, full_new, tmp_path, capsys):
    out = tmp_path / "reused"
    summary = run_embed(config(inputs, "new.parquet", out, reuse=(str(old_cache),)))
    assert summary["reused"] == 25 and summary["embedded"] == 5
    assert "25 rows reused from old (25)" in capsys.readouterr().out
    same_arrays(str(out), str(full_new))
    manifest = open_cache(out).manifest
    assert [r["name"] for r in manifest.reused] == ["old"] and manifest.reused[0]["rows"] == 25
    assert str(tmp_path) not in str(manifest.to_dict())  # sources by name and digest, no local path
    source = open_cache(old_cache).manifest.fidelity  # the copied rows' receipt is their source's, kept beside
    assert source["items"] > 0 and manifest.reused[0]["fidelity"] == source
    assert manifest.fidelity["sampled_from"] == "all 30 rows"  # 5 embedded: fewer than the 16 to draw
    assert open_cache(full_new).manifest.fidelity["sampled_from"] == "rows embedded by this run (30 of 30)"
    from dogmacache.cache.hub import FoundCache, dataset_card
    from dogmacache.cache.manifest import describe_fidelity
    from dogmacache.cli import main

    capsys.readouterr()
    assert main(["cache", "info", str(out)]) == 0
    said = f"25 rows from old ({manifest.reused[0]['shards_digest']}); its fidelity: {describe_fidelity(source)}"
    assert said in capsys.readouterr().out  # the copied rows' receipt, where the README says it is
    card = dataset_card("lab/x", [FoundCache("r", manifest)])
    assert f"- reused: {said}" in card


def test_reuse_of_bfloat16_rows_is_byte_identical(inputs, tmp_path):
    """bfloat16 rows (stored as uint16 bits, read as ml_dtypes' bfloat16) are copied and checked as stored."""
    kw = {"dtype": "bfloat16", "shard_items": 3}
    run_embed(config(inputs, "old.parquet", tmp_path / "old", **kw))
    run_embed(config(inputs, "new.parquet", tmp_path / "full", **kw))
    summary = run_embed(config(inputs, "new.parquet", tmp_path / "reused", reuse=(str(tmp_path / "old"),), **kw))
    assert summary["reused"] == 25
    same_arrays(str(tmp_path / "reused"), str(tmp_path / "full"))


def copies_stop_at_the_third(monkeypatch):
    """`RowCopier.take` raising KeyboardInterrupt on its third call (a Ctrl-C mid-copy); returns the real one, to
    put back before the resume."""
    return interrupt_on_call(monkeypatch, reuse.RowCopier, "take", 3)


def test_reuse_resumes_after_a_crash_during_the_copy(inputs, old_cache, full_new, tmp_path, monkeypatch):
    out = tmp_path / "crashed"
    take = copies_stop_at_the_third(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_embed(config(inputs, "new.parquet", out, reuse=(str(old_cache),)))
    assert not open_cache(out, allow_partial=True).manifest.complete
    monkeypatch.setattr(reuse.RowCopier, "take", take)
    summary = run_embed(config(inputs, "new.parquet", out, reuse=(str(old_cache),)))
    assert 0 < summary["items"] < 30  # only the shards left were written
    same_arrays(str(out), str(full_new))
    # the rows the first run wrote are measured too: drawn from all rows of a resumed cache
    manifest = open_cache(out).manifest
    assert manifest.fidelity["sampled_from"] == "all 30 rows (a resumed cache)"
    assert [(r["name"], r["rows"]) for r in manifest.reused] == [("old", 25)]  # both runs' copies counted
    assert not (out / "shard_notes.partial").exists()  # summed into the manifest, then let go


def test_a_copy_resumed_without_reuse_still_names_what_was_copied(inputs, old_cache, full_new, tmp_path, monkeypatch):
    out = tmp_path / "crashed"
    take = copies_stop_at_the_third(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_embed(config(inputs, "new.parquet", out, reuse=(str(old_cache),)))
    monkeypatch.setattr(reuse.RowCopier, "take", take)
    noted = sorted(p.name for p in (out / "shard_notes.partial").iterdir())
    assert noted and all(name.endswith(".json") for name in noted)  # the shards written, each with its copies
    run_embed(config(inputs, "new.parquet", out))  # the rest embedded, nothing copied now
    same_arrays(str(out), str(full_new))
    (record,) = open_cache(out).manifest.reused
    assert record["name"] == "old" and 0 < record["rows"] < 25


def test_a_layers_run_finishing_a_reused_cache_keeps_its_record(inputs, old_cache, tmp_path, monkeypatch):
    """A `--layer` run with --reuse stopped in its copies, finished by `--layers` (which takes no --reuse): the
    rows the first run copied are still in the manifest's reused record (every finalize sums the notes)."""
    root, models = inputs
    argv = ["embed", "--input", str(root / "new.parquet"), "--modality", "dna", "--model", "enformer"]
    argv += ["--model-path", str(models["enformer"]), "--genome", str(root / "g.fa"), "--shard-items", "4"]
    argv += ["--num-workers", "0", "--no-progress"]
    take = copies_stop_at_the_third(monkeypatch)
    out = tmp_path / "x"
    assert main([*argv, "--layer", "trunk", "--out", str(out / "layer_trunk"), "--reuse", str(old_cache)]) == 130
    monkeypatch.setattr(reuse.RowCopier, "take", take)
    assert main([*argv, "--layers", "trunk", "--out", str(out)]) == 0
    (record,) = open_cache(out / "layer_trunk").manifest.reused
    assert record["name"] == "old" and 0 < record["rows"] < 25


def test_reuse_resumes_after_kill_9(inputs, old_cache, full_new, tmp_path):
    out = tmp_path / "killed"
    code = (
        "import os, signal, sys\n"
        "from dogmacache.embed import reuse\n"
        "from dogmacache.embed.runner import EmbedConfig, run_embed\n"
        "take, n = reuse.RowCopier.take, [0]\n"
        "def take_then_die(self, s, rows):\n"
        "    n[0] += 1\n"
        "    if n[0] == 4:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return take(self, s, rows)\n"
        "reuse.RowCopier.take = take_then_die\n"
        f"run_embed(EmbedConfig(**{config(inputs, 'new.parquet', out, reuse=(str(old_cache),)).__dict__!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert not open_cache(out, allow_partial=True).manifest.complete
    assert main(["embed", *cli_args(inputs, out), "--reuse", str(old_cache)]) == 0
    same_arrays(str(out), str(full_new))


def cli_args(inputs, out):
    root, models = inputs
    flags = {
        "--input": root / "new.parquet",
        "--modality": "dna",
        "--model": "enformer",
        "--model-path": models["enformer"],
        "--genome": root / "g.fa",
        "--out": out,
        "--device": "cpu",
        "--num-workers": 0,
        "--shard-items": 4,
    }
    return [*(str(x) for pair in flags.items() for x in pair), "--no-progress"]


def test_reuse_skips_a_cache_of_other_settings(inputs, old_cache, tmp_path, capsys):
    summary = run_embed(config(inputs, "new.parquet", tmp_path / "f32", dtype="float32", reuse=(str(old_cache),)))
    assert summary["reused"] == 0 and summary["embedded"] == 30
    assert "not using old: dtype is 'float16' there, 'float32' here" in capsys.readouterr().out


def test_reuse_of_a_folder_of_caches_and_of_proteins(inputs, tmp_path):
    folder = tmp_path / "caches"
    run_embed(config(inputs, "p_old.parquet", folder / "p_old", model="esm2"))
    full = tmp_path / "full"
    run_embed(config(inputs, "p_new.parquet", full, model="esm2"))
    out = tmp_path / "reused"
    summary = run_embed(config(inputs, "p_new.parquet", out, model="esm2", reuse=(str(folder),)))
    assert summary["reused"] == 3 and summary["embedded"] == 1
    same_arrays(str(out), str(full))


def test_each_wanted_row_comes_from_the_first_source_holding_its_digest():
    digests = np.random.default_rng(0).integers(0, 256, (8, 32), dtype=np.uint8)
    keys = reuse._keys(digests)
    first = reuse.Source("first", None, {keys[1]: 10, keys[2]: 11, keys[5]: 12})
    second = reuse.Source("second", None, {keys[2]: 20, keys[3]: 21, keys[4]: 22, keys[7]: 23})
    found = reuse.plan([first, second], digests, np.array([1, 2, 3, 5, 6, 7]))  # rows 0 and 4: written already
    assert found.source.tolist() == [-1, 0, 0, 1, -1, 0, -1, 1]
    assert found.row.tolist() == [-1, 10, 11, 21, -1, 12, -1, 23]
    assert found.taken().tolist() == [3, 2] and found.n_reused == 5
    assert found.summary() == "5 rows reused from first (3), second (2)"


def test_a_tampered_source_shard_is_refused(inputs, old_cache, tmp_path):
    import shutil

    import zarr

    copy = tmp_path / "tampered"
    shutil.copytree(old_cache, copy)
    group = zarr.open_group(copy, mode="r+")
    group["n_padded"][5] = (
        7  # row 5 (shard 1) is reused: a valid chunk whose rows no longer match the shard's recorded sha256
    )
    with pytest.raises(CacheError, match="shard 1 of reused cache tampered does not match"):
        run_embed(config(inputs, "new.parquet", tmp_path / "out", reuse=(str(copy),)))
    shutil.rmtree(copy)
    shutil.copytree(old_cache, copy)
    chunk = copy / "n_padded" / "c" / "1"  # shard 1's chunk of an extra, cut short: unreadable, not another cache
    assert chunk.is_file(), sorted(str(p.relative_to(copy)) for p in (copy / "n_padded").rglob("*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:3])
    with pytest.raises(CacheError, match=r"--reuse source tampered: .*; or drop it from --reuse"):
        run_embed(config(inputs, "new.parquet", tmp_path / "out2", reuse=(str(copy),)))


def test_reuse_of_nothing_is_a_one_line_error(inputs, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no cache there"):
        run_embed(config(inputs, "new.parquet", tmp_path / "out", reuse=(str(tmp_path / "empty"),)))


def test_fidelity_receipt_in_the_manifest_and_cache_info(inputs, old_cache, tmp_path, capsys):
    fidelity = open_cache(old_cache).manifest.fidelity
    assert fidelity["items"] == 16 and fidelity["precision"] == "fp32" and fidelity["dtype"] == "float16"
    # float16 storage of an fp32 forward: within float16's rounding, and not exactly equal
    assert 0 < fidelity["relative_l2_max"] < 2e-3 and fidelity["cosine_min"] > 0.99999
    assert main(["cache", "info", str(old_cache)]) == 0
    from dogmacache.cache.hub import FoundCache, dataset_card

    card = dataset_card("org/demo", [FoundCache(".", open_cache(old_cache).manifest)])
    said = "16 items, drawn from rows embedded by this run (30 of 30) vs a float32 forward, TF32 off, on cpu: cosine"
    assert f"- fidelity: {said} >= 0.9999" in card
    info = {line.split("  ")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert f"{said} >= 0.9999" in info["fidelity"]
    assert info["reused rows"].endswith("none")
    out = tmp_path / "bitround"
    run_embed(config(inputs, "old.parquet", out, dtype="float32", compression="bitround", fidelity_items=4))
    rounded = open_cache(out).manifest.fidelity
    assert rounded["items"] == 4 and rounded["relative_l2_max"] > fidelity["relative_l2_max"]  # 7 mantissa bits
    none = tmp_path / "none"
    run_embed(config(inputs, "old.parquet", none, fidelity_items=0))
    assert open_cache(none).manifest.fidelity == {}


def test_deviation_measures_what_it_says():
    ref = np.ones((3, 4, 2))
    same = deviation(ref.copy(), ref)
    assert same["cosine_min"] == pytest.approx(1.0) and same["relative_l2_max"] == 0.0
    off = ref.copy()
    off[1] *= 1.1  # 10 % larger: cosine 1, relative L2 0.1
    worse = deviation(off, ref)
    assert worse["relative_l2_max"] == pytest.approx(0.1) and worse["relative_l2_median"] == 0.0
    flipped = deviation(-ref, ref)
    assert flipped["cosine_min"] == pytest.approx(-1.0)
    zeroed = ref.copy()
    zeroed[2] = 0.0  # stored as zeros (underflow), the reference not; and the other way round: finite, worst
    for found in (deviation(zeroed, ref), deviation(ref, zeroed)):
        assert found["cosine_min"] == 0.0 and found["relative_l2_max"] == 1.0
        assert found["cosine_median"] == pytest.approx(1.0)


def test_receipt_from_the_stream_equals_a_second_forward(inputs, tmp_path, monkeypatch):
    """On the CPU in float32 the stream's own outputs are the reference: kept, they give the receipt a second
    float32 forward gives."""
    from dogmacache.embed import fidelity

    run_embed(config(inputs, "old.parquet", tmp_path / "kept", fidelity_items=6))
    monkeypatch.setattr(fidelity.Capture, "__call__", lambda self, first, embedded: None)  # nothing kept
    run_embed(config(inputs, "old.parquet", tmp_path / "again", fidelity_items=6))
    kept, again = (open_cache(tmp_path / name).manifest.fidelity for name in ("kept", "again"))
    assert kept == again and kept["relative_l2_max"] > 0


def test_proteins_of_many_lengths_and_rc_average_windows_reuse_byte_identically(inputs, tmp_path):
    """Ragged items are batched by length bucket, each batch of one shape, and minus-strand windows under
    rc-average apart from plus-strand ones: a row embedded among other rows than in the full run is still the same
    bytes."""
    from dogmacache.embed.adapters.enformer import EnformerOptions

    root, _ = inputs
    rng = np.random.default_rng(3)
    letters = list("ACDEFGHIKLMNPQRSTVWY")
    seqs = ["".join(rng.choice(letters, int(rng.integers(5, 150)))) for _ in range(70)]
    old = pd.DataFrame({"id": [f"o{i}" for i in range(60)], "sequence": seqs[:60]})
    new = pd.DataFrame({"id": [f"n{i}" for i in range(30)], "sequence": [*seqs[35:55], *seqs[60:70]]})
    old.to_parquet(root / "p_many_old.parquet")
    new.sample(frac=1.0, random_state=0).to_parquet(root / "p_many_new.parquet")
    kw = {"model": "esm2", "shard_items": None, "max_tokens": 1024, "dtype": "float32"}  # float16 would hide 1e-7
    run_embed(config(inputs, "p_many_old.parquet", tmp_path / "p_old", **kw))
    run_embed(config(inputs, "p_many_new.parquet", tmp_path / "p_full", **kw))
    summary = run_embed(
        config(inputs, "p_many_new.parquet", tmp_path / "p_reused", reuse=(str(tmp_path / "p_old"),), **kw)
    )
    assert summary["reused"] == 20
    same_arrays(str(tmp_path / "p_reused"), str(tmp_path / "p_full"))
    rc = {
        "options": EnformerOptions(strand_policy="rc-average"),
        "shard_items": None,
        "max_batch": 4,
        "dtype": "float32",
    }
    run_embed(config(inputs, "old.parquet", tmp_path / "w_old", **rc))
    run_embed(config(inputs, "new.parquet", tmp_path / "w_full", **rc))
    summary = run_embed(config(inputs, "new.parquet", tmp_path / "w_reused", reuse=(str(tmp_path / "w_old"),), **rc))
    assert summary["reused"] == 25
    same_arrays(str(tmp_path / "w_reused"), str(tmp_path / "w_full"))


def test_windows_left_in_many_shards_fill_whole_batches_and_keep_their_bytes(inputs, tmp_path, monkeypatch):
    """The windows `--reuse` leaves to embed, one or two per shard, are batched across the shards' boundaries (each
    batch still filled out to one shape); bucketed proteins stay within their shard. Either way the cache is the
    full embed's byte for byte, float32 storage."""
    from dogmacache.cache.reader import EmbeddingCache
    from dogmacache.cache.writer import shard_digest
    from dogmacache.embed.adapters.base import LayeredAdapter

    root, _ = inputs
    pd.read_parquet(root / "new.parquet").sample(frac=1.0, random_state=1).to_parquet(root / "new_spread.parquet")
    rng = np.random.default_rng(5)
    letters = list("ACDEFGHIKLMNPQRSTVWY")
    seqs = ["".join(rng.choice(letters, int(rng.integers(5, 60)))) for _ in range(40)]
    pd.DataFrame({"id": [f"o{i}" for i in range(32)], "sequence": seqs[:32]}).to_parquet(root / "p_span_old.parquet")
    new = pd.DataFrame({"id": [f"n{i}" for i in range(32)], "sequence": [*seqs[8:32], *seqs[32:40]]})
    new.sample(frac=1.0, random_state=2).to_parquet(root / "p_span_new.parquet")
    calls = []
    embed = LayeredAdapter.embed  # Enformer's and ESM-2's forward, batch by batch
    monkeypatch.setattr(LayeredAdapter, "embed", lambda self, batch: calls.append(len(batch)) or embed(self, batch))
    checked = []  # source shards read whole and checked against their sha256
    n_checked = {}
    reads = []  # read_rows calls on any cache
    read_rows = EmbeddingCache.read_rows
    monkeypatch.setattr(EmbeddingCache, "read_rows", lambda self, *a, **k: reads.append(1) or read_rows(self, *a, **k))
    monkeypatch.setattr(reuse, "shard_digest", lambda blocks: checked.append(1) or shard_digest(blocks))
    for model, old, new, shard_items in (
        ("enformer", "old.parquet", "new_spread.parquet", 2),
        ("esm2", "p_span_old.parquet", "p_span_new.parquet", 4),
    ):
        kw = {"model": model, "shard_items": shard_items, "dtype": "float32", "fidelity_items": 0}
        run_embed(config(inputs, old, tmp_path / f"{model}_old", **kw))
        run_embed(config(inputs, new, tmp_path / f"{model}_full", **kw))
        calls.clear()
        checked.clear()
        reads.clear()
        summary = run_embed(
            config(inputs, new, tmp_path / f"{model}_reused", reuse=(str(tmp_path / f"{model}_old"),), **kw)
        )
        digests = open_cache(tmp_path / f"{model}_old").extra(ITEM_SHA256)[:]
        known = {bytes(d) for d in digests}
        full_digests = open_cache(tmp_path / f"{model}_full").extra(ITEM_SHA256)[:]
        wanted = {bytes(d) for d in full_digests}
        source_shards = {r // shard_items for r, d in enumerate(digests) if bytes(d) in wanted}
        assert len(checked) == len(source_shards) >= 3  # each source shard checked once, not once per shard filled
        n_checked[model] = len(checked)
        assert len(reads) == len(checked)  # every source shard held once read: no row read again
        fresh = [r for r, d in enumerate(full_digests) if bytes(d) not in known]
        shards = {r // shard_items for r in fresh}
        assert summary["embedded"] == len(fresh) and len(shards) >= 3  # new rows in several shards
        if model == "enformer":  # windows: batches ran on across the shards' ends
            assert len(calls) < len(shards), (calls, shards)
        else:  # bucketed proteins stay within their shard: at least one batch per shard
            assert len(calls) >= len(shards), (calls, shards)
        same_arrays(str(tmp_path / f"{model}_reused"), str(tmp_path / f"{model}_full"))
    # source shards let go of (no memory to hold them): their rows read one by one, the same bytes
    monkeypatch.setattr(reuse, "HOLD_BYTES", 0)
    checked.clear()
    reads.clear()
    kw = {"model": "enformer", "shard_items": 2, "dtype": "float32", "fidelity_items": 0}
    run_embed(config(inputs, "new_spread.parquet", tmp_path / "lean", reuse=(str(tmp_path / "enformer_old"),), **kw))
    same_arrays(str(tmp_path / "lean"), str(tmp_path / "enformer_full"))
    assert len(checked) == n_checked["enformer"]  # still each source shard checked once
    assert len(reads) > len(checked)  # and rows of shards let go read again, one request at a time


def test_joined_batches_leave_every_batch_of_several_sizes_as_it_was():
    """With `span`, only batches of one size are joined across starts; a batch of several sizes (whose shape
    depends on its items) is cut exactly as without it, so a shard never depends on the shard before it."""
    from dogmacache.embed.shapes import per_batch
    from dogmacache.embed.stream import batches_by_budget

    # five windows, a shard start at 2, batches of up to 4: joined into one full batch and one short
    assert [len(b) for b in batches_by_budget([4] * 5, int, 64, 4, {2}, span=True)] == [4, 1]
    assert [len(b) for b in batches_by_budget([4] * 5, int, 64, 4, {2}, span=False)] == [2, 3]
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 40))
        sizes = rng.choice([4, 4, 4, 8, 16], n).tolist()
        starts = set(rng.choice(n, int(rng.integers(0, 5))).tolist())
        max_tokens, max_batch = int(rng.choice([16, 32, 64])), int(rng.integers(1, 6))
        cost = sizes.__getitem__
        plain = [tuple(b) for b in batches_by_budget(range(n), cost, max_tokens, max_batch, starts)]
        joined = [tuple(b) for b in batches_by_budget(range(n), cost, max_tokens, max_batch, starts, span=True)]
        assert [i for b in joined for i in b] == list(range(n))  # every item once, in order
        assert {b for b in joined if len({sizes[i] for i in b}) > 1} == {
            b for b in plain if len({sizes[i] for i in b}) > 1
        }
        for b in joined:  # a joined batch of one size never exceeds the full batch its items are filled out to
            assert len({sizes[i] for i in b}) > 1 or len(b) <= per_batch(sizes[b[0]], max_tokens, max_batch)


def test_every_batch_of_a_bucket_has_its_length():
    from dogmacache.embed import shapes

    costs = [40, 70, 33, 64, 90, 65, 12]
    buckets = [min(-(-c // 32) * 32, 96) for c in costs]  # capped at a model limit of 96 tokens
    assert buckets == [shapes.length_bucket(c, 96) for c in costs]
    batches = shapes.plan(buckets, max_tokens=200, max_batch=8)
    # buckets 32: [6]; 64: [0, 2, 3], 3 per batch; 96: [1, 4, 5], 2 per batch
    assert batches == [[6], [0, 2, 3], [1, 4], [5]]
    items = [{"n": c} for c in costs]

    def filler(n):
        return {"n": n, "filler": True}

    for batch in batches:
        bucket = buckets[batch[0]]
        full = shapes.filled([items[o] for o in batch], lambda x: x["n"], 200, 8, bucket, filler)
        marked = [{**items[o], shapes.PAD_TO: bucket} for o in batch]  # padded to the bucket's length
        assert full == (marked if len(batch) > 1 else [*marked, {"n": bucket, "filler": True}])  # alone: a filler
        assert shapes.pad_length(full) == bucket and all(shapes.PAD_TO not in items[o] for o in batch)
    windows = shapes.filled([{"n": 50}, {"n": 50}], lambda x: x["n"], 200, 8)
    assert len(windows) == 4 and windows[-1] is windows[1]  # same-size items: filled out to the full batch


def test_esm2_letter_lookup_gives_the_tokenizers_ids(inputs):
    """ESM-2's tokenizer reads one token per letter: the adapter's table lookup gives its very ids (truncation,
    special tokens and all), and a tokenizer of another kind (6-mers) gets no table."""
    import torch
    from dogmacache.embed.adapters import get_adapter

    root, models = inputs
    cls = get_adapter("esm2", "protein")
    adapter = cls(str(models["esm2"]), cls.options_class(max_length=40), torch.device("cpu"))
    rng = np.random.default_rng(1)
    letters = list("ACDEFGHIKLMNPQRSTVWYXBZUO")
    seqs = ["".join(rng.choice(letters, int(rng.integers(1, 80)))) for _ in range(50)] + ["M"]
    fast = [adapter.prepare({"id": "x", "sequence": s}) for s in seqs]
    assert adapter._letters is not None
    adapter._letters = None  # the tokenizer's own path
    slow = [adapter.prepare({"id": "x", "sequence": s}) for s in seqs]
    for a, b in zip(fast, slow, strict=True):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_reuse_across_genome_files_holding_the_same_bases(inputs, old_cache, full_new, tmp_path):
    """The genome file's digest is left out of the match (the item digest covers the bases): a FASTA with one more
    chromosome gives the same rows; one whose bases differ under a window gives that window anew."""
    root, _ = inputs
    text = (root / "g.fa").read_text()
    (tmp_path / "more.fa").write_text(text + ">chrX\nACGTACGTAC\n")
    summary = run_embed(
        config(inputs, "new.parquet", tmp_path / "more", genome=str(tmp_path / "more.fa"), reuse=(str(old_cache),))
    )
    assert summary["reused"] == 25
    assert np.array_equal(open_cache(tmp_path / "more")[:].view(np.uint16), open_cache(full_new)[:].view(np.uint16))
    bases = list(text.splitlines()[1])
    center = int(pd.read_parquet(root / "new.parquet")["center"].iloc[0])
    bases[center - 1] = "A" if bases[center - 1] != "A" else "C"  # one base under the first new row's window
    (tmp_path / "edited.fa").write_text(">chr1\n" + "".join(bases) + "\n")
    summary = run_embed(
        config(inputs, "new.parquet", tmp_path / "edited", genome=str(tmp_path / "edited.fa"), reuse=(str(old_cache),))
    )
    assert summary["reused"] < 25 and summary["embedded"] > 5


def test_esm2_digests_of_many_rows_equal_item_digest_of_each_prepared_row(inputs):
    """The adapter's digests for a run of rows (one table pass, bytes hashed as item_digest lays them out) are
    item_digest(prepare(row)) for every row: short and truncated proteins, lower case, a final stop; a bad row
    raises its own error; a tokenizer without a letter table takes the row-by-row path."""
    import torch
    from dogmacache.embed.adapters import EmbeddingAdapter, get_adapter
    from dogmacache.errors import InputError

    root, models = inputs
    cls = get_adapter("esm2", "protein")
    adapter = cls(str(models["esm2"]), cls.options_class(max_length=40), torch.device("cpu"))
    rng = np.random.default_rng(2)
    letters = list("ACDEFGHIKLMNPQRSTVWYXBZUO")
    seqs = ["".join(rng.choice(letters, int(rng.integers(1, 80)))) for _ in range(60)]
    seqs += ["M", "a" * 38, "C" * 39, " mkv* ", "Q" * 40]  # the cap is 40 tokens with <cls> and <eos>
    rows = [{"id": f"p{k}", "sequence": s} for k, s in enumerate(seqs)]
    expected = np.stack([digest.item_digest(adapter.prepare(row)) for row in rows])
    assert any(adapter.prepare(row)["n_truncated"] > 0 for row in rows)
    assert np.array_equal(adapter.digests(rows), expected)
    assert adapter.digests([]).shape == (0, 32) and EmbeddingAdapter.digests(adapter, []).dtype == np.uint8
    with pytest.raises(InputError, match="'bad'"):
        adapter.digests([*rows[:3], {"id": "bad", "sequence": "MK1V"}])
    adapter._letters = None  # the tokenizer's own path
    assert np.array_equal(adapter.digests(rows), expected)


def test_nucleotide_transformer_6mer_counting_gives_the_tokenizers_ids(inputs, tmp_path):
    """Nucleotide Transformer's 6-mers with single bases for the rest, counted by numpy, are its tokenizer's very
    ids (N alone and in runs, remainders before an N and at the end, the empty sequence); the prepared items and
    their digests agree both ways; a vocabulary without the 6-mers gets no table; ESM-2 gets none either."""
    import torch
    from dogmacache.embed.adapters import get_adapter
    from dogmacache.embed.adapters.hf_esm import _dna_token_ids
    from dogmacache.embed.tiny import write_tiny_nucleotide_transformer

    cls = get_adapter("nucleotide-transformer", "rna")
    adapter = cls(str(write_tiny_nucleotide_transformer(tmp_path / "nt")), cls.options_class(), torch.device("cpu"))
    adapter._tokens_ready()
    assert adapter._kmers is not None and adapter.cheap_inputs
    rng = np.random.default_rng(3)
    seqs = ["", "N", "NNNNNNN", "ACGTA", "ACGTAC", "ACGTACG", "ACGTACNACGTAC", "NACGTACGTACN"]
    for p in (0.0, 0.02, 0.2, 0.8):
        seqs += [
            "".join(rng.choice(list("ACGTN"), int(rng.integers(1, 150)), p=[(1 - p) / 4] * 4 + [p])) for _ in range(60)
        ]
    for seq in seqs:
        want = adapter.tokenizer(seq, add_special_tokens=True)["input_ids"]
        assert np.array_equal(_dna_token_ids(seq, adapter._kmers, adapter._around), want), seq
    rows = [{"id": f"t{k}", "sequence": s} for k, s in enumerate(seqs[8:])]
    fast = [adapter.prepare(row) for row in rows]
    digests = adapter.digests(rows)
    adapter._kmers = None  # the tokenizer's own path
    slow = [adapter.prepare(row) for row in rows]
    for a, b in zip(fast, slow, strict=True):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(digests, np.stack([digest.item_digest(item) for item in slow]))
    assert not adapter.cheap_inputs  # without the table its inputs are worth a worker
    esm = get_adapter("esm2", "protein")
    protein = esm(str(inputs[1]["esm2"]), esm.options_class(), torch.device("cpu"))
    protein._tokens_ready()
    assert protein._kmers is None and protein._kmer_ids() is None and protein._letters is not None


def test_rows_of_other_batch_shapes_compiled_kernels_or_thread_counts_are_not_copied(
    inputs, old_cache, full_new, tmp_path, capsys
):
    """They move numbers by float rounding, so a copied row would not be the one this run embeds (max_batch 1 gave
    rows up to 1.7e-6 away from the default's, float32): such a source is named and left out. A lossless codec is
    no such setting: zstd-stored rows are copied into an uncompressed cache, byte-identical to the full embed."""
    other = tmp_path / "batch1"
    run_embed(config(inputs, "old.parquet", other, max_batch=1))
    for source, why in (
        (other, "not using batch1: max_batch is 1 there, 64 here"),
        (old_cache, "not using old: torch_threads is 1 there, 2 here"),
    ):
        capsys.readouterr()
        out = tmp_path / f"from-{source.name}"
        summary = run_embed(
            config(inputs, "new.parquet", out, reuse=(str(source),), torch_threads=2 if source == old_cache else None)
        )
        assert summary["reused"] == 0 and why in capsys.readouterr().out
    zstd = tmp_path / "zstd"
    run_embed(config(inputs, "old.parquet", zstd, compression="zstd"))
    out = tmp_path / "from-zstd"
    assert run_embed(config(inputs, "new.parquet", out, reuse=(str(zstd),)))["reused"] == 25
    same_arrays(str(out), str(full_new))


def test_a_run_without_a_thread_count_takes_the_reused_caches(inputs, tmp_path, idle_two_cores, capsys):
    """Nothing chosen (no --threads, no OMP_NUM_THREADS) on a machine whose plan would take 2 threads: the count the
    --reuse cache was embedded with (1), said in one line, and its rows are copied."""
    from dogmacache.embed import runner

    used = idle_two_cores(runner)
    folder = tmp_path / "caches"
    run_embed(config(inputs, "old.parquet", folder / "one", torch_threads=1))
    run_embed(config(inputs, "p_old.parquet", folder / "esm2", model="esm2", torch_threads=2))  # no source here
    capsys.readouterr()
    summary = run_embed(config(inputs, "new.parquet", tmp_path / "out", reuse=(str(folder),)))
    assert summary["reused"] == 25 and used[-1] == 1
    assert "torch threads: 1, as the --reuse caches were embedded with" in capsys.readouterr().out
    run_embed(config(inputs, "new.parquet", tmp_path / "fresh"))  # and without --reuse, the plan's 2
    assert used[-1] == 2


def test_a_reuse_naming_no_cache_leaves_nothing_and_a_dot_is_named(inputs, old_cache, tmp_path, monkeypatch):
    out = tmp_path / "never"
    with pytest.raises(InputError, match="--reuse .*missing: no such folder"):
        run_embed(config(inputs, "new.parquet", out, reuse=(str(tmp_path / "missing"),)))
    assert not out.exists()  # refused before the cache at --out was made
    monkeypatch.chdir(old_cache)
    summary = run_embed(config(inputs, "new.parquet", tmp_path / "dot", reuse=(".",)))
    assert summary["reused"] == 25 and [r["name"] for r in open_cache(tmp_path / "dot").manifest.reused] == ["old"]


def test_a_reuse_stopped_before_its_manifest_was_final_finishes(inputs, old_cache, full_new, tmp_path, monkeypatch):
    """Every shard written, the run stopped in its fidelity receipt: the same command finishes the cache (it
    raised on the empty list of shards to plan)."""
    from dogmacache.embed import runner

    out, plain = tmp_path / "stopped", runner.receipt

    def stops(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "receipt", stops)
    with pytest.raises(KeyboardInterrupt):
        run_embed(config(inputs, "new.parquet", out, reuse=(str(old_cache),)))
    assert not open_cache(out, allow_partial=True).manifest.complete
    monkeypatch.setattr(runner, "receipt", plain)
    summary = run_embed(config(inputs, "new.parquet", out, reuse=(str(old_cache),)))
    assert summary["items"] == 0 and open_cache(out).manifest.complete
    same_arrays(str(out), str(full_new))


def test_the_demo_embeds_anew_only_its_own_earlier_caches(inputs, tmp_path, capsys):
    """A cache this version refuses to resume is embedded anew by the demo when it was embedded from a table of the
    same name (an earlier demo's); a cache of another table at that path keeps its refusal."""
    import zarr
    from dogmacache.demo.own_caches import embed_own

    out = tmp_path / "old"
    run_embed(config(inputs, "old.parquet", out))
    group = zarr.open_group(str(out), mode="r+")
    attrs = dict(group.attrs["dogmacache"])
    attrs["config"] = {**attrs["config"], "precision": "bf16"}  # as if another version had recorded another setting
    group.attrs["dogmacache"] = attrs
    with pytest.raises(InputError, match="precision"):
        embed_own(run_embed, config(inputs, "new.parquet", out))  # another table: left as it is
    summary = embed_own(run_embed, config(inputs, "old.parquet", out))
    assert summary["items"] == 30 and "embedding" in capsys.readouterr().out
    assert open_cache(out).manifest.config["precision"] == "fp32"


def test_an_unreadable_shard_note_is_left_out_with_a_warning(inputs, old_cache, tmp_path, monkeypatch):
    from dogmacache.cache.writer import CacheWriter

    out = tmp_path / "noted"
    plain = CacheWriter.finalize

    def with_a_stray_note(self, **kwargs):
        (self.path / "shard_notes.partial").mkdir(exist_ok=True)
        (self.path / "shard_notes.partial" / "0.json").write_text("{trunc")
        return plain(self, **kwargs)

    monkeypatch.setattr(CacheWriter, "finalize", with_a_stray_note)
    with pytest.warns(UserWarning, match="not a shard note"):
        run_embed(config(inputs, "new.parquet", out, reuse=(str(old_cache),)))
    manifest = open_cache(out).manifest
    assert manifest.complete and sum(r["rows"] for r in manifest.reused) < 25  # shard 0's copies not counted


def test_a_cache_resumed_under_other_rounding_settings_is_no_reuse_source(inputs, tmp_path, monkeypatch, capsys):
    """Its first shards came at one batch size and thread count, the rest at another: the manifest says so
    (`resumed_with`), and --reuse copies none of its rows as if one run had made them."""
    from dogmacache.cache.writer import CacheWriter

    write = interrupt_on_call(monkeypatch, CacheWriter, "write_shard", 2)
    with pytest.raises(KeyboardInterrupt):
        run_embed(config(inputs, "old.parquet", tmp_path / "mixed.zarr", torch_threads=1))
    monkeypatch.setattr(CacheWriter, "write_shard", write)
    run_embed(config(inputs, "old.parquet", tmp_path / "mixed.zarr", torch_threads=1, max_batch=3))
    said = capsys.readouterr().out
    assert "continued with {'max_batch': 3}, begun with {'max_batch': 64}" in said
    assert open_cache(tmp_path / "mixed.zarr").manifest.config["resumed_with"] == [{"max_batch": 3}]
    summary = run_embed(
        config(inputs, "new.parquet", tmp_path / "new.zarr", torch_threads=1, reuse=(str(tmp_path / "mixed.zarr"),))
    )
    assert summary["reused"] == 0
    said = capsys.readouterr().out
    assert "not using mixed.zarr: it was resumed under other settings ([{'max_batch': 3}]), so its rows" in said


def test_overwrite_never_deletes_a_reuse_source(inputs, old_cache, tmp_path):
    import shutil

    shutil.copytree(old_cache, tmp_path / "kept.zarr")
    out = tmp_path / "kept.zarr"
    with pytest.raises(InputError, match=r"--reuse .* names .*kept.zarr, which --overwrite would delete"):
        run_embed(config(inputs, "new.parquet", out, overwrite=True, reuse=(str(tmp_path),)))
    assert open_cache(out).manifest.complete


def test_a_source_rewritten_during_the_copy_is_refused_and_the_rerun_is_whole(inputs, tmp_path, monkeypatch):
    """Rows of a source shard let go of (over HOLD_BYTES) are read again one by one, each checked by its crc32c:
    that says they are whole, not that they are the cache checked before. A source whose manifest file changed
    since it was opened (another run rewrote it with --overwrite) is refused in a line; the re-run keeps the
    shards written and gives the full embed's bytes."""
    root, _ = inputs
    pd.read_parquet(root / "new.parquet").sample(frac=1.0, random_state=1).to_parquet(root / "new_spread.parquet")
    kw = {"model": "enformer", "shard_items": 2, "dtype": "float32", "fidelity_items": 0}
    old, out = tmp_path / "old", tmp_path / "out"
    run_embed(config(inputs, "old.parquet", old, **kw))
    run_embed(config(inputs, "new_spread.parquet", tmp_path / "full", **kw))
    monkeypatch.setattr(reuse, "HOLD_BYTES", 0)  # every source shard but the last let go once checked
    take, calls = reuse.RowCopier.take, []

    def rewritten_after_the_second(self, s, rows):
        calls.append(1)
        if len(calls) == 3:  # as a rewrite would: the manifest file replaced (here only its time moves)
            manifest = old / "zarr.json"
            stat = manifest.stat()
            os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        return take(self, s, rows)

    monkeypatch.setattr(reuse.RowCopier, "take", rewritten_after_the_second)
    with pytest.raises(CacheError, match=r"--reuse source old was rewritten while this run copied from it"):
        run_embed(config(inputs, "new_spread.parquet", out, reuse=(str(old),), **kw))
    assert not open_cache(out, allow_partial=True).manifest.complete
    monkeypatch.setattr(reuse.RowCopier, "take", take)
    run_embed(config(inputs, "new_spread.parquet", out, reuse=(str(old),), **kw))
    same_arrays(str(out), str(tmp_path / "full"))
    # a remote source (no manifest file to watch here): a shard let go of is read whole and checked again
    from dogmacache.cache.writer import shard_digest

    checked = []
    monkeypatch.setattr(reuse, "manifest_stamp", lambda cache: None)
    monkeypatch.setattr(reuse, "shard_digest", lambda blocks: checked.append(1) or shard_digest(blocks))
    run_embed(config(inputs, "new_spread.parquet", tmp_path / "remote", reuse=(str(old),), **kw))
    same_arrays(str(tmp_path / "remote"), str(tmp_path / "full"))
    assert len(checked) > open_cache(old).manifest.n_shards  # shards let go of were checked again when read again


def test_a_run_whose_own_out_was_resumed_under_other_settings_names_its_out_not_the_source():
    """A cache resumed under other rounding settings copies from no cache (its rows are of two kinds): the line
    says so of --out, not of a source that was never resumed."""
    ours = reuse._differs({"resumed_with": None}, {"resumed_with": [{"max_batch": 8}]})
    assert ours.startswith("this run's --out was resumed under other settings")
    theirs = reuse._differs({"resumed_with": [{"max_batch": 8}]}, {"resumed_with": None})
    assert theirs.startswith("it was resumed under other settings")
