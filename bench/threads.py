"""The threads section of `dogmacache bench`: the demo's Enformer windows through `run_embed` on the CPU with the
default input workers and torch threads (`devices.cpu_plan`) beside fixed settings, on the machine as it is and
again with one busy process added, so that the default can be held to the best setting under contention too.

Each setting runs `repeats` times, the settings taking turns, each a fresh cache timed by the runner's own
clock (after the model load, until the cache is finalised); the load average is read before each condition.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dogmacache.bench.report import Table, table, verdict
from dogmacache.bench.timing import timed_run_embed
from dogmacache.devices import cpu_plan, usable_cores
from dogmacache.embed.runner import EmbedConfig

TARGET_DEFAULT_OVER_BEST = 1.2  # the default's median seconds at most this times the best setting's
BUSY_LOOP = "while True: pass"


def settings_to_try(cores: int) -> list[tuple[int, int]]:
    """(workers, threads) pairs: the default (`devices.cpu_plan`) first, then one thread with no input worker and
    with one, all the cores with none, and the cores with two workers (the default before it followed the
    cores); each pair once, so the default is not compared with itself."""
    default = cpu_plan("cpu", cores=cores)
    return list(dict.fromkeys([(default.workers, default.threads), (0, 1), (1, 1), (0, cores), (2, cores)]))


def bench_threads(repeats: int = 3, busy: bool = True, workdir: str | None = None) -> dict[str, Any]:
    """Median runner seconds of the demo's DNA windows (tiny Enformer, CPU) per (workers, threads) setting,
    as the machine is ("as is") and, with `busy`, with one `python -c 'while True: pass'` beside it."""
    from dogmacache.data_recipes.demo import build_demo
    from dogmacache.embed.tiny import make_tiny

    cores = usable_cores()
    root = Path(tempfile.mkdtemp(prefix="dogmacache-bench-threads-", dir=workdir))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            build_demo(root / "recipe")
            model = make_tiny(root / "models", names=["enformer"])["enformer"]

        def config(workers: int, threads: int) -> EmbedConfig:
            return EmbedConfig(
                input=str(root / "recipe" / "cdt" / "dna_windows.parquet"),
                modality="dna",
                model="enformer",
                out=str(root / "cache.zarr"),
                model_path=str(model),
                genome=str(root / "recipe" / "genome.fa"),
                device="cpu",
                num_workers=workers,
                torch_threads=threads,
                overwrite=True,
                progress=False,
                fidelity_items=0,
            )

        settings = settings_to_try(cores)
        timed_run_embed(config(0, 1))  # warm-up: imports, first-call allocations
        conditions = {"as is": _measure(config, settings, repeats)}
        if busy:
            loop = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
            try:
                conditions["one busy process added"] = _measure(config, settings, repeats)
            finally:
                loop.kill()
                loop.wait()
        items = len(pd.read_parquet(root / "recipe" / "cdt" / "dna_windows.parquet"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "cores": cores,
        "items": items,
        "repeats": repeats,
        "conditions": conditions,
    }


def _measure(config, settings: list[tuple[int, int]], repeats: int) -> dict[str, Any]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    seconds: dict[int, list[float]] = {i: [] for i in range(len(settings))}
    for _ in range(repeats):
        for i, (workers, threads) in enumerate(settings):
            seconds[i].append(timed_run_embed(config(workers, threads))["seconds"])
    rows = [
        {"workers": w, "threads": t, "median_s": float(np.median(s)), "seconds": s}
        for (w, t), s in zip(settings, seconds.values(), strict=True)
    ]
    best = min(r["median_s"] for r in rows)
    return {
        "load_average_1min": load,
        "best_s": best,
        "default_over_best": rows[0]["median_s"] / max(best, 1e-9),
        "rows": rows,
    }


def threads_tables(r: dict[str, Any]) -> list[Table]:
    names = list(r["conditions"])
    rows = []
    for i, row in enumerate(r["conditions"][names[0]]["rows"]):
        label = f"{row['workers']} workers, {row['threads']} threads" + (" (the default)" if i == 0 else "")
        rows.append([label, *(r["conditions"][n]["rows"][i]["median_s"] for n in names)])
    ratios = [r["conditions"][n]["default_over_best"] for n in names]
    rows.append(["default / best", *ratios])
    rows.append(
        [
            f"default within {TARGET_DEFAULT_OVER_BEST:g}x of the best",
            *(verdict(x, TARGET_DEFAULT_OVER_BEST, higher_is_better=False) for x in ratios),
        ]
    )
    loads = ", ".join(f"{n}: {r['conditions'][n]['load_average_1min']:.2f}" for n in names)
    return [
        table(
            f"threads: the demo's {r['items']} Enformer windows (tiny model, CPU) through run_embed, median runner "
            f"seconds of {r['repeats']}, {r['cores']} usable cores",
            ["input workers, torch threads", *(f"seconds, {n}" for n in names)],
            rows,
            [
                f"1-minute load average before each condition: {loads}; the busy process is "
                f"`python -c '{BUSY_LOOP}'`, killed after; the default comes from devices.cpu_plan"
            ],
        )
    ]
