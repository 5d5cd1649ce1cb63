"""Choosing the torch device, the CPU threads and input workers beside it, and the CPU allocator, the same way for
every stage."""

from __future__ import annotations

import contextlib
import os
import time
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
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(
            f"device {name!r} is not one torch knows; expected auto, cpu, cuda or cuda:N (--device, or [train] device)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"device {name} asked for, but torch sees no CUDA device; use cpu (--device cpu, or for train "
            "--set train.device=cpu)"
        )
    return device


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


CGROUP_ROOT = Path("/sys/fs/cgroup")  # where the cgroup hierarchy is mounted (in a container, its own cgroup)
PROC_CGROUP = Path("/proc/self/cgroup")  # this process's cgroup path under that mount, per hierarchy


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The CPU quota of this process's cgroup, in cores (quota / period), or None without one: the smallest quota
    of its own cgroup (named in `proc_cgroup`: a systemd scope or service with CPUQuota, a container sharing the
    host's cgroup namespace) and every cgroup above it up to `root`, which is all a container with its own
    namespace sees. cgroup v2's `cpu.max` ("QUOTA PERIOD", or "max PERIOD" for none), else cgroup v1's
    `cpu.cfs_quota_us` / `cpu.cfs_period_us` (quota -1 for none) under `cpu/` or `cpu,cpuacct/`. Unreadable or
    malformed files count as no limit."""
    limits = [_folder_limit(folder) for folder in _cgroup_folders(root, proc_cgroup)]
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def _cgroup_folders(root: Path, proc_cgroup: Path) -> list[Path]:
    """The cgroup folders whose CPU quota applies to this process: its own (v2's, and v1's cpu controller's) and
    each one above it, up to the mount `root` (always included)."""
    folders = [root, root / "cpu", root / "cpu,cpuacct"]
    try:  # cgroup names are bytes: one that is not UTF-8 is read as written, never an error
        lines = proc_cgroup.read_bytes().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        return folders
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        controllers = set(parts[1].split(","))
        if parts[0] == "0" and parts[1] == "":  # v2: one unified hierarchy
            bases = [root]
        elif "cpu" in controllers:  # v1: the cpu controller's hierarchy
            bases = [root / "cpu", root / "cpu,cpuacct"]
        else:
            continue
        if ".." in Path(parts[2]).parts:  # a cgroup outside this namespace's root: not one under the mount
            continue
        relative = Path(os.path.normpath(parts[2])).relative_to("/")
        for base in bases:
            own = base / relative
            while own != base and base in own.parents:
                folders.append(own)  # where it does not exist (a namespaced mount), nothing is read there
                own = own.parent
    return list(dict.fromkeys(folders))


def _folder_limit(folder: Path) -> float | None:
    """One cgroup folder's CPU quota in cores: v2's `cpu.max`, else v1's quota / period files; None without."""
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else _cores(int(quota), int(period))
    except (OSError, ValueError):
        pass
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return _cores(quota, period)


def _cores(quota: int, period: int) -> float | None:
    return quota / period if quota > 0 and period > 0 else None


def affinity() -> set[int]:
    """The CPUs this process may run on (`os.sched_getaffinity`; all of `os.cpu_count` where that does not exist)."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def usable_cores(cpus: set[int] | None = None, cgroup_root: Path = CGROUP_ROOT) -> int:
    """How many cores this process may really use: the CPUs it may run on (`os.sched_getaffinity`; `os.cpu_count`
    where that does not exist) and its cgroup's CPU quota (rounded down: 1.5 cores of quota run one thread at full
    speed, not two), whichever is smaller, at least 1."""
    cores = len(cpus if cpus is not None else affinity())
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cores = min(cores, int(limit))
    return max(1, cores)


def cores_for(share: int = 1, cores: int | None = None) -> int:
    """This process's cores when `share` processes of one run split the machine's (`cores`, default
    `usable_cores()`), at least 1."""
    return max(1, (cores or usable_cores()) // max(1, share))


@dataclass(frozen=True)
class CpuPlan:
    """The CPU work of one process: `workers` input processes (DataLoader workers) beside `threads` torch
    intra-op threads, out of `cores` usable ones."""

    cores: int
    workers: int
    threads: int
    busy: float | None = None  # of `watched` CPUs, those other processes kept busy when the plan was made
    watched: int | None = None  # the CPUs watched (None: not watched, or `busy` given)


def default_workers_threads(device_type: str, cores: int, cheap_inputs: bool = False) -> tuple[int, int]:
    """(input workers, torch threads) that add up to at most `cores` (the cores free for this process). On the CPU
    the model's forward takes the cores; inputs are prepared in the process up to 2 cores, and one worker (two from
    9 cores) prepares them beside the forward above that. On a GPU the forward needs a thread or two of the CPU and
    the workers take the rest, at most 4 (runner windows/s on an H100 were the same with 2 and 8 workers: README,
    `make bench-gpu`). `cheap_inputs` (an adapter whose items cost less to prepare than to pass between processes):
    no worker, and on the CPU its core goes to the threads.

    Measured on 2 cores (README, Measured on 2 CPU cores, the input workers and torch threads row), the demo's 180
    Enformer windows: idle, 0 workers + 2 threads 0.765 s, 1 worker + 1 thread 1.29 s, 0 + 1 1.17 s; with one busy
    process beside it 3.31, 1.28 and 1.15 s. More threads than free cores spin-wait against each other, so
    `cpu_plan` gives this the cores other processes leave free (`CoreWatch`)."""
    if device_type == "cuda":
        threads = 1 if cores <= 4 else 2
        return (0 if cheap_inputs else max(0, min(4, cores - threads))), threads
    workers = 0 if cheap_inputs or cores <= 2 else 1 if cores <= 8 else 2
    return workers, cores - workers


PROC_STAT = Path("/proc/stat")
PROBE_SECONDS = 0.1  # how long `cpu_plan` watches the cores before choosing its threads
GIVE_UP_CORE = 0.25  # a core counts as taken once other processes use more than this share of it


def cpu_jiffies(cpus: set[int], stat: Path = PROC_STAT) -> tuple[int, int] | None:
    """(busy, total) CPU time since boot, in clock ticks, summed over the `cpuN` lines of /proc/stat for `cpus`.
    Busy is everything but idle and iowait: user, nice, system, irq, softirq and steal (time the hypervisor gave
    to other machines counts as taken). None off Linux, where a CPU asked for has no line (offline, or a container
    that numbers its CPUs its own way), or where the file does not read as expected."""
    busy = total = 0
    seen = set()
    try:
        for line in stat.read_text().splitlines():
            name, *fields = line.split() or [""]
            if not name.startswith("cpu"):
                break
            if name == "cpu" or int(name[3:]) not in cpus:
                continue
            ticks = [int(x) for x in fields[:8]]
            busy += sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)
            total += sum(ticks)
            seen.add(int(name[3:]))
    except (OSError, ValueError, IndexError):
        return None
    return (busy, total) if seen == set(cpus) and total else None


class CoreWatch:
    """Watches the CPUs this process may run on from its creation until `busy()`: how many of them other processes
    kept busy meanwhile. A run creates it before loading its model, so the watching costs time only where the load
    takes less than PROBE_SECONDS (then it sleeps the rest); the first answer is kept, so every plan made from one
    watch agrees."""

    def __init__(self, cpus: set[int] | None = None, stat: Path = PROC_STAT):
        self.cpus, self.stat = (cpus if cpus is not None else affinity()), stat
        self.start = cpu_jiffies(self.cpus, stat), time.process_time(), time.perf_counter()
        self.answer: tuple[float | None] | None = None  # (cores busy elsewhere,) once asked

    @property
    def watched(self) -> int:
        return len(self.cpus)

    def busy(self, seconds: float = PROBE_SECONDS) -> float | None:
        """Cores other processes kept busy since the watch began (at least `seconds` ago: sleeps the rest): the
        busy share of the watched CPUs times their count, less this process's own CPU time in that while (all its
        threads; not its child processes). None where /proc/stat cannot tell."""
        if self.answer is None:
            self.answer = (self._measure(seconds),)
        return self.answer[0]

    def _measure(self, seconds: float) -> float | None:
        before, own, wall = self.start
        if before is None:
            return None
        time.sleep(max(0.0, seconds - (time.perf_counter() - wall)))
        after = cpu_jiffies(self.cpus, self.stat)
        own, wall = time.process_time() - own, time.perf_counter() - wall
        if after is None or after[1] <= before[1]:
            return None
        share = (after[0] - before[0]) / (after[1] - before[1])
        return max(0.0, share * self.watched - own / max(wall, 1e-9))


def free_cores(cores: int, busy: float | None, watched: int | None = None) -> int:
    """Of `cores` usable ones, those other processes leave free, where they keep `busy` of `watched` CPUs busy
    (default: `cores`; more under a cgroup quota below the CPUs the process may run on, where the quota's cores
    stay free while the idle CPUs outnumber them): a CPU is given up once they keep more than GIVE_UP_CORE of one
    busy; at least 1."""
    if busy is None:
        return cores
    return max(1, min(cores, int((watched or cores) - busy + GIVE_UP_CORE)))


def busy_note(plan: CpuPlan, flag: str) -> str | None:
    """A line saying that `plan` gave cores up to other processes (None where it gave none up); `flag` is how the
    user chooses the thread count instead."""
    if plan.busy is None or free_cores(plan.cores, plan.busy, plan.watched) == plan.cores:
        return None
    return (
        f"torch threads: {plan.threads}, input workers: {plan.workers} (other processes kept {plan.busy:.1f} of "
        f"{plan.watched or plan.cores} CPUs busy; {flag} chooses)"
    )


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
    cheap_inputs: bool = False,
    busy: float | None = None,
    watch: CoreWatch | None = None,
    share: int = 1,
) -> CpuPlan:
    """Input workers and torch threads for a process on `device_type` ("cpu" or "cuda"): `workers` and `threads`
    as given; a thread count unset comes from OMP_NUM_THREADS when set, else `default_workers_threads` for the
    cores other processes leave free, lowered so that workers plus threads stay within them and never above
    `ceiling` (torch's current count: a caller's `torch.set_num_threads` holds). A worker count unset is the
    default, lowered to the cores the threads leave free.

    The usable cores are `usable_cores()` unless `cores` is given, divided among `share` processes of one run
    (torchrun's on one machine, a local dask cluster's workers), which then do not watch the cores: each would
    see the others. Where the threads are left to this function on
    the CPU and more than one could be chosen, the cores are watched (`watch`, begun earlier, else a new one) for at
    least PROBE_SECONDS, unless `busy` gives the cores other processes keep busy (0.0: take them all). Under a
    cgroup CPU quota below the CPUs the process may run on, the free cores are those the idle CPUs leave within
    the quota (`free_cores`)."""
    if workers is not None and workers < 0:
        raise InputError(f"input workers (--num-workers) {workers} must be 0 (prepare inputs in this process) or more")
    if threads is not None and threads < 1:
        raise InputError(f"torch threads (--threads) {threads} must be at least 1, or left out for the default")
    cores = cores_for(share, cores)
    threads = threads or env_threads()
    watched = None
    if busy is None and share <= 1 and threads is None and device_type == "cpu" and cores > 1 and (ceiling or 2) > 1:
        watch = watch or CoreWatch()
        busy, watched = watch.busy(), watch.watched
    free = free_cores(cores, busy, watched)
    default_workers, default_threads = default_workers_threads(device_type, free, cheap_inputs)
    if workers is None:
        workers = default_workers if threads is None else max(0, min(default_workers, cores - threads))
    if threads is None:
        threads = max(1, min(default_threads, free - workers, ceiling or cores))
    return CpuPlan(cores=cores, workers=workers, threads=threads, busy=busy, watched=watched)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` inside the block, and back to what it was after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
