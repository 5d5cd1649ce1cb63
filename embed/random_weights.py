"""Random weights for the tiny models (`embed/tiny.py`, `models make-tiny`): `randomize_` draws every weight.

The libraries initialise some weights to constants (Enformer's attention output projection to zero, biases to
zero, norm gains to one, BatchNorm statistics to 0 and 1), and a tiny model with those left in place computes as if
the layer were absent, so a bug in it (a wrong TF-gamma setting, say) would pass every test. Each adapter's tiny
writer draws its model's weights here."""

from __future__ import annotations

import math

import torch
from torch import nn


def randomize_(model: nn.Module, seed: int, gain: float = 1.0) -> nn.Module:
    """Draw every weight of `model` at random (in place): matrices, kernels and embeddings ~ N(0, gain / fan_in),
    biases ~ N(0, 0.1^2), 1-d gains 1 + N(0, 0.1^2); every BatchNorm gets random running statistics.

    Measured on the tiny Enformer at 2 kb and at 196 kb (std over bins / mean magnitude): with the libraries' own
    initialisation its outputs varied by 0.01-0.05 % across positions (the zeroed attention output and the small
    kernels wash the input out); with gain 1 by 0.7-1 %, which keeps the demo's GC-box signal learnable;
    gain 2 (He's scale) gives ~40 %, for tests that need every layer to matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            if p.ndim >= 2:
                p.copy_(noise * math.sqrt(gain / math.prod(p.shape[1:])))
            else:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))
    return model
