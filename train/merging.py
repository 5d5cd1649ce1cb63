"""CDBridge's splicing-inspired adaptive token merging (docs/papers.md#cdbridge-token-merging), ToMe style: small pure
functions that compute a merge plan once and return `merge` / `unmerge` closures for any tensor.

One round of bipartite matching: the N tokens of a sequence split into sets A and B (random during training,
from a seeded generator; A = even positions, B = odd at evaluation, ToMe's split); each A token finds its most
cosine-similar B token; A tokens whose best score reaches the threshold merge into that partner (size-weighted
mean, sizes start at 1; several A tokens may merge into one B token, as in ToMe). Padded or protected tokens
score -inf on both sides, so they never merge. The threshold comes from a merge rate (the fraction of a
sequence's real tokens that merge away): the score of the k-th best pair, k = round(rate * n_real); ties at the
threshold are broken by position so that exactly k pairs merge.

Unlike ToMe, the merged sequence keeps positional order (a surviving token's slot is its rank among survivors),
so per-position decoders line up; `unmerge` copies each merged token back to every position it absorbed and
restores the length N exactly. Rows of a batch merge different numbers of pairs: the merged tensor is padded to
the largest N' of the batch and `plan.valid` marks the real slots.

Shapes: B batch, N positions, N' merged slots (max over the batch), D width.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

MAX_RATE = 0.5  # one round merges at most half the tokens (every merge removes one A token)


@dataclass(frozen=True)
class MergePlan:
    """A plan for one batch: `merge` (B, N, ...) -> (B, N', ...) and `unmerge` (B, N', ...) -> (B, N, ...)."""

    slot: Tensor  # (B, N) long: the merged slot each position lands in
    kept: Tensor  # (B, N) bool: the position survives as its own slot (False = absorbed into a partner)
    sizes: Tensor  # (B, N') float: positions per merged slot (0 = padding slot)
    valid: Tensor  # (B, N') bool: a real merged slot
    n_merged: Tensor  # (B,) long: merged pairs, so N'_b = N - n_merged_b (padding included in N)
    merge: Callable[[Tensor], Tensor]
    unmerge: Callable[[Tensor], Tensor]
    in_a: Tensor | None = None  # (B, N) bool: the positions that could be absorbed (set A); None: not recorded


def split_ab(n_tokens: int, batch: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """(B, N) bool, True = set A. With a generator: a random half of each row (floor(N / 2) tokens in A);
    without: the even positions (ToMe's fixed split)."""
    if generator is None:
        return (torch.arange(n_tokens, device=device) % 2 == 0).expand(batch, n_tokens)
    order = torch.rand(batch, n_tokens, generator=generator, device=generator.device).argsort(dim=1).to(device)
    in_a = torch.zeros(batch, n_tokens, dtype=torch.bool, device=device)
    return in_a.scatter(1, order[:, : n_tokens // 2], True)


def best_partners(metric: Tensor, in_a: Tensor, mergeable: Tensor) -> tuple[Tensor, Tensor]:
    """Each position's best cosine score to a B token and that token's position: (B, N) float, (B, N) long.
    Scores are -inf for B positions, unmergeable A positions and A tokens without a mergeable B token."""
    unit = metric / metric.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    scores = unit @ unit.transpose(1, 2)  # (B, N, N): row i = A candidate, column j = B candidate
    allowed = (in_a & mergeable)[:, :, None] & (~in_a & mergeable)[:, None, :]
    scores = scores.masked_fill(~allowed, -math.inf)
    return scores.max(dim=-1)


def merge_count(rate: Tensor, n_real: Tensor) -> Tensor:
    """(B,) tokens to merge: round(rate * n_real), at most half the real tokens (rounding half to even would take
    ceil(n/2) of an odd n at rate 0.5: 2 of 3, 4 of 7)."""
    return torch.minimum(torch.round(rate * n_real).long(), n_real.long() // 2)


def threshold_for_rate(best: Tensor, rate: Tensor, n_real: Tensor) -> Tensor:
    """(B,) thresholds: the k-th best finite score per row, k = `merge_count(rate, n_real)` (+inf when k = 0)."""
    ranked = best.sort(dim=1, descending=True).values  # -inf last
    n_finite = torch.isfinite(ranked).sum(dim=1)
    k = torch.minimum(merge_count(rate, n_real), n_finite)
    picked = ranked.gather(1, (k - 1).clamp(min=0)[:, None])[:, 0]
    return torch.where(k > 0, picked, torch.full_like(picked, math.inf))


def plan_from_pairs(absorbed: Tensor, partner: Tensor, sizes: Tensor | None = None) -> MergePlan:
    """A plan from (B, N) bool `absorbed` (A tokens that merge) and (B, N) long `partner` (their B token).
    `sizes` (B, N): positions each token already stands for (default 1)."""
    batch, n_tokens = absorbed.shape
    sizes = torch.ones(batch, n_tokens, device=absorbed.device) if sizes is None else sizes
    kept = ~absorbed
    n_merged = absorbed.sum(dim=1)
    rank = kept.long().cumsum(dim=1) - 1  # a survivor's slot = its rank among survivors: positional order
    slot = torch.where(absorbed, rank.gather(1, partner), rank)
    width = int(n_tokens - n_merged.min()) if batch else n_tokens
    merged_sizes = sizes.new_zeros(batch, width).scatter_add(1, slot, sizes)
    valid = merged_sizes > 0

    if not bool(absorbed.any()):  # identity fast path: nothing merges anywhere in the batch
        return MergePlan(slot, kept, merged_sizes, valid, n_merged, _identity, _identity)

    def merge(x: Tensor) -> Tensor:
        """(B, N, ...) -> (B, N', ...): size-weighted mean of the positions in each slot (0 in padding slots)."""
        weights = sizes.reshape(batch, n_tokens, *([1] * (x.dim() - 2))).to(x.dtype)
        index = slot.reshape(batch, n_tokens, *([1] * (x.dim() - 2))).expand_as(x)
        total = x.new_zeros(batch, width, *x.shape[2:]).scatter_add(1, index, x * weights)
        denominator = merged_sizes.clamp(min=1).reshape(batch, width, *([1] * (x.dim() - 2))).to(x.dtype)
        return total / denominator

    def unmerge(y: Tensor) -> Tensor:
        """(B, N', ...) -> (B, N, ...): every position gets the slot it landed in."""
        index = slot.reshape(batch, n_tokens, *([1] * (y.dim() - 2))).expand(batch, n_tokens, *y.shape[2:])
        return y.gather(1, index)

    return MergePlan(slot, kept, merged_sizes, valid, n_merged, merge, unmerge)


def merge_plan(
    metric: Tensor,
    rate: Tensor | float,
    mergeable: Tensor | None = None,
    generator: torch.Generator | None = None,
    sizes: Tensor | None = None,
) -> MergePlan:
    """The plan for one round on `metric` (B, N, D): a fraction `rate` (scalar or (B,), in [0, 0.5]) of each
    row's mergeable tokens merges away. `mergeable` (B, N) False = padded or protected (never merges); a
    `generator` draws a random A/B split (training), none uses the fixed even/odd split (evaluation). The
    matching is not differentiable (as in ToMe); gradients flow through `merge`'s weighted means."""
    batch, n_tokens, _ = metric.shape
    device = metric.device
    mergeable = torch.ones(batch, n_tokens, dtype=torch.bool, device=device) if mergeable is None else mergeable
    rate = torch.as_tensor(rate, dtype=torch.float32, device=device).expand(batch)
    if bool(((rate < 0) | (rate > MAX_RATE)).any()):
        raise ValueError(f"merge rate {rate.tolist()} is outside [0, {MAX_RATE}]; clip it before planning")
    with torch.no_grad():
        in_a = split_ab(n_tokens, batch, generator, device)
        best, partner = best_partners(metric.detach().float(), in_a, mergeable)
        threshold = threshold_for_rate(best, rate, mergeable.sum(dim=1))
        # pairs at or above the threshold merge; ties at the threshold are broken by position, so exactly
        # k pairs merge (collapsed features would otherwise tie and merge far more than the rate asks)
        order = best.argsort(dim=1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(n_tokens, device=device).expand(batch, -1))
        k = (torch.isfinite(best) & (best >= threshold[:, None])).sum(dim=1, keepdim=True)
        k = torch.minimum(k, merge_count(rate, mergeable.sum(dim=1))[:, None])
        absorbed = torch.isfinite(best) & (rank < k)
    return dataclasses.replace(plan_from_pairs(absorbed, partner, sizes), in_a=in_a)


def sample_rate(mean: float, std: float, batch: int, generator: torch.Generator | None) -> Tensor:
    """(B,) merge rates: N(mean, std) clipped to [0, 0.5] with a generator (training), `mean` without (evaluation)."""
    if generator is None or std == 0:
        return torch.full((batch,), float(mean))
    draw = mean + std * torch.randn(batch, generator=generator, device=generator.device).cpu()
    return draw.clamp(0.0, MAX_RATE)


def _identity(x: Tensor) -> Tensor:
    return x
