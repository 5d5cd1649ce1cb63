"""The embed stage on the demo recipe with tiny models of the real architectures, loaded through the same
code paths as real weights: complete caches, resume after kill -9, clear errors on bad input."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from dogmacache.cache import open_cache
from dogmacache.cli import main
from dogmacache.embed.adapters.enformer import EnformerAdapter, EnformerOptions
from dogmacache.embed.genome import Genome
from dogmacache.embed.runner import batches_by_budget


@pytest.fixture(scope="module")
def demo(demo_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    (root / "recipe").symlink_to(demo_run / "recipe")
    models = {name: demo_run / "models" / name for name in ("enformer", "esm2", "nucleotide-transformer", "scgpt")}
    dna = pd.read_parquet(root / "recipe" / "cdt" / "dna_windows.parquet")
    dna.iloc[:24].to_parquet(root / "dna24.parquet")  # a small table for the slower tests
    return root, models


def _embed_args(root, models, out, *extra, table="dna24.parquet"):
    return [
        "embed",
        "--input",
        str(root / table),
        "--modality",
        "dna",
        "--model",
        "enformer",
        "--model-path",
        str(models["enformer"]),
        "--genome",
        str(root / "recipe" / "genome.fa"),
        "--out",
        str(out),
        "--shard-items",
        "4",
        "--num-workers",
        "0",
        "--no-progress",
        *extra,
    ]


def test_demo_inputs_embed_into_complete_caches(demo, demo_run, tmp_path, capsys):
    """DNA, protein and gene caches come from the demo run; RNA and tissue context are embedded here."""
    root, models = demo
    recipe = root / "recipe"
    runs = [
        (
            "rna.zarr",
            [
                "--input",
                str(recipe / "isoform" / "rna_sequences.parquet"),
                "--modality",
                "rna",
                "--model",
                "nucleotide-transformer",
                "--model-path",
                str(models["nucleotide-transformer"]),
            ],
        ),
        (
            "tissue.zarr",
            [
                "--input",
                str(recipe / "isoform" / "tissue_profiles.parquet"),
                "--modality",
                "context",
                "--model",
                "scgpt",
                "--model-path",
                str(models["scgpt"]),
            ],
        ),
    ]
    for name, args in runs:
        assert main(["embed", *args, "--out", str(tmp_path / name), "--no-progress"]) == 0, name
        said = capsys.readouterr().out
        assert "cache complete" in said
        assert ("windows padded with N" in said) == ("--genome" in args), name  # only where windows are cut
    paths = {
        "dna.zarr": demo_run / "cache" / "dna-enformer-trunk.zarr",
        "protein.zarr": demo_run / "cache" / "protein-esm2.zarr",
        "gene.zarr": demo_run / "cache" / "gene-scgpt.zarr",
        "rna.zarr": tmp_path / "rna.zarr",
        "tissue.zarr": tmp_path / "tissue.zarr",
    }
    shapes = {}
    for name, path in paths.items():
        cache = open_cache(path)
        assert cache.manifest.complete and np.isfinite(cache[:].astype(np.float32)).all()
        shapes[name] = (len(cache), cache.item_shape)
    assert shapes == {
        "dna.zarr": (180, (8, 96)),
        "protein.zarr": (35, (32,)),
        "gene.zarr": (35, (32,)),
        "rna.zarr": (371, (32,)),
        "tissue.zarr": (30, (32,)),
    }
    genes = open_cache(paths["gene.zarr"])
    assert genes.ids.tolist() == open_cache(paths["protein.zarr"]).ids.tolist()  # one canonical gene order
    assert open_cache(paths["dna.zarr"]).manifest.config["options"]["window_bp"] == 2048


def test_enformer_adapter_output_is_the_models_own_embedding(demo):
    root, models = demo
    adapter = EnformerAdapter(str(models["enformer"]), EnformerOptions(), torch.device("cpu"))
    genome = Genome(root / "recipe" / "genome.fa")
    rows = [
        {"id": "a", "chrom": "chr1", "center": 800, "_genome": genome},
        {"id": "b", "chrom": "chr3", "center": 50_000, "_genome": genome},
    ]
    prepared = [adapter.prepare(r) for r in rows]
    with torch.inference_mode():
        got, extras = adapter.embed(prepared)
        seqs = [genome.window(r["chrom"], r["center"], 2048)[0] for r in rows]
        one_hot = torch.tensor(
            [[[b == "A", b == "C", b == "G", b == "T"] for b in s] for s in seqs], dtype=torch.float32
        )
        direct = adapter.model(one_hot, return_only_embeddings=True)
    assert got.shape == (2, 8, 96)
    torch.testing.assert_close(got, direct, rtol=0, atol=0)  # no silent transforms
    assert extras["n_padded"].tolist() == [2048 // 2 - 799, 0]  # window starts 224 bp before chr1's first base


def test_kill_and_resume_gives_identical_arrays(demo, tmp_path):
    root, models = demo
    killed = tmp_path / "killed.zarr"
    table = "recipe/cdt/dna_windows.parquet"  # 180 windows, 45 shards: the kill lands mid-run even on a slow machine
    command = [sys.executable, "-m", "dogmacache.cli", *_embed_args(root, models, killed, table=table)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    digests = killed / "shard_sha256" / "c"
    deadline = time.time() + 120
    while time.time() < deadline and not (digests.exists() and len(list(digests.iterdir())) >= 2):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(digests.iterdir()))
    assert 2 <= done < 45, done  # killed in the middle
    assert not zarr.open_group(killed, mode="r").attrs["dogmacache"]["complete"]
    assert main(_embed_args(root, models, killed, table=table)) == 0  # the same command resumes
    assert main(_embed_args(root, models, tmp_path / "fresh.zarr", table=table)) == 0
    a, b = open_cache(killed), open_cache(tmp_path / "fresh.zarr")
    np.testing.assert_array_equal(a[:], b[:])
    assert a.manifest.shards == b.manifest.shards and a.ids.tolist() == b.ids.tolist()


def test_same_command_on_a_complete_cache_does_nothing(demo, tmp_path, capsys):
    root, models = demo
    assert main(_embed_args(root, models, tmp_path / "c.zarr")) == 0
    before = (tmp_path / "c.zarr" / "zarr.json").read_text()
    capsys.readouterr()
    assert main(_embed_args(root, models, tmp_path / "c.zarr")) == 0
    assert "already complete (24 items); nothing to do" in capsys.readouterr().out
    assert (tmp_path / "c.zarr" / "zarr.json").read_text() == before


def test_two_dask_workers_give_the_same_cache_as_one_process(demo, tmp_path):
    root, models = demo
    assert main(_embed_args(root, models, tmp_path / "one.zarr")) == 0
    assert main(_embed_args(root, models, tmp_path / "dask.zarr", "--workers", "2")) == 0
    a, b = open_cache(tmp_path / "one.zarr"), open_cache(tmp_path / "dask.zarr")
    np.testing.assert_array_equal(a[:], b[:])
    assert a.manifest.shards == b.manifest.shards


@pytest.mark.parametrize(
    ("mutate", "args", "message"),
    [
        (lambda t: t.assign(chrom=["chrZ"] + list(t.chrom[1:])), [], r"chromosomes \['chrZ'\].*not in .*genome.fa"),
        (None, ["--model", "enformer2"], r"unknown model 'enformer2'; known: borzoi, enformer, esm2"),
        (None, ["--model-path", "MISSING"], r"neither a local directory nor a hub id"),
    ],
    ids=["unknown-chromosome", "unknown-model", "missing-model-dir"],
)
def test_bad_dna_inputs_are_refused(demo, tmp_path, capsys, mutate, args, message):
    root, models = demo
    table = pd.read_parquet(root / "dna24.parquet")
    if mutate:
        table = mutate(table)
    table.to_parquet(tmp_path / "t.parquet")
    argv = _embed_args(tmp_path, models, tmp_path / "c.zarr", table="t.parquet")
    argv[argv.index("--genome") + 1] = str(root / "recipe" / "genome.fa")
    for flag in ("--model", "--model-path"):
        if flag in args:
            argv[argv.index(flag) + 1] = args[args.index(flag) + 1]
    assert main(argv) == 2
    import re

    assert re.search(message, capsys.readouterr().err)
    assert (
        not (tmp_path / "c.zarr").exists() or not open_cache(tmp_path / "c.zarr", allow_partial=True).manifest.complete
    )


def test_bad_sequences_and_missing_checkpoint_files(demo, tmp_path, capsys):
    root, models = demo
    proteins = pd.DataFrame({"id": ["p1", "p2"], "sequence": ["MKV", "MK1V"]})
    proteins.to_parquet(tmp_path / "bad.parquet")
    base = ["embed", "--modality", "protein", "--model", "esm2", "--model-path", str(models["esm2"]), "--no-progress"]
    assert main([*base, "--input", str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "a.zarr")]) == 2
    assert "protein 'p2': characters ['1'] are not amino acids" in capsys.readouterr().err
    assert not open_cache(tmp_path / "a.zarr", allow_partial=True).manifest.complete
    proteins.assign(sequence=["MKV", ""]).to_parquet(tmp_path / "empty.parquet")
    assert main([*base, "--input", str(tmp_path / "empty.parquet"), "--out", str(tmp_path / "b.zarr")]) == 2
    assert "item 'p2' has an empty sequence" in capsys.readouterr().err
    dna = pd.DataFrame({"id": ["r1"], "sequence": ["ACGTRYACGT"]})
    dna.to_parquet(tmp_path / "rna.parquet")
    assert (
        main(
            [
                "embed",
                "--input",
                str(tmp_path / "rna.parquet"),
                "--modality",
                "rna",
                "--model",
                "nucleotide-transformer",
                "--model-path",
                str(models["nucleotide-transformer"]),
                "--out",
                str(tmp_path / "c.zarr"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "characters ['R', 'Y'] outside A, C, G, T, N" in capsys.readouterr().err
    broken = tmp_path / "enformer-no-weights"
    broken.mkdir()
    (broken / "config.json").write_text((Path(models["enformer"]) / "config.json").read_text())
    argv = _embed_args(root, models, tmp_path / "d.zarr")
    argv[argv.index("--model-path") + 1] = str(broken)
    assert main(argv) == 2
    assert "holds no weights file (model.safetensors or pytorch_model.bin)" in capsys.readouterr().err
    assert not (tmp_path / "d.zarr").exists()


def test_batches_follow_the_token_budget():
    items = [{"n": n} for n in (3, 3, 5, 1, 10, 2)]
    batches = list(batches_by_budget(items, lambda i: i["n"], max_tokens=10, max_batch=3))
    assert [[i["n"] for i in b] for b in batches] == [[3, 3], [5, 1], [10], [2]]  # padded cost B x longest <= 10


def test_genome_windows_pad_upper_case_and_alias(tmp_path):
    (tmp_path / "g.fa").write_text(">chr1\nacgtACGTac\nGT\n>MT\nNNNN\n")
    genome = Genome(tmp_path / "g.fa")
    assert genome.window("chr1", 3, 6) == ("NACGTA", 1)  # 1-based centre 3 -> [0-1, 5): one N on the left
    assert genome.window("1", 11, 4) == ("ACGT", 0)  # '1' found as 'chr1'
    assert genome.window("chr1", 12, 6) == ("ACGTNN", 2)  # [8, 14) of a 12 bp chromosome: two N on the right
    assert genome.window("chrM", 2, 2) == ("NN", 0)  # 'chrM' found as 'MT'
    with pytest.raises(Exception, match=r"chromosome 'chr9' is not in .* \(it has chr1, MT\)"):
        genome.window("chr9", 1, 2)


def test_an_enformer_window_the_trunk_cannot_crop_evenly_is_refused_with_the_nearest_good_ones():
    """The trunk crops window // 128 positions to the central bins by cutting as many from each end: an odd
    difference would give bins - 1 bins, found only when the first shard is written."""
    from dogmacache.errors import ModelError

    for window in (1152, 1408):
        with pytest.raises(
            ModelError, match=rf"--window-bp {window} is {window // 128} positions .* its 8 central bins"
        ):
            EnformerOptions(window_bp=window).resolve(8)
    with pytest.raises(ModelError, match=r"use --window-bp 1024 or 1280$"):
        EnformerOptions(window_bp=1152).resolve(8)
    assert EnformerOptions(window_bp=1280).resolve(8).window_bp == 1280
    assert EnformerOptions().resolve(8).window_bp == 2048  # 16 positions: 4 cut from each end
    assert EnformerOptions().resolve(7).window_bp == 1920  # 15 positions for 7 bins, not 14
    assert EnformerOptions().resolve(896).window_bp == 196_608
