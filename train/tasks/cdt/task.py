"""The CDT task: enhancer-gene pairs (`pairs`) plus the RNA (G, D_rna) and protein (G, D_prot) tables shared by
every sample, the Central Dogma Transformer (`model.py`) on them, and its baselines: the per-gene training
mean and a DNA-only MLP (`dna_mlp`) trained by the same loop on the same batches.

Training steps run one sample per pair (`model(dna[local], rna, protein, gene_index)`, as the authors);
evaluation runs one forward pass per unique enhancer and reads every gene's output from it
(`predict_all_genes`), since the head predicts all G genes at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from dogmacache.cache import open_cache
from dogmacache.contracts.tables import check_gene_alignment
from dogmacache.errors import InputError
from dogmacache.train.config import required
from dogmacache.train.task import Chunk, FittedBaseline, FixedBaseline, Task
from dogmacache.train.tasks.cdt import dna_mlp, pairs
from dogmacache.train.tasks.cdt.model import CentralDogmaTransformer
from dogmacache.train.tasks.cdt.sizes import CDTConfig, CdtModelConfig, model_sizes
from torch import Tensor, nn


@dataclass(frozen=True)
class CdtDataConfig(pairs.PairDataConfig):
    rna_cache: str = required()  # gene-token cache (G, D_rna), ids = gene symbols in canonical order
    protein_cache: str = required()  # protein cache (G, D_prot), same order


@dataclass
class CdtData(pairs.PairData):
    rna: torch.Tensor | None = None  # (G, D_rna) float32
    protein: torch.Tensor | None = None  # (G, D_prot) float32
    genes: list[str] = dataclasses.field(default_factory=list)


def load_gene_tables(config: CdtDataConfig) -> dict[str, Any]:
    """RNA and protein tables, checked to name the same gene at every index."""
    rna, protein = open_cache(config.rna_cache), open_cache(config.protein_cache)
    for cache, allowed, key in (
        (rna, ("gene", "rna"), "rna_cache"),
        (protein, ("protein",), "protein_cache"),
    ):
        if cache.manifest.modality not in allowed:
            raise InputError(
                f"{cache.url} holds {cache.manifest.modality} embeddings; [data] {key} needs "
                f"{'/'.join(allowed)} embeddings"
            )
        if len(cache.item_shape) != 1:
            raise InputError(
                f"{cache.url} holds per-position items {cache.item_shape}; [data] {key} needs one "
                "pooled vector per gene"
            )
    genes = rna.ids.tolist()
    check_gene_alignment(genes, protein.ids.tolist(), where=f"{rna.url} vs {protein.url}: ")
    return {
        "rna": torch.from_numpy(rna.read_rows(np.arange(len(rna)), dtype=np.float32)),
        "protein": torch.from_numpy(protein.read_rows(np.arange(len(protein)), dtype=np.float32)),
        "genes": genes,
        "caches": {"rna": rna, "protein": protein},
    }


def check_gene_index(data: CdtData, labels: str, rna_url: str) -> None:
    index_of = {g: i for i, g in enumerate(data.genes)}
    for split in data.splits.values():
        wrong = split[split["gene"].map(index_of) != split["gene_index"]]
        if len(wrong):
            row = wrong.iloc[0]
            where = (
                f"is not among the {len(index_of)} genes of {rna_url}"
                if row["gene"] not in index_of
                else f"is at {index_of[row['gene']]} in {rna_url}"
            )
            raise InputError(
                f"{labels}: gene {row['gene']!r} has gene_index {row['gene_index']} but {where}; the caches come from "
                "another gene list: re-embed the recipe's genes/proteins tables"
            )


class CdtTask(Task):
    split_keys = ("enhancer",)
    no_input_baseline = "per_gene_mean"
    example_keys = ("enhancer", "gene")
    name = "cdt"
    data_config = CdtDataConfig
    input_columns = ("dna_row",)  # the RNA and protein tables are indexed by the gene the head predicts
    one_split_caches = ("dna_cache",)  # an enhancer's window (genes are shared by every split, as in the paper)
    model_config = CdtModelConfig
    models: ClassVar[dict] = {"CentralDogmaTransformer": lambda c: CentralDogmaTransformer(CDTConfig.from_dict(c))}

    def load(self) -> CdtData:
        d = self.config.data
        tables = load_gene_tables(d)
        caches = tables.pop("caches")
        data = pairs.load_pairs(d, CdtData, **tables)
        data.fingerprints.update({name: c.fingerprint() for name, c in caches.items()})
        check_gene_index(data, d.labels, caches["rna"].url)
        return data

    def cdt_config(self, data: CdtData) -> CDTConfig:
        """The preset's sizes, [model]'s overrides applied, every input size taken from the caches."""
        inputs = {
            "n_genes": len(data.genes),
            "dna_positions": data.dna.item_shape[0],
            "dna_width": data.dna.item_shape[1],
            "rna_width": int(data.rna.shape[1]),
            "protein_width": int(data.protein.shape[1]),
        }
        return model_sizes(self.config.model, inputs)

    def build_model(self, data: CdtData, prerequisites: dict[str, Any]) -> tuple[nn.Module, str, dict[str, Any]]:
        config = self.cdt_config(data)
        return CentralDogmaTransformer(config), "CentralDogmaTransformer", config.to_dict()

    def train_chunks(self, data: CdtData, epoch: int) -> torch.utils.data.Dataset:
        return pairs.train_chunks(data, self.config, epoch)

    def eval_chunks(self, data: CdtData, split: str) -> torch.utils.data.Dataset:
        return pairs.EnhancerBlocks(data, data.splits[split], self.config.data.eval_enhancers)

    def train_outputs(self, model: nn.Module, batch: Chunk, tables: dict[str, Any]) -> Tensor:
        e = batch.examples
        dna = pairs.chunk_dna(batch, tables["dna"])[e["local"]]
        return model(dna, tables["rna"], tables["protein"], e["gene_index"])

    def predict_chunk(self, model: nn.Module, chunk: Chunk, tables: dict[str, Any]) -> Tensor:
        e = chunk.examples
        dna = pairs.chunk_dna(chunk, tables["dna"])
        every_gene = model.predict_all_genes(dna, tables["rna"], tables["protein"])  # (n_enh, G)
        return every_gene[e["local"], e["gene_index"]]

    def on_device(self, data: CdtData, device: torch.device) -> dict[str, Any]:
        """The shared gene tables on the training device, and the DNA rows there per `dna_on_device` (None:
        chunks carry the rows)."""
        return {
            "rna": data.rna.to(device),
            "protein": data.protein.to(device),
            "dna": pairs.dna_to_device(data, self.config.data, device),
        }

    def baselines(self, data: CdtData) -> dict[str, FittedBaseline | FixedBaseline]:
        if not self.config.train.baselines:
            return {}
        dropout = self.cdt_config(data).dropout
        mlp_config = dataclasses.replace(
            self.config,
            task="dna_mlp",
            model=dna_mlp.DnaMlpModelConfig(hidden=self.config.model.mlp_hidden, dropout=dropout),
        )
        return {
            "per_gene_mean": FixedBaseline(pairs.per_gene_mean),
            "dna_mlp": FittedBaseline(dna_mlp.DnaMlpTask(mlp_config)),
        }
