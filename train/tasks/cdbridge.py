"""The CDBridge task (docs/papers.md#cdbridge): tissue-aware isoform expression from frozen DNA, protein
and tissue caches, through a protein-dictionary connector, splicing-inspired token merging (`train/merging.py`)
and two decoders, trained in two stages on the shared loop.

Data, from `dogmacache recipe gtex`: `labels.parquet` (id, split, dna_id, protein_id, one standardised column
per tissue), `coding_masks.parquet` (id, mask: one flag per DNA output bin), `tissues.parquet` (held_out) and
three caches: per-position DNA (N_dna, L, D_dna), pooled protein (N_prot, D_prot; ids = protein_id) and pooled
tissue context embeddings (N_tissue, D_tissue; ids = tissue names; scGPT `context` of the recipe's profiles).

Model (`CdbridgeModel`):
- connector: projected DNA tokens (queries) cross-attend to a learnable protein dictionary of M tokens (keys
  and values), initialised by k-means over the training transcripts' protein embeddings (scikit-learn, seeded);
- merging: one round of bipartite merging on the fused tokens; the merge rate is drawn from N(mean, std)
  during training with a random A/B split, fixed at `merge_rate_mean` and even/odd at evaluation;
- functional decoder (stage 1): self-attention blocks over the recovered tokens (`unmerge`, the paper's
  merge-and-recover) -> one coding logit per DNA bin, BCE against the recipe's masks. `recovery = false`
  runs the blocks on the merged tokens and copies their logits back instead;
- tissue-conditioned decoder (stage 2): `output_tokens` learned queries plus the projected tissue embedding
  cross-attend to the merged DNA tokens; their mean gives the expression (MSE on the standardised label) and a
  protein-space vector (InfoNCE against the batch's distinct proteins, `temperature`). With `filter_by_mask`
  (the paper's "filter fused features by mask") it attends only to the slots the functional decoder calls coding.

Inputs are z-scored (on by default): DNA features with the training windows, tissue embeddings over the seen
tissues. Ablations, each trained in the same run: no_tissue, tissue_only (the leakage control), no_merging,
no_recovery, no_mask_supervision (no stage 1: merging trained by stage 2's losses alone), mask_filter and
held_out_seen (trained on the held-out tissues too: their scores when seen, beside the zero-shot ones).

Two stages in one `train` call: stage 2's `build_model` trains stage 1 through the same loop first
(`<name>_stage1_best.pt`), unless [data] stage1_checkpoint names a finished one, then freezes the connector
and functional decoder (the paper's "fused features from stage 1"). Training examples are (transcript, seen
tissue) pairs; the evaluation splits hold every tissue, held-out ones included (leave-tissues-out zero-shot).

Shapes: B DNA windows in a chunk, L bins, P examples, M dictionary tokens, Q output tokens, D model width.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from dogmacache.cache import EmbeddingCache, open_cache
from dogmacache.contracts.tables import SPLITS
from dogmacache.errors import InputError
from dogmacache.train import merging, plots
from dogmacache.train.config import required
from dogmacache.train.layers import AttentionBlock, Projection
from dogmacache.train.metrics import regression_metrics
from dogmacache.train.tasks.base import (
    Batches,
    Chunk,
    FittedBaseline,
    FixedBaseline,
    Task,
    TaskData,
    feature_scale,
    read_table,
)
from torch import Tensor, nn

NOT_TISSUES = ("id", "gene_id", "split", "dna_id", "rna_id", "protein_id")
TISSUE_INPUTS = ("full", "none", "only")  # tissue and DNA; DNA only (no tissue conditioning); tissue only
# the paper's ablations (Table 4 and the merging study), each a baseline trained in the same run
ABLATIONS = (
    "no_tissue",
    "tissue_only",
    "no_merging",
    "no_recovery",
    "no_mask_supervision",
    "mask_filter",
    "held_out_seen",
)


@dataclass(frozen=True)
class CdbridgeDataConfig:
    labels: str = required()  # the gtex recipe's labels.parquet (standardised log1p mean TPM per tissue)
    dna_cache: str = required()  # per-position DNA cache of the recipe's TSS windows (ids = dna_id)
    protein_cache: str = required()  # pooled protein cache (ESM-2 mean; ids = protein_id)
    tissue_cache: str = required()  # pooled scGPT `context` embeddings of tissue_profiles (ids = tissue names)
    coding_masks: str = required()  # the recipe's coding_masks.parquet (one flag per DNA bin, per transcript)
    tissues_table: str = ""  # the recipe's tissues.parquet (held_out column); "" = beside the labels
    tissues: tuple[str, ...] = ()  # label columns to model; () = every tissue column of the labels
    holdout_tissues: tuple[str, ...] = ()  # held out in addition to the recipe's held_out tissues
    stage1_checkpoint: str = ""  # a stage-1 checkpoint to start stage 2 from; "" = train stage 1 in this run
    eval_batch: int = 256  # examples per evaluation chunk
    preload_bytes: int = 2 << 30  # keep the DNA cache in RAM when it fits this budget (bytes, as float32)
    # z-score each tissue-embedding dimension over the seen tissues (held-out ones scaled with the same numbers):
    # pooled scGPT embeddings of bulk profiles differ between tissues by a few % of their norm, and a linear layer
    # on the raw vectors gives every tissue nearly the same query
    standardize_tissues: bool = True
    # z-score each DNA feature with the training transcripts' windows (every bin): a frozen model's per-position
    # outputs share a large common part that a Linear + LayerNorm passes on and the per-window part drowns in
    standardize_dna: bool = True
    # train on the held-out tissues too: the same tissues' scores when seen, beside the zero-shot ones (the
    # held_out_seen ablation); checkpoints are still chosen on the other tissues
    train_held_out: bool = False

    LIMITS: ClassVar[dict[str, str]] = {"eval_batch": ">=1", "preload_bytes": ">=0"}


@dataclass(frozen=True)
class CdbridgeModelConfig:
    stage: int = 2  # 1 = connector, merging and functional decoder only; 2 = stage 1, then the tissue decoder
    stage1_epochs: int = 0  # epochs of stage 1 when stage 2 trains it; 0 = [train] epochs
    # transcripts per stage-1 batch; 0 = [train] batch_size (stage 2's examples are transcript x tissue cells,
    # many more per epoch than stage 1's transcripts)
    stage1_batch_size: int = 0
    d_model: int = 128  # width of every projection and attention (the paper leaves it open)
    n_heads: int = 4  # (open)
    ffn_hidden: int = 256  # feed-forward width of the decoder blocks (open)
    dictionary_size: int = 64  # M protein dictionary tokens, k-means centroids of the training proteins (open)
    merge_rate_mean: float = 0.25  # fraction of DNA tokens merged away; the evaluation rate (open)
    merge_rate_std: float = 0.1  # std of the training rate's Gaussian, draws clipped to [0, 0.5] (open)
    functional_layers: int = 2  # self-attention blocks of the functional decoder ("lightweight"; open)
    tissue_layers: int = 2  # cross-attention blocks of the tissue-conditioned decoder (open)
    output_tokens: int = 8  # Q output tokens of the tissue-conditioned decoder (open)
    temperature: float = 0.07  # InfoNCE temperature (CLIP's initial value; open)
    contrastive_weight: float = 1.0  # loss = MSE + weight * InfoNCE (open)
    dropout: float = 0.1
    recovery: bool = True  # unmerge before the functional decoder (the paper); false = the ablation
    tissue_input: str = "full"  # full | none (no tissue conditioning) | only (tissue embedding only, leakage control)
    freeze_stage1: bool = True  # stage 2 trains only the tissue-conditioned decoder
    # stage 1's coding-mask BCE; false = no stage 1: connector and merging trained by stage 2's losses alone
    # (the ablation that asks whether merging keeps coding tokens without being shown the masks)
    mask_supervision: bool = True
    # the paper's figure: "filter fused features by mask": the tissue decoder attends only to merged slots the
    # functional decoder calls coding. Off by default: TSS-centred windows put the promoter, which drives
    # expression, in non-coding bins; the mask_filter ablation measures it
    filter_by_mask: bool = False
    ablations: tuple[str, ...] = ABLATIONS  # baselines trained in the same run

    LIMITS: ClassVar[dict[str, str]] = {
        "stage": "[1,2]",
        "stage1_epochs": ">=0",
        "stage1_batch_size": ">=0",
        "d_model": ">=1",
        "n_heads": ">=1",
        "ffn_hidden": ">=1",
        "dictionary_size": ">=1",
        "merge_rate_mean": "[0,0.5]",
        "merge_rate_std": ">=0",
        "functional_layers": ">=1",
        "tissue_layers": ">=1",
        "output_tokens": ">=1",
        "temperature": ">0",
        "contrastive_weight": ">=0",
        "dropout": "[0,1)",
    }
    CHOICES: ClassVar[dict[str, tuple]] = {"tissue_input": TISSUE_INPUTS}


class CdbridgeModel(nn.Module):
    """Frozen-cache CDBridge: DNA (B, L, D_dna) -> coding logits (B, L); with tissues, expression and a protein
    vector per example."""

    def __init__(
        self,
        dna_width: int,
        protein_width: int,
        tissue_width: int,
        n_bins: int,
        d_model: int,
        n_heads: int,
        ffn_hidden: int,
        dictionary_size: int,
        merge_rate_mean: float,
        merge_rate_std: float,
        functional_layers: int,
        tissue_layers: int,
        output_tokens: int,
        dropout: float,
        recovery: bool,
        tissue_input: str,
        filter_by_mask: bool = False,
    ):
        super().__init__()
        if d_model % n_heads:
            raise InputError(f"CDBridge d_model={d_model} is not divisible by n_heads={n_heads}; pick a multiple")
        self.rate_mean, self.rate_std = merge_rate_mean, merge_rate_std
        self.recovery, self.tissue_input, self.filter_by_mask = recovery, tissue_input, filter_by_mask
        self.stage1_frozen = False  # set by freeze_stage1: stage 2 keeps the stage-1 modules in eval mode
        self.dna = Projection(dna_width, d_model, dropout)
        self.position = nn.Parameter(torch.zeros(1, n_bins, d_model))
        self.dictionary = nn.Parameter(torch.randn(dictionary_size, protein_width) * 0.02)  # k-means in build_model
        self.protein = nn.Linear(protein_width, d_model)
        self.connector = AttentionBlock(d_model, n_heads, ffn_hidden, dropout)
        self.functional = nn.ModuleList(
            AttentionBlock(d_model, n_heads, ffn_hidden, dropout) for _ in range(functional_layers)
        )
        self.coding_head = nn.Linear(d_model, 1)
        self.tissue = nn.Linear(tissue_width, d_model)
        self.queries = nn.Parameter(torch.randn(output_tokens, d_model) * 0.02)
        self.conditioned = nn.ModuleList(
            AttentionBlock(d_model, n_heads, ffn_hidden, dropout) for _ in range(tissue_layers)
        )
        self.expression_head = nn.Linear(d_model, 1)
        self.protein_head = nn.Linear(d_model, protein_width)

    def stage1_modules(self) -> list[nn.Module]:
        return [self.dna, self.protein, self.connector, self.functional, self.coding_head]

    def freeze_stage1(self) -> None:
        """Stage 2 on stage 1's fused features: no gradients, and no dropout in the frozen modules (they stay in
        eval mode when the loop calls `train()`), so a window's fused tokens are the same at every step."""
        for module in self.stage1_modules():
            module.requires_grad_(False)
        self.dictionary.requires_grad_(False)
        self.position.requires_grad_(False)
        self.stage1_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> CdbridgeModel:
        super().train(mode)
        if self.stage1_frozen:
            for module in self.stage1_modules():
                module.eval()
        return self

    def fuse(self, dna: Tensor) -> Tensor:
        """(B, L, D_dna) -> (B, L, D): DNA tokens after attending to the protein dictionary."""
        x = self.dna(dna) + self.position
        dictionary = self.protein(self.dictionary)[None].expand(x.shape[0], -1, -1)  # (B, M, D)
        return self.connector(x, dictionary)

    def plan(self, fused: Tensor, generator: torch.Generator | None) -> merging.MergePlan:
        """Training draws the rate and the A/B split from `generator`; evaluation (None) uses the fixed ones."""
        rate = merging.sample_rate(self.rate_mean, self.rate_std, fused.shape[0], generator)
        return merging.merge_plan(fused, rate.to(fused.device), generator=generator)

    def coding_logits(self, fused: Tensor, plan: merging.MergePlan) -> Tensor:
        """(B, L, D) -> (B, L) coding logits, after merge-and-recover (or on the merged tokens without recovery)."""
        merged = plan.merge(fused)
        x = plan.unmerge(merged) if self.recovery else merged
        for block in self.functional:
            # recovered tokens are all real: the unmasked path, whose CPU kernel never holds the (B, H, L, L)
            # probabilities (896 bins, batch 64: 1.6 GB per layer); merged tokens mask their padding slots
            x = block(x, x) if self.recovery else block.forward_masked(x, x, plan.valid)
        logits = self.coding_head(x)[..., 0]
        return logits if self.recovery else plan.unmerge(logits)

    def expression(self, merged: Tensor, valid: Tensor, tissue: Tensor) -> tuple[Tensor, Tensor]:
        """merged (P, N', D), valid (P, N'), tissue (P, D_tissue) -> expression (P,), protein vector (P, D_prot)."""
        conditioning = self.tissue(tissue) if self.tissue_input != "none" else torch.zeros_like(self.tissue(tissue))
        q = self.queries[None] + conditioning[:, None]  # (P, Q, D)
        for block in self.conditioned:
            # tissue embedding only (the leakage control): no DNA token reaches the output
            q = (
                block.forward_without_attention(q)
                if self.tissue_input == "only"
                else block.forward_masked(q, merged, valid)
            )
        pooled = q.mean(dim=1)
        return self.expression_head(pooled)[:, 0], self.protein_head(pooled)

    def forward(
        self, dna: Tensor, dna_index: Tensor, tissue: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """dna (B, L, D_dna) windows, dna_index (P,) each example's window, tissue (P, D_tissue)."""
        fused = self.fuse(dna)
        plan = self.plan(fused, generator)
        merged = plan.merge(fused)
        keys = self.coding_slots(fused, plan) if self.filter_by_mask else plan.valid
        return self.expression(merged[dna_index], keys[dna_index], tissue)

    def coding_slots(self, fused: Tensor, plan: merging.MergePlan) -> Tensor:
        """(B, N') merged slots the functional decoder calls coding (mean probability >= 0.5 over the bins a slot
        holds); a window without one keeps every slot (no coding region in view: nothing to filter by)."""
        with torch.no_grad():
            probability = torch.sigmoid(self.coding_logits(fused, plan))
        coding = plan.valid & (plan.merge(probability[..., None])[..., 0] >= 0.5)
        return torch.where(coding.any(dim=1, keepdim=True), coding, plan.valid)


@dataclass
class CdbridgeData(TaskData):
    tissues: list[str] = dataclasses.field(default_factory=list)
    held_out: list[str] = dataclasses.field(default_factory=list)
    transcripts: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)  # per split: stage-1 examples
    dna: EmbeddingCache | None = None
    dna_rows: np.ndarray | None = None  # (N_dna, L, D_dna) float32 when it fits the preload budget
    masks: np.ndarray | None = None  # (N_transcripts_all, L) coding flags, indexed by `mask_row`
    protein: Tensor | None = None  # (N_prot, D_prot) float32
    tissue_embeddings: Tensor | None = None  # (K, D_tissue) float32, in `tissues` order
    n_bins: int = 0
    dna_scale: tuple[np.ndarray, np.ndarray] | None = None  # (mean, std) applied on read; None = none or preapplied
    train_all: pd.DataFrame | None = (
        None  # training cells of every tissue, held-out ones included ([data] train_held_out)
    )


