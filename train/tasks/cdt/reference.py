"""The CDT run the plain way, one sample at a time: the yardstick `cdt.CentralDogmaTransformer` is tested against.

Owns nothing new: the same architecture and parameter names as `cdt.py` (so either state dict loads into the
other with strict=True), written as the paper's authors' code runs it: a Python loop over samples, the RNA
and protein branches recomputed for every sample, `nn.MultiheadAttention` with per-head weights materialised
(need_weights=True, average_attn_weights=False) everywhere, VCE pooling through full key/value projections.
Too slow for training at the paper's sizes (docs/papers.md#cdt-compute-cost: ~100 s and 24 GB per CPU step); use it
in tests and benchmarks on the small presets.

Shapes as in `cdt.py`: dna (B, L, D_dna), rna (G, D_rna), protein (G, D_prot), gene_index (B,) -> (B,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from dogmacache.errors import InputError
from dogmacache.train.tasks.cdt.model import CentralDogmaTransformer, check_cdt_inputs
from dogmacache.train.tasks.cdt.sizes import CDTConfig
from torch import Tensor, nn

__all__ = ["CDTReference"]


def _attention(config: CDTConfig, n_heads: int) -> nn.MultiheadAttention:
    return nn.MultiheadAttention(config.d_model, n_heads, dropout=config.dropout, bias=True, batch_first=True)


class _Projection(nn.Module):
    def __init__(self, in_width: int, config: CDTConfig):
        super().__init__()
        self.linear = nn.Linear(in_width, config.d_model)
        self.norm = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.norm(self.linear(x)))


class _FeedForward(nn.Module):
    def __init__(self, config: CDTConfig):
        super().__init__()
        self.expand = nn.Linear(config.d_model, config.ffn_multiplier * config.d_model)
        self.contract = nn.Linear(config.ffn_multiplier * config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.contract(self.dropout(F.gelu(self.expand(x)))))


class _Block(nn.Module):
    """Post-norm attention block; returns the new x (1, Nq, D) and per-head weights (1, H, Nq, Nk)."""

    def __init__(self, config: CDTConfig):
        super().__init__()
        self.attention = _attention(config, config.n_heads)
        self.norm1 = nn.LayerNorm(config.d_model)
        self.ffn = _FeedForward(config)
        self.norm2 = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        attended, weights = self.attention(x, context, context, need_weights=True, average_attn_weights=False)
        x = self.norm1(x + self.dropout(attended))
        return self.norm2(x + self.ffn(x)), weights


class _Pool(nn.Module):
    def __init__(self, config: CDTConfig):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, config.d_model))
        self.attention = _attention(config, config.vce_heads)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled, weights = self.attention(self.query[None], x, x, need_weights=True, average_attn_weights=False)
        return pooled[:, 0], weights[:, :, 0]  # (1, D), (1, Hv, N)


class _VCE(nn.Module):
    def __init__(self, config: CDTConfig):
        super().__init__()
        d = config.d_model
        self.dna, self.rna, self.protein = _Pool(config), _Pool(config), _Pool(config)
        self.expand = nn.Linear(3 * d, config.vce_hidden_multiplier * d)
        self.contract = nn.Linear(config.vce_hidden_multiplier * d, d)
        self.norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(config.dropout)


class _Head(nn.Module):
    def __init__(self, config: CDTConfig):
        super().__init__()
        self.hidden = nn.Linear(config.d_model, config.d_model)
        self.output = nn.Linear(config.d_model, config.n_genes)
        self.dropout = nn.Dropout(config.dropout)


class CDTReference(nn.Module):
    """Per-sample CDT; `forward` -> (B,), `forward_with_attention` -> ((B,), maps with the keys of `cdt.py`)."""

    def __init__(self, config: CDTConfig):
        super().__init__()
        self.config = config
        self.dna_projection = _Projection(config.dna_width, config)
        self.rna_projection = _Projection(config.rna_width, config)
        self.protein_projection = _Projection(config.protein_width, config)
        self.dna_self_attention = nn.ModuleList(_Block(config) for _ in range(config.dna_self_layers))
        self.rna_self_attention = nn.ModuleList(_Block(config) for _ in range(config.rna_self_layers))
        self.protein_self_attention = nn.ModuleList(_Block(config) for _ in range(config.protein_self_layers))
        self.dna_to_rna = _Block(config)
        self.rna_to_protein = _Block(config)
        self.vce = _VCE(config)
        self.head = _Head(config)

    @classmethod
    def from_model(cls, model: CentralDogmaTransformer) -> CDTReference:
        """A reference holding a copy of `model`'s weights (strict: every name must match)."""
        reference = cls(model.config)
        reference.load_state_dict(model.state_dict(), strict=True)
        return reference.to(next(model.parameters()).device).train(model.training)

    def _one_sample(self, dna: Tensor, rna: Tensor, protein: Tensor, gene: int) -> tuple[Tensor, dict[str, Tensor]]:
        """dna (1, L, D_dna), rna (1, G, D_rna), protein (1, G, D_prot) -> prediction (1,) and maps with batch 1."""
        maps = {}
        rna_h = self.rna_projection(rna)
        for k, block in enumerate(self.rna_self_attention):
            rna_h, maps[f"rna_self.{k}"] = block(rna_h, rna_h)
        protein_h = self.protein_projection(protein)
        for k, block in enumerate(self.protein_self_attention):
            protein_h, maps[f"protein_self.{k}"] = block(protein_h, protein_h)
        dna_h = self.dna_projection(dna)
        for k, block in enumerate(self.dna_self_attention):
            dna_h, maps[f"dna_self.{k}"] = block(dna_h, dna_h)
        rna_h, maps["dna_to_rna"] = self.dna_to_rna(rna_h, dna_h)
        protein_h, maps["rna_to_protein"] = self.rna_to_protein(protein_h, rna_h)
        vce = self.vce
        z_dna, maps["vce_dna"] = vce.dna(dna_h)
        z_rna, maps["vce_rna"] = vce.rna(rna_h)
        z_protein, maps["vce_protein"] = vce.protein(protein_h)
        cell = vce.norm(vce.contract(vce.dropout(F.gelu(vce.expand(torch.cat([z_dna, z_rna, z_protein], dim=-1))))))
        head = self.head
        outputs = head.output(head.dropout(F.gelu(head.hidden(cell))))  # (1, G)
        return outputs[:, gene], maps

    def forward_with_attention(
        self, dna: Tensor, rna: Tensor, protein: Tensor, gene_index: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        check_cdt_inputs(self.config, dna, rna, protein, gene_index)
        predictions, per_sample = [], []
        for i in range(dna.shape[0]):
            prediction, maps = self._one_sample(dna[i : i + 1], rna[None], protein[None], int(gene_index[i]))
            predictions.append(prediction)
            per_sample.append(maps)
        if not per_sample:
            raise InputError("dna holds 0 samples; pass at least one")
        return torch.cat(predictions), {key: torch.cat([m[key] for m in per_sample]) for key in per_sample[0]}

    def forward(self, dna: Tensor, rna: Tensor, protein: Tensor, gene_index: Tensor) -> Tensor:
        """Predictions (B,); attention weights are computed and dropped, as the authors' code does."""
        return self.forward_with_attention(dna, rna, protein, gene_index)[0]
