"""Embed-stage benchmarks, measured through the runner's own code (`dogmacache bench --only embed`).

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
  on 2 cores, REFERENCE.md section 2); behind `--full-enformer`.
- `bench_embed`: the section as `dogmacache bench` runs it.

TFLOP/s assume 3.26 TFLOP per full-size window forward (REFERENCE.md section 2, torch's flop counter);
the count is redone on the device where the flop counter runs, and reported beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import io
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from dogmacache.devices import pick_device
from dogmacache.embed.runner import EmbedConfig, autocast_for, embed_stream, load, run_embed

ENFORMER_TFLOP_PER_WINDOW = 3.26  # full size, one 196,608 bp window, forward (REFERENCE.md section 2)
FULL_WINDOW_BP = 196_608
CPU_FULL_SECONDS_PER_WINDOW = (27.5, 29.6)  # REFERENCE.md section 2, 2 CPU cores, fp32
TARGET_BF16_OVER_FP32 = 2.0  # bf16 autocast throughput over fp32, full-size Enformer on a GPU
TARGET_GPU_BUSY = 0.80  # fraction of the runner's wall time the GPU spends in forward passes
TARGET_WINDOWS_PER_S = 100.0  # full-size windows per second on one H100
GPU_BATCHES = (1, 2, 4, 8, 16, 32)


# ---- inputs ------------------------------------------------------------------------------------------------
def embed_options(**overrides: Any) -> argparse.Namespace:
    """`dogmacache embed`'s parsed defaults (every adapter's options included), with `overrides` set."""
    from dogmacache.embed import cli as embed_cli

    parser = argparse.ArgumentParser()
    embed_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["embed", "--input", "-", "--modality", "dna", "--model", "enformer", "--out", "-"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def write_random_enformer(directory: str | os.PathLike, seed: int = 0, **hparams: Any) -> Path:
    """A random Enformer (EnformerConfig defaults = full size, overridden by `hparams`) in the layout the
    adapter loads: config.json with every EnformerConfig argument, and pytorch_model.bin (a state dict)."""
    from enformer_pytorch import Enformer
    from enformer_pytorch.config_enformer import EnformerConfig

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Enformer(EnformerConfig(**hparams))
    arguments = {n: p.default for n, p in inspect.signature(EnformerConfig.__init__).parameters.items()
                 if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD}  # fmt: skip
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
            lines = np.concatenate([seq[:full].reshape(-1, width), np.full((full // width, 1), ord("\n"), np.uint8)],
                                   axis=1)  # fmt: skip
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
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int = 1, min_calls: int = 3,
               min_seconds: float = 1.0, max_calls: int = 50) -> list[float]:  # fmt: skip
    """Seconds of each call of `fn` after `warmup` untimed calls: CUDA events on a GPU, the host clock
    otherwise; at least `min_calls` calls and, up to `max_calls`, at least `min_seconds` in all."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    while len(times) < min_calls or (sum(times) < min_seconds and len(times) < max_calls):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


