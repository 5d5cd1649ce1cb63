"""`dogmacache embed ...` (one model over one input table into one cache, or one cache per layer with `--layers`)
and `dogmacache models ...`.

Adapter options come from each options dataclass's `flags` (one flag per field, added once however many
adapters share it); the flags a user gives are turned into the chosen adapter's options dataclass, and a
flag that adapter does not take is refused.
"""

from __future__ import annotations

import argparse

from dogmacache.cache.manifest import COMPRESSIONS, STORAGE_DTYPES
from dogmacache.errors import InputError


def _option_flags() -> dict[str, dict]:
    """field name -> its argparse arguments, over every adapter's options (first definition kept)."""
    from dogmacache.embed.adapters import ADAPTERS

    found: dict[str, dict] = {}
    for cls in ADAPTERS.values():
        for name, spec in cls.options_class.flags.items():
            found.setdefault(name, spec)
    return found


def register(subparsers: argparse._SubParsersAction) -> None:
    from dogmacache.embed.adapters import model_modalities
    from dogmacache.embed.settings import COMPILE_MODES

    p = subparsers.add_parser("embed", help="run one frozen model over an input table into a cache (resumable)")
    p.add_argument("--input", required=True, help="input table from a recipe (parquet or TSV) with an `id` column")
    p.add_argument("--modality", required=True, choices=("dna", "rna", "protein", "gene", "context"))
    p.add_argument("--model", required=True, help=f"adapter: {', '.join(sorted(model_modalities()))}")
    p.add_argument("--model-path", default=None, help="hub id or local directory (default: the adapter's weights)")
    p.add_argument("--revision", default=None, help="hub revision to download (default: main)")
    p.add_argument(
        "--random-init",
        type=int,
        default=None,
        metavar="SEED",
        help="a control: the model's architecture from its folder with every weight drawn at random from SEED, "
        "no weights loaded; recorded in the manifest (default: the pretrained weights)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="cache directory to write; with --layers, a folder holding one cache per layer (OUT/layer_<name>), or a "
        "path with {layer} in it, replaced by each layer's name (caches/dna-enformer-{layer}.zarr)",
    )
    p.add_argument(
        "--layers",
        default=None,
        metavar="L1,L2,...",
        help="embed several layers from one forward pass per batch, each into its own cache (the one --layer L "
        "alone writes; see --out for where). Layer names as for --layer; write --layers=-1,6 for a list that "
        "starts with a minus sign. Not with --workers or --dask-scheduler",
    )
    p.add_argument("--genome", default=None, help="genome FASTA (plain) for --modality dna")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="autocast for the forward pass (auto: bf16 on CUDA, fp32 on CPU)",
    )
    p.add_argument("--dtype", default="float16", choices=STORAGE_DTYPES, help="cache storage dtype")
    p.add_argument("--compression", default="none", choices=COMPRESSIONS)
    p.add_argument("--max-tokens", type=int, default=0, help="token budget per batch (0: the adapter's default)")
    p.add_argument("--max-batch", type=int, default=64, help="most items per batch (default 64)")
    p.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="input-preparation processes (default: from the cores this process may use, its CPU affinity and cgroup "
        "quota, less those other processes keep busy: on --device cpu 0 up to 2 cores, 1 for 3-8, 2 above; on a GPU "
        "the cores the threads leave, at most 4; none for ESM-2, Nucleotide Transformer and scGPT gene tokens, whose "
        "inputs are cheap)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: OMP_NUM_THREADS when set; resuming an unfinished cache on the CPU, the "
        "count it was begun with, where that fits the cores; else on --device cpu the free cores the input workers "
        "leave, giving up cores other processes kept busy while the model loaded (at least 0.1 s), and on a GPU 1 or "
        "2, never more than torch's own count); recorded in the manifest as torch_threads",
    )
    p.add_argument("--shard-items", type=int, default=None, help="items per shard (default: ~1 GiB shards)")
    p.add_argument(
        "--max-positions",
        type=int,
        default=None,
        metavar="K",
        help="average-pool each item's positions to at most K (adaptive pooling over its real tokens), so a "
        "per-position cache fits a disk budget; recorded in the manifest (default: keep every position)",
    )
    p.add_argument(
        "--reuse",
        action="append",
        default=[],
        metavar="DIR_OR_URL",
        help="copy every row an earlier complete cache holds for the same inputs (by item digest) and the same "
        "model and number-changing settings, instead of embedding it; a cache or a folder of caches, local or "
        "hf://datasets/...; repeatable",
    )
    p.add_argument(
        "--fidelity-items",
        type=int,
        default=16,
        metavar="N",
        help="items embedded again in float32 to record the cache's deviation from full precision (default 16; 0: "
        "none)",
    )
    p.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="off",
        help="run the forward through torch.compile (enformer: every batch has one shape, so it compiles once; "
        "reduce-overhead replays it as a CUDA graph); recorded in the manifest, like the thread count, as a setting "
        "that moves values by float rounding at most (default off)",
    )
    p.add_argument("--workers", type=int, default=0, help="fan shards out over a local dask cluster of N workers")
    p.add_argument("--dask-scheduler", default=None, help="fan shards out over an existing dask scheduler")
    p.add_argument("--overwrite", action="store_true", help="replace whatever is at --out")
    p.add_argument("--no-progress", action="store_true")
    group = p.add_argument_group("adapter options (each model takes some; default: the model's)")
    for name, spec in _option_flags().items():  # unset flags stay out of the namespace: the options' defaults hold
        group.add_argument(
            *spec["flags"], dest=name, default=argparse.SUPPRESS, **{k: v for k, v in spec.items() if k != "flags"}
        )
    p.set_defaults(run=_embed)

    p = subparsers.add_parser("models", help="list adapters; write tiny models of every supported architecture")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    q = sub.add_parser("list", help="the adapters and the modalities they embed")
    q.set_defaults(run=_list)
    q = sub.add_parser("make-tiny", help="small random models in their real on-disk layouts (tests, offline demo)")
    q.add_argument("dir")
    q.add_argument(
        "--genes",
        default=None,
        help="comma-separated gene symbols for the tiny scGPT vocabulary (default: the demo's DEMO01..DEMO36)",
    )
    q.set_defaults(run=_make_tiny)