def load_cdbridge(config: Any) -> CdbridgeData:
    d = config.data
    table = read_table(d.labels, ("id", "split"), recipe="gtex", what="labels table")
    available = [c for c in table.columns if c not in NOT_TISSUES]
    tissues = list(d.tissues) or available
    for t in tissues:
        if t not in available:
            raise InputError(
                f"[data] tissues names {t!r}, which {d.labels} lacks (its tissues: {', '.join(available)});"
                " fix the list or re-run the recipe"
            )
    info = read_table(
        d.tissues_table or str(Path(d.labels).parent / "tissues.parquet"), recipe="gtex", what="tissues table"
    )
    held_out = set(info.loc[info["held_out"].astype(bool), "tissue"]) | set(d.holdout_tissues)
    for t in d.holdout_tissues:
        if t not in tissues:
            raise InputError(f"[data] holdout_tissues names {t!r}, which is not a modelled tissue; pick from {tissues}")
    if held_out >= set(tissues):
        raise InputError(f"every tissue of {tissues} is held out; keep at least one tissue for training")

    dna = open_cache(d.dna_cache)
    if len(dna.item_shape) != 2:
        raise InputError(f"{dna.url} holds pooled items {dna.item_shape}; CDBridge needs a per-position DNA cache")
    n_bins = dna.item_shape[0]
    protein_cache, tissue_cache = open_cache(d.protein_cache), open_cache(d.tissue_cache)
    for cache, name in ((protein_cache, "protein_cache"), (tissue_cache, "tissue_cache")):
        if len(cache.item_shape) != 1:
            raise InputError(
                f"{cache.url} holds per-token items {cache.item_shape}; [data] {name} needs a pooled "
                "cache (embed with --pooling mean)"
            )
    missing = [t for t in tissues if t not in set(tissue_cache.ids)]
    if missing:
        raise InputError(
            f"tissue {missing[0]!r} is not in {tissue_cache.url} ({len(missing)} missing); embed the "
            "recipe's tissue_profiles.parquet with scgpt context or drop the tissue from [data] tissues"
        )
    tissue_embeddings = tissue_cache.read_rows(tissue_cache.rows_of(tissues), dtype=np.float32)
    extras: dict[str, Any] = {}
    if d.standardize_tissues:
        seen = tissue_embeddings[[t not in held_out for t in tissues]].astype(np.float64)
        mean, std = seen.mean(0), seen.std(0)
        std = np.where(std > 1e-6 * max(float(np.abs(seen).max()), 1e-12), std, 1.0)  # one seen tissue: centre only
        tissue_embeddings = ((tissue_embeddings - mean) / std).astype(np.float32)
        extras["tissue_scale"] = {"mean": mean.tolist(), "std": std.tolist()}
    tissue_embeddings = torch.from_numpy(tissue_embeddings)

    masks_table = read_table(d.coding_masks, recipe="gtex", what="coding masks table").set_index("id")
    absent = table.loc[~table["id"].isin(masks_table.index), "id"]
    if len(absent):
        raise InputError(f"transcript {absent.iloc[0]!r} has no row in {d.coding_masks}; use the same recipe output")
    masks = np.stack(masks_table.loc[table["id"], "mask"].to_list()).astype(np.float32)
    if masks.shape[1] != n_bins:
        raise InputError(
            f"{d.coding_masks} has {masks.shape[1]} bins per mask but {dna.url} has {n_bins} positions;"
            " re-run the recipe with --window-bins matching the DNA model's output"
        )

    frame = pd.DataFrame({"id": table["id"].astype(str), "split": table["split"]})
    frame["dna_row"] = dna.rows_of(table["dna_id"].astype(str) if "dna_id" in table else frame["id"])
    protein_ids = table["protein_id"].fillna("").astype(str) if "protein_id" in table else frame["id"]
    frame["protein_present"] = (protein_ids != "").to_numpy()
    frame["protein_row"] = 0
    frame.loc[frame["protein_present"], "protein_row"] = protein_cache.rows_of(protein_ids[frame["protein_present"]])
    frame["mask_row"] = np.arange(len(frame))
    values = table[tissues].to_numpy(np.float32)
    if not np.isfinite(values).all():
        raise InputError(f"{d.labels} has missing or non-finite labels; drop or fix them in the recipe")

    def cells(part: pd.DataFrame, keep: list[int]) -> pd.DataFrame:
        """(transcript, tissue) examples of `part` for the tissue indices `keep`."""
        table = part.loc[part.index.repeat(len(keep))].reset_index().rename(columns={"index": "transcript"})
        table["tissue_index"] = np.tile(keep, len(part))
        table["target"] = values[part["mask_row"].to_numpy()][:, keep].ravel()
        return table

    splits, transcripts = {}, {}
    for split in SPLITS:
        part = frame[frame["split"] == split].reset_index(drop=True)
        if part.empty:
            raise InputError(f"{d.labels} has no {split} transcripts; every split needs some (re-run the recipe)")
        transcripts[split] = part.assign(target=list(masks[part["mask_row"]]))
        splits[split] = cells(part, [k for k, t in enumerate(tissues) if split != "train" or t not in held_out])
    train_all = cells(transcripts["train"].drop(columns="target"), list(range(len(tissues))))
    preload = None
    if len(dna) * int(np.prod(dna.item_shape)) * 4 <= d.preload_bytes:
        preload = dna.read_rows(np.arange(len(dna)), dtype=np.float32).reshape(len(dna), *dna.item_shape)
    scale = None
    if d.standardize_dna:
        scale = dna_scale(dna, preload, np.unique(transcripts["train"]["dna_row"].to_numpy()), seed=config.train.seed)
        extras["dna_scale"] = {"mean": scale[0].tolist(), "std": scale[1].tolist()}
        if preload is not None:  # applied once, in place (no second copy of the preload)
            preload -= scale[0]
            preload /= scale[1]
            scale = None
    protein = torch.from_numpy(protein_cache.read_rows(np.arange(len(protein_cache)), dtype=np.float32))
    caches = {"dna": dna, "protein": protein_cache, "tissue": tissue_cache}
    return CdbridgeData(
        splits=splits,
        fingerprints={k: c.fingerprint() for k, c in caches.items()},
        tissues=tissues,
        held_out=[t for t in tissues if t in held_out],
        transcripts=transcripts,
        dna=dna,
        dna_rows=preload,
        masks=masks,
        protein=protein,
        tissue_embeddings=tissue_embeddings,
        n_bins=n_bins,
        extras=extras,
        dna_scale=scale,
        train_all=train_all,
    )


