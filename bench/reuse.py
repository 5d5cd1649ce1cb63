"""The reuse section of `dogmacache bench`: a table that overlaps an existing cache by 90 % embedded with
`--reuse` against the same table embedded in full, on the demo's tiny models, both through `run_embed`.

For each model at n items and at 8 n (a table the size of a recipe's; Enformer's in 16 shards): 2 n distinct
items are made from the demo recipe (DNA: windows centred at random positions of the demo genome; proteins: the
demo proteins with one residue changed per copy), the "old" table is items 0..n-1 and the "new" one is 90 % of those
(shuffled, under other ids) plus 10 % items never embedded. The old table is embedded once (untimed); then the
new one in full and with `reuse=(old,)`, alternated three times, each timed by the runner's own clock (after the
model load, which is the same for both, until the cache is finalised: the sources' digest indexes, the digest
pass, the copies, the forward of the rest, the shard writes and the 16-item fidelity receipt all count; the
sources' manifests are read before it, with the model load, so that a --reuse naming no cache is refused before
the output exists: about 2 ms here); the medians are
reported. The first pair of caches is compared array for array (byte identity; else how many rows differ and by
how much)."""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dogmacache.bench.report import Table, table, verdict
from dogmacache.bench.timing import demo_config, timed_run_embed
from dogmacache.embed.runner import EmbedConfig

OVERLAP = 0.9
TARGET_SPEEDUP = 8.0  # rate with --reuse over the full run's, at 90 % overlap
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


def dna_items(recipe: Path, n: int, rng: np.random.Generator) -> pd.DataFrame:
    from dogmacache.embed.genome import Genome

    genome = Genome(recipe / "genome.fa")
    chroms = genome.chromosomes
    lengths = np.array([genome.length(c) for c in chroms])
    picked = rng.choice(len(chroms), size=n, p=lengths / lengths.sum())
    centers = [int(rng.integers(1, lengths[c] + 1)) for c in picked]
    return pd.DataFrame({"chrom": [chroms[c] for c in picked], "center": centers, "strand": "+"})


def protein_items(recipe: Path, n: int, rng: np.random.Generator) -> pd.DataFrame:
    base = pd.read_parquet(recipe / "cdt" / "proteins.parquet")["sequence"].astype(str).tolist()
    seen, out = set(), []
    while len(out) < n:
        seq = list(base[len(out) % len(base)])
        seq[int(rng.integers(len(seq)))] = AMINO_ACIDS[int(rng.integers(20))]
        text = "".join(seq)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return pd.DataFrame({"sequence": out})


# (label, model, modality, items maker, table sizes as multiples of n_items, shards: None for the default, which
# puts these tables in one). Each model at n (1,024: a small table, where a run's fixed cost, ~20 ms of opening the
# sources, shard writes, the receipt and the manifest, and Enformer's last filled-out batch weigh most) and at 8 n
# (a recipe's table: GTEx genes or a CRISPRi screen's enhancers are thousands to tens of thousands of windows, the
# human proteome ~20,000 proteins). Enformer's large table in 16 shards (of 512 windows: a full-size cache's ~1 GiB
# shards hold ~190), so that the new windows, a few per shard, share batches across shard ends and every source
# shard is read for many shards filled
CASES = (
    ("Enformer, DNA windows", "enformer", "dna", dna_items, (1,), None),
    ("Enformer, DNA windows", "enformer", "dna", dna_items, (8,), 16),
    ("ESM-2, proteins", "esm2", "protein", protein_items, (1, 8), None),
)


def _compare(a: str, b: str) -> dict[str, Any]:
    """Byte identity of two caches' arrays; where they differ, how many rows and by how much; the first's shards."""
    from dogmacache.cache import open_cache

    x, y = open_cache(a), open_cache(b)
    left, right = x[:], y[:]
    differ = (left.view(np.uint8) != right.view(np.uint8)).reshape(len(left), -1).any(axis=1)
    gap = np.abs(left.astype(np.float32) - right.astype(np.float32)).max() if differ.any() else 0.0
    return {
        "shards": x.manifest.n_shards,
        "identical": bool(x.manifest.shards == y.manifest.shards and not differ.any()),
        "rows_differing": int(differ.sum()),
        "max_abs_difference": float(gap),
    }


