"""Importing the CDT authors' `CDTv33Model` state dict: their names and shapes (as spelled in their notebook),
read three ways; the imported model computes what the original did; bad keys are refused by name."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from dogmacache.contracts.provenance import file_sha256
from dogmacache.errors import InputError
from dogmacache.train.tasks.cdt.authors import (
    config_from_authors,
    import_authors_checkpoint,
    map_authors_state_dict,
    read_authors_state_dict,
)
from dogmacache.train.tasks.cdt.model import CentralDogmaTransformer
from dogmacache.train.tasks.cdt.sizes import PAPER, TINY, CDTConfig

# Our name -> theirs, written independently of train/tasks/cdt/authors.py from CDTv33Model in the authors' notebook
# (github nobusama/CDT, notebooks/CDT_Training.ipynb), so a wrong table there fails here.
TO_THEIRS = [
    (r"^(dna|rna|protein)_projection\.", r"\1_projector."),
    (r"^(dna|rna|protein)_self_attention\.(\d+)\.attention\.", r"\1_self_attn_layers.\2.self_attn."),
    (r"^(dna|rna|protein)_self_attention\.", r"\1_self_attn_layers."),
    (r"^(dna_to_rna|rna_to_protein)\.attention\.", r"\1.cross_attn."),
    (r"\.ffn\.expand\.", ".ffn.0."),
    (r"\.ffn\.contract\.", ".ffn.3."),
    (r"^vce\.(dna|rna|protein)\.query$", r"vce.\1_query"),
    (r"^vce\.(dna|rna|protein)\.attention\.", r"vce.\1_attn."),
    (r"^vce\.expand\.", "vce.fusion.0."),
    (r"^vce\.contract\.", "vce.fusion.3."),
    (r"^vce\.norm\.", "vce.fusion.4."),
    (r"^head\.hidden\.", "task_layer.0."),
    (r"^head\.output\.", "task_layer.3."),
]


def their_name(ours: str) -> str:
    for pattern, replacement in TO_THEIRS:
        ours = re.sub(pattern, replacement, ours)
    return ours


def authors_state_dict(model: CentralDogmaTransformer) -> dict[str, torch.Tensor]:
    """The state dict `CDTv33Model` would hold with these weights: their names, VCE queries (1, 1, D)."""
    return {
        their_name(k): v.clone().unsqueeze(0) if k.endswith(".query") else v.clone()
        for k, v in model.state_dict().items()
    }


@pytest.fixture(scope="module")
def original():
    """A tiny model with every tensor distinct: fresh LayerNorms (all ones) and zero biases would let two
    swapped names import unnoticed."""
    torch.manual_seed(0)
    model = CentralDogmaTransformer(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def saved(original, tmp_path_factory):
    path = tmp_path_factory.mktemp("authors") / "cdt_v3_3_1_best.pt"
    torch.save(authors_state_dict(original), path)
    return path


def inputs(config: CDTConfig, batch: int = 3):
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(batch, config.dna_positions, config.dna_width, generator=g),  # dna (B, L, D_dna)
        torch.randn(config.n_genes, config.rna_width, generator=g),  # rna (G, D_rna)
        torch.randn(config.n_genes, config.protein_width, generator=g),  # protein (G, D_prot)
    )


def test_builder_spells_their_names_and_shapes(original):
    theirs = authors_state_dict(original)
    d, g = TINY.d_model, TINY.n_genes
    spelled = {  # literally as in CDTv33Model and its submodules
        "dna_projector.linear.weight": (d, TINY.dna_width),
        "protein_projector.norm.bias": (d,),
        "dna_self_attn_layers.1.self_attn.in_proj_weight": (3 * d, d),
        "rna_self_attn_layers.0.ffn.3.weight": (d, 4 * d),
        "protein_self_attn_layers.0.norm2.bias": (d,),
        "dna_to_rna.cross_attn.out_proj.weight": (d, d),
        "rna_to_protein.ffn.0.bias": (4 * d,),
        "vce.dna_query": (1, 1, d),
        "vce.protein_attn.in_proj_bias": (3 * d,),
        "vce.fusion.0.weight": (2 * d, 3 * d),
        "vce.fusion.4.weight": (d,),
        "task_layer.3.bias": (g,),
    }
    assert {k: tuple(theirs[k].shape) for k in spelled} == spelled
    assert len(theirs) == len(original.state_dict()) == 109


@pytest.mark.parametrize("held_under", [None, "model_state_dict", "state_dict"])
def test_import_computes_what_the_original_did(original, tmp_path, held_under):
    theirs = authors_state_dict(original)
    src = tmp_path / "theirs.pt"
    torch.save(theirs if held_under is None else {held_under: theirs, "epoch": 7}, src)
    summary = import_authors_checkpoint(src, tmp_path / "ours.pt", n_heads=TINY.n_heads, dna_positions=8)
    assert summary["n_parameters"] == 103_427  # presets.py: tiny

    checkpoint = torch.load(tmp_path / "ours.pt", weights_only=False)
    assert set(checkpoint) == {
        "format",
        "task",
        "model_class",
        "model_config",
        "model",
        "config",
        "fingerprints",
        "versions",
        "source",
    }
    assert checkpoint["format"] == "dogmacache-checkpoint-1" and checkpoint["task"] == "cdt"
    assert checkpoint["model_class"] == "CentralDogmaTransformer" and checkpoint["config"] is None
    assert checkpoint["source"] == {"from": "cdt-authors", "file": str(src), "sha256": file_sha256(src)}
    assert CDTConfig.from_dict(checkpoint["model_config"]) == TINY
    model = CentralDogmaTransformer(CDTConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"], strict=True)
    with torch.no_grad():
        got, want = model.eval().predict_all_genes(*inputs(TINY)), original.predict_all_genes(*inputs(TINY))
    assert got.shape == (3, TINY.n_genes)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # the temporary file renamed


def test_ddp_prefix_is_dropped(original, tmp_path):
    src = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in authors_state_dict(original).items()}, src)
    state = read_authors_state_dict(src)
    assert len(state) == 109 and "vce.dna_query" in state


def test_sizes_are_read_from_the_tensors_at_paper_size():
    with torch.device("meta"):  # 60M parameters, no memory
        theirs = authors_state_dict(CentralDogmaTransformer(PAPER))
    config = config_from_authors(theirs, dna_positions=896)
    assert config == PAPER
    assert sum(t.numel() for t in map_authors_state_dict(theirs, config).values()) == 60_093_752


def test_layer_counts_and_multipliers_are_read():
    odd = dataclasses.replace(
        TINY, dna_self_layers=3, rna_self_layers=0, ffn_multiplier=2, vce_hidden_multiplier=3, vce_heads=2
    )
    with torch.device("meta"):
        theirs = authors_state_dict(CentralDogmaTransformer(odd))
    assert config_from_authors(theirs, 8, n_heads=4, vce_heads=2) == odd


def one_line_error(src, tmp_path, **kwargs) -> str:
    with pytest.raises(InputError) as err:
        import_authors_checkpoint(src, tmp_path / "ours.pt", **{"n_heads": 4, "dna_positions": 8, **kwargs})
    assert "\n" not in str(err.value) and str(src) in str(err.value)
    assert not (tmp_path / "ours.pt").exists()
    return str(err.value)


def edited(original, tmp_path, edit):
    theirs = authors_state_dict(original)
    edit(theirs)
    src = tmp_path / "edited.pt"
    torch.save(theirs, src)
    return src


def test_renamed_key_is_refused_by_name(original, tmp_path):
    def rename(s):
        s["dna_to_rna.norm_1.weight"] = s.pop("dna_to_rna.norm1.weight")

    message = one_line_error(edited(original, tmp_path, rename), tmp_path)
    assert "'dna_to_rna.norm1.weight'" in message and "'dna_to_rna.norm_1.weight'" in message


def test_missing_key_is_refused_by_name(original, tmp_path):
    src = edited(original, tmp_path, lambda s: s.pop("vce.rna_attn.out_proj.bias"))
    message = one_line_error(src, tmp_path)
    assert "lacks ['vce.rna_attn.out_proj.bias']" in message


def test_unexpected_key_is_refused_by_name(original, tmp_path):
    def add(s):
        s["vce.cell_query"] = torch.zeros(1, 1, TINY.d_model)

    message = one_line_error(edited(original, tmp_path, add), tmp_path)
    assert "unexpected ['vce.cell_query']" in message


def test_wrong_shape_is_refused_by_name(original, tmp_path):
    def squeeze(s):
        s["vce.rna_query"] = s["vce.rna_query"][0]  # (1, D): ours, not theirs

    message = one_line_error(edited(original, tmp_path, squeeze), tmp_path)
    assert "'vce.rna_query' has shape (1, 32)" in message and "(1, 1, 32)" in message


def test_sizes_no_tensor_holds_must_be_given(saved, tmp_path):
    assert "--dna-positions" in one_line_error(saved, tmp_path, dna_positions=None)
    assert "not divisible by n_heads=5" in one_line_error(saved, tmp_path, n_heads=5)


def test_files_that_hold_no_state_dict_are_refused(tmp_path):
    torch.save({"epoch": 3, "optimizer": {"lr": 1e-4}}, tmp_path / "no_state.pt")
    assert "neither a state dict" in one_line_error(tmp_path / "no_state.pt", tmp_path)
    (tmp_path / "text.pt").write_text("not a torch file\n")
    assert "torch.load" in one_line_error(tmp_path / "text.pt", tmp_path)
    assert "does not exist" in one_line_error(tmp_path / "absent.pt", tmp_path)
