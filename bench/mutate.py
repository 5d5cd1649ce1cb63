"""The mutate section of `dogmacache bench`: a mutation scan through `mutate.Scanner` on CPU with the tiny models.

Setup: a random genome, `n_genes` TSS windows 1,500 bp apart (tiny Enformer windows are 2,048 bp, so neighbours
overlap and an edit can fall in two windows), their DNA cache embedded by `run_embed`, a random Bio-DTA adapter.
Timed: `n_edits` random SNVs, each its own variant, through `Scanner.shifts` (edited windows re-embedded,
reference rows read from the cache, both adapted). Reported: edits/s, windows re-embedded vs reference rows
reused, and for scale the cost of re-embedding every window per edit, from the measured embed rate of the
same cache (derived, not timed per edit).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from dogmacache.bench.report import Table, table

SPACING_BP = 1500  # between neighbouring TSS


def bench_mutate(n_genes: int = 64, n_edits: int = 64, seed: int = 0) -> dict[str, Any]:
    from dogmacache.cache import open_cache
    from dogmacache.embed.adapters.enformer import write_tiny_enformer
    from dogmacache.embed.runner import EmbedConfig, run_embed
    from dogmacache.mutate.edits import Edit
    from dogmacache.mutate.scan import open_scanner
    from dogmacache.train.tasks.biodta import TokenAdapter

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="bench-mutate-") as tmp:
        root = Path(tmp)
        length = SPACING_BP * (n_genes + 1)
        sequence = "".join(rng.choice(list("ACGT"), length))
        (root / "genome.fa").write_text(
            ">chr1\n" + "\n".join(sequence[i : i + 60] for i in range(0, length, 60)) + "\n"
        )
        centers = SPACING_BP * np.arange(1, n_genes + 1)
        pd.DataFrame(
            {"id": [f"G{i:04d}" for i in range(n_genes)], "chrom": "chr1", "center": centers, "strand": "+"}
        ).to_parquet(root / "windows.parquet")
        model = write_tiny_enformer(root / "enformer", seed)
        embedded = run_embed(
            EmbedConfig(
                input=str(root / "windows.parquet"),
                modality="dna",
                model="enformer",
                out=str(root / "dna.zarr"),
                model_path=str(model),
                genome=str(root / "genome.fa"),
                device="cpu",
                num_workers=0,
                progress=False,
            )
        )
        dna = open_cache(root / "dna.zarr")
        torch.manual_seed(seed)
        adapter = TokenAdapter(dna.item_shape[-1], 512, hidden=512, pooling="attention", dropout=0.0)  # scGPT width
        scanner = open_scanner(dna, root / "windows.parquet", root / "genome.fa", model, adapter, "cpu")
        positions = rng.integers(centers[0] - 500, centers[-1] + 500, n_edits)  # 0-based, inside the windows
        edits = []
        for p in positions:
            ref = sequence[p]
            alt = "ACGT"[("ACGT".index(ref) + 1) % 4]
            edits.append(Edit("chr1", int(p), ref, alt, f"chr1:{p + 1} {ref}>{alt}"))
        scanner.shifts([edits[:2]])  # warm-up: first forward pays one-off costs
        start = time.perf_counter()
        shifts, _, counts = scanner.shifts([[e] for e in edits])
        seconds = time.perf_counter() - start
    per_window = 1.0 / embedded["items_per_s"]
    return {
        "n_genes": n_genes,
        "n_edits": n_edits,
        "window_bp": scanner.window_bp,
        "seconds": round(seconds, 3),
        "edits_per_s": round(n_edits / seconds, 2),
        **counts,
        "windows_per_edit": round(counts["windows_reembedded"] / n_edits, 2),
        "cache_windows_per_s": embedded["items_per_s"],
        "reembed_all_edits_per_s": round(1.0 / (n_genes * per_window), 3),
        "n_shift_rows": len(shifts),
    }


def mutate_tables(r: dict[str, Any]) -> list[Table]:
    rows = [
        ["edits through Scanner.shifts (each SNV its own variant)", r["edits_per_s"], "edits/s"],
        ["windows re-embedded (one forward each)", r["windows_reembedded"], "windows"],
        ["reference rows reused from the cache", r["rows_reused"], "rows"],
        ["windows re-embedded per edit", r["windows_per_edit"], "windows"],
        ["re-embedding all windows per edit (from the cache's embed rate)", r["reembed_all_edits_per_s"], "edits/s"],
    ]
    return [
        table(
            f"mutate: {r['n_edits']} SNVs over {r['n_genes']} tiny-Enformer windows of {r['window_bp']} bp, "
            "CPU (no target)",
            ["measurement", "measured", "unit"],
            rows,
        )
    ]
