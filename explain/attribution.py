"""Attribution of one prediction to the DNA positions of its window: the paper's two windows (sections 2.8, 7.12).

- Attention ("what the model looks at"): read from the model's own maps, no gradient.
- Gradient ("what drives the prediction"): ||d prediction / d x_p||_2 per position p, with x the DNA embedding
  as the model reads it (after the checkpoint's standardisation, where it has one), in eval mode. Taken with
  respect to the features as cached, the norm would weigh each feature by 1 / its standard deviation, and a few
  features that barely vary would make it up (on the demo's checkpoint, 5 of 96 held a median 97 % of its square).
- Gradient x input: sum_j (x - x0)_p,j * d prediction / d x_p,j per position (signed), x0 the integrated
  gradients' baseline (the training mean of the features: the checkpoint's DNA scaling's, else the mean of the
  training split's windows, `CdtExplainer.baseline`): the first-order estimate of what integrated gradients
  compute.
- Integrated gradients (Captum, optional): sum_j of Captum's IntegratedGradients attributions per position;
  Captum fits because the model is a plain differentiable function of the DNA batch once the shared RNA and
  protein tables are closed over (Captum repeats every extra argument along dim 0, which those tables lack).

A `Predictor` maps DNA (B, L, D) and each sample's target (B,) to predictions (B,). Samples do not interact in
eval mode, so one backward pass of the batch's summed predictions gives every sample's own gradient.
Shapes: B samples, L positions, D embedding width, H heads.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Predictor = Callable[[Tensor, Tensor], Tensor]  # (dna (B, L, D), target index (B,)) -> (B,)


def input_gradient(predict: Predictor, dna: Tensor, target: Tensor) -> Tensor:
    """d prediction_b / d dna_b for every sample b: (B, L, D)."""
    x = dna.detach().clone().requires_grad_(True)  # a leaf of our own: the caller's tensor stays untouched
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(predict(x, target).sum(), x)
    return grad


def gradient_norm(gradient: Tensor) -> Tensor:
    """The paper's I_p = ||g_p||_2 per position: (B, L, D) -> (B, L)."""
    return gradient.norm(dim=-1)


def gradient_x_input(gradient: Tensor, dna: Tensor, baseline: Tensor) -> Tensor:
    """sum_j (x - x0)_p,j g_p,j per position, from the integrated gradients' baseline x0 (D,): (B, L, D) -> (B, L),
    signed. Measured from zero instead, a feature's offset (the cached features' mean is many times their spread)
    outweighs what the input changes, and the sign can run against integrated gradients."""
    return (gradient * (dna - baseline)).sum(dim=-1)


def integrated_gradients(
    predict: Predictor, dna: Tensor, target: Tensor, baseline: Tensor, n_steps: int = 32
) -> Tensor:
    """Captum's IntegratedGradients from `baseline` (broadcastable to dna) to `dna`, summed over D: (B, L).

    The attributions of one sample add up to f(dna) - f(baseline) up to the integral's discretisation error."""
    from captum.attr import IntegratedGradients

    explainer = IntegratedGradients(predict)
    with torch.enable_grad():
        attributions = explainer.attribute(
            dna.detach(),
            baselines=baseline.expand_as(dna).contiguous(),
            additional_forward_args=(target,),
            n_steps=n_steps,
            internal_batch_size=max(1, dna.shape[0]) * n_steps,
        )
    return attributions.sum(dim=-1).detach()


def target_rows(cross: Tensor, target: Tensor) -> Tensor:
    """Each sample's row of its target query: cross (B, H, Nq, L), target (B,) -> (B, H, L)."""
    return cross[torch.arange(len(target)), :, target]  # advanced indices first, then the sliced H and L


def head_mean(maps: Tensor) -> Tensor:
    """(B, H, ...) -> (B, ...): the head average the paper shows (7.12)."""
    return maps.mean(dim=1)


def temperature_scaled(weights: Tensor, temperature: float) -> Tensor:
    """Attention re-sharpened for display only, softmax(log w / T) along the last axis (the paper's Figure 5A
    used T = 0.3); never used for any number explain reports."""
    return torch.softmax(torch.log(weights.clamp_min(1e-30)) / temperature, dim=-1)
