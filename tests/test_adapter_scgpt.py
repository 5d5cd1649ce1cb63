"""The scGPT adapter on a tiny random checkpoint in the real layout: gene tokens worked by hand, context
embeddings against torch's own TransformerEncoderLayer, binning on a hand-made vector, strict loading."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dogmacache.embed.adapters import get_adapter
from dogmacache.embed.adapters.scgpt_context import ScGPTContextAdapter, ScgptContextOptions, bin_expression
from dogmacache.embed.adapters.scgpt_gene import ScGPTGeneAdapter, ScgptGeneOptions
from dogmacache.embed.adapters.scgpt_model import write_tiny_scgpt
from dogmacache.embed.adapters.weights import weights_digest
from dogmacache.errors import InputError, ModelError
from torch import nn

GENES = ["TP53", "GAPDH", "ACTB", "MYC", "CD4", "ALB", "EGFR", "KRAS"]
CPU = torch.device("cpu")


def gene(folder, **options) -> ScGPTGeneAdapter:
    return ScGPTGeneAdapter(str(folder), ScgptGeneOptions(**options), CPU)


def context(folder, **options) -> ScGPTContextAdapter:
    return ScGPTContextAdapter(str(folder), ScgptContextOptions(**options), CPU)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_scgpt(tmp_path_factory.mktemp("scgpt") / "tiny", GENES, seed=3)


def copy_folder(src, dst, state=None):
    dst.mkdir()
    for name in ("vocab.json", "args.json"):
        (dst / name).write_text((src / name).read_text())
    torch.save(state if state is not None else torch.load(src / "best_model.pt"), dst / "best_model.pt")
    return dst


PROFILES = [
    {"id": "liver", "TP53": 3.0, "GAPDH": 120.0, "NOTAGENE": 5.0, "ACTB": 0.0, "MYC": 7.5, "ALB": 900.0},
    {"id": "lung", "TP53": 1.0, "GAPDH": 80.0, "NOTAGENE": 0.0, "ACTB": 40.0, "MYC": 0.0, "ALB": 0.0},
]


# ---- gene modality ---------------------------------------------------------------------------------------
def test_gene_embedding_is_layernormed_token_row_then_unit_length(tiny):
    adapter = gene(tiny)
    state, vocab = torch.load(tiny / "best_model.pt"), json.loads((tiny / "vocab.json").read_text())
    batch = [adapter.prepare({"id": s}) for s in ("MYC", "TP53")]
    assert [adapter.n_tokens(p) for p in batch] == [1, 1]
    out, extras = adapter.embed(batch)
    assert out.shape == (2, 32) and extras == {}
    for i, symbol in enumerate(("MYC", "TP53")):
        row = state["encoder.embedding.weight"][vocab[symbol]].double()
        centred = row - row.mean()
        normed = centred / torch.sqrt((centred**2).mean() + 1e-5)  # LayerNorm: biased variance, eps 1e-5
        by_hand = normed * state["encoder.enc_norm.weight"].double() + state["encoder.enc_norm.bias"].double()
        by_hand = by_hand / by_hand.norm()
        torch.testing.assert_close(out[i].double(), by_hand, atol=1e-6, rtol=1e-5)
    raw, _ = gene(tiny, l2=False).embed(batch)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(F.normalize(raw, dim=-1), out)


def test_gene_info(tiny):
    adapter = gene(tiny)
    info = adapter.info()
    assert (info.layer, info.pooling, info.item_shape) == ("gene_embedding+enc_norm", "token", (32,))
    assert info.extras == ()
    assert info.model_revision == weights_digest(str(tiny / "best_model.pt")) and info.model == tiny.name
    assert sorted(info.files) == ["args.json", "best_model.pt", "vocab.json"]
    assert info.files["best_model.pt"] == info.model_revision
    assert info.config["vocab_size"] == len(GENES) + 3 and adapter.options == ScgptGeneOptions(l2=True)
    assert info.config["ignored_checkpoint_modules"] == ["decoder", "flag_encoder", "mvc_decoder"]


def test_unknown_symbols_reported(tiny):
    adapter = gene(tiny)
    assert adapter.checkpoint.missing_symbols(["TP53", "FOO1", "MYC", "BAR2", "FOO1"]) == ["FOO1", "BAR2"]
    assert adapter.checkpoint.missing_symbols(GENES) == []
    import pandas as pd

    adapter.check_table(pd.DataFrame({"id": GENES}))  # all known: no error
    with pytest.raises(ModelError, match=r"2 gene symbols are not in the scGPT vocabulary .*'FOO1', 'BAR2' \(2\)"):
        adapter.check_table(pd.DataFrame({"id": ["TP53", "FOO1", "BAR2"]}))  # every missing one, before any work
    with pytest.raises(ModelError, match=r"'FOO1'.*--rna-vocab"):
        adapter.prepare({"id": "FOO1"})
    # the vocabulary's special tokens are in it but are no genes: a row naming one would embed <pad>
    assert adapter.checkpoint.missing_symbols(["<pad>", "TP53"]) == ["<pad>"]
    with pytest.raises(ModelError, match=r"'<pad>', '<cls>' \(2\): special tokens of the scGPT vocabulary, not gene"):
        adapter.check_table(pd.DataFrame({"id": ["TP53", "<pad>", "<cls>"]}))
    with pytest.raises(ModelError, match=r"'<eoc>' is not in the scGPT vocabulary"):
        adapter.prepare({"id": "<eoc>"})
    # a profile column named like a special token is no gene either: counted missing, not embedded
    with_cls = context(tiny).prepare({**PROFILES[0], "<cls>": 5.0})
    assert with_cls["genes"].tolist() == context(tiny).prepare(PROFILES[0])["genes"].tolist()
    assert int(with_cls["n_missing"]) == 2


# ---- binning ---------------------------------------------------------------------------------------------
def test_binning_by_hand():
    # non-zero values 1..10, n_bins 5: edges = quantiles at 0, 1/3, 2/3, 1 = [1, 4, 7, 10]
    values = np.array([0, 1, 2, 3, 4, 5, 0, 6, 7, 8, 9, 10], dtype=float)
    binned = bin_expression(values, 5, np.random.default_rng(0))
    assert binned.tolist() == [0, 1, 1, 1, 2, 2, 0, 2, 3, 3, 3, 4]
    assert bin_expression(np.zeros(4), 51, np.random.default_rng(0)).tolist() == [0, 0, 0, 0]


def test_binning_spreads_ties_at_random_within_the_tied_bins():
    values = np.array([5.0] * 200 + [0.0])  # all edges equal 5: every non-zero value may take bins 1..4
    a = bin_expression(values, 5, np.random.default_rng(1))
    assert a[-1] == 0 and set(a[:-1].tolist()) == {1, 2, 3, 4}
    assert np.array_equal(a, bin_expression(values, 5, np.random.default_rng(1)))


# ---- context modality ------------------------------------------------------------------------------------
def test_prepare_profile_drops_zeros_and_unknowns_and_caps_by_expression(tiny):
    vocab = json.loads((tiny / "vocab.json").read_text())
    liver = context(tiny).prepare(PROFILES[0])
    assert liver["genes"].tolist() == [vocab["<cls>"]] + [vocab[g] for g in ("TP53", "GAPDH", "MYC", "ALB")]
    # sorted non-zero values [3, 7.5, 120, 900]; 51 bins: 50 edges at ranks 3k/49, k = 0..49. 3 is edge 0 -> bin 1,
    # 900 edge 49 -> bin 50; 7.5 (rank 1) lies above edges k <= 16 -> bin 17; 120 (rank 2) above k <= 32 -> bin 33
    assert liver["values"].tolist() == [-2.0, 1.0, 33.0, 17.0, 50.0]
    assert (int(liver["n_genes"]), int(liver["n_missing"])) == (4, 1)
    capped_adapter = context(tiny, max_genes=2)
    capped = capped_adapter.prepare(PROFILES[0])
    assert capped["genes"].tolist() == [vocab["<cls>"], vocab["GAPDH"], vocab["ALB"]]  # two highest, column order
    assert capped["values"].tolist() == [-2.0, 33.0, 50.0]  # binned before the cap, as scGPT does
    assert capped_adapter.n_tokens(capped) == 3
    with pytest.raises(InputError, match="'empty'"):
        capped_adapter.prepare({"id": "empty", "TP53": 0.0, "NOTAGENE": 4.0})
    with pytest.raises(InputError, match="'MYC'"):
        capped_adapter.prepare({"id": "bad", "TP53": 1.0, "MYC": -1.0})


def reference_cls(tiny, batch):
    """The <cls> outputs computed with torch.nn.TransformerEncoderLayer and weights copied from the file."""
    state, args = torch.load(tiny / "best_model.pt"), json.loads((tiny / "args.json").read_text())
    d = args["embsize"]
    layers = []
    for i in range(args["nlayers"]):
        layer = nn.TransformerEncoderLayer(d, args["nheads"], args["d_hid"], dropout=0.0, batch_first=True)
        p = f"transformer_encoder.layers.{i}."
        layer.load_state_dict(
            {
                "self_attn.in_proj_weight": state[p + "self_attn.Wqkv.weight"],
                "self_attn.in_proj_bias": state[p + "self_attn.Wqkv.bias"],
                **{
                    k: state[p + k]
                    for k in (
                        "self_attn.out_proj.weight",
                        "self_attn.out_proj.bias",
                        "linear1.weight",
                        "linear1.bias",
                        "linear2.weight",
                        "linear2.bias",
                        "norm1.weight",
                        "norm1.bias",
                        "norm2.weight",
                        "norm2.bias",
                    )
                },
            }
        )
        layers.append(layer.eval())
    vocab = json.loads((tiny / "vocab.json").read_text())
    length = max(len(p["genes"]) for p in batch)
    genes = torch.full((len(batch), length), vocab["<pad>"])
    values = torch.full((len(batch), length), -2.0)
    for i, p in enumerate(batch):
        genes[i, : len(p["genes"])] = torch.from_numpy(p["genes"])
        values[i, : len(p["values"])] = torch.from_numpy(p["values"])
    gene_emb = F.layer_norm(
        state["encoder.embedding.weight"][genes], (d,), state["encoder.enc_norm.weight"], state["encoder.enc_norm.bias"]
    )
    hidden = F.relu(
        F.linear(values[..., None], state["value_encoder.linear1.weight"], state["value_encoder.linear1.bias"])
    )
    value_emb = F.layer_norm(
        F.linear(hidden, state["value_encoder.linear2.weight"], state["value_encoder.linear2.bias"]),
        (d,),
        state["value_encoder.norm.weight"],
        state["value_encoder.norm.bias"],
    )
    x = gene_emb + value_emb
    with torch.no_grad():
        for layer in layers:
            x = layer(x, src_key_padding_mask=genes.eq(vocab["<pad>"]))
    return F.normalize(x[:, 0], dim=-1)


def test_context_matches_torch_transformer_encoder_layer(tiny):
    adapter = context(tiny)
    batch = [adapter.prepare(p) for p in PROFILES]
    assert [adapter.n_tokens(p) for p in batch] == [5, 4]  # different lengths: padding is exercised
    out, extras = adapter.embed(batch)
    assert out.shape == (2, 32)
    torch.testing.assert_close(out, reference_cls(tiny, batch), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    assert extras["n_genes"].tolist() == [4, 3] and extras["n_missing"].tolist() == [1, 1]
    alone, _ = adapter.embed(batch[1:])  # padding must not change an item's embedding
    torch.testing.assert_close(alone[0], out[1], atol=2e-6, rtol=1e-5)
    assert not torch.allclose(out[0], out[1], atol=1e-3)


def test_context_info(tiny):
    adapter = context(tiny, max_genes=600)
    info = adapter.info()
    assert (info.layer, info.pooling, info.item_shape) == ("cls_last_layer", "cls", (32,))
    assert [e.name for e in info.extras] == ["n_genes", "n_missing"]
    assert (adapter.options.max_genes, info.config["n_bins"], info.config["pad_value"]) == (600, 51, -2)


def test_flash_and_plain_key_layouts_give_identical_outputs(tiny, tmp_path):
    state = torch.load(tiny / "best_model.pt")
    assert any(".self_attn.Wqkv." in k for k in state)
    plain = {k.replace("self_attn.Wqkv.", "self_attn.in_proj_"): v for k, v in state.items()}
    plain_dir = copy_folder(tiny, tmp_path / "plain", plain)
    flash_adapter = context(tiny)
    plain_adapter = context(plain_dir)
    batch = [flash_adapter.prepare(p) for p in PROFILES]
    flash_out, _ = flash_adapter.embed(batch)
    plain_out, _ = plain_adapter.embed(batch)
    assert torch.equal(flash_out, plain_out)


# ---- strict loading and folder errors --------------------------------------------------------------------
def test_missing_transformer_key_is_named(tiny, tmp_path):
    state = torch.load(tiny / "best_model.pt")
    del state["transformer_encoder.layers.1.linear2.bias"]
    broken = copy_folder(tiny, tmp_path / "broken", state)
    with pytest.raises(ModelError, match=r"1 missing \(e\.g\. transformer_encoder\.layers\.1\.linear2\.bias\)"):
        gene(broken)


def test_unexpected_and_unknown_keys_are_named(tiny, tmp_path):
    state = torch.load(tiny / "best_model.pt")
    extra_layer = dict(state, **{"transformer_encoder.layers.2.norm1.weight": torch.ones(32)})
    with pytest.raises(ModelError, match=r"1 unexpected \(e\.g\. transformer_encoder\.layers\.2\.norm1\.weight\)"):
        gene(copy_folder(tiny, tmp_path / "extra", extra_layer))
    dsbn = dict(state, **{"dsbn.bns.0.weight": torch.ones(32)})
    with pytest.raises(ModelError, match=r"'dsbn\.bns\.0\.weight'"):
        gene(copy_folder(tiny, tmp_path / "dsbn", dsbn))


def test_shape_mismatch_with_args_is_named(tiny, tmp_path):
    folder = copy_folder(tiny, tmp_path / "wide")
    args = json.loads((folder / "args.json").read_text())
    (folder / "args.json").write_text(json.dumps(dict(args, d_hid=128)))
    shapes = r"transformer_encoder\.layers\.0\.linear1\.weight 64x32 \(the model's: 128x32\)"
    with pytest.raises(ModelError, match=shapes):
        gene(folder)


def test_folder_errors(tiny, tmp_path):
    folder = copy_folder(tiny, tmp_path / "novocab")
    (folder / "vocab.json").unlink()
    with pytest.raises(ModelError, match=r"lacks vocab\.json"):
        gene(folder)
    with pytest.raises(ModelError, match="not found"):
        gene(tmp_path / "nowhere")
    style = copy_folder(tiny, tmp_path / "category")
    args = json.loads((style / "args.json").read_text())
    (style / "args.json").write_text(json.dumps(dict(args, input_emb_style="category")))
    with pytest.raises(ModelError, match="'category'"):
        gene(style)
    with pytest.raises(ModelError, match=r"model 'scgpt' embeds gene, context, not --modality protein"):
        get_adapter("scgpt", "protein")


# ---- options ---------------------------------------------------------------------------------------------
def test_options_refuse_unknown_keys_and_bad_values():
    assert ScgptContextOptions.from_dict({"max_genes": 600}) == ScgptContextOptions(l2=True, max_genes=600, bin_seed=0)
    with pytest.raises(InputError, match=r"ScgptGeneOptions has no option 'max_genes'; known: l2\b"):
        ScgptGeneOptions.from_dict({"max_genes": 600})  # a context option is no gene option
    with pytest.raises(InputError, match=r"no option 'maxgenes'; known: l2, max_genes, bin_seed"):
        ScgptContextOptions.from_dict({"maxgenes": 600})
    with pytest.raises(InputError, match=r"--scgpt-max-genes is 0; it must be at least 1"):
        ScgptContextOptions(max_genes=0)


def test_revision_is_refused_for_a_local_folder(tiny):
    with pytest.raises(ModelError, match=r"--revision 'v2' does not apply"):
        ScGPTGeneAdapter(str(tiny), ScgptGeneOptions(), CPU, revision="v2")


def test_context_profiles_reused_from_a_cache_keep_a_full_embeds_bytes(tmp_path):
    """Profiles of many lengths are batched by length bucket and padded to it, so a profile's numbers do not depend
    on its batch mates: rows copied by --reuse equal the ones a full embed computes (in row-order batches padded
    to their longest, reused rows differed by 1.2e-7)."""
    import pandas as pd
    from dogmacache.cache import open_cache
    from dogmacache.embed.runner import EmbedConfig, run_embed

    names = [f"G{i}" for i in range(60)]
    folder = write_tiny_scgpt(tmp_path / "scgpt", names)
    rng = np.random.default_rng(0)
    profiles = rng.gamma(1.0, 2.0, (50, 60)) * (rng.random((50, 60)) < rng.uniform(0.1, 0.9, (50, 1)))

    def table(rows, prefix, path):
        frame = pd.DataFrame(profiles[rows], columns=names)
        frame.insert(0, "id", [f"{prefix}{i}" for i in range(len(rows))])
        frame.to_parquet(path)

    table(np.arange(40), "o", tmp_path / "old.parquet")
    table(np.r_[np.arange(10, 40)[::-1], np.arange(40, 50)], "n", tmp_path / "new.parquet")

    def embed(name, out, **kwargs):
        config = EmbedConfig(
            input=str(tmp_path / f"{name}.parquet"),
            modality="context",
            model="scgpt",
            out=str(tmp_path / out),
            model_path=str(folder),
            device="cpu",
            dtype="float32",
            shard_items=8,
            num_workers=0,
            progress=False,
            **kwargs,
        )
        return run_embed(config)

    embed("old", "old")
    embed("new", "full")
    assert embed("new", "reused", reuse=(str(tmp_path / "old"),))["reused"] == 30
    full, reused = open_cache(tmp_path / "full"), open_cache(tmp_path / "reused")
    assert np.array_equal(full[:].view(np.uint8), reused[:].view(np.uint8))
    assert full.manifest.shards == reused.manifest.shards
    # a cache written before the buckets (no `batching` in its manifest) is neither copied from nor resumed
    import zarr

    group = zarr.open_group(str(tmp_path / "old"), mode="r+")
    attrs = dict(group.attrs["dogmacache"])
    attrs["config"] = {k: v for k, v in attrs["config"].items() if k != "batching"}
    group.attrs["dogmacache"] = attrs
    assert embed("new", "again", reuse=(str(tmp_path / "old"),))["reused"] == 0
    adapter = context(folder)
    lone = adapter.filler(64)
    assert len(lone["genes"]) == 64 and adapter.shape_bucket(lone) == 64 and int(lone["n_genes"]) == 63