def _case(
    root, models, label, model, modality, make, n_items, num_workers, rng, seed, repeats, shard_items=None
) -> dict[str, Any]:
    """One table of `n_items` embedded in full and with --reuse, `repeats` times each, alternated."""
    name = f"{model}{n_items}s{shard_items or 0}"
    items = make(root / "recipe", 2 * n_items, rng)
    old = items.iloc[:n_items].assign(id=[f"old{i}" for i in range(n_items)])
    n_new = int(round(n_items * (1 - OVERLAP)))
    kept = items.iloc[n_new:n_items]
    new = pd.concat([kept, items.iloc[n_items : n_items + n_new]]).sample(frac=1.0, random_state=seed)
    new = new.assign(id=[f"new{i}" for i in range(len(new))])
    for part, frame in (("old", old), ("new", new), ("warmup", new.iloc[:4])):
        frame.to_parquet(root / f"{name}_{part}.parquet")

    def config(part: str, out: str, **kwargs) -> EmbedConfig:
        table = root / f"{name}_{part}.parquet"
        return demo_config(
            root, models, model, modality, table, root / out, num_workers=num_workers, shard_items=shard_items, **kwargs
        )

    timed_run_embed(config("warmup", f"{name}_warmup"))
    # the old cache at the default threads (the plan's, from this machine's load); the full and --reuse runs at the
    # same count, named: a --reuse run takes its source's count, and a full run left to the plan could take
    # another under a passing load (1 thread against 2 is ~1.5x on 2 cores, which would move the ratio)
    threads = timed_run_embed(config("old", f"{name}_old"))["torch_threads"]
    full_rates, reuse_rates, counts = [], [], set()
    for k in range(repeats):  # alternated, so that a busy moment of the machine hits both alike
        full = timed_run_embed(config("new", f"{name}_full{k}", torch_threads=threads))
        reuse = config("new", f"{name}_reused{k}", reuse=(str(root / f"{name}_old"),), torch_threads=threads)
        reused = timed_run_embed(reuse)
        full_rates.append(full["items_per_s"])
        reuse_rates.append(reused["items_per_s"])
        counts |= {full["torch_threads"], reused["torch_threads"]}
    compared = _compare(str(root / f"{name}_full0"), str(root / f"{name}_reused0"))
    for k in range(repeats):
        for out in (f"{name}_full{k}", f"{name}_reused{k}"):
            shutil.rmtree(root / out, ignore_errors=True)
    shutil.rmtree(root / f"{name}_old", ignore_errors=True)
    full, reused = float(np.median(full_rates)), float(np.median(reuse_rates))
    return {
        "label": label,
        "items": len(new),
        "overlap": len(kept) / len(new),
        "full_items_per_s": full,
        "reuse_items_per_s": reused,
        "speedup": reused / full,
        "full_runs": full_rates,
        "reuse_runs": reuse_rates,
        "torch_threads": sorted(counts),  # one count: every run alike
        **compared,
    }


def bench_reuse(
    n_items: int = 1024, num_workers: int | None = None, workdir: str | None = None, seed: int = 0, repeats: int = 3
) -> dict:
    """Full vs `--reuse` rates of a 90 %-overlapping table for each case (CPU, the demo's tiny models): the
    median of `repeats` runs of each, alternated."""
    from dogmacache.data_recipes.demo import build_demo
    from dogmacache.embed.tiny import make_tiny

    root = Path(tempfile.mkdtemp(prefix="dogmacache-bench-reuse-", dir=workdir))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            build_demo(root / "recipe")
            models = make_tiny(root / "models")
        rows = []
        for k, (label, model, modality, make, scales, shards) in enumerate(CASES):
            for scale in scales:
                n = n_items * scale
                shard_items = None if shards is None else max(1, n // shards)
                rng = np.random.default_rng([seed, k, scale])  # each table its own draw: a new case moves no other
                rows.append(
                    _case(root, models, label, model, modality, make, n, num_workers, rng, seed, repeats, shard_items)
                )
        return {"n_items": n_items, "num_workers": num_workers, "repeats": repeats, "cases": rows}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def reuse_tables(r: dict[str, Any]) -> list[Table]:
    rows = [
        [
            c["label"] + (f", {c['shards']} shards" if c["shards"] > 1 else ""),  # as made, not as asked
            c["items"],
            f"{c['overlap']:.0%}",
            c["full_items_per_s"],
            c["reuse_items_per_s"],
            c["speedup"],
            "yes" if c["identical"] else f"no: {c['rows_differing']} rows, max |diff| {c['max_abs_difference']:.1e}",
            c["torch_threads"][0] if len(c["torch_threads"]) == 1 else "differ",
            verdict(c["speedup"], TARGET_SPEEDUP)
            if len(c["torch_threads"]) == 1
            else f"n/a (threads {c['torch_threads']})",
        ]
        for c in r["cases"]
    ]
    return [
        table(
            f"reuse: a table overlapping an existing cache by {OVERLAP:.0%}, embedded in full and with --reuse "
            "(tiny demo models on CPU, `dogmacache embed`'s default input workers; the threads its plan gave the old "
            "cache, named for the full and --reuse runs alike)",
            [
                "model, input",
                "items",
                "overlap",
                "full items/s",
                "--reuse items/s",
                "speed-up",
                "byte-identical",
                "threads",
                f">= {TARGET_SPEEDUP:g}x",
            ],
            rows,
            [
                "rates on the runner's clock (after the model load, until the cache is final: the sources' digest "
                "indexes, the digest pass, copies, the rest's forward, shard writes and the 16-item float32 "
                "fidelity receipt; the sources' manifests are read before it, with the model load); medians of "
                f"{r['repeats']} runs of each, alternated",
                "every batch has one fixed shape (windows: full batches; proteins: one length per 32-token "
                "bucket), so the rows embedded anew equal a full embed's bit for bit",
            ],
        )
    ]
