"""CPU training kernels: fast dropout masks and blocked attention with dropout (train/kernels.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from dogmacache.devices import torch_threads
from dogmacache.errors import InputError
from dogmacache.train import kernels
from dogmacache.train.kernels import Dropout, _BlockedDropoutAttention, attention, dropout


@pytest.fixture(params=[(40, 40), (200, 400)], ids=["query-blocks", "row-blocks"])
def small_blocks(request, monkeypatch):
    """Small blocks, so every test crosses block boundaries: parts of one row's queries (40 scores: 3 of 7
    queries over 11 keys), each its own group, so one row's key and value gradients gather from several groups;
    or whole rows two at a time (200 scores), computed two blocks to a group."""
    block, group = request.param
    monkeypatch.setattr(kernels, "BLOCK_ELEMENTS", block)
    monkeypatch.setattr(kernels, "GROUP_ELEMENTS", group)


def _qkv(rows=3, n_q=7, n_k=11, width=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(rows, n, width, generator=g, dtype=dtype).requires_grad_() for n in (n_q, n_k, n_k))


def test_dropout_same_distribution_as_torch_and_exact_gradient():
    torch.manual_seed(0)
    x = torch.full((300_000,), 2.0, requires_grad=True)
    y = dropout(x, 0.3, training=True)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.3) < 0.005
    scale = 65536 / (65536 - round(0.3 * 65536))
    assert torch.allclose(y[kept], torch.full_like(y[kept], 2.0 * scale))  # inverted dropout, exact 1 / P(keep)
    assert abs(y.mean().item() - 2.0) < 0.02  # expectation preserved, as F.dropout does
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, kept.float() * scale)
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0) is x
    torch.manual_seed(5)
    a = dropout(torch.ones(1000), 0.5)
    torch.manual_seed(5)
    assert torch.equal(a, dropout(torch.ones(1000), 0.5))  # torch.manual_seed governs the masks
    assert not torch.equal(a, dropout(torch.ones(1000), 0.5))  # and each call draws anew


def test_dropout_module_has_no_state_and_checks_p():
    module = Dropout(0.2)
    assert module.state_dict() == {} and "p=0.2" in repr(module)
    with pytest.raises(InputError, match=r"1\.0 is outside \[0, 1\)"):
        Dropout(1.0)
    with pytest.raises(InputError, match="-0.1"):
        dropout(torch.ones(3), -0.1)


def test_blocked_attention_without_dropout_equals_sdpa(small_blocks):
    q, k, v = _qkv()
    out = _BlockedDropoutAttention.apply(q, k, v, 0.0, 1)
    ref = F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(out, ref, atol=1e-12)
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_blocked_attention_with_dropout_is_the_masked_formula(small_blocks):
    """Masks depend on the seed and shapes only, so uniform scores and v = identity reveal them; the same
    seed with real inputs must then equal softmax -> mask * 1/P(keep) -> @ v written out."""
    rows, n_q, n_k, p, seed = 3, 7, 11, 0.3, 42
    q, k, v = _qkv(rows, n_q, n_k, width=n_k)
    probe = _BlockedDropoutAttention.apply(
        torch.zeros(rows, n_q, n_k, dtype=torch.float64),
        k.detach(),
        torch.eye(n_k, dtype=torch.float64).expand(rows, -1, -1).contiguous(),
        p,
        seed,
    )
    mask = probe != 0
    scale = 65536 / (65536 - round(p * 65536))
    assert torch.allclose(probe[mask], torch.full_like(probe[mask], scale / n_k))
    assert 0 < (~mask).sum() < mask.numel()
    out = _BlockedDropoutAttention.apply(q, k, v, p, seed)
    expected = ((q @ k.transpose(1, 2)) * n_k**-0.5).softmax(-1) * mask * scale @ v
    assert torch.allclose(out, expected, atol=1e-12)


def test_blocked_attention_gradient_is_exact(small_blocks):
    q, k, v = _qkv(rows=2, n_q=5, n_k=6, width=4)
    assert torch.autograd.gradcheck(lambda q, k, v: _BlockedDropoutAttention.apply(q, k, v, 0.3, 7), (q, k, v))


def _attention_probe(batch, heads, n_q, n_k, p, torch_seed):
    """The masks `attention` draws after torch.manual_seed(torch_seed): uniform scores (q = 0) and v = identity
    make its output mask * 1/P(keep) / Nk."""
    q = torch.zeros(1, heads, n_q, n_k, dtype=torch.float64)
    k = torch.zeros(batch, heads, n_k, n_k, dtype=torch.float64)
    eye = torch.eye(n_k, dtype=torch.float64).expand(batch, heads, -1, -1).contiguous()
    torch.manual_seed(torch_seed)
    probe = attention(q, k, eye, dropout_p=p, training=True)
    mask = probe != 0
    scale = 65536 / (65536 - round(p * 65536))  # this kernel's exact 1/P(keep), not torch's 1/(1 - p)
    assert torch.allclose(probe[mask], torch.full_like(probe[mask], scale / n_k), rtol=0, atol=1e-12)
    return mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shared", [True, False], ids=["shared-query", "per-sample-query"])
def test_attention_in_training_is_the_masked_formula_per_batch_and_head(small_blocks, dtype, shared):
    """Through the public dispatch: each (sample, head) uses its own k, v and mask, a shared (1, H, Nq, E) query
    is broadcast, and gradients (including the summed one of the shared query) equal the written-out formula's."""
    batch, heads, n_q, n_k, p = 3, 2, 5, 6, 0.3
    mask = _attention_probe(batch, heads, n_q, n_k, p, torch_seed=9)
    assert 0 < (~mask).sum() < mask.numel() and not torch.equal(mask[0], mask[1])  # masks differ per sample
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1 if shared else batch, heads, n_q, n_k, generator=g, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(batch, heads, n_k, n_k, generator=g, dtype=dtype, requires_grad=True) for _ in range(2))
    torch.manual_seed(9)
    out = attention(q, k, v, dropout_p=p, training=True)
    scale = 65536 / (65536 - round(p * 65536))
    expected = ((q @ k.transpose(-1, -2)) * n_k**-0.5).softmax(-1) * mask * scale @ v
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert out.shape == (batch, heads, n_q, n_k) and torch.allclose(out, expected, rtol=0, atol=tol)
    grad = torch.randn(out.shape, generator=g, dtype=dtype)
    for a, b in zip(
        torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(expected, (q, k, v), grad), strict=True
    ):
        assert a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=tol * 10)


