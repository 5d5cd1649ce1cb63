"""`dogmacache bench`: measured throughput of each stage (`make bench`), printed as tables with the targets
beside the numbers, saved as `DIR/<section>.json` (numbers + machine info) and `DIR/summary.md`.

Sections (all but gpu by default, each a couple of minutes on 2 CPU cores):
- cache: shard writes and random reads of Enformer-shaped items (`bench/cache.py`).
- embed: every adapter's tiny model on the demo inputs through `run_embed`, on CPU; the full-size random
  Enformer on CPU with `--full-enformer` (~28 s per window on 2 cores); on a CUDA machine also the
  full-size Enformer's fp32 / bf16 batch sweep, bf16 deviation, and the runner path's GPU busy fraction
  (`bench/embed.py`).
- threads: the demo's Enformer windows and 2,048 tiny ESM-2 proteins on CPU with the default input workers and
  torch threads (as each run decides them) against fixed settings, as the machine is and with one busy process
  added (`bench/threads.py`).
- reuse: a table overlapping an existing cache by 90 % embedded with `--reuse` against a full embed, on the
  tiny demo models (`bench/reuse.py`).
- cdt: training steps of the fast CDT against the per-sample reference, each in a fresh process
  (`bench/cdt.py`); the paper preset runs the fast model only unless `--allow-paper-reference`.
- mutate: an in-silico edit's re-embedding against re-embedding every window (`bench/mutate.py`).
- train-memory: the peak memory of one training epoch from caches of two sizes, each in a fresh process
  (`bench/train_memory.py`).
- gpu (`--only gpu`, `make bench-gpu`; not among the defaults): every accelerator measurement, sized by
  `--gpu-size` (`bench/gpu.py`).

This module turns the flags into each section's arguments; the tables, JSON and summary are `bench/report.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dogmacache.bench import report
from dogmacache.bench.cache import bench_cache, cache_tables
from dogmacache.bench.cdt import bench_cdt_section, cdt_tables
from dogmacache.bench.embed import bench_embed, embed_tables
from dogmacache.bench.gpu import PARTS as GPU_PARTS
from dogmacache.bench.gpu_tables import gpu_tables
from dogmacache.bench.mutate import bench_mutate, mutate_tables
from dogmacache.bench.reuse import bench_reuse, reuse_tables
from dogmacache.bench.threads import bench_threads, threads_tables
from dogmacache.bench.train_memory import bench_train_memory, train_memory_tables
from dogmacache.devices import CPU_ALLOCATORS
from dogmacache.errors import InputError
from dogmacache.train.tasks.cdt.sizes import PRESETS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="measure cache, embed and CDT training throughput against the targets")
    p.add_argument("--out", default="out/bench", help="folder for <section>.json and summary.md (default out/bench)")
    p.add_argument("--only", choices=tuple(SECTIONS), default=None, help="run one section (default: all)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads of this process and the CDT processes (default: torch's, all cores); the "
        "sections that embed choose their own count as `dogmacache embed` does, and train-memory's processes "
        "take torch's default",
    )
    g = p.add_argument_group("cache")
    g.add_argument(
        "--items", type=int, default=200, help="cache benchmark: items (default 200: 1.1 GB of Enformer rows)"
    )
    g.add_argument("--item-shape", default="896,3072", help="cache benchmark: item shape (default Enformer's 896,3072)")
    g.add_argument("--compression", default="none", choices=("none", "zstd", "bitround"))
    g = p.add_argument_group("embed")
    g.add_argument(
        "--full-enformer",
        action="store_true",
        help="also the full-size random Enformer through run_embed on CPU (~30 s per window on 2 cores)",
    )
    g.add_argument(
        "--embed-items",
        type=int,
        default=256,
        help="tiny models: items per adapter, demo tables cut or repeated (default 256)",
    )
    g.add_argument(
        "--embed-workers",
        type=int,
        default=2,
        help="DataLoader workers preparing inputs (default 2; `dogmacache embed` decides from the cores, see the "
        "threads section)",
    )
    g.add_argument("--gpu-batches", default="1,2,4,8,16,32", help="CUDA: Enformer batch sweep (default 1,...,32)")
    g.add_argument(
        "--gpu-windows",
        type=int,
        default=256,
        help="CUDA: windows of a random genome through the runner path (default 256)",
    )
    g = p.add_argument_group("cdt")
    g.add_argument(
        "--cdt-preset",
        default="small",
        choices=tuple(PRESETS),
        help="CDT size (default small; paper runs the fast model only unless --allow-paper-reference)",
    )
    g.add_argument("--cdt-batch", type=int, default=8, help="samples per training step (default 8, the paper's)")
    g.add_argument(
        "--cdt-steps",
        type=int,
        default=3,
        help="timed steps per implementation, after one warm-up (default 3; the median is reported)",
    )
    g.add_argument(
        "--allow-paper-reference",
        action="store_true",
        help="run the per-sample reference at the paper preset too (CPU: ~100 s and ~24 GB per step)",
    )
    g.add_argument(
        "--cpu-allocator",
        default="keep",
        choices=CPU_ALLOCATORS,
        help="CPU: keep freed memory in each CDT process (as `dogmacache train` does) or use "
        "malloc's defaults; applies to both implementations (default keep)",
    )
    g = p.add_argument_group("gpu (only with --only gpu: `make bench-gpu`)")
    g.add_argument(
        "--gpu-size",
        default="full",
        choices=("full", "tiny"),
        help="full: paper-size models (minutes on one GPU); tiny: the same code in seconds, CPU too",
    )
    g.add_argument(
        "--gpu-parts",
        default=None,
        help=f"comma-separated parts to measure (default all: {', '.join(GPU_PARTS)}); each one's result is written "
        "to gpu.partial.json as it ends",
    )
    p.set_defaults(run=run, interrupted=_interrupted)
    _DEFAULTS.update({dest: p.get_default(dest) for flags in SECTION_FLAGS.values() for dest in flags})


def _interrupted(args: argparse.Namespace) -> str:
    return (
        f"{args.out} keeps the sections finished before the stop, and no earlier record of the one stopped "
        "(gpu: the parts that ended are in gpu.partial.json); re-run to measure it (a section starts over)"
    )


def _integers(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(","))


def _cache(args: argparse.Namespace) -> dict[str, Any]:
    return bench_cache(n_items=args.items, item_shape=_integers(args.item_shape), compression=args.compression)


def _embed(args: argparse.Namespace) -> dict[str, Any]:
    return bench_embed(
        n_items=args.embed_items,
        num_workers=args.embed_workers,
        full_enformer=args.full_enformer,
        gpu_batches=_integers(args.gpu_batches),
        gpu_windows=args.gpu_windows,
    )


def _gpu_parts(args: argparse.Namespace) -> tuple[str, ...]:
    """The GPU parts --gpu-parts names (all without it), checked."""
    from dogmacache.bench.gpu import PARTS, check_parts

    parts = PARTS if args.gpu_parts is None else tuple(p.strip() for p in args.gpu_parts.split(",") if p.strip())
    check_parts(parts)
    return parts


def _gpu(args: argparse.Namespace) -> dict[str, Any]:
    from dogmacache.bench.gpu import bench_gpu

    parts = _gpu_parts(args)
    partial = Path(args.out) / "gpu.partial.json"
    started = {"partial": True, "requested": list(parts), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def keep(record: dict[str, Any]) -> None:  # what ran so far, should the command be stopped before the end
        staged = partial.with_name(f".{partial.name}.tmp")
        staged.write_text(json.dumps({**started, **record}, indent=2, default=str) + "\n")
        os.replace(staged, partial)  # never half a file, nor an earlier run's parts under this run's name

    keep({})
    return bench_gpu(args.gpu_size, parts=parts, on_part=keep)


def _cdt(args: argparse.Namespace) -> dict[str, Any]:
    return bench_cdt_section(
        args.cdt_preset,
        args.cdt_batch,
        args.cdt_steps,
        threads=args.threads,
        allow_paper_reference=args.allow_paper_reference,
        cpu_allocator=args.cpu_allocator,
    )


# the flags each section reads (beside --out, --only and --threads): a section's record keeps these alone, and a flag
# given away from its default that no section run reads is refused
SECTION_FLAGS: dict[str, tuple[str, ...]] = {
    "cache": ("items", "item_shape", "compression"),
    "embed": ("full_enformer", "embed_items", "embed_workers", "gpu_batches", "gpu_windows"),
    "cdt": ("cdt_preset", "cdt_batch", "cdt_steps", "allow_paper_reference", "cpu_allocator"),
    "gpu": ("gpu_size", "gpu_parts"),
}
COMMON_FLAGS = ("out", "only", "threads")
_DEFAULTS: dict[str, Any] = {}  # each section flag's default, from the parser


# section -> (run it from the parsed flags, its tables), in the order they run and appear in summary.md
SECTIONS: dict[str, tuple[Callable[[argparse.Namespace], dict[str, Any]], report.TablesFor]] = {
    "cache": (_cache, cache_tables),
    "embed": (_embed, embed_tables),
    "threads": (lambda args: bench_threads(), threads_tables),
    "cdt": (_cdt, cdt_tables),
    "reuse": (lambda args: bench_reuse(), reuse_tables),
    "mutate": (lambda args: bench_mutate(), mutate_tables),
    "train-memory": (lambda args: bench_train_memory(), train_memory_tables),
    "gpu": (_gpu, gpu_tables),
}
DEFAULT_SECTIONS = (
    "cache",
    "embed",
    "threads",
    "reuse",
    "cdt",
    "mutate",
    "train-memory",
)  # `gpu` runs on its own (`make bench-gpu`)
TABLES: dict[str, report.TablesFor] = {name: tables for name, (_, tables) in SECTIONS.items()}


def _check(args: argparse.Namespace) -> None:
    if args.gpu_parts is not None:  # before any section removes its earlier record
        _gpu_parts(args)
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads {args.threads} must be at least 1")
    for flag, value in (
        ("--embed-items", args.embed_items),
        ("--cdt-batch", args.cdt_batch),
        ("--cdt-steps", args.cdt_steps),
        ("--items", args.items),
    ):
        if value < 1:
            raise InputError(f"{flag} {value} must be at least 1")
    if args.embed_workers < 0 or args.gpu_windows < 0:
        raise InputError("--embed-workers and --gpu-windows must be 0 or more")
    try:
        batches, shape = _integers(args.gpu_batches), _integers(args.item_shape)
    except ValueError as err:
        raise InputError(f"--gpu-batches and --item-shape are comma-separated integers ({err})") from err
    if min(batches) < 1 or min(shape) < 1:
        raise InputError("--gpu-batches and --item-shape take positive integers")
    run = {args.only} if args.only else set(DEFAULT_SECTIONS)
    read = {dest for name in run for dest in SECTION_FLAGS.get(name, ())}
    for name, flags in SECTION_FLAGS.items():
        for dest in flags:
            if dest not in read and dest in _DEFAULTS and getattr(args, dest) != _DEFAULTS[dest]:
                flag = "--" + dest.replace("_", "-")
                value = "" if isinstance(getattr(args, dest), bool) else f" {getattr(args, dest)}"
                raise InputError(
                    f"{flag}{value} applies to the {name} section, which this run does not measure: add --only "
                    f"{name}, or leave {flag} out"
                )
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise InputError(f"--out {args.out} is a file; the bench writes a folder of results there: choose another")
    if args.only == "gpu" and args.gpu_size == "full":
        import torch

        if not torch.cuda.is_available():
            raise InputError(
                "--only gpu at --gpu-size full runs the full-size models, hours on a CPU, and torch sees no CUDA "
                "device; run it on a GPU machine, or pass --gpu-size tiny (make bench-gpu BENCH_SIZE=tiny)"
            )


def run(args: argparse.Namespace) -> int:
    _check(args)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = [args.only] if args.only else list(DEFAULT_SECTIONS)
    given = vars(args)
    failed = []
    for name in sections:
        machine = report.machine_info()
        print(f"[{name}] {report.machine_line(machine)}", flush=True)
        warning = report.busy_warning(machine)
        if warning:
            print(f"  {warning}", flush=True)
        run_section, _ = SECTIONS[name]
        # an earlier run's record of this section goes first, and summary.md with it: a stop midway leaves no
        # earlier numbers standing as this run's (the gpu section keeps its parts in gpu.partial.json as they end)
        (out / f"{name}.json").unlink(missing_ok=True)
        (out / "summary.md").write_text(report.summary_markdown(out, TABLES))
        t0 = time.perf_counter()
        try:
            results = run_section(args)
        except Exception as err:  # noqa: BLE001 - one broken section must not hide the others' numbers
            if isinstance(err, InputError):
                raise
            failed.append(name)
            results = {"error": f"{type(err).__name__}: {err}"}
            print(f"  {name} failed: {results['error']}", flush=True)
        if results.get("failed_parts"):  # a section that measured on past a broken part (gpu)
            failed.append(name)
        seconds = time.perf_counter() - t0
        record = {
            "section": name,
            "seconds": round(seconds, 1),
            "machine": machine,
            "options": {k: given[k] for k in (*COMMON_FLAGS, *SECTION_FLAGS.get(name, ())) if k in given},
            "results": results,
        }
        report.write_record(out, record)
        for t in report.record_tables(record, TABLES):
            print(report.render_text(t), flush=True)
        print(f"  ({name}: {seconds:.0f} s)\n", flush=True)
    (out / "summary.md").write_text(report.summary_markdown(out, TABLES))
    print(f"results in {out}/ ({', '.join(f'{s}.json' for s in sections)}, summary.md)")
    return 1 if failed else 0
