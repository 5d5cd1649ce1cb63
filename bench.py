"""`dogmacache bench`: measured throughput of each stage (`make bench`). Numbers go to stdout and JSON."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from dogmacache.cache.manifest import package_versions


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="measure cache (and later embed/train) throughput")
    p.add_argument("--out", default="out/bench", help="folder for the JSON results (default out/bench)")
    p.add_argument("--only", choices=("cache",), default=None, help="run one benchmark")
    p.add_argument("--items", type=int, default=64, help="cache benchmark: items (default 64)")
    p.add_argument("--item-shape", default="896,3072", help="cache benchmark: item shape (default Enformer's 896,3072)")
    p.add_argument("--compression", default="none", choices=("none", "zstd", "bitround"))
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dogmacache.cache.bench import bench_cache

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = {"machine": platform.machine(), "processor": platform.processor(), "versions": package_versions()}
    shape = tuple(int(s) for s in args.item_shape.split(","))
    results = {"cache": bench_cache(n_items=args.items, item_shape=shape, compression=args.compression)}
    for name, numbers in results.items():
        print(f"[{name}]")
        for key, value in numbers.items():
            print(f"  {key:<36} {value}")
        (out / f"{name}.json").write_text(json.dumps({**numbers, **machine}, indent=2))
    print(f"results in {out}")
    return 0
