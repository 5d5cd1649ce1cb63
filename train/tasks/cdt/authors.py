"""Import a state dict saved by the CDT authors' `CDTv33Model` (github nobusama/CDT, notebooks/CDT_Training.ipynb)
as this project's CDT checkpoint (`dogmacache train import-checkpoint`).

Their model is ours under other names: the same 60,093,752 parameters at paper sizes and the same outputs once
the weights are renamed. Every size is read from the tensors except three no tensor holds: the DNA window
length (their model has no positional parameters), the heads of the attention blocks and of the VCE pools.

| theirs (`CDTv33Model`)                            | ours (`CentralDogmaTransformer`)              |
|---------------------------------------------------|-----------------------------------------------|
| {m}_projector.{linear,norm}                       | {m}_projection.{linear,norm}                  |
| {m}_self_attn_layers.{k}.self_attn                | {m}_self_attention.{k}.attention              |
| {dna_to_rna,rna_to_protein}.cross_attn            | {dna_to_rna,rna_to_protein}.attention         |
| <block>.ffn.0 / .ffn.3 ; <block>.norm1 / .norm2   | <block>.ffn.expand / .ffn.contract ; same     |
| vce.{m}_query (1, 1, D)                           | vce.{m}.query (1, D)                          |
| vce.{m}_attn                                      | vce.{m}.attention                             |
| vce.fusion.0 / .3 / .4                            | vce.expand / vce.contract / vce.norm          |
| task_layer.0 / .3                                 | head.hidden / head.output                     |

m in {dna, rna, protein}; an attention module holds in_proj_weight (3D, D), in_proj_bias (3D,) and
out_proj.{weight,bias} under both names. The mapping is strict: each of their tensors is used once, and a
missing, renamed or extra key, or a shape that disagrees with the sizes read, is refused by name.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from dogmacache.cache.storage import replace_whole
from dogmacache.contracts.provenance import file_sha256, package_versions
from dogmacache.errors import InputError
from dogmacache.train.tasks.cdt.model import CentralDogmaTransformer
from dogmacache.train.tasks.cdt.sizes import CDTConfig
from torch import Tensor

__all__ = [
    "authors_name_table",
    "config_from_authors",
    "import_authors_checkpoint",
    "map_authors_state_dict",
    "read_authors_state_dict",
]

CHECKPOINT_FORMAT = "dogmacache-checkpoint-1"
MODALITIES = ("dna", "rna", "protein")
HELD_UNDER = ("model_state_dict", "state_dict")  # keys a training script may keep the state dict under
NOT_THEIRS = "check that the file is a state dict of the notebook's CDTv33Model"

_WEIGHT_BIAS = ("weight", "bias")
_ATTENTION = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")


# --- reading the file ---------------------------------------------------------------------------------------


def read_authors_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a `torch.save`d state dict: plain, or held under `model_state_dict` or `state_dict`;
    a DDP `module.` prefix on every key is dropped.

    Tries `weights_only=True` first; a file that needs full unpickling is then loaded with
    `weights_only=False`, which runs code stored in the file: import only files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist; pass the .pt file the CDT authors' notebook saved")
    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # objects beyond tensors and containers (e.g. numpy scalars)
            loaded = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many kinds for a file that is not one of its own
        first_line = (str(err).splitlines() or [type(err).__name__])[0]
        raise InputError(
            f"{path} could not be read by torch.load ({first_line}); pass a file written by torch.save"
        ) from err
    state = _unwrap(loaded, path)
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def _unwrap(loaded: Any, path: Path) -> dict[str, Tensor]:
    if not isinstance(loaded, dict):
        raise InputError(
            f"{path} holds a {type(loaded).__name__} but a state dict (name -> tensor) was expected; "
            "save model.state_dict(), not the model"
        )
    if loaded and all(isinstance(value, Tensor) for value in loaded.values()):
        return dict(loaded)
    for key in HELD_UNDER:
        held = loaded.get(key)
        if isinstance(held, dict) and held and all(isinstance(v, Tensor) for v in held.values()):
            return dict(held)
    raise InputError(
        f"{path} holds a dict with keys {sorted(map(str, loaded))[:8]} but neither a state dict nor one under "
        f"{' or '.join(HELD_UNDER)}; pass the file saved with torch.save(model.state_dict(), ...)"
    )


# --- sizes --------------------------------------------------------------------------------------------------


def _size(state: dict[str, Tensor], key: str, dim: int, what: str, where: str) -> int:
    tensor = state.get(key)
    if not isinstance(tensor, Tensor) or tensor.ndim <= dim:
        raise InputError(f"{where} has no matrix {key!r} to read {what} from; {NOT_THEIRS}")
    return int(tensor.shape[dim])


def _multiple(hidden: int, d_model: int, key: str, where: str) -> int:
    if hidden % d_model:
        raise InputError(
            f"{where}: {key!r} has {hidden} rows, not a multiple of the model width {d_model}; {NOT_THEIRS}"
        )
    return hidden // d_model


def _n_blocks(state: dict[str, Tensor], modality: str, where: str) -> int:
    pattern = re.compile(rf"{modality}_self_attn_layers\.(\d+)\.")
    found = sorted({int(m.group(1)) for key in state if (m := pattern.match(key))})
    if found != list(range(len(found))):
        raise InputError(
            f"{where} holds {modality}_self_attn_layers blocks {found}, but blocks are numbered 0..n-1 "
            f"without gaps; {NOT_THEIRS}"
        )
    return len(found)


def config_from_authors(
    state: dict[str, Tensor],
    dna_positions: int | None,
    n_heads: int = 8,
    dropout: float = 0.3,
    vce_heads: int = 4,
    where: str = "the authors' state dict",
) -> CDTConfig:
    """Our `CDTConfig` for their state dict; sizes from the tensors, the rest (which no tensor holds) given.

    n_heads: their `nhead` (8 in the paper); vce_heads: their VCE pools' heads (4, fixed in their code);
    dropout: used only if the imported model is trained further (their notebook trained with 0.1).
    """
    if dna_positions is None:
        raise InputError(
            f"{where} holds no tensor sized by DNA positions (their model has no positional parameters), so "
            "the window length cannot be read from it; give it with --dna-positions (896 Enformer bins in the paper)"
        )
    d_model = _size(state, "dna_projector.linear.weight", 0, "the model width", where)
    ffn_hidden = _size(state, "dna_to_rna.ffn.0.weight", 0, "the feed-forward width", where)
    vce_hidden = _size(state, "vce.fusion.0.weight", 0, "the VCE fusion width", where)
    sizes = dict(
        n_genes=_size(state, "task_layer.3.weight", 0, "the number of genes", where),
        dna_positions=dna_positions,
        dna_width=_size(state, "dna_projector.linear.weight", 1, "the DNA embedding width", where),
        rna_width=_size(state, "rna_projector.linear.weight", 1, "the RNA embedding width", where),
        protein_width=_size(state, "protein_projector.linear.weight", 1, "the protein width", where),
        d_model=d_model,
        n_heads=n_heads,
        dna_self_layers=_n_blocks(state, "dna", where),
        rna_self_layers=_n_blocks(state, "rna", where),
        protein_self_layers=_n_blocks(state, "protein", where),
        ffn_multiplier=_multiple(ffn_hidden, d_model, "dna_to_rna.ffn.0.weight", where),
        vce_heads=vce_heads,
        vce_hidden_multiplier=_multiple(vce_hidden, d_model, "vce.fusion.0.weight", where),
        dropout=dropout,
    )
    try:
        return CDTConfig(**sizes)
    except InputError as err:  # e.g. a head count that does not divide the width read from the file
        raise InputError(f"{where}: {err}") from err


# --- names --------------------------------------------------------------------------------------------------


def authors_name_table(config: CDTConfig) -> dict[str, str]:
    """{our parameter name: theirs} for a model of `config`: one entry per tensor, one-to-one."""
    table: dict[str, str] = {}

    def put(ours: str, theirs: str, leaves: tuple[str, ...]) -> None:
        table.update({f"{ours}.{leaf}": f"{theirs}.{leaf}" for leaf in leaves})

    def block(ours: str, theirs: str, attention: str) -> None:
        put(f"{ours}.attention", f"{theirs}.{attention}", _ATTENTION)
        # their ffn is nn.Sequential(Linear, GELU, Dropout, Linear, Dropout)
        put(f"{ours}.ffn.expand", f"{theirs}.ffn.0", _WEIGHT_BIAS)
        put(f"{ours}.ffn.contract", f"{theirs}.ffn.3", _WEIGHT_BIAS)
        for norm in ("norm1", "norm2"):
            put(f"{ours}.{norm}", f"{theirs}.{norm}", _WEIGHT_BIAS)

    for m in MODALITIES:
        put(f"{m}_projection.linear", f"{m}_projector.linear", _WEIGHT_BIAS)
        put(f"{m}_projection.norm", f"{m}_projector.norm", _WEIGHT_BIAS)
        for k in range(getattr(config, f"{m}_self_layers")):
            block(f"{m}_self_attention.{k}", f"{m}_self_attn_layers.{k}", "self_attn")
    block("dna_to_rna", "dna_to_rna", "cross_attn")
    block("rna_to_protein", "rna_to_protein", "cross_attn")
    for m in MODALITIES:
        table[f"vce.{m}.query"] = f"vce.{m}_query"
        put(f"vce.{m}.attention", f"vce.{m}_attn", _ATTENTION)
    put("vce.expand", "vce.fusion.0", _WEIGHT_BIAS)  # their fusion: Linear, GELU, Dropout, Linear, LayerNorm
    put("vce.contract", "vce.fusion.3", _WEIGHT_BIAS)
    put("vce.norm", "vce.fusion.4", _WEIGHT_BIAS)
    put("head.hidden", "task_layer.0", _WEIGHT_BIAS)  # their task_layer: Linear, GELU, Dropout, Linear
    put("head.output", "task_layer.3", _WEIGHT_BIAS)
    assert len(set(table.values())) == len(table), "two of our tensors map to one of theirs"
    return table


def _our_shapes(config: CDTConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):  # shapes only, no memory
        model = CentralDogmaTransformer(config)
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def _listed(names: set[str]) -> str:
    shown = sorted(names)[:6]
    return f"{shown}{f' and {len(names) - 6} more' if len(names) > 6 else ''}"


def map_authors_state_dict(
    state: dict[str, Tensor], config: CDTConfig, where: str = "the authors' state dict"
) -> dict[str, Tensor]:
    """Their tensors under our names; the VCE queries (1, 1, D) become (1, D). Strict: every key of theirs
    used once, none of ours missing, every shape as `config` says."""
    shapes = _our_shapes(config)
    table = authors_name_table(config)
    assert set(table) == set(shapes), "authors_name_table is out of step with CentralDogmaTransformer"
    missing = set(table.values()) - set(state)
    unexpected = set(state) - set(table.values())
    if missing or unexpected:
        parts = ([f"lacks {_listed(missing)}"] if missing else []) + (
            [f"holds unexpected {_listed(unexpected)}"] if unexpected else []
        )
        raise InputError(
            f"{where} {' and '.join(parts)} for a CDTv33Model of the sizes read from it; rename or remove "
            f"those keys to the authors' names, or {NOT_THEIRS}"
        )
    mapped = {}
    for ours, theirs in table.items():
        tensor = state[theirs]
        if not isinstance(tensor, Tensor):
            raise InputError(f"{where}: {theirs!r} is a {type(tensor).__name__}, not a tensor; {NOT_THEIRS}")
        expected = (1, *shapes[ours]) if ours.endswith(".query") else tuple(shapes[ours])  # their (1, 1, D)
        if tuple(tensor.shape) != expected:
            raise InputError(
                f"{where}: {theirs!r} has shape {tuple(tensor.shape)} but the sizes read from the file "
                f"(D={config.d_model}, G={config.n_genes}) make it {expected}; {NOT_THEIRS}"
            )
        mapped[ours] = tensor.reshape(shapes[ours])  # (1, 1, D) -> (1, D) for the queries, else unchanged
    return mapped


# --- the checkpoint -----------------------------------------------------------------------------------------


def import_authors_checkpoint(
    src: str | os.PathLike,
    dest: str | os.PathLike,
    n_heads: int = 8,
    dropout: float = 0.3,
    vce_heads: int = 4,
    dna_positions: int | None = None,
) -> dict[str, Any]:
    """Write their state dict at `src` as our checkpoint at `dest` (atomically); returns
    {"checkpoint": dest, "model_config": ..., "n_parameters": ...}."""
    src, dest = Path(src), Path(dest)
    if dest.resolve() == src.resolve():
        raise InputError(f"the output {dest} is the authors' file itself; write the checkpoint to a new path")
    state = read_authors_state_dict(src)
    config = config_from_authors(state, dna_positions, n_heads, dropout, vce_heads, where=str(src))
    model = CentralDogmaTransformer(config)
    model.load_state_dict(map_authors_state_dict(state, config, where=str(src)), strict=True)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "task": "cdt",
        "model_class": "CentralDogmaTransformer",
        "model_config": config.to_dict(),
        "model": model.state_dict(),
        "config": None,  # no run config: the weights were trained outside this project
        "fingerprints": {},  # no caches: their embeddings were made outside this project
        "versions": package_versions(),
        "source": {"from": "cdt-authors", "file": str(src), "sha256": file_sha256(src)},
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    with replace_whole(dest) as tmp:  # a kill mid-save leaves no half-written checkpoint at dest
        torch.save(checkpoint, tmp)
    return {
        "checkpoint": str(dest),
        "model_config": config.to_dict(),
        "n_parameters": sum(p.numel() for p in model.parameters()),
    }
