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


def to_storage(block: np.ndarray, dtype: str) -> np.ndarray:
    """`block` as stored: float16/float32 as is, bfloat16 as its uint16 bits; each value rounded once to the
    nearest of the storage dtype (float64 sources too)."""
    torch = _torch()
    if block.dtype == np.float64:  # numpy rounds float64 once; torch goes through float32 (a second rounding)
        stored = np.ascontiguousarray(block).astype(layout.numpy_view(dtype))
        return stored.view(np.uint16) if dtype == "bfloat16" else stored
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
