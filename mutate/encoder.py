"""Part (b) of mutate: the scGPT encoder (the embed stage's plain-PyTorch rebuild) on one profile, run with the
edited windows' genes' tokens replaced by their adapted tokens, reference vs edited; the genes whose output
embeddings move most. Beside it, the adapter-free comparator Bio-DTA is measured against
(docs/papers.md#bio-dta-reported-results): the same encoder with the gene knocked out in expression space.

Shapes: L tokens (`<cls>` + the profile's expressed genes, as the context adapter prepares them), D = embsize.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from dogmacache.contracts.tables import read_table
from dogmacache.embed.adapters import ScGPTContextAdapter, ScgptContextOptions
from dogmacache.errors import InputError


def read_profile(path: str | Path, profile: str | None) -> dict[str, Any]:
    table = read_table(
        path,
        ("id",),
        recipe="gtex",
        what="profiles table",
        expected="a profiles table is id + one numeric column per gene symbol (tissue_profiles.parquet)",
    )
    ids = table["id"].astype(str)
    if profile is None or profile not in set(ids):
        raise InputError(
            f"profile {profile!r} is not an id of {path} (it has {', '.join(ids[:5])}"
            f"{' ...' if len(ids) > 5 else ''}); pass one with --profile"
        )
    return table[ids == profile].iloc[0].to_dict()


ENCODER_INPUT_LAYER = "gene_embedding+enc_norm"  # the token the encoder's layers read: enc_norm(embedding)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (..., D) arrays (0 where a row is zero)."""
    return np.sum(a * b, axis=-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def scaled_tokens(adapted: np.ndarray, raw_norm: np.ndarray, unit_cache: bool) -> torch.Tensor:
    """Adapted tokens (W, D) as encoder inputs: scaled to the raw token's length when the cache is unit length."""
    x = torch.from_numpy(adapted.astype(np.float32))
    return F.normalize(x, dim=-1) * torch.from_numpy(raw_norm.astype(np.float32))[:, None] if unit_cache else x


@torch.inference_mode()
def encode(model, genes: torch.Tensor, values: torch.Tensor, replace: dict[int, torch.Tensor]) -> torch.Tensor:
    """One profile (L,) through the encoder with the input tokens at positions `replace` swapped: (L, D)."""
    x = model.encoder(genes[None]).clone()  # (1, L, D): enc_norm(embedding), as scGPT sums it with the values
    for position, vector in replace.items():
        x[0, position] = vector
    x = x + model.value_encoder(values[None])
    keep = torch.ones_like(genes[None], dtype=torch.bool)
    for layer in model.transformer_encoder.layers:
        x = layer(x, keep)
    return x[0]


@dataclass(frozen=True)
class ProfileInput:
    """The scGPT encoder and one prepared profile: what both rankings run on."""

    model: torch.nn.Module
    vocab: dict[str, int]
    genes: torch.Tensor  # (L,) token ids, <cls> first
    values: torch.Tensor  # (L,) value bins, pad_value at <cls>
    names: list[str]  # (L - 1,) the profile's gene symbols after <cls>
    position: dict[str, int]  # symbol -> its position in `genes`
    unit: bool  # the token cache is unit length (its `l2` option)


def open_profile(config, token_cache) -> ProfileInput:
    """The scGPT checkpoint the token cache was embedded with, and the profile prepared as `embed --modality
    context` prepares it; InputError when the checkpoint differs or the gene is not in the profile."""
    layer = token_cache.manifest.layer
    if layer != ENCODER_INPUT_LAYER:  # `encode` puts the adapted tokens where scGPT has enc_norm(embedding)
        raise InputError(
            f"{token_cache.url} holds scGPT tokens at layer {layer!r}, but the encoder takes them after its "
            f"LayerNorm ({ENCODER_INPUT_LAYER!r}); embed the gene tokens with --layer {ENCODER_INPUT_LAYER} (the "
            "default) and train the adapter on that cache"
        )
    context = ScGPTContextAdapter(config.scgpt_model, ScgptContextOptions(), torch.device("cpu"))
    recorded = token_cache.manifest.config.get("model_files") or {}
    differ = [n for n in recorded if context.checkpoint.files.get(n) != recorded[n]]
    if differ:
        raise InputError(
            f"{config.scgpt_model} is not the scGPT checkpoint {token_cache.url} was embedded with "
            f"({differ[0]} differs); pass the folder the token cache was made from"
        )
    if not config.profiles:
        raise InputError("--scgpt-model needs a profile: pass --profiles TABLE and --profile ID")
    prepared = context.prepare(read_profile(config.profiles, config.profile))
    symbol = {i: g for g, i in context.vocab.items()}
    names = [symbol[int(i)] for i in prepared["genes"]]
    position = {g: p for p, g in enumerate(names) if p > 0}
    if config.gene not in position:
        raise InputError(
            f"gene {config.gene!r} is not expressed in profile {config.profile!r} (or not among its "
            f"{context.options.max_genes} highest); pick a profile that expresses it"
        )
    return ProfileInput(
        model=context.checkpoint.model,
        vocab=context.vocab,
        genes=torch.from_numpy(prepared["genes"]),
        values=torch.from_numpy(prepared["values"]),
        names=names[1:],
        position=position,
        unit=bool((token_cache.manifest.config.get("options") or {}).get("l2", False)),
    )


def ranked(names: list[str], reference: np.ndarray, changed: np.ndarray, **columns) -> pd.DataFrame:
    """Genes (G,) with output embeddings (G, D) before and after, every gene ranked by L2 shift (1 = moved most)."""
    frame = pd.DataFrame({**columns, "gene": names, "l2_shift": np.linalg.norm(changed - reference, axis=1)})
    frame = frame.assign(cosine=cosine(changed, reference)).sort_values("l2_shift", ascending=False, kind="stable")
    return frame.assign(rank=np.arange(1, len(frame) + 1)).reset_index(drop=True)


def adapter_moves(inputs: ProfileInput, shift: pd.DataFrame, tokens: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per variant, every profile gene ranked by the L2 shift of its output embedding between the runs with the
    reference and with the edited adapted tokens."""
    frames = []
    for variant, part in shift.reset_index(drop=True).groupby("variant"):
        rows = [i for i, g in zip(part.index, part["id"], strict=True) if g in inputs.position]
        ids = torch.tensor([inputs.vocab[g] for g in part.loc[rows, "id"]])
        raw_norm = inputs.model.encoder(ids).norm(dim=-1).detach().numpy()
        runs = {}
        for name in ("reference", "edited"):
            vectors = scaled_tokens(tokens[name][rows], raw_norm, inputs.unit)
            replace = {inputs.position[g]: v for g, v in zip(part.loc[rows, "id"], vectors, strict=True)}
            runs[name] = encode(inputs.model, inputs.genes, inputs.values, replace)[1:].numpy()  # without <cls>
        replaced = set(part["id"])
        frame = ranked(inputs.names, runs["reference"], runs["edited"], variant=variant)
        frames.append(frame.assign(token_replaced=frame["gene"].isin(replaced)))
    return pd.concat(frames, ignore_index=True)[["variant", "rank", "gene", "l2_shift", "cosine", "token_replaced"]]


def knockout_moves(inputs: ProfileInput, gene: str) -> pd.DataFrame:
    """The adapter-free comparator: the same encoder on the profile as it is (every gene its own scGPT token, no
    adapted token) and with `gene` knocked out in expression space, its position (token and value bin) dropped from
    the input as a zero expression drops a gene from scGPT's input. The other genes keep their bins, so the knock-out
    is the only change. Every other gene ranked by the L2 shift of its output embedding."""
    at = inputs.position[gene]
    keep = torch.arange(len(inputs.genes)) != at
    reference = encode(inputs.model, inputs.genes, inputs.values, {})[1:].numpy()  # without <cls>
    knocked = encode(inputs.model, inputs.genes[keep], inputs.values[keep], {})[1:].numpy()
    others = [i for i in range(len(inputs.names)) if i != at - 1]
    frame = ranked([inputs.names[i] for i in others], reference[others], knocked)
    return frame[["rank", "gene", "l2_shift", "cosine"]]


def top(ranking: pd.DataFrame, n: int) -> pd.DataFrame:
    """The first `n` genes of each variant's ranking."""
    return ranking[ranking["rank"] <= n].reset_index(drop=True)
