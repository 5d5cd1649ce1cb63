"""The cdbridge task: stage 1 (coding masks) as a prerequisite run of stage 2 (tissue-conditioned expression),
their losses and metrics, and the ablations trained beside the model in the same run."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from dogmacache.errors import InputError
from dogmacache.train import checkpoint
from dogmacache.train.metrics import regression_metrics
from dogmacache.train.task import Chunk, FittedBaseline, FixedBaseline, Prerequisite, Task
from dogmacache.train.tasks.cdbridge import report
from dogmacache.train.tasks.cdbridge.config import ABLATIONS, CdbridgeDataConfig, CdbridgeModelConfig
from dogmacache.train.tasks.cdbridge.data import (
    TRAIN_ALL,
    CdbridgeData,
    ExampleChunks,
    load_cdbridge,
    per_tissue_mean,
    stage1_view,
)
from dogmacache.train.tasks.cdbridge.model import CdbridgeModel, kmeans_dictionary, step_generator
from torch import Tensor, nn

STAGE2_ONLY = ("tissue_input", "filter_by_mask", "freeze_stage1")  # [model] keys stage 1 never reads


# what stage 1 reads: the transcripts' splits, their windows and coding masks, the proteins its dictionary is drawn
# from; the tissues (held out or not) are stage 2's alone, so one stage 1 serves every leave-tissues-out fold
STAGE1_READS = ("labels", "dna_cache", "protein_cache", "coding_masks", "standardize_dna")
# the [model] keys a named stage-1 checkpoint must share with the stage 1 it stands for: a stage-1 run's, with the
# sizes and merging of its modules (the tissue decoder's keys and stage 2's losses are stage 2's alone)
STAGE1_MODEL = (
    "stage",
    "mask_supervision",
    "d_model",
    "n_heads",
    "ffn_hidden",
    "dictionary_size",
    "merge_rate_mean",
    "merge_rate_std",
    "functional_layers",
    "recovery",
)


class CdbridgeTask(Task):
    split_keys = ("id",)  # the transcript (`transcript` numbers them within a split)
    example_keys = ("id", "tissue_index")
    name = "cdbridge"
    data_config = CdbridgeDataConfig
    model_config = CdbridgeModelConfig
    models: ClassVar[dict] = {"CdbridgeModel": lambda c: CdbridgeModel(**c)}
    metric = "spearman_mean_seen"  # held-out tissues never choose the checkpoint
    no_input_baseline = "per_tissue_mean"
    null_metrics = (
        "spearman_mean_seen",
        "spearman_mean_held_out",
        "spearman_specific_held_out",
        "r2_mean_seen",
        "r2_mean_held_out",
    )
    input_columns = ("dna_row",)  # protein rows are the contrastive target, tissues the condition
    one_split_caches = ("dna_cache", "protein_cache")  # a protein, like a window, is one split's (the recipe's links)
    target_columns = ("target", "protein_row", "protein_present")  # expression, and the InfoNCE's protein

    def __init__(self, config: Any):
        super().__init__(config)
        for ablation in config.model.ablations:
            if ablation not in ABLATIONS:
                raise InputError(f"[model] ablations names {ablation!r}; expected some of {list(ABLATIONS)}")
        if config.model.stage == 1:
            self.metric = "neg_bce"  # finite even where a split has no coding bin (AUROC undefined)
            # the permutation null is scored on what stage 1 reports (stage 2's names are not among its metrics);
            # its no-input reference is the position prior beside every stage-1 metric (prior_auroc, prior_auprc)
            self.null_metrics = ("neg_bce", "auroc", "auprc")
            self.no_input_baseline = ""

    # ---- data and model -------------------------------------------------------------------------------------
    def load(self) -> CdbridgeData:
        data = load_cdbridge(self.config)
        return stage1_view(data) if self.config.model.stage == 1 else data

    def _examples(self, data: CdbridgeData, split: str) -> pd.DataFrame:
        """The split's examples: with [data] train_held_out, the training cells of every tissue (stage 1 runs on
        `stage1_view`, one example per transcript, which has no such table)."""
        if split == "train" and self.config.data.train_held_out and TRAIN_ALL in data.variants:
            return data.variants[TRAIN_ALL][1]
        return data.splits[split]

    def build_model(self, data: CdbridgeData, prerequisites: dict[str, Any]) -> tuple[nn.Module, str, dict[str, Any]]:
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
        if "stage1" in prerequisites:  # stage 2 on stage 1's connector, merging and functional decoder
            model.load_stage1(checkpoint.read(prerequisites["stage1"]["checkpoint"])["model"])
            if m.freeze_stage1:
                model.freeze_stage1()
        return model, "CdbridgeModel", config

    def stage1_config(self) -> Any:
        """Stage 1's run configuration: this one with stage = 1 and what only stage 2 reads reset, so that the
        ablations that change stage 2 alone declare the same run (trained once); its epochs and batch size are
        [model] stage1_epochs / stage1_batch_size when set."""
        m, t, d = self.config.model, self.config.train, self.config.data
        defaults = CdbridgeModelConfig()
        reset = {k: getattr(defaults, k) for k in STAGE2_ONLY}
        model = dataclasses.replace(m, **reset, stage=1, ablations=(), stage1_epochs=0, stage1_batch_size=0)
        train = dataclasses.replace(
            t, epochs=m.stage1_epochs or t.epochs, batch_size=m.stage1_batch_size or t.batch_size
        )
        data = dataclasses.replace(d, stage1_checkpoint="", train_held_out=False)
        return dataclasses.replace(self.config, model=model, train=train, data=data)

    def items_read(self, data: CdbridgeData, key: str, cache: Any) -> np.ndarray:
        """The modelled tissues from the tissue cache (read by name); the rest as every task's."""
        return np.asarray(data.tissues) if key == "tissue_cache" else super().items_read(data, key, cache)

    def prerequisites(self, data: CdbridgeData) -> dict[str, Prerequisite]:
        """Stage 2 with mask supervision needs stage 1: trained in <output>/stage1, or the finished checkpoint
        [data] stage1_checkpoint names, evaluated."""
        m = self.config.model
        if m.stage == 1 or not m.mask_supervision:
            return {}
        task = CdbridgeTask(self.stage1_config())
        return {
            "stage1": Prerequisite(
                task, stage1_view(data), "stage1", self.config.data.stage1_checkpoint, STAGE1_READS, STAGE1_MODEL
            )
        }

    def inspect(self, model: nn.Module, data: CdbridgeData, device: torch.device) -> dict[str, Any]:
        """The merging at evaluation: fractions of coding and non-coding bins kept as their own token, on the
        validation and test transcripts (Figure 5's measure). A stage 2 on a frozen stage 1 merges as its stage 1
        does, which the run measured on that prerequisite: nothing to measure again."""
        m = self.config.model
        if m.stage == 2 and m.mask_supervision and m.freeze_stage1:
            return {}
        batch = self.config.data.eval_batch
        return {split: report.kept_fractions(model, data, split, device, batch) for split in ("validation", "test")}

    # ---- batches and forward ----------------------------------------------------------------------------------
    def on_device(self, data: CdbridgeData, device: torch.device) -> dict[str, Any]:
        """The protein and tissue tables every step reads, on `device` (small: one row per item)."""
        return {"protein": data.protein.to(device), "tissue": data.tissue_embeddings.to(device)}

    def train_chunks(self, data: CdbridgeData, epoch: int) -> torch.utils.data.Dataset:
        table = self._examples(data, "train")
        order = np.random.default_rng([self.config.train.seed, epoch]).permutation(len(table))
        return ExampleChunks(data, table, self.config.train.batch_size, order)

    def eval_chunks(self, data: CdbridgeData, split: str) -> torch.utils.data.Dataset:
        return ExampleChunks(data, self._examples(data, split), self.config.data.eval_batch)

    def _outputs(
        self, model: nn.Module, batch: Chunk, tables: dict[str, Any], generator: torch.Generator | None
    ) -> Tensor:
        e, dna = batch.examples, batch.rows["dna"]
        core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        if self.config.model.stage == 1:
            fused = core.fuse(dna)
            return core.coding_logits(fused, core.plan(fused, generator))[e["dna_index"]]  # (P, L)
        tissue = tables["tissue"][e["tissue_index"]]
        expression, protein = model(dna, e["dna_index"], tissue, generator)
        return torch.cat([expression[:, None], protein], dim=1)  # (P, 1 + D_prot)

    def train_outputs(self, model: nn.Module, batch: Chunk, tables: dict[str, Any]) -> Tensor:
        return self._outputs(model, batch, tables, step_generator(batch.rows["dna"].device))

    def predict_chunk(self, model: nn.Module, chunk: Chunk, tables: dict[str, Any]) -> Tensor:
        out = self._outputs(model, chunk, tables, None)
        return out if self.config.model.stage == 1 else out[:, 0]

    def loss(self, outputs: Tensor, batch: Chunk, tables: dict[str, Any]) -> Tensor:
        e = batch.examples
        if self.config.model.stage == 1:
            return nn.functional.binary_cross_entropy_with_logits(outputs.float(), e["target"])
        mse = nn.functional.mse_loss(outputs[:, 0].float(), e["target"])
        present = e["protein_present"]
        if self.config.model.contrastive_weight == 0 or int(present.sum()) < 2:
            return mse
        rows, target = torch.unique(e["protein_row"][present], return_inverse=True)
        predicted = nn.functional.normalize(outputs[present, 1:].float(), dim=-1)
        proteins = nn.functional.normalize(tables["protein"][rows], dim=-1)
        logits = predicted @ proteins.T / self.config.model.temperature  # (P, distinct proteins of the batch)
        return mse + self.config.model.contrastive_weight * nn.functional.cross_entropy(logits, target)

    # ---- metrics ---------------------------------------------------------------------------------------------
    def observed(self, data: CdbridgeData, split: str) -> np.ndarray:
        table = self._examples(data, split)
        return np.stack(table["target"].to_list()) if self.config.model.stage == 1 else table["target"].to_numpy()

    def plotted(self, predictions: np.ndarray) -> np.ndarray:
        """Stage 1 scores its logits' probabilities (`metrics`), so its scatter draws those; stage 2 as it is."""
        return 1 / (1 + np.exp(-predictions)) if self.config.model.stage == 1 else predictions

    def metrics(self, predictions: np.ndarray, data: CdbridgeData, split: str) -> dict[str, Any]:
        observed = self.observed(data, split)
        if self.config.model.stage == 1:
            bce = nn.functional.binary_cross_entropy_with_logits(
                torch.from_numpy(predictions), torch.from_numpy(observed.astype(np.float32))
            )
            prior = report.position_prior(data, split)  # the same bins scored with no sequence at all
            return {
                **regression_metrics(self.plotted(predictions), observed),  # the probabilities, as drawn
                **report.binary_metrics(predictions, observed),
                **{
                    f"prior_{k}": v for k, v in report.binary_metrics(prior, observed).items() if k != "coding_fraction"
                },
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
        specific = report.tissue_specific_spearman(
            predictions, observed, table["transcript"].to_numpy(), tissue_of, seen, held
        )
        return {
            **regression_metrics(predictions, observed),  # pooled over every (transcript, tissue) cell
            "r2_mean_seen": mean(seen, "r2"),
            "spearman_mean_seen": mean(seen, "spearman"),
            "r2_mean_held_out": mean(held, "r2"),
            "spearman_mean_held_out": mean(held, "spearman"),
            # what no tissue-blind model reaches: each tissue's own part, beyond the seen tissues' mean
            "spearman_specific_seen": _mean_of(specific, seen),
            "spearman_specific_held_out": _mean_of(specific, held),
            "pooled_seen": regression_metrics(predictions[~in_held], observed[~in_held]),
            "pooled_held_out": regression_metrics(predictions[in_held], observed[in_held]),
            "per_tissue": {
                t: {
                    "r2": m["r2"],
                    "spearman": m["spearman"],
                    "spearman_specific": specific.get(t, float("nan")),
                    "held_out": t in data.held_out,
                }
                for t, m in per_tissue.items()
            },
        }

    # ---- baselines and figures -------------------------------------------------------------------------------
    def baselines(self, data: CdbridgeData) -> dict[str, FittedBaseline | FixedBaseline]:
        if not self.config.train.baselines or self.config.model.stage == 1:
            return {}
        found: dict[str, FittedBaseline | FixedBaseline] = {"per_tissue_mean": FixedBaseline(per_tissue_mean)}
        changes = {  # name: ([model] changes, [data] changes); an unchanged stage 1 is shared (trained once)
            "no_tissue": ({"tissue_input": "none"}, {}),
            "tissue_only": ({"tissue_input": "only"}, {}),
            "no_merging": ({"merge_rate_mean": 0.0, "merge_rate_std": 0.0}, {}),
            "no_recovery": ({"recovery": False}, {}),
            "no_mask_supervision": ({"mask_supervision": False, "freeze_stage1": False}, {}),
            "mask_filter": ({"filter_by_mask": True}, {}),
            "held_out_seen": ({}, {"train_held_out": True}),
        }
        for name in self.config.model.ablations:
            model_change, data_change = changes[name]
            if name == "held_out_seen" and not data.held_out:
                continue  # no held-out tissue: nothing to compare
            model = dataclasses.replace(self.config.model, ablations=(), **model_change)
            data_config = dataclasses.replace(self.config.data, **data_change)
            found[name] = FittedBaseline(CdbridgeTask(dataclasses.replace(self.config, model=model, data=data_config)))
        return found

    def summary(self, results: dict[str, Any], data: CdbridgeData) -> dict[str, Any]:
        """metrics.json's "stage1" (per model: mask metrics and kept fractions), "held_out_tissues" and the
        "seen_vs_held_out" table."""
        stage1 = report.stage1_metrics(results)
        return {
            "stage1": stage1,
            "held_out_tissues": data.held_out,
            "seen_vs_held_out": report.seen_vs_held_out(results, stage1),
        }

    figure_names = ("per_tissue_r2.png", "seen_vs_held_out.png", "kept_tokens.png")

    def figures(self, results: dict[str, Any], data: CdbridgeData, out_dir: Any) -> list[Any]:
        """Per-tissue R², seen vs held-out and kept-token bars per model; prints the seen vs held-out table."""
        return report.figures(results, data, out_dir, self.config.data.train_held_out)


def _mean_of(values: dict[str, float], names: list[str]) -> float:
    """The mean of `values` over `names` that have a finite one; NaN where none has."""
    kept = [values[n] for n in names if n in values and np.isfinite(values[n])]
    return float(np.mean(kept)) if kept else float("nan")
