"""CDBridge's configuration: the [data] and [model] sections of the cdbridge task, and the ablations it trains
in the same run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dogmacache.train.config import required

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
    # pooled scGPT `context` embeddings of tissue_profiles (ids = tissue names): one token per tissue, where the
    # paper's tissue dictionary has M per tissue (C x M x d); the recipe embeds one bulk profile per tissue
    tissue_cache: str = required()
    coding_masks: str = required()  # the recipe's coding_masks.parquet (one flag per DNA bin, per transcript)
    tissues_table: str = ""  # the recipe's tissues.parquet (held_out column); "" = beside the labels
    # the recipe's labels_log1p.parquet (unscaled log1p mean TPM, the labels' layout); "" = beside the labels when it
    # is there. With it the labels are scaled here, for this run's held-out tissues: a seen tissue with its own
    # training transcripts' mean and std, a held-out tissue with the seen tissues' pooled training statistics (it
    # has no labels to learn from, so none of its own values may shape its scaling); without it, as the recipe did
    labels_log1p: str = ""
    tissues: tuple[str, ...] = ()  # label columns to model; () = every tissue column of the labels
    holdout_tissues: tuple[str, ...] = ()  # held out in addition to the recipe's held_out tissues
    recipe_holdout: bool = True  # hold out the tissues the recipe marks held_out (false: only holdout_tissues)
    # a stage-1 checkpoint to start stage 2 from; "" = train stage 1 in this run. Taken only when it was trained on
    # this run's splits and on caches of the same content (any held-out tissues: one stage 1 serves every fold)
    stage1_checkpoint: str = ""
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
    tissue_input: str = (
        "full"  # full | none (no tissue conditioning) | only (tissue embedding only, the paper's ablation)
    )
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
