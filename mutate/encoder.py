"""Part (b) of mutate: the scGPT encoder (the embed stage's plain-PyTorch rebuild) on one profile, run with the
edited windows' genes' tokens replaced by their adapted tokens, reference vs edited; the genes whose output
embeddings move most.

Shapes: L tokens (`<cls>` + the profile's expressed genes, as the context adapter prepares them), D = embsize.
"""

from __future__ import annotations

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


def moved_genes(config, token_cache, shift: pd.DataFrame, tokens: dict[str, np.ndarray]) -> pd.DataFrame:
    """Top `config.top_n` genes by L2 shift of their output embedding, per variant (rank 1 = moved most)."""
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
    genes, values = torch.from_numpy(prepared["genes"]), torch.from_numpy(prepared["values"])
    symbol = {i: g for g, i in context.vocab.items()}
    names = [symbol[int(i)] for i in prepared["genes"]]
    position = {g: p for p, g in enumerate(names) if p > 0}
    if config.gene not in position:
        raise InputError(
            f"gene {config.gene!r} is not expressed in profile {config.profile!r} (or not among its "
            f"{context.options.max_genes} highest); pick a profile that expresses it"
        )
    model = context.checkpoint.model
    unit = bool((token_cache.manifest.config.get("options") or {}).get("l2", False))
    frames = []
    for variant, part in shift.reset_index(drop=True).groupby("variant"):
        rows = [i for i, g in zip(part.index, part["id"], strict=True) if g in position]
        ids = torch.tensor([context.vocab[g] for g in part.loc[rows, "id"]])
        raw_norm = model.encoder(ids).norm(dim=-1).numpy()
        runs = {}
        for name in ("reference", "edited"):
            vectors = scaled_tokens(tokens[name][rows], raw_norm, unit)
            replace = {position[g]: v for g, v in zip(part.loc[rows, "id"], vectors, strict=True)}
            runs[name] = encode(model, genes, values, replace)[1:].numpy()  # (L-1, D) without <cls>
        delta = runs["edited"] - runs["reference"]
        cos = np.sum(runs["edited"] * runs["reference"], 1) / np.maximum(
            np.linalg.norm(runs["edited"], axis=1) * np.linalg.norm(runs["reference"], axis=1), 1e-12
        )
        frame = pd.DataFrame(
            {
                "variant": variant,
                "gene": names[1:],
                "l2_shift": np.linalg.norm(delta, axis=1),
                "cosine": cos,
                "token_replaced": [g in set(part["id"]) for g in names[1:]],
            }
        )
        frame = frame.sort_values("l2_shift", ascending=False, kind="stable").head(config.top_n)
        frames.append(frame.assign(rank=np.arange(1, len(frame) + 1)))
    return pd.concat(frames, ignore_index=True)[["variant", "rank", "gene", "l2_shift", "cosine", "token_replaced"]]
