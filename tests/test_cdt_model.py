"""The CDT model: exact parameter counts (docs/papers.md#cdt-parameter-counts), the fast model against the per-sample
reference on the same weights, forward without side effects, input errors, the summary command, the benchmark."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from dogmacache.bench.cdt import bench_cdt_step, compare_cdt_implementations
from dogmacache.errors import InputError
from dogmacache.train.tasks.cdt import summary
from dogmacache.train.tasks.cdt.model import CentralDogmaTransformer, MultiHeadAttention
from dogmacache.train.tasks.cdt.reference import CDTReference
from dogmacache.train.tasks.cdt.sizes import PRESETS, CDTConfig, preset

TINY = preset("tiny")
B = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def inputs(config: CDTConfig, batch: int = B, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, config.dna_positions, config.dna_width, generator=g),  # dna (B, L, D_dna)
        torch.randn(config.n_genes, config.rna_width, generator=g),  # rna (G, D_rna)
        torch.randn(config.n_genes, config.protein_width, generator=g),  # protein (G, D_prot)
        torch.tensor([0, config.n_genes - 1, 7][:batch]),  # gene_index (B,), both ends of the range
    )


def pair(config: CDTConfig = TINY, seed: int = 0) -> tuple[CentralDogmaTransformer, CDTReference]:
    torch.manual_seed(seed)
    model = CentralDogmaTransformer(config).eval()
    return model, CDTReference.from_model(model).eval()


# --- parameter counts --------------------------------------------------------------------------------------


def test_paper_preset_has_the_reference_parameter_counts_on_meta():
    model = summary.build_on_meta("paper")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 60_093_752
    assert summary.kind_parameter_counts(model) == {
        "projections": 3_349_248,
        "self-attention blocks": 28_351_488,
        "cross-attention blocks": 14_175_744,
        "virtual cell embedder": 11_811_840,
        "task head": 2_405_432,
    }
    with torch.device("meta"):
        reference = CDTReference(preset("paper"))
    assert sum(p.numel() for p in reference.parameters()) == 60_093_752
    assert len(model.dna_self_attention) == 2 and len(model.rna_self_attention) == 1


def test_own_attention_has_the_parameters_of_nn_multiheadattention():
    d = 24
    ours = MultiHeadAttention(d, 4, 0.1)
    theirs = torch.nn.MultiheadAttention(d, 4, dropout=0.1, bias=True, batch_first=True)
    assert {n: p.shape for n, p in ours.named_parameters()} == {n: p.shape for n, p in theirs.named_parameters()}
    assert sum(p.numel() for p in ours.parameters()) == 4 * d * d + 4 * d


# --- the fast model against the per-sample reference ----------------------------------------------------------


@pytest.mark.parametrize("config", [TINY, dataclasses.replace(TINY, dna_self_layers=1, rna_self_layers=2, n_heads=2)])
def test_fast_model_equals_per_sample_reference_in_eval(config):
    model, reference = pair(config)
    x = inputs(config)
    with torch.no_grad():
        fast, slow = model(*x), reference(*x)
        everything = model.predict_all_genes(*x[:3])
    assert fast.shape == (B,)
    assert fast.unique().numel() == B  # three different numbers, not a constant
    assert (fast - slow).abs().max() < 1e-5
    assert torch.equal(everything.gather(1, x[3][:, None]).squeeze(1), fast)
    assert everything.shape == (B, config.n_genes)


def test_attention_maps_match_reference_per_head_weights():
    model, reference = pair()
    x = inputs(TINY)
    with torch.no_grad():
        fast, maps = model.forward_with_attention(*x)
        slow, reference_maps = reference.forward_with_attention(*x)
    L, G, H, Hv = TINY.dna_positions, TINY.n_genes, TINY.n_heads, TINY.vce_heads
    expected_shapes = {
        "dna_self.0": (B, H, L, L),
        "dna_self.1": (B, H, L, L),
        "rna_self.0": (B, H, G, G),
        "protein_self.0": (B, H, G, G),
        "dna_to_rna": (B, H, G, L),
        "rna_to_protein": (B, H, G, G),
        "vce_dna": (B, Hv, L),
        "vce_rna": (B, Hv, G),
        "vce_protein": (B, Hv, G),
    }
    assert {k: tuple(v.shape) for k, v in maps.items()} == expected_shapes
    assert sorted(reference_maps) == sorted(maps)
    for key, weights in maps.items():
        assert (weights - reference_maps[key]).abs().max() < 1e-5, key
        assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-5), key  # probabilities over keys
    assert (fast - slow).abs().max() < 1e-5
    assert (fast - model(*x).detach()).abs().max() < 1e-6  # the map-free (SDPA) path agrees


def test_gradients_equal_reference_gradients():
    model, reference = pair()
    x = inputs(TINY)
    target = torch.tensor([0.5, -1.0, 2.0])
    for m in (model, reference):
        F.smooth_l1_loss(m(*x), target, beta=1.0).backward()
    grads = {n: p.grad for n, p in reference.named_parameters()}
    names = [name for name, _ in model.named_parameters()]
    assert sorted(names) == sorted(grads) and len(names) > 40  # every parameter has its counterpart
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-5, rtol=1e-4, msg=name)
    assert model.rna_projection.linear.weight.grad.abs().sum() > 0  # the broadcast branch gets gradient


def test_state_dicts_load_both_ways():
    model, reference = pair(seed=1)
    other = CentralDogmaTransformer(TINY).eval()
    other.load_state_dict(reference.state_dict(), strict=True)
    x = inputs(TINY, seed=2)
    with torch.no_grad():
        assert torch.equal(other(*x), model(*x))


def test_sample_invariant_branches_run_once_per_batch():
    model, reference = pair()
    calls = {"fast": 0, "reference": 0}
    hooks = [
        model.rna_projection.register_forward_hook(lambda *_: calls.__setitem__("fast", calls["fast"] + 1)),
        reference.rna_projection.register_forward_hook(
            lambda *_: calls.__setitem__("reference", calls["reference"] + 1)
        ),
    ]
    with torch.no_grad():
        model(*inputs(TINY))
        reference(*inputs(TINY))
    for hook in hooks:
        hook.remove()
    assert calls == {"fast": 1, "reference": B}


# --- side effects, training --------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_forward_leaves_the_module_unchanged(training):
    model, _ = pair()
    model.train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(*inputs(TINY))
    if not training:
        model.forward_with_attention(*inputs(TINY))
    after = model.state_dict()
    assert list(after) == list(before) and len(before) > 50
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training is training and model.config == TINY


def test_training_forward_uses_dropout_backprops_and_builds_no_maps(monkeypatch):
    def no_maps(*args, **kwargs):
        raise AssertionError("attention maps were built in a training step")

    monkeypatch.setattr(MultiHeadAttention, "forward_with_weights", no_maps)
    torch.manual_seed(0)
    model = CentralDogmaTransformer(TINY).train()
    x = inputs(TINY)
    first, second = model(*x), model(*x)
    assert not torch.allclose(first, second)  # dropout is active
    F.smooth_l1_loss(first, torch.zeros(B)).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(int(g.abs().sum() > 0) for g in grads) == len(grads)  # every parameter is reached


def test_forward_with_attention_refuses_training_mode():
    model = CentralDogmaTransformer(TINY).train()
    with pytest.raises(InputError, match=r"eval mode only; call model.eval\(\)"):
        model.forward_with_attention(*inputs(TINY))


# --- errors ------------------------------------------------------------------------------------------------


def test_wrong_dna_width_names_expected_and_received_width():
    model = CentralDogmaTransformer(TINY)
    dna, rna, protein, gene_index = inputs(TINY)
    with pytest.raises(InputError) as err:
        model(torch.randn(B, TINY.dna_positions, 40), rna, protein, gene_index)
    assert str(err.value).startswith("dna has width 40 but the model was built for 48 (from the cache manifest); ")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x: (x[0][:, :5], *x[1:]), "dna has positions 5 but the model was built for 8"),
        (lambda x: (x[0], x[1][:, :30], *x[2:]), "rna has width 30 but the model was built for 32"),
        (lambda x: (x[0], x[1], x[2][:34], x[3]), "protein has genes 34 but the model was built for 35"),
        (
            lambda x: (x[0], x[1][None], *x[2:]),
            r"rna has shape \(1, 35, 32\) but the model takes one \(G, D\)",
        ),
        (
            lambda x: (*x[:3], torch.tensor([0, 1, 35])),
            r"gene_index holds values in \[0, 35\] but the model has 35",
        ),
        (lambda x: (*x[:3], torch.tensor([0, 1])), r"gene_index has shape \(2,\) but dna holds 3 samples"),
    ],
)
def test_bad_inputs_are_named(change, message):
    model, reference = pair()
    bad = change(inputs(TINY))
    for m in (model, reference):
        with pytest.raises(InputError, match=message):
            m(*bad)


def test_config_rejects_unknown_keys_and_bad_sizes():
    assert CDTConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(InputError, match=r"unknown CDT config keys \['d_modle'\]"):
        CDTConfig.from_dict({**TINY.to_dict(), "d_modle": 4})
    with pytest.raises(InputError, match="d_model=30 is not divisible by n_heads=4"):
        dataclasses.replace(TINY, d_model=30)
    with pytest.raises(InputError, match=r"preset 'huge' does not exist; choose one of paper, small, tiny"):
        preset("huge")


# --- the summary command and the benchmark -----------------------------------------------------------------


@pytest.mark.parametrize("name, total", [("paper", "60,093,752"), ("tiny", "103,427")])
def test_model_summary_command(capsys, name, total):
    parser = argparse.ArgumentParser()
    summary.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["model-summary", "cdt", "--preset", name])
    assert args.run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"trainable parameters: {total}"
    assert sum(line.startswith(("dna_", "rna_", "protein_", "vce ", "head ")) for line in lines) == 10
    assert set(PRESETS) == {"paper", "small", "tiny"}


@pytest.mark.parametrize("implementation", ["fast", "reference"])
def test_bench_cdt_step_measures_a_training_step(implementation):
    result = bench_cdt_step(
        "tiny", batch=2, implementation=implementation, steps=2, seed=0, warmup=1, cpu_allocator="system"
    )
    assert result["implementation"] == implementation and result["parameters"] == 103_427
    assert result["cpu_allocator"] == "system"
    assert len(result["step_seconds"]) == 2 and result["samples_per_s"] > 0 and result["peak_rss_mb"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the guard is for CPU machines")
def test_bench_refuses_the_paper_reference_on_cpu():
    with pytest.raises(InputError, match="~100 s and ~24 GB per CPU training step"):
        bench_cdt_step("paper", implementation="reference")


@pytest.mark.slow
def test_compare_runs_each_implementation_in_its_own_process():
    result = compare_cdt_implementations("tiny", batch=2, steps=2)
    assert result["fast"]["implementation"] == "fast" and result["reference"]["implementation"] == "reference"
    assert result["speedup_samples_per_s"] > 0 and result["peak_rss_reference_over_fast"] > 0


def test_model_code_takes_every_size_from_the_config():
    from pathlib import Path

    home = Path(__file__).resolve().parent.parent / "train" / "tasks" / "cdt"
    checked = 0
    for name in ("model.py", "reference.py", "task.py"):
        text = (home / name).read_text()
        for literal in ("896", "3072", "512", "768", "2360"):
            assert literal not in text, f"train/tasks/cdt/{name} hard-codes {literal}; take it from CDTConfig"
        checked += 1
    assert checked == 3 and "2360" in (home / "sizes.py").read_text()


def test_model_summary_states_the_esm2_protein_count(capsys):
    parser = argparse.ArgumentParser()
    summary.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["model-summary", "cdt", "--preset", "paper"])
    assert args.run(args) == 0
    assert (
        "with ESM-2 650M, 1280-d, as `dogmacache embed --model esm2` writes: 60,486,968 parameters"
        in capsys.readouterr().out
    )
    args = parser.parse_args(["model-summary", "cdt", "--preset", "paper", "--protein-width", "1280"])
    assert args.run(args) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "trainable parameters: 60,486,968"
