"""`dogmacache explain`: attention maps, gradient attribution, their overlap, genome-browser tracks and figures
for a trained checkpoint (see `run.py` for what it writes)."""

from __future__ import annotations

import argparse
import json

from dogmacache.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain",
        help="attention vs gradient attribution of a checkpoint's predictions: tables, bedGraph/bigWig "
        "tracks, figures (the CDT paper's two windows)",
    )
    p.add_argument(
        "--checkpoint", required=True, help="a <model>_best.pt / _last.pt (or one made by train import-checkpoint)"
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--items", help="comma-separated ENHANCER|GENE pairs, or ENHANCER for all its genes")
    which.add_argument("--split", choices=("train", "validation", "test"), help="draw items from this split")
    p.add_argument("--n", type=int, help="with --split: items to explain (default 100, as the paper)")
    p.add_argument("--top-effects", action="store_true", help="with --split: the n largest |target|, not a random draw")
    p.add_argument(
        "--seed", type=int, default=0, help="the random draw of --split items and of --features' background (default 0)"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--top-k", type=int, default=20, help="positions per ranking (default 20, as the paper)")
    p.add_argument(
        "--features",
        help="BED file of intervals (CTCF peaks, DHS, ...): overlap of the top-k bins vs "
        "a position-matched background (needs pyranges)",
    )
    p.add_argument(
        "--control-features",
        help="with --features: a BED of intervals scored the same way that should not be enriched (decoy motifs, "
        "the --features intervals shuffled with bedtools shuffle): an enrichment there too says the ranking picks "
        "something other than the features",
    )
    p.add_argument(
        "--methods",
        default="grad_x_input",
        help="extra attributions, comma-separated: grad_x_input, integrated_gradients (Captum); "
        "'none' for neither (attention and the gradient norm always run; default grad_x_input)",
    )
    p.add_argument("--ig-steps", type=int, default=32, help="integrated-gradients steps (default 32)")
    p.add_argument(
        "--chrom-sizes",
        help="required: the genome's .fai or a UCSC chrom.sizes, to clip bins at chromosome ends and write bigWig "
        "headers (a DNA cache records only its genome's name and digest)",
    )
    p.add_argument(
        "--dna-table",
        "--windows",
        dest="dna_table",
        help="the recipe's dna_windows.parquet the DNA cache was embedded from, for the bins' genomic coordinates "
        "(default: the run config's [data] dna_table; required when that is empty)",
    )
    p.add_argument(
        "--config",
        help="train config naming the caches and labels: required for imported weights, else it replaces "
        "the checkpoint's run config (fingerprints are still checked)",
    )
    p.add_argument("--bin-bp", type=int, help="bp per DNA bin when the cache does not record it (Enformer 128)")
    p.add_argument("--batch-size", type=int, default=8, help="items per forward/backward pass (default 8)")
    p.add_argument(
        "--item-figures", type=int, default=10, help="items that get their own figures (default the first 10)"
    )
    p.add_argument("--no-item-tracks", action="store_true", help="write only the averaged tracks")
    p.add_argument(
        "--temperature",
        type=float,
        help="display only: sharpen attention in figures as softmax(log w / T) (the paper's Fig. 5A: 0.3); "
        "labelled on the figure, never applied to numbers",
    )
    p.set_defaults(run=_explain, interrupted=_interrupted)


def _interrupted(args: argparse.Namespace) -> str:
    return (
        f"{args.out} keeps the items explained so far (positions.tsv.gz, vce_genes.tsv.gz, tracks/items, "
        "figures/items) but not items.tsv, the mean tracks or summary.json, which are written last; re-run the "
        "same command to explain every item (it starts over)"
    )


def _explain(args: argparse.Namespace) -> int:
    from dogmacache.explain.cdt import ExplainSources
    from dogmacache.explain.run import ExplainConfig, run_explain

    items = tuple(i.strip() for i in (args.items or "").split(",") if i.strip())
    if args.items is not None and not items:
        raise InputError(f"--items {args.items!r} names no item; pass ENHANCER|GENE ids separated by commas")
    if items and (args.n is not None or args.top_effects):
        flag = "--n" if args.n is not None else "--top-effects"
        raise InputError(f"{flag} chooses items from a --split, and --items names them: pass one of the two")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip() and m.strip() != "none")
    config = ExplainConfig(
        sources=ExplainSources(
            checkpoint=args.checkpoint,
            chrom_sizes=args.chrom_sizes,
            dna_table=args.dna_table,
            config=args.config,
            bin_bp=args.bin_bp,
        ),
        out=args.out,
        items=items,
        split=args.split,
        n=100 if args.n is None else args.n,
        top_effects=args.top_effects,
        seed=args.seed,
        top_k=args.top_k,
        features=args.features,
        control_features=args.control_features,
        methods=methods,
        ig_steps=args.ig_steps,
        batch_size=args.batch_size,
        item_figures=args.item_figures,
        item_tracks=not args.no_item_tracks,
        temperature=args.temperature,
    )
    result = run_explain(config)
    shown = {
        k: result[k]
        for k in (
            "n_items",
            "topk_overlap",
            "attention_peak",
            "gradient_peak",
            "attention_uniformity",
            "features",
            "control_features",
            "seconds_per_item",
        )
    }
    print(json.dumps(shown, indent=2))
    print(f"wrote {args.out}: summary.json, items.tsv, topk.tsv, positions.tsv.gz, vce_genes.tsv.gz, tracks/, figures/")
    return 0
