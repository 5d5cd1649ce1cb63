"""`dogmacache bench`: measured throughput of each stage (`make bench`), printed as tables with the targets
beside the numbers, saved as `DIR/<section>.json` (numbers + machine info) and `DIR/summary.md`.

Sections (all by default, each a couple of minutes on 2 CPU cores):
- cache: shard writes and random reads of Enformer-shaped items (`cache/bench.py`).
- embed: every adapter's tiny model on the demo inputs through `run_embed`, on CPU; the full-size random
  Enformer on CPU with `--full-enformer` (~28 s per window on 2 cores); on a CUDA machine also the
  full-size Enformer's fp32 / bf16 batch sweep, bf16 deviation, and the runner path's GPU busy fraction
  (`embed/bench.py`).
- cdt: training steps of the fast CDT against the per-sample reference, each in a fresh process
  (`train/bench_cdt.py`); the paper preset runs the fast model only unless `--allow-paper-reference`.

CPU timings are only as good as the machine is idle: torch's OpenMP threads spin-wait against other busy
processes (a tiny CDT step went from 7 ms to 0.7 s under one competing process on 2 cores). Each section
records the load average and how busy the cores were just before it starts, and says so when they were.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from dogmacache.contracts.provenance import package_versions
from dogmacache.devices import CPU_ALLOCATORS
from dogmacache.errors import InputError

SECTIONS = ("cache", "embed", "cdt")
TARGET_CDT_SPEEDUP = 2.0  # fast samples/s over the per-sample reference
TARGET_CDT_MEMORY_RATIO = 2.0  # reference peak memory over fast (fast at most half)
BUSY_WARNING = 0.2  # fraction of all cores busy with other processes at a section's start


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="measure cache, embed and CDT training throughput against the targets"
    )
    p.add_argument(
        "--out", default="out/bench", help="folder for <section>.json and summary.md (default out/bench)"
    )
    p.add_argument("--only", choices=SECTIONS, default=None, help="run one section (default: all)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads here and in the CDT processes (default: torch's, all cores)")  # fmt: skip
    g = p.add_argument_group("cache")
    g.add_argument("--items", type=int, default=64, help="cache benchmark: items (default 64)")
    g.add_argument(
        "--item-shape", default="896,3072", help="cache benchmark: item shape (default Enformer's 896,3072)"
    )
    g.add_argument("--compression", default="none", choices=("none", "zstd", "bitround"))
    g = p.add_argument_group("embed")
    g.add_argument(
        "--full-enformer",
        action="store_true",
        help="also the full-size random Enformer through run_embed on CPU (~30 s per window on 2 cores)",
    )
    g.add_argument("--embed-items", type=int, default=256,
                   help="tiny models: items per adapter, demo tables cut or repeated (default 256)")  # fmt: skip
    g.add_argument("--embed-workers", type=int, default=2,
                   help="DataLoader workers preparing inputs (default 2, as `dogmacache embed`)")  # fmt: skip
    g.add_argument(
        "--gpu-batches", default="1,2,4,8,16,32", help="CUDA: Enformer batch sweep (default 1,...,32)"
    )
    g.add_argument("--gpu-windows", type=int, default=256,
                   help="CUDA: windows of a random genome through the runner path (default 256)")  # fmt: skip
    g = p.add_argument_group("cdt")
    g.add_argument(
        "--cdt-preset",
        default="small",
        choices=("small", "paper", "tiny"),
        help="CDT size (default small; paper runs the fast model only unless --allow-paper-reference)",
    )
    g.add_argument(
        "--cdt-batch", type=int, default=8, help="samples per training step (default 8, the paper's)"
    )
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
    g.add_argument("--cpu-allocator", default="keep", choices=CPU_ALLOCATORS,
                   help="CPU: keep freed memory in each CDT process (as `dogmacache train` does) or use "
                        "malloc's defaults; applies to both implementations (default keep)")  # fmt: skip
    p.set_defaults(run=run)


# ---- the machine -------------------------------------------------------------------------------------------
def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies over all cores since boot, from /proc/stat; None off Linux."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def cpu_busy_fraction(interval: float = 0.5) -> float | None:
    """Fraction of all cores busy during `interval` seconds while this process sleeps: other processes."""
    before = _cpu_times()
    time.sleep(interval)
    after = _cpu_times()
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def machine_info() -> dict[str, Any]:
    """CPU model and cores, load and busy cores right now, torch and CUDA, package versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))  # fmt: skip
    except (OSError, StopIteration):
        pass
    cuda = torch.cuda.is_available()
    info: dict[str, Any] = {
        "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],  # 1, 5, 15 minutes
        "cpu_busy_others_at_start": cpu_busy_fraction(),  # all cores busy while this process slept 0.5 s
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name() if cuda else None,
        "platform": platform.platform(),
        "versions": package_versions(),
    }
    if cuda:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info |= {"cuda_runtime": torch.version.cuda, "cuda_capability": f"{props.major}.{props.minor}",
                 "cuda_memory_gb": round(props.total_memory / 1e9, 1)}  # fmt: skip
    return info


