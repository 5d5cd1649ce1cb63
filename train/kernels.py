"""Dropout and attention-with-dropout for CPU training, same distribution as torch's, several times faster.

Why: at the paper preset a CDT training step on CPU spent ~23 % of its time in `bernoulli_` (torch draws CPU
dropout masks with a scalar Mersenne Twister, ~20 ns per element) and another ~25 % in the (B, H, Nq, Nk)
attention maps that `scaled_dot_product_attention` has to materialise whenever attention dropout is on
(its CPU flash kernel takes no dropout): softmax, its -inf checks, the dropout mask and its multiply, each a
pass over gigabytes. Here:

- masks come from numpy's SFC64 (`random_raw`, 16 random bits per element, ~0.5 ns per element; a whole
  dropout of the paper's FFN activations, 8 x 2360 x 3072, took 4.7 ns per element against F.dropout's 19.4,
  allocation included), seeded from
  torch's global generator, so `torch.manual_seed` still makes training reproducible. The drop probability
  is rounded to a multiple of 1/65536 (0.3 -> 0.300003) and kept values are scaled by the exact inverse of the
  realised keep probability, so the expectation is preserved exactly;
- `attention` computes softmax(q k^T / sqrt(E)) with dropout, times v, one group of query blocks at a time
  (a few MiB of scores, in the processor's caches) and keeps only q, k, v, the output, one log-sum-exp per query
  and the generator's seed for backward, which recomputes each block's probabilities from the log-sum-exp
  (flash-attention's scheme) and draws the same masks again (cheaper than keeping them: a fresh
  allocation's page faults cost more than the draws). No (B, H, Nq, Nk) tensor is ever alive.
- masks are applied with numpy's vectorised float x bool multiply on the tensors' memory (torch's CPU kernels
  for boolean masks ran ~4x slower here).
- the attention's blocks, and a dropout's draws and masks in pieces, run side by side on torch's intra-op
  thread count of single-threaded workers (`_spread`), not one after another on all threads at once: a block's
  operations are too small to split (each ends waiting for every thread, and on a busy machine for a preempted
  one), and numpy works on one thread. Each worker's generator starts where the one sequential stream would
  stand, so the masks do not depend on the thread count.

On CUDA, and whenever dropout is off (eval, p = 0), torch's own kernels run unchanged: `F.dropout` and
`F.scaled_dot_product_attention`. So does attention under CPU autocast, for dtypes numpy lacks (bfloat16) and
for empty inputs; CPU dropout of a bfloat16 tensor applies these masks with torch's fused kernel.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from dogmacache.devices import torch_threads
from dogmacache.errors import InputError
from torch import Tensor, nn

__all__ = ["Dropout", "attention", "dropout"]

_BITS = 16
_LEVELS = 1 << _BITS
BLOCK_ELEMENTS = 1 << 19  # one block's scores (512 Ki), each block's mask drawn on its own
GROUP_ELEMENTS = 1 << 21  # consecutive blocks computed as one, up to this many scores (8 MiB of float32)
_DRAW_CHUNK = 1 << 22  # masks of big tensors are drawn in pieces of this many elements
_PIECE = 1 << 20  # a dropout's draws and masks, split into tasks of this many elements (a multiple of 4)
_CACHED = 1 << 16  # elements multiplied by the mask and scaled in one go, while in the core's cache
_NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16)  # masks applied by numpy
_BLOCKED_DTYPES = (torch.float32, torch.float64)  # the blocked attention's arithmetic


def _check_p(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise InputError(f"dropout probability {p} is outside [0, 1); use a value such as 0.1 or 0.3")
    if round(p * _LEVELS) >= _LEVELS:
        raise InputError(
            f"dropout probability {p} rounds to 1 at this kernel's 1/{_LEVELS} resolution; "
            f"use p <= {(_LEVELS - 1) / _LEVELS:.6f}"
        )


def _threshold(p: float) -> tuple[int, float]:
    """Drop where the 16-bit draw is < threshold; scale kept values by 1 / P(keep), both exact."""
    threshold = round(p * _LEVELS)
    return threshold, _LEVELS / (_LEVELS - threshold)


def _seed() -> int:
    """A fresh 63-bit seed from torch's global generator (so `torch.manual_seed` governs every mask)."""
    return int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))


