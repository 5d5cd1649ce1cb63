"""Outputs from the device to the host, in the storage dtype, checked on the way.

`to_host` casts a batch's outputs to the storage dtype on their device, refuses NaN/Inf and float16 overflow
naming the item (on the device: over the rows on the host the check took 9 ms per full-size Enformer row), and
copies them to the host. `HostCopy` does the same without waiting on CUDA: the cast and the checks are queued on
the device, the copy goes into pinned host memory behind them (`non_blocking`), and `result()` waits for it, so
the stream can launch the next batch's forward before it reads this one (the GPU then computes while the host
assembles and writes). Anywhere else `result()` is `to_host` of the batch, called then. Either way the shard
writer is told not to check the rows again (`CacheWriter.write_shard(..., checked=True)`).
"""

from __future__ import annotations

import numpy as np
import torch
from dogmacache.cache.layout import STORAGE_MAX, numpy_view
from dogmacache.errors import CacheError


def _flags(embedded: torch.Tensor, stored: torch.Tensor, dtype: str) -> torch.Tensor:
    """(2, b) bool on the device: items with NaN/Inf outputs; items finite before the cast to float16 or bfloat16 and
    not after."""
    bad = ~torch.isfinite(embedded).flatten(1).all(1)
    if dtype in ("float16", "bfloat16"):
        overflow = (torch.isinf(stored) & torch.isfinite(embedded)).flatten(1).any(1)
    else:
        overflow = torch.zeros_like(bad)
    return torch.stack([bad, overflow])


def _refuse(flags: np.ndarray, ids: list[str], dtype: str) -> None:
    bad, overflow = flags
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise CacheError(
            f"item {ids[first]!r} has NaN/Inf values in the model's output ({int(bad.sum())} of the {len(ids)} "
            "items of its batch do); nothing of its shard was written. Check that item's input (e.g. an all-N "
            "window), or run the model in float32 (--precision fp32)"
        )
    if overflow.any():
        first = int(np.flatnonzero(overflow)[0])
        raise CacheError(
            f"item {ids[first]!r} has values beyond {dtype}'s range (|x| > {STORAGE_MAX[dtype]:g}); store float32 "
            "instead (--dtype float32)"
        )


def _bits(stored: torch.Tensor, dtype: str) -> torch.Tensor:
    """What is copied: bfloat16 as its int16 bits (numpy has no bfloat16 of its own), others as they are."""
    return stored.view(torch.int16) if dtype == "bfloat16" else stored


def _as_numpy(host: torch.Tensor, dtype: str) -> np.ndarray:
    out = host.numpy()
    return out.view(numpy_view("bfloat16")) if dtype == "bfloat16" else out


def to_host(embedded: torch.Tensor, dtype: str, ids: list[str]) -> np.ndarray:
    """(b, ...) outputs cast to the storage `dtype` on their device, checked, then copied to the host. bfloat16
    comes back as ml_dtypes' bfloat16 (same bits)."""
    stored = embedded.to(getattr(torch, dtype))
    _refuse(_flags(embedded, stored, dtype).cpu().numpy(), ids, dtype)
    return _as_numpy(_bits(stored, dtype).cpu(), dtype)


class HostCopy:
    """One batch's outputs on their way to the host (see the module docstring); `result()` is `to_host`'s array."""

    def __init__(self, embedded: torch.Tensor, dtype: str, ids: list[str]):
        self.dtype, self.ids = dtype, ids
        self._done: np.ndarray | None = None
        self._later: torch.Tensor | None = None
        if embedded.device.type != "cuda":
            self._later = embedded  # converted when asked for: errors then come in row order on every device
            return
        stored = embedded.to(getattr(torch, dtype))
        flags, bits = _flags(embedded, stored, dtype), _bits(stored, dtype)
        self._flags = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True)
        self._host = torch.empty(bits.shape, dtype=bits.dtype, pin_memory=True)  # torch's cache of pinned blocks
        self._flags.copy_(flags, non_blocking=True)
        self._host.copy_(bits, non_blocking=True)
        self._event = torch.cuda.Event()
        self._event.record()

    def result(self) -> np.ndarray:
        if self._later is not None:
            self._done, self._later = to_host(self._later, self.dtype, self.ids), None
        if self._done is None:
            self._event.synchronize()
            _refuse(self._flags.numpy(), self.ids, self.dtype)
            self._done = _as_numpy(self._host, self.dtype)
        return self._done
