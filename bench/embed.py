"""The embed section of `dogmacache bench`, measured through the runner's own code, with its targets and tables.

- `bench_embed_tiny`: items/s of every adapter's tiny model (`embed/tiny.py`) on the demo recipe's inputs,
  each a `run_embed` into a temporary cache (DataLoader workers, token-budget batches, shard writes), timed
  by the runner itself from after the model load to the finished cache; a small untimed run first.
- `bench_enformer_device`, `bench_enformer_full_cpu`: a random Enformer on one device and the full-size one on
  CPU, through the runner (`bench/enformer.py`).
- `bench_embed`: the section as `dogmacache bench` runs it; `embed_tables` what it prints, the GPU numbers
  against the targets below.

"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from dogmacache.bench.enformer import (
    CPU_FULL_SECONDS_PER_WINDOW,
    ENFORMER_TFLOP_PER_WINDOW,
    FULL_WINDOW_BP,
    GPU_BATCHES,
    bench_enformer_device,
    bench_enformer_full_cpu,
    random_windows,
    runner_path,
    write_random_enformer,
    write_random_genome,
)
from dogmacache.bench.mfu import mfu_cell, target_scope
from dogmacache.bench.report import Table, fmt, pct, table, verdict
from dogmacache.bench.timing import demo_config, timed_run_embed
from dogmacache.embed.runner import EmbedConfig

__all__ = [
    "CPU_FULL_SECONDS_PER_WINDOW",
    "ENFORMER_TFLOP_PER_WINDOW",
    "FULL_WINDOW_BP",
    "GPU_BATCHES",
    "TARGET_BF16_OVER_FP32",
    "TARGET_GPU_BUSY",
    "TARGET_WINDOWS_PER_S",
    "TINY_CASES",
    "TinyCase",
    "bench_embed",
    "bench_embed_tiny",
    "bench_enformer_device",
    "bench_enformer_full_cpu",
    "embed_tables",
    "random_windows",
    "runner_path",
    "timed_run_embed",
    "write_random_enformer",
    "write_random_genome",
]

TARGET_BF16_OVER_FP32 = 2.0  # bf16 autocast throughput over fp32, full-size Enformer on a GPU
TARGET_GPU_BUSY = 0.80  # fraction of the runner's wall time the GPU spends in forward passes
TARGET_WINDOWS_PER_S = 100.0  # full-size windows per second on one H100


# ---- tiny models on the demo inputs (CPU) ------------------------------------------------------------------
@dataclass(frozen=True)
class TinyCase:
    label: str
    model: str
    modality: str
    table: str  # relative to the demo recipe folder
    replicable: bool = True  # scGPT gene ids are vocabulary symbols: the table cannot be repeated


TINY_CASES = (
    TinyCase("Enformer, CRISPRi enhancer windows", "enformer", "dna", "cdt/dna_windows.parquet"),
    TinyCase("ESM-2, proteins", "esm2", "protein", "cdt/proteins.parquet"),
    TinyCase("Nucleotide Transformer, cDNA", "nucleotide-transformer", "rna", "isoform/rna_sequences.parquet"),
    TinyCase("scGPT, gene tokens", "scgpt", "gene", "cdt/genes.parquet", replicable=False),
    TinyCase("scGPT, tissue contexts", "scgpt", "context", "isoform/tissue_profiles.parquet"),
)


def _sized_table(table: pd.DataFrame, n_items: int, replicable: bool) -> pd.DataFrame:
    """The table cut or repeated to `n_items` rows (repeats get ids suffixed ~rK); as is where not replicable."""
    if not replicable:
        return table
    copies = -(-n_items // len(table))
    parts = [table if k == 0 else table.assign(id=table["id"].astype(str) + f"~r{k}") for k in range(copies)]
    return pd.concat(parts, ignore_index=True).iloc[:n_items]


def bench_embed_tiny(
    n_items: int = 256,
    num_workers: int = 2,
    device: str = "cpu",
    cases: Sequence[TinyCase] = TINY_CASES,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Items/s of each tiny model through `run_embed` on the demo recipe (each table cut or repeated to
    `n_items`), into temporary caches with the CLI's defaults otherwise."""
    from dogmacache.data_recipes.demo import build_demo
    from dogmacache.embed.tiny import make_tiny

    root = Path(tempfile.mkdtemp(prefix="dogmacache-bench-embed-", dir=workdir))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            build_demo(root / "recipe")
            models = make_tiny(root / "models", names=sorted({case.model for case in cases}))
        rows = []
        for i, case in enumerate(cases):
            source = pd.read_parquet(root / "recipe" / case.table)
            table = _sized_table(source, n_items, case.replicable)
            path = root / f"input{i}.parquet"
            table.to_parquet(path)
            table.iloc[: min(4, len(table))].to_parquet(root / f"warmup{i}.parquet")

            def config(table_path: Path, out: str, case=case) -> EmbedConfig:
                return demo_config(
                    root, models, case.model, case.modality, table_path, out, device=device, num_workers=num_workers
                )

            timed_run_embed(config(root / f"warmup{i}.parquet", str(root / f"warmup{i}.zarr")))
            numbers = timed_run_embed(config(path, str(root / f"cache{i}.zarr")))
            rows.append(
                {
                    "label": case.label,
                    "model": case.model,
                    "modality": case.modality,
                    "source_items": len(source),
                    **numbers,
                }
            )
        return {
            "device": device,
            "num_workers": num_workers,
            "n_items": n_items,
            "cases": rows,
            "timing": "run_embed's own seconds: after the model load until the cache is finalised "
            "(input preparation, forward, shard writes); one 4-item run first, untimed",
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_embed(
    n_items: int = 256,
    num_workers: int = 2,
    full_enformer: bool = False,
    gpu: bool | None = None,
    gpu_batches: Sequence[int] = GPU_BATCHES,
    gpu_windows: int = 256,
    gpu_workers: Sequence[int] | None = None,
    workdir: str | None = None,
) -> dict[str, Any]:
    """The embed section: tiny adapters on CPU; the full-size Enformer on CPU with `full_enformer`; the
    full-size Enformer on the GPU when CUDA is available (`gpu` None) or asked for."""
    gpu = torch.cuda.is_available() if gpu is None else gpu
    result: dict[str, Any] = {"tiny_cpu": bench_embed_tiny(n_items, num_workers, workdir=workdir)}
    if full_enformer:
        result["full_enformer_cpu"] = bench_enformer_full_cpu(workdir=workdir)
    if gpu:
        workers = gpu_workers or (num_workers, max(num_workers, min(8, (os.cpu_count() or 2) - 2)))
        result["gpu"] = bench_enformer_device(
            "cuda", batches=gpu_batches, runner_windows=gpu_windows, runner_workers=workers, workdir=workdir
        )
    return result


def embed_tables(r: dict[str, Any]) -> list[Table]:
    tiny = r["tiny_cpu"]
    rows = [[c["label"], c["items"], c["items_per_s"], c["seconds"], c["setup_seconds"]] for c in tiny["cases"]]
    out = [
        table(
            f"embed: tiny models on {tiny['device']}, demo inputs through run_embed into a temporary cache "
            f"({tiny['num_workers']} DataLoader workers; no target)",
            ["model, input", "items", "items/s", "wall s (excl. load)", "setup s (load etc.)"],
            rows,
            [
                "wall: the runner's clock from after the model load until the cache is finalised; scGPT gene "
                "tokens are the demo's 35 symbols (ids are vocabulary symbols, not repeated)"
            ],
        )
    ]
    full = r.get("full_enformer_cpu")
    if full:
        lo, hi = full["reference_seconds_per_window"]
        out.append(
            table(
                f"embed: full-size random Enformer (196,608 bp, 896×3072) on CPU, fp32, {full['threads']} threads, "
                "through run_embed",
                ["measurement", "measured", "reference"],
                [
                    [
                        "seconds per window (run_embed)",
                        full["seconds_per_window"],
                        f"{lo}–{hi} s on 2 cores (docs/papers.md#enformer-compute-cost)",
                    ],
                    ["seconds per window in forward", full["forward_seconds_per_window"], ""],
                    ["windows", full["windows"], ""],
                ],
            )
        )
    gpu = r.get("gpu")
    if gpu:
        by = {(s["precision"], s["batch"]): s for s in gpu["sweep"]}
        batches = sorted({s["batch"] for s in gpu["sweep"]})
        rows = []
        for b in batches:
            f32, b16 = by.get(("fp32", b), {}), by.get(("bf16", b), {})
            ratio = (
                b16["windows_per_s"] / f32["windows_per_s"]
                if f32.get("windows_per_s") and b16.get("windows_per_s")
                else None
            )
            rows.append(
                [
                    b,
                    "OOM" if f32.get("oom") else f32.get("windows_per_s"),
                    "OOM" if b16.get("oom") else b16.get("windows_per_s"),
                    ratio,
                    f32.get("tflop_per_s"),
                    b16.get("tflop_per_s"),
                    mfu_cell(f32.get("mfu"), b16.get("mfu")),
                    b16.get("peak_memory_gb"),
                ]
            )
        size = "full-size" if gpu["full_size"] else "tiny"
        out.append(
            table(
                f"embed: {size} random Enformer on {gpu['device']}, forward only (batch already on the GPU)",
                [
                    "batch",
                    "fp32 windows/s",
                    "bf16 windows/s",
                    "bf16/fp32",
                    "fp32 TFLOP/s",
                    "bf16 TFLOP/s",
                    "MFU fp32 / bf16",
                    "bf16 peak GB",
                ],
                rows,
                [
                    f"TFLOP/s assume {fmt(gpu['tflop_per_window_assumed'])} TFLOP per window (counted here: "
                    f"{fmt(gpu['tflop_per_window_counted'])}); fp32 = torch defaults (TF32 convs "
                    f"{gpu['tf32']['cudnn']}, TF32 matmuls {gpu['tf32']['matmul']})"
                ],
            )
        )
        runs = gpu.get("runner", [])
        out.append(
            table(
                "embed: Enformer through the runner path (random-genome windows, DataLoader workers)",
                ["path", "workers", "precision", "windows", "windows/s", "GPU busy", "NVML util", "TFLOP/s", "MFU"],
                [
                    [
                        run["mode"],
                        run["num_workers"],
                        run["precision"],
                        run["windows"],
                        run["windows_per_s"],
                        pct(run["busy_fraction"]),
                        "–"
                        if run["nvml_mean_utilisation_percent"] is None
                        else f"{run['nvml_mean_utilisation_percent']:.0f}%",
                        run["tflop_per_s"],
                        mfu_cell(run.get("mfu")),
                    ]
                    for run in runs
                ],
                [
                    "stream = embed_stream (prepare, batch, forward, to host); run_embed = the whole command "
                    "with shard writes; GPU busy = CUDA-event time inside forward calls / wall"
                ],
            )
        )
        best = gpu.get("best", {})
        bf16_best = best.get("bf16", {}).get("windows_per_s")
        scope = target_scope("full" if gpu["full_size"] else "tiny", gpu["device"])
        dev = gpu.get("bf16_vs_fp32", {})
        target_rows = [
            [
                "bf16 / fp32 windows/s (best batch of each)",
                gpu.get("bf16_over_fp32_best"),
                f"≥ {TARGET_BF16_OVER_FP32:g}×",
                verdict(gpu.get("bf16_over_fp32_best"), TARGET_BF16_OVER_FP32, applies=scope["gpu"]),
            ],
            [
                f"bf16 windows/s, forward, batch {best.get('bf16', {}).get('batch')}",
                bf16_best,
                f"≥ {TARGET_WINDOWS_PER_S:g} (one H100)",
                verdict(bf16_best, TARGET_WINDOWS_PER_S, applies=scope["h100"]),
            ],
        ]
        for run in runs:
            name = f"{run['mode']}, {run['num_workers']} workers"
            target_rows.append(
                [
                    f"runner windows/s ({name})",
                    run["windows_per_s"],
                    f"≥ {TARGET_WINDOWS_PER_S:g} (one H100)",
                    verdict(run["windows_per_s"], TARGET_WINDOWS_PER_S, applies=scope["h100"]),
                ]
            )
            target_rows.append(
                [
                    f"GPU busy ({name})",
                    pct(run["busy_fraction"]),
                    f"≥ {pct(TARGET_GPU_BUSY)}",
                    verdict(run["busy_fraction"], TARGET_GPU_BUSY, applies=scope["gpu"], percent=True),
                ]
            )
        target_rows += [
            ["bf16 vs fp32: max |Δ| / max |fp32|", dev.get("max_abs_over_max_abs_fp32"), "(reported)", ""],
            ["bf16 vs fp32: median relative error", dev.get("median_relative_error"), "(reported)", ""],
            ["bf16 vs fp32: ‖Δ‖ / ‖fp32‖", dev.get("relative_l2"), "(reported)", ""],
        ]
        out.append(
            table(
                "embed: GPU targets",
                ["measurement", "measured", "target", "met"],
                target_rows,
                [f"deviation over {dev.get('windows')} windows against {dev.get('reference')}"],
            )
        )
    return out
