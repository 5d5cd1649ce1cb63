"""Layers shared by the train stage's models: multi-head attention with `nn.MultiheadAttention`'s parameter
names, the post-norm attention block (self and cross), single-query pooling and per-modality projections.

They run through `kernels` (fast CPU dropout and blocked attention-with-dropout) and never keep (B, H, Nq, Nk)
attention maps unless asked (`forward_with_weights` / `forward_with_attention`). Shapes: B batch, N positions
(Nq queries, Nk keys), D model width, H heads, Dh = D / H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from dogmacache.train.kernels import Dropout, attention, dropout
from einops import einsum, rearrange
from torch import Tensor, nn

__all__ = ["AttentionBlock", "FeedForward", "MultiHeadAttention", "Projection", "QueryPool"]


class MultiHeadAttention(nn.Module):
    """Multi-head attention with `nn.MultiheadAttention`'s parameters and names (bias on, batch first).

    Parameters: in_proj_weight (3D, D), in_proj_bias (3D,), out_proj Linear(D, D): 4*D*D + 4*D.
    Query (Bq, Nq, D) with Bq in {1, B} (a shared query is projected once and broadcast), key_value (B, Nk, D).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout  # on the attention probabilities, as nn.MultiheadAttention
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's initialisation
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, query: Tensor, key_value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (Bq, H, Nq, Dh), k and v (B, H, Nk, Dh)."""
        if query is key_value:  # self-attention: one packed projection
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            d_model = query.shape[-1]
            w_q, w_kv = self.in_proj_weight.split([d_model, 2 * d_model])
            b_q, b_kv = self.in_proj_bias.split([d_model, 2 * d_model])
            q = F.linear(query, w_q, b_q)
            k, v = F.linear(key_value, w_kv, b_kv).chunk(2, dim=-1)
        return tuple(rearrange(t, "b n (h e) -> b h n e", h=self.n_heads) for t in (q, k, v))

    def _merge(self, heads: Tensor) -> Tensor:
        return self.out_proj(rearrange(heads, "b h n e -> b n (h e)"))  # (B, Nq, D)

    def forward(self, query: Tensor, key_value: Tensor) -> Tensor:
        """(Bq, Nq, D), (B, Nk, D) -> (B, Nq, D), without materialising attention weights where SDPA can avoid it."""
        q, k, v = self._heads(query, key_value)
        return self._merge(attention(q, k, v, self.dropout, self.training))  # a shared query is broadcast

    def forward_masked(self, query: Tensor, key_value: Tensor, key_mask: Tensor) -> Tensor:
        """As `forward`, attending only to keys where `key_mask` (B, Nk) is True (padding never attended).
        Every row of `key_mask` needs a True: a sample without any key is the caller's to handle."""
        q, k, v = self._heads(query, key_value)
        q = q.expand(k.shape[0], -1, -1, -1)
        p = self.dropout if self.training else 0.0
        return self._merge(F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :], dropout_p=p))

    def forward_with_weights(self, query: Tensor, key_value: Tensor) -> tuple[Tensor, Tensor]:
        """As `forward`, plus the per-head attention probabilities (B, H, Nq, Nk) (before dropout)."""
        q, k, v = self._heads(query, key_value)
        weights = (q * q.shape[-1] ** -0.5 @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, Nq, Nk)
        out = dropout(weights, self.dropout, self.training) @ v
        return self._merge(out), weights


class FeedForward(nn.Module):
    """Linear(D -> mD) -> GELU -> Dropout -> Linear(mD -> D) -> Dropout, on (..., D)."""

    def __init__(self, d_model: int, hidden: int, dropout: float):
        super().__init__()
        self.expand = nn.Linear(d_model, hidden)
        self.contract = nn.Linear(hidden, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.contract(self.dropout(F.gelu(self.expand(x)))))


