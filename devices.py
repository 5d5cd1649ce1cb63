"""Choosing the torch device, the same way for every stage."""

from __future__ import annotations

import os

import torch
from dogmacache.errors import InputError


def pick_device(name: str) -> torch.device:
    """`auto` = this process's CUDA device (LOCAL_RANK under torchrun) when CUDA is available, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name} asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(name)
