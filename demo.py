"""`dogmacache demo`: the whole pipeline offline on bundled synthetic data (`make demo`).

recipe (bundled demo sources in the real formats) -> tiny models of the real architectures -> embed caches
(DNA windows with Enformer, proteins with ESM-2, gene tokens with scGPT) -> verify -> train CDT and its
baselines -> metrics and figures. Every step calls the same code a user runs on real data.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="offline end-to-end run on synthetic data (what `make demo` runs)")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="CDT training epochs (default: the demo config's)")
    p.set_defaults(run=run)


def embed_demo(out: Path, seed: int = 0, progress: bool = True) -> dict[str, Path]:
    """Recipe, tiny models and the three CDT caches; returns the cache paths by modality."""
    from dogmacache.cli import main as cli
    from dogmacache.data_recipes.demo import build_demo
    from dogmacache.embed.tiny import make_tiny

    recipe = out / "recipe"
    build_demo(recipe, seed=seed)
    models = make_tiny(out / "models", seed=seed)
    caches = {"dna": out / "cache" / "dna-enformer.zarr", "protein": out / "cache" / "protein-esm2.zarr",
              "gene": out / "cache" / "gene-scgpt.zarr"}  # fmt: skip
    jobs = {
        "dna": ["--input", str(recipe / "cdt" / "dna_windows.parquet"), "--model", "enformer",
                "--model-path", str(models["enformer"]), "--genome", str(recipe / "genome.fa")],
        "protein": ["--input", str(recipe / "cdt" / "proteins.parquet"), "--model", "esm2",
                    "--model-path", str(models["esm2"])],
        "gene": ["--input", str(recipe / "cdt" / "genes.parquet"), "--model", "scgpt",
                 "--model-path", str(models["scgpt"])],
    }  # fmt: skip
    for modality, args in jobs.items():
        argv = ["embed", "--modality", modality, *args, "--out", str(caches[modality])]
        if cli(argv + ([] if progress else ["--no-progress"])) != 0:
            raise RuntimeError(f"embedding {modality} failed")
    return caches


def run(args: argparse.Namespace) -> int:
    from dogmacache.cache import open_cache, verify_cache
    from dogmacache.errors import CacheError

    out = Path(args.out)
    t0 = time.perf_counter()
    print("[1/3] recipe, tiny models, embed")
    caches = embed_demo(out, seed=args.seed)
    print("[2/3] verify the caches")
    for modality, path in caches.items():
        report = verify_cache(path, progress=False)
        if not report.ok:
            raise CacheError(f"{path} failed verification: {report.problems}")
        cache = open_cache(path)
        print(f"  {modality:<8} {len(cache):>4} items x {cache.item_shape} {cache.manifest.dtype}: "
              f"{report.checked}/{report.n_shards} shard checksums ok")  # fmt: skip
    print("[3/3] train CDT and its baselines")
    from dogmacache.train.demo import train_demo

    train_demo(out, caches, seed=args.seed, epochs=args.epochs)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; outputs in {out}")
    return 0

