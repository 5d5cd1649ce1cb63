"""The embed section of `dogmacache bench`, measured through the runner's own code, with its targets and tables.

- `bench_embed_tiny`: items/s of every adapter's tiny model (`embed/tiny.py`) on the demo recipe's inputs,
  each a `run_embed` into a temporary cache (DataLoader workers, token-budget batches, shard writes), timed
  by the runner itself from after the model load to the finished cache; a small untimed run first.
- `bench_enformer_device`: a random Enformer (full size by default: EnformerConfig's defaults, 251M
  parameters, 196,608 bp windows) on one device: windows/s per batch size at fp32 and bf16 autocast
  (device-event timing, median over calls, two input sets alternated), bf16 vs fp32 deviation on the same
  windows (fp32 with TF32 off as the reference), and the runner path (`embed_stream` alone, and `run_embed`
  with its shard writes) over windows of a random genome FASTA, with the fraction of the wall time spent
  inside the adapter's forward calls (and NVML's utilisation when `pynvml` imports). Meant for CUDA;
  it runs on CPU too, which is how the tests drive it with the tiny configuration.
- `bench_enformer_full_cpu`: the full-size random Enformer through `run_embed` on CPU (~28 s per window
  on 2 cores, docs/papers.md#enformer-compute-cost); behind `--full-enformer`.
- `bench_embed`: the section as `dogmacache bench` runs it; `embed_tables` what it prints, the GPU numbers
  against the targets below.

TFLOP/s assume 3.26 TFLOP per full-size window forward (docs/papers.md#enformer-compute-cost, torch's flop counter);
the count is redone on the device where the flop counter runs, and reported beside it.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from dogmacache.bench.report import Table, fmt, pct, table, verdict
from dogmacache.bench.timing import ForwardTimer, NvmlSampler, free_memory, strict_fp32, time_calls
from dogmacache.devices import pick_device
from dogmacache.embed.runner import (
    EmbedConfig,
    autocast_for,
    embed_stream,
    load,
    resolve_precision,
    run_embed,
)

ENFORMER_TFLOP_PER_WINDOW = 3.26  # full size, one 196,608 bp window, forward (docs/papers.md#enformer-compute-cost)
FULL_WINDOW_BP = 196_608
CPU_FULL_SECONDS_PER_WINDOW = (27.5, 29.6)  # docs/papers.md#enformer-compute-cost, 2 CPU cores, fp32
TARGET_BF16_OVER_FP32 = 2.0  # bf16 autocast throughput over fp32, full-size Enformer on a GPU
TARGET_GPU_BUSY = 0.80  # fraction of the runner's wall time the GPU spends in forward passes
TARGET_WINDOWS_PER_S = 100.0  # full-size windows per second on one H100
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


# ---- timing ------------------------------------------------------------------------------------------------
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


def timed_run_embed(config: EmbedConfig) -> dict[str, Any]:
    """`run_embed` with its printout kept quiet: items, the runner's own seconds (model load excluded),
    items/s, and the seconds before that (table read, model load, cache creation)."""
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = run_embed(config)
    total = time.perf_counter() - t0
    seconds = float(summary["seconds"])  # the runner's clock: after load, until the cache is finalised
    return {
        "items": summary["items"],
        "seconds": seconds,
        "items_per_s": summary["items"] / max(seconds, 1e-9),
        "setup_seconds": round(max(total - seconds, 0.0), 3),
        "shards": summary["shards"],
    }


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
            models = make_tiny(root / "models")
        rows = []
        for i, case in enumerate(cases):
            source = pd.read_parquet(root / "recipe" / case.table)
            table = _sized_table(source, n_items, case.replicable)
            path = root / f"input{i}.parquet"
            table.to_parquet(path)
            table.iloc[: min(4, len(table))].to_parquet(root / f"warmup{i}.parquet")
            genome = str(root / "recipe" / "genome.fa") if case.modality == "dna" else None

            def config(table_path: Path, out: str, case=case, genome=genome) -> EmbedConfig:
                return EmbedConfig(
                    input=str(table_path),
                    modality=case.modality,
                    model=case.model,
                    out=out,
                    model_path=str(models[case.model]),
                    genome=genome,
                    device=device,
                    num_workers=num_workers,
                    progress=False,
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
    outputs to the host) without writing; "run_embed" = the whole command into a cache at `out`. Reports
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
    )
    timer = ForwardTimer(device)
    with timer.patch(EnformerAdapter), NvmlSampler(device) as nvml:
        if mode == "run_embed":
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
    """Forward FLOPs of one window by torch's flop counter (None where the counter fails)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = adapter.one_hot(torch.randint(0, 4, (1, window_bp), dtype=torch.uint8))
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            adapter.model(x, return_only_embeddings=True)
    except Exception:  # noqa: BLE001 - the count is a cross-check, not the benchmark
        return None
    return counter.get_total_flops() / 1e12


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
) -> dict[str, Any]:
    """A random Enformer (full size unless `hparams`) on `device`: the batch sweep per precision, bf16 vs fp32
    deviation, and the runner path with each worker count (see the module's docstring)."""
    from dogmacache.embed.adapters.enformer import EnformerAdapter, EnformerOptions

    dev = pick_device(device)
    cuda = dev.type == "cuda"
    full = not hparams
    root = Path(tempfile.mkdtemp(prefix="dogmacache-bench-enformer-", dir=workdir))
    try:
        t0 = time.perf_counter()
        model_dir = write_random_enformer(root / "enformer", seed, **(hparams or {}))
        write_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        adapter = EnformerAdapter(str(model_dir), EnformerOptions(), dev)
        load_seconds = time.perf_counter() - t0
        window = adapter.window
        counted = count_tflop_per_window(adapter, window)
        tflop = ENFORMER_TFLOP_PER_WINDOW if full else counted
        result: dict[str, Any] = {
            "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
            "full_size": full,
            "parameters": sum(p.numel() for p in adapter.model.parameters()),
            "window_bp": window,
            "item_shape": list(adapter.info().item_shape),
            "tf_gamma": adapter.tf_gamma,
            "model_write_seconds": write_seconds,
            "model_load_seconds": load_seconds,
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
        generator = torch.Generator().manual_seed(seed)

        # 1. batch sweep per precision
        sweep = []
        for precision in precisions:
            for batch in batches:
                sets = [
                    adapter.one_hot(torch.randint(0, 4, (batch, window), generator=generator, dtype=torch.uint8))
                    for _ in range(2)
                ]
                calls = 0

                def forward(sets=sets, precision=precision, model=adapter.model) -> None:
                    nonlocal calls
                    with torch.inference_mode(), autocast_for(dev, precision):
                        model(sets[calls % 2], return_only_embeddings=True)
                    calls += 1

                if cuda:
                    torch.cuda.reset_peak_memory_stats(dev)
                times = None
                try:
                    times = time_calls(forward, dev, min_seconds=min_seconds)
                except torch.cuda.OutOfMemoryError:
                    pass  # freed below, once the exception (and the frames it holds) is gone
                if times is None:
                    sweep.append({"precision": precision, "batch": batch, "oom": True})
                    del sets, forward
                    free_memory(dev)
                    break  # larger batches will not fit either
                seconds = statistics.median(times)
                sweep.append(
                    {
                        "precision": precision,
                        "batch": batch,
                        "calls": len(times),
                        "seconds_per_batch": seconds,
                        "windows_per_s": batch / seconds,
                        "tflop_per_s": batch / seconds * tflop if tflop else None,
                        "peak_memory_gb": torch.cuda.max_memory_allocated(dev) / 1e9 if cuda else None,
                    }
                )
                del sets, forward
                free_memory(dev)
        result["sweep"] = sweep
        best = {}
        for precision in precisions:
            rows = [r for r in sweep if r["precision"] == precision and not r.get("oom")]
            if rows:
                best[precision] = max(rows, key=lambda r: r["windows_per_s"])
        result["best"] = best
        if "fp32" in best and "bf16" in best:
            result["bf16_over_fp32_best"] = best["bf16"]["windows_per_s"] / best["fp32"]["windows_per_s"]
            per_batch = {}
            for row in sweep:
                if row["precision"] == "bf16" and not row.get("oom"):
                    twin = [
                        r for r in sweep if r["precision"] == "fp32" and r["batch"] == row["batch"] and not r.get("oom")
                    ]
                    if twin:
                        per_batch[str(row["batch"])] = row["windows_per_s"] / twin[0]["windows_per_s"]
            result["bf16_over_fp32_per_batch"] = per_batch

        # 2. bf16 against fp32 on the same windows
        x = adapter.one_hot(torch.randint(0, 4, (deviation_batch, window), generator=generator, dtype=torch.uint8))
        with torch.inference_mode():
            with strict_fp32():
                ref = adapter.model(x, return_only_embeddings=True).float()
            with autocast_for(dev, "bf16"):
                low = adapter.model(x, return_only_embeddings=True).float()
            diff = (low - ref).abs()
            relative = diff / ref.abs().clamp_min(torch.finfo(torch.float32).tiny)
            result["bf16_vs_fp32"] = {
                "windows": deviation_batch,
                "max_abs_over_max_abs_fp32": (diff.max() / ref.abs().max()).item(),
                "median_relative_error": relative.flatten().median().item(),
                "relative_l2": (diff.norm() / ref.norm()).item(),
                "reference": "fp32 with TF32 off",
            }
        del x, ref, low, diff, relative, adapter
        free_memory(dev)

        # 3. the runner path over windows of a random genome
        if runner_windows:
            lengths = {"chr1": max(4 * window, 1_000_000), "chr2": max(3 * window, 800_000)}
            genome = write_random_genome(root / "genome.fa", lengths, seed)
            table = root / "windows.parquet"
            random_windows(lengths, runner_windows, window, seed).to_parquet(table)
            runs = []
            for workers in dict.fromkeys(runner_workers):
                for mode in runner_modes:
                    out = root / f"cache-{mode}-{workers}.zarr"
                    runs.append(runner_path(model_dir, genome, table, dev, mode, workers, out))
                    shutil.rmtree(out, ignore_errors=True)  # a full-size cache is ~5.5 MB per window
            for run in runs:
                run["tflop_per_s"] = run["windows_per_s"] * tflop if tflop else None
            result["runner"] = runs
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


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
            "threads": torch.get_num_threads(),
            "reference_seconds_per_window": list(CPU_FULL_SECONDS_PER_WINDOW),
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
                ["path", "workers", "precision", "windows", "windows/s", "GPU busy", "NVML util", "TFLOP/s"],
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
        dev = gpu.get("bf16_vs_fp32", {})
        target_rows = [
            [
                "bf16 / fp32 windows/s (best batch of each)",
                gpu.get("bf16_over_fp32_best"),
                f"≥ {TARGET_BF16_OVER_FP32:g}×",
                verdict(gpu.get("bf16_over_fp32_best"), TARGET_BF16_OVER_FP32),
            ],
            [
                f"bf16 windows/s, forward, batch {best.get('bf16', {}).get('batch')}",
                bf16_best,
                f"≥ {TARGET_WINDOWS_PER_S:g} (one H100)",
                verdict(bf16_best, TARGET_WINDOWS_PER_S),
            ],
        ]
        for run in runs:
            name = f"{run['mode']}, {run['num_workers']} workers"
            target_rows.append(
                [
                    f"runner windows/s ({name})",
                    run["windows_per_s"],
                    f"≥ {TARGET_WINDOWS_PER_S:g} (one H100)",
                    verdict(run["windows_per_s"], TARGET_WINDOWS_PER_S),
                ]
            )
            target_rows.append(
                [
                    f"GPU busy ({name})",
                    pct(run["busy_fraction"]),
                    f"≥ {pct(TARGET_GPU_BUSY)}",
                    verdict(run["busy_fraction"], TARGET_GPU_BUSY),
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
