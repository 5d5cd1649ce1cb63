"""Peak memory of one training epoch against the size of the DNA cache: the train stage streams DNA rows (one
batch per step plus the prefetch queue), so its peak RSS must not grow with the cache (target: two cache sizes
within 10 %).

Each size runs in a fresh process (peak RSS is a process's lifetime maximum): a synthetic enhancer-gene task
(random Enformer-shaped float16 DNA rows, a small gene table) written as real caches and a labels table, then one
epoch of the CDT task (tiny preset widths, inputs sized by the caches) through `run_training` with
`preload_bytes = 0`.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dogmacache.bench.report import Table, table, verdict

TARGET_RSS_RATIO = 1.10  # larger cache's peak RSS over the smaller one's, at most
N_GENES = 32
PAIRS_PER_ENHANCER = 2
_PROCESS = "import sys; from dogmacache.bench.train_memory import main; sys.exit(main(sys.argv[1:]))"


def write_task(
    root: Path,
    n_enhancers: int,
    item_shape: tuple[int, int],
    seed: int = 0,
    n_genes: int = N_GENES,
    widths: tuple[int, int] = (16, 16),
    pairs_per_enhancer: int = PAIRS_PER_ENHANCER,
) -> dict[str, str]:
    """Caches and labels of a synthetic CDT task with `n_enhancers` DNA rows, `n_genes` genes with RNA and
    protein rows of `widths`, and `pairs_per_enhancer` labelled pairs each; returns the [data] paths."""
    from dogmacache.cache import CacheSpec, CacheWriter, digest_strings

    rng = np.random.default_rng(seed)
    genes = [f"G{i:05d}" for i in range(n_genes)]
    enhancers = [f"e{i:06d}" for i in range(n_enhancers)]
    paths = {}
    for name, ids, shape, modality in (
        ("dna", enhancers, item_shape, "dna"),
        ("rna", genes, (widths[0],), "gene"),
        ("protein", genes, (widths[1],), "protein"),
    ):
        spec = CacheSpec(
            modality=modality,
            model="random",
            model_revision="none",
            layer=-1,
            pooling="none" if name == "dna" else "mean",
            item_shape=shape,
            input_digest=digest_strings(ids),
            shard_items=64,
        )
        path = root / f"{name}.zarr"
        writer = CacheWriter.create(path, spec, ids=ids)
        for shard in writer.pending_shards():
            a, b = writer.manifest.shard_rows(shard)
            writer.write_shard(shard, rng.standard_normal((b - a, *shape), dtype=np.float32).astype(np.float16))
        writer.finalize()
        paths[f"{name}_cache"] = str(path)
    if pairs_per_enhancer > n_genes:
        raise ValueError(f"{pairs_per_enhancer} pairs per enhancer need as many genes; there are {n_genes}")
    # each enhancer paired with distinct genes: a pair twice is refused by training (`task.check_examples`)
    gene_index = np.concatenate(
        [rng.choice(n_genes, pairs_per_enhancer, replace=False) for _ in range(n_enhancers)]
    ).astype(np.int64)
    split = np.where(
        np.arange(n_enhancers) % 10 < 8,
        "train",
        np.where(np.arange(n_enhancers) % 10 == 8, "validation", "test"),
    )
    labels = pd.DataFrame(
        {
            "enhancer": np.repeat(enhancers, pairs_per_enhancer),
            "gene": [genes[i] for i in gene_index],
            "gene_index": gene_index,
            "split": np.repeat(split, pairs_per_enhancer),
            "beta": rng.standard_normal(len(gene_index)).astype(np.float32),
        }
    )
    labels.to_parquet(root / "labels.parquet")
    paths["labels"] = str(root / "labels.parquet")
    return paths


def synthetic_cdt_config(
    paths: dict[str, str], out_dir: Path, preset: str, data: dict[str, Any] | None = None, **train: Any
):
    """The CDT run config of one epoch over `write_task`'s caches (DNA streamed unless `data` says otherwise,
    batches of 8, no baselines), writing into `out_dir`; `train` overrides [train] keys."""
    import dataclasses

    from dogmacache.train.config import OutputConfig
    from dogmacache.train.registry import default_config

    base = default_config("cdt")
    return dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, **paths, preload_bytes=0, **(data or {})),
        model=dataclasses.replace(base.model, preset=preset),
        train=dataclasses.replace(base.train, **{"epochs": 1, "batch_size": 8, "baselines": False, **train}),
        output=OutputConfig(dir=str(out_dir), resume=False, overwrite=True),
    )


def one_epoch(n_enhancers: int, item_shape: tuple[int, int], num_workers: int = 0) -> dict[str, Any]:
    """Write the task, train one epoch streaming the DNA, return this process's peak RSS (MB) and the cache size."""
    from dogmacache.train.run import run_training

    root = Path(tempfile.mkdtemp(prefix="dogmacache-bench-trainmem-"))
    try:
        paths = write_task(root, n_enhancers, item_shape)
        run_training(
            synthetic_cdt_config(paths, root / "run", "tiny", num_workers=num_workers, device="cpu"), progress=False
        )
        cache_mb = n_enhancers * int(np.prod(item_shape)) * 2 / 1e6
        return {
            "enhancers": n_enhancers,
            "cache_mb": cache_mb,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str]) -> int:
    n, length, width, workers = (int(x) for x in argv)
    print(json.dumps(one_epoch(n, (length, width), workers)))
    return 0


def bench_train_memory(
    sizes: tuple[int, int] = (256, 1024), item_shape: tuple[int, int] = (224, 768), num_workers: int = 0
) -> dict[str, Any]:
    """One epoch per cache size, each in a fresh process; the peak RSS ratio of the larger over the smaller."""
    runs = []
    for n in sizes:
        command = [sys.executable, "-c", _PROCESS, str(n), *map(str, item_shape), str(num_workers)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            last = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise RuntimeError(f"the train-memory process for {n} rows failed ({done.returncode}):\n{last}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {
        "item_shape": list(item_shape),
        "num_workers": num_workers,
        "runs": runs,
        "rss_ratio": runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"],
    }


def train_memory_tables(r: dict[str, Any]) -> list[Table]:
    rows = [
        [f"{run['enhancers']:,} DNA rows ({run['cache_mb']:.0f} MB)", run["peak_rss_mb"], "", ""] for run in r["runs"]
    ]
    rows.append(
        [
            "larger / smaller",
            r["rss_ratio"],
            f"≤ {TARGET_RSS_RATIO:g}",
            verdict(r["rss_ratio"], TARGET_RSS_RATIO, higher_is_better=False),
        ]
    )
    return [
        table(
            f"train: peak RSS of one CDT epoch streaming the DNA cache (rows {tuple(r['item_shape'])} float16, "
            f"{r['num_workers']} loader workers), fresh process each",
            ["cache", "peak RSS MB", "target", "met"],
            rows,
        )
    ]
