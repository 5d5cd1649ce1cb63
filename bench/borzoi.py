"""Borzoi and Flashzoi on one device, for the `gpu` section (`bench/gpu.py`), beside Enformer and measured the same
way (`bench.enformer.batch_sweep`: a one-hot batch already on the device, CUDA events, median over calls, two
input sets alternated): windows/s per precision and batch size, and the best batch of each precision.

Random weights in the published layout, loaded through the adapter: full size is BorzoiConfig's defaults (8
layers 1,536 wide, 6,144 bins, 524,288 bp windows); tiny is the tests' `TINY_BORZOI` (768 bp windows), so the
command also runs on a CPU. Flashzoi runs flash-attn where the adapter picks it (`--attention auto`: CUDA with
flash-attn installed; bf16 only), else its plain PyTorch attention; the row says which. FLOPs per window by torch's
counter (`tflop_per_window`), for TFLOP/s and MFU beside each rate.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from dogmacache.bench.enformer import batch_sweep, best_per_precision, count_tflop_per_window
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
            tflop = tflop_per_window(cls, folder, adapter, dev)
            generator = torch.Generator().manual_seed(seed)
            row: dict[str, Any] = {
                "parameters": sum(p.numel() for p in adapter.model.parameters()),
                "window_bp": adapter.window,
                "item_shape": list(adapter.info().item_shape),
                "attention": attention,
                "tflop_per_window_counted": tflop,
                "sweep": batch_sweep(adapter, dev, ran, BATCHES[size], tflop, generator, min_seconds),
            }
            row.update(best_per_precision(row["sweep"], ran))
            results[name] = row
            del adapter
            free_memory(dev)
            shutil.rmtree(folder, ignore_errors=True)
        return results
    finally:
        shutil.rmtree(root, ignore_errors=True)


def tflop_per_window(cls, folder: Path, adapter, dev: torch.device) -> float | None:
    """Forward TFLOP of one window by torch's flop counter. flash-attn's kernels are not counted by it: a
    Flashzoi running them is counted through a copy with the same attention in plain PyTorch."""
    if getattr(adapter.options, "attention", None) != "flash":
        return count_tflop_per_window(adapter, adapter.window)
    plain = cls(str(folder), replace(cls.options_class(), attention="plain"), dev)
    try:
        return count_tflop_per_window(plain, plain.window)
    finally:
        del plain
        free_memory(dev)