@pytest.mark.parametrize("threads", [2, 3])
def test_masks_and_results_do_not_depend_on_the_thread_count(small_blocks, monkeypatch, threads):
    """Blocks and dropout pieces spread over several workers draw what one generator run through them in
    order draws (the single-thread path), so outputs and gradients are the same bits."""
    monkeypatch.setattr(kernels, "_PIECE", 8)  # a dropout of 1003 elements in 126 pieces
    x = torch.randn(1003, dtype=torch.float64, requires_grad=True)
    results = {}
    for count in (1, threads):
        with torch_threads(count):
            q, k, v = _qkv(rows=6, n_q=7, n_k=11)
            torch.manual_seed(4)
            out = attention(q[None], k[None], v[None], dropout_p=0.3, training=True)
            dropped = dropout(x, 0.3)
            grads = torch.autograd.grad((out.sum(), dropped.pow(2).sum()), (q, k, v, x))
            results[count] = (out, dropped, *grads)
    assert (results[1][1] == 0).any()  # the dropout dropped
    for a, b in zip(results[1], results[threads], strict=True):
        assert torch.equal(a, b)


def test_attention_falls_back_to_sdpa_where_the_blocked_path_does_not_apply():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, 4, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    evaluated = attention(q[:1], k, v, dropout_p=0.3, training=False)  # eval: no dropout, shared query broadcast
    assert torch.allclose(evaluated, F.scaled_dot_product_attention(q[:1].expand(2, -1, -1, -1), k, v), atol=1e-6)
    assert attention(q[:0], k[:0], v[:0], dropout_p=0.3, training=True).shape == (0, 2, 4, 8)
    assert attention(q, k[:, :, :0], v[:, :, :0], dropout_p=0.3, training=True).shape == (2, 2, 4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CPU autocast: torch's kernels, bf16 results
        out = attention(q.requires_grad_(), k, v, dropout_p=0.3, training=True)
    out.float().sum().backward()
    assert torch.isfinite(q.grad).all()


def test_dropout_double_backward_and_p_next_to_one():
    x = torch.randn(1000, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x, 0.3)
    (g,) = torch.autograd.grad((y**2).sum(), x, create_graph=True)  # g = 2 y * mask * scale
    (h,) = torch.autograd.grad(g.sum(), x)
    kept = (y != 0).double()
    scale = 65536 / (65536 - round(0.3 * 65536))
    assert torch.allclose(h, 2 * kept * scale**2)  # second derivative of sum((x m c)^2)
    with pytest.raises(InputError, match="rounds to 1"):
        dropout(torch.ones(3), 0.999995)


_ALLOCATOR_PROBE = """
import resource, sys, torch
from dogmacache.devices import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
x, w1, w2 = torch.randn(256, 2048), torch.randn(2048, 4096), torch.randn(4096, 2048)
def step():  # a small MLP's forward and backward-sized temporaries, 2-32 MB each
    h = (x @ w1).relu_()
    g = torch.randn_like(h)
    return (h @ w2).sum() + (g.t() @ x).sum() + (h * g).sum()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _huge_pages_always() -> bool:
    path = "/sys/kernel/mm/transparent_hugepage/enabled"
    return os.path.exists(path) and "[always]" in open(path).read()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.skipif(_huge_pages_always(), reason="with huge pages always on, fresh mappings fault per 2 MiB")
def test_keep_freed_memory_cuts_page_faults_of_repeated_steps():
    """With malloc's defaults every big temporary is mapped fresh and faulted in page by page on every step;
    kept, freed blocks are reused (measured here: ~50,000 faults against ~6,000 for 5 steps)."""
    runs = {}
    for mode in ("system", "keep"):
        done = subprocess.run(
            [sys.executable, "-c", _ALLOCATOR_PROBE, mode], capture_output=True, text=True, check=True
        )
        kept, faults = done.stdout.split()
        runs[mode] = (kept == "True", int(faults))
    assert runs["keep"][0] and not runs["system"][0]
    assert runs["keep"][1] * 3 < runs["system"][1], runs
