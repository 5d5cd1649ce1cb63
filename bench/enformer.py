"""Enformer through the embed runner, for `dogmacache bench`'s embed section (`bench/embed.py`):

- `bench_enformer_device`: a random Enformer (full size by default: EnformerConfig's defaults, 251M
  parameters, 196,608 bp windows) on one device, in named steps: the batch sweep per precision (`batch_sweep`,
  device-event timing, median over calls, two input sets alternated), bf16 vs fp32 deviation on the same windows
  (`bf16_deviation`, fp32 with TF32 off as the reference), and the runner path (`runner_runs`: `embed_stream`
  alone, and `run_embed` with its shard writes) over windows of a random genome FASTA, with the fraction of the
  wall time spent inside the adapter's forward calls (and NVML's utilisation when `pynvml` imports). Meant for
  CUDA; it runs on CPU too, which is how the tests drive it with the tiny configuration.
- `bench_enformer_full_cpu`: the full-size random Enformer through `run_embed` on CPU (~28 s per window
  on 2 cores, docs/papers.md#enformer-compute-cost); behind `--full-enformer`.
- Inputs: `write_random_enformer`, `write_random_genome`, `random_windows`.

TFLOP/s assume 3.26 TFLOP per full-size window forward (docs/papers.md#enformer-compute-cost, torch's flop counter);
the count is redone on the device where the flop counter runs, and reported beside it. MFU holds them against the
card's peak (`bench.mfu.utilisation`; fp32 against TF32's where cuDNN may use it, torch's default).
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from dogmacache.bench.mfu import count_flops, utilisation
from dogmacache.bench.timing import (
    ForwardTimer,
    NvmlSampler,
    free_memory,
    strict_fp32,
    time_calls,
    timed_run_embed,
)
from dogmacache.devices import pick_device
from dogmacache.embed.runner import EmbedConfig, autocast_for, embed_stream, load, resolve_precision

ENFORMER_TFLOP_PER_WINDOW = 3.26  # full size, one 196,608 bp window, forward (docs/papers.md#enformer-compute-cost)
FULL_WINDOW_BP = 196_608
CPU_FULL_SECONDS_PER_WINDOW = (27.5, 29.6)  # docs/papers.md#enformer-compute-cost, 2 CPU cores, fp32
GPU_BATCHES = (1, 2, 4, 8, 16, 32)


# ---- inputs ------------------------------------------------------------------------------------------------
def write_random_enformer(directory: str | os.PathLike, seed: int = 0, **hparams: Any) -> Path:
    """A random Enformer (EnformerConfig defaults = full size, overridden by `hparams`) in the layout the
    adapter loads: config.json with every EnformerConfig argument, and pytorch_model.bin (a state dict)."""
    from enformer_pytorch import Enformer
    from enformer_pytorch.config_enformer import EnformerConfig

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Enformer(EnformerConfig(**hparams))
    arguments = {
        n: p.default
        for n, p in inspect.signature(EnformerConfig.__init__).parameters.items()
        if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD
    }
    (directory / "config.json").write_text(json.dumps({**arguments, **hparams}, indent=1))
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    return directory


def write_random_genome(path: str | os.PathLike, lengths: dict[str, int], seed: int = 0, width: int = 80) -> Path:
    """A FASTA of uniformly random A/C/G/T (no N), `width` bases per line."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)
    with open(path, "wb") as fh:
        for name, length in lengths.items():
            seq = letters[rng.integers(0, 4, length)]
            full = length // width * width
            lines = np.concatenate(
                [seq[:full].reshape(-1, width), np.full((full // width, 1), ord("\n"), np.uint8)], axis=1
            )
            fh.write(f">{name}\n".encode() + lines.tobytes())
            if full < length:
                fh.write(seq[full:].tobytes() + b"\n")
    return Path(path)


def random_windows(lengths: dict[str, int], n: int, window_bp: int, seed: int = 0) -> pd.DataFrame:
    """`n` window rows (id, chrom, 1-based center, strand '+') lying wholly inside the chromosomes."""
    rng = np.random.default_rng(seed)
    names = [c for c, length in lengths.items() if length >= window_bp]
    if not names:
        raise ValueError(f"no chromosome is as long as the {window_bp:,} bp window")
    chroms = rng.choice(names, size=n)
    centers = [int(rng.integers(window_bp // 2 + 1, lengths[c] - window_bp // 2 + 1)) for c in chroms]
    return pd.DataFrame({"id": [f"w{i:06d}" for i in range(n)], "chrom": chroms, "center": centers, "strand": "+"})


# ---- Enformer on one device --------------------------------------------------------------------------------
def runner_path(
    model_dir: Path,
    genome: Path,
    table: Path,
    device: torch.device,
    mode: str,
    num_workers: int,
    out: Path,
    precision: str = "auto",
) -> dict[str, Any]:
    """Enformer windows through the runner: mode "stream" = `embed_stream` (loader workers, batches, forward,
    outputs to the host) without writing; "run_embed" = the whole command into a cache at `out` ("run_embed
    --compile reduce-overhead": with the forward compiled, the compilation inside the timed run). Reports
    windows/s and the fraction of the wall time inside forward calls (`busy`), plus NVML's mean utilisation."""
    from dogmacache.embed.adapters.enformer import EnformerAdapter

    config = EmbedConfig(
        input=str(table),
        modality="dna",
        model="enformer",
        out=str(out),
        model_path=str(model_dir),
        genome=str(genome),
        device=str(device),
        precision=precision,
        num_workers=num_workers,
        progress=False,
        compile="reduce-overhead" if mode.endswith("--compile reduce-overhead") else "off",
        fidelity_items=0,  # the loop's rate: a receipt's fixed fp32 re-embed would weigh 16 of the bench's windows
    )
    timer = ForwardTimer(device)
    with timer.patch(EnformerAdapter), NvmlSampler(device) as nvml:
        if mode.startswith("run_embed"):  # "run_embed", or "run_embed --compile reduce-overhead"
            numbers = timed_run_embed(config)
            items, wall = numbers["items"], numbers["seconds"]
        elif mode == "stream":
            _, rows, adapter = load(config, device)
            resolved = resolve_precision(device, precision)
            t0 = time.perf_counter()
            items = 0
            for embedded, _ in embed_stream(
                adapter,
                rows,
                device=device,
                precision=resolved,
                max_tokens=adapter.default_max_tokens(device),
                max_batch=config.max_batch,
                num_workers=num_workers,
            ):
                items += len(embedded)
            wall = time.perf_counter() - t0
            del adapter
        else:
            raise ValueError(f"mode {mode!r} is not 'stream' or 'run_embed'")
    busy = timer.busy_seconds()
    free_memory(device)
    return {
        "mode": mode,
        "num_workers": num_workers,
        "precision": resolve_precision(device, precision),
        "windows": items,
        "batches": timer.calls,
        "wall_seconds": wall,
        "windows_per_s": items / max(wall, 1e-9),
        "forward_seconds": busy,
        "busy_fraction": busy / max(wall, 1e-9),
        "nvml_mean_utilisation_percent": nvml.mean_percent(),
        "nvml_error": nvml.error,
    }


def count_tflop_per_window(adapter, window_bp: int) -> float | None:
    """Forward FLOPs of one window by torch's flop counter (`bench.mfu.count_flops`; None where it fails)."""
    x = adapter.one_hot(torch.randint(0, 4, (1, window_bp), dtype=torch.uint8))
    with torch.inference_mode():
        flops = count_flops(lambda: adapter.trunk(x))
    return None if flops is None else flops / 1e12


def bench_enformer_device(
    device: str = "cuda",
    hparams: dict[str, Any] | None = None,
    batches: Sequence[int] = GPU_BATCHES,
    precisions: Sequence[str] = ("fp32", "bf16"),
    deviation_batch: int = 4,
    runner_windows: int = 256,
    runner_workers: Sequence[int] = (2,),
    runner_modes: Sequence[str] = ("stream", "run_embed"),
    min_seconds: float = 1.0,
    seed: int = 0,
    workdir: str | None = None,
    compile_modes: Sequence[str] = (),
) -> dict[str, Any]:
    """A random Enformer (full size unless `hparams`) on `device`: the batch sweep per precision, bf16 vs fp32
    deviation, and the runner path with each worker count (see the module's docstring)."""
    from dogmacache.embed.adapters.enformer import EnformerAdapter, EnformerOptions

    dev = pick_device(device)
    full = not hparams
    root = Path(tempfile.mkdtemp(prefix="dogmacache-bench-enformer-", dir=workdir))
    try:
        t0 = time.perf_counter()
        model_dir = write_random_enformer(root / "enformer", seed, **(hparams or {}))
        write_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        adapter = EnformerAdapter(str(model_dir), EnformerOptions(), dev)
        load_seconds = time.perf_counter() - t0
        counted = count_tflop_per_window(adapter, adapter.window)
        tflop = ENFORMER_TFLOP_PER_WINDOW if full else counted
        result = model_facts(adapter, dev, full, tflop, counted)
        result.update(model_write_seconds=write_seconds, model_load_seconds=load_seconds)
        generator = torch.Generator().manual_seed(seed)
        result["sweep"] = batch_sweep(adapter, dev, precisions, batches, tflop, generator, min_seconds)
        result.update(best_per_precision(result["sweep"], precisions))
        result["bf16_vs_fp32"] = bf16_deviation(adapter, dev, deviation_batch, generator)
        if compile_modes and result.get("best", {}).get("bf16"):
            result["compiled"] = compiled_rows(
                adapter, dev, compile_modes, result["best"]["bf16"]["batch"], tflop, generator, min_seconds
            )
        window = adapter.window
        del adapter
        free_memory(dev)
        if runner_windows:
            result["runner"] = runner_runs(
                root, model_dir, dev, window, runner_windows, runner_workers, runner_modes, tflop, seed
            )
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def model_facts(adapter, dev: torch.device, full: bool, tflop: float | None, counted: float | None) -> dict[str, Any]:
    """What was measured: the device, the model's size and window, the FLOP count, the TF32 switches."""
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "full_size": full,
        "parameters": sum(p.numel() for p in adapter.model.parameters()),
        "window_bp": adapter.window,
        "item_shape": list(adapter.info().item_shape),
        "tf_gamma": adapter.tf_gamma,
        "tflop_per_window_assumed": tflop,
        "tflop_per_window_counted": counted,
        "tf32": {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
        "timing": "forward of a one-hot batch already on the device; CUDA events (host clock on CPU); "
        "median over >= 3 calls and >= min_seconds after one warm-up call; 2 input sets alternated",
    }


def batch_sweep(
    adapter,
    dev: torch.device,
    precisions: Sequence[str],
    batches: Sequence[int],
    tflop: float | None,
    generator: torch.Generator,
    min_seconds: float,
) -> list[dict[str, Any]]:
    """Step 1: windows/s per (precision, batch size); the first batch that runs out of memory ends a precision's
    sweep (larger ones will not fit either)."""
    sweep = []
    for precision in precisions:
        for batch in batches:
            row = time_batch(adapter, dev, precision, batch, tflop, generator, min_seconds)
            sweep.append(row)
            if row.get("oom"):
                break
    return sweep


def time_batch(
    adapter,
    dev: torch.device,
    precision: str,
    batch: int,
    tflop: float | None,
    generator: torch.Generator,
    min_seconds: float,
    trunk=None,
) -> dict[str, Any]:
    """One sweep row: the median forward time of `batch` windows at `precision` (two input sets alternated), of
    `trunk` (default: the library's own forward, `adapter.trunk`)."""
    cuda = dev.type == "cuda"
    sets = [
        adapter.one_hot(torch.randint(0, 4, (batch, adapter.window), generator=generator, dtype=torch.uint8))
        for _ in range(2)
    ]
    calls = 0

    def forward(sets=sets, precision=precision, trunk=trunk or adapter.trunk) -> None:
        nonlocal calls
        with torch.inference_mode(), autocast_for(dev, precision):
            trunk(sets[calls % 2])
        calls += 1

    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    times = None
    try:
        times = time_calls(forward, dev, min_seconds=min_seconds)
    except torch.cuda.OutOfMemoryError:
        pass  # freed below, once the exception (and the frames it holds) is gone
    del sets, forward
    if times is None:
        free_memory(dev)
        return {"precision": precision, "batch": batch, "oom": True}
    seconds = statistics.median(times)
    rate = batch / seconds * tflop if tflop else None
    row = {
        "precision": precision,
        "batch": batch,
        "calls": len(times),
        "seconds_per_batch": seconds,
        "windows_per_s": batch / seconds,
        "tflop_per_s": rate,
        **utilisation(rate, dev, precision, convolutions=True),
        "peak_memory_gb": torch.cuda.max_memory_allocated(dev) / 1e9 if cuda else None,
    }
    free_memory(dev)
    return row


def compiled_rows(
    adapter,
    dev: torch.device,
    modes: Sequence[str],
    batch: int,
    tflop: float | None,
    generator: torch.Generator,
    min_seconds: float,
) -> list[dict[str, Any]]:
    """`embed --compile MODE`'s forward (`EnformerAdapter.compile`) in bf16 at `batch`: the first call's seconds
    (the compilation), the timed rate as in the sweep, and its relative L2 against the eager float32 forward on the
    same windows (the target holds the bf16 deviation within 0.01)."""
    rows = []
    x = adapter.one_hot(torch.randint(0, 4, (batch, adapter.window), generator=generator, dtype=torch.uint8))
    with torch.inference_mode(), strict_fp32():
        reference = adapter.trunk(x).float()
    for mode in modes:
        adapter.compile(mode)
        try:
            t0 = time.perf_counter()
            with torch.inference_mode(), autocast_for(dev, "bf16"):
                first = adapter.forward_layers(x, ("trunk",))["trunk"].float()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            compile_seconds = time.perf_counter() - t0
            deviation = float((first - reference).norm() / reference.norm())
            del first

            def compiled(one_hot):
                return adapter.forward_layers(one_hot, ("trunk",))

            row = time_batch(adapter, dev, "bf16", batch, tflop, generator, min_seconds, trunk=compiled)
        finally:
            adapter.compile("off")
            torch._dynamo.reset()
        rows.append({**row, "compile": mode, "compile_seconds": compile_seconds, "relative_l2_vs_fp32": deviation})
    del x, reference
    free_memory(dev)
    return rows


def best_per_precision(sweep: list[dict[str, Any]], precisions: Sequence[str]) -> dict[str, Any]:
    """The fastest batch of each precision ("best"), and bf16 over fp32 at the best and per batch size."""
    ran = [r for r in sweep if not r.get("oom")]
    best = {}
    for precision in precisions:
        rows = [r for r in ran if r["precision"] == precision]
        if rows:
            best[precision] = max(rows, key=lambda r: r["windows_per_s"])
    found: dict[str, Any] = {"best": best}
    if "fp32" in best and "bf16" in best:
        found["bf16_over_fp32_best"] = best["bf16"]["windows_per_s"] / best["fp32"]["windows_per_s"]
        fp32 = {r["batch"]: r for r in ran if r["precision"] == "fp32"}
        found["bf16_over_fp32_per_batch"] = {
            str(r["batch"]): r["windows_per_s"] / fp32[r["batch"]]["windows_per_s"]
            for r in ran
            if r["precision"] == "bf16" and r["batch"] in fp32
        }
    return found


def bf16_deviation(adapter, dev: torch.device, n_windows: int, generator: torch.Generator) -> dict[str, Any]:
    """Step 2: bf16 autocast against fp32 (TF32 off) on the same `n_windows` random windows."""
    x = adapter.one_hot(torch.randint(0, 4, (n_windows, adapter.window), generator=generator, dtype=torch.uint8))
    with torch.inference_mode():
        with strict_fp32():
            ref = adapter.trunk(x).float()
        with autocast_for(dev, "bf16"):
            low = adapter.trunk(x).float()
        diff = (low - ref).abs()
        relative = diff / ref.abs().clamp_min(torch.finfo(torch.float32).tiny)
        return {
            "windows": n_windows,
            "max_abs_over_max_abs_fp32": (diff.max() / ref.abs().max()).item(),
            "median_relative_error": relative.flatten().median().item(),
            "relative_l2": (diff.norm() / ref.norm()).item(),
            "reference": "fp32 with TF32 off",
        }


def runner_runs(
    root: Path,
    model_dir: Path,
    dev: torch.device,
    window: int,
    n_windows: int,
    workers: Sequence[int],
    modes: Sequence[str],
    tflop: float | None,
    seed: int,
) -> list[dict[str, Any]]:
    """Step 3: the runner path (`runner_path`) per worker count and mode over windows of a random genome."""
    lengths = {"chr1": max(4 * window, 1_000_000), "chr2": max(3 * window, 800_000)}
    genome = write_random_genome(root / "genome.fa", lengths, seed)
    table = root / "windows.parquet"
    random_windows(lengths, n_windows, window, seed).to_parquet(table)
    runs = []
    for count in dict.fromkeys(workers):
        for mode in modes:
            out = root / f"cache-{mode}-{count}.zarr"
            runs.append(runner_path(model_dir, genome, table, dev, mode, count, out))
            shutil.rmtree(out, ignore_errors=True)  # a full-size cache is ~5.5 MB per window
    for run in runs:
        run["tflop_per_s"] = run["windows_per_s"] * tflop if tflop else None
        run.update(utilisation(run["tflop_per_s"], dev, run["precision"], convolutions=True))
    return runs


def bench_enformer_full_cpu(
    n_windows: int = 2, num_workers: int = 0, seed: int = 0, workdir: str | None = None
) -> dict[str, Any]:
    """The full-size random Enformer through `run_embed` on CPU, fp32 (~28 s per window on 2 cores)."""
    root = Path(tempfile.mkdtemp(prefix="dogmacache-bench-enformer-cpu-", dir=workdir))
    try:
        t0 = time.perf_counter()
        model_dir = write_random_enformer(root / "enformer", seed)
        write_seconds = time.perf_counter() - t0
        lengths = {"chr1": 1_000_000}
        genome = write_random_genome(root / "genome.fa", lengths, seed)
        table = root / "windows.parquet"
        random_windows(lengths, n_windows, FULL_WINDOW_BP, seed).to_parquet(table)
        run = runner_path(
            model_dir,
            genome,
            table,
            torch.device("cpu"),
            "run_embed",
            num_workers,
            root / "cache.zarr",
            precision="fp32",
        )
        return {
            **run,
            "seconds_per_window": run["wall_seconds"] / max(run["windows"], 1),
            "forward_seconds_per_window": run["forward_seconds"] / max(run["windows"], 1),
            "model_write_seconds": write_seconds,
            "threads": _run_threads(root / "cache.zarr"),  # what run_embed chose, not this process's count
            "reference_seconds_per_window": list(CPU_FULL_SECONDS_PER_WINDOW),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run_threads(cache: Path) -> int | None:
    """The torch threads a `run_embed` into `cache` ran with, from its manifest (it chooses them from the cores
    other processes leave idle)."""
    from dogmacache.cache import open_cache

    count = open_cache(cache, allow_partial=True).manifest.config.get("torch_threads")
    return int(count) if isinstance(count, int) else None
