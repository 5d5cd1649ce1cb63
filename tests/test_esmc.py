"""ESM-C rebuilt natively (`embed/adapters/esmc_model.py`, adapter `esmc`): the `esm` package's own outputs for
seeded weights (tests/data/esmc_reference.npz, written by `make esmc-reference`) reproduced without `esm`; the
strict load of the published file layout; per-residue and pooled outputs; truncation; a cache via run_embed."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from dogmacache.bench.esmc_reference import checksums, draw_weights
from dogmacache.cache import open_cache
from dogmacache.cli import main
from dogmacache.embed import tiny as tiny_models
from dogmacache.embed.adapters import get_adapter
from dogmacache.embed.adapters.esmc import DEFAULT_MAX_TOKENS, EsmcAdapter, EsmcOptions
from dogmacache.embed.adapters.esmc_model import SIZES, EsmcArch, EsmcModel, write_tiny_esmc
from dogmacache.embed.runner import EmbedConfig, run_embed
from dogmacache.errors import InputError, ModelError

FIXTURE = Path(__file__).parent / "data" / "esmc_reference.npz"
CPU = torch.device("cpu")
PROTEINS = {"p1": "MKTAYIAKQRQISFVKSHFSRQ", "p2": "ACDEFGHIKLMNPQRSTVWY", "p3": "MKV"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_esmc(tmp_path_factory.mktemp("esmc") / "tiny", seed=2)


def adapter(folder, **options) -> EsmcAdapter:
    return EsmcAdapter(str(folder), EsmcOptions(**options), CPU)


def embed(model: EsmcAdapter, sequences) -> tuple[torch.Tensor, dict]:
    return model.embed([model.prepare({"id": str(i), "sequence": s}) for i, s in enumerate(sequences)])


def test_native_model_reproduces_the_esm_package_outputs():
    """esm 3.2.3's ESMC with these weights gave the fixture's numbers; the native model must give them too."""
    reference = dict(np.load(FIXTURE))
    model = EsmcModel(EsmcArch(*(int(x) for x in reference["sizes"])))
    assert sorted(model.state_dict()) == list(reference["keys"])  # esm's module names, key for key
    drawn = draw_weights({k: tuple(v.shape) for k, v in model.state_dict().items()}, int(reference["seed"]))
    np.testing.assert_allclose(checksums(drawn), reference["checksums"], rtol=1e-6)  # the same draw as esm's side
    model.load_state_dict({k: torch.from_numpy(v) for k, v in drawn.items()}, strict=True)
    tokens = torch.from_numpy(reference["tokens"])
    real = tokens > 2  # residues: not <cls>, <pad>, <eos>
    with torch.no_grad():
        final = model(tokens).numpy()
        hidden = [model(tokens, layer=k).numpy() for k in range(1, model.arch.n_layers + 1)]
        logits = model.logits(tokens).numpy()
    keep = (tokens != 1).numpy()  # logits at <cls>/<eos> too
    np.testing.assert_allclose(final[real], reference["embeddings"][real], atol=1e-5)
    for k, ours in enumerate(hidden):
        np.testing.assert_allclose(ours[real], reference["hidden_states"][k][real], atol=1e-5)
    np.testing.assert_allclose(logits[keep], reference["logits"][keep], atol=1e-5)
    assert np.abs(final[real]).mean() > 0.1  # not a vacuous match on zeros


def test_adapter_on_the_reference_weights_matches_esm(tmp_path):
    """The same weights saved in the published layout, loaded through the adapter's strict path."""
    reference = dict(np.load(FIXTURE))
    d_model, n_heads, n_layers = (int(x) for x in reference["sizes"])
    folder = tmp_path / "ref"
    (folder / "data/weights").mkdir(parents=True)
    shapes = {k: tuple(v.shape) for k, v in EsmcModel(EsmcArch(d_model, n_heads, n_layers)).state_dict().items()}
    state = {k: torch.from_numpy(v) for k, v in draw_weights(shapes, int(reference["seed"])).items()}
    torch.save(state, folder / "data/weights/esmc_ref.pth")
    (folder / "config.json").write_text(json.dumps({"d_model": d_model, "n_heads": n_heads, "n_layers": n_layers}))
    out, extras = embed(adapter(folder, pooling="none"), reference["sequences"])
    real = reference["tokens"] > 2
    length = real.shape[1]
    assert (extras["mask"][:, :length] == real).all() and not extras["mask"][:, length:].any()
    np.testing.assert_allclose(out.numpy()[:, :length][real], reference["embeddings"][real], atol=1e-5)


