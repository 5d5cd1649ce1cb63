"""CPU training kernels: fast dropout masks and blocked attention with dropout (train/kernels.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from dogmacache.errors import InputError
from dogmacache.train import kernels
from dogmacache.train.kernels import Dropout, _BlockedDropoutAttention, attention, dropout, keep_mask


@pytest.fixture(params=[40, 200], ids=["query-blocks", "row-blocks"])
def small_blocks(request, monkeypatch):
    """Small blocks, so every test crosses block boundaries: parts of one row's queries (40 scores: 3 of 7
    queries over 11 keys), or whole rows two at a time (200 scores)."""
    monkeypatch.setattr(kernels, "BLOCK_ELEMENTS", request.param)


def _qkv(rows=3, n_q=7, n_k=11, width=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(rows, n, width, generator=g, dtype=dtype).requires_grad_() for n in (n_q, n_k, n_k)
    )


def test_keep_mask_rate_and_determinism():
    mask = keep_mask((400, 500), 0.3, seed=11)
    assert mask.dtype == torch.bool and mask.shape == (400, 500)
    assert abs(1 - mask.float().mean().item() - 0.3) < 0.005  # 200,000 draws: sd of the rate ~0.001
    assert torch.equal(mask, keep_mask((400, 500), 0.3, seed=11))
    assert not torch.equal(mask, keep_mask((400, 500), 0.3, seed=12))
    assert keep_mask((1000,), 0.0, seed=1).all()


def test_dropout_same_distribution_as_torch_and_exact_gradient():
    torch.manual_seed(0)
    x = torch.full((300_000,), 2.0, requires_grad=True)
    y = dropout(x, 0.3, training=True)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.3) < 0.005
    scale = 65536 / (65536 - round(0.3 * 65536))
    assert torch.allclose(
        y[kept], torch.full_like(y[kept], 2.0 * scale)
    )  # inverted dropout, exact 1 / P(keep)
    assert abs(y.mean().item() - 2.0) < 0.02  # expectation preserved, as F.dropout does
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, kept.double().float() * scale)
    assert dropout(x, 0.3, training=False) is x
    torch.manual_seed(5)
    a = dropout(torch.ones(1000), 0.5)
    torch.manual_seed(5)
    assert torch.equal(a, dropout(torch.ones(1000), 0.5))  # torch.manual_seed governs the masks


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
        torch.zeros(rows, n_q, n_k, dtype=torch.float64), k.detach(), torch.eye(n_k, dtype=torch.float64).expand(rows, -1, -1).contiguous(), p, seed
    )  # fmt: skip
    mask = probe != 0
    scale = 65536 / (65536 - round(p * 65536))
    assert torch.allclose(probe[mask], torch.full_like(probe[mask], scale / n_k))
    assert 0 < (~mask).sum() < mask.numel()
    out = _BlockedDropoutAttention.apply(q, k, v, p, seed)
    expected = ((q @ k.transpose(1, 2)) * n_k**-0.5).softmax(-1) * mask * scale @ v
    assert torch.allclose(out, expected, atol=1e-12)


def test_blocked_attention_gradient_is_exact(small_blocks):
    q, k, v = _qkv(rows=2, n_q=5, n_k=6, width=4)
    assert torch.autograd.gradcheck(
        lambda q, k, v: _BlockedDropoutAttention.apply(q, k, v, 0.3, 7), (q, k, v)
    )


def test_attention_dispatch_and_shared_query(small_blocks):
    torch.manual_seed(0)
    q = torch.randn(1, 2, 5, 4, requires_grad=True)  # one query shared by a batch of 3
    k, v = torch.randn(3, 2, 6, 4), torch.randn(3, 2, 6, 4)
    evaluated = attention(q, k, v, dropout_p=0.3, training=False)
    assert torch.allclose(evaluated, F.scaled_dot_product_attention(q.expand(3, -1, -1, -1), k, v), atol=1e-6)
    trained = attention(q, k, v, dropout_p=0.3, training=True)
    assert trained.shape == (3, 2, 5, 4)
    trained.sum().backward()
    assert q.grad.shape == (1, 2, 5, 4) and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_cuts_page_faults_of_repeated_steps():
    """With malloc's defaults every big temporary is mapped fresh and faulted in page by page on every step;
    kept, freed blocks are reused (measured here: ~50,000 faults against ~6,000 for 5 steps)."""
    runs = {}
    for mode in ("system", "keep"):
        done = subprocess.run([sys.executable, "-c", _ALLOCATOR_PROBE, mode], capture_output=True, text=True,
                              check=True)  # fmt: skip
        kept, faults = done.stdout.split()
        runs[mode] = (kept == "True", int(faults))
    assert runs["keep"][0] and not runs["system"][0]
    assert runs["keep"][1] * 3 < runs["system"][1], runs
