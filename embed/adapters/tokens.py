"""What the token-sequence adapters (ESM-2 and Nucleotide Transformer in `hf_esm.py`, ESM-C in `esmc.py`) share:
the padded id batch, the per-item extras, and the pooling of hidden states over the real tokens.

Shapes: B items, T the batch's longest token count, D the model's width, L the adapter's `max_length`.
"""

from __future__ import annotations

import numpy as np
import torch
from dogmacache.embed.shapes import pad_length


def padded_ids(batch: list[dict[str, np.ndarray]], pad_id: int) -> tuple[torch.Tensor, list[int]]:
    """(B, T) ids padded with `pad_id` on the CPU, and each item's token count. T is the batch's longest, or the
    length the stream asks for (`shapes.pad_length`: a length bucket's batches all have its length)."""
    lengths = [len(item["ids"]) for item in batch]
    ids = torch.full((len(batch), max(max(lengths), pad_length(batch))), pad_id, dtype=torch.long)
    for i, item in enumerate(batch):
        ids[i, : lengths[i]] = torch.from_numpy(item["ids"])
    return ids, lengths


def token_extras(batch: list[dict[str, np.ndarray]], lengths: list[int]) -> dict[str, np.ndarray]:
    """The per-item extras every token adapter records: tokens kept and tokens cut by truncation."""
    return {
        "n_tokens": np.array(lengths, dtype=np.int32),
        "n_truncated": np.array([item["n_truncated"] for item in batch], dtype=np.int32),
    }


def real_mask(real: torch.Tensor, max_length: int) -> np.ndarray:
    """(B, L) bool: the real tokens of a per-position cache's rows (padded to L)."""
    mask = np.zeros((len(real), max_length), dtype=bool)
    mask[:, : real.shape[1]] = real.cpu().numpy()
    return mask


def pool_tokens(hidden: torch.Tensor, real: torch.Tensor, pooling: str, max_length: int) -> torch.Tensor:
    """(B, T, D) hidden states as the cache stores them: `mean` over the real tokens (B, D), `cls` the first
    token (B, D), or `none`, every position with the non-real ones zeroed, padded to (B, L, D)."""
    if pooling == "mean":
        weights = real.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    if pooling == "cls":
        return hidden[:, 0]
    padded = hidden.new_zeros(len(hidden), max_length, hidden.shape[2])
    padded[:, : hidden.shape[1]] = hidden * real.unsqueeze(-1)
    return padded
