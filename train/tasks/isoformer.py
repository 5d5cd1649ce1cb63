"""The IsoFormer task (docs/papers.md#isoformer): isoform expression across tissues from frozen DNA, RNA and
protein token caches. Only the aggregation module and the head train; the encoders ran once, in `embed`.

Data, from `dogmacache recipe gtex`: `labels.parquet` (one row per transcript: `id`, `split`, one column per
tissue of log1p mean TPM standardised with the training transcripts' values, each tissue its own but for those the
recipe held out for CDBridge's zero-shot test (`tissues.parquet`'s `scaled_with`), which the seen tissues' pooled
statistics scale: IsoFormer trains on every tissue, so those keep an offset from 0 it learns; optional `dna_id` /
`rna_id` / `protein_id` join columns where transcripts share a window or a protein, else `id` joins every cache;
an empty `protein_id` = no protein; a gene, window or protein lies in one split) and three
per-position caches: DNA (N_dna, L, D_dna), RNA (N_rna, T_rna, D_rna) and protein (N_prot, T_prot, D_prot); the RNA
and protein caches carry a `mask` (N, T) of real tokens (padding never attended). A pooled (N, D) cache is one
token per item.

Model (`IsoformerAggregator`), per docs/papers.md#isoformer-aggregation: each modality projected to `d_model`;
each cross-attention step is `q = q + MHA(q, kv)` (`out_proj` is the paper's Linear; residual, no norm, no
feed-forward), 8 heads; a modality missing for a sample (no protein) adds nothing; Linear -> one output per tissue;
MSE. Two aggregations (`[model] aggregation`):
- "dna_query": one chain. The query tokens are the DNA tokens; they cross-attend to the RNA tokens, then to the
  protein tokens; masked mean over the query tokens -> head (D).
- "paper" (the paper's Eq. 2-3): every modality's tokens cross-attend to the other modalities in turn (DNA to RNA
  then protein, RNA to DNA then protein, protein to DNA then RNA; one attention per ordered pair, keys are the
  projected encoder tokens); each result is mean-pooled over its own real tokens (zeros for a missing modality) and
  the pooled vectors are concatenated -> head (len(modalities) * D).
Ablations (`modalities`) are subsets; in the "dna_query" chain the first present modality of dna, rna, protein gives
the queries and the others are attended in that order, so "rna+protein" has RNA queries and "rna" alone is the RNA
tokens mean-pooled into the head.

Shapes: B transcripts, L / T tokens, D width, K tissues.
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
from dogmacache.train import plots
from dogmacache.train.config import required
from dogmacache.train.layers import MultiHeadAttention
from dogmacache.train.metrics import regression_metrics
from dogmacache.train.task import (
    Batches,
    Chunk,
    FittedBaseline,
    FixedBaseline,
    Task,
    TaskData,
    feature_scale,
    linked_items,
    read_table,
    tissue_columns,
)
from torch import Tensor, nn

MODALITIES = ("dna", "rna", "protein")
ABLATIONS = ("dna", "rna", "protein", "dna+rna", "dna+protein", "rna+protein")  # the paper's Table 8 beside all three
AGGREGATIONS = ("dna_query", "paper")
NOT_TISSUES = ("id", "gene_id", "split", "dna_id", "rna_id", "protein_id")


@dataclass(frozen=True)
class IsoformerDataConfig:
    labels: str = required()  # the gtex recipe's labels.parquet (standardised log1p mean TPM per tissue)
    dna_cache: str = ""  # per-position DNA cache (Enformer trunk at the TSS window); "" = not used
    rna_cache: str = ""  # per-token RNA cache with a mask (Nucleotide Transformer over the cDNA); "" = not used
    protein_cache: str = ""  # per-residue protein cache with a mask (ESM-2); "" = not used
    tissues: tuple[str, ...] = ()  # label columns to predict; () = those tissues.parquet beside the labels lists
    # (without one: every column but the ids, each holding numbers)
    eval_batch: int = 64  # transcripts per evaluation forward pass
    preload_bytes: int = 2 << 30  # keep a cache's rows in RAM when they fit this budget (bytes, as float32)
    standardize: bool = False  # z-score each cache's features with the training transcripts' real tokens

    LIMITS: ClassVar[dict[str, str]] = {"eval_batch": ">=1", "preload_bytes": ">=0"}


@dataclass(frozen=True)
class IsoformerModelConfig:
    modalities: tuple[str, ...] = ("dna", "rna", "protein")  # which caches the model reads (paper: all three)
    d_model: int = 256  # shared width of the projections and attention (the paper leaves it open)
    n_heads: int = 8  # paper: 8
    dropout: float = 0.1  # on the attention probabilities and before the head
    ablations: tuple[str, ...] = ABLATIONS  # modality subsets trained as baselines in the same run ("dna+rna", ...)
    aggregation: str = "dna_query"  # "dna_query": DNA tokens query RNA then protein; "paper": Eq. 2-3, see above

    LIMITS: ClassVar[dict[str, str]] = {"d_model": ">=1", "n_heads": ">=1", "dropout": "[0,1)"}
    CHOICES: ClassVar[dict[str, tuple]] = {"aggregation": AGGREGATIONS}


def parse_modalities(names: tuple[str, ...] | str, where: str) -> tuple[str, ...]:
    items = tuple(names.split("+")) if isinstance(names, str) else tuple(names)
    bad = [m for m in items if m not in MODALITIES]
    if bad or not items or len(set(items)) != len(items):
        raise InputError(f"{where} {names!r}: expected distinct names from {list(MODALITIES)} (e.g. 'dna+rna')")
    return tuple(m for m in MODALITIES if m in items)  # queries first, then attention order


def masked_mean(x: Tensor, keep: Tensor) -> Tensor:
    """(B, N, D) averaged over the tokens where `keep` (B, N) is True -> (B, D); zeros where a row keeps none."""
    weights = keep.to(x.dtype)
    return (x * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1.0)


class IsoformerAggregator(nn.Module):
    """Cross-attention aggregation of per-modality tokens -> (B, K), as "dna_query" or "paper" (module docstring)."""

    def __init__(
        self,
        widths: dict[str, int],
        n_tissues: int,
        d_model: int,
        n_heads: int,
        dropout: float,
        aggregation: str = "dna_query",  # checkpoints from before the option was added hold the DNA-query chain
    ):
        super().__init__()
        self.modalities = [m for m in MODALITIES if m in widths]
        if d_model % n_heads:
            raise InputError(f"IsoFormer d_model={d_model} is not divisible by n_heads={n_heads}; pick a multiple")
        if aggregation not in AGGREGATIONS:
            raise InputError(f"IsoFormer aggregation {aggregation!r} is not one of {AGGREGATIONS}; pick one of them")
        self.aggregation = aggregation
        self.projections = nn.ModuleDict({m: nn.Linear(widths[m], d_model) for m in self.modalities})
        if aggregation == "dna_query":
            pairs = [(self.modalities[0], m) for m in self.modalities[1:]]
        else:
            pairs = [(q, m) for q in self.modalities for m in self.modalities if m != q]
        self.cross = nn.ModuleDict({self._key(q, m): MultiHeadAttention(d_model, n_heads, dropout) for q, m in pairs})
        self.dropout = nn.Dropout(dropout)
        pooled = d_model * (len(self.modalities) if aggregation == "paper" else 1)
        self.head = nn.Linear(pooled, n_tissues)

    def _key(self, query: str, other: str) -> str:
        return other if self.aggregation == "dna_query" else f"{query}_to_{other}"  # dna_query: older checkpoints

    def _attend(self, query: str, q: Tensor, other: str, kv: Tensor, usable: Tensor) -> Tensor:
        """q + cross-attention of q to `other`'s usable tokens; nothing added for a sample without any."""
        safe = usable | ~usable.any(dim=1, keepdim=True)  # a sample without keys attends to padding ...
        attended = self.cross[self._key(query, other)].forward_masked(q, kv, safe)
        return q + attended * usable.any(dim=1)[:, None, None]  # ... and adds nothing (missing modality)

    def forward(self, tokens: dict[str, Tensor], masks: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        """tokens[m] (B, N_m, D_m); masks[m] (B, N_m) True = real token; present[m] (B,) -> (B, K)."""
        projected = {m: self.projections[m](tokens[m]) for m in self.modalities}  # (B, N_m, D)
        usable = {m: masks[m] & present[m][:, None] for m in self.modalities}
        queries = self.modalities[:1] if self.aggregation == "dna_query" else self.modalities
        pooled = []
        for query in queries:
            q = projected[query]
            for other in self.modalities:
                if other != query:
                    q = self._attend(query, q, other, projected[other], usable[other])
            pooled.append(masked_mean(q, usable[query]))
        return self.head(self.dropout(torch.cat(pooled, dim=-1)))


@dataclass
class IsoformerData(TaskData):
    tissues: list[str] = dataclasses.field(default_factory=list)
    caches: dict[str, EmbeddingCache] = dataclasses.field(default_factory=dict)
    masks: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # (N_m, T_m) bool per cache
    preload: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # rows as float32 where they fit
    scale: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)  # mean, std (D,)