def stage1_view(data: CdbridgeData) -> CdbridgeData:
    """The same data with one example per transcript (its coding mask as target): stage 1's splits."""
    return dataclasses.replace(data, splits=data.transcripts, train_all=None)


def dna_scale(
    dna: EmbeddingCache,
    preload: np.ndarray | None,
    rows: np.ndarray,
    seed: int,
    max_windows: int = 512,
    batch: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (mean, std) of the DNA tokens of `rows` (training windows, every bin); at most `max_windows`
    windows (a seeded sample), read `batch` at a time."""
    if len(rows) > max_windows:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_windows, replace=False))
    return feature_scale(_windows(dna, preload, None, rows[a : a + batch]) for a in range(0, len(rows), batch))


def _windows(dna: EmbeddingCache, preload: np.ndarray | None, scale: tuple | None, rows: np.ndarray) -> np.ndarray:
    """(len(rows), L, D_dna) float32 DNA windows, from the preload when there is one, z-scored with `scale`."""
    if preload is not None:
        return preload[rows]
    windows = dna.read_rows(rows, dtype=np.float32).reshape(len(rows), *dna.item_shape)
    return windows if scale is None else (windows - scale[0]) / scale[1]


class ExampleChunks(Batches):
    """Item k = examples [k*size, (k+1)*size) of `order` in `table`, with the distinct DNA windows they read
    (rows["dna"] (B, L, D_dna)) and each example's window (`dna_index`)."""

    def __init__(self, data: CdbridgeData, table: pd.DataFrame, size: int, order: np.ndarray | None = None):
        self.data, self.table = data, table
        super().__init__(len(table), size, order)

    def chunk(self, positions: np.ndarray) -> Chunk:
        part = self.table.iloc[positions]
        windows, dna_index = np.unique(part["dna_row"].to_numpy(), return_inverse=True)
        target = np.stack(part["target"].to_list()) if part["target"].dtype == object else part["target"].to_numpy()
        examples = {
            "index": torch.from_numpy(positions.astype(np.int64)),
            "target": torch.from_numpy(np.array(target, dtype=np.float32)),  # a copy: pandas arrays are read-only
            "dna_index": torch.from_numpy(dna_index.astype(np.int64)),
            "protein_row": torch.from_numpy(part["protein_row"].to_numpy(np.int64, copy=True)),
            "protein_present": torch.from_numpy(part["protein_present"].to_numpy(bool, copy=True)),
        }
        if "tissue_index" in part:
            examples["tissue_index"] = torch.from_numpy(part["tissue_index"].to_numpy(np.int64, copy=True))
        dna = _windows(self.data.dna, self.data.dna_rows, self.data.dna_scale, windows)
        return Chunk(examples, {"dna": torch.from_numpy(np.ascontiguousarray(dna))})


def _step_generator(device: torch.device) -> torch.Generator:
    """A generator for one step's merge rate and A/B split, seeded from torch's RNG (seeded and resumed by the loop)."""
    return torch.Generator(device=device).manual_seed(int(torch.randint(2**62, ())))


def kmeans_dictionary(protein: np.ndarray, size: int, seed: int) -> np.ndarray:
    """(size, D_prot) k-means centroids of the training proteins' embeddings (scikit-learn, seeded)."""
    from sklearn.cluster import KMeans

    if size > len(protein):
        raise InputError(
            f"[model] dictionary_size = {size} exceeds the {len(protein)} distinct training proteins; "
            f"set it to at most {len(protein)}"
        )
    return KMeans(n_clusters=size, random_state=seed, n_init=4).fit(protein).cluster_centers_.astype(np.float32)


def binary_metrics(logits: np.ndarray, flags: np.ndarray) -> dict[str, float]:
    """AUROC and AUPRC (average precision) of coding logits against flags; NaN when one class is absent."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores, labels = np.ravel(logits), np.ravel(flags) > 0.5
    if labels.all() or not labels.any():
        return {"auroc": float("nan"), "auprc": float("nan"), "coding_fraction": float(labels.mean())}
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "auprc": float(average_precision_score(labels, scores)),
        "coding_fraction": float(labels.mean()),
    }


@torch.no_grad()
def kept_fractions(
    model: CdbridgeModel, data: CdbridgeData, split: str, device: torch.device, batch_size: int
) -> dict[str, float]:
    """Fractions of coding and non-coding bins kept as their own token by the evaluation merge plan (Figure 5)."""
    model.eval()
    part = data.transcripts[split]
    kept = [
        model.plan(model.fuse(c.rows["dna"].to(device)), None).kept[c.examples["dna_index"].to(device)].cpu()
        for c in ExampleChunks(data, part, batch_size)
    ]
    kept = torch.cat(kept).numpy()
    coding = np.stack(part["target"].to_list()) > 0.5
    shares = {
        name: float(kept[m].mean()) if m.any() else float("nan")
        for name, m in (("kept_coding", coding), ("kept_noncoding", ~coding))
    }
    return {**shares, "kept_all": float(kept.mean())}


class CdbridgeTask(Task):
    name = "cdbridge"
    data_config = CdbridgeDataConfig
    model_config = CdbridgeModelConfig
    models: ClassVar[dict] = {"CdbridgeModel": lambda c: CdbridgeModel(**c)}
    metric = "spearman_mean_seen"  # held-out tissues never choose the checkpoint

    def __init__(self, config: Any, label: str | None = None):
        super().__init__(config)
        self.label = label or config.task
        self.stage1: dict[str, Any] = {}  # stage-1 metrics of this model (mask AUROC, kept fractions)
        for ablation in config.model.ablations:
            if ablation not in ABLATIONS:
                raise InputError(f"[model] ablations names {ablation!r}; expected some of {list(ABLATIONS)}")
        if config.model.stage == 1:
            self.metric = "neg_bce"  # finite even where a split has no coding bin (AUROC undefined)

    # ---- data and model -------------------------------------------------------------------------------------
    def load(self) -> CdbridgeData:
        data = load_cdbridge(self.config)
        return stage1_view(data) if self.config.model.stage == 1 else data

    def _examples(self, data: CdbridgeData, split: str) -> pd.DataFrame:
        """The split's examples; stage 1 runs on `stage1_view` (one example per transcript), which has no train_all."""
        if split == "train" and self.config.data.train_held_out and data.train_all is not None:
            return data.train_all
        return data.splits[split]

    def build_model(self, data: CdbridgeData) -> tuple[nn.Module, str, dict[str, Any]]:
        m = self.config.model
        config = {
            "dna_width": data.dna.item_shape[-1],
            "protein_width": data.protein.shape[1],
            "tissue_width": data.tissue_embeddings.shape[1],
            "n_bins": data.n_bins,
            "d_model": m.d_model,
            "n_heads": m.n_heads,
            "ffn_hidden": m.ffn_hidden,
            "dictionary_size": m.dictionary_size,
            "merge_rate_mean": m.merge_rate_mean,
            "merge_rate_std": m.merge_rate_std,
            "functional_layers": m.functional_layers,
            "tissue_layers": m.tissue_layers,
            "output_tokens": m.output_tokens,
            "dropout": m.dropout,
            "recovery": m.recovery,
            "tissue_input": m.tissue_input,
            "filter_by_mask": m.filter_by_mask,
        }
        model = CdbridgeModel(**config)
        train = data.transcripts["train"]
        proteins = np.unique(train.loc[train["protein_present"], "protein_row"].to_numpy())
        centroids = kmeans_dictionary(data.protein[proteins].numpy(), m.dictionary_size, self.config.train.seed)
        with torch.no_grad():
            model.dictionary.copy_(torch.from_numpy(centroids))
        if m.stage == 2 and not m.mask_supervision:
            self.stage1["test"] = {
                "untrained": kept_fractions(model, data, "test", torch.device("cpu"), self.config.data.eval_batch)
            }
        elif m.stage == 2:
            self._stage1(model, config, data)
            if m.freeze_stage1:
                model.freeze_stage1()
        return model, "CdbridgeModel", config

    def _stage1(self, model: CdbridgeModel, model_config: dict[str, Any], data: CdbridgeData) -> None:
        """Train stage 1 through the shared loop in <output>/stage1 (or load [data] stage1_checkpoint) into
        `model`; record its mask metrics and kept-token fractions, also before training (merging without mask
        supervision: a random connector)."""
        from dogmacache.contracts.provenance import package_versions
        from dogmacache.devices import pick_device
        from dogmacache.train import checkpoint
        from dogmacache.train.loop import fit, predict

        device = pick_device(self.config.train.device)
        batch = self.config.data.eval_batch
        untrained = kept_fractions(model.to(device), data, "test", device, batch)
        stage1 = dataclasses.replace(self.config, model=dataclasses.replace(self.config.model, stage=1, ablations=()))
        path = self.config.data.stage1_checkpoint
        if path:
            model.load_state_dict(checkpoint.read(path, map_location=device)["model"])
        else:
            m, t = self.config.model, self.config.train
            config = dataclasses.replace(
                stage1,
                train=dataclasses.replace(
                    t, epochs=m.stage1_epochs or t.epochs, batch_size=m.stage1_batch_size or t.batch_size
                ),
            )
            task = CdbridgeTask(config, f"{self.label}_stage1")
            meta = {
                "task": self.name,
                "model_class": "CdbridgeModel",
                "model_config": model_config,
                "config": config.to_dict(),
                "fingerprints": data.fingerprints,
                "versions": package_versions(),
                "extras": data.extras,
            }
            out = Path(self.config.output.dir) / "stage1"  # its own log.csv: stage 1 logs another metric
            out.mkdir(parents=True, exist_ok=True)
            fit(task, model, stage1_view(data), task.label, out, meta)
            path = str(out / f"{task.label}_best.pt")
        task = CdbridgeTask(stage1, self.label)
        for split in ("validation", "test"):
            logits = predict(task, model.to(device), stage1_view(data), split, device)
            flags = np.stack(data.transcripts[split]["target"].to_list())
            self.stage1[split] = {**binary_metrics(logits, flags), **kept_fractions(model, data, split, device, batch)}
        self.stage1["test"]["untrained"] = untrained
        self.stage1["checkpoint"] = path

    # ---- batches and forward ----------------------------------------------------------------------------------
    def on_device(self, data: CdbridgeData, device: torch.device) -> None:
        """The protein and tissue tables every step reads, kept on `device` (small: one row per item)."""
        self._tables = {"protein": data.protein.to(device), "tissue": data.tissue_embeddings.to(device)}

    def train_chunks(self, data: CdbridgeData, epoch: int) -> torch.utils.data.Dataset:
        table = self._examples(data, "train")
        order = np.random.default_rng([self.config.train.seed, epoch]).permutation(len(table))
        return ExampleChunks(data, table, self.config.train.batch_size, order)

    def eval_chunks(self, data: CdbridgeData, split: str) -> torch.utils.data.Dataset:
        return ExampleChunks(data, self._examples(data, split), self.config.data.eval_batch)

    def _outputs(self, model: nn.Module, batch: Chunk, generator: torch.Generator | None) -> Tensor:
        e, dna = batch.examples, batch.rows["dna"]
        core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        if self.config.model.stage == 1:
            fused = core.fuse(dna)
            return core.coding_logits(fused, core.plan(fused, generator))[e["dna_index"]]  # (P, L)
        tissue = self._tissues(batch)
        expression, protein = model(dna, e["dna_index"], tissue, generator)
        return torch.cat([expression[:, None], protein], dim=1)  # (P, 1 + D_prot)

    def _tissues(self, batch: Chunk) -> Tensor:
        return self._tables["tissue"][batch.examples["tissue_index"]]

    def train_outputs(self, model: nn.Module, batch: Chunk) -> Tensor:
        return self._outputs(model, batch, _step_generator(batch.rows["dna"].device))

    def predict_chunk(self, model: nn.Module, chunk: Chunk) -> Tensor:
        out = self._outputs(model, chunk, None)
        return out if self.config.model.stage == 1 else out[:, 0]

    def loss(self, outputs: Tensor, batch: Chunk) -> Tensor:
        e = batch.examples
        if self.config.model.stage == 1:
            return nn.functional.binary_cross_entropy_with_logits(outputs.float(), e["target"])
        mse = nn.functional.mse_loss(outputs[:, 0].float(), e["target"])
        present = e["protein_present"]
        if self.config.model.contrastive_weight == 0 or int(present.sum()) < 2:
            return mse
        rows, target = torch.unique(e["protein_row"][present], return_inverse=True)
        predicted = nn.functional.normalize(outputs[present, 1:].float(), dim=-1)
        proteins = nn.functional.normalize(self._tables["protein"][rows], dim=-1)
        logits = predicted @ proteins.T / self.config.model.temperature  # (P, distinct proteins of the batch)
        return mse + self.config.model.contrastive_weight * nn.functional.cross_entropy(logits, target)

    # ---- metrics ---------------------------------------------------------------------------------------------
    def observed(self, data: CdbridgeData, split: str) -> np.ndarray:
        table = self._examples(data, split)
        return np.stack(table["target"].to_list()) if self.config.model.stage == 1 else table["target"].to_numpy()

    def metrics(self, predictions: np.ndarray, data: CdbridgeData, split: str) -> dict[str, Any]:
        observed = self.observed(data, split)
        if self.config.model.stage == 1:
            bce = nn.functional.binary_cross_entropy_with_logits(
                torch.from_numpy(predictions), torch.from_numpy(observed.astype(np.float32))
            )
            return {
                **regression_metrics(1 / (1 + np.exp(-predictions)), observed),
                **binary_metrics(predictions, observed),
                "neg_bce": -float(bce),
            }
        table = data.splits[split]
        tissue_of = np.asarray(data.tissues)[table["tissue_index"].to_numpy()]
        per_tissue = {
            t: regression_metrics(predictions[tissue_of == t], observed[tissue_of == t])
            for t in data.tissues
            if (tissue_of == t).any()
        }
        seen = [t for t in per_tissue if t not in data.held_out]
        held = [t for t in per_tissue if t in data.held_out]

        def mean(names: list[str], key: str) -> float:
            return float(np.mean([per_tissue[t][key] for t in names])) if names else float("nan")

        in_held = np.isin(tissue_of, data.held_out)
        return {
            **regression_metrics(predictions, observed),  # pooled over every (transcript, tissue) cell
            "r2_mean_seen": mean(seen, "r2"),
            "spearman_mean_seen": mean(seen, "spearman"),
            "r2_mean_held_out": mean(held, "r2"),
            "spearman_mean_held_out": mean(held, "spearman"),
            "pooled_seen": regression_metrics(predictions[~in_held], observed[~in_held]),
            "pooled_held_out": regression_metrics(predictions[in_held], observed[in_held]),
            "per_tissue": {
                t: {"r2": m["r2"], "spearman": m["spearman"], "held_out": t in data.held_out}
                for t, m in per_tissue.items()
            },
        }

    # ---- baselines and figures -------------------------------------------------------------------------------
    def baselines(self, data: CdbridgeData) -> dict[str, FittedBaseline | FixedBaseline]:
        if not self.config.train.baselines or self.config.model.stage == 1:
            return {}
        found: dict[str, FittedBaseline | FixedBaseline] = {"per_tissue_mean": FixedBaseline(per_tissue_mean)}
        shared = self.stage1.get("checkpoint", "")  # the ablations that change only stage 2 reuse stage 1
        changes = {  # name: ([model] changes, [data] changes, stage 1 checkpoint: "" = trains its own)
            "no_tissue": ({"tissue_input": "none"}, {}, shared),
            "tissue_only": ({"tissue_input": "only"}, {}, shared),
            "no_merging": ({"merge_rate_mean": 0.0, "merge_rate_std": 0.0}, {}, ""),
            "no_recovery": ({"recovery": False}, {}, ""),
            "no_mask_supervision": ({"mask_supervision": False, "freeze_stage1": False}, {}, ""),
            "mask_filter": ({"filter_by_mask": True}, {}, shared),
            "held_out_seen": ({}, {"train_held_out": True}, shared),
        }
        for name in self.config.model.ablations:
            model_change, data_change, stage1 = changes[name]
            if name == "held_out_seen" and not data.held_out:
                continue  # no held-out tissue: nothing to compare
            model = dataclasses.replace(self.config.model, ablations=(), **model_change)
            config = dataclasses.replace(
                self.config,
                model=model,
                data=dataclasses.replace(self.config.data, stage1_checkpoint=stage1, **data_change),
            )
            found[name] = FittedBaseline(CdbridgeTask(config, name))
        self._ablations = {name: b.task for name, b in found.items() if isinstance(b, FittedBaseline)}
        return found

    def _tasks(self) -> dict[str, CdbridgeTask]:
        """This model's task and each trained ablation's, by model name."""
        return {self.label: self, **getattr(self, "_ablations", {})}

    def _stage1_metrics(self) -> dict[str, dict[str, Any]]:
        """Stage-1 metrics (mask AUROC/AUPRC, kept fractions) of this model and each trained ablation."""
        return {name: task.stage1 for name, task in self._tasks().items()}

    def summary(self, results: dict[str, Any], data: CdbridgeData, out_dir: Any) -> dict[str, Any]:
        """metrics.json's "stage1" (per model), "held_out_tissues" and "seen_vs_held_out" table. A model trained
        without stage 1 gets the kept fractions of the merging its stage 2 trained, from its best checkpoint."""
        from dogmacache.devices import pick_device
        from dogmacache.train.checkpoint import load_model

        device = pick_device(self.config.train.device)
        for name, task in self._tasks().items():
            best = Path(out_dir) / f"{name}_best.pt"
            if not task.config.model.mask_supervision and best.is_file():
                model = load_model(best).to(device)
                task.stage1["test"].update(kept_fractions(model, data, "test", device, self.config.data.eval_batch))
        stage1 = self._stage1_metrics()
        return {
            "stage1": stage1,
            "held_out_tissues": data.held_out,
            "seen_vs_held_out": seen_vs_held_out(results, stage1),
        }

    def figures(self, results: dict[str, Any], data: CdbridgeData, out_dir: Any) -> list[Any]:
        """Per-tissue R² bars, seen vs held-out bars and kept-token bars per model; prints the seen vs held-out
        table."""
        out = Path(out_dir)
        table = seen_vs_held_out(results, self._stage1_metrics())
        print_seen_vs_held_out(table)
        values = {
            name: {t: r["test"]["per_tissue"][t]["r2"] for t in r["test"]["per_tissue"]}
            for name, r in results.items()
            if "per_tissue" in r.get("test", {})
        }
        if not values:
            return []
        held = ", ".join(data.held_out) or "none"
        figures = [
            plots.per_group_bars(
                values,
                "R² (test)",
                out / "per_tissue_r2.png",
                f"CDBridge: R² per tissue, test transcripts (held out: {held})",
            )
        ]
        split = {
            name: {
                "Spearman seen": row["spearman_seen"],
                "Spearman held out": row["spearman_held_out"],
                "R² seen": row["r2_seen"],
                "R² held out": row["r2_held_out"],
            }
            for name, row in table.items()
        }
        figures.append(
            plots.per_group_bars(
                split,
                "mean over tissues (test)",
                out / "seen_vs_held_out.png",
                f"CDBridge: seen tissues vs held out ({held}; zero-shot except in held_out_seen)",
            )
        )
        kept = {
            name: {
                "coding": row["kept_coding"],
                "non-coding": row["kept_noncoding"],
                "coding, untrained": row["kept_coding_untrained"],
                "non-coding, untrained": row["kept_noncoding_untrained"],
            }
            for name, row in table.items()
            if np.isfinite(row["kept_coding"])
        }
        if kept:
            figures.append(
                plots.per_group_bars(
                    kept,
                    "fraction of bins kept as their own token",
                    out / "kept_tokens.png",
                    "CDBridge merging at evaluation: coding vs non-coding bins kept (test)",
                )
            )
        return figures


SEEN_VS_HELD_OUT = {  # column: (where, key); means over tissues of the test transcripts, stage-1 numbers on test
    "r2_seen": ("test", "r2_mean_seen"),
    "r2_held_out": ("test", "r2_mean_held_out"),
    "spearman_seen": ("test", "spearman_mean_seen"),
    "spearman_held_out": ("test", "spearman_mean_held_out"),
    "mask_auroc": ("stage1", "auroc"),
    "mask_auprc": ("stage1", "auprc"),
    "kept_coding": ("stage1", "kept_coding"),
    "kept_noncoding": ("stage1", "kept_noncoding"),
    "kept_coding_untrained": ("untrained", "kept_coding"),
    "kept_noncoding_untrained": ("untrained", "kept_noncoding"),
}


def seen_vs_held_out(results: dict[str, Any], stage1: dict[str, Any]) -> dict[str, dict[str, float]]:
    """One row per model: the columns of SEEN_VS_HELD_OUT (NaN where a model has no such number)."""
    table = {}
    for name, r in results.items():
        s = stage1.get(name, {}).get("test", {})
        where = {"test": r.get("test", {}), "stage1": s, "untrained": s.get("untrained", {})}
        table[name] = {column: float(where[w].get(key, float("nan"))) for column, (w, key) in SEEN_VS_HELD_OUT.items()}
    return table


def print_seen_vs_held_out(table: dict[str, dict[str, float]]) -> None:
    columns = (
        "r2_seen",
        "r2_held_out",
        "spearman_seen",
        "spearman_held_out",
        "mask_auroc",
        "kept_coding",
        "kept_noncoding",
    )
    heads = ("R2 seen", "R2 held", "Sp seen", "Sp held", "AUROC", "kept cod", "kept non")
    print(f"{'model':<20}" + "".join(f"{h:>9}" for h in heads))
    for name, row in table.items():
        print(f"{name:<20}" + "".join(f"{row[c]:>9.3f}" for c in columns))


def per_tissue_mean(data: TaskData, split: str) -> np.ndarray:
    """Each seen tissue's training mean; a held-out tissue gets the mean over every training cell (it has none)."""
    train = data.splits["train"]
    means = train.groupby("tissue_index")["target"].mean()
    index = data.splits[split]["tissue_index"]
    return index.map(means).fillna(float(train["target"].mean())).to_numpy(np.float32)
