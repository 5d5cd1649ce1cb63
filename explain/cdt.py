"""The CDT task explained: items are labelled enhancer-gene pairs, the input is the enhancer's DNA window
(L positions), the prediction is the head's output at the pair's gene.

Owns what is CDT-specific: rebuilding the model from a checkpoint and its inputs through the CDT task's own
`load()` on the checkpoint's run config (`CdtExplainer`, `load_data`), choosing items, streaming their DNA rows,
the differentiable prediction of a DNA batch and the attention maps worth reporting (the DNA->RNA row of the
target gene, and the VCE pooling weights). Another task (IsoFormer, CDBridge) explains by adding a module like
this one and a line in `run.EXPLAINERS`.

Item ids are `ENHANCER|GENE`; `--items ENHANCER` means every labelled gene of that enhancer.
Shapes: B items in a batch, L positions, D DNA width, H heads (Hv in the VCE), G genes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from dogmacache.contracts.tables import SPLITS
from dogmacache.contracts.windows import BinCoordinates, WindowGeometry, bin_coordinates
from dogmacache.embed.inputs import check_embedded_from, read_input_table
from dogmacache.errors import CacheError, InputError
from dogmacache.explain.attribution import Predictor, head_mean, target_rows
from dogmacache.explain.inputs import (
    check_fingerprints,
    chrom_sizes,
    dna_table_path,
    run_config,
    sized_chromosomes,
    window_geometry,
)
from dogmacache.train.checkpoint import read as read_checkpoint
from dogmacache.train.config import RunConfig
from dogmacache.train.registry import get_task
from dogmacache.train.task import feature_scale
from dogmacache.train.tasks.cdt.model import check_cdt_inputs
from torch import Tensor

SEP = "|"  # between enhancer and gene in an item id


@dataclass(frozen=True)
class ExplainSources:
    """Where the inputs come from. The checkpoint's run config names the caches and labels; what no cache
    manifest records (it names its input files by name and digest, never by path) is given here."""

    checkpoint: str
    chrom_sizes: str | None = None  # chrom.sizes or .fai: required (bins are clipped at chromosome ends)
    dna_table: str | None = None  # the recipe's dna_windows.parquet (default: the run config's [data] dna_table)
    config: str | None = None  # a train config (needed for imported weights)
    bin_bp: int | None = None  # bp per DNA bin when the cache does not record it


def load_data(task: type, config: RunConfig, dna_table: str, checkpoint_path: str | Path) -> Any:
    """The task's own `load()` (labels joined with the DNA cache, the gene tables, every check) on the run config,
    with `dna_table` checked against the DNA cache's ids, no DNA preloaded (explain reads only the chosen items'
    rows) and no DNA scaling recomputed (the checkpoint's own is applied)."""
    data_config = dataclasses.replace(config.data, dna_table=dna_table, preload_bytes=0, standardize_dna=False)
    try:
        return task(dataclasses.replace(config, data=data_config)).load()
    except (CacheError, FileNotFoundError, OSError) as err:
        raise unopened(checkpoint_path, err) from err


def unopened(checkpoint_path: str | Path, err: BaseException) -> InputError:
    """A run config's input that cannot be opened, said as the checkpoint's."""
    return InputError(
        f"{checkpoint_path}: its run config names an input which cannot be opened ({str(err).splitlines()[0]}); "
        "re-create it, or pass --config naming where it is now"
    )


def open_dna_manifest(url: str, checkpoint_path: str | Path) -> Any:
    """The manifest of the DNA cache a checkpoint's run config names; the same one-line error as `load_data`
    where it cannot be opened."""
    from dogmacache.cache import open_cache

    try:
        return open_cache(url).manifest
    except (CacheError, FileNotFoundError, OSError) as err:
        raise unopened(checkpoint_path, err) from err


BASELINE_WINDOWS = 512  # training windows averaged for the attribution baseline when the checkpoint holds no mean


class CdtExplainer:
    """A CDT checkpoint with its caches, labels and windows, ready to explain items."""

    task = "cdt"

    def __init__(self, sources: ExplainSources, checkpoint: dict[str, Any] | None = None):
        """`checkpoint`: the checkpoint at `sources.checkpoint` as `train.checkpoint.read` gave it, where the
        caller already read it (a large checkpoint is then loaded once); else read here."""
        path = sources.checkpoint
        checkpoint = checkpoint if checkpoint is not None else read_checkpoint(path)
        if checkpoint["task"] != self.task:
            raise InputError(f"{path} holds a {checkpoint['task']!r} model; CdtExplainer explains 'cdt' checkpoints")
        config = run_config(checkpoint, path, sources.config)
        task = get_task(self.task)
        if checkpoint["model_class"] not in task.models:
            raise InputError(
                f"{path}: model class {checkpoint['model_class']!r} is not one of task {task.name!r}'s "
                f"{sorted(task.models)}; explain a checkpoint written by `dogmacache train`"
            )
        table = dna_table_path(sources.dna_table, config, config.data.dna_cache)
        self.chrom_sizes = chrom_sizes(sources.chrom_sizes)
        windows = read_input_table(table, "dna")  # as embed read it: centres from BED start/end, '.' strands as '+'
        # the tracks are placed by this table's positions: checked against the DNA cache before the task's own
        # load, whose ids check would advise re-embedding the cache where the table is the one to change
        dna_manifest = open_dna_manifest(config.data.dna_cache, path)
        self.positions_checked = check_embedded_from(
            windows,
            "dna",
            dna_manifest,
            config.data.dna_cache,
            table,
            "pass the dna_windows table the DNA cache was embedded from with --dna-table",
        )
        data = load_data(task, config, table, path)
        check_fingerprints(checkpoint, path, data.fingerprints)
        self.dna = data.dna
        self.model = task.models[checkpoint["model_class"]](checkpoint["model_config"])
        self.model.load_state_dict(checkpoint["model"])
        self.model.eval()
        self.genes, self.rna, self.protein = data.genes, data.rna, data.protein
        check_cdt_inputs(self.model.config, torch.zeros(1, *self.dna.item_shape), self.rna, self.protein)
        scale = (checkpoint.get("extras") or {}).get("dna_scale")
        if config.data.standardize_dna and scale is None:
            raise InputError(
                f"{path}: the run config standardises DNA but the checkpoint holds no dna_scale; "
                "explain it with the config it was trained with"
            )
        self.dna_mean = torch.tensor(scale["mean"], dtype=torch.float32) if scale else None
        self.dna_std = torch.tensor(scale["std"], dtype=torch.float32) if scale else None
        pairs = pd.concat([data.splits[s] for s in SPLITS], ignore_index=True)
        self.pairs = pairs.assign(item=pairs["enhancer"] + SEP + pairs["gene"])
        self.windows = self._windows(windows, table)
        named = sized_chromosomes(self.chrom_sizes, set(self.windows["chrom"].astype(str)), sources.chrom_sizes, table)
        renamed = {c: n for c, n in named.items() if c != n}
        if renamed:  # the tracks and their BED / bigWig files use the chrom sizes' names
            first = next(iter(renamed.items()))
            print(
                f"explain: {table} names {len(renamed)} chromosome(s) as the chrom sizes do not (e.g. {first[0]!r}, "
                f"{first[1]!r} there): the tracks use the chrom sizes' names"
            )
            self.windows = self.windows.assign(chrom=self.windows["chrom"].astype(str).map(lambda c: named[c]))
        size = self.windows["chrom"].astype(str).map(self.chrom_sizes).to_numpy()
        outside = (self.windows["center"].to_numpy() < 1) | (self.windows["center"].to_numpy() > size)
        if outside.any():  # embed refuses such a centre: these sizes are another genome's
            at = int(np.flatnonzero(outside)[0])
            row = self.windows.iloc[at]
            raise InputError(
                f"window {self.windows.index[at]!r} of {table} is centred at {row['chrom']}:{int(row['center'])}, "
                f"outside {row['chrom']}'s {int(size[at])} bp in --chrom-sizes {sources.chrom_sizes} "
                f"({int(outside.sum())} such windows); pass the sizes of the genome the DNA cache was embedded from"
            )
        self.geometry: WindowGeometry = window_geometry(self.dna, sources.bin_bp)
        self.checkpoint_path = str(path)

    # ---- inputs ------------------------------------------------------------------------------------
    def _windows(self, table: pd.DataFrame, path: str) -> pd.DataFrame:
        table = table.set_index("id")
        absent = sorted(set(self.pairs["enhancer"]) - set(table.index))
        if absent:
            raise InputError(
                f"{path} has no window for {len(absent)} enhancer(s) of the labels (e.g. {absent[:3]}); "
                "pass the dna_windows table the DNA cache was embedded from"
            )
        return table[table.index.isin(set(self.pairs["enhancer"]))]

    def coordinates(self, enhancer: str) -> BinCoordinates:
        row = self.windows.loc[enhancer]
        size = self.chrom_sizes[str(row["chrom"])]
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

    def model_input_gradient(self, gradient: Tensor) -> Tensor:
        """d prediction / d (the DNA as the model reads it), from the gradient with respect to the DNA as cached
        (B, L, D): the checkpoint's scaling x' = (x - mean) / std gives d/dx' = std * d/dx. Its norm weighs every
        feature by how far the model's input moves, where d/dx weighs each by 1/std: features that barely vary
        (a spread below one float16 step in the demo's caches) would dominate it."""
        return gradient if self.dna_std is None else gradient * self.dna_std

    def gradient_space(self) -> str:
        """What the gradient norm is taken with respect to, for summary.json."""
        if self.dna_std is None:
            return "the DNA features as cached (the checkpoint applies no scaling)"
        return "the DNA features as the model reads them: after the checkpoint's standardisation (dna_scale)"

    def baseline(self) -> tuple[Tensor, dict[str, Any]]:
        """The integrated-gradients start (D,), an average position: the training mean of the DNA features over
        every position, as the checkpoint's DNA scaling holds it (zero after scaling), else computed here from the
        training split's windows (at most BASELINE_WINDOWS, drawn with seed 0); and where it came from, for
        summary.json. Measured from zero instead, the features' offset dominates gradient x input (on the demo's
        checkpoint its sign agreed with integrated gradients' at 20 % of positions, against 92 % from the mean)."""
        if self.dna_mean is not None:
            return self.dna_mean.clone(), {"from": "the checkpoint's dna_scale: the training windows' mean"}
        rows = np.unique(self.pairs.loc[self.pairs["split"] == "train", "dna_row"].to_numpy())
        used = rows
        if len(rows) > BASELINE_WINDOWS:
            used = np.sort(np.random.default_rng(0).choice(rows, BASELINE_WINDOWS, replace=False))
        mean, _ = feature_scale(self.dna.read_rows(used[a : a + 64], dtype=np.float32) for a in range(0, len(used), 64))
        source = {"from": "the mean of the training split's DNA windows", "windows": len(used), "of": len(rows)}
        return torch.from_numpy(mean), source

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
