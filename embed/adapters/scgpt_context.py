"""scGPT context embeddings: one expression profile per row (`id` plus one numeric column per gene symbol;
tissues or cells) -> (D,) = last-layer output at `<cls>`, as scGPT's `tasks.cell_emb` computes cell
embeddings; L2-normalised unless `--scgpt-no-l2`. The checkpoint and encoder live in `scgpt_model`.

Layers (`--layer`, `--layers`), each read at `<cls>`: `cls_last_layer` (the default, as above), `encoder` (the
summed gene and value encodings, before the first transformer layer) and `layer.K` (transformer layer K's output,
0-based; the last one is `cls_last_layer` again).

Input, as scGPT's `embed_data` builds it: genes outside the vocabulary are dropped (counted per item), zeros
are dropped, the rest are binned per profile (`bin_expression`), then capped at `max_genes`; `<cls>` is
prepended with value `pad_value`; a batch is padded with `<pad>` and masked. Two choices differ from scGPT,
both for reproducible caches: the cap keeps the `max_genes` highest raw values (ties by column order; scGPT
samples at random), and bin ties are broken by a generator seeded per item (`--scgpt-bin-seed`).

Shapes: B items, L tokens (`<cls>` + genes), D = embsize.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from dogmacache.cache.layout import ExtraArray
from dogmacache.embed.adapters.base import LAYER_FLAG, AdapterOptions, LayeredAdapter, ModelInfo
from dogmacache.embed.adapters.scgpt_model import (
    CLS_TOKEN,
    L2_FLAG,
    checkpoint_config,
    listing,
    load_checkpoint,
)
from dogmacache.embed.shapes import length_bucket, pad_length
from dogmacache.errors import InputError


@dataclass(frozen=True)
class ScgptContextOptions(AdapterOptions):
    l2: bool = True  # unit-length vectors (False: as the encoder gives them)
    # most genes per profile, the highest expressed; with <cls>, scGPT's max_seq_len of 1,200 tokens (its
    # DataCollator counts <cls> in max_length: scgpt/data_collator.py, and tasks/cell_emb.py prepends it)
    max_genes: int = 1199
    bin_seed: int = 0  # seed for breaking ties between equal bin edges, the same for every item
    layer: str = "cls_last_layer"  # cls_last_layer | encoder | layer.K, read at <cls>

    flags: ClassVar[dict[str, dict[str, Any]]] = {
        "l2": L2_FLAG,
        "max_genes": {
            "flags": ("--scgpt-max-genes",),
            "type": int,
            "help": "scgpt context: most genes per profile (+ <cls>), the highest expressed (default 1199: with <cls>, "
            "scGPT's 1,200 tokens)",
        },
        "bin_seed": {
            "flags": ("--scgpt-bin-seed",),
            "type": int,
            "help": "scgpt context: seed for breaking ties between equal bin edges (default 0)",
        },
        "layer": LAYER_FLAG,
    }

    def __post_init__(self):
        if self.max_genes < 1:
            raise InputError(f"--scgpt-max-genes is {self.max_genes}; it must be at least 1")


def bin_expression(values: np.ndarray, n_bins: int, rng: np.random.Generator) -> np.ndarray:
    """scGPT's `preprocess.binning`: (G,) non-negative values -> (G,) int64 bins. Zeros stay 0; non-zero values
    go to bins 1..n_bins-1 by the n_bins-1 quantiles of this profile's non-zero values. A value on a run of
    equal edges (ties) gets a uniformly random bin among them (scGPT's `_digitize(side="both")`)."""
    binned = np.zeros(values.shape, dtype=np.int64)
    nonzero = np.flatnonzero(values)
    if nonzero.size == 0:
        return binned
    x = values[nonzero]
    edges = np.quantile(x, np.linspace(0, 1, n_bins - 1))
    left, right = np.digitize(x, edges), np.digitize(x, edges, right=True)
    binned[nonzero] = np.ceil(rng.random(x.size) * (right - left) + left).astype(np.int64)
    return binned


class ScGPTContextAdapter(LayeredAdapter):
    """scGPT `<cls>` embeddings of expression profiles."""

    options_class = ScgptContextOptions
    options: ScgptContextOptions

    def __init__(
        self,
        model_path: str | None,
        options: ScgptContextOptions,
        device: torch.device,
        revision: str | None = None,
        random_init: int | None = None,
    ):
        self.checkpoint = load_checkpoint(model_path, device, revision, random_init)
        self.options, self.device = options, torch.device(device)
        self.vocab, self.args = self.checkpoint.vocab, self.checkpoint.args
        self.select_layer(options.layer)

    def layers(self) -> tuple[str, ...]:
        return ("encoder", *(f"layer.{k}" for k in range(self.args.nlayers)), "cls_last_layer")

    def select_layer(self, layer: str) -> None:
        self.layer = self.check_layer(layer)
        self.options = replace(self.options, layer=layer)

    def _state(self, layer: str) -> int:
        """The index of `layer` in the encoder's `hidden_states` (0 = the summed encodings)."""
        if layer == "cls_last_layer":
            return self.args.nlayers
        return 0 if layer == "encoder" else int(layer.removeprefix("layer.")) + 1

    def info(self) -> ModelInfo:
        return ModelInfo(
            model=self.checkpoint.model_id,
            model_revision=self.checkpoint.revision,
            files=self.checkpoint.files,
            layer=self.layer,
            pooling="cls",
            item_shape=(self.args.embsize,),
            extras=(ExtraArray("n_genes", "int32"), ExtraArray("n_missing", "int32")),
            config={
                **checkpoint_config(self.checkpoint),
                "n_bins": self.args.n_bins,
                "pad_value": self.args.pad_value,
                "cap_rule": "highest raw values, ties by column order",
                "missing_in_vocab": "per item: extra array n_missing",
                "batching": "length buckets",  # padded to the bucket's length (earlier caches: to the batch's longest)
            },
        )

    def prepare(self, row: dict[str, Any]) -> dict[str, np.ndarray]:
        item, columns = row["id"], [c for c in row if c != "id"]
        try:
            values = np.array([row[c] for c in columns], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"profile {item!r} has a non-numeric gene column ({exc}); context rows are `id` "
                "plus one numeric column per gene symbol"
            ) from exc
        bad = [c for c, v in zip(columns, values, strict=True) if not (math.isfinite(v) and v >= 0)]
        if bad:
            raise InputError(
                f"profile {item!r} has negative or non-finite values in {listing(bad)}; scGPT "
                "expects non-negative expression (counts, TPM or log1p of them)"
            )
        known = np.array([c in self.checkpoint.genes for c in columns], dtype=bool)  # a <cls> column is no gene
        use = known & (values > 0)
        if not use.any():
            raise InputError(
                f"profile {item!r} expresses no gene of the scGPT vocabulary; drop the row or "
                "check that its columns are gene symbols"
            )
        genes = np.array([self.checkpoint.genes[c] for c, u in zip(columns, use, strict=True) if u], dtype=np.int64)
        expression = values[use]
        rng = np.random.default_rng(self.options.bin_seed)  # per item: the same bins whatever the worker or order
        bins = bin_expression(expression, self.args.n_bins, rng)  # over all expressed genes, as scGPT does
        if genes.size > self.options.max_genes:
            top = np.sort(np.argsort(-expression, kind="stable")[: self.options.max_genes])  # keep column order
            genes, bins = genes[top], bins[top]
        return {
            "genes": np.concatenate([[self.vocab[CLS_TOKEN]], genes]).astype(np.int64),
            "values": np.concatenate([[self.args.pad_value], bins]).astype(np.float32),
            "n_genes": np.array(genes.size, dtype=np.int32),
            "n_missing": np.array((~known).sum(), dtype=np.int32),
        }

    def n_tokens(self, prepared: dict[str, np.ndarray]) -> int:
        return len(prepared["genes"])

    def shape_bucket(self, prepared: dict[str, np.ndarray]) -> int | None:
        """Profiles of many lengths: batched by length bucket and padded to it (`embed/shapes.py`), so that a
        profile's numbers do not depend on the profiles beside it."""
        return length_bucket(len(prepared["genes"]), self.options.max_genes + 1)

    def filler(self, n_tokens: int) -> dict[str, np.ndarray]:
        """A profile of exactly `n_tokens` tokens (<cls> and the first non-special genes of the vocabulary, each
        in bin 1), beside a profile alone in its batch; its output is dropped."""
        specials = {self.vocab[t] for t in (CLS_TOKEN, self.args.pad_token) if t in self.vocab}
        genes = [i for i in sorted(self.vocab.values()) if i not in specials][: n_tokens - 1]
        genes += genes[-1:] * (n_tokens - 1 - len(genes))  # a vocabulary smaller than the bucket: repeat the last
        return {
            "genes": np.array([self.vocab[CLS_TOKEN], *genes], dtype=np.int64),
            "values": np.array([self.args.pad_value] + [1.0] * (n_tokens - 1), dtype=np.float32),
            "n_genes": np.array(n_tokens - 1, dtype=np.int32),
            "n_missing": np.array(0, dtype=np.int32),
        }

    @torch.inference_mode()
    def embed_layers(
        self, batch: list[dict[str, np.ndarray]], layers: tuple[str, ...]
    ) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
        length = max(pad_length(batch), *(len(p["genes"]) for p in batch))  # the bucket's length, when batched so
        genes = np.full((len(batch), length), self.vocab[self.args.pad_token], dtype=np.int64)  # (B, L)
        values = np.full((len(batch), length), self.args.pad_value, dtype=np.float32)
        keep = np.zeros((len(batch), length), dtype=bool)
        for i, p in enumerate(batch):
            n = len(p["genes"])
            genes[i, :n], values[i, :n], keep[i, :n] = p["genes"], p["values"], True
        inputs = (torch.from_numpy(a).to(self.device) for a in (genes, values, keep))
        index = {layer: self._state(layer) for layer in layers}
        states = self.checkpoint.model.hidden_states(*inputs, upto=max(index.values()))
        outputs = {layer: states[k][:, 0] for layer, k in index.items()}  # (B, D) at <cls>
        if self.options.l2:
            outputs = {layer: F.normalize(out, dim=-1) for layer, out in outputs.items()}
        extras = {k: np.stack([p[k] for p in batch]) for k in ("n_genes", "n_missing")}
        return outputs, extras
