"""Model FLOP utilisation for the device benchmarks: each card's dense peak TFLOP/s per precision, the peak a
measurement is held against, FLOPs counted by torch's flop counter, and where a target applies.

MFU = counted FLOPs per item x items per second / the card's dense peak for the math the run used
(docs/bench.md#accelerator-peaks): bf16 autocast against the bf16 peak, fp32 against the TF32 peak where torch
let that math use TF32 (`fp32_math`), else against the plain fp32 peak. A card not in `CARDS`, and the CPU, have
no peak: their MFU is None, printed "n/a".

Targets stated for one H100 ("≥ 100 windows/s on one H100") are judged only where the run was a full-size one
on an H100-class card (H100 or H200); targets stated for a GPU only where the run was full size on CUDA
(`target_scope`); elsewhere their verdict is "n/a".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

# Dense peaks in TFLOP/s from NVIDIA's datasheets (cited in docs/bench.md#accelerator-peaks): fp32 = CUDA cores,
# tf32 / bf16 / fp16 = tensor cores without 2:4 sparsity (the datasheets print the sparse figure, twice the dense
# one, for H100, H200 and L4; the A100 datasheet prints both). Matched against torch.cuda.get_device_name(), lower
# case, first match wins (NVL and PCIe boards before the SXM pattern of the same chip).
CARDS: tuple[tuple[str, str, dict[str, float]], ...] = (
    ("H200 NVL", r"\bh200\b.*\bnvl\b", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}),
    ("H200 SXM", r"\bh200\b", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5}),
    ("H100 NVL", r"\bh100\b.*\bnvl\b", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}),
    ("H100 PCIe", r"\bh100\b.*\bpcie\b", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5, "fp16": 756.5}),
    ("H100 SXM", r"\bh100\b.*\b(sxm\w*|hbm3e?)\b", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5}),
    ("A100", r"\ba100\b", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}),  # SXM4 and PCIe, 40/80 GB
    ("L4", r"\bl4\b", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}),
)
H100_CLASS = frozenset({"H100 SXM", "H100 PCIe", "H100 NVL", "H200 SXM", "H200 NVL"})


def card(device_name: str | None) -> str | None:
    """The `CARDS` entry a device name (torch.cuda.get_device_name()) is, or None (unknown card, "cpu"; a MIG slice,
    such as "NVIDIA H100 80GB HBM3 MIG 1g.10gb", which has a fraction of the card's units: no whole-card peak or
    "one H100" target applies to it)."""
    name = (device_name or "").lower()
    if re.search(r"\bmig\b", name):
        return None
    return next((label for label, pattern, _ in CARDS if re.search(pattern, name)), None)


def peak_tflops(device_name: str | None, math: str) -> float | None:
    """The card's dense peak TFLOP/s for `math` (fp32, tf32, bf16, fp16); None for an unknown card or the CPU."""
    label = card(device_name)
    return None if label is None else next(peaks for name, _, peaks in CARDS if name == label).get(math)


def h100_class(device_name: str | None) -> bool:
    return card(device_name) in H100_CLASS


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def fp32_math(convolutions: bool) -> str:
    """The math an fp32 run may use: "tf32" where torch lets matrix products (or, for a model of `convolutions`,
    cuDNN's convolutions, on by torch's default) use TF32, else "fp32"."""
    matmul = torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    return "tf32" if matmul or (convolutions and torch.backends.cudnn.allow_tf32) else "fp32"


def utilisation(
    tflop_per_s: float | None, device: torch.device, precision: str, convolutions: bool = False
) -> dict[str, Any]:
    """{math, peak_tflop_per_s, mfu} of a measured rate at `precision` (fp32 | bf16 | fp16) on `device`; peak and
    MFU None off a known card."""
    math = fp32_math(convolutions) if precision == "fp32" else precision
    peak = peak_tflops(device_name(device), math) if device.type == "cuda" else None
    mfu = tflop_per_s / peak if peak and tflop_per_s is not None else None
    return {"math": math, "peak_tflop_per_s": peak, "mfu": mfu}


def target_scope(size: str, name: str | None) -> dict[str, bool]:
    """Which targets a run of `size` on the device called `name` ("cpu" for the CPU) is judged against: "gpu" (a
    full-size run on CUDA) and "h100" (that, on an H100-class card)."""
    gpu = size == "full" and bool(name) and name != "cpu"
    return {"gpu": gpu, "h100": gpu and h100_class(name)}


# ---- counting ------------------------------------------------------------------------------------------------
def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


def _cpu_mapping() -> dict[Any, Callable[..., int]]:
    """torch's counter has formulas for the CUDA attention kernels but not the CPU one: the same ones for it, so
    a count is the same on either device."""
    ops = {
        "_scaled_dot_product_flash_attention_for_cpu": _cpu_attention,
        "_scaled_dot_product_flash_attention_for_cpu_backward": _cpu_attention_backward,
    }
    return {getattr(torch.ops.aten, n): f for n, f in ops.items() if hasattr(torch.ops.aten, n)}


def count_flops(fn: Callable[[], Any]) -> float | None:
    """FLOPs of one call of `fn` by torch.utils.flop_counter (matrix products, convolutions, attention kernels;
    elementwise work is not counted); None where the counter fails."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False, custom_mapping=_cpu_mapping()) as counter:
            fn()
    except Exception:  # noqa: BLE001 - a count beside the benchmark, never a reason to lose it
        return None
    return float(counter.get_total_flops())


# ---- table cells -----------------------------------------------------------------------------------------------
def mfu_cell(*values: float | None) -> str:
    """MFU as a percentage ("n/a" without a peak), several joined by " / "."""
    return " / ".join("n/a" if v is None else f"{100 * v:.1f}%" if v < 0.1 else f"{100 * v:.0f}%" for v in values)