def options_from_args(args: argparse.Namespace):
    """The chosen adapter's options dataclass from the adapter flags given; a flag it does not take is refused."""
    from dogmacache.embed.adapters import get_adapter

    cls = get_adapter(args.model, args.modality).options_class
    flags = _option_flags()
    given = {name: getattr(args, name) for name in flags if hasattr(args, name)}
    takes = cls.flags
    refused = [flags[name]["flags"][0] for name in given if name not in takes]
    if refused:
        accepted = ", ".join(spec["flags"][0] for spec in takes.values()) or "none"
        raise InputError(
            f"{refused[0]} does not apply to --model {args.model} --modality {args.modality} (its options: "
            f"{accepted}); drop it"
        )
    return cls.from_dict(given)


def config_from_args(args: argparse.Namespace):
    from dogmacache.embed.runner import EmbedConfig

    return EmbedConfig(
        input=args.input,
        modality=args.modality,
        model=args.model,
        out=args.out,
        model_path=args.model_path,
        revision=args.revision,
        options=options_from_args(args),
        genome=args.genome,
        device=args.device,
        precision=args.precision,
        dtype=args.dtype,
        compression=args.compression,
        max_tokens=args.max_tokens,
        max_batch=args.max_batch,
        num_workers=args.num_workers,
        torch_threads=args.threads,
        shard_items=args.shard_items,
        overwrite=args.overwrite,
        max_positions=args.max_positions,
        random_init=args.random_init,
        reuse=tuple(args.reuse),
        fidelity_items=args.fidelity_items,
        compile=args.compile,
        progress=not args.no_progress,
    )


def _embed(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # the sizes are checked here (`EmbedConfig.__post_init__`)
    if (args.workers or args.dask_scheduler) and config.reuse:
        raise InputError("--reuse runs in one process: drop --workers/--dask-scheduler, or drop --reuse")
    if args.layers is not None:
        from dogmacache.embed.layers import parse_layers, run_embed_layers

        if hasattr(args, "layer"):
            raise InputError(f"--layer {args.layer} and --layers {args.layers} both pick layers; give one of them")
        if args.workers or args.dask_scheduler:
            raise InputError("--layers runs in one process; drop --workers / --dask-scheduler, or embed one --layer")
        if config.reuse:
            raise InputError("--layers does not take --reuse yet; embed each layer with --layer L --reuse ...")
        run_embed_layers(config, parse_layers(args.layers))
    elif args.workers or args.dask_scheduler:
        from dogmacache.embed.distributed import run_embed_dask

        run_embed_dask(config, n_workers=args.workers, scheduler=args.dask_scheduler)
    else:
        from dogmacache.embed.runner import run_embed

        run_embed(config)
    return 0


def _list(args: argparse.Namespace) -> int:
    from dogmacache.embed.adapters import model_modalities

    for name, modalities in sorted(model_modalities().items()):
        print(f"{name:<24} {', '.join(modalities)}")
    return 0


def _make_tiny(args: argparse.Namespace) -> int:
    from dogmacache.embed.tiny import DEMO_GENES, make_tiny

    genes = [g.strip() for g in args.genes.split(",") if g.strip()] if args.genes else DEMO_GENES
    for name, path in make_tiny(args.dir, genes).items():
        print(f"{name:<24} {path}")
    return 0