def machine_line(info: dict[str, Any]) -> str:
    busy = info.get("cpu_busy_others_at_start")
    load = info["load_average_at_start"]
    line = (f"{info['time_utc']}, {info['cpu_model']}, {info['cpu_cores_usable']} cores, torch {info['torch']} "
            f"(threads: {info['torch_threads']}), load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")  # fmt: skip
    if busy is not None:
        line += f", other processes busy on {busy:.0%} of the cores at start"
    if info.get("cuda_device"):
        line += (
            f"; GPU {info['cuda_device']} ({info.get('cuda_memory_gb')} GB, CUDA {info.get('cuda_runtime')})"
        )
    return line


def busy_warning(info: dict[str, Any]) -> str | None:
    busy = info.get("cpu_busy_others_at_start")
    if busy is None or busy < BUSY_WARNING:
        return None
    advice = "rerun on an idle machine" + (", or with --threads 1 to see the difference" if
                                           info.get("torch_threads", 1) > 1 else "")  # fmt: skip
    return (f"note: other processes kept {busy:.0%} of the {info['cpu_cores_usable']} cores busy at the start of this "
            "section; torch's threads contend with them and CPU timings can come out many times slower: "
            f"{advice}.")  # fmt: skip


# ---- number formatting and tables --------------------------------------------------------------------------
def fmt(value: Any) -> str:
    """Numbers to about 3 significant figures (thousands separated), integers whole; None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude >= 1e-3 or value == 0:
        return f"{value:.3g}"
    return f"{value:.2e}"


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def verdict(value: float | None, target: float, higher_is_better: bool = True) -> str:
    if value is None:
        return "–"
    return "yes" if (value >= target if higher_is_better else value <= target) else "NO"


def table(
    title: str, columns: list[str], rows: list[list[Any]], notes: list[str] | None = None
) -> dict[str, Any]:
    return {
        "title": title,
        "columns": columns,
        "rows": [[fmt(c) for c in row] for row in rows],
        "notes": notes or [],
    }


def render_text(t: dict[str, Any]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(t["columns"], *t["rows"], strict=True)]
    lines = [t["title"]]
    lines.append(
        "  " + "  ".join(str(c).ljust(w) for c, w in zip(t["columns"], widths, strict=True)).rstrip()
    )
    lines.append("  " + "  ".join("-" * w for w in widths))
    for row in t["rows"]:
        lines.append("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    lines += [f"  {note}" for note in t["notes"]]
    return "\n".join(lines)


def render_markdown(t: dict[str, Any]) -> str:
    lines = [
        f"**{t['title']}**",
        "",
        "| " + " | ".join(t["columns"]) + " |",
        "|" + "---|" * len(t["columns"]),
    ]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in t["rows"]]
    lines += [f"\n{note}" for note in t["notes"]]
    return "\n".join(lines)


# ---- sections ----------------------------------------------------------------------------------------------
def bench_cdt_section(preset: str = "small", batch: int = 8, steps: int = 3, threads: int | None = None,
                      allow_paper_reference: bool = False, cpu_allocator: str = "keep") -> dict[str, Any]:  # fmt: skip
    """The fast CDT against the per-sample reference, each in a fresh process, with the ratios the targets
    are about; at the paper preset the fast model alone unless `allow_paper_reference`."""
    from dogmacache.train import bench_cdt

    if preset == "paper" and not allow_paper_reference:
        fast = bench_cdt.bench_in_fresh_process(preset, batch, "fast", steps, threads=threads,
                                                cpu_allocator=cpu_allocator)  # fmt: skip
        result: dict[str, Any] = {"preset": preset, "batch": batch, "fast": fast, "reference": None,
                                  "reference_skipped": "paper preset: ~100 s and ~24 GB per reference step on "
                                                       "2 CPU cores; pass --allow-paper-reference to run it"}  # fmt: skip
    else:
        result = bench_cdt.compare_cdt_implementations(preset, batch, steps, threads=threads,
                                                       allow_paper_reference=allow_paper_reference,
                                                       cpu_allocator=cpu_allocator)  # fmt: skip
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
    return result


def run_section(name: str, args: argparse.Namespace) -> dict[str, Any]:
    if name == "cache":
        from dogmacache.cache.bench import bench_cache

        shape = tuple(int(s) for s in args.item_shape.split(","))
        return bench_cache(n_items=args.items, item_shape=shape, compression=args.compression)
    if name == "embed":
        from dogmacache.embed.bench import bench_embed

        batches = tuple(int(b) for b in args.gpu_batches.split(","))
        return bench_embed(n_items=args.embed_items, num_workers=args.embed_workers, full_enformer=args.full_enformer,
                           gpu_batches=batches, gpu_windows=args.gpu_windows)  # fmt: skip
    return bench_cdt_section(args.cdt_preset, args.cdt_batch, args.cdt_steps, threads=args.threads,
                             allow_paper_reference=args.allow_paper_reference,
                             cpu_allocator=args.cpu_allocator)  # fmt: skip


def cache_tables(r: dict[str, Any]) -> list[dict[str, Any]]:
    batch_key = next((k for k in r if k.startswith("batch") and k.endswith("_items_per_s")), None)
    rows = [["shard writes (cast, checks, sha256, write)", r["write_MB_per_s"], "MB/s"],
            ["random single-item reads", r["random_item_read_MB_per_s"], "MB/s"],
            ["random single-item reads", r["random_items_per_s"], "items/s"]]  # fmt: skip
    if batch_key:
        rows.append([f"{batch_key.split('_')[0]} reads as float32", r[batch_key], "items/s"])
    rows.append(["size logical / on disk", f"{fmt(r['logical_MB'])} / {fmt(r['on_disk_MB'])}", "MB"])
    shape = "×".join(str(s) for s in r["item_shape"])
    return [table(f"cache: {r['n_items']} items of {shape} {r['dtype']}, {r['shard_items']} per shard, "
                  f"compression {r['compression']} (no target)", ["measurement", "measured", "unit"], rows)]  # fmt: skip


def embed_tables(r: dict[str, Any]) -> list[dict[str, Any]]:
    from dogmacache.embed import bench as eb

    tiny = r["tiny_cpu"]
    rows = [
        [c["label"], c["items"], c["items_per_s"], c["seconds"], c["setup_seconds"]] for c in tiny["cases"]
    ]
    out = [table(f"embed: tiny models on {tiny['device']}, demo inputs through run_embed into a temporary cache "
                 f"({tiny['num_workers']} DataLoader workers; no target)",
                 ["model, input", "items", "items/s", "wall s (excl. load)", "setup s (load etc.)"], rows,
                 ["wall: the runner's clock from after the model load until the cache is finalised; scGPT gene "
                  "tokens are the demo's 35 symbols (ids are vocabulary symbols, not repeated)"])]  # fmt: skip
    full = r.get("full_enformer_cpu")
    if full:
        lo, hi = full["reference_seconds_per_window"]
        out.append(table(
            f"embed: full-size random Enformer (196,608 bp, 896×3072) on CPU, fp32, {full['threads']} threads, "
            "through run_embed",
            ["measurement", "measured", "reference"],
            [["seconds per window (run_embed)", full["seconds_per_window"], f"{lo}–{hi} s on 2 cores (REFERENCE §2)"],
             ["seconds per window in forward", full["forward_seconds_per_window"], ""],
             ["windows", full["windows"], ""]]))  # fmt: skip
    gpu = r.get("gpu")
    if gpu:
        by = {(s["precision"], s["batch"]): s for s in gpu["sweep"]}
        batches = sorted({s["batch"] for s in gpu["sweep"]})
        rows = []
        for b in batches:
            f32, b16 = by.get(("fp32", b), {}), by.get(("bf16", b), {})
            ratio = (b16["windows_per_s"] / f32["windows_per_s"]
                     if f32.get("windows_per_s") and b16.get("windows_per_s") else None)  # fmt: skip
            rows.append([b, "OOM" if f32.get("oom") else f32.get("windows_per_s"),
                         "OOM" if b16.get("oom") else b16.get("windows_per_s"), ratio,
                         f32.get("tflop_per_s"), b16.get("tflop_per_s"), b16.get("peak_memory_gb")])  # fmt: skip
        size = "full-size" if gpu["full_size"] else "tiny"
        out.append(table(f"embed: {size} random Enformer on {gpu['device']}, forward only (batch already on the GPU)",
                         ["batch", "fp32 windows/s", "bf16 windows/s", "bf16/fp32", "fp32 TFLOP/s", "bf16 TFLOP/s",
                          "bf16 peak GB"], rows,
                         [f"TFLOP/s assume {fmt(gpu['tflop_per_window_assumed'])} TFLOP per window (counted here: "
                          f"{fmt(gpu['tflop_per_window_counted'])}); fp32 = torch defaults (TF32 convs "
                          f"{gpu['tf32']['cudnn']}, TF32 matmuls {gpu['tf32']['matmul']})"]))  # fmt: skip
        runs = gpu.get("runner", [])
        out.append(table("embed: Enformer through the runner path (random-genome windows, DataLoader workers)",
                         ["path", "workers", "precision", "windows", "windows/s", "GPU busy", "NVML util",
                          "TFLOP/s"],
                         [[run["mode"], run["num_workers"], run["precision"], run["windows"], run["windows_per_s"],
                           pct(run["busy_fraction"]), "–" if run["nvml_mean_utilisation_percent"] is None
                           else f"{run['nvml_mean_utilisation_percent']:.0f}%", run["tflop_per_s"]] for run in runs],
                         ["stream = embed_stream (prepare, batch, forward, to host); run_embed = the whole command "
                          "with shard writes; GPU busy = CUDA-event time inside forward calls / wall"]))  # fmt: skip
        best = gpu.get("best", {})
        bf16_best = best.get("bf16", {}).get("windows_per_s")
        dev = gpu.get("bf16_vs_fp32", {})
        target_rows = [
            ["bf16 / fp32 windows/s (best batch of each)", gpu.get("bf16_over_fp32_best"),
             f"≥ {eb.TARGET_BF16_OVER_FP32:g}×", verdict(gpu.get("bf16_over_fp32_best"), eb.TARGET_BF16_OVER_FP32)],
            [f"bf16 windows/s, forward, batch {best.get('bf16', {}).get('batch')}", bf16_best,
             f"≥ {eb.TARGET_WINDOWS_PER_S:g} (one H100)", verdict(bf16_best, eb.TARGET_WINDOWS_PER_S)],
        ]  # fmt: skip
        for run in runs:
            name = f"{run['mode']}, {run['num_workers']} workers"
            target_rows.append([f"runner windows/s ({name})", run["windows_per_s"],
                                f"≥ {eb.TARGET_WINDOWS_PER_S:g} (one H100)",
                                verdict(run["windows_per_s"], eb.TARGET_WINDOWS_PER_S)])  # fmt: skip
            target_rows.append([f"GPU busy ({name})", pct(run["busy_fraction"]), f"≥ {pct(eb.TARGET_GPU_BUSY)}",
                                verdict(run["busy_fraction"], eb.TARGET_GPU_BUSY)])  # fmt: skip
        target_rows += [
            ["bf16 vs fp32: max |Δ| / max |fp32|", dev.get("max_abs_over_max_abs_fp32"), "(reported)", ""],
            ["bf16 vs fp32: median relative error", dev.get("median_relative_error"), "(reported)", ""],
            ["bf16 vs fp32: ‖Δ‖ / ‖fp32‖", dev.get("relative_l2"), "(reported)", ""],
        ]  # fmt: skip
        out.append(
            table(
                "embed: GPU targets",
                ["measurement", "measured", "target", "met"],
                target_rows,
                [f"deviation over {dev.get('windows')} windows against {dev.get('reference')}"],
            )
        )
    return out


def cdt_tables(r: dict[str, Any]) -> list[dict[str, Any]]:
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
        rows.append(
            row("CUDA peak MB", "cuda_peak_mb", memory, "fast ≤ ½ reference", TARGET_CDT_MEMORY_RATIO)
        )
        rows.append(row("bf16 autocast steps/s", "bf16_steps_per_s"))
        rows.append(row("peak RSS MB (host)", "peak_rss_mb", r.get("peak_rss_reference_over_fast")))
    else:
        rows.append(row("peak RSS MB (whole process)", "peak_rss_mb", memory, "fast ≤ ½ reference",
                        TARGET_CDT_MEMORY_RATIO))  # fmt: skip
        rows.append(row("RSS added by the steps MB", "rss_growth_mb", r.get("rss_growth_reference_over_fast"),
                        "fast ≤ ½ reference", TARGET_CDT_MEMORY_RATIO))  # fmt: skip
    notes = ["ratio: fast/reference for samples/s, reference/fast for memory; RSS added = peak RSS minus the "
             "RSS once model and inputs exist (the interpreter and torch, ~300 MB, are in both peaks)"]  # fmt: skip
    if r.get("reference_skipped"):
        notes.append(f"reference not run: {r['reference_skipped']}")
    return [table(f"cdt: training step (forward, SmoothL1, backward, clip, AdamW), preset {r['preset']}, batch "
                  f"{r['batch']}, median of {fast['steps']} steps after 1 warm-up, each in a fresh process on "
                  f"{fast['device']} (threads: {fast['threads']}, allocator: {fast.get('cpu_allocator', 'system')})",
                  ["measurement", "fast", "reference", "ratio", "target", "met"], rows, notes)]  # fmt: skip


TABLES = {"cache": cache_tables, "embed": embed_tables, "cdt": cdt_tables}


def _check(args: argparse.Namespace) -> None:
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads {args.threads} must be at least 1")
    for flag, value in (("--embed-items", args.embed_items), ("--cdt-batch", args.cdt_batch),
                        ("--cdt-steps", args.cdt_steps), ("--items", args.items)):  # fmt: skip
        if value < 1:
            raise InputError(f"{flag} {value} must be at least 1")
    if args.embed_workers < 0 or args.gpu_windows < 0:
        raise InputError("--embed-workers and --gpu-windows must be 0 or more")
    try:
        batches = [int(b) for b in args.gpu_batches.split(",")]
        shape = [int(s) for s in args.item_shape.split(",")]
    except ValueError as err:
        raise InputError(f"--gpu-batches and --item-shape are comma-separated integers ({err})") from err
    if min(batches) < 1 or min(shape) < 1:
        raise InputError("--gpu-batches and --item-shape take positive integers")


def run(args: argparse.Namespace) -> int:
    _check(args)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = [args.only] if args.only else list(SECTIONS)
    options = {k: v for k, v in vars(args).items() if k not in ("run", "command")}
    failed = []
    for name in sections:
        machine = machine_info()
        print(f"[{name}] {machine_line(machine)}", flush=True)
        warning = busy_warning(machine)
        if warning:
            print(f"  {warning}", flush=True)
        t0 = time.perf_counter()
        try:
            results = run_section(name, args)
        except Exception as err:  # noqa: BLE001 - one broken section must not hide the others' numbers
            if isinstance(err, InputError):
                raise
            failed.append(name)
            results = {"error": f"{type(err).__name__}: {err}"}
            print(f"  {name} failed: {results['error']}", flush=True)
        seconds = time.perf_counter() - t0
        record = {"section": name, "seconds": round(seconds, 1), "machine": machine, "options": options,
                  "results": results}  # fmt: skip
        (out / f"{name}.json").write_text(json.dumps(record, indent=2, default=str))
        for t in section_tables(record):
            print(render_text(t), flush=True)
        print(f"  ({name}: {seconds:.0f} s)\n", flush=True)
    (out / "summary.md").write_text(summary_markdown(out))
    print(f"results in {out}/ ({', '.join(f'{s}.json' for s in sections)}, summary.md)")
    return 1 if failed else 0


def section_tables(record: dict[str, Any]) -> list[dict[str, Any]]:
    results = record["results"]
    return [] if "error" in results else TABLES[record["section"]](results)


def summary_markdown(folder: Path) -> str:
    """Every `<section>.json` in `folder` (this run's and earlier ones) as markdown tables."""
    lines = ["# dogmacache bench", ""]
    for name in SECTIONS:
        path = folder / f"{name}.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        if not {"section", "machine", "results", "seconds"} <= set(record):
            lines += [
                f"## {name}",
                "",
                f"{path.name} is from an older `dogmacache bench`; rerun this section.",
                "",
            ]
            continue
        lines += [f"## {name}", "", f"Measured {machine_line(record['machine'])}; {record['seconds']:.0f} s."]
        warning = busy_warning(record["machine"])
        if warning:
            lines.append(f"\n_{warning}_")
        lines.append("")
        if "error" in record["results"]:
            lines.append(f"failed: {record['results']['error']}\n")
        lines += [render_markdown(t) + "\n" for t in section_tables(record)]
    return "\n".join(lines)