class ForwardTimer:
    """Time spent inside an adapter class's `embed` (the model's forward on a batch) while patched in:
    CUDA events around each call on a GPU (summed once the run is over), the host clock on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.host_seconds = 0.0
        self.calls = 0
        self.items = 0

    @contextlib.contextmanager
    def patch(self, cls: type) -> Iterator[ForwardTimer]:
        original = cls.embed
        timer = self

        def embed(adapter, batch):
            timer.calls += 1
            timer.items += len(batch)
            if timer.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = original(adapter, batch)
                end.record()
                timer.events.append((start, end))
            else:
                t0 = time.perf_counter()
                out = original(adapter, batch)
                timer.host_seconds += time.perf_counter() - t0
            return out

        cls.embed = embed
        try:
            yield self
        finally:
            cls.embed = original

    def busy_seconds(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return sum(start.elapsed_time(end) for start, end in self.events) / 1e3
        return self.host_seconds


class NvmlSampler:
    """GPU utilisation (NVML's percent of time a kernel ran) sampled in a thread; inert without pynvml."""

    def __init__(self, device: torch.device, interval: float = 0.1):
        self.samples: list[int] = []
        self.interval, self.handle, self.error = interval, None, None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as err:  # noqa: BLE001 - NVML is optional: no pynvml, no driver library, no permission
            self.error = f"{type(err).__name__}: {err}"
            return
        self._nvml = pynvml
        props = torch.cuda.get_device_properties(device)
        try:  # by PCI address: NVML numbers all GPUs, CUDA_VISIBLE_DEVICES may renumber them for CUDA
            address = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
            self.handle = pynvml.nvmlDeviceGetHandleByPciBusId(address)
        except Exception:  # noqa: BLE001 - older torch without the PCI fields, or an address NVML rejects
            try:
                index = device.index if device.index is not None else torch.cuda.current_device()
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            except Exception as err:  # noqa: BLE001
                self.error = f"{type(err).__name__}: {err}"
                pynvml.nvmlShutdown()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.samples.append(int(self._nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu))
                self._stop.wait(self.interval)
        except Exception as err:  # noqa: BLE001 - a failed reading ends the sampling, not the benchmark
            self.error = f"{type(err).__name__}: {err}"

    def __enter__(self) -> NvmlSampler:
        if self.handle is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        if self.handle is not None:
            self._nvml.nvmlShutdown()

    def mean_percent(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


@contextlib.contextmanager
def _strict_fp32() -> Iterator[None]:
    """TF32 off for matmuls and convolutions (the fp32 reference), restored afterwards."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


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


def timed_run_embed(config: EmbedConfig, options: argparse.Namespace) -> dict[str, Any]:
    """`run_embed` with its printout kept quiet: items, the runner's own seconds (model load excluded),
    items/s, and the seconds before that (table read, model load, cache creation)."""
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = run_embed(config, options)
    total = time.perf_counter() - t0
    seconds = float(summary["seconds"])  # the runner's clock: after load, until the cache is finalised
    return {"items": summary["items"], "seconds": seconds, "items_per_s": summary["items"] / max(seconds, 1e-9),
            "setup_seconds": round(max(total - seconds, 0.0), 3), "shards": summary["shards"]}  # fmt: skip


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
                return EmbedConfig(input=str(table_path), modality=case.modality, model=case.model, out=out,
                                   model_path=str(models[case.model]), genome=genome, device=device,
                                   num_workers=num_workers, progress=False)  # fmt: skip

            options = embed_options(model=case.model, modality=case.modality)
            timed_run_embed(config(root / f"warmup{i}.parquet", str(root / f"warmup{i}.zarr")), options)
            numbers = timed_run_embed(config(path, str(root / f"cache{i}.zarr")), options)
            rows.append({"label": case.label, "model": case.model, "modality": case.modality,
                         "source_items": len(source), **numbers})  # fmt: skip
        return {"device": device, "num_workers": num_workers, "n_items": n_items, "cases": rows,
                "timing": "run_embed's own seconds: after the model load until the cache is finalised "
                          "(input preparation, forward, shard writes); one 4-item run first, untimed"}  # fmt: skip
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

    config = EmbedConfig(input=str(table), modality="dna", model="enformer", out=str(out), model_path=str(model_dir),
                         genome=str(genome), device=str(device), precision=precision, num_workers=num_workers,
                         progress=False)  # fmt: skip
    options = embed_options()
    timer = ForwardTimer(device)
    with timer.patch(EnformerAdapter), NvmlSampler(device) as nvml:
        if mode == "run_embed":
            numbers = timed_run_embed(config, options)
            items, wall = numbers["items"], numbers["seconds"]
        elif mode == "stream":
            _, rows, adapter = load(config, options, device)
            _, resolved = autocast_for(device, precision)
            t0 = time.perf_counter()
            items = 0
            for embedded, _ in embed_stream(adapter, rows, device=device, precision=resolved,
                                            max_tokens=adapter.default_max_tokens(device),
                                            max_batch=config.max_batch, num_workers=num_workers):  # fmt: skip
                items += len(embedded)
            wall = time.perf_counter() - t0
            del adapter
        else:
            raise ValueError(f"mode {mode!r} is not 'stream' or 'run_embed'")
    busy = timer.busy_seconds()
    _free(device)
    return {"mode": mode, "num_workers": num_workers, "precision": autocast_for(device, precision)[1],
            "windows": items, "batches": timer.calls, "wall_seconds": wall, "windows_per_s": items / max(wall, 1e-9),
            "forward_seconds": busy, "busy_fraction": busy / max(wall, 1e-9),
            "nvml_mean_utilisation_percent": nvml.mean_percent(), "nvml_error": nvml.error}  # fmt: skip


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
    from dogmacache.embed.adapters.enformer import EnformerAdapter

    dev = pick_device(device)
    cuda = dev.type == "cuda"
    full = not hparams
    root = Path(tempfile.mkdtemp(prefix="dogmacache-bench-enformer-", dir=workdir))
    try:
        t0 = time.perf_counter()
        model_dir = write_random_enformer(root / "enformer", seed, **(hparams or {}))
        write_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        adapter = EnformerAdapter(str(model_dir), "dna", embed_options(), dev)
        load_seconds = time.perf_counter() - t0
        window = adapter.window
        counted = count_tflop_per_window(adapter, window)
        tflop = ENFORMER_TFLOP_PER_WINDOW if full else counted
        result: dict[str, Any] = {
            "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
            "full_size": full,
            "parameters": sum(p.numel() for p in adapter.model.parameters()),
            "window_bp": window, "item_shape": list(adapter.info().item_shape), "tf_gamma": adapter.tf_gamma,
            "model_write_seconds": write_seconds, "model_load_seconds": load_seconds,
            "tflop_per_window_assumed": tflop, "tflop_per_window_counted": counted,
            "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32,
                     "float32_matmul_precision": torch.get_float32_matmul_precision()},
            "timing": "forward of a one-hot batch already on the device; CUDA events (host clock on CPU); "
                      "median over >= 3 calls and >= min_seconds after one warm-up call; 2 input sets alternated",
        }  # fmt: skip
        generator = torch.Generator().manual_seed(seed)

        # 1. batch sweep per precision
        sweep = []
        for precision in precisions:
            for batch in batches:
                sets = [adapter.one_hot(torch.randint(0, 4, (batch, window), generator=generator, dtype=torch.uint8))
                        for _ in range(2)]  # fmt: skip
                calls = 0

                def forward(sets=sets, precision=precision, model=adapter.model) -> None:
                    nonlocal calls
                    autocast, _ = autocast_for(dev, precision)
                    with torch.inference_mode(), autocast:
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
                    _free(dev)
                    break  # larger batches will not fit either
                seconds = statistics.median(times)
                sweep.append({
                    "precision": precision, "batch": batch, "calls": len(times), "seconds_per_batch": seconds,
                    "windows_per_s": batch / seconds,
                    "tflop_per_s": batch / seconds * tflop if tflop else None,
                    "peak_memory_gb": torch.cuda.max_memory_allocated(dev) / 1e9 if cuda else None,
                })  # fmt: skip
                del sets, forward
                _free(dev)
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
                    twin = [r for r in sweep if r["precision"] == "fp32" and r["batch"] == row["batch"]
                            and not r.get("oom")]  # fmt: skip
                    if twin:
                        per_batch[str(row["batch"])] = row["windows_per_s"] / twin[0]["windows_per_s"]
            result["bf16_over_fp32_per_batch"] = per_batch

        # 2. bf16 against fp32 on the same windows
        x = adapter.one_hot(torch.randint(0, 4, (deviation_batch, window), generator=generator, dtype=torch.uint8))
        with torch.inference_mode():
            with _strict_fp32():
                ref = adapter.model(x, return_only_embeddings=True).float()
            with autocast_for(dev, "bf16")[0]:
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
        _free(dev)

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


def bench_enformer_full_cpu(n_windows: int = 2, num_workers: int = 0, seed: int = 0,
                            workdir: str | None = None) -> dict[str, Any]:  # fmt: skip
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
        run = runner_path(model_dir, genome, table, torch.device("cpu"), "run_embed", num_workers,
                          root / "cache.zarr", precision="fp32")  # fmt: skip
        return {**run, "seconds_per_window": run["wall_seconds"] / max(run["windows"], 1),
                "forward_seconds_per_window": run["forward_seconds"] / max(run["windows"], 1),
                "model_write_seconds": write_seconds, "threads": torch.get_num_threads(),
                "reference_seconds_per_window": list(CPU_FULL_SECONDS_PER_WINDOW)}  # fmt: skip
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
        result["gpu"] = bench_enformer_device("cuda", batches=gpu_batches, runner_windows=gpu_windows,
                                              runner_workers=workers, workdir=workdir)  # fmt: skip
    return result
