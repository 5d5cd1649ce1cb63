"""`--random-init SEED`: each foundation model's architecture with weights drawn at random instead of loaded (a
control). Its cache differs from the loaded model's, is the same for the same seed, needs no weights file, and
says so in its manifest, where the seed is a number-changing setting like any other."""

import shutil

import numpy as np
import pandas as pd
import pytest
from dogmacache.cache import open_cache
from dogmacache.cli import main
from dogmacache.embed.adapters.enformer import write_tiny_enformer
from dogmacache.embed.adapters.scgpt_model import write_tiny_scgpt
from dogmacache.embed.adapters.weights import WEIGHT_FILES
from dogmacache.embed.tiny import write_tiny_esm2, write_tiny_nucleotide_transformer

GENES = ["TP53", "MYC", "ALB"]
WEIGHTS = (*WEIGHT_FILES, "best_model.pt")
# (model, modality): its tiny writer. Seed 1: `--random-init S` draws as the tiny writers do with seed S.
MODELS = {
    ("enformer", "dna"): lambda d: write_tiny_enformer(d, seed=1),
    ("esm2", "protein"): lambda d: write_tiny_esm2(d, seed=1),
    ("nucleotide-transformer", "rna"): lambda d: write_tiny_nucleotide_transformer(d, seed=1),
    ("scgpt", "gene"): lambda d: write_tiny_scgpt(d, GENES, seed=1),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("random_init")
    rng = np.random.default_rng(0)
    (root / "g.fa").write_text(">chr1\n" + "".join(rng.choice(list("ACGT"), 5000)) + "\n")
    pd.DataFrame({"id": ["w1", "w2"], "chrom": "chr1", "center": [1500, 3000], "strand": ["+", "-"]}).to_parquet(
        root / "dna.parquet"
    )
    pd.DataFrame({"id": ["p1", "p2", "p3"], "sequence": ["MKV", "MKVLA", "ACDEFGHIK"]}).to_parquet(
        root / "protein.parquet"
    )
    pd.DataFrame({"id": ["t1", "t2"], "sequence": ["ACGTACGTAAGGCTTA", "GGGCCCAAATTTACGU"]}).to_parquet(
        root / "rna.parquet"
    )
    pd.DataFrame({"id": GENES}).to_parquet(root / "gene.parquet")
    models = {key: write(root / key[0]) for key, write in MODELS.items()}
    return root, models


def embed(inputs, key, out, *extra, model_path=None) -> int:
    root, models = inputs
    model, modality = key
    argv = ["embed", "--input", str(root / f"{modality}.parquet"), "--modality", modality, "--model", model]
    argv += ["--model-path", str(model_path or models[key]), "--out", str(out), "--dtype", "float32"]
    argv += ["--num-workers", "0", "--no-progress", *extra]
    if modality == "dna":
        argv += ["--genome", str(root / "g.fa")]
    return main(argv)


@pytest.mark.parametrize("key", list(MODELS), ids=[m for m, _ in MODELS])
def test_random_weights_differ_from_the_loaded_ones_and_repeat_for_a_seed(inputs, tmp_path, key):
    no_weights = tmp_path / key[0]  # the same folder without its weights file: random init never reads it
    shutil.copytree(inputs[1][key], no_weights, ignore=shutil.ignore_patterns(*WEIGHTS))
    assert embed(inputs, key, tmp_path / "loaded") == 0
    assert embed(inputs, key, tmp_path / "random", "--random-init", "0") == 0
    assert embed(inputs, key, tmp_path / "again", "--random-init", "0", model_path=no_weights) == 0
    assert embed(inputs, key, tmp_path / "other", "--random-init", "2") == 0
    loaded, random, again, other = (open_cache(tmp_path / n) for n in ("loaded", "random", "again", "other"))
    assert not np.allclose(loaded[:], random[:], atol=1e-3)
    np.testing.assert_array_equal(random[:], again[:])
    assert not np.allclose(random[:], other[:], atol=1e-3)
    recorded = random.manifest.config
    assert recorded["random_init"] == 0 and random.manifest.model_revision == "random_init:0"
    assert not set(recorded["model_files"]) & set(WEIGHTS)  # no weights file was read, none is recorded
    assert loaded.manifest.config["random_init"] is None and set(loaded.manifest.config["model_files"]) & set(WEIGHTS)


def test_the_seed_is_a_number_changing_setting(inputs, tmp_path, capsys):
    key = ("esm2", "protein")
    assert embed(inputs, key, tmp_path / "c.zarr") == 0
    capsys.readouterr()
    assert embed(inputs, key, tmp_path / "c.zarr", "--random-init", "0") == 2
    assert "random_init: None in the cache, 0 now" in capsys.readouterr().err
    assert embed(inputs, key, tmp_path / "r.zarr", "--random-init", "0") == 0
    capsys.readouterr()
    assert embed(inputs, key, tmp_path / "r.zarr", "--random-init", "1") == 2
    assert "random_init: 0 in the cache, 1 now" in capsys.readouterr().err
    assert embed(inputs, key, tmp_path / "r.zarr", "--random-init", "0") == 0  # the same command: nothing to do
    assert "already complete" in capsys.readouterr().out