def test_tiny_loads_strictly_and_a_missing_key_is_a_one_line_error(tiny, tmp_path):
    model = adapter(tiny)
    info = model.info()
    assert info.model == "tiny" and info.model_revision == info.files["data/weights/esmc_tiny.pth"]
    assert info.config["architecture"] == {"d_model": 32, "n_heads": 2, "n_layers": 2}
    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    weights = broken / "data/weights/esmc_tiny.pth"
    state = torch.load(weights)
    del state["transformer.blocks.1.attn.q_ln.weight"]
    torch.save(state, weights)
    with pytest.raises(
        ModelError, match=r"is not an ESM-C .*: 1 missing \(e\.g\. transformer\.blocks\.1\.attn\.q_ln\.weight\)"
    ) as err:
        adapter(broken)
    assert "\n" not in str(err.value)


def test_published_sizes_and_folder_errors(tiny, tmp_path):
    """300M and 600M as esm builds them; a folder with the other size's file, or none, is refused by name."""
    with torch.device("meta"):  # shapes only
        counts = {name: sum(p.numel() for p in EsmcModel(size.arch).parameters()) for name, size in SIZES.items()}
    assert counts == {"300m": 332_997_184, "600m": 575_036_992}
    assert EsmcOptions().size == "300m" and SIZES["300m"].hub_id == "EvolutionaryScale/esmc-300m-2024-12"
    other = tmp_path / "other"
    (other / "data/weights").mkdir(parents=True)
    (other / "data/weights/esmc_600m_2024_12_v0.pth").write_bytes(b"")
    with pytest.raises(ModelError, match=r"holds the ESM-C 600M weights; pass --esmc-size 600m"):
        adapter(other)
    with pytest.raises(ModelError, match=r"holds 0 .pth files under data/weights/"):
        adapter(tmp_path)
    wrong = tmp_path / "wrong"
    shutil.copytree(tiny, wrong)
    (wrong / "config.json").write_text(json.dumps({"d_model": 64, "n_heads": 2, "n_layers": 2}))
    with pytest.raises(ModelError, match=r"27 of another shape \(e\.g\. embed\.weight 64x32 \(the model's: 64x64\), "):
        adapter(wrong)


def test_per_residue_and_pooled_outputs_agree(tiny):
    sequences = list(PROTEINS.values())
    per_residue, extras = embed(adapter(tiny, pooling="none", max_length=32), sequences)
    assert per_residue.shape == (3, 32, 32) and extras["mask"].shape == (3, 32)
    assert extras["mask"].sum(1).tolist() == [len(s) for s in sequences]  # residues only: no <cls>, <eos>
    assert extras["n_tokens"].tolist() == [len(s) + 2 for s in sequences]
    pooled, _ = embed(adapter(tiny, max_length=32), sequences)
    assert pooled.shape == (3, 32)
    mask = torch.from_numpy(extras["mask"]).unsqueeze(-1)
    torch.testing.assert_close(pooled, (per_residue * mask).sum(1) / mask.sum(1))
    cls, _ = embed(adapter(tiny, pooling="cls"), sequences)
    alone, _ = embed(adapter(tiny, pooling="cls"), sequences[2:])  # padding in a batch changes nothing
    torch.testing.assert_close(cls[2:], alone, atol=1e-5, rtol=1e-5)
    first, _ = embed(adapter(tiny, layer=0), sequences)
    second, _ = embed(adapter(tiny, layer=2), sequences)
    assert not torch.allclose(first, second) and not torch.allclose(second, pooled)  # layers differ from -1


def test_truncation_keeps_eos_and_counts_what_was_cut(tiny):
    model = adapter(tiny, max_length=6)
    prepared = model.prepare({"id": "p", "sequence": "MKTAYIAKQ"})
    assert prepared["ids"].tolist()[0] == 0 and prepared["ids"].tolist()[-1] == 2 and len(prepared["ids"]) == 6
    assert int(prepared["n_truncated"]) == 5 and model.info().config["truncation"] == "first 6 tokens incl. specials"
    assert adapter(tiny).options.max_length == DEFAULT_MAX_TOKENS
    with pytest.raises(ModelError, match=r"--layer 3 does not exist; the model has layers 0..2"):
        adapter(tiny, layer=3)
    with pytest.raises(InputError, match=r"--max-length 2 keeps no residue"):
        EsmcOptions(max_length=2)
    with pytest.raises(InputError, match=r"not amino acids"):
        model.prepare({"id": "bad", "sequence": "MK1V"})