def _read_labels(config: IsoformerDataConfig) -> tuple[pd.DataFrame, list[str]]:
    path = Path(config.labels)
    table = read_table(
        path, ("id", "split"), recipe="gtex", expected="an IsoFormer labels table has id, split and tissues"
    )
    beside = path.with_name("tissues.parquet")  # the gtex recipe's list of the tissues its labels hold
    listed = None
    if beside.is_file():
        listed = read_table(beside, ("tissue",), recipe="gtex", what="tissues table")["tissue"].astype(str).tolist()
    tissues = tissue_columns(table, path, listed, str(beside), config.tissues, NOT_TISSUES)
    values = table[tissues].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        row, col = bad[0]
        raise InputError(
            f"{path}: {len(bad)} label cell(s) are missing or not finite, e.g. transcript "
            f"{table['id'].iloc[row]!r} in tissue {tissues[col]!r}; drop or fix them in the recipe"
        )
    return table, tissues


def _join(table: pd.DataFrame, cache: EmbeddingCache, modality: str) -> tuple[np.ndarray, np.ndarray]:
    """(row in the cache, present) per transcript; an empty `protein_id` (no protein) is absent; an empty DNA or
    RNA id, or one the cache lacks, an error."""
    column = f"{modality}_id" if f"{modality}_id" in table.columns else "id"
    ids = table[column].fillna("").astype(str)
    present = (ids != "").to_numpy()
    if modality != "protein" and not present.all():
        raise InputError(
            f"{(~present).sum()} transcript(s) have an empty {column}, e.g. {table['id'].iloc[np.argmin(present)]!r}; "
            f"every transcript needs its {modality} (only protein_id may be empty: no protein): fix the join column "
            "or re-run the recipe"
        )
    rows = np.zeros(len(table), dtype=np.int64)
    rows[present] = cache.rows_of(ids[present])  # names the ids that have no row
    return rows, present


