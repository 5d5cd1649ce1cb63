"""`dogmacache cache ...`: info, verify, import-h5, publish, pull."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from dogmacache.cache.manifest import COMPRESSIONS, MODALITIES, STORAGE_DTYPES, describe_fidelity, describe_reused


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("cache", help="inspect, verify, import, publish and pull caches")
    sub = parser.add_subparsers(dest="cache_command", metavar="ACTION", required=True)

    p = sub.add_parser("info", help="manifest summary and size on disk")
    p.add_argument("url", help="cache directory or fsspec URL (file://, http(s)://, hf://datasets/...)")
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    p.set_defaults(run=_info)

    p = sub.add_parser("verify", help="recompute every shard checksum; non-zero exit names the broken shard")
    p.add_argument("url")
    p.set_defaults(run=_verify)

    p = sub.add_parser("import-h5", help="stream an HDF5 embedding file into a cache (bounded memory, resumable)")
    p.add_argument("src", help="HDF5 file")
    p.add_argument("dest", help="cache directory to write")
    p.add_argument("--dataset", required=True, help="HDF5 dataset with the embeddings, (N, L, D) or (N, D)")
    p.add_argument(
        "--ids", default=None, help="HDF5 dataset of row ids (default: <chrom>:<center> from chroms/centers)"
    )
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--model", required=True, help="model id the embeddings came from")
    p.add_argument("--model-revision", default="unknown", help="weights revision or checksum, if known")
    p.add_argument("--layer", default="-1", help="layer the embeddings were taken from (default -1, the last)")
    p.add_argument("--pooling", default=None, help="how (N, D) embeddings were pooled; 'none' for (N, L, D)")
    p.add_argument("--dtype", default="float16", choices=STORAGE_DTYPES, help="storage dtype (default float16)")
    p.add_argument("--compression", default="none", choices=COMPRESSIONS, help="default none (fp16 is the 2x)")
    p.add_argument("--shard-items", type=int, default=None, help="items per shard file (default: ~1 GiB shards)")
    p.add_argument(
        "--dedupe",
        default=None,
        choices=("keep-first", "suffix"),
        help="when built or given ids repeat: keep-first drops the later rows of an id, suffix renames "
        "them <id>#2, <id>#3, ... (default: refuse); the rows affected are printed and recorded",
    )
    p.add_argument("--overwrite", action="store_true", help="replace whatever is at DEST")
    p.set_defaults(run=_import_h5)

    p = sub.add_parser("publish", help="upload a cache (or folder of caches) to a Hugging Face dataset repo")
    p.add_argument("folder")
    p.add_argument("--repo", required=True, help="OWNER/NAME of the dataset repository")
    p.add_argument("--license", default="other", help="licence id for the card (follow the model's and the data's)")
    p.add_argument("--private", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print the files and the card, send nothing")
    p.set_defaults(run=_publish)

    p = sub.add_parser("pull", help="download a dataset repo of caches and verify them")
    p.add_argument("repo", help="OWNER/NAME")
    p.add_argument("dest", help="local directory")
    p.add_argument("--revision", default=None)
    p.set_defaults(run=_pull)


def _layer(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def _info(args: argparse.Namespace) -> int:
    from dogmacache.cache.reader import open_cache
    from dogmacache.cache.verify import size_on_disk

    cache = open_cache(args.url, allow_partial=True)
    m = cache.manifest
    if args.json:
        print(json.dumps(m.to_dict(), indent=2, sort_keys=True))
        return 0
    n_bytes, n_files = size_on_disk(args.url)
    done = int(cache.done_shards().sum())
    rows = [
        ("cache", args.url),
        ("modality / model", f"{m.modality} / {m.model} (revision {m.model_revision})"),
        ("layer / pooling", f"{m.layer} / {m.pooling}"),
        ("items x shape", f"{m.n_items:,} x {tuple(m.item_shape)} {m.dtype}, compression {m.compression}"),
        *(
            [
                (
                    "truncated",
                    f"{int(np.count_nonzero(cache.read_extra('n_truncated'))):,} items cut to the model's "
                    "token limit (n_truncated)",
                )
            ]
            if "n_truncated" in m.extra_arrays and m.complete
            else []
        ),
        (
            "shards",
            f"{done}/{m.n_shards} written by the manifest, {m.shard_items} items each (`cache verify` reads the files)",
        ),
        ("complete", str(m.complete)),
        ("on disk", f"{n_bytes / 2**20:,.1f} MiB in {n_files} files"),
        ("input digest", m.input_digest),
        ("fidelity", describe_fidelity(m.fidelity, m.complete)),
        *[("reused rows", line) for line in describe_reused(m.reused) or ["none"]],
        ("created", f"{m.created_at} by " + ", ".join(f"{k} {v}" for k, v in sorted(m.created_by.items()))),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from dogmacache.cache.verify import verify_cache

    report = verify_cache(args.url)
    for problem in report.problems:
        print(f"BROKEN {problem}", file=sys.stderr)
    if report.ok:
        print(f"ok: {report.checked}/{report.n_shards} shards match their checksums ({args.url})")
        return 0
    print(f"FAILED: {len(report.problems)} problem(s) in {args.url}", file=sys.stderr)
    return 1


def _import_h5(args: argparse.Namespace) -> int:
    from dogmacache.cache.h5import import dedupe_summary, import_h5

    manifest, written = import_h5(
        args.src,
        args.dest,
        dataset=args.dataset,
        ids=args.ids,
        modality=args.modality,
        model=args.model,
        model_revision=args.model_revision,
        layer=_layer(args.layer),
        pooling=args.pooling,
        dtype=args.dtype,
        compression=args.compression,
        shard_items=args.shard_items,
        dedupe=args.dedupe,
        overwrite=args.overwrite,
    )
    done = manifest.config.get("dedupe")
    if done:
        print(dedupe_summary(done["mode"], done["rows"], done["repeated_ids"]))
    if written == 0:
        print(f"{args.dest} is already complete ({manifest.n_items:,} items); nothing to do")
    else:
        print(f"wrote {written} of {manifest.n_shards} shards; {args.dest} complete with {manifest.n_items:,} items")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from dogmacache.cache.hub import CARD_NAME, plan_publish, portable, publish

    caches, card, n_files, n_bytes = plan_publish(args.folder, args.repo, args.license)
    if args.dry_run:
        print(f"would create dataset repo {args.repo} and upload {n_files} files, {n_bytes / 2**20:,.1f} MiB:")
        for c in caches:
            print(f"  {c.relpath}: {c.manifest.modality}/{portable(c.manifest).model}, {c.manifest.n_items:,} items")
        print(f"--- {CARD_NAME} ---")
        print(card)
        print(
            "(a dry run is offline: what the repo already holds is not read; the publish itself refuses a repo "
            "holding a cache this folder lacks)"
        )
        return 0
    url = publish(args.folder, args.repo, license_id=args.license, private=args.private)
    print(f"published {len(caches)} cache(s) to {url}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    from dogmacache.cache.hub import pull

    for path in pull(args.repo, args.dest, revision=args.revision):
        print(f"verified {path}")
    return 0
