"""An item's input digest: the sha256 of exactly what the model sees for it (the adapter's prepared arrays).

Every cache's `item_sha256` holds it beside `ids`, and `--reuse` (`embed/reuse.py`) copies a row of an earlier
cache whose digest and number settings agree. The definition never changes; `tests/test_embed_reuse.py` spells it
out byte for byte, and an adapter's faster `digests` for many rows must give the same bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

_HEADERS: dict[tuple[str, str, tuple[int, ...]], bytes] = {}  # (name, dtype, shape) -> its header bytes


def digest_header(name: str, dtype: str, shape: tuple[int, ...]) -> bytes:
    """The bytes that precede an array's own bytes in `item_digest`: "name|dtype|shape|" (dtype as numpy's
    `dtype.str`, for example "<i8"; shape as a Python tuple prints, a scalar's as (1,))."""
    key = (name, dtype, shape)
    header = _HEADERS.get(key)
    if header is None:
        header = _HEADERS.setdefault(key, f"{name}|{dtype}|{shape}|".encode())
    return header


def item_digest(prepared: Mapping[str, Any]) -> np.ndarray:
    """(32,) uint8 sha256 of one prepared item: per array, in name order, `digest_header` then its bytes (a
    scalar as an array of shape (1,)). Keys starting with "_" (the stream's own) are left out. Every cache's
    `item_sha256` holds it: the definition never changes (`tests/test_embed_reuse.py` spells it out)."""
    h = hashlib.sha256()
    for name in sorted(prepared):
        if name.startswith("_"):
            continue
        value = np.ascontiguousarray(prepared[name])
        h.update(digest_header(name, value.dtype.str, value.shape))
        h.update(value.data if value.ndim == 1 else value.reshape(-1).view(np.uint8))
    return np.frombuffer(h.digest(), dtype=np.uint8)
