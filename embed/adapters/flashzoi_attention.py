"""Flashzoi's attention without flash-attn: the same computation in plain PyTorch, under the same parameter names.

borzoi-pytorch builds Flashzoi's transformer layers from flash-attn's `MHA` (its `FlashAttention` module), which
imports CUDA kernels at construction and runs only in fp16/bf16 on an NVIDIA GPU. `RotaryAttention` computes what
that module computes, from the same weights (`mha.Wqkv`, `mha.out_proj`), on any device and in any precision:

- one projection to queries (`heads` heads) then keys and values (`heads // 2` heads each, grouped-query
  attention: query head h reads key/value head h // 2), head width dim / heads;
- rotary position embeddings on the first 128 features of every query and key head, base 20,000, the two halves
  of those features rotated as pairs (feature i with feature i + 64), positions 0..n-1 of the window;
- softmax attention scaled by head_width^-0.5 over the whole window (not causal), then the output projection.

Those constants are what borzoi-pytorch 0.5.1's `FlashAttention` passes to `MHA` (docs/papers.md#borzoi-and-flashzoi).
`use_plain_attention` puts this module where a Borzoi built without flash-attn has its relative-position attention.
"""

from __future__ import annotations

import torch
from dogmacache.errors import ModelError
from torch import nn

ROTARY_FEATURES = 128  # leading features of each query/key head that are rotated
ROTARY_BASE = 20_000.0
QUERY_HEADS_PER_KV_HEAD = 2


class _Projections(nn.Module):
    """flash-attn `MHA`'s parameters under its names, and the attention they compute."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, heads // QUERY_HEADS_PER_KV_HEAD, dim // heads
        if self.kv_heads < 1 or dim % heads or self.head_dim < ROTARY_FEATURES:
            raise ModelError(
                f"a Flashzoi layer of width {dim} with {heads} heads has no {QUERY_HEADS_PER_KV_HEAD}:1 grouped "
                f"heads of at least {ROTARY_FEATURES} features; use an even number of heads of width >= "
                f"{ROTARY_FEATURES} in config.json"
            )
        self.Wqkv = nn.Linear(dim, self.head_dim * (heads + 2 * self.kv_heads))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        d, h, hkv = self.head_dim, self.heads, self.kv_heads
        q, k, v = self.Wqkv(x).split([h * d, hkv * d, hkv * d], dim=-1)
        q, k, v = (t.reshape(b, n, -1, d).transpose(1, 2) for t in (q, k, v))  # (B, heads, n, d)
        cos, sin = rotary_tables(n, x.device, q.dtype)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        k, v = (t.repeat_interleave(h // hkv, dim=1) for t in (k, v))
        out = nn.functional.scaled_dot_product_attention(q, k, v, scale=d**-0.5)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))


class RotaryAttention(nn.Module):
    """Stands where borzoi-pytorch's `FlashAttention` stands; its weights load under the same keys."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.mha = _Projections(dim, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x)


def rotary_tables(n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, ROTARY_FEATURES / 2) cosines and sines of position x frequency, computed in float32, cast to `dtype`."""
    steps = torch.arange(0, ROTARY_FEATURES, 2, device=device, dtype=torch.float32) / ROTARY_FEATURES
    angles = torch.outer(torch.arange(n, device=device, dtype=torch.float32), ROTARY_BASE**-steps)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(..., n, d) heads with their first ROTARY_FEATURES features rotated: pairs (i, i + half) by each angle."""
    half = ROTARY_FEATURES // 2
    x1, x2, rest = x[..., :half], x[..., half:ROTARY_FEATURES], x[..., ROTARY_FEATURES:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


def use_plain_attention(model: nn.Module, dim: int, heads: int) -> nn.Module:
    """Every relative-position `Attention` of a Borzoi replaced by a `RotaryAttention` (in place): a Flashzoi
    built without flash-attn, ready for Flashzoi's weights."""
    from borzoi_pytorch.pytorch_borzoi_transformer import Attention

    swaps = [
        (parent, name) for parent in model.modules() for name, c in parent.named_children() if isinstance(c, Attention)
    ]
    for parent, name in swaps:
        setattr(parent, name, RotaryAttention(dim, heads))
    return model
