"""The DNA-only MLP task: enhancer-gene pairs (`pairs`) from the DNA cache alone. DNA embeddings mean-pooled
over positions (B, D_dna) -> LayerNorm -> Linear -> GELU -> Dropout -> Linear(G), the target gene's output
taken: CDT's head shape without RNA, protein or attention over positions. CDT runs it as a baseline; it also
trains on its own (`task = "dna_mlp"`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from dogmacache.train.task import Chunk, FittedBaseline, FixedBaseline, Task
from dogmacache.train.tasks.cdt import pairs
from torch import Tensor, nn


@dataclass(frozen=True)
class DnaMlpModelConfig:
    hidden: int = 256  # hidden width
    dropout: float = 0.3

    LIMITS: ClassVar[dict[str, str]] = {"hidden": ">=1", "dropout": "[0,1)"}


class DnaOnlyMLP(nn.Module):
    """(B, L, D_dna) -> mean over L -> LayerNorm -> Linear -> GELU -> Dropout -> Linear(n_genes): (B, G)."""

    def __init__(self, dna_width: int, n_genes: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dna_width),
            nn.Linear(dna_width, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_genes),
        )

    def forward(self, dna: Tensor) -> Tensor:
        return self.net(dna.mean(dim=1))  # (B, G)


class DnaMlpTask(Task):
    split_keys = ("enhancer",)
    example_keys = ("enhancer", "gene")
    name = "dna_mlp"
    no_input_baseline = "per_gene_mean"
    data_config = pairs.PairDataConfig
    input_columns = ("dna_row",)
    one_split_caches = ("dna_cache",)
    model_config = DnaMlpModelConfig
    models: ClassVar[dict] = {"DnaOnlyMLP": lambda c: DnaOnlyMLP(**c)}

    def load(self) -> pairs.PairData:
        return pairs.load_pairs(self.config.data)

    def build_model(self, data: pairs.PairData, prerequisites: dict[str, Any]) -> tuple[nn.Module, str, dict[str, Any]]:
        # one output per gene: CDT's gene table when run as its baseline, else the labels' gene_index range
        genes = getattr(data, "genes", None)
        n_genes = len(genes) if genes else 1 + max(int(s["gene_index"].max()) for s in data.splits.values())
        config = {
            "dna_width": data.dna.item_shape[-1],
            "n_genes": n_genes,
            "hidden": self.config.model.hidden,
            "dropout": self.config.model.dropout,
        }
        return DnaOnlyMLP(**config), "DnaOnlyMLP", config

    def train_chunks(self, data: pairs.PairData, epoch: int) -> torch.utils.data.Dataset:
        return pairs.train_chunks(data, self.config, epoch)

    def eval_chunks(self, data: pairs.PairData, split: str) -> torch.utils.data.Dataset:
        return pairs.EnhancerBlocks(data, data.splits[split], self.config.data.eval_enhancers)

    def train_outputs(self, model: nn.Module, batch: Chunk, tables: dict[str, Any]) -> Tensor:
        e = batch.examples
        out = model(pairs.chunk_dna(batch, tables["dna"])[e["local"]])  # (P, G)
        return out.gather(1, e["gene_index"].view(-1, 1)).squeeze(1)

    def predict_chunk(self, model: nn.Module, chunk: Chunk, tables: dict[str, Any]) -> Tensor:
        e = chunk.examples
        return model(pairs.chunk_dna(chunk, tables["dna"]))[e["local"], e["gene_index"]]

    def on_device(self, data: pairs.PairData, device: torch.device) -> dict[str, Any]:
        """The DNA rows on the device per `dna_on_device` (one table per device, shared with CDT when run as its
        baseline); None: chunks carry the rows."""
        return {"dna": pairs.dna_to_device(data, self.config.data, device)}

    def baselines(self, data: pairs.PairData) -> dict[str, FittedBaseline | FixedBaseline]:
        return {"per_gene_mean": FixedBaseline(pairs.per_gene_mean)} if self.config.train.baselines else {}
