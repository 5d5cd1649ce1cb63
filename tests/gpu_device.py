"""The device the `gpu`-marked tests run on (`make test-gpu`), and the mark that skips them without one.

CUDA when torch sees it. `DOGMACACHE_GPU_TEST_DEVICE=cpu` runs the same tests with the CPU standing in for the
GPU: that checks the tests' own code (inputs, kill and resume, compile against eager) on a machine without CUDA,
where the comparisons are CPU against CPU (bf16 then means CPU autocast).
"""

from __future__ import annotations

import os

import pytest
import torch

ENV = "DOGMACACHE_GPU_TEST_DEVICE"


def _device() -> torch.device | None:
    name = os.environ.get(ENV)
    if name:
        return torch.device(name)
    return torch.device("cuda") if torch.cuda.is_available() else None


DEVICE = _device()
# every test of a test_gpu_*.py file: marked `gpu` (deselected by `make test`) and skipped with this reason
GPU = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE is None, reason=f"needs a CUDA device (torch sees none); {ENV}=cpu checks the test code"),
]


def cuda_only(what: str):
    """Skip a test whose check means nothing off CUDA (a CUDA kernel, CUDA graphs)."""
    return pytest.mark.skipif(DEVICE is None or DEVICE.type != "cuda", reason=f"{what} runs on CUDA only")
