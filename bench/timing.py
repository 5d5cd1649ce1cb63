"""Timing instruments for the device benchmarks: per-call timing (CUDA events on a GPU, the host clock
otherwise), the time an adapter spends inside its forward calls, NVML's utilisation sampled in a thread, the
strict-fp32 reference switch, and freeing device memory between measurements."""

from __future__ import annotations

import contextlib
import gc
import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from dogmacache.embed.runner import EmbedConfig


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], Any],
    device: torch.device,
    warmup: int = 1,
    min_calls: int = 3,
    min_seconds: float = 1.0,
    max_calls: int = 50,
) -> list[float]:
    """Seconds of each call of `fn` after `warmup` untimed calls: CUDA events on a GPU, the host clock
    otherwise; at least `min_calls` calls and, up to `max_calls`, at least `min_seconds` in all."""
    for _ in range(warmup):
        fn()
    sync(device)
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


def median_seconds(fn: Callable[[], Any], device: torch.device, calls: int) -> float:
    """Median host-clock seconds of `calls` calls after one warm-up, the device synchronised around each."""
    fn()
    sync(device)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


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
def strict_fp32() -> Iterator[None]:
    """TF32 off for matmuls and convolutions (the fp32 reference), restored afterwards."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def demo_config(root, models, model: str, modality: str, table, out, **kwargs) -> EmbedConfig:
    """`dogmacache embed` of the demo's tiny `model` (`models[model]`, a folder) over `table` into `out`, quiet (no
    progress bar), with the genome of the demo recipe under `root` for DNA; `kwargs` set the rest (the device is
    the CPU unless they say otherwise)."""
    from dogmacache.embed.runner import EmbedConfig

    return EmbedConfig(
        input=str(table),
        modality=modality,
        model=model,
        out=str(out),
        model_path=str(models[model]),
        genome=str(Path(root) / "recipe" / "genome.fa") if modality == "dna" else None,
        progress=False,
        **{"device": "cpu", **kwargs},
    )


def timed_run_embed(config: EmbedConfig) -> dict[str, Any]:
    """`run_embed` with its printout kept quiet: items, the runner's own seconds (model load excluded),
    items/s, and the seconds before that (table read, model load, cache creation)."""
    from dogmacache.embed.runner import run_embed

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
        "num_workers": summary.get("num_workers"),  # what the run used (None: it had nothing left to embed)
        "torch_threads": summary.get("torch_threads"),
    }
