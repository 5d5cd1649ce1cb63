"""The CDT section of `dogmacache bench`: training-step throughput and peak memory of the fast CDT
(`train/tasks/cdt/model.py`) against the per-sample reference (`train/tasks/cdt/reference.py`), with the targets
and the table.

One step = forward on random inputs of the preset's shapes (dna (B, L, D_dna), rna (G, D_rna),
protein (G, D_prot), gene_index (B,)), SmoothL1 (beta 1) on the target-gene output, backward, gradient
clipping at 1.0 and an AdamW step (lr 1e-4, weight decay 1e-5), as the paper trains
(docs/papers.md#cdt-training-recipe).
Sizes are the presets of `train/tasks/cdt/sizes.py`. `compare_cdt_implementations` runs each implementation in its
own fresh process (`main`, one JSON line), so each peak RSS (`ru_maxrss`) belongs to that implementation
alone. On CUDA the step is also timed under bf16 autocast. `bench_cdt_section` adds the ratios the targets
are about (and the evaluation benchmark of `cdt_eval.py`); `cdt_tables` prints them against the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from dogmacache.bench.cdt_eval import EVAL_SHAPES, bench_cdt_eval, cdt_eval_tables
from dogmacache.bench.report import Table, table, verdict
from dogmacache.devices import CPU_ALLOCATORS, apply_cpu_allocator
from dogmacache.errors import InputError
from dogmacache.train.tasks.cdt.model import CentralDogmaTransformer
from dogmacache.train.tasks.cdt.reference import CDTReference
from dogmacache.train.tasks.cdt.sizes import PRESETS
from dogmacache.train.tasks.cdt.sizes import preset as get_preset

Implementation = Literal["fast", "reference"]
TARGET_CDT_SPEEDUP = 2.0  # fast samples/s over the per-sample reference
TARGET_CDT_MEMORY_RATIO = 2.0  # reference peak memory over fast (fast at most half)
# `main` in a fresh interpreter; run by -c, not -m: `dogmacache.bench` imports this module, and runpy warns
# when the module it runs is already imported
_STEP_PROCESS = "import sys; from dogmacache.bench.cdt import main; sys.exit(main(sys.argv[1:]))"


def _timed_steps(
    model: torch.nn.Module,
    inputs: tuple,
    target: torch.Tensor,
    steps: int,
    warmup: int,
    autocast_dtype: torch.dtype | None,
) -> list[float]:
    """Seconds of each of `steps` training steps, after `warmup` untimed steps."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5)
    device_type = target.device.type

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            prediction = model(*inputs)
        loss = F.smooth_l1_loss(prediction.float(), target, beta=1.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    def sync() -> None:
        if device_type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def _current_rss_mb() -> float | None:
    """Resident memory now (Linux /proc), or None where that file does not exist."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


__all__ = [
    "EVAL_SHAPES",
    "TARGET_CDT_MEMORY_RATIO",
    "TARGET_CDT_SPEEDUP",
    "bench_cdt_eval",
    "bench_cdt_section",
    "bench_cdt_step",
    "bench_in_fresh_process",
    "cdt_eval_tables",
    "cdt_tables",
    "compare_cdt_implementations",
    "main",
]


def bench_cdt_step(
    preset: str,
    batch: int = 8,
    implementation: Implementation = "fast",
    steps: int = 3,
    seed: int = 0,
    warmup: int = 1,
    allow_paper_reference: bool = False,
    cpu_allocator: str = "keep",
) -> dict[str, Any]:
    """Samples/s and peak memory of training steps of one implementation, in this process.

    peak_rss_mb is this process's lifetime peak (run it in a fresh process, as `compare_cdt_implementations`
    does, for a per-implementation figure); rss_before_steps_mb is the resident memory once the model and the
    inputs exist, so peak - before is what the training steps added. On CUDA also cuda_peak_mb and bf16
    autocast samples/s. The per-sample reference at the paper preset is refused on CPU unless
    `allow_paper_reference` (~100 s and ~24 GB per step). cpu_allocator "keep" applies
    `devices.keep_freed_memory` on CPU, as `dogmacache train` does by default, to either implementation.
    """
    if implementation not in ("fast", "reference"):
        raise InputError(f"implementation {implementation!r} is not 'fast' or 'reference'; pick one of those")
    if steps < 1 or batch < 1:
        raise InputError(f"steps={steps} and batch={batch} must both be >= 1")
    load_at_start = os.getloadavg()[0]
    cuda = torch.cuda.is_available()
    if implementation == "reference" and preset == "paper" and not cuda and not allow_paper_reference:
        raise InputError(
            "the per-sample reference at the paper preset takes ~100 s and ~24 GB per CPU training "
            "step (docs/papers.md#cdt-compute-cost); bench it on a CUDA device or use --preset small"
        )
    device = torch.device("cuda" if cuda else "cpu")
    allocator = apply_cpu_allocator(cpu_allocator, device)
    config = get_preset(preset)
    torch.manual_seed(seed)
    model = CentralDogmaTransformer(config)
    if implementation == "reference":
        model = CDTReference.from_model(model)
    model = model.to(device).train()
    generator = torch.Generator().manual_seed(seed)
    inputs = (
        torch.randn(batch, config.dna_positions, config.dna_width, generator=generator),
        torch.randn(config.n_genes, config.rna_width, generator=generator),
        torch.randn(config.n_genes, config.protein_width, generator=generator),
        torch.randint(0, config.n_genes, (batch,), generator=generator),
    )
    inputs = tuple(t.to(device) for t in inputs)
    target = torch.randn(batch, generator=generator).to(device)
    rss_before_steps = _current_rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    # the median step: on shared CPU machines single steps vary 2-5x (first-touch page faults of big tensors)
    step_seconds = _timed_steps(model, inputs, target, steps, warmup, autocast_dtype=None)
    seconds = statistics.median(step_seconds)
    result: dict[str, Any] = {
        "preset": preset,
        "implementation": implementation,
        "batch": batch,
        "steps": steps,
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads(),
        "cpu_allocator": allocator,
        "load_average_at_start": load_at_start,  # other processes on the cores slow steps down many-fold
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds_per_step": seconds,  # median over the timed steps
        "step_seconds": step_seconds,
        "samples_per_s": batch / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux reports KiB
        "rss_before_steps_mb": rss_before_steps,  # model + inputs resident, before the first step
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "bf16_samples_per_s": None,
    }
    if cuda:
        bf16_seconds = _timed_steps(model, inputs, target, steps, warmup, autocast_dtype=torch.bfloat16)
        result["bf16_samples_per_s"] = batch / statistics.median(bf16_seconds)
    return result


def bench_in_fresh_process(
    preset: str,
    batch: int = 8,
    implementation: Implementation = "fast",
    steps: int = 3,
    seed: int = 0,
    threads: int | None = None,
    allow_paper_reference: bool = False,
    cpu_allocator: str = "keep",
) -> dict[str, Any]:
    """`bench_cdt_step` in a new Python process (its own peak RSS); `threads`: torch's intra-op threads."""
    command = [
        sys.executable,
        "-c",
        _STEP_PROCESS,
        "--preset",
        preset,
        "--batch",
        str(batch),
        "--implementation",
        implementation,
        "--steps",
        str(steps),
        "--seed",
        str(seed),
        "--cpu-allocator",
        cpu_allocator,
    ]
    if threads:
        command += ["--threads", str(threads)]
    if allow_paper_reference:
        command.append("--allow-paper-reference")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark process {' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare_cdt_implementations(
    preset: str = "small",
    batch: int = 8,
    steps: int = 3,
    seed: int = 0,
    threads: int | None = None,
    allow_paper_reference: bool = False,
    cpu_allocator: str = "keep",
) -> dict[str, Any]:
    """Bench each implementation in its own fresh Python process; return both results and their ratios."""
    results = {
        implementation: bench_in_fresh_process(
            preset,
            batch,
            implementation,
            steps,
            seed,
            threads=threads,
            allow_paper_reference=allow_paper_reference,
            cpu_allocator=cpu_allocator,
        )
        for implementation in ("fast", "reference")
    }
    fast, reference = results["fast"], results["reference"]
    return {
        "preset": preset,
        "batch": batch,
        "fast": fast,
        "reference": reference,
        "speedup_samples_per_s": fast["samples_per_s"] / reference["samples_per_s"],  # fast / reference
        "peak_rss_reference_over_fast": reference["peak_rss_mb"] / fast["peak_rss_mb"],
    }


