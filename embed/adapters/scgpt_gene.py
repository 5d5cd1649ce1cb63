"""scGPT gene tokens: one gene symbol per row (`id`) -> (D,) = enc_norm(embedding[vocab[id]]), the token
embedding CDT uses; L2-normalised unless `--scgpt-no-l2`. Every symbol must be in the vocabulary (checked for
the whole table before any work). The checkpoint and encoder live in `scgpt_model`.

Layers (`--layer`, `--layers`): `gene_embedding+enc_norm` (the default, as above) and `gene_embedding` (the token
embedding row before the LayerNorm).

Shapes: B items, D = embsize.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from dogmacache.embed.adapters.base import LAYER_FLAG, AdapterOptions, LayeredAdapter, ModelInfo
from dogmacache.embed.adapters.scgpt_model import L2_FLAG, checkpoint_config, listing, load_checkpoint
from dogmacache.errors import ModelError


@dataclass(frozen=True)
class ScgptGeneOptions(AdapterOptions):
    l2: bool = True  # unit-length vectors (False: as the encoder gives them)
    layer: str = "gene_embedding+enc_norm"  # or gene_embedding (before the LayerNorm)

    flags: ClassVar[dict[str, dict[str, Any]]] = {"l2": L2_FLAG, "layer": LAYER_FLAG}


class ScGPTGeneAdapter(LayeredAdapter):
    """scGPT gene-token embeddings."""

    options_class = ScgptGeneOptions
    cheap_inputs = True  # a vocabulary lookup per gene
    options: ScgptGeneOptions

    def __init__(
        self,
        model_path: str | None,
        options: ScgptGeneOptions,
        device: torch.device,
        revision: str | None = None,
        random_init: int | None = None,
    ):
        self.checkpoint = load_checkpoint(model_path, device, revision, random_init)
        self.options, self.device = options, torch.device(device)
        self.vocab = self.checkpoint.genes  # gene symbols only: a special token (<pad>, <cls>) is no gene
        self.select_layer(options.layer)

    def layers(self) -> tuple[str, ...]:
        return ("gene_embedding", "gene_embedding+enc_norm")

    def select_layer(self, layer: str) -> None:
        self.layer = self.check_layer(layer)
        self.options = replace(self.options, layer=layer)

    def check_table(self, table) -> None:
        """Every symbol of the table must be in the vocabulary; all absent ones named at once."""
        special = self.checkpoint.special_tokens(table["id"].tolist())
        if special:
            raise ModelError(
                f"{listing(special)}: special tokens of the scGPT vocabulary, not gene symbols; drop those rows from "
                "the gene list"
            )
        missing = self.checkpoint.missing_symbols(table["id"].tolist())
        if missing:
            raise ModelError(
                f"{len(missing)} gene symbols are not in the scGPT vocabulary ({self.checkpoint.folder}): "
                f"{listing(missing)}; filter the gene list with the recipe's --rna-vocab"
            )

    def info(self) -> ModelInfo:
        return ModelInfo(
            model=self.checkpoint.model_id,
            model_revision=self.checkpoint.revision,
            files=self.checkpoint.files,
            layer=self.layer,
            pooling="token",
            item_shape=(self.checkpoint.args.embsize,),
            config={**checkpoint_config(self.checkpoint), "missing_in_vocab": 0},  # a missing symbol is an error
        )

    def prepare(self, row: dict[str, Any]) -> dict[str, np.ndarray]:
        symbol = str(row["id"])
        if symbol not in self.vocab:
            raise ModelError(
                f"gene symbol {symbol!r} is not in the scGPT vocabulary ({self.checkpoint.folder}); "
                "filter the gene list with the recipe's --rna-vocab"
            )
        return {"genes": np.array([self.vocab[symbol]], dtype=np.int64)}

    def n_tokens(self, prepared: dict[str, np.ndarray]) -> int:
        return len(prepared["genes"])

    @torch.inference_mode()
    def embed_layers(
        self, batch: list[dict[str, np.ndarray]], layers: tuple[str, ...]
    ) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
        genes = torch.from_numpy(np.concatenate([p["genes"] for p in batch])).to(self.device)
        encoder = self.checkpoint.model.encoder
        row = encoder.embedding(genes)  # (B, D)
        found = {"gene_embedding": row, "gene_embedding+enc_norm": encoder.enc_norm(row)}
        outputs = {layer: found[layer] for layer in layers}
        return {k: F.normalize(v, dim=-1) if self.options.l2 else v for k, v in outputs.items()}, {}
