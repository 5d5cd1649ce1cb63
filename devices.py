"""Choosing the torch device, the CPU threads and input workers beside it, and the CPU allocator, the same way for
every stage."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from dogmacache.errors import InputError


def pick_device(name: str) -> torch.device:
    """`auto` = this process's CUDA device (LOCAL_RANK under torchrun) when CUDA is available, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name} asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


CPU_ALLOCATORS = ("keep", "system")  # `keep_freed_memory`, or malloc's own settings
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_KEEP_BYTES = 2**31 - 1  # mallopt takes an int: allocations below 2 GiB come from the heap and stay there


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory in the process instead of returning it to the system.

    torch's CPU allocator has no cache and glibc hands big freed blocks back to the system, so a training step
    page-faults much of its activation memory in again on every step. Measured on a 2-core VM, paper-preset CDT
    training: 6.2 M page faults in three steps and 40-43 s per step with malloc's defaults, 1.5 M and 36-40 s with
    memory kept, peak RSS 5.0 -> 6.1 GB. The cost: the process's resident memory does not shrink after a
    peak, nor does that of processes forked later (DataLoader workers). Returns False (and changes
    nothing) where malloc is not
    glibc's (macOS, musl, Windows).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # glibc builds that cap the mmap threshold (at 32 MiB) refuse the larger value: take the cap then
    threshold_set = bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) or bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20))
    return bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)) and threshold_set


def apply_cpu_allocator(choice: str, device: torch.device) -> str:
    """The allocator setting in effect for this process: "keep" when `choice` is "keep", the device is the CPU
    and glibc took the setting; "system" otherwise. Unknown choices are an InputError."""
    if choice not in CPU_ALLOCATORS:
        raise InputError(f"cpu allocator {choice!r} is not one of {list(CPU_ALLOCATORS)}")
    kept = choice == "keep" and device.type == "cpu" and keep_freed_memory()
    return "keep" if kept else "system"


CGROUP_ROOT = Path("/sys/fs/cgroup")  # where the process's (a container's own) cgroup is mounted


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of the cgroup mounted at `root`, in cores (quota / period), or None without one: cgroup v2's
    `cpu.max` ("QUOTA PERIOD", or "max PERIOD" for none), else cgroup v1's `cpu.cfs_quota_us` / `cpu.cfs_period_us`
    (quota -1 for none) under `cpu/` or `cpu,cpuacct/`. Unreadable or malformed files count as no limit."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else _cores(int(quota), int(period))
    except (OSError, ValueError):
        pass
    for folder in ("cpu", "cpu,cpuacct"):
        try:
            quota = int((root / folder / "cpu.cfs_quota_us").read_text())
            period = int((root / folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return _cores(quota, period)
    return None


def _cores(quota: int, period: int) -> float | None:
    return quota / period if quota > 0 and period > 0 else None


def usable_cores(affinity: set[int] | None = None, cgroup_root: Path = CGROUP_ROOT) -> int:
    """How many cores this process may really use: the CPUs it may run on (`os.sched_getaffinity`; `os.cpu_count`
    where that does not exist) and its cgroup's CPU quota (rounded down: 1.5 cores of quota run one thread at full
    speed, not two), whichever is smaller, at least 1."""
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = len(affinity)
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cores = min(cores, int(limit))
    return max(1, cores)


@dataclass(frozen=True)
class CpuPlan:
    """The CPU work of one process: `workers` input processes (DataLoader workers) beside `threads` torch
    intra-op threads, out of `cores` usable ones."""

    cores: int
    workers: int
    threads: int


def default_workers_threads(device_type: str, cores: int) -> tuple[int, int]:
    """(input workers, torch threads) that add up to at most `cores`. On the CPU the model's forward takes the
    cores and one worker (two from 9 cores) prepares inputs beside it; none on a single core. On a GPU the forward
    needs a thread or two of the CPU and the workers take the rest, at most 4 (runner windows/s on an H100 were
    the same with 2 and 8 workers: README, `make bench-gpu`). Measured on a 2-core machine shared with other busy
    processes: the demo's 180 Enformer windows took 5-10 s at 2 threads (any worker count) and 1.2-1.5 s at 1
    thread with 0 or 1 worker (README, Measured on 2 CPU cores, the threads row): more threads than free cores
    spin-wait against each other."""
    if device_type == "cuda":
        threads = 1 if cores <= 4 else 2
        return max(0, min(4, cores - threads)), threads
    workers = 0 if cores == 1 else 1 if cores <= 8 else 2
    return workers, cores - workers


def env_threads() -> int | None:
    """OMP_NUM_THREADS as a positive integer, when the environment sets it so; None otherwise."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def cpu_plan(
    device_type: str,
    workers: int | None = None,
    threads: int | None = None,
    cores: int | None = None,
    ceiling: int | None = None,
) -> CpuPlan:
    """Input workers and torch threads for a process on `device_type` ("cpu" or "cuda"): `workers` and `threads`
    as given; a thread count unset comes from OMP_NUM_THREADS when set, else `default_workers_threads` for the
    usable cores (`usable_cores` unless `cores` is given), lowered so that workers plus threads stay within the
    cores and never above `ceiling` (torch's current count: a caller's `torch.set_num_threads` holds). A worker
    count unset is the default, lowered to the cores the threads leave free."""
    if workers is not None and workers < 0:
        raise InputError(f"input workers (--num-workers) {workers} must be 0 (prepare inputs in this process) or more")
    if threads is not None and threads < 1:
        raise InputError(f"torch threads (--threads) {threads} must be at least 1, or left out for the default")
    cores = cores or usable_cores()
    default_workers, default_threads = default_workers_threads(device_type, cores)
    threads = threads or env_threads()
    if workers is None:
        workers = default_workers if threads is None else max(0, min(default_workers, cores - threads))
    if threads is None:
        threads = max(1, min(default_threads, cores - workers, ceiling or cores))
    return CpuPlan(cores=cores, workers=workers, threads=threads)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` inside the block, and back to what it was after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
