"""The demo pipeline: recipe (bundled demo sources in the real formats) -> tiny models of the real architectures ->
embed caches (DNA windows with Enformer, proteins with ESM-2, gene tokens with scGPT) -> verify -> train CDT and
its baselines -> metrics and figures. Every step calls the function a user's command calls, with its config
dataclass."""

from __future__ import annotations

import time
from pathlib import Path

# (modality, model, recipe table under recipe/cdt, cache name)
CDT_CACHES = (
    ("dna", "enformer", "dna_windows.parquet", "dna-enformer.zarr"),
    ("protein", "esm2", "proteins.parquet", "protein-esm2.zarr"),
    ("gene", "scgpt", "genes.parquet", "gene-scgpt.zarr"),
)


def embed_demo(out: Path, seed: int = 0, progress: bool = True) -> dict[str, Path]:
    """Recipe, tiny models and the three CDT caches; returns the cache paths by modality."""
    from dogmacache.data_recipes.demo import build_demo
    from dogmacache.embed.runner import EmbedConfig, run_embed
    from dogmacache.embed.tiny import make_tiny

    recipe = out / "recipe"
    build_demo(recipe, seed=seed)
    models = make_tiny(out / "models", seed=seed)
    caches = {}
    for modality, model, table, name in CDT_CACHES:
        caches[modality] = out / "cache" / name
        run_embed(EmbedConfig(input=str(recipe / "cdt" / table), modality=modality, model=model,
                              model_path=str(models[model]), out=str(caches[modality]),
                              genome=str(recipe / "genome.fa") if modality == "dna" else None,
                              progress=progress))  # fmt: skip
    return caches


def verify_demo(caches: dict[str, Path]) -> None:
    """Recompute every shard checksum; a failure is a CacheError naming the cache."""
    from dogmacache.cache import open_cache, verify_cache
    from dogmacache.errors import CacheError

    for modality, path in caches.items():
        report = verify_cache(path, progress=False)
        if not report.ok:
            raise CacheError(f"{path} failed verification: {report.problems}")
        cache = open_cache(path)
        print(f"  {modality:<8} {len(cache):>4} items x {cache.item_shape} {cache.manifest.dtype}: "
              f"{report.checked}/{report.n_shards} shard checksums ok")  # fmt: skip


def run_demo(out: Path, seed: int = 0, epochs: int | None = None) -> dict:
    from dogmacache.demo.training import train_demo

    t0 = time.perf_counter()
    print("[1/3] recipe, tiny models, embed")
    caches = embed_demo(out, seed=seed)
    print("[2/3] verify the caches")
    verify_demo(caches)
    print("[3/3] train CDT and its baselines")
    summary = train_demo(out, caches, seed=seed, epochs=epochs)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; outputs in {out}")
    return summary
