"""The CDT training data: a labelled table (from a recipe) joined by id with three caches.

- DNA (N_enh, L, D_dna): read lazily, in blocks of enhancers; each block's rows are read once and every
  (enhancer, gene) pair of the block is served from them, so an enhancer is read once per epoch however many
  genes pair with it. Memory: one block per DataLoader worker in flight, independent of the cache's size.
  `preload_bytes` keeps all DNA rows in RAM instead when they fit that budget.
- RNA (G, D_rna) and protein (G, D_prot): shared by every sample, loaded once, checked to name the same gene
  at every index, and that index must be the table's `gene_index`.
Refuses mismatched inputs with errors that name what differs and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from dogmacache.cache import EmbeddingCache, open_cache
from dogmacache.contracts.provenance import digest_strings
from dogmacache.contracts.tables import check_gene_alignment
from dogmacache.errors import InputError


@dataclass
class CdtTables:
    """Everything the CDT trainer reads, joined and checked."""

    pairs: pd.DataFrame  # dna_row, gene_index, target, split, enhancer, gene
    dna: EmbeddingCache
    rna: torch.Tensor  # (G, D_rna) float32
    protein: torch.Tensor  # (G, D_prot) float32
    genes: list[str]
    fingerprints: dict[str, dict]  # per cache: url, input_digest, ids_digest, model, revision
    dna_scale: dict[str, np.ndarray] | None = None  # per-feature mean/std from training enhancers, or None


def load_cdt_tables(
    labels: str | Path,
    dna_cache: str,
    rna_cache: str,
    protein_cache: str,
    target: str = "beta",
    dna_table: str | Path | None = None,
) -> CdtTables:
    labels_path = Path(labels)
    if not labels_path.is_file():
        raise InputError(f"labels table {str(labels_path)!r} does not exist; run the recipe (dogmacache recipe ...)")
    table = pd.read_parquet(labels_path)
    need = ["enhancer", "gene", "gene_index", "split", target]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise InputError(f"{labels_path} has no column {missing[0]!r}; a CDT labels table needs {need}")
    dna, rna, protein = open_cache(dna_cache), open_cache(rna_cache), open_cache(protein_cache)
    for cache, modality in ((dna, "dna"), (rna, ("gene", "rna")), (protein, "protein")):
        allowed = modality if isinstance(modality, tuple) else (modality,)
        if cache.manifest.modality not in allowed:
            raise InputError(f"{cache.url} holds {cache.manifest.modality} embeddings, expected {'/'.join(allowed)}")
    if len(dna.item_shape) != 2:
        raise InputError(f"{dna.url} holds pooled DNA {dna.item_shape}; CDT attends over positions: embed with pooling none")
    genes = rna.ids.tolist()
    check_gene_alignment(genes, protein.ids.tolist(), where=f"{rna.url} vs {protein.url}: ")
    index_of = {g: i for i, g in enumerate(genes)}
    wrong = table[table["gene"].map(index_of) != table["gene_index"]]
    if len(wrong):
        row = wrong.iloc[0]
        raise InputError(
            f"{labels_path}: gene {row['gene']!r} has gene_index {row['gene_index']} but is at "
            f"{index_of.get(row['gene'])} in {rna.url}; the caches come from another gene list: re-embed the "
            "recipe's genes/proteins tables"
        )
    if dna_table is not None:
        ids = pd.read_parquet(dna_table)["id"].astype(str).tolist()
        if digest_strings(ids) != dna.manifest.ids_digest:
            raise InputError(
                f"{dna.url} was embedded from another input set than {dna_table} (ids differ); re-embed it"
            )
    pairs = pd.DataFrame({
        "dna_row": dna.rows_of(table["enhancer"].astype(str)),  # names missing ids in one error
        "gene_index": table["gene_index"].astype(np.int64).values,
        "target": table[target].astype(np.float32).values,
        "split": table["split"].values,
        "enhancer": table["enhancer"].astype(str).values,
        "gene": table["gene"].astype(str).values,
    })  # fmt: skip
    fingerprints = {
        name: {"url": c.url, "input_digest": c.manifest.input_digest, "ids_digest": c.manifest.ids_digest,
               "model": c.manifest.model, "model_revision": c.manifest.model_revision}
        for name, c in (("dna", dna), ("rna", rna), ("protein", protein))
    }  # fmt: skip
    return CdtTables(
        pairs=pairs, dna=dna, genes=genes, fingerprints=fingerprints,
        rna=torch.from_numpy(rna.read_rows(np.arange(len(rna)), dtype=np.float32)),
        protein=torch.from_numpy(protein.read_rows(np.arange(len(protein)), dtype=np.float32)),
    )  # fmt: skip


class EnhancerBlocks(torch.utils.data.Dataset):
    """Item k of an epoch = the k-th block of enhancers (a seeded shuffle per epoch) with all their pairs:
    {"dna": (n_enh, L, D) float32, "local": (P,) row in the block, "gene_index": (P,), "target": (P,)}."""

    def __init__(self, pairs: pd.DataFrame, dna: EmbeddingCache, block_enhancers: int, seed: int,
                 shuffle: bool, preload: np.ndarray | None = None,
                 scale: dict[str, np.ndarray] | None = None):  # fmt: skip
        self.pairs, self.dna, self.block, self.seed, self.shuffle = pairs, dna, block_enhancers, seed, shuffle
        self.scale = scale
        self.rows = np.unique(pairs["dna_row"].to_numpy())
        self.by_row = {r: idx.to_numpy() for r, idx in pairs.groupby("dna_row").groups.items()}
        self.preload = preload
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.rows) if self.shuffle else self.rows
        self.blocks = [order[i : i + self.block] for i in range(0, len(order), self.block)]
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        rows = np.sort(self.blocks[k])
        if self.preload is not None:
            dna = self.preload[rows]
        else:
            dna = self.dna.read_rows(rows, dtype=np.float32)  # each enhancer of the block read once
        if self.scale is not None:
            dna = (dna - self.scale["mean"]) / self.scale["std"]
        positions = np.concatenate([self.by_row[r] for r in rows])
        local = np.searchsorted(rows, self.pairs["dna_row"].to_numpy()[positions])
        if self.shuffle:
            perm = np.random.default_rng([self.seed, self.epoch, k]).permutation(len(positions))
            positions, local = positions[perm], local[perm]
        return {
            "dna": torch.from_numpy(np.ascontiguousarray(dna)),
            "local": torch.from_numpy(local),
            "gene_index": torch.from_numpy(self.pairs["gene_index"].to_numpy()[positions]),
            "target": torch.from_numpy(self.pairs["target"].to_numpy()[positions]),
            "pair": torch.from_numpy(positions),
        }


def preload_dna(dna: EmbeddingCache, budget_bytes: int) -> np.ndarray | None:
    """All DNA rows as float32 when they fit `budget_bytes` (indexed by cache row), else None."""
    need = len(dna) * int(np.prod(dna.item_shape)) * 4
    if budget_bytes <= 0 or need > budget_bytes:
        return None
    return dna.read_rows(np.arange(len(dna)), dtype=np.float32)


def dna_scaler(tables: CdtTables, preload: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per-feature mean and std over the training enhancers' positions (D_dna,), one pass over their rows."""
    rows = np.unique(tables.pairs.loc[tables.pairs["split"] == "train", "dna_row"].to_numpy())
    total = np.zeros(tables.dna.item_shape[-1])
    square = np.zeros_like(total)
    count = 0
    for a in range(0, len(rows), 64):
        block = preload[rows[a : a + 64]] if preload is not None else tables.dna.read_rows(rows[a : a + 64], np.float32)
        flat = block.reshape(-1, block.shape[-1]).astype(np.float64)
        total += flat.sum(0)
        square += (flat**2).sum(0)
        count += len(flat)
    mean = total / count
    std = np.sqrt(np.maximum(square / count - mean**2, 0.0))
    return {"mean": mean.astype(np.float32), "std": np.maximum(std, 1e-6).astype(np.float32)}
