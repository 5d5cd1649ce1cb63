"""The `gpu` section: every measurement that needs an accelerator, in one command that fits a short GPU window
(`make bench-gpu`, under ~8 minutes on one H100 at full size), one JSON record and markdown tables
(`bench/gpu_tables.py`). Every rate comes with its TFLOP/s (FLOPs per item by torch's counter) and its MFU
against the card's peak (`bench/mfu.py`, docs/bench.md#accelerator-peaks; "n/a" off a known card).

- Enformer, full size, random weights: fp32 vs bf16 over a batch sweep, bf16 deviation, GPU busy fraction of the
  runner path (`bench.embed.bench_enformer_device`).
- Borzoi and Flashzoi beside it, same timing: windows/s per precision at the best batch (`bench.borzoi`).
- ESM-2 650M-sized random model (33 layers, 1,280 wide): proteins/s in fp32 and bf16 at a typical length, and
  proteins of the human proteome's lengths through the embed adapter, length-bucketed against naive row-order
  batches: real and padded tokens/s (`bench.esm2`).
- CDT, paper preset: training steps/s fp32 and bf16 with the batch's DNA rows gathered from a DNA table held in
  device memory, and the projected wall time of the paper's 50 epochs (575 steps each,
  docs/papers.md#cdt-training-recipe).
- The cache loader feeding the device: batches of 8 Enformer-shaped rows read from a cache and copied over.
- The train stage end to end (`run_training`, one epoch, the CDT paper preset, bf16 on CUDA) on a synthetic
  task of paper shape (1,024 Enformer-shaped DNA rows, 2,360 genes, ~600 steps of 8 pairs): DNA rows streamed
  from the cache by 4 loader workers against held on the device (`[data] dna_on_device`).

`size="tiny"` runs the same code with tiny models and shapes, on a CPU too, so the command never rots.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dogmacache.bench.mfu import count_flops, device_name, utilisation
from dogmacache.bench.timing import median_seconds, sync
from dogmacache.devices import pick_device
from dogmacache.embed.stream import autocast_for
from dogmacache.errors import InputError

TARGET_PAPER_EPOCHS_MINUTES = 10.0  # the paper's 50 epochs of CDT training on one H100
PAPER_STEPS_PER_EPOCH = 4605 // 8  # the authors' 4,605 training pairs in batches of 8, last partial dropped
PAPER_EPOCHS = 50

SIZES = {
    "full": {
        "esm": {"num_hidden_layers": 33, "hidden_size": 1280, "num_attention_heads": 20, "intermediate_size": 5120},
        "protein_length": 400,
        "esm_batches": (8, 32),
        "esm_ragged": {"n_proteins": 512, "naive_batch": 32},
        "cdt_preset": "paper",
        "cdt_table_rows": 1024,
        "cache_items": 256,
        "cache_shape": (896, 3072),
        "enformer_hparams": None,
        "enformer_batches": (1, 2, 4, 8, 16),
        "enformer_windows": 128,
        "runner_workers": (2, 8),
        "train": {
            "enhancers": 1024,
            "item_shape": (896, 3072),
            "genes": 2360,
            "widths": (512, 1280),
            "pairs_per_enhancer": 6,
            "preset": "paper",
            "workers": 4,
        },
    },
    "tiny": {
        "esm": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64},
        "protein_length": 50,
        "esm_batches": (2,),
        "esm_ragged": {"n_proteins": 24, "naive_batch": 4},
        "cdt_preset": "tiny",
        "cdt_table_rows": 16,
        "cache_items": 8,
        "cache_shape": (8, 48),
        "enformer_hparams": {
            "dim": 48,
            "depth": 1,
            "heads": 2,
            "attn_dim_key": 8,
            "dim_divisible_by": 8,
            "target_length": 8,
        },
        "enformer_batches": (1, 2),
        "enformer_windows": 4,
        "runner_workers": (2,),
        "train": {
            "enhancers": 40,
            "item_shape": (8, 48),
            "genes": 8,
            "widths": (16, 16),
            "pairs_per_enhancer": 4,
            "preset": "tiny",
            "workers": 0,
        },
    },
}


def bench_cdt_on_device(
    device: torch.device, preset_name: str, table_rows: int, batch: int = 8, calls: int = 3
) -> dict[str, Any]:
    """Training steps/s of the fast CDT with each batch's DNA gathered from a (table_rows, L, D) float16 table kept
    on the device, fp32 and bf16 autocast; projected minutes for the paper's 50 epochs; the FLOPs of a step's
    forward and backward by torch's counter, TFLOP/s and MFU."""
    from dogmacache.train.tasks.cdt.model import CentralDogmaTransformer
    from dogmacache.train.tasks.cdt.sizes import preset

    config = preset(preset_name)
    if device.type == "cuda":  # this part's peak, not the largest of the parts before it
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = CentralDogmaTransformer(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5)
    dna_table = torch.randn(table_rows, config.dna_positions, config.dna_width, device=device).half()
    rna = torch.randn(config.n_genes, config.rna_width, device=device)
    protein = torch.randn(config.n_genes, config.protein_width, device=device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    result: dict[str, Any] = {
        "preset": preset_name,
        "batch": batch,
        "dna_table_gb": dna_table.numel() * 2 / 1e9,
    }

    def step(precision: str, update: bool = True) -> None:
        rows = torch.randint(0, table_rows, (batch,), generator=generator).to(device)
        genes = torch.randint(0, config.n_genes, (batch,), generator=generator).to(device)
        target = torch.randn(batch, generator=generator).to(device)
        with autocast_for(device, precision):
            y = model(dna_table[rows].float(), rna, protein, genes)
            loss = torch.nn.functional.smooth_l1_loss(y.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if update:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()

    # forward and backward, the optimizer not counted; with dropout off, so that the attention runs through torch's
    # SDPA, which the counter sees, on either device (a CPU step with dropout takes train/kernels.py's blocked
    # attention, which it does not: the count came out 9 % low at the tiny preset); dropout adds no matmul
    model.eval()
    try:
        flops = count_flops(lambda: step("fp32", update=False))
    finally:
        model.train()
    result["tflop_per_step"] = flops / 1e12 if flops else None
    for precision in ("fp32", "bf16"):
        seconds = median_seconds(lambda precision=precision: step(precision), device, calls)
        rate = result["tflop_per_step"] / seconds if result["tflop_per_step"] else None
        result[precision] = {
            "steps_per_s": 1 / seconds,
            "paper_50_epochs_minutes": seconds * PAPER_STEPS_PER_EPOCH * PAPER_EPOCHS / 60,
            "tflop_per_s": rate,
            **utilisation(rate, device, precision),
        }
    if device.type == "cuda":
        result["cuda_peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return result


def bench_loader_to_device(
    device: torch.device, items: int, shape: tuple[int, int], batch: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Random batches read from a local float16 cache with `EmbeddingCache.read_rows` and copied to `device`: a
    warm read (the cache is written just before and stays in the page cache); `make bench`'s cache section times
    cold reads."""
    from dogmacache.cache import CacheSpec, CacheWriter, digest_strings, open_cache

    root = Path(tempfile.mkdtemp(prefix="dogmacache-bench-gpu-"))
    try:
        ids = [f"w{i}" for i in range(items)]
        spec = CacheSpec(
            modality="dna",
            model="random",
            model_revision="none",
            layer=-1,
            pooling="none",
            item_shape=shape,
            input_digest=digest_strings(ids),
            shard_items=max(1, items // 4),
        )
        writer = CacheWriter.create(root / "c.zarr", spec, ids=ids)
        rng = np.random.default_rng(seed)
        for shard in writer.pending_shards():
            a, b = writer.manifest.shard_rows(shard)
            writer.write_shard(shard, rng.standard_normal((b - a, *shape), dtype=np.float32).astype(np.float16))
        writer.finalize()
        cache = open_cache(root / "c.zarr")
        order = rng.permutation(items)
        start = time.perf_counter()
        for a in range(0, items, batch):
            rows = np.sort(order[a : a + batch])
            torch.from_numpy(cache.read_rows(rows)).to(device, non_blocking=False)
        sync(device)
        seconds = time.perf_counter() - start
        return {
            "items": items,
            "rows_per_s": items / seconds,
            "mb_per_s": items * int(np.prod(shape)) * 2 / 1e6 / seconds,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_train_stage(device: torch.device, spec: dict[str, Any]) -> dict[str, Any]:
    """Two epochs of `run_training` (CDT, no baselines) per way of keeping the DNA rows: streamed from the cache
    (`dna_on_device = "no"`, `spec["workers"]` loader workers) and held on the device (`"yes"`). The rates and
    the projection are the second epoch's: the first also starts the loader's workers and warms the device's
    kernels (on an H100 one such run took 10.4 s for its first epoch and 5.45 s for each after), and the mode run
    first would pay more of that."""
    import csv

    from dogmacache.bench.train_memory import synthetic_cdt_config, write_task
    from dogmacache.train.run import run_training

    root = Path(tempfile.mkdtemp(prefix="dogmacache-bench-train-"))
    try:
        t0 = time.perf_counter()
        paths = write_task(
            root,
            spec["enhancers"],
            tuple(spec["item_shape"]),
            n_genes=spec["genes"],
            widths=tuple(spec["widths"]),
            pairs_per_enhancer=spec["pairs_per_enhancer"],
        )
        result: dict[str, Any] = {**spec, "write_seconds": time.perf_counter() - t0, "runs": []}
        precision = "bf16" if device.type == "cuda" else "fp32"
        for mode, workers in (("no", spec["workers"]), ("yes", 0)):
            config = synthetic_cdt_config(
                paths,
                root / f"run-{mode}",
                spec["preset"],
                {"dna_on_device": mode},
                num_workers=workers,
                device=str(device),
                precision=precision,
                epochs=2,
                early_stop_patience=2,
            )
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            summary = run_training(config, progress=False)
            wall = time.perf_counter() - t0
            steps = summary["counts"]["train"] // config.train.batch_size  # the last partial batch is dropped
            with open(root / f"run-{mode}" / "log.csv") as f:
                seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
            epoch_seconds = seconds[-1]  # the second epoch: warm
            run = {
                "dna_on_device": mode,
                "num_workers": workers,
                "precision": precision,
                "steps": steps,
                "epoch_seconds": epoch_seconds,
                "first_epoch_seconds": seconds[0],
                "wall_seconds": wall,
                "steps_per_s_with_validation": steps / epoch_seconds,
                "paper_50_epochs_minutes": epoch_seconds / steps * PAPER_STEPS_PER_EPOCH * PAPER_EPOCHS / 60,
            }
            if device.type == "cuda":
                run["cuda_peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
            result["runs"].append(run)
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


PARTS = ("enformer", "borzoi", "esm2", "esm2_ragged", "cdt", "loader", "train_stage")  # in the order run


def check_parts(parts: tuple[str, ...]) -> None:
    """InputError in one line unless `parts` names one or more of PARTS and nothing else."""
    if not parts or any(p not in PARTS for p in parts):
        raise InputError(f"--gpu-parts {','.join(parts)!r} names no part or unknown ones; pick from {', '.join(PARTS)}")


def bench_gpu(size: str = "full", device: str = "auto", parts: tuple[str, ...] = PARTS, on_part=None) -> dict[str, Any]:
    """The record of `parts` (all by default), each measured in turn. A part that fails is recorded under
    `failed_parts` (its error and the last lines of its traceback) and the others still run; `on_part(record)` is
    called after each part, so that a caller can keep what ran if the command is stopped."""
    from dogmacache.bench.borzoi import bench_borzoi_device
    from dogmacache.bench.embed import bench_enformer_device
    from dogmacache.bench.esm2 import bench_esm2, bench_esm2_ragged
    from dogmacache.bench.mfu import card, target_scope

    check_parts(parts)
    s = SIZES[size]
    dev = pick_device(device)
    name = device_name(dev)
    result: dict[str, Any] = {
        "size": size,
        "device": str(dev),
        "device_name": name,
        "card": card(name),  # the peak table's entry (docs/bench.md#accelerator-peaks); None: MFU not computed
        "targets_apply": target_scope(size, name),
        "parts_seconds": {},
        "failed_parts": {},
    }
    measure = {
        "enformer": lambda: bench_enformer_device(
            str(dev),
            hparams=s["enformer_hparams"],
            batches=s["enformer_batches"],
            runner_windows=s["enformer_windows"],
            runner_workers=s["runner_workers"],
            # compiled rows on CUDA only: inductor builds C++ kernels for a CPU for about a minute (tested apart)
            runner_modes=("run_embed", "run_embed --compile reduce-overhead") if dev.type == "cuda" else ("run_embed",),
            min_seconds=0.5,
            compile_modes=("reduce-overhead",) if dev.type == "cuda" else (),
        ),
        "borzoi": lambda: bench_borzoi_device(str(dev), size),
        "esm2": lambda: bench_esm2(dev, s["esm"], s["protein_length"], s["esm_batches"]),
        "esm2_ragged": lambda: bench_esm2_ragged(dev, s["esm"], **s["esm_ragged"]),
        "cdt": lambda: bench_cdt_on_device(dev, s["cdt_preset"], s["cdt_table_rows"]),
        "loader": lambda: bench_loader_to_device(dev, s["cache_items"], s["cache_shape"]),
        "train_stage": lambda: bench_train_stage(dev, s["train"]),
    }
    assert tuple(measure) == PARTS, "PARTS names the parts measured, in their order"
    for part in (p for p in PARTS if p in parts):
        t0 = time.perf_counter()
        try:
            result[part] = measure[part]()
        except Exception as err:  # noqa: BLE001 - one broken part must not lose the others' numbers
            lines = traceback.format_exc().strip().splitlines()
            result["failed_parts"][part] = {"error": f"{type(err).__name__}: {err}", "traceback": lines[-12:]}
        seconds = time.perf_counter() - t0
        result["parts_seconds"][part] = round(seconds, 1)
        failed = result["failed_parts"].get(part)
        print(f"  gpu part {part}: {seconds:.0f} s" + (f", FAILED: {failed['error']}" if failed else ""), flush=True)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        if on_part is not None:
            on_part(result)
    return result
