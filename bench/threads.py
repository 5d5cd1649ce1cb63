"""The threads section of `dogmacache bench`: the demo's Enformer windows and 2,048 proteins (tiny ESM-2) through
`run_embed` on the CPU with the default input workers and torch threads (decided by each run: `devices.cpu_plan`)
beside fixed settings, on the machine as it is and again with one busy process added, so that the default can be
held to the best setting idle and under contention.

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
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dogmacache.bench.report import Table, table, verdict
from dogmacache.bench.timing import demo_config, timed_run_embed
from dogmacache.devices import usable_cores

TARGET_DEFAULT_OVER_BEST = 1.2  # the default's median seconds at most this times the best setting's
# one core kept busy, in pure Python; it ends when the bench does (its parent gone: killed, Ctrl-C or SIGTERM)
# one busy core until the process given as its argument, its parent, is gone: the parent's pid is passed, not read
# by the child, which could read its new parent's if the bench were stopped while the child was starting
BUSY_LOOP = (
    "import os, sys\nparent = int(sys.argv[1])\nwhile os.getppid() == parent:\n    for _ in range(100_000): pass"
)


DEFAULT = (None, None)  # the settings `dogmacache embed` decides for itself, run by run (`devices.cpu_plan`)


def settings_to_try(cores: int) -> list[tuple[int | None, int | None]]:
    """(workers, threads) pairs: the default first (left to the runner, which watches the cores before each run),
    then one thread with no input worker and with one, all the cores with none, and the cores with two workers."""
    return [DEFAULT, *dict.fromkeys([(0, 1), (1, 1), (0, cores), (2, cores)])]


PROTEINS = 2048  # the ESM-2 case: demo proteins with one residue changed per copy (`bench.reuse`'s maker)


def bench_threads(
    repeats: int = 3, busy: bool = True, workdir: str | None = None, proteins: int = PROTEINS
) -> dict[str, Any]:
    """Median runner seconds per (workers, threads) setting of two tables on the CPU: the demo's DNA windows (tiny
    Enformer) and `proteins` proteins (tiny ESM-2, whose inputs are prepared in the process by default), as the
    machine is ("as is") and, with `busy`, with one busy Python loop beside it (BUSY_LOOP)."""
    from dogmacache.bench.reuse import protein_items
    from dogmacache.data_recipes.demo import build_demo
    from dogmacache.embed.tiny import make_tiny

    cores = usable_cores()
    root = Path(tempfile.mkdtemp(prefix="dogmacache-bench-threads-", dir=workdir))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            build_demo(root / "recipe")
            models = make_tiny(root / "models", names=["enformer", "esm2"])
        table = root / "proteins.parquet"
        items = protein_items(root / "recipe", proteins, np.random.default_rng(0))
        items.assign(id=[f"p{i}" for i in range(len(items))]).to_parquet(table)
        cases = [
            ("Enformer", "DNA windows", root / "recipe" / "cdt" / "dna_windows.parquet", "dna", "enformer"),
            ("ESM-2", "proteins", table, "protein", "esm2"),
        ]
        out = []
        for label, unit, path, modality, model in cases:

            def config(workers: int | None, threads: int | None, path=path, modality=modality, model=model):
                return demo_config(
                    root,
                    models,
                    model,
                    modality,
                    path,
                    root / "cache.zarr",
                    num_workers=workers,
                    torch_threads=threads,
                    overwrite=True,
                    fidelity_items=0,
                )

            out.append(
                {
                    "label": label,
                    "unit": unit,
                    "items": len(pd.read_parquet(path)),
                    **_conditions(config, cores, repeats, busy),
                }
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"cores": cores, "repeats": repeats, "cases": out}


def _conditions(config, cores: int, repeats: int, busy: bool) -> dict[str, Any]:
    settings = settings_to_try(cores)
    timed_run_embed(config(0, 1))  # warm-up: imports, first-call allocations
    conditions = {"as is": _measure(config, settings, repeats)}
    if busy:
        loop = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(os.getpid())])
        try:
            conditions["one busy process added"] = _measure(config, settings, repeats)
        finally:
            loop.kill()
            loop.wait()
    return {"conditions": conditions}


def _measure(config, settings: list[tuple[int | None, int | None]], repeats: int) -> dict[str, Any]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    seconds: dict[int, list[float]] = {i: [] for i in range(len(settings))}
    setup: dict[int, list[float]] = {i: [] for i in range(len(settings))}  # table read, model load, watching
    chosen: list[tuple[int, int]] = []  # what the default decided, run by run
    for _ in range(repeats):
        for i, (workers, threads) in enumerate(settings):
            run = config(workers, threads)
            timed = timed_run_embed(run)
            seconds[i].append(timed["seconds"])
            setup[i].append(timed["setup_seconds"])
            if (workers, threads) == DEFAULT:  # what the run used: a short pass prepares its rows in the process
                chosen.append((int(timed["num_workers"]), int(timed["torch_threads"])))
    rows = [
        {"workers": w, "threads": t, "median_s": float(np.median(s)), "seconds": s, "setup_s": float(np.median(u))}
        for (w, t), s, u in zip(settings, seconds.values(), setup.values(), strict=True)
    ]
    best = min(r["median_s"] for r in rows)
    return {
        "load_average_1min": load,
        "best_s": best,
        "default_over_best": rows[0]["median_s"] / max(best, 1e-9),
        "default_chose": chosen,
        "rows": rows,
    }


def threads_tables(r: dict[str, Any]) -> list[Table]:
    return [_case_table(case, r["cores"], r["repeats"]) for case in r["cases"]]


def _case_table(case: dict[str, Any], cores: int, repeats: int) -> Table:
    names = list(case["conditions"])
    rows = []
    for i, row in enumerate(case["conditions"][names[0]]["rows"]):
        if (row["workers"], row["threads"]) == DEFAULT:
            label = "the default (workers, threads it chose)"
            cells = [
                f"{case['conditions'][n]['rows'][i]['median_s']:.3g} {_chose(case['conditions'][n])}" for n in names
            ]
        else:
            label = f"{row['workers']} workers, {row['threads']} threads"
            cells = [case["conditions"][n]["rows"][i]["median_s"] for n in names]
        rows.append([label, *cells])
    ratios = [case["conditions"][n]["default_over_best"] for n in names]
    rows.append(["default / best", *ratios])
    rows.append(
        [
            f"default within {TARGET_DEFAULT_OVER_BEST:g}x of the best",
            *(verdict(x, TARGET_DEFAULT_OVER_BEST, higher_is_better=False) for x in ratios),
        ]
    )
    loads = ", ".join(f"{n}: {case['conditions'][n]['load_average_1min']:.2f}" for n in names)
    first = case["conditions"][names[0]]["rows"]
    others = float(np.median([row["setup_s"] for row in first[1:]]))
    return table(
        f"threads: {case['items']:,} {case['unit']} (tiny {case['label']}, CPU) through run_embed, median runner "
        f"seconds of {repeats}, {cores} usable cores",
        ["input workers, torch threads", *(f"seconds, {n}" for n in names)],
        rows,
        [
            f"1-minute load average before each condition: {loads}; the busy process is "
            "a Python loop keeping one core busy, killed after (and ending with the bench); the default is "
            "decided by each run (devices.cpu_plan: "
            "the cores other processes leave free, watched while the model loads, at least 0.1 s, before the "
            "runner's clock starts)",
            f"seconds before the runner's clock (table read, model load, the default's watching), {names[0]}: the "
            f"default {first[0]['setup_s']:.3f}, the fixed settings {others:.3f} (medians)",
        ],
    )


def _chose(condition: dict[str, Any]) -> str:
    """The default's choices over a condition's runs, e.g. "(0, 2)" or "(0, 2) x2, (0, 1)"."""
    counts = Counter(map(tuple, condition.get("default_chose", [])))
    return ", ".join(f"({w}, {t})" + (f" x{n}" if n > 1 else "") for (w, t), n in counts.items())
