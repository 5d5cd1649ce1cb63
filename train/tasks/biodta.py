"""The Bio-DTA task (docs/papers.md#bio-dta): an adapter from a gene's DNA embedding (the Enformer
trunk over its TSS window) into the single-cell model's gene-token space, trained to give the gene's own token.

Data: the `gene_tss` recipe's `genes.parquet` (id = gene symbol, split by gene), a per-position DNA cache of those
windows (ids = symbols, (L, D_dna)) and the scGPT gene-token cache (ids = symbols, (D_tok,)); the target of a
gene is its row of the token cache. Retrieval ranks a prediction against EVERY row of the token cache (the
vocabulary the cache holds), not only the genes of the split.

Model (`TokenAdapter`): LayerNorm over the DNA positions, pooled by attention with one learned query (or a mean)
-> Linear -> GELU -> Dropout -> Linear(D_tok). Loss: 1 - cosine, MSE, or their sum ([model] loss).
Baseline: the mean training token for every gene.

Shapes: B genes, L positions, D_dna / D_tok widths, V tokens in the token cache.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from dogmacache.cache import EmbeddingCache
from dogmacache.contracts.tables import SPLITS
from dogmacache.errors import InputError
from dogmacache.train.config import required
from dogmacache.train.metrics import regression_metrics
from dogmacache.train.task import (
    Batches,
    Chunk,
    FittedBaseline,
    FixedBaseline,
    Task,
    TaskData,
    open_task_cache,
    read_table,
)
from torch import Tensor, nn

POOLINGS = ("attention", "mean")
LOSSES = ("cosine", "mse", "both")
TOP_K = (1, 10)  # retrieval cut-offs reported


@dataclass(frozen=True)
class BiodtaDataConfig:
    labels: str = required()  # the gene_tss recipe's genes.parquet (id = gene symbol, split)
    dna_cache: str = required()  # per-position DNA cache of the TSS windows, ids = gene symbols
    token_cache: str = required()  # scGPT gene-token cache (pooled (D,)), ids = gene symbols
    eval_batch: int = 64  # genes per evaluation forward pass
    preload_bytes: int = 2 << 30  # keep the DNA rows in RAM when they fit this budget (bytes, as float32)

    LIMITS: ClassVar[dict[str, str]] = {"eval_batch": ">=1", "preload_bytes": ">=0"}


@dataclass(frozen=True)
class BiodtaModelConfig:
    pooling: str = "attention"  # attention (one learned query over the DNA positions) | mean
    hidden: int = 512  # MLP hidden width
    dropout: float = 0.1  # before the last Linear
    loss: str = "cosine"  # cosine (1 - cos) | mse | both (their sum)

    LIMITS: ClassVar[dict[str, str]] = {"hidden": ">=1", "dropout": "[0,1)"}
    CHOICES: ClassVar[dict[str, tuple]] = {"pooling": POOLINGS, "loss": LOSSES}


class TokenAdapter(nn.Module):
    """(B, L, D_dna) DNA embeddings -> (B, D_tok) adapted gene tokens."""

    def __init__(self, dna_width: int, token_width: int, hidden: int, pooling: str, dropout: float):
        super().__init__()
        if pooling not in POOLINGS:
            raise InputError(f"Bio-DTA pooling {pooling!r} is not one of {POOLINGS}; pick one of them")
        self.pooling = pooling
        self.norm = nn.LayerNorm(dna_width)
        self.query = nn.Parameter(torch.zeros(dna_width)) if pooling == "attention" else None  # zeros: starts as mean
        self.mlp = nn.Sequential(
            nn.Linear(dna_width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, token_width)
        )

    def pool_weights(self, dna: Tensor) -> Tensor:
        """(B, L, D) -> (B, L) weights over positions, summing to 1."""
        x = self.norm(dna)
        if self.query is None:
            return torch.full(x.shape[:2], 1.0 / x.shape[1], device=x.device, dtype=x.dtype)
        return torch.softmax(x @ self.query / x.shape[-1] ** 0.5, dim=1)

    def forward(self, dna: Tensor) -> Tensor:
        x = self.norm(dna)  # (B, L, D)
        pooled = (self.pool_weights(dna)[..., None] * x).sum(dim=1)  # (B, D)
        return self.mlp(pooled)


@dataclass
class BiodtaData(TaskData):
    dna: EmbeddingCache | None = None
    tokens: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (V, D_tok)
    token_ids: list[str] = dataclasses.field(default_factory=list)  # (V,) symbols of the token cache
    preload: np.ndarray | None = None  # (N_dna, L, D) float32 where it fits


def _read_labels(path: Path) -> pd.DataFrame:
    table = read_table(
        path, ("id", "split"), recipe="gene_tss", expected="Bio-DTA's labels are the gene_tss recipe's genes table"
    )
    return table


def load_biodta(config: Any) -> BiodtaData:
    d = config.data
    table = _read_labels(Path(d.labels))
    dna = open_task_cache(d.dna_cache, "dna_cache", ("dna",), True, "embed the recipe's TSS windows, no pooling")
    token_cache = open_task_cache(
        d.token_cache, "token_cache", ("gene",), False, "one token per gene: embed --model scgpt --modality gene"
    )
    token_ids = [str(i) for i in token_cache.ids]
    tokens = token_cache.read_rows(np.arange(len(token_cache)), dtype=np.float32)  # (V, D_tok)
    frame = pd.DataFrame({"id": table["id"].astype(str), "split": table["split"]})
    frame["dna_row"] = dna.rows_of(frame["id"])  # names the genes without a window
    frame["token_row"] = token_cache.rows_of(frame["id"])  # names the genes without a token
    splits = {}
    for split in SPLITS:
        part = frame[frame["split"] == split].reset_index(drop=True)
        if part.empty:
            raise InputError(f"{d.labels} has no {split} genes; every split needs some (re-run the recipe)")
        part["target"] = list(tokens[part["token_row"].to_numpy()])
        splits[split] = part
    need = len(dna) * int(np.prod(dna.item_shape)) * 4
    preload = dna.read_rows(np.arange(len(dna)), dtype=np.float32) if 0 < need <= d.preload_bytes else None
    return BiodtaData(
        splits=splits,
        fingerprints={"dna": dna.fingerprint(), "token": token_cache.fingerprint()},
        dna=dna,
        tokens=tokens,
        token_ids=token_ids,
        preload=preload,
    )


def dna_rows(data: BiodtaData, rows: np.ndarray) -> np.ndarray:
    """(len(rows), L, D) float32, each cache row read once."""
    if data.preload is not None:
        return data.preload[rows]
    unique, inverse = np.unique(rows, return_inverse=True)
    return data.dna.read_rows(unique, dtype=np.float32)[inverse]


class GeneBatches(Batches):
    """Batches of genes with their DNA rows and target tokens."""

    def __init__(self, data: BiodtaData, split: str, size: int, order: np.ndarray | None = None):
        self.data, self.part = data, data.splits[split]
        super().__init__(len(self.part), size, order)

    def chunk(self, positions: np.ndarray) -> Chunk:
        part = self.part.iloc[positions]
        return Chunk(
            {
                "index": torch.from_numpy(positions.astype(np.int64)),
                "target": torch.from_numpy(np.stack(part["target"].to_list()).astype(np.float32)),
                "dna": torch.from_numpy(np.ascontiguousarray(dna_rows(self.data, part["dna_row"].to_numpy()))),
            }
        )


def token_loss(outputs: Tensor, target: Tensor, kind: str) -> Tensor:
    """1 - mean cosine, MSE, or their sum."""
    cosine = 1 - nn.functional.cosine_similarity(outputs.float(), target, dim=-1).mean()
    mse = nn.functional.mse_loss(outputs.float(), target)
    return {"cosine": cosine, "mse": mse, "both": cosine + mse}[kind]


def retrieval(predictions: np.ndarray, tokens: np.ndarray, true_rows: np.ndarray) -> np.ndarray:
    """(B,) rank (1 = best) of each gene's own token among all V tokens, by cosine to its prediction; ties
    count against the true gene (a constant prediction ranks no better than its ties)."""
    p = predictions / np.maximum(np.linalg.norm(predictions, axis=1, keepdims=True), 1e-12)
    t = tokens / np.maximum(np.linalg.norm(tokens, axis=1, keepdims=True), 1e-12)
    similarity = p @ t.T  # (B, V)
    own = similarity[np.arange(len(p)), true_rows]
    return (similarity >= own[:, None]).sum(axis=1)


class BiodtaTask(Task):
    split_keys = ("id",)
    example_keys = ("id",)
    name = "biodta"
    data_config = BiodtaDataConfig
    model_config = BiodtaModelConfig
    models: ClassVar[dict] = {"TokenAdapter": lambda c: TokenAdapter(**c)}
    metric = "cosine"  # mean cosine to the true token on validation genes
    no_input_baseline = "mean_token"
    input_columns = ("dna_row",)
    one_split_caches = ("dna_cache",)
    target_caches = ("token_cache",)
    # the null moves a gene's token and the row retrieval ranks it by together, so that its cosine and its top-k
    # score one answer key (the loss reads the token alone)
    target_columns = ("target", "token_row")

    def load(self) -> BiodtaData:
        return load_biodta(self.config)

    def build_model(self, data: BiodtaData, prerequisites: dict[str, Any]) -> tuple[nn.Module, str, dict[str, Any]]:
        m = self.config.model
        config = {
            "dna_width": data.dna.item_shape[-1],
            "token_width": data.tokens.shape[1],
            "hidden": m.hidden,
            "pooling": m.pooling,
            "dropout": m.dropout,
        }
        return TokenAdapter(**config), "TokenAdapter", config

    def train_chunks(self, data: BiodtaData, epoch: int) -> torch.utils.data.Dataset:
        order = np.random.default_rng([self.config.train.seed, epoch]).permutation(len(data.splits["train"]))
        return GeneBatches(data, "train", self.config.train.batch_size, order)

    def eval_chunks(self, data: BiodtaData, split: str) -> torch.utils.data.Dataset:
        return GeneBatches(data, split, self.config.data.eval_batch)

    def train_outputs(self, model: nn.Module, batch: Chunk, tables: dict[str, Any]) -> Tensor:
        return model(batch.examples["dna"])

    def predict_chunk(self, model: nn.Module, chunk: Chunk, tables: dict[str, Any]) -> Tensor:
        return model(chunk.examples["dna"])

    def loss(self, outputs: Tensor, batch: Chunk, tables: dict[str, Any]) -> Tensor:
        return token_loss(outputs, batch.examples["target"], self.config.model.loss)

    def observed(self, data: BiodtaData, split: str) -> np.ndarray:
        return np.stack(data.splits[split]["target"].to_list())

    def metrics(self, predictions: np.ndarray, data: BiodtaData, split: str) -> dict[str, Any]:
        """Pooled regression over (gene, dimension) cells; mean cosine to the true token; rank of the true gene
        among all V tokens (top-1 / top-10 fractions, mean rank) and V itself."""
        observed = self.observed(data, split)
        cosine = np.sum(predictions * observed, axis=1) / np.maximum(
            np.linalg.norm(predictions, axis=1) * np.linalg.norm(observed, axis=1), 1e-12
        )
        ranks = retrieval(predictions, data.tokens, data.splits[split]["token_row"].to_numpy())
        return {
            **regression_metrics(predictions.ravel(), observed.ravel()),
            "pooled_over": "gene x dimension cells",  # n, pearson, spearman, r2 above; n_examples genes
            "n_examples": int(len(observed)),
            "cosine": float(cosine.mean()),
            **{f"top{k}": float(np.mean(ranks <= k)) for k in TOP_K},
            "mean_rank": float(ranks.mean()),
            "n_tokens": len(data.tokens),
        }

    def baselines(self, data: BiodtaData) -> dict[str, FittedBaseline | FixedBaseline]:
        return {"mean_token": FixedBaseline(mean_token)} if self.config.train.baselines else {}


def mean_token(data: TaskData, split: str) -> np.ndarray:
    """The mean training token for every gene of `split`."""
    train = np.stack(data.splits["train"]["target"].to_list())
    return np.repeat(train.mean(axis=0, keepdims=True), len(data.splits[split]), axis=0).astype(np.float32)