def load_isoformer(config: Any) -> IsoformerData:
    d, m = config.data, config.model
    table, tissues = _read_labels(d)
    modalities = parse_modalities(m.modalities, "[model] modalities")
    caches, masks, preload, joined = {}, {}, {}, {}
    for modality in modalities:
        url = getattr(d, f"{modality}_cache")
        if not url:
            raise InputError(
                f"[model] modalities include {modality!r} but [data] {modality}_cache is empty; "
                f"give the cache or drop {modality!r} from the modalities"
            )
        cache = caches[modality] = open_cache(url)
        if cache.manifest.modality != modality:
            raise InputError(
                f"{cache.url} holds {cache.manifest.modality} embeddings; [data] {modality}_cache needs {modality}"
            )
        n_tokens = cache.item_shape[0] if len(cache.item_shape) == 2 else 1
        if "mask" in cache.manifest.extra_arrays:
            masks[modality] = np.asarray(cache.extra("mask")[:], dtype=bool).reshape(len(cache), n_tokens)
        else:
            masks[modality] = np.ones((len(cache), n_tokens), dtype=bool)
        joined[modality] = _join(table, cache, modality)
        rows, present = joined[modality]
        empty = present & ~masks[modality][rows].any(axis=1)
        if empty.any():
            raise InputError(
                f"{cache.url}: the mask of {table['id'][empty].iloc[0]!r} is all padding (no real token); "
                "re-embed it or drop the transcript from the labels"
            )
        need = len(cache) * int(np.prod(cache.item_shape)) * 4
        if 0 < need <= d.preload_bytes:
            preload[modality] = cache.read_rows(np.arange(len(cache)), dtype=np.float32).reshape(
                len(cache), n_tokens, -1
            )
    frame = pd.DataFrame({"id": table["id"].astype(str), "split": table["split"]})
    for modality, (rows, present) in joined.items():
        frame[f"{modality}_row"], frame[f"{modality}_present"] = rows, present
    if "rna" in joined:  # a transcript's own cDNA: two rows reading one are one example under two ids
        rows, present = joined["rna"]
        twice = pd.Series(rows[present]).duplicated(keep=False).to_numpy()
        if twice.any():
            read = rows[present]
            ids = table["id"].astype(str).to_numpy()[present][read == read[twice][0]]  # the rows of one pair
            raise InputError(
                f"{d.labels}: {int(twice.sum())} transcripts read one RNA item with another, e.g. {ids[0]!r} and "
                f"{ids[1]!r} (the same rna_id): one transcript under two ids would be counted twice; keep one row"
            )
    targets = table[tissues].to_numpy(np.float32)
    splits = {}
    for split in SPLITS:
        keep = (frame["split"] == split).to_numpy()
        if not keep.any():
            raise InputError(f"{d.labels} has no {split} transcripts; every split needs some (re-run the recipe)")
        part = frame[keep].reset_index(drop=True)
        part["target"] = list(targets[keep])
        splits[split] = part
    beside = Path(d.labels).with_name("tissues.parquet")  # the tissue list `_read_labels` takes, where it is there
    data = IsoformerData(
        splits=splits,
        links=linked_items(table, ("gene_id", *(f"{m}_id" for m in modalities))),
        fingerprints={m: c.fingerprint() for m, c in caches.items()},
        tissues=tissues,
        caches=caches,
        masks=masks,
        preload=preload,
        files_read={"tissues_table": str(beside)} if beside.is_file() else {},
    )
    if d.standardize:
        for modality in caches:
            train = splits["train"]
            rows = np.unique(train.loc[train[f"{modality}_present"], f"{modality}_row"].to_numpy())
            data.scale[modality] = feature_scale(  # real tokens, 64 transcripts at a time
                _rows(data, modality, rows[a : a + 64])[data.masks[modality][rows[a : a + 64]]]
                for a in range(0, len(rows), 64)
            )
        data.extras["scale"] = {m: {"mean": s[0].tolist(), "std": s[1].tolist()} for m, s in data.scale.items()}
    return data


