"""ESM-C proteins (`--model esmc --modality protein`), on the encoder rebuilt in `esmc_model` (no `esm` package).

Options and manifest records as the ESM-2 adapter's (`hf_esm`): `--layer` (-1: after the final LayerNorm, as
esm's `embeddings`; k counted from 0 = the token embeddings, k >= 1 block k's output, unnormalised), `--pooling`
mean over residues (`<cls>`, `<eos>`, `<pad>` masked) | cls | none (per token, padded to `max_length`, with a
`mask`), `--max-length` tokens kept per item with `<cls>` and `<eos>` (a truncated item keeps its `<eos>`).
`--esmc-size` 300m | 600m picks the hub repository (default 300m) and the architecture.

ESM-C has rotary positions and no position table, so it sets no length limit; items are capped at
`DEFAULT_MAX_TOKENS` unless `--max-length` says otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar, Self

import numpy as np
import torch
from dogmacache.cache.layout import ExtraArray
from dogmacache.embed.adapters.base import AdapterOptions, EmbeddingAdapter, ModelInfo
from dogmacache.embed.adapters.esmc_model import (
    CLS_ID,
    EOS_ID,
    PAD_ID,
    SIZES,
    EsmcModel,
    find_weights,
    load_weights,
    read_arch,
    tokenize,
)
from dogmacache.embed.adapters.hf_esm import POOLING_FLAG, POOLINGS, EsmOptions, clean_protein, layer_number
from dogmacache.embed.adapters.tokens import padded_ids, pool_tokens, real_mask, token_extras
from dogmacache.embed.adapters.weights import recorded_identity, resolve_model_dir
from dogmacache.embed.random_weights import randomize_
from dogmacache.embed.shapes import length_bucket
from dogmacache.errors import InputError, ModelError

DEFAULT_MAX_TOKENS = 2048  # 2,046 residues + <cls> + <eos>: the adapter's cap, not a limit of the model
N_SPECIAL = 2  # <cls> and <eos>


@dataclass(frozen=True)
class EsmcOptions(AdapterOptions):
    size: str = "300m"  # the published model: EvolutionaryScale/esmc-300m-2024-12 or esmc-600m-2024-12
    layer: int = -1  # -1 after the final LayerNorm; 0 token embeddings; k block k's output
    pooling: str = "mean"  # mean over residues | cls (the <cls> token) | none (per token, padded, with a mask)
    max_length: int | None = None  # tokens kept per item, <cls> and <eos> included; None: DEFAULT_MAX_TOKENS

    flags: ClassVar[dict[str, dict[str, Any]]] = {
        "size": {
            "flags": ("--esmc-size",),
            "choices": tuple(SIZES),
            "help": "esmc: the published size, its hub repository and architecture (default 300m)",
        },
        "layer": EsmOptions.flags["layer"],
        "pooling": POOLING_FLAG,
        "max_length": EsmOptions.flags["max_length"],
    }

    def __post_init__(self):
        object.__setattr__(self, "layer", layer_number(self.layer))  # `--layer` is text for every model
        self._check_choice("size", tuple(SIZES))
        self._check_choice("pooling", POOLINGS)
        if self.max_length is not None and self.max_length < N_SPECIAL + 1:
            raise InputError(f"--max-length {self.max_length} keeps no residue; give at least {N_SPECIAL + 1}")

    def resolve(self, n_layers: int) -> Self:
        """Checked against a model of `n_layers` blocks; `max_length` None becomes DEFAULT_MAX_TOKENS."""
        if not -1 <= self.layer <= n_layers:
            raise ModelError(f"--layer {self.layer} does not exist; the model has layers 0..{n_layers} (or -1)")
        return replace(self, max_length=self.max_length or DEFAULT_MAX_TOKENS)


class EsmcAdapter(EmbeddingAdapter):
    """ESM-C residue or pooled embeddings of protein sequences."""

    options_class = EsmcOptions
    options: EsmcOptions

    def __init__(
        self,
        model_path: str | None,
        options: EsmcOptions,
        device: torch.device,
        revision: str | None = None,
        random_init: int | None = None,
    ):
        published = SIZES[options.size]
        source = resolve_model_dir(model_path or published.hub_id, revision, weights=random_init is None)
        arch = read_arch(source.directory, options.size)
        if random_init is not None:  # a control: the architecture alone, as the tiny writer draws it
            model, weights = randomize_(EsmcModel(arch), random_init), None
        else:
            weights = find_weights(source.directory, options.size)
            model = load_weights(EsmcModel(arch), weights)
        self.model = model.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.options = options.resolve(arch.n_layers)
        self.dim, self.max_length = arch.d_model, self.options.max_length
        extras = [ExtraArray("n_tokens", "int32"), ExtraArray("n_truncated", "int32")]
        if self.options.pooling == "none":
            extras.append(ExtraArray("mask", "bool", (self.max_length,)))
        model_id, model_revision, files = recorded_identity(source, weights, random_init)
        self._info = ModelInfo(
            model=model_id,
            model_revision=model_revision,
            files=files,
            layer=self.options.layer,
            pooling=self.options.pooling,
            item_shape=(self.max_length, self.dim) if self.options.pooling == "none" else (self.dim,),
            extras=tuple(extras),
            config={
                "truncation": f"first {self.max_length} tokens incl. specials",
                "architecture": asdict(arch),
                "ignored_checkpoint_modules": ["sequence_head"],  # loaded (strict load), never used
            },
        )

    def info(self) -> ModelInfo:
        return self._info

    def default_max_tokens(self, device: torch.device) -> int:
        return self.max_length * (64 if device.type == "cuda" else 8)

    def prepare(self, row: dict[str, Any]) -> dict[str, np.ndarray]:
        ids = tokenize(clean_protein(row))
        kept = ids[: self.max_length]
        kept[-1] = EOS_ID  # a truncated item keeps its <eos>, as the ESM-2 adapter does
        return {"ids": np.asarray(kept, dtype=np.int64), "n_truncated": np.int32(len(ids) - len(kept))}

    def n_tokens(self, prepared: dict[str, np.ndarray]) -> int:
        return len(prepared["ids"])

    def shape_bucket(self, prepared: dict[str, np.ndarray]) -> int | None:
        return length_bucket(len(prepared["ids"]), self.max_length)

    def filler(self, n_tokens: int) -> dict[str, np.ndarray]:
        """`<cls>`, then one residue's token: a sequence of exactly `n_tokens` tokens."""
        ids = np.full(n_tokens, tokenize("A")[1], dtype=np.int64)
        ids[0] = CLS_ID
        return {"ids": ids, "n_truncated": np.int32(0)}

    @torch.inference_mode()
    def embed(self, batch: list[dict[str, np.ndarray]]) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        ids, lengths = padded_ids(batch, PAD_ID)
        ids = ids.to(self.device)
        hidden = self.model(ids, self.options.layer)  # (B, T, D)
        real = (ids != PAD_ID) & (ids != CLS_ID) & (ids != EOS_ID)  # (B, T) residues
        extras = token_extras(batch, lengths)
        if self.options.pooling == "none":
            extras["mask"] = real_mask(real, self.max_length)
        return pool_tokens(hidden, real, self.options.pooling, self.max_length), extras