class AttentionBlock(nn.Module):
    """Post-norm block for self- and cross-attention alike (x attends to context):
    x = LN1(x + Dropout(MHA(q=x, kv=context))); x = LN2(x + FFN(x)).
    x (Bq, Nq, D) with Bq in {1, B}, context (B, Nk, D) -> (B, Nq, D). Self-attention: pass x as context.
    """

    def __init__(self, d_model: int, n_heads: int, ffn_hidden: int, dropout: float):
        super().__init__()
        self.attention = MultiHeadAttention(d_model, n_heads, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, ffn_hidden, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)

    def _finish(self, x: Tensor, attended: Tensor) -> Tensor:
        x = self.norm1(x + self.dropout(attended))  # a (1, Nq, D) x broadcasts over the batch here
        return self.norm2(x + self.ffn(x))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        return self._finish(x, self.attention(x, context))

    def forward_masked(self, x: Tensor, context: Tensor, key_mask: Tensor) -> Tensor:
        """As `forward`, attending only to keys where `key_mask` (B, Nk) is True."""
        return self._finish(x, self.attention.forward_masked(x, context, key_mask))

    def forward_without_attention(self, x: Tensor) -> Tensor:
        """The block with its attention term removed, LN2(x + FFN(x)): for ablations that must not see the context."""
        return self.norm2(x + self.ffn(x))

    def forward_with_attention(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """As `forward`, plus the per-head attention probabilities (B, H, Nq, Nk)."""
        attended, weights = self.attention.forward_with_weights(x, context)
        return self._finish(x, attended), weights


class QueryPool(nn.Module):
    """One learned query (1, D) attending over a sequence: (B, N, D) -> (B, D), weights (B, H, N).

    Same parameters as `nn.MultiheadAttention(D, H)` plus the query. With a single query the projections fold:
    score_h(n) = q_h . (W_k,h x_n + b_k,h) / sqrt(Dh) = (W_k,h^T q_h) . x_n / sqrt(Dh) + q_h . b_k,h, whose last term
    is the same for every n and cancels in the softmax; and sum_n a_n (W_v x_n + b_v) = W_v (sum_n a_n x_n)
    + (sum_n a_n) b_v. So no (N, D) x (D, D) projection is run.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, d_model))
        self.attention = MultiHeadAttention(d_model, n_heads, dropout)

    def _weights(self, x: Tensor) -> Tensor:
        a = self.attention
        w_q, w_k, _ = rearrange(a.in_proj_weight, "(three h e) d -> three h e d", three=3, h=a.n_heads)
        b_q = rearrange(a.in_proj_bias, "(three h e) -> three h e", three=3, h=a.n_heads)[0]
        q = einsum(w_q, self.query[0], "h e d, d -> h e") + b_q  # (H, Dh)
        key_query = einsum(w_k, q, "h e d, h e -> h d")  # (H, D): W_k,h^T q_h
        scores = einsum(x, key_query, "b n d, h d -> b h n") * q.shape[-1] ** -0.5
        return scores.softmax(dim=-1)  # (B, H, N)

    def _pool(self, x: Tensor, weights: Tensor) -> Tensor:
        a = self.attention
        w_v = rearrange(a.in_proj_weight, "(three h e) d -> three h e d", three=3, h=a.n_heads)[2]
        b_v = rearrange(a.in_proj_bias, "(three h e) -> three h e", three=3, h=a.n_heads)[2]
        weights = dropout(weights, a.dropout, self.training)
        mixed = einsum(weights, x, "b h n, b n d -> b h d")  # (B, H, D)
        heads = einsum(mixed, w_v, "b h d, h e d -> b h e") + weights.sum(-1, keepdim=True) * b_v  # (B, H, Dh)
        return a.out_proj(rearrange(heads, "b h e -> b (h e)"))  # (B, D)

    def forward(self, x: Tensor) -> Tensor:
        return self._pool(x, self._weights(x))

    def forward_with_weights(self, x: Tensor) -> tuple[Tensor, Tensor]:
        weights = self._weights(x)
        return self._pool(x, weights), weights


class Projection(nn.Module):
    """Linear(D_in -> D) -> LayerNorm -> Dropout on (..., D_in)."""

    def __init__(self, in_width: int, d_model: int, dropout: float):
        super().__init__()
        self.linear = nn.Linear(in_width, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.norm(self.linear(x)))