def _rows(data: IsoformerData, modality: str, rows: np.ndarray) -> np.ndarray:
    """Token rows (len(rows), N, D) as float32, each cache row read once, standardised when the data asks."""
    if modality in data.preload:
        block = data.preload[modality][rows]
    else:
        unique, inverse = np.unique(rows, return_inverse=True)
        cache = data.caches[modality]
        block = cache.read_rows(unique, dtype=np.float32).reshape(len(unique), data.masks[modality].shape[1], -1)[
            inverse
        ]
    if modality in data.scale:
        mean, std = data.scale[modality]
        block = (block - mean) / std
    return block


class TranscriptBatches(Batches):
    """Batches of transcripts with their token rows, masks and targets."""

    def __init__(
        self, data: IsoformerData, split: str, modalities: tuple[str, ...], size: int, order: np.ndarray | None = None
    ):
        self.data, self.part, self.modalities = data, data.splits[split], modalities
        super().__init__(len(self.part), size, order)

    def chunk(self, positions: np.ndarray) -> Chunk:
        part = self.part.iloc[positions]
        examples = {
            "index": torch.from_numpy(positions.astype(np.int64)),
            "target": torch.from_numpy(np.stack(part["target"].to_list()).astype(np.float32)),
        }
        for m in self.modalities:
            rows = part[f"{m}_row"].to_numpy()
            examples[f"{m}_tokens"] = torch.from_numpy(np.ascontiguousarray(_rows(self.data, m, rows)))
            examples[f"{m}_mask"] = torch.from_numpy(self.data.masks[m][rows])
            examples[f"{m}_present"] = torch.from_numpy(part[f"{m}_present"].to_numpy(copy=True))
        return Chunk(examples)


