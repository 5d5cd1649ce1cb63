"""Baselines reported beside every model in the same run (the reference reported none).

- per-gene mean: the training mean of the target for the pair's gene (the global mean for unseen genes);
  what a model gets without reading the DNA.
- DNA-only MLP: DNA embeddings mean-pooled over positions (B, D_dna) -> MLP -> one output per gene, the
  target gene's output taken: the same head shape as CDT, without RNA, protein or attention over positions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from torch import Tensor, nn


def per_gene_mean(train: pd.DataFrame, other: pd.DataFrame) -> np.ndarray:
    means = train.groupby("gene_index")["target"].mean()
    return other["gene_index"].map(means).fillna(float(train["target"].mean())).to_numpy(np.float32)


class DnaOnlyMLP(nn.Module):
    """(B, L, D_dna) -> mean over L -> LayerNorm -> Linear -> GELU -> Dropout -> Linear(n_genes); target gene."""

    def __init__(self, dna_width: int, n_genes: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dna_width), nn.Linear(dna_width, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, n_genes),
        )  # fmt: skip

    def forward(self, dna: Tensor, rna: Tensor, protein: Tensor, gene_index: Tensor) -> Tensor:
        out = self.net(dna.mean(dim=1))  # (B, G)
        return out.gather(1, gene_index.view(-1, 1)).squeeze(1)
