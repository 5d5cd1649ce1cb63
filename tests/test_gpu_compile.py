"""`torch.compile` on the GPU (`make test-gpu`) equals eager execution: the tiny Enformer as `embed --compile`
runs it (and `test_gpu_embed.py` runs the command) and a few CDT training steps as `[train] compile` runs them.

Tolerances: float32 with TF32 off (`embed.fidelity.full_fp32`), where compiled kernels differ from eager ones only
in the order of summation, within FP32_TOLERANCE; bf16 autocast, where fused kernels also round in other places,
within BF16_TOLERANCE. Both are relative: an output's (or a parameter update's) L2 distance over its L2 norm.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from dogmacache.embed.adapters.enformer import EnformerAdapter, EnformerOptions, write_tiny_enformer
from dogmacache.embed.fidelity import full_fp32
from dogmacache.embed.genome import Genome
from dogmacache.train.tasks.cdt.model import CentralDogmaTransformer
from dogmacache.train.tasks.cdt.sizes import preset
from gpu_device import DEVICE, GPU

pytestmark = GPU

FP32_TOLERANCE = 1e-4
BF16_TOLERANCE = 3e-2


def autocast(precision: str):
    """bf16 autocast on the test device, or nothing (float32 as written, no TF32)."""
    if precision == "bf16":
        return torch.autocast(DEVICE.type, dtype=torch.bfloat16)
    return full_fp32()


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double().flatten(), want.detach().double().flatten()
    return float((got - want).norm() / want.norm())


@pytest.fixture(autouse=True)
def fresh_compiler():
    torch._dynamo.reset()  # each test compiles from scratch: no graph cached by an earlier test is reused
    yield
    torch._dynamo.reset()


# ---- Enformer trunk -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def enformer_batch(tmp_path_factory):
    """The tiny Enformer's adapter on the device and a batch of prepared windows (both strands, one padded)."""
    root = tmp_path_factory.mktemp("gpu-compile")
    rng = np.random.default_rng(3)
    (root / "g.fa").write_text(">chr1\n" + "".join(rng.choice(list("ACGT"), 8000)) + "\n")
    adapter = EnformerAdapter(
        str(write_tiny_enformer(root / "enformer", seed=2)), EnformerOptions(strand_policy="rc-average"), DEVICE
    )
    genome = Genome(root / "g.fa")
    rows = pd.DataFrame({"id": list("abcd"), "chrom": "chr1", "center": [500, 3000, 5200, 7990]})
    rows["strand"] = ["+", "-", "+", "-"]
    return adapter, [adapter.prepare({**row, "_genome": genome}) for row in rows.to_dict("records")]


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_enformer_equals_eager(enformer_batch, precision, mode):
    """`embed --compile MODE` (`EnformerAdapter.compile`): the rc-average batch runs two compiled forwards (plus and
    minus strand), so under CUDA graphs the first one's outputs must survive the second replay."""
    adapter, batch = enformer_batch
    try:
        with torch.inference_mode(), autocast(precision):
            eager, _ = adapter.embed(batch)
            adapter.compile(mode)
            compiled, _ = adapter.embed(batch)
            again, _ = adapter.embed(batch)  # the second call runs the cached graph
            assert adapter.compiled
            with adapter.eager():
                assert not adapter.compiled
                same, _ = adapter.embed(batch)
    finally:
        adapter.compile("off")
    assert torch.equal(same, eager)
    assert eager.shape == (4, *adapter.info().item_shape) and eager.float().abs().max() > 0
    tolerance = FP32_TOLERANCE if precision == "fp32" else BF16_TOLERANCE
    for got in (compiled, again):
        assert torch.isfinite(got).all()
        assert relative(got, eager) <= tolerance, f"compiled Enformer {precision}: {relative(got, eager):.3g}"


# ---- CDT training steps ----------------------------------------------------------------------------------------
STEPS, BATCH, LR = 5, 8, 1e-4
# the small preset on CUDA (D 128, 400 genes, 224 x 768 DNA); the tiny one where the CPU stands in, to stay quick
CDT_PRESET = "small" if DEVICE is not None and DEVICE.type == "cuda" else "tiny"


def cdt_steps(mode: str | None, precision: str) -> tuple[list[float], list[torch.Tensor], list[torch.Tensor]]:
    """Losses of STEPS training steps as `train/loop.py` takes them (autocast forward, SmoothL1 on the float
    output, backward, gradient clipping at 1.0, AdamW), the forward compiled with `mode` (None: eager); and the
    parameters before and after. Dropout is 0: compiled and eager dropout draw different masks."""
    torch.manual_seed(0)
    config = dataclasses.replace(preset(CDT_PRESET), dropout=0.0)
    model = CentralDogmaTransformer(config).to(DEVICE).train()
    before = [p.detach().clone() for p in model.parameters()]
    trained = model if mode is None else torch.compile(model, mode=None if mode == "default" else mode)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-5)
    generator = torch.Generator().manual_seed(1)
    rna = torch.randn(config.n_genes, config.rna_width, generator=generator).to(DEVICE)
    protein = torch.randn(config.n_genes, config.protein_width, generator=generator).to(DEVICE)
    losses = []
    for _ in range(STEPS):
        dna = torch.randn(BATCH, config.dna_positions, config.dna_width, generator=generator).to(DEVICE)
        gene_index = torch.randint(0, config.n_genes, (BATCH,), generator=generator).to(DEVICE)
        target = torch.randn(BATCH, generator=generator).to(DEVICE)
        with autocast(precision):
            loss = F.smooth_l1_loss(trained(dna, rna, protein, gene_index).float(), target, beta=1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return losses, before, [p.detach().clone() for p in model.parameters()]


# float32 compiled by default; bf16 with CUDA graphs, the fastest step measured (README "On one GPU"). Where the CPU
# stands in, "reduce-overhead" compiles as "default" does (CUDA graphs need CUDA).
@pytest.mark.parametrize(("mode", "precision"), [("default", "fp32"), ("reduce-overhead", "bf16")])
def test_compiled_cdt_training_steps_equal_eager(mode, precision):
    with full_fp32():
        eager_losses, start, eager_end = cdt_steps(None, precision)
        losses, start_c, end = cdt_steps(mode, precision)
    assert all(torch.equal(a, b) for a, b in zip(start, start_c, strict=True))  # the same initial weights
    assert len(set(eager_losses)) == STEPS and all(np.isfinite(eager_losses))  # the model moves
    tolerance = FP32_TOLERANCE if precision == "fp32" else BF16_TOLERANCE
    np.testing.assert_allclose(losses, eager_losses, rtol=tolerance, err_msg=f"losses, compile {mode} {precision}")
    update = torch.cat([(b - a).flatten() for a, b in zip(start, eager_end, strict=True)])
    update_c = torch.cat([(b - a).flatten() for a, b in zip(start, end, strict=True)])
    assert update.norm() > 0
    # AdamW's first steps move each weight by about lr times the sign of its gradient, so a gradient near zero that
    # rounds to the other sign moves its weight the other way: the updates get ten times the outputs' tolerance
    assert relative(update_c, update) <= 10 * tolerance, f"updates, compile {mode} {precision}"