class IsoformerTask(Task):
    split_keys = ("id",)
    example_keys = ("id",)
    name = "isoformer"
    data_config = IsoformerDataConfig
    model_config = IsoformerModelConfig
    models: ClassVar[dict] = {"IsoformerAggregator": lambda c: IsoformerAggregator(**c)}
    metric = "spearman_mean_tissue"
    no_input_baseline = "per_tissue_mean"
    input_columns = ("dna_row", "rna_row", "protein_row")
    one_split_caches = ("dna_cache", "rna_cache", "protein_cache")

    def __init__(self, config: Any):
        super().__init__(config)
        self.modalities = parse_modalities(config.model.modalities, "[model] modalities")
        for ablation in config.model.ablations:
            outside = [m for m in parse_modalities(ablation, "[model] ablations") if m not in self.modalities]
            if outside:  # only the model's own modalities' caches are loaded
                raise InputError(
                    f"[model] ablations names {ablation!r}, whose {outside[0]!r} is not one of [model] modalities "
                    f"{list(self.modalities)}; drop it from ablations, or add it to modalities"
                )

    def load(self) -> IsoformerData:
        return load_isoformer(self.config)

    def build_model(self, data: IsoformerData, prerequisites: dict[str, Any]) -> tuple[nn.Module, str, dict[str, Any]]:
        m = self.config.model
        widths = {name: data.caches[name].item_shape[-1] for name in self.modalities}
        config = {
            "widths": widths,
            "n_tissues": len(data.tissues),
            "d_model": m.d_model,
            "n_heads": m.n_heads,
            "dropout": m.dropout,
            "aggregation": m.aggregation,
        }
        return IsoformerAggregator(**config), "IsoformerAggregator", config

    def train_chunks(self, data: IsoformerData, epoch: int) -> torch.utils.data.Dataset:
        order = np.random.default_rng([self.config.train.seed, epoch]).permutation(len(data.splits["train"]))
        return TranscriptBatches(data, "train", self.modalities, self.config.train.batch_size, order)

    def eval_chunks(self, data: IsoformerData, split: str) -> torch.utils.data.Dataset:
        return TranscriptBatches(data, split, self.modalities, self.config.data.eval_batch)

    def _forward(self, model: nn.Module, batch: Chunk) -> Tensor:
        e = batch.examples
        return model(
            {m: e[f"{m}_tokens"] for m in self.modalities},
            {m: e[f"{m}_mask"] for m in self.modalities},
            {m: e[f"{m}_present"] for m in self.modalities},
        )

    def train_outputs(self, model: nn.Module, batch: Chunk, tables: dict[str, Any]) -> Tensor:
        return self._forward(model, batch)

    def predict_chunk(self, model: nn.Module, chunk: Chunk, tables: dict[str, Any]) -> Tensor:
        return self._forward(model, chunk)

    def loss(self, outputs: Tensor, batch: Chunk, tables: dict[str, Any]) -> Tensor:
        # the paper's squared error (Eq. 5), averaged over tissues where the paper sums them: its loss / K, the same
        # minimum; Adam's steps do not depend on the scale, [train] clip_norm does (it clips K times later here)
        return nn.functional.mse_loss(outputs.float(), batch.examples["target"])

    def observed(self, data: IsoformerData, split: str) -> np.ndarray:
        return np.stack(data.splits[split]["target"].to_list())

    def metrics(self, predictions: np.ndarray, data: IsoformerData, split: str) -> dict[str, Any]:
        """Pooled over all (transcript, tissue) cells; per tissue across transcripts and their mean (the paper's
        headline); Spearman per transcript across tissues, averaged."""
        observed = self.observed(data, split)
        pooled = regression_metrics(predictions.ravel(), observed.ravel())
        per_tissue = {t: regression_metrics(predictions[:, k], observed[:, k]) for k, t in enumerate(data.tissues)}
        # every transcript whose tissues differ in the label; a prediction flat across tissues (up to rounding,
        # `regression_metrics`) scores 0 there, as it does per tissue
        per_transcript = [
            regression_metrics(p, o)["spearman"] for p, o in zip(predictions, observed, strict=True) if np.ptp(o) > 0
        ]
        flat = [t for k, t in enumerate(data.tissues) if np.ptp(observed[:, k]) == 0]  # no R² across transcripts
        scored = [m for t, m in per_tissue.items() if t not in flat]
        return {
            **pooled,
            "pooled_over": "transcript x tissue cells",  # n, r2, pearson, ... above; n_examples transcripts
            "n_examples": int(len(observed)),
            "r2_mean_tissue": float(np.mean([m["r2"] for m in scored])) if scored else float("nan"),
            "spearman_mean_tissue": float(np.mean([m["spearman"] for m in scored])) if scored else float("nan"),
            "tissues_flat": flat,  # one label value over the split's transcripts: left out of the means
            "spearman_mean_transcript": float(np.mean(per_transcript)) if per_transcript else float("nan"),
            "per_tissue": {t: {"r2": m["r2"], "spearman": m["spearman"]} for t, m in per_tissue.items()},
        }

    def baselines(self, data: IsoformerData) -> dict[str, FittedBaseline | FixedBaseline]:
        if not self.config.train.baselines:
            return {}
        found: dict[str, FittedBaseline | FixedBaseline] = {"per_tissue_mean": FixedBaseline(per_tissue_mean)}
        for ablation in self.config.model.ablations:
            modalities = parse_modalities(ablation, "[model] ablations")
            if modalities == self.modalities:
                continue
            model = dataclasses.replace(self.config.model, modalities=modalities, ablations=())
            found["+".join(modalities)] = FittedBaseline(IsoformerTask(dataclasses.replace(self.config, model=model)))
        return found

    figure_names = ("per_tissue_spearman.png",)

    def figures(self, results: dict[str, Any], data: IsoformerData, out_dir: Any) -> list[Any]:
        values = {
            name: {t: r["test"]["per_tissue"][t]["spearman"] for t in data.tissues}
            for name, r in results.items()
            if "per_tissue" in r["test"]
        }
        return [
            plots.per_group_bars(
                values,
                "Spearman (test)",
                Path(out_dir) / "per_tissue_spearman.png",
                "IsoFormer on frozen caches: Spearman per tissue, test transcripts",
                every_model=list(results),
            )
        ]


def per_tissue_mean(data: TaskData, split: str) -> np.ndarray:
    """Each tissue's training mean for every transcript of `split`."""
    train = np.stack(data.splits["train"]["target"].to_list())
    return np.repeat(train.mean(axis=0, keepdims=True), len(data.splits[split]), axis=0).astype(np.float32)
