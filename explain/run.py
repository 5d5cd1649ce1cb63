"""`dogmacache explain` from start to end: one frozen config, items streamed in batches, every output written
as it is computed, the summary last.

Per batch: one forward with attention maps (no gradient), one backward for the input gradient, optionally
Captum's integrated gradients; per item: coordinates, table rows, tracks, figures (the first `item_figures`).
Memory holds one batch of DNA windows, a few numbers per item, the per-bin sums of the averaged tracks and, with
--features, one flag per bin per item.

Outputs under `out` (L positions per window, k = top_k):
  summary.json               the numbers across items (see stats.Summary), feature enrichment, timings, inputs
  items.tsv                  one row per item: prediction, target, peaks, top-k overlap
  topk.tsv                   k rows per item and ranking (attention, gradient): bin, coordinates, both scores
  positions.tsv.gz           L rows per item: every score at every bin, with coordinates
  vce_genes.tsv.gz           G rows per item: the VCE pooling weights over genes (RNA) and proteins
  tracks/mean.{attention,gradient}.bedGraph (and .bw)       averaged over items where windows overlap
  tracks/items/<n>_<item>.{attention,gradient}.bedGraph (and .bw)
  figures/topk_overlap.png, figures/peak_distance.png, figures/items/<n>_<item>.{profile,heads}.png
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from dogmacache.cache.storage import check_own_summary, check_writable, local_path, replace_whole
from dogmacache.errors import InputError
from dogmacache.explain import attribution, figures, tracks
from dogmacache.explain.cdt import CdtExplainer, ExplainSources
from dogmacache.explain.features import FeatureOverlap, FeatureSet
from dogmacache.explain.stats import Summary, top_k
from dogmacache.train.checkpoint import read as read_checkpoint

EXPLAINERS = {"cdt": CdtExplainer}  # task name -> the module that explains its checkpoints
METHODS = ("grad_x_input", "integrated_gradients")  # beyond attention and the gradient norm, which always run


@dataclass(frozen=True)
class ExplainConfig:
    sources: ExplainSources
    out: str
    items: tuple[str, ...] = ()  # ENHANCER|GENE or ENHANCER ids; empty: choose from `split`
    split: str | None = None  # validation | test (| train)
    n: int = 100  # items drawn from the split (the paper: 100 validation samples)
    top_effects: bool = False  # the n largest |target| instead of a random draw
    seed: int = 0  # the random draw
    top_k: int = 20  # positions per ranking (the paper: 20 of 896)
    features: str | None = None  # BED file of intervals to test the top-k bins against
    control_features: str | None = None  # BED file scored the same way, that should not be enriched (decoys)
    methods: tuple[str, ...] = ("grad_x_input",)  # of METHODS
    ig_steps: int = 32  # integrated-gradients steps
    batch_size: int = 8  # items per forward / backward pass
    item_figures: int = 10  # the first this many items get their own figures (0: none)
    item_tracks: bool = True  # per-item bedGraph (and bigWig) files
    temperature: float | None = None  # display-only sharpening of attention in figures (None: as computed)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise InputError(
                f"--methods {unknown[0]!r} is not one of {list(METHODS)}; attention and the gradient norm always run"
            )
        if "integrated_gradients" in self.methods and importlib.util.find_spec("captum") is None:
            raise InputError(
                "--methods integrated_gradients needs Captum; pip install 'dogmacache[explain]' "
                "(or captum alone), or leave the method out"
            )
        for name, value, low in (
            ("--n", self.n, 1),
            ("--top-k", self.top_k, 1),
            ("--batch-size", self.batch_size, 1),
            ("--ig-steps", self.ig_steps, 2),
            ("--item-figures", self.item_figures, 0),
        ):
            if value < low:
                raise InputError(f"{name} {value} must be at least {low}")
        if self.temperature is not None and not self.temperature > 0:
            raise InputError(f"--temperature {self.temperature} must be > 0 (the paper's figure used 0.3)")
        if not self.items and self.split is None:
            raise InputError("name the items to explain: --items ID,... or --split validation|test [--n N]")
        if self.control_features and not self.features:
            raise InputError("--control-features is scored beside --features; pass the BED to test with --features")
        if local_path(self.out) is None:
            raise InputError(f"--out {self.out}: explain writes local files (tracks, tables, figures); pass a folder")


def explainer_for(sources: ExplainSources):
    checkpoint = read_checkpoint(sources.checkpoint)  # read once: the explainer takes it as read
    task = checkpoint["task"]
    if task not in EXPLAINERS:
        raise InputError(
            f"{sources.checkpoint} holds a {task!r} model, which exposes no attention to explain; "
            f"explain supports {sorted(EXPLAINERS)}"
        )
    return EXPLAINERS[task](sources, checkpoint)


def _file_name(n: int, item: str) -> str:
    return f"{n:04d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', item)[:80]}"


def run_explain(config: ExplainConfig, log=print) -> dict:
    """Explain the chosen items; returns the summary written to out/summary.json."""
    started = time.perf_counter()
    config = dataclasses.replace(config, out=local_path(config.out))  # a file:// URL as the folder it names
    check_writable(config.out, "--out", "nothing was computed")
    check_own_summary(config.out, "explain", "topk_overlap")
    explainer = explainer_for(config.sources)
    geometry = explainer.geometry
    top_k(np.zeros(geometry.n_bins), config.top_k)  # refuse a k larger than the window before any work
    chosen = explainer.select(list(config.items), config.split, config.n, config.top_effects, config.seed)
    if not explainer.positions_checked:
        log(
            f"{explainer.dna.url} records no windows table (an imported cache): the tracks are placed by the "
            "windows table's positions as given, unchecked against the cache"
        )
    overlaps: dict[str, FeatureOverlap] = {}  # summary key -> the top-k bins' overlap with that BED
    for key, bed in (("features", config.features), ("control_features", config.control_features)):
        if bed:
            chroms = set(explainer.windows.loc[chosen["enhancer"].unique(), "chrom"].astype(str))
            overlaps[key] = FeatureOverlap(FeatureSet(bed, chroms), ("attention", "gradient"), config.seed)
    out = Path(config.out)
    clear_previous(out)  # every input read: a refused run loses nothing
    for folder in ("tracks/items", "figures/items"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    bigwig = tracks.has_bigwig()
    summary = Summary(k=config.top_k, n_positions=geometry.n_bins)
    means = {"attention": tracks.TrackAverage(), "gradient": tracks.TrackAverage()}
    item_rows, topk_rows = [], []
    predict = explainer.predictor()
    baseline, baseline_source = explainer.baseline()  # integrated gradients' start, and gradient x input's
    compute_seconds = 0.0
    n_done = 0
    with gzip.open(out / "positions.tsv.gz", "wt") as positions, gzip.open(out / "vce_genes.tsv.gz", "wt") as vce:
        for part, dna in explainer.batches(chosen, config.batch_size):
            tick = time.perf_counter()
            gene_index = torch.tensor(part["gene_index"].to_numpy(np.int64))
            maps = explainer.attention(dna, gene_index)
            gradient = attribution.input_gradient(predict, dna, gene_index)
            scores = {"gradient": attribution.gradient_norm(explainer.model_input_gradient(gradient)).numpy()}
            if "grad_x_input" in config.methods:
                scores["grad_x_input"] = attribution.gradient_x_input(gradient, dna, baseline).numpy()
            if "integrated_gradients" in config.methods:
                scores["integrated_gradients"] = attribution.integrated_gradients(
                    predict, dna, gene_index, baseline, config.ig_steps
                ).numpy()
            compute_seconds += time.perf_counter() - tick
            for b, pair in enumerate(part.itertuples(index=False)):
                _write_item(
                    config,
                    explainer,
                    out,
                    n_done,
                    pair,
                    maps,
                    scores,
                    b,
                    summary,
                    means,
                    overlaps.values(),
                    item_rows,
                    topk_rows,
                    positions,
                    vce,
                    bigwig,
                )
                n_done += 1
            log(f"explained {n_done}/{len(chosen)} items")
    pd.DataFrame(item_rows).to_csv(out / "items.tsv", sep="\t", index=False)
    pd.DataFrame(topk_rows).to_csv(out / "topk.tsv", sep="\t", index=False)
    for name, average in means.items():
        track = average.result()
        tracks.write_bedgraph(
            out / "tracks" / f"mean.{name}.bedGraph",
            track,
            f"explain mean {name}",
            f"{name} per base: the mean over the items whose window covers it ({n_done} items in "
            f"{chosen['enhancer'].iloc[:n_done].nunique()} windows)",
        )
        if bigwig:
            tracks.write_bigwig(out / "tracks" / f"mean.{name}.bw", track, explainer.chrom_sizes)
    numbers = summary.to_dict()
    figures.overlap_histogram(
        out / "figures" / "topk_overlap.png",
        summary.overlaps,
        config.top_k,
        numbers["topk_overlap"]["expected_if_random"],
        numbers["topk_overlap"]["expected_if_windows_mismatched"],
    )
    figures.peak_distance_histogram(
        out / "figures" / "peak_distance.png", summary.attention_peaks_bp, summary.gradient_peaks_bp
    )
    result = {
        **numbers,
        "features": overlaps["features"].result() if "features" in overlaps else None,
        "control_features": overlaps["control_features"].result() if "control_features" in overlaps else None,
        "seconds_per_item": (time.perf_counter() - started) / max(n_done, 1),
        "compute_seconds_per_item": compute_seconds / max(n_done, 1),
        "checkpoint": explainer.checkpoint_path,
        "task": explainer.task,
        "geometry": {**asdict(geometry), "span_bp": geometry.span_bp},
        "bigwig": bigwig,
        "baseline": baseline_source,  # what gradient x input and integrated gradients are measured from
        "gradient_with_respect_to": explainer.gradient_space(),  # the gradient norm's input space
        "positions_checked": explainer.positions_checked,  # the windows table against the DNA cache's input digest
        "config": asdict(config),
    }
    with replace_whole(out / "summary.json") as tmp:  # written last, whole: its presence says the run finished
        tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


# what a run writes, as globs under --out: a run first removes an earlier run's (summary.json first), so a run
# stopped midway never leaves another run's results looking like its own, nor its per-item tracks beside them
ITEM_FILE = re.compile(r"\d{4,}_")  # `_file_name`: the item's number, 4 digits or more, then its name
OUTPUTS = (
    "summary.json",
    "items.tsv",
    "topk.tsv",
    "positions.tsv.gz",
    "vce_genes.tsv.gz",
    "tracks/mean.*.bedGraph",
    "tracks/mean.*.bw",
    "tracks/items/[0-9]*_*.bedGraph",
    "tracks/items/[0-9]*_*.bw",
    "figures/topk_overlap.png",
    "figures/peak_distance.png",
    "figures/items/[0-9]*_*.png",
)


def clear_previous(out: Path) -> None:
    """Remove an earlier explain run's outputs from `out` (only the files a run writes, `OUTPUTS`); called once
    the inputs are checked and the items chosen, so a refused run loses nothing."""
    for pattern in OUTPUTS:
        for path in sorted(out.glob(pattern)):
            if "items/" not in pattern or ITEM_FILE.match(path.name):
                path.unlink(missing_ok=True)


def _write_item(
    config,
    explainer,
    out,
    n,
    pair,
    maps,
    scores,
    b,
    summary,
    means,
    overlaps,
    item_rows,
    topk_rows,
    positions,
    vce,
    bigwig,
) -> None:
    """Everything one item contributes: its statistics, table rows, tracks and (the first few) figures."""
    heads = maps["dna_to_rna"][b]  # (H, L)
    attention = heads.mean(axis=0)
    gradient = scores["gradient"][b]
    coords = explainer.coordinates(pair.enhancer)
    offsets = coords.offset_bp
    overlap = summary.add(attention, gradient, offsets, maps["dna_to_rna_genes"][b], str(pair.enhancer))
    best = {"attention": top_k(attention, config.top_k), "gradient": top_k(gradient, config.top_k)}
    for feature_overlap in overlaps:
        feature_overlap.add(coords, best, str(pair.enhancer))
    name = _file_name(n, pair.item)
    item_rows.append(
        {
            "n": n,
            "item": pair.item,
            "enhancer": pair.enhancer,
            "gene": pair.gene,
            "split": pair.split,
            "target": float(pair.target),
            "prediction": float(maps["prediction"][b]),
            "chrom": coords.chrom,
            "attention_peak_bin": int(best["attention"][0]),
            "attention_peak_offset_bp": float(offsets[best["attention"][0]]),
            "gradient_peak_bin": int(best["gradient"][0]),
            "gradient_peak_offset_bp": float(offsets[best["gradient"][0]]),
            "topk_overlap": overlap,
            "files": name,
        }
    )
    for ranking, picked in best.items():
        for rank, k in enumerate(picked, 1):
            topk_rows.append(
                {
                    "item": pair.item,
                    "ranking": ranking,
                    "rank": rank,
                    "bin": int(k),
                    "chrom": coords.chrom,
                    "start": int(coords.start[k]),
                    "end": int(coords.end[k]),
                    "inside": bool(coords.inside[k]),
                    "offset_bp": float(offsets[k]),
                    "attention": float(attention[k]),
                    "gradient": float(gradient[k]),
                    "in_both": bool(k in best["attention"] and k in best["gradient"]),
                }
            )
    table = pd.DataFrame(
        {
            "item": pair.item,
            "bin": np.arange(len(attention)),
            "chrom": coords.chrom,
            "start": coords.start,
            "end": coords.end,
            "inside": coords.inside,
            "offset_bp": offsets,
            "attention": attention,
            **{f"attention_head{h}": heads[h] for h in range(len(heads))},
            "vce_dna": maps["vce_dna"][b].mean(axis=0),
            **{method: values[b] for method, values in scores.items()},
        }
    )
    table.to_csv(positions, sep="\t", index=False, header=n == 0, float_format="%.6g")
    genes = pd.DataFrame(
        {
            "item": pair.item,
            "gene": explainer.genes,
            "vce_rna": maps["vce_rna"][b].mean(axis=0),
            "vce_protein": maps["vce_protein"][b].mean(axis=0),
        }
    )
    genes.to_csv(vce, sep="\t", index=False, header=n == 0, float_format="%.6g")
    for track_name, values in (("attention", attention), ("gradient", gradient)):
        track = tracks.window_track(coords, values)
        means[track_name].add(track)
        if config.item_tracks:
            path = out / "tracks" / "items" / f"{name}.{track_name}.bedGraph"
            tracks.write_bedgraph(path, track, f"{pair.item} {track_name}", f"explain {track_name}, {pair.item}")
            if bigwig:
                tracks.write_bigwig(path.with_suffix(".bw"), track, explainer.chrom_sizes)
    if n < config.item_figures:
        title = (
            f"{pair.item}  (target {pair.target:.3g}, predicted {maps['prediction'][b]:.3g}; "
            f"top-{config.top_k} overlap {overlap})"
        )
        figures.item_profile(
            out / "figures" / "items" / f"{name}.profile.png",
            offsets,
            attention,
            gradient,
            title,
            best["attention"],
            best["gradient"],
            config.temperature,
        )
        figures.head_panels(
            out / "figures" / "items" / f"{name}.heads.png", offsets, heads, pair.item, config.temperature
        )
