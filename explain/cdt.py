"""The CDT task explained: items are labelled enhancer-gene pairs, the input is the enhancer's DNA window
(L positions), the prediction is the head's output at the pair's gene.

Owns what is CDT-specific: rebuilding the model and its inputs from a checkpoint (`CdtExplainer`), choosing
items, streaming their DNA rows, the differentiable prediction of a DNA batch and the attention maps worth
reporting (the DNA->RNA row of the target gene, and the VCE pooling weights). Another task (IsoFormer,
CDBridge) explains by adding a module like this one and a line in `run.EXPLAINERS`.

Item ids are `ENHANCER|GENE`; `--items ENHANCER` means every labelled gene of that enhancer.
Shapes: B items in a batch, L positions, D DNA width, H heads (Hv in the VCE), G genes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from dogmacache.contracts.tables import LABEL_COLUMNS, SPLITS, check_gene_alignment
from dogmacache.contracts.windows import BinCoordinates, WindowGeometry, bin_coordinates
from dogmacache.errors import InputError
from dogmacache.explain.attribution import Predictor, head_mean, target_rows
from dogmacache.explain.inputs import chrom_sizes, open_checked, run_config, window_geometry
from dogmacache.train.checkpoint import read as read_checkpoint
from dogmacache.train.registry import get_task
from dogmacache.train.tasks.cdt.model import check_cdt_inputs
from dogmacache.train.tasks.cdt.pairs import read_labels
from torch import Tensor

SEP = "|"  # between enhancer and gene in an item id


@dataclass(frozen=True)
class ExplainSources:
    """Where the inputs come from; every path but the checkpoint is optional."""

    checkpoint: str
    config: str | None = None  # a train config (needed for imported weights)
    windows: str | None = None  # the recipe's dna_windows table (default: [data] dna_table, else the cache's input)
    bin_bp: int | None = None  # bp per DNA bin when the cache does not record it
    chrom_sizes: str | None = None  # chrom.sizes or .fai (default: the .fai of the cache's genome)


class CdtExplainer:
    """A CDT checkpoint with its caches, labels and windows, ready to explain items."""

    task = "cdt"

    def __init__(self, sources: ExplainSources):
        path = sources.checkpoint
        checkpoint = read_checkpoint(path)
        if checkpoint["task"] != self.task:
            raise InputError(f"{path} holds a {checkpoint['task']!r} model; CdtExplainer explains 'cdt' checkpoints")
        config = run_config(checkpoint, path, sources.config)
        d = config.data
        self.model = get_task(self.task).models[checkpoint["model_class"]](checkpoint["model_config"])
        self.model.load_state_dict(checkpoint["model"])
        self.model.eval()
        self.dna = open_checked(d.dna_cache, "dna", checkpoint, path)
        rna = open_checked(d.rna_cache, "rna", checkpoint, path)
        protein = open_checked(d.protein_cache, "protein", checkpoint, path)
        self.genes = rna.ids.tolist()
        check_gene_alignment(self.genes, protein.ids.tolist(), where=f"{rna.url} vs {protein.url}: ")
        self.rna = torch.from_numpy(rna.read_rows(np.arange(len(rna)), dtype=np.float32))
        self.protein = torch.from_numpy(protein.read_rows(np.arange(len(protein)), dtype=np.float32))
        check_cdt_inputs(self.model.config, torch.zeros(1, *self.dna.item_shape), self.rna, self.protein)
        scale = (checkpoint.get("extras") or {}).get("dna_scale")
        if d.standardize_dna and scale is None:
            raise InputError(
                f"{path}: the run config standardises DNA but the checkpoint holds no dna_scale; "
                "explain it with the config it was trained with"
            )
        self.dna_mean = torch.tensor(scale["mean"], dtype=torch.float32) if scale else None
        self.dna_std = torch.tensor(scale["std"], dtype=torch.float32) if scale else None
        self.pairs = self._pairs(d.labels, d.target)
        self.windows = self._windows(sources.windows or d.dna_table or self.dna.manifest.config.get("input"))
        self.geometry: WindowGeometry = window_geometry(self.dna, sources.bin_bp)
        self.chrom_sizes = chrom_sizes(self.dna, sources.chrom_sizes)
        self.checkpoint_path = str(path)

    # ---- inputs ------------------------------------------------------------------------------------
    def _pairs(self, labels: str, target: str) -> pd.DataFrame:
        table = read_labels(labels, target, LABEL_COLUMNS["cdt"])
        genes = table["gene"].astype(str)
        wrong = genes.to_numpy() != np.asarray(self.genes, dtype=object)[table["gene_index"].to_numpy(np.int64)]
        if wrong.any():
            row = table[wrong].iloc[0]
            raise InputError(
                f"{labels}: gene {row['gene']!r} has gene_index {row['gene_index']} but the RNA cache "
                "names another gene there; the caches come from another gene list: re-embed the "
                "recipe's genes/proteins tables"
            )
        enhancers = table["enhancer"].astype(str)
        return pd.DataFrame(
            {
                "item": enhancers + SEP + genes,
                "enhancer": enhancers,
                "gene": genes,
                "gene_index": table["gene_index"].to_numpy(np.int64),
                "target": table["target"].to_numpy(np.float32),
                "split": table["split"].astype(str),
                "dna_row": self.dna.rows_of(enhancers),
            }
        )

    def _windows(self, path: str | None) -> pd.DataFrame:
        if not path or not Path(path).is_file():
            raise InputError(
                f"the DNA windows table {path!r} does not exist; pass --windows with the recipe's dna_windows.parquet"
            )
        table = pd.read_parquet(path) if str(path).endswith(".parquet") else pd.read_csv(path, sep="\t")
        missing = [c for c in ("id", "chrom", "center") if c not in table.columns]
        if missing:
            raise InputError(f"{path} has no column {missing[0]!r}; a dna_windows table has id, chrom, center, strand")
        table = table.assign(id=table["id"].astype(str)).set_index("id")
        if "strand" not in table.columns:
            table = table.assign(strand="+")  # the contract's default (contracts/tables.py)
        absent = sorted(set(self.pairs["enhancer"]) - set(table.index))
        if absent:
            raise InputError(
                f"{path} has no window for {len(absent)} enhancer(s) of the labels (e.g. {absent[:3]}); "
                "pass the dna_windows table the DNA cache was embedded from"
            )
        return table

    def coordinates(self, enhancer: str) -> BinCoordinates:
        row = self.windows.loc[enhancer]
        size = None if self.chrom_sizes is None else self.chrom_sizes.get(str(row["chrom"]))
        return bin_coordinates(str(row["chrom"]), int(row["center"]), str(row["strand"]), self.geometry, size)

    # ---- choosing items ----------------------------------------------------------------------------
    def select(
        self,
        items: list[str] | None = None,
        split: str | None = None,
        n: int = 100,
        top_effects: bool = False,
        seed: int = 0,
    ) -> pd.DataFrame:
        """The pairs to explain, in the order asked: named items, or n pairs of a split (random with `seed`, or
        the n largest |target| with `top_effects`)."""
        if items:
            chosen = []
            for name in items:
                hit = self.pairs[(self.pairs["item"] == name) | (self.pairs["enhancer"] == name)]
                if hit.empty:
                    example = self.pairs["item"].iloc[0]
                    raise InputError(
                        f"item {name!r} is not a labelled pair or enhancer in the checkpoint's labels; "
                        f"ids are ENHANCER{SEP}GENE (e.g. {example!r}) or an ENHANCER alone"
                    )
                chosen.append(hit)
            return pd.concat(chosen).drop_duplicates("item").reset_index(drop=True)
        if split not in SPLITS:
            raise InputError(f"--split {split!r} is not one of {list(SPLITS)}; pick one, or name --items")
        pool = self.pairs[self.pairs["split"] == split]
        if top_effects:
            order = np.argsort(-np.abs(pool["target"].to_numpy()), kind="stable")[:n]
        else:
            order = np.sort(np.random.default_rng(seed).choice(len(pool), size=min(n, len(pool)), replace=False))
        return pool.iloc[order].reset_index(drop=True)

    def batches(self, chosen: pd.DataFrame, batch_size: int) -> Iterator[tuple[pd.DataFrame, Tensor]]:
        """(pairs, their DNA windows (b, L, D) as cached, float32), `batch_size` pairs at a time."""
        for a in range(0, len(chosen), batch_size):
            part = chosen.iloc[a : a + batch_size]
            rows, local = np.unique(part["dna_row"].to_numpy(), return_inverse=True)
            dna = self.dna.read_rows(rows, dtype=np.float32)[local]
            yield part, torch.from_numpy(np.ascontiguousarray(dna))

    # ---- the model as a function of DNA --------------------------------------------------------------
    def _scaled(self, dna: Tensor) -> Tensor:
        return dna if self.dna_mean is None else (dna - self.dna_mean) / self.dna_std

    def predictor(self) -> Predictor:
        """Cached DNA (B, L, D), gene index (B,) -> prediction (B,), through the checkpoint's DNA scaling."""

        def predict(dna: Tensor, gene_index: Tensor) -> Tensor:
            return self.model(self._scaled(dna), self.rna, self.protein, gene_index)

        return predict

    def baseline(self) -> Tensor:
        """The integrated-gradients start (D,): the training mean of the DNA features when the checkpoint scales
        them (an average position, zero after scaling), else zeros."""
        return torch.zeros(self.dna.item_shape[-1]) if self.dna_mean is None else self.dna_mean.clone()

    @torch.no_grad()
    def attention(self, dna: Tensor, gene_index: Tensor) -> dict[str, np.ndarray]:
        """prediction (B,); dna_to_rna (B, H, L): the target gene's row; dna_to_rna_genes (B, G, L): every gene's
        row, head-averaged; vce_dna (B, Hv, L), vce_rna (B, Hv, G), vce_protein (B, Hv, G)."""
        prediction, maps = self.model.forward_with_attention(self._scaled(dna), self.rna, self.protein, gene_index)
        cross = maps["dna_to_rna"]  # (B, H, G, L)
        out = {
            "prediction": prediction,
            "dna_to_rna": target_rows(cross, gene_index),
            "dna_to_rna_genes": head_mean(cross),
            **{k: maps[k] for k in ("vce_dna", "vce_rna", "vce_protein")},
        }
        return {k: v.float().numpy() for k, v in out.items()}