def bench_cdt_section(
    preset: str = "small",
    batch: int = 8,
    steps: int = 3,
    threads: int | None = None,
    allow_paper_reference: bool = False,
    cpu_allocator: str = "keep",
) -> dict[str, Any]:
    """The fast CDT against the per-sample reference, each in a fresh process, with the ratios the targets
    are about; at the paper preset the fast model alone unless `allow_paper_reference`."""
    if preset == "paper" and not allow_paper_reference:
        fast = bench_in_fresh_process(preset, batch, "fast", steps, threads=threads, cpu_allocator=cpu_allocator)
        result: dict[str, Any] = {
            "preset": preset,
            "batch": batch,
            "fast": fast,
            "reference": None,
            "reference_skipped": "paper preset: ~100 s and ~24 GB per reference step on "
            "2 CPU cores; pass --allow-paper-reference to run it",
        }
    else:
        result = compare_cdt_implementations(
            preset,
            batch,
            steps,
            threads=threads,
            allow_paper_reference=allow_paper_reference,
            cpu_allocator=cpu_allocator,
        )
    fast, reference = result["fast"], result["reference"]
    for one in (fast, reference):
        if one is None:
            continue
        one["steps_per_s"] = 1 / one["seconds_per_step"]
        if one.get("rss_before_steps_mb") is not None:
            one["rss_growth_mb"] = one["peak_rss_mb"] - one["rss_before_steps_mb"]
        if one.get("bf16_samples_per_s"):
            one["bf16_steps_per_s"] = one["bf16_samples_per_s"] / batch
    if reference is not None:
        if fast.get("rss_growth_mb") and reference.get("rss_growth_mb") is not None:
            result["rss_growth_reference_over_fast"] = reference["rss_growth_mb"] / fast["rss_growth_mb"]
        if fast.get("cuda_peak_mb") and reference.get("cuda_peak_mb"):
            result["cuda_peak_reference_over_fast"] = reference["cuda_peak_mb"] / fast["cuda_peak_mb"]
    eval_preset = "small" if preset == "paper" else preset  # paper-size evaluation on a CPU takes minutes per table
    shapes = {name: bench_cdt_eval(eval_preset, pairs_per_enhancer=ratio) for name, ratio in EVAL_SHAPES.items()}
    result["evaluation"] = {"preset": eval_preset, "threads": torch.get_num_threads(), "shapes": shapes}
    return result


