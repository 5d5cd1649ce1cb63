"""Adapter options: typed dataclasses that refuse unknown keys, resolved once against the loaded model and
recorded in the cache manifest; CLI flags turned into the chosen adapter's options; outputs leave the device
in the storage dtype. Tiny models written here (seconds on CPU), inputs made by hand."""

import numpy as np
import pandas as pd
import pytest
import torch
from dogmacache.cache import open_cache
from dogmacache.cli import main
from dogmacache.embed.adapters import get_adapter
from dogmacache.embed.adapters.enformer import EnformerOptions, write_tiny_enformer
from dogmacache.embed.adapters.hf_esm import EsmOptions, NucleotideTransformerOptions
from dogmacache.embed.adapters.scgpt_context import ScgptContextOptions
from dogmacache.embed.adapters.scgpt_gene import ScgptGeneOptions
from dogmacache.embed.adapters.scgpt_model import write_tiny_scgpt
from dogmacache.embed.runner import EmbedConfig, embed_rows, load, resolve, run_embed
from dogmacache.embed.tiny import DEMO_GENES, write_tiny_esm2
from dogmacache.errors import InputError

GENES = ["TP53", "MYC", "ALB"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("options")
    rng = np.random.default_rng(0)
    (root / "g.fa").write_text(">chr1\n" + "".join(rng.choice(list("ACGT"), 5000)) + "\n")
    pd.DataFrame(
        {"id": ["w1", "w2"], "chrom": ["chr1", "chr1"], "center": [1500, 3000], "strand": ["+", "-"]}
    ).to_parquet(root / "dna.parquet")
    pd.DataFrame({"id": ["p1", "p2", "p3"], "sequence": ["MKV", "MKVLA", "ACDEFGHIK"]}).to_parquet(
        root / "protein.parquet"
    )
    pd.DataFrame({"id": GENES}).to_parquet(root / "gene.parquet")
    models = {
        "enformer": write_tiny_enformer(root / "enformer"),
        "esm2": write_tiny_esm2(root / "esm2"),
        "scgpt": write_tiny_scgpt(root / "scgpt", GENES),
    }
    return root, models


def config(inputs, model, modality, out, **kwargs) -> EmbedConfig:
    root, models = inputs
    return EmbedConfig(
        input=str(root / f"{modality}.parquet"),
        modality=modality,
        model=model,
        out=str(out),
        model_path=str(models[model]),
        genome=str(root / "g.fa") if modality == "dna" else None,
        device="cpu",
        num_workers=0,
        progress=False,
        **kwargs,
    )


def test_options_refuse_unknown_keys_naming_the_known_ones():
    with pytest.raises(
        InputError, match=r"EnformerOptions has no option 'window'; known: window_bp, tf_gamma, strand_policy"
    ):
        EnformerOptions.from_dict({"strand_policy": "rc-average", "window": 2048})
    with pytest.raises(InputError, match=r"EsmOptions has no option 'window_bp'; known: layer, pooling, max_length"):
        EsmOptions.from_dict({"window_bp": 6000})  # ESM-2 reads proteins: no window
    assert NucleotideTransformerOptions.from_dict({"window_bp": 5994}).window_bp == 5994
    assert EnformerOptions.from_dict({}) == EnformerOptions(window_bp=None, tf_gamma="auto", strand_policy="forward")
    with pytest.raises(
        InputError, match=r"--pooling 'max' is not one this model takes; expected one of mean, cls, none"
    ):
        EsmOptions(pooling="max")


def test_wrong_options_class_is_refused(inputs, tmp_path):
    with pytest.raises(InputError, match=r"takes EsmOptions, not EnformerOptions"):
        load(config(inputs, "esm2", "protein", tmp_path / "c.zarr", options=EnformerOptions()), torch.device("cpu"))


@pytest.mark.parametrize(
    ("model", "modality", "options", "resolved"),
    [
        (
            "enformer",
            "dna",
            EnformerOptions(strand_policy="rc-average"),
            {"window_bp": 2048, "tf_gamma": "off", "strand_policy": "rc-average", "layer": "trunk"},
        ),  # 8 bins x 256 bp; gamma: 1536 bins only
        ("esm2", "protein", EsmOptions(layer=1, pooling="cls"), {"layer": 1, "pooling": "cls", "max_length": 1024}),
        ("scgpt", "gene", ScgptGeneOptions(l2=False), {"l2": False, "layer": "gene_embedding+enc_norm"}),
    ],
    ids=["enformer", "esm2", "scgpt-gene"],
)
def test_resolved_options_are_recorded_in_the_manifest(inputs, tmp_path, model, modality, options, resolved):
    run_embed(config(inputs, model, modality, tmp_path / "c.zarr", options=options))
    recorded = open_cache(tmp_path / "c.zarr").manifest.config
    assert recorded["options"] == resolved
    assert (recorded["precision"], recorded["device"], recorded["model"]) == ("fp32", "cpu", model)  # auto on CPU
    assert recorded["max_tokens"] > 0  # 0 resolved to the adapter's budget


def test_defaults_resolve_once_into_settings(inputs, tmp_path):
    device = torch.device("cpu")
    cfg = config(inputs, "enformer", "dna", tmp_path / "c.zarr", max_tokens=0, precision="auto")
    _, _, adapter = load(cfg, device)
    settings = resolve(cfg, adapter, device)
    assert (settings.precision, settings.max_tokens) == ("fp32", 1 << 15)  # CPU: 32 kb or one window
    assert settings.options == EnformerOptions(window_bp=2048, tf_gamma="off", strand_policy="forward")
    again = get_adapter("enformer", "dna")(str(inputs[1]["enformer"]), settings.options, device)
    assert again.options == settings.options  # resolving resolved options changes nothing (dask workers do)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_outputs_leave_the_device_in_the_storage_dtype(inputs, tmp_path, dtype):
    device = torch.device("cpu")
    cfg = config(inputs, "esm2", "protein", tmp_path / "c.zarr")
    _, rows, adapter = load(cfg, device)
    out, extras = embed_rows(
        adapter, rows, device=device, precision="fp32", max_tokens=64, max_batch=2, num_workers=0, dtype=dtype
    )
    assert out.shape == (3, 32) and out.dtype.name == dtype and extras["n_tokens"].tolist() == [5, 7, 11]
    full, _ = embed_rows(adapter, rows, device=device, precision="fp32", max_tokens=64, max_batch=2, num_workers=0)
    np.testing.assert_array_equal(out, full.astype(out.dtype))  # the same rounding as a cast on the host


def test_cli_flags_become_the_adapters_options(inputs, tmp_path, capsys):
    root, models = inputs
    base = [
        "embed",
        "--input",
        str(root / "protein.parquet"),
        "--modality",
        "protein",
        "--model",
        "esm2",
        "--model-path",
        str(models["esm2"]),
        "--num-workers",
        "0",
        "--no-progress",
    ]
    assert main([*base, "--out", str(tmp_path / "a.zarr"), "--window-bp", "6000"]) == 2
    assert "--window-bp does not apply to --model esm2 --modality protein" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b.zarr"), "--pooling", "none", "--max-length", "8"]) == 0
    recorded = open_cache(tmp_path / "b.zarr").manifest.config["options"]
    assert recorded == {"layer": -1, "pooling": "none", "max_length": 8}
    # above ESM-2's 1,024 tokens (config.json's 1,026 positions less the 2 its ids start after): refused
    assert main([*base, "--out", str(tmp_path / "c.zarr"), "--max-length", "1025"]) == 2
    said = capsys.readouterr().err
    assert "--max-length 1025 is above this model's limit of 1024 tokens" in said and "give at most 1024" in said
    assert not (tmp_path / "c.zarr").exists()
    gene = [
        "embed",
        "--input",
        str(root / "gene.parquet"),
        "--modality",
        "gene",
        "--model",
        "scgpt",
        "--model-path",
        str(models["scgpt"]),
        "--num-workers",
        "0",
        "--no-progress",
    ]
    assert main([*gene, "--out", str(tmp_path / "c.zarr"), "--scgpt-max-genes", "5"]) == 2
    assert "--scgpt-max-genes does not apply to --model scgpt --modality gene" in capsys.readouterr().err
    assert main([*gene, "--out", str(tmp_path / "d.zarr"), "--scgpt-no-l2"]) == 0
    assert open_cache(tmp_path / "d.zarr").manifest.config["options"] == {
        "l2": False,
        "layer": "gene_embedding+enc_norm",
    }


def test_context_options_reach_the_manifest(tmp_path):
    write_tiny_scgpt(tmp_path / "scgpt", GENES)
    pd.DataFrame({"id": ["liver", "lung"], "TP53": [3.0, 1.0], "MYC": [7.5, 0.0], "ALB": [900.0, 2.0]}).to_parquet(
        tmp_path / "context.parquet"
    )
    cfg = EmbedConfig(
        input=str(tmp_path / "context.parquet"),
        modality="context",
        model="scgpt",
        out=str(tmp_path / "c.zarr"),
        model_path=str(tmp_path / "scgpt"),
        device="cpu",
        num_workers=0,
        progress=False,
        options=ScgptContextOptions(max_genes=2, bin_seed=7),
    )
    run_embed(cfg)
    assert open_cache(tmp_path / "c.zarr").manifest.config["options"] == {
        "l2": True,
        "max_genes": 2,
        "bin_seed": 7,
        "layer": "cls_last_layer",
    }


def test_tiny_scgpt_default_vocabulary_is_the_demo_recipes_genes():
    from dogmacache.data_recipes.make_demo_data import N_GENES

    assert len(DEMO_GENES) == N_GENES == 36 and DEMO_GENES[0] == "DEMO01" and DEMO_GENES[-1] == "DEMO36"


def test_a_window_of_0_bp_and_a_blank_sequence_are_refused():
    """--window-bp 0 is no window for Enformer and Borzoi (only a window left out is the default); a k-mer RNA row
    of blanks is refused as Nucleotide Transformer refuses it."""
    import torch
    from dogmacache.embed.adapters.borzoi import BorzoiOptions
    from dogmacache.embed.adapters.enformer import EnformerOptions
    from dogmacache.embed.adapters.kmer import KmerRnaAdapter, KmerRnaOptions
    from dogmacache.errors import InputError, ModelError

    with pytest.raises(ModelError, match="--window-bp 0 must be a multiple of 128"):
        EnformerOptions(window_bp=0).resolve(896)
    with pytest.raises(ModelError, match="--window-bp 0 must be a multiple of"):
        BorzoiOptions(window_bp=0).resolve(6144, torch.device("cpu"))
    assert EnformerOptions().resolve(896).window_bp == 196_608
    adapter = KmerRnaAdapter(None, KmerRnaOptions(), torch.device("cpu"))
    with pytest.raises(InputError, match="item 'b' has an empty sequence; drop it in the recipe"):
        adapter.prepare({"id": "b", "sequence": "   "})