def test_proteins_embed_into_a_cache(tmp_path, capsys, monkeypatch):
    assert get_adapter("esmc", "protein") is EsmcAdapter
    assert main(["models", "list"]) == 0 and "esmc" in capsys.readouterr().out
    for other in ("enformer", "esm2", "nucleotide_transformer", "scgpt"):  # only ESM-C's writer runs here
        monkeypatch.setattr(tiny_models, f"write_tiny_{other}", lambda directory, *args: directory)
    folder = tiny_models.make_tiny(tmp_path / "models")["esmc"]  # `models make-tiny`'s folder, loaded as is
    pd.DataFrame({"id": list(PROTEINS), "sequence": list(PROTEINS.values())}).to_parquet(tmp_path / "p.parquet")
    config = EmbedConfig(
        input=str(tmp_path / "p.parquet"),
        modality="protein",
        model="esmc",
        out=str(tmp_path / "c.zarr"),
        model_path=str(folder),
        device="cpu",
        num_workers=0,
        progress=False,
        dtype="float32",
        options=EsmcOptions(pooling="none", max_length=24),
    )
    run_embed(config)
    cache = open_cache(tmp_path / "c.zarr")
    assert len(cache) == 3 and cache.item_shape == (24, 32)
    recorded = cache.manifest.config
    assert recorded["options"] == {"size": "300m", "layer": -1, "pooling": "none", "max_length": 24}
    assert "data/weights/esmc_tiny.pth" in recorded["model_files"]
    direct, _ = embed(adapter(folder, pooling="none", max_length=24), [PROTEINS["p2"]])
    np.testing.assert_allclose(cache.get(["p2"])[0], direct[0].numpy(), atol=1e-6)


def test_random_init_needs_no_weights_file_and_draws_as_the_tiny_writer(tiny, tmp_path):
    """`--random-init SEED` builds the sizes of config.json and draws as `write_tiny_esmc(seed=SEED)` did."""
    bare = tmp_path / "bare"
    shutil.copytree(tiny, bare, ignore=shutil.ignore_patterns("*.pth"))
    random = EsmcAdapter(str(bare), EsmcOptions(), CPU, random_init=2)
    assert random.info().model_revision == "random_init:2" and list(random.info().files) == ["config.json"]
    sequences = list(PROTEINS.values())
    torch.testing.assert_close(embed(random, sequences)[0], embed(adapter(tiny), sequences)[0])  # tiny: seed 2
    other = EsmcAdapter(str(bare), EsmcOptions(), CPU, random_init=3)
    assert not torch.allclose(embed(other, sequences)[0], embed(random, sequences)[0])


def test_the_layer_flag_is_a_number_through_the_cli(tiny, tmp_path, capsys):
    """`--layer` is text on the command line for every model: ESM-C reads it as a layer number, and other text is
    one line."""
    table = tmp_path / "p.parquet"
    pd.DataFrame({"id": list(PROTEINS), "sequence": list(PROTEINS.values())}).to_parquet(table)
    base = ["embed", "--modality", "protein", "--model", "esmc", "--input", str(table), "--model-path", str(tiny)]
    base += ["--device", "cpu", "--no-progress"]
    assert main([*base, "--layer", "1", "--out", str(tmp_path / "one.zarr")]) == 0
    assert open_cache(tmp_path / "one.zarr").manifest.config["options"]["layer"] == 1
    capsys.readouterr()
    assert main([*base, "--layer", "x", "--out", str(tmp_path / "x.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.endswith(
            "--layer 'x' is not a layer number; ESM-family layers are -1 (the last, after the final "
            "LayerNorm) or k (0 = the embedding output)"
        )
        and "\n" not in err
    )
    assert main([*base, "--layers", "0,1", "--out", str(tmp_path / "{layer}.zarr")]) == 2
    assert "it embeds one --layer per run: run it once per layer; drop --layers" in capsys.readouterr().err