def cdt_tables(r: dict[str, Any]) -> list[Table]:
    fast, ref = r["fast"], r["reference"]
    cuda = fast.get("cuda_peak_mb") is not None

    def row(label, key, ratio=None, target=None, ratio_target=None):
        f, g = fast.get(key), (ref or {}).get(key)
        return [
            label,
            f,
            g if ref else "not run",
            ratio if ratio is not None else "",
            target or "",
            verdict(ratio, ratio_target) if ratio_target else "",
        ]

    speed = r.get("speedup_samples_per_s")
    memory = r.get("cuda_peak_reference_over_fast") if cuda else r.get("peak_rss_reference_over_fast")
    rows = [
        row(
            "samples/s",
            "samples_per_s",
            speed,
            f"fast ≥ {TARGET_CDT_SPEEDUP:g}× reference",
            TARGET_CDT_SPEEDUP,
        ),
        row("seconds per step (median)", "seconds_per_step"),
    ]
    if cuda:
        rows.append(row("CUDA peak MB", "cuda_peak_mb", memory, "fast ≤ ½ reference", TARGET_CDT_MEMORY_RATIO))
        rows.append(row("bf16 autocast steps/s", "bf16_steps_per_s"))
        rows.append(row("peak RSS MB (host)", "peak_rss_mb", r.get("peak_rss_reference_over_fast")))
    else:
        rows.append(
            row("peak RSS MB (whole process)", "peak_rss_mb", memory, "fast ≤ ½ reference", TARGET_CDT_MEMORY_RATIO)
        )
        rows.append(
            row(
                "RSS added by the steps MB",
                "rss_growth_mb",
                r.get("rss_growth_reference_over_fast"),
                "fast ≤ ½ reference",
                TARGET_CDT_MEMORY_RATIO,
            )
        )
    notes = [
        "ratio: fast/reference for samples/s, reference/fast for memory; RSS added = peak RSS minus the "
        "RSS once model and inputs exist (the interpreter and torch, ~300 MB, are in both peaks)"
    ]
    if r.get("reference_skipped"):
        notes.append(f"reference not run: {r['reference_skipped']}")
    return [
        table(
            f"cdt: training step (forward, SmoothL1, backward, clip, AdamW), preset {r['preset']}, batch "
            f"{r['batch']}, median of {fast['steps']} steps after 1 warm-up, each in a fresh process on "
            f"{fast['device']} (threads: {fast['threads']}, allocator: {fast.get('cpu_allocator', 'system')})",
            ["measurement", "fast", "reference", "ratio", "target", "met"],
            rows,
            notes,
        ),
        *(cdt_eval_tables(r["evaluation"]) if r.get("evaluation") else []),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one CDT training-step benchmark; prints one JSON line")
    parser.add_argument("--preset", default="small", choices=tuple(PRESETS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--implementation", default="fast", choices=("fast", "reference"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--cpu-allocator",
        default="keep",
        choices=CPU_ALLOCATORS,
        help="keep: freed memory stays in the process, as `dogmacache train` does on CPU",
    )
    parser.add_argument(
        "--allow-paper-reference",
        action="store_true",
        help="run the per-sample reference at the paper preset on CPU (~100 s, ~24 GB per step)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = bench_cdt_step(
        args.preset,
        args.batch,
        args.implementation,
        args.steps,
        args.seed,
        allow_paper_reference=args.allow_paper_reference,
        cpu_allocator=args.cpu_allocator,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
