"""Choosing the torch device, the same way for every stage."""

from __future__ import annotations

import os

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