def _draw_keep(generator: np.random.SFC64, n: int, threshold: int, out: np.ndarray) -> np.ndarray:
    """n booleans (True = keep) into `out` from the generator's next 16-bit draws, in order."""
    keep = out
    for start in range(0, n, _DRAW_CHUNK):
        m = min(_DRAW_CHUNK, n - start)
        draws = generator.random_raw(-(-m // 4)).view(np.uint16)[:m]  # 4 x 16 random bits per 64-bit word
        np.greater_equal(draws, threshold, out=keep[start : start + m])
    return keep


def _words(n: int) -> int:
    """The 64-bit words `_draw_keep` takes from its generator for n booleans."""
    chunks, rest = divmod(n, _DRAW_CHUNK)
    return chunks * -(-_DRAW_CHUNK // 4) + -(-rest // 4)


_HELPERS: list[tuple[int, ThreadPoolExecutor]] = []  # `_spread`'s helper threads and their count, made on first use
if hasattr(os, "register_at_fork"):  # a forked child has none of its parent's threads: it makes its own
    os.register_at_fork(after_in_child=_HELPERS.clear)
# torch's OpenMP backend keeps the intra-op thread count per thread, so a helper can run single-threaded beside
# torch's threads; its native backend has one count for the process and cannot
_PER_THREAD_COUNT = "parallel backend: OpenMP" in torch.__config__.parallel_info()


def _spread(
    work: Callable[[int, np.random.SFC64 | None], None], tasks: int, words: Sequence[int] = (), seed: int | None = None
) -> None:
    """work(i, generator) for i in range(tasks), spread over torch's intra-op thread count of workers (this thread
    and helpers), each single-threaded and taking the next task when done.

    With a seed, task i gets a generator standing at its first draw of the one SFC64 stream that draws
    `words[0]` 64-bit words for task 0, then `words[1]` for task 1, and so on: the draws are those of one
    generator run through the tasks in order, however the tasks are spread. Why: operations on blocks that fit
    a core's cache are too small to split across threads (each waits for every thread at its end, and on a
    busy machine a preempted thread stalls them all: on 2 cores shared with other work, the paper preset's
    largest attention, forward and backward, took 2.4 to 19 s on 2 threads against 3.3 to 3.4 s on 1), and
    numpy's work (draws, masks) runs on one thread unless spread like this.
    """
    generator = None if seed is None else np.random.SFC64(seed)
    workers = min(torch.get_num_threads() if _PER_THREAD_COUNT else 1, tasks)
    if workers <= 1:
        for i in range(tasks):
            work(i, generator)
        return
    lock, failed = threading.Lock(), threading.Event()
    order = iter(range(tasks))

    def worker() -> None:
        torch.set_num_threads(1)  # this thread's own operations, not torch's shared threads
        while not failed.is_set():
            with lock:
                i = next(order, None)
                if i is None:
                    return
                own = None
                if generator is not None:
                    own = np.random.SFC64(0)
                    own.state = generator.state
                    generator.random_raw(words[i], output=False)
            try:
                with torch.no_grad():  # grad mode is per thread: autograd's backward and forward set it off in theirs
                    work(i, own)
            except BaseException:
                failed.set()
                raise

    if not _HELPERS or _HELPERS[0][0] < workers - 1:
        for _, pool in _HELPERS:
            pool.shutdown(wait=False)
        _HELPERS[:] = [(workers - 1, ThreadPoolExecutor(workers - 1, thread_name_prefix="dogmacache-kernels"))]
    with torch_threads(1):
        helpers = [_HELPERS[0][1].submit(worker) for _ in range(workers - 1)]
        try:
            worker()
        finally:
            for helper in helpers:
                helper.result()


def _draw_keep_spread(seed: int, n: int, threshold: int) -> np.ndarray:
    """`_draw_keep(np.random.SFC64(seed), n, threshold)`, drawn in pieces on all workers (`_spread`)."""
    keep = np.empty(n, dtype=np.bool_)
    pieces = range(0, n, _PIECE)

    def work(i: int, generator: np.random.SFC64 | None) -> None:
        start = pieces[i]
        _draw_keep(generator, min(_PIECE, n - start), threshold, out=keep[start : start + _PIECE])

    _spread(work, len(pieces), [_words(min(_PIECE, n - start)) for start in pieces], seed)
    return keep


def _masked_scale(x: Tensor, keep: Tensor, scale: float) -> Tensor:
    """x * keep * scale, a new contiguous tensor; keep is a flat boolean tensor of x.numel() elements."""
    x = x.detach().contiguous()
    if x.dtype not in _NUMPY_DTYPES:  # bfloat16 and others: torch's fused kernel
        return torch.ops.aten.native_dropout_backward(x, keep.view(x.shape), scale)
    out = torch.empty_like(x)
    values, mask, result = x.numpy().reshape(-1), keep.numpy(), out.numpy().reshape(-1)
    factor = result.dtype.type(scale)
    pieces = range(0, values.size, _PIECE)

    def work(i: int, _: np.random.SFC64 | None) -> None:
        end = min(pieces[i] + _PIECE, values.size)
        for start in range(pieces[i], end, _CACHED):  # scaled while in the core's cache
            stop = min(start + _CACHED, end)
            part = result[start:stop]
            np.multiply(values[start:stop], mask[start:stop], out=part)
            part *= factor

    _spread(work, len(pieces))
    return out


class _MaskedScale(torch.autograd.Function):
    """x * keep * scale, the boolean mask saved for backward (1 byte per element, freed with the graph's
    saved tensors). Linear in x, so its backward is itself: double backward works."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return _masked_scale(x, keep, scale)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (keep,) = ctx.saved_tensors
        return _MaskedScale.apply(grad, keep, ctx.scale), None, None  # recorded only under create_graph=True


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """`F.dropout` with the same semantics; on CPU in training with 0 < p < 1, the fast masks above."""
    _check_p(p)
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    threshold, scale = _threshold(p)
    keep = _draw_keep_spread(_seed(), x.numel(), threshold)
    return _MaskedScale.apply(x, torch.from_numpy(keep), scale)


class Dropout(nn.Module):
    """Drop-in for `nn.Dropout` (no parameters, same state dict), using `dropout` above."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        _check_p(p)
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


Block = tuple[int, int, int, int]  # (r0, r1, s, e): rows r0:r1, queries s:e


def _blocks(rows: int, n_q: int, n_k: int) -> list[Block]:
    """About BLOCK_ELEMENTS scores each. Either one row and part of its queries (long sequences) or whole rows,
    several at once (short ones, where per-block overhead would dominate)."""
    per_row = n_q * n_k
    if per_row >= BLOCK_ELEMENTS:
        step = max(1, BLOCK_ELEMENTS // max(n_k, 1))
        return [(r, r + 1, s, min(s + step, n_q)) for r in range(rows) for s in range(0, n_q, step)]
    step = max(1, BLOCK_ELEMENTS // max(per_row, 1))
    return [(r, min(r + step, rows), 0, n_q) for r in range(0, rows, step)]


def _groups(blocks: list[Block], n_k: int) -> list[list[Block]]:
    """Consecutive blocks computed as one, up to GROUP_ELEMENTS scores: a row's next query blocks, or the next
    blocks of whole rows. Fewer, larger operations run faster (on 2 cores the paper preset's attention took
    ~10 % less time in groups of 1-2 Mi scores than of 0.5 Mi); masks are still drawn block by block
    (`_draw_group`), so they do not depend on the grouping."""
    groups: list[list[Block]] = []
    for block in blocks:
        if groups:
            group, last = groups[-1], groups[-1][-1]
            same_row = block[:2] == last[:2] and block[2] == last[3]
            next_rows = block[2:] == last[2:] and block[0] == last[1]  # a row's only block: whole rows
            if (same_row or next_rows) and _size(group + [block], n_k) <= GROUP_ELEMENTS:
                group.append(block)
                continue
        groups.append([block])
    return groups


def _size(blocks: list[Block], n_k: int) -> int:
    return sum((r1 - r0) * (e - s) * n_k for r0, r1, s, e in blocks)


def _extent(group: list[Block]) -> Block:
    """The rows and queries a group covers."""
    return group[0][0], group[-1][1], group[0][2], group[-1][3]


def _draw_group(
    generator: np.random.SFC64, group: list[Block], n_k: int, threshold: int, out: np.ndarray
) -> np.ndarray:
    """The group's masks, block after block as `_draw_keep` draws each, in the group's (rows, queries, keys) order."""
    start = 0
    for block in group:
        n = _size([block], n_k)
        _draw_keep(generator, n, threshold, out=out[start : start + n])
        start += n
    return out[:start]


def _tasks(groups: list[list[Block]]) -> list[list[list[Block]]]:
    """The groups gathered by the rows they cover (one row's query groups, or one group of whole rows): the
    backward's tasks, as no task then adds to the k and v gradients of another's rows (each row's sums run in
    group order whatever the spread, so the gradients are the same bits on any thread count)."""
    tasks: list[list[list[Block]]] = []
    for group in groups:
        if tasks and _extent(tasks[-1][0])[:2] == _extent(group)[:2]:
            tasks[-1].append(group)
        else:
            tasks.append([group])
    return tasks


def _run_groups(tasks: list[list[list[Block]]], n_k: int, seed: int, work: Callable) -> None:
    """work(task, generator) for each task (groups in block order), each task's generator at its first draw of
    the one stream (seeded with `seed`) that draws every block's mask in block order."""
    words = [sum(_words(_size([block], n_k)) for group in task for block in group) for task in tasks]
    _spread(lambda i, generator: work(tasks[i], generator), len(tasks), words, seed)


def _mask_inplace(x: Tensor, keep: np.ndarray) -> None:
    """x *= keep, x a contiguous block in a numpy dtype, keep as many booleans."""
    values = x.numpy()
    np.multiply(values, keep.reshape(values.shape), out=values)


class _BlockedDropoutAttention(torch.autograd.Function):
    """q (R, Nq, E), k and v (R, Nk, E) with R = batch x heads, contiguous, float32/64 -> (R, Nq, E).

    Per block of rows and queries (scale s = 1/sqrt(E), keep scale c = 1/P(keep), m = the boolean mask):
    forward   P = exp(s q k^T - max) / sum,  out = (P * m) v * c,  lse = max + log(sum);
    backward  P = exp(s q k^T - lse),  dv += (P * m)^T (c dout),  dP = (c dout v^T) * m,
              dS = P * (dP - rowsum(dout * out)),  dq = s dS k,  dk += s dS^T q.
    Blocks run side by side on all of torch's threads (`_spread`), the masks the same whatever the spread.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, p: float, seed: int) -> Tensor:  # type: ignore[override]
        rows, n_q, width = q.shape
        n_k = k.shape[1]
        scale = width**-0.5
        threshold, keep_scale = _threshold(p)
        k_t = k.transpose(1, 2)
        out = q.new_empty(rows, n_q, width)
        lse = q.new_empty(rows, n_q, 1)
        blocks = _blocks(rows, n_q, n_k)
        groups = _groups(blocks, n_k)
        largest = max((_size(group, n_k) for group in groups), default=0)

        def work(task: list[list[Block]], generator: np.random.SFC64) -> None:
            scores, keep_buffer = q.new_empty(largest), np.empty(largest, dtype=np.bool_)
            for group in task:
                r0, r1, s, e = _extent(group)
                n = (r1 - r0) * (e - s) * n_k
                probs = scores[:n].view(r1 - r0, e - s, n_k).baddbmm_(q[r0:r1, s:e], k_t[r0:r1], beta=0, alpha=scale)
                top = probs.amax(dim=2, keepdim=True)
                probs.sub_(top).exp_()
                total = probs.sum(dim=2, keepdim=True)
                lse[r0:r1, s:e] = top + total.log()
                _mask_inplace(probs, _draw_group(generator, group, n_k, threshold, keep_buffer))
                # normalisation and keep scale applied to (g, b, E), not to (g, b, Nk)
                out[r0:r1, s:e] = torch.bmm(probs, v[r0:r1]).mul_(keep_scale / total)

        _run_groups([[group] for group in groups], n_k, seed, work)  # a group's writes are its own
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.seed, ctx.threshold, ctx.keep_scale, ctx.blocks = seed, threshold, keep_scale, blocks
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        threshold, keep_scale = ctx.threshold, ctx.keep_scale
        n_k, width = k.shape[1:]
        scale = width**-0.5
        grad_out = grad_out.contiguous()
        delta = (grad_out * out).sum(dim=-1, keepdim=True)  # rowsum(dP * P), flash-attention's identity
        grad_scaled = grad_out * keep_scale
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        k_t, v_t = k.transpose(1, 2), v.transpose(1, 2)
        groups = _groups(ctx.blocks, n_k)  # the forward's blocks, so the draws line up whatever BLOCK_ELEMENTS is now
        largest = max((_size(group, n_k) for group in groups), default=0)

        def work(task: list[list[Block]], generator: np.random.SFC64) -> None:
            scores, buffer = q.new_empty(largest), q.new_empty(largest)
            keep_buffer = np.empty(largest, dtype=np.bool_)
            for group in task:
                r0, r1, s, e = _extent(group)
                n = (r1 - r0) * (e - s) * n_k
                probs = scores[:n].view(r1 - r0, e - s, n_k).baddbmm_(q[r0:r1, s:e], k_t[r0:r1], beta=0, alpha=scale)
                probs.sub_(lse[r0:r1, s:e]).exp_()
                keep = _draw_group(generator, group, n_k, threshold, keep_buffer)
                dropped = buffer[:n].view(probs.shape)
                np.multiply(probs.numpy(), keep.reshape(probs.shape), out=dropped.numpy())
                grad_v[r0:r1].baddbmm_(dropped.transpose(1, 2), grad_scaled[r0:r1, s:e])
                grad_scores = torch.bmm(grad_scaled[r0:r1, s:e], v_t[r0:r1])
                _mask_inplace(grad_scores, keep)
                grad_scores.sub_(delta[r0:r1, s:e]).mul_(probs)
                grad_q[r0:r1, s:e].baddbmm_(grad_scores, k[r0:r1], beta=0, alpha=scale)
                grad_k[r0:r1].baddbmm_(grad_scores.transpose(1, 2), q[r0:r1, s:e], alpha=scale)

        _run_groups(_tasks(groups), n_k, ctx.seed, work)  # the forward's draws again, in the same order
        return grad_q, grad_k, grad_v, None, None


def attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0, training: bool = False) -> Tensor:
    """softmax(q k^T / sqrt(E)) with dropout on the probabilities (training only), times v.

    q (Bq, H, Nq, E) with Bq in {1, B} (a shared query is broadcast), k and v (B, H, Nk, E) -> (B, H, Nq, E).
    """
    _check_p(dropout_p)
    batch = k.shape[0]
    if (
        not training
        or dropout_p == 0.0
        or q.device.type != "cpu"
        or torch.is_autocast_enabled("cpu")
        or {q.dtype, k.dtype, v.dtype} - set(_BLOCKED_DTYPES)
        or 0 in (q.numel(), k.numel())
    ):
        q = q.expand(batch, -1, -1, -1)  # a view
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p if training else 0.0)
    heads, n_q, width = q.shape[1:]
    # autograd sums a broadcast query's gradient through expand
    q_rows = q.expand(batch, -1, -1, -1).reshape(batch * heads, n_q, width)
    k_rows = k.reshape(batch * heads, k.shape[2], width).contiguous()
    v_rows = v.reshape(batch * heads, v.shape[2], width).contiguous()
    out = _BlockedDropoutAttention.apply(q_rows.contiguous(), k_rows, v_rows, dropout_p, _seed())
    return out.view(batch, heads, n_q, width)
