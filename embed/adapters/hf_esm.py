"""ESM-family transformers from Hugging Face: ESM-2 (proteins) and the Nucleotide Transformer (DNA/RNA).

Both are `EsmModel`s with a tokenizer that adds `<cls>` (and for ESM-2 `<eos>`); outputs per token (T, D).
Layer -1 is `last_hidden_state`, which is after the final LayerNorm; earlier layers (`--layer k`, k counted
from 0 = the embedding output) are not normalised. Pooling "mean" averages real tokens only (`<cls>`,
`<eos>`, `<pad>` masked); pooling "none" stores per-token outputs padded to a fixed length with a `mask`.
Truncation is stated in the manifest: ESM-2 keeps 1,022 residues (+2 specials); NT v1 1,000 tokens of 6-mers.
NT v2 checkpoints need `trust_remote_code` (turned on when the folder's config has an `auto_map`).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import torch
from dogmacache.cache.layout import ExtraArray
from dogmacache.embed.adapters.base import EmbeddingAdapter, ModelError, ModelInfo, register, weights_digest
from dogmacache.embed.adapters.enformer import WEIGHT_FILES, resolve_model_dir
from dogmacache.embed.genome import check_dna
from dogmacache.errors import InputError

PROTEIN_LETTERS = frozenset("ACDEFGHIKLMNPQRSTVWYXBZUO")


class _EsmFamily(EmbeddingAdapter):
    default_model: str
    max_tokens_default: int  # model's positions incl. specials

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("esm2 / nucleotide-transformer")
        g.add_argument("--layer", type=int, default=-1, help="hidden layer (-1: last, after the final LayerNorm)")
        g.add_argument("--pooling", choices=("mean", "cls", "none"), default="mean",
                       help="mean over real tokens, the <cls> token, or none (per-token, padded, with a mask)")  # fmt: skip
        g.add_argument("--max-length", type=int, default=None,
                       help="tokens kept per item incl. specials (default: the model's limit)")  # fmt: skip

    def __init__(self, model_path: str | None, modality: str, options: argparse.Namespace, device: torch.device):
        from transformers import AutoModelForMaskedLM, AutoTokenizer, EsmModel

        directory, revision = resolve_model_dir(model_path or self.default_model, getattr(options, "revision", None))
        config = json.loads((directory / "config.json").read_text()) if (directory / "config.json").is_file() else None
        if config is None:
            raise ModelError(f"{directory} has no config.json; a Hugging Face model folder holds it beside the weights")
        remote = "auto_map" in config  # NT v2 ships its own modelling code
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=remote)
            if remote:
                model = AutoModelForMaskedLM.from_pretrained(str(directory), trust_remote_code=True)
                info = {"missing_keys": []}
            else:
                model, info = EsmModel.from_pretrained(str(directory), add_pooling_layer=False,
                                                       output_loading_info=True)  # fmt: skip
        except OSError as err:
            raise ModelError(f"cannot load {directory}: {err}") from err
        if info["missing_keys"]:  # transformers would fill these with random weights: refuse instead
            raise ModelError(f"{directory} lacks weights for {info['missing_keys'][:5]}; it is not a complete checkpoint")
        self.model = model.to(device).eval().requires_grad_(False)
        self.device, self.modality, self.remote = device, modality, remote
        self.layer, self.pooling = int(options.layer), options.pooling
        n_layers = int(config.get("num_hidden_layers", 0))
        if not -1 <= self.layer <= n_layers:
            raise ModelError(f"--layer {self.layer} does not exist; the model has layers 0..{n_layers} (or -1)")
        limit = int(config.get("max_position_embeddings", self.max_tokens_default))
        self.max_length = min(getattr(options, "max_length", None) or self.max_tokens_default, limit)
        self.window = getattr(options, "window_bp", None)
        self.dim = int(config["hidden_size"])
        weights = next((directory / n for n in WEIGHT_FILES if (directory / n).is_file()), None)
        extras = [ExtraArray("n_tokens", "int32"), ExtraArray("n_truncated", "int32")]
        if self.pooling == "none":
            extras.append(ExtraArray("mask", "bool", (self.max_length,)))
        self._info = ModelInfo(
            model=model_path or self.default_model,
            model_revision=revision or (weights_digest(str(weights)) if weights else "unknown"),
            layer=self.layer, pooling=self.pooling,
            item_shape=(self.max_length, self.dim) if self.pooling == "none" else (self.dim,),
            extras=tuple(extras),
            config={"max_length": self.max_length, "truncation": f"first {self.max_length} tokens incl. specials",
                    "trust_remote_code": remote, "window_bp": self.window},
        )  # fmt: skip

    def info(self) -> ModelInfo:
        return self._info

    def default_max_tokens(self, device: torch.device) -> int:
        return self.max_length * (64 if device.type == "cuda" else 8)

    def sequence(self, row: dict[str, Any]) -> str:
        raise NotImplementedError

    def prepare(self, row: dict[str, Any]) -> dict[str, np.ndarray]:
        seq = self.sequence(row)
        ids = self.tokenizer(seq, add_special_tokens=True)["input_ids"]
        n_special = len(self.tokenizer.build_inputs_with_special_tokens([]))
        kept = ids[: self.max_length]
        if len(ids) > self.max_length and self.tokenizer.eos_token_id is not None and ids[-1] == self.tokenizer.eos_token_id:
            kept[-1] = self.tokenizer.eos_token_id  # truncated sequences keep their <eos>, as ESM's own scripts do
        return {"ids": np.asarray(kept, dtype=np.int64), "n_truncated": np.int32(max(0, len(ids) - len(kept))),
                "n_special": np.int32(n_special)}  # fmt: skip

    def n_tokens(self, prepared: dict[str, np.ndarray]) -> int:
        return len(prepared["ids"])

    def embed(self, batch: list[dict[str, np.ndarray]]) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        lengths = [len(item["ids"]) for item in batch]
        longest = max(lengths)
        ids = torch.full((len(batch), longest), self.tokenizer.pad_token_id, dtype=torch.long)
        for i, item in enumerate(batch):
            ids[i, : lengths[i]] = torch.from_numpy(item["ids"])
        attention = (ids != self.tokenizer.pad_token_id).long()
        ids, attention = ids.to(self.device), attention.to(self.device)
        out = self.model(input_ids=ids, attention_mask=attention, output_hidden_states=self.layer != -1 or self.remote)
        if self.remote:
            hidden = out.hidden_states[self.layer]
        else:
            hidden = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]  # (B, T, D)
        special = torch.zeros_like(attention, dtype=torch.bool)
        for token in (self.tokenizer.cls_token_id, self.tokenizer.eos_token_id, self.tokenizer.bos_token_id):
            if token is not None:
                special |= ids == token
        real = attention.bool() & ~special  # (B, T)
        extras = {"n_tokens": np.array(lengths, dtype=np.int32),
                  "n_truncated": np.array([item["n_truncated"] for item in batch], dtype=np.int32)}  # fmt: skip
        if self.pooling == "mean":
            weights = real.unsqueeze(-1).to(hidden.dtype)
            return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1), extras
        if self.pooling == "cls":
            return hidden[:, 0], extras
        padded = torch.zeros(len(batch), self.max_length, self.dim, dtype=hidden.dtype, device=hidden.device)
        padded[:, :longest] = hidden * real.unsqueeze(-1)
        mask = np.zeros((len(batch), self.max_length), dtype=bool)
        mask[:, :longest] = real.cpu().numpy()
        return padded, {**extras, "mask": mask}


@register
class Esm2Adapter(_EsmFamily):
    name = "esm2"
    modalities = ("protein",)
    default_model = "facebook/esm2_t33_650M_UR50D"
    max_tokens_default = 1024  # 1,022 residues + <cls> + <eos>

    def sequence(self, row: dict[str, Any]) -> str:
        seq = str(row["sequence"]).strip().upper().rstrip("*")
        bad = set(seq) - PROTEIN_LETTERS
        if not seq or bad:
            raise InputError(
                f"protein {row['id']!r}: " + (f"characters {sorted(bad)[:5]} are not amino acids" if seq else "empty")
                + "; clean the sequence in the recipe (ESM-2 reads the 20 standard letters and X, B, Z, U, O)"
            )
        return seq


@register
class NucleotideTransformerAdapter(_EsmFamily):
    name = "nucleotide-transformer"
    modalities = ("dna", "rna")
    default_model = "InstaDeepAI/nucleotide-transformer-500m-human-ref"
    max_tokens_default = 1000  # v1: 1,000 tokens of 6-mers (~6 kb); v2 models allow 2,048 (12 kb)

    def sequence(self, row: dict[str, Any]) -> str:
        if "sequence" in row and isinstance(row["sequence"], str):
            seq = row["sequence"].strip().upper().replace("U", "T")  # NT reads DNA letters; RNA's U is T
        else:
            if not self.window:
                raise InputError("nucleotide-transformer on genome windows needs --window-bp (e.g. 5994 for v1)")
            seq, _ = row["_genome"].window(str(row["chrom"]), int(row["center"]), self.window)
        if not seq:
            raise InputError(f"item {row['id']!r} has an empty sequence; drop it in the recipe")
        check_dna(seq, row["id"])
        return seq

