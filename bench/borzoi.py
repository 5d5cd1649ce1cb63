"""Borzoi and Flashzoi on one device, for the `gpu` section (`bench/gpu.py`), beside Enformer and measured the same
way (`bench.enformer.batch_sweep`: a one-hot batch already on the device, CUDA events, median over calls, two
input sets alternated): windows/s per precision and batch size, and the best batch of each precision.

Random weights in the published layout, loaded through the adapter: full size is BorzoiConfig's defaults (8
layers 1,536 wide, 6,144 bins, 524,288 bp windows); tiny is the tests' `TINY_BORZOI` (768 bp windows), so the
command also runs on a CPU. Flashzoi runs flash-attn where the adapter picks it (`--attention auto`: CUDA with
flash-attn installed; bf16 only), else its plain PyTorch attention; the row says which.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from dogmacache.bench.enformer import batch_sweep, best_per_precision
from dogmacache.bench.report import fmt
from dogmacache.bench.timing import free_memory
from dogmacache.devices import pick_device

BATCHES = {"full": (1, 2, 4, 8), "tiny": (1,)}
MODELS = ("borzoi", "flashzoi")


def full_size_hparams() -> dict[str, Any]:
    """BorzoiConfig's defaults (the published models' sizes) for every setting the tiny configuration changes."""
    from borzoi_pytorch.config_borzoi import BorzoiConfig
    from dogmacache.embed.adapters.borzoi import TINY_BORZOI

    defaults = BorzoiConfig().to_dict()
    return {name: defaults[name] for name in TINY_BORZOI}


def bench_borzoi_device(
    device: str = "cuda",
    size: str = "full",
    models: Sequence[str] = MODELS,
    precisions: Sequence[str] = ("fp32", "bf16"),
    min_seconds: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    """{model: its facts, the batch sweep and the best batch per precision} for random Borzoi-family models."""
    from dogmacache.embed.adapters.borzoi import write_tiny_borzoi
    from dogmacache.embed.adapters.registry import get_adapter

    dev = pick_device(device)
    hparams = full_size_hparams() if size == "full" else {}
    root = Path(tempfile.mkdtemp(prefix="dogmacache-bench-borzoi-"))
    results: dict[str, Any] = {}
    try:
        for name in models:
            folder = write_tiny_borzoi(root / name, seed, flashed=name == "flashzoi", **hparams)
            cls = get_adapter(name, "dna")
            adapter = cls(str(folder), cls.options_class(), dev)
            attention = getattr(adapter.options, "attention", "relative")
            ran = ("bf16",) if attention == "flash" else tuple(precisions)  # flash-attn computes in 16 bits only
            generator = torch.Generator().manual_seed(seed)
            row: dict[str, Any] = {
                "parameters": sum(p.numel() for p in adapter.model.parameters()),
                "window_bp": adapter.window,
                "item_shape": list(adapter.info().item_shape),
                "attention": attention,
                "sweep": batch_sweep(adapter, dev, ran, BATCHES[size], None, generator, min_seconds),
            }
            row.update(best_per_precision(row["sweep"], ran))
            results[name] = row
            del adapter
            free_memory(dev)
            shutil.rmtree(folder, ignore_errors=True)
        return results
    finally:
        shutil.rmtree(root, ignore_errors=True)


def borzoi_rows(results: dict[str, Any] | None) -> list[list[Any]]:
    """The gpu table's rows: windows/s at the best batch per precision, one row per model."""
    rows = []
    for name, r in (results or {}).items():
        best = {p: r["best"].get(p, {}).get("windows_per_s") for p in ("fp32", "bf16")}
        rows.append(
            [
                f"{name.capitalize()} windows/s, best batch, fp32 / bf16 ({r['window_bp']:,} bp, "
                f"{r['attention']} attention, {r['parameters']:,} parameters)",
                f"{fmt(best['fp32']) if best['fp32'] else 'n/a'} / {fmt(best['bf16'])}",
                "",
                "",
            ]
        )
    return rows
