"""Fast dtype conversion and finiteness checks for embedding blocks (B, ...).

numpy converts float32 <-> float16 an order of magnitude slower than torch's vectorised kernels
(measured on 2 cores: 0.42 s vs 0.04 s for 16 Enformer windows), and the writer runs this on every shard.
"""

from __future__ import annotations

import numpy as np
from dogmacache.cache import layout

_FLOATS = ("float16", "float32", "bfloat16")


def _torch():
    import torch  # imported on first use: `cache info` and friends need not pay for it

    return torch


def _as_tensor(block: np.ndarray):
    torch = _torch()
    block = np.ascontiguousarray(block)
    if block.dtype.name == "bfloat16":  # ml_dtypes: same bits as torch.bfloat16
        return torch.from_numpy(block.view(np.int16)).view(torch.bfloat16)
    if block.dtype == np.float64 or block.dtype.kind in "iub":
        block = block.astype(np.float32)
    return torch.from_numpy(block)


def nonfinite_rows(block: np.ndarray) -> np.ndarray:
    """Indices of rows (first axis) holding any NaN or Inf."""
    torch = _torch()
    t = _as_tensor(block).reshape(block.shape[0], -1)
    if t.shape[1] == 0:
        return np.zeros(0, dtype=np.int64)
    finite = torch.isfinite(t.amax(dim=1)) & torch.isfinite(t.amin(dim=1))  # amax/amin propagate NaN
    return np.flatnonzero(~finite.numpy())


def float32_round_to_odd(block: np.ndarray) -> np.ndarray:
    """float64 values as float32 rounded toward zero, the last bit set where that dropped anything ("round to
    odd"): a later round-to-nearest cast to a format of at most 22 significant bits (bfloat16's 8) then gives what
    rounding the float64 value once would, where float32's own round to nearest could round a second time."""
    x = np.asarray(block, dtype=np.float64)
    r = x.astype(np.float32)
    with np.errstate(invalid="ignore"):
        away = np.isfinite(x) & (np.abs(r.astype(np.float64)) > np.abs(x))  # rounded away from zero: step back
        r = np.where(away, np.nextafter(r, np.float32(0)), r)
        inexact = np.isfinite(x) & (r.astype(np.float64) != x)
    return np.where(inexact, (r.view(np.int32) | 1).view(np.float32), r)


def to_storage(block: np.ndarray, dtype: str) -> np.ndarray:
    """`block` as stored: float16/float32 as is, bfloat16 as its uint16 bits; each value rounded once to the
    nearest of the storage dtype (float64 sources too)."""
    torch = _torch()
    if block.dtype == np.float64:  # torch (and ml_dtypes, for bfloat16) go through float32: a second rounding
        if dtype == "bfloat16":
            return to_storage(float32_round_to_odd(block), dtype)  # then float32 -> bfloat16 rounds as if once
        stored = np.ascontiguousarray(block).astype(layout.numpy_view(dtype))  # numpy: one rounding
        return stored
    t = _as_tensor(block).to(getattr(torch, dtype))
    if dtype == "bfloat16":
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def from_storage(block: np.ndarray, stored: str, dtype: np.dtype | str | None) -> np.ndarray:
    """Stored rows as the reader asks: in their own dtype (bfloat16 via ml_dtypes) or converted."""
    if dtype is None:
        return block.view(layout.numpy_view(stored)) if stored == "bfloat16" else block
    torch = _torch()
    target = np.dtype(dtype)
    if target.name not in _FLOATS:
        return block.view(layout.numpy_view(stored)).astype(target)
    t = torch.from_numpy(block.view(np.int16)).view(torch.bfloat16) if stored == "bfloat16" else torch.from_numpy(block)
    return t.to(getattr(torch, target.name)).numpy()
