"""`dogmacache embed ...` (one model over one input table into one cache) and `dogmacache models ...`."""

from __future__ import annotations

import argparse

from dogmacache.cache.manifest import COMPRESSIONS, STORAGE_DTYPES


def register(subparsers: argparse._SubParsersAction) -> None:
    from dogmacache.embed.adapters import ADAPTERS, get_adapter

    get_adapter("enformer")  # imports every adapter module, so each can add its options
    p = subparsers.add_parser("embed", help="run one frozen model over an input table into a cache (resumable)")
    p.add_argument("--input", required=True, help="input table from a recipe (parquet or TSV) with an `id` column")
    p.add_argument("--modality", required=True, choices=("dna", "rna", "protein", "gene", "context"))
    p.add_argument("--model", required=True, help=f"adapter: {', '.join(sorted(ADAPTERS))}")
    p.add_argument("--model-path", default=None, help="hub id or local directory (default: the adapter's weights)")
    p.add_argument("--revision", default=None, help="hub revision to download (default: main)")
    p.add_argument("--out", required=True, help="cache directory to write")
    p.add_argument("--genome", default=None, help="genome FASTA (plain) for --modality dna")
    p.add_argument("--window-bp", type=int, default=None,
                   help="DNA window length (enformer default: 196,608 for 896-bin models, else 256 x its bins)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="autocast for the forward pass (auto: bf16 on CUDA, fp32 on CPU)")  # fmt: skip
    p.add_argument("--dtype", default="float16", choices=STORAGE_DTYPES, help="cache storage dtype")
    p.add_argument("--compression", default="none", choices=COMPRESSIONS)
    p.add_argument("--max-tokens", type=int, default=0, help="token budget per batch (0: the adapter's default)")
    p.add_argument("--max-batch", type=int, default=64, help="most items per batch (default 64)")
    p.add_argument("--num-workers", type=int, default=2, help="input-preparation processes (default 2)")
    p.add_argument("--shard-items", type=int, default=None, help="items per shard (default: ~1 GiB shards)")
    p.add_argument("--workers", type=int, default=0, help="fan shards out over a local dask cluster of N workers")
    p.add_argument("--dask-scheduler", default=None, help="fan shards out over an existing dask scheduler")
    p.add_argument("--overwrite", action="store_true", help="replace whatever is at --out")
    p.add_argument("--no-progress", action="store_true")
    added = set()
    for cls in ADAPTERS.values():  # adapters of one family share their options: add each set once
        if cls.add_arguments.__func__ not in added:
            added.add(cls.add_arguments.__func__)
            cls.add_arguments(p)
    p.set_defaults(run=_embed)

    p = subparsers.add_parser("models", help="list adapters; write tiny models of every supported architecture")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    q = sub.add_parser("list", help="the adapters and the modalities they embed")
    q.set_defaults(run=_list)
    q = sub.add_parser("make-tiny", help="small random models in their real on-disk layouts (tests, offline demo)")
    q.add_argument("dir")
    q.set_defaults(run=_make_tiny)


def config_from_args(args: argparse.Namespace):
    from dogmacache.embed.runner import EmbedConfig

    return EmbedConfig(
        input=args.input, modality=args.modality, model=args.model, out=args.out, model_path=args.model_path,
        genome=args.genome, device=args.device, precision=args.precision, dtype=args.dtype,
        compression=args.compression, max_tokens=args.max_tokens, max_batch=args.max_batch,
        num_workers=args.num_workers, shard_items=args.shard_items, overwrite=args.overwrite,
        progress=not args.no_progress,
    )  # fmt: skip


def _embed(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.workers or args.dask_scheduler:
        from dogmacache.embed.distributed import run_embed_dask

        run_embed_dask(config, args, n_workers=args.workers, scheduler=args.dask_scheduler)
    else:
        from dogmacache.embed.runner import run_embed

        run_embed(config, args)
    return 0


def _list(args: argparse.Namespace) -> int:
    from dogmacache.embed.adapters import ADAPTERS

    for name, cls in sorted(ADAPTERS.items()):
        print(f"{name:<24} {', '.join(cls.modalities)}")
    return 0


def _make_tiny(args: argparse.Namespace) -> int:
    from dogmacache.embed.tiny import make_tiny

    for name, path in make_tiny(args.dir).items():
        print(f"{name:<24} {path}")
    return 0
