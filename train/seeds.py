"""`dogmacache train --seeds 0,1,2`: one configuration over several seeds, each run in `<dir>/seed<k>` (its own
checkpoints, metrics.json and figures; resumable like any run), then `<dir>/seeds.json` with the mean, sd
(n - 1), min and max over seeds of every number in the runs' metrics.json (models, baselines and controls
alike), and a table of the test metrics printed. Seeds change the initial weights, batch order, dropout and the
controls' permutations; the splits are the recipe's.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from dogmacache.errors import InputError
from dogmacache.train.config import RunConfig
from dogmacache.train.run import run_training, strict, write_json

SKIP = ("fingerprints", "model_config", "counts", "cpu", "config")  # not results


MAX_SEEDS = 1_000  # a run of more seeds than this is a typo (each seed trains every model of the run)


def parse_seeds(text: str) -> list[int]:
    """ "0,1,2" or "0-4" -> the seeds, each a non-negative integer, no repeats."""
    try:
        if "-" in text and "," not in text:
            a, b = (int(x) for x in text.split("-"))
            if b - a >= MAX_SEEDS:
                raise InputError(f"--seeds {text!r} names {b - a + 1:,} seeds; give at most {MAX_SEEDS:,} per run")
            seeds = list(range(a, b + 1))
        else:
            seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--seeds {text!r} is not a list of integers; e.g. --seeds 0,1,2 or --seeds 0-4") from None
    if not seeds or min(seeds) < 0 or max(seeds) >= 2**63 or len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds {text!r}: give distinct seeds from 0 to 2**63 - 1, e.g. --seeds 0,1,2")
    if len(seeds) > MAX_SEEDS:
        raise InputError(f"--seeds {text!r} names {len(seeds):,} seeds; give at most {MAX_SEEDS:,} per run")
    return seeds


def flatten(tree: Any, prefix: str = "") -> dict[str, float]:
    """Every number in a metrics tree, by dotted key (None, as written for undefined metrics, is NaN)."""
    found: dict[str, float] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            if not prefix and key in SKIP:
                continue
            found.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(tree, bool):
        pass
    elif isinstance(tree, int | float) or tree is None:
        found[prefix[:-1]] = float("nan") if tree is None else float(tree)
    return found


def aggregate(summaries: dict[int, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per dotted key present in every run: mean, sd (n - 1; 0 for one seed), min, max and n over the finite
    values."""
    flat = {seed: flatten(s) for seed, s in summaries.items()}
    keys = [k for k in next(iter(flat.values())) if all(k in f for f in flat.values())]
    table = {}
    for key in keys:
        values = np.array([f[key] for f in flat.values()], dtype=np.float64)
        values = values[np.isfinite(values)]
        if not len(values):
            table[key] = {"mean": math.nan, "sd": math.nan, "min": math.nan, "max": math.nan, "n": 0}
            continue
        sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        table[key] = {
            "mean": float(values.mean()),
            "sd": sd,
            "min": float(values.min()),
            "max": float(values.max()),
            "n": len(values),
        }
    return table


def run_seeds(config: RunConfig, seeds: list[int], progress: bool = True) -> dict[str, Any]:
    """Each seed's run in turn, then seeds.json. An earlier seeds.json goes once the first seed's run has passed its
    refusals: a stopped run leaves no aggregate of another run's seeds beside this one's (each seed's own
    metrics.json is its run's alone), and a refused one keeps it."""
    out = Path(config.output.dir)
    summaries = {}
    for seed in seeds:
        run = dataclasses.replace(
            config,
            train=dataclasses.replace(config.train, seed=seed),
            output=dataclasses.replace(config.output, dir=str(out / f"seed{seed}")),
        )
        print(f"--- seed {seed}: {run.output.dir}")
        cleared = (lambda: (out / "seeds.json").unlink(missing_ok=True)) if not summaries else None
        summaries[seed] = json.loads(json.dumps(strict(run_training(run, progress=progress, on_cleared=cleared))))
    runs = {str(seed): str(out / f"seed{seed}") for seed in seeds}
    result = {
        "task": config.task,
        "seeds": seeds,
        "runs": runs,
        "config": config.to_dict(),
        "metrics": aggregate(summaries),
    }
    write_json(out / "seeds.json", result)
    print_seed_table(result, summaries[seeds[0]].get("metric", "pearson"))
    return result


def print_seed_table(result: dict[str, Any], metric: str) -> None:
    """Test metrics per model: mean ± sd [min, max] over the seeds."""
    metrics = result["metrics"]
    columns = list(dict.fromkeys(["pearson", "spearman", "r2", metric]))
    models = list(dict.fromkeys(k.split(".")[1] for k in metrics if k.startswith("models.")))
    print(f"test metrics over seeds {result['seeds']} (mean ± sd [min, max])")
    rows = {}
    for name in models:
        cells = []
        for column in columns:
            m = metrics.get(f"models.{name}.test.{column}")
            cells.append(f"{m['mean']:.3f} ± {m['sd']:.3f} [{m['min']:.3f}, {m['max']:.3f}]" if m else "-")
        rows[name] = cells
    width = 2 + max([len(c) for c in (*columns, *(c for cells in rows.values() for c in cells))])  # a gap always
    first = 2 + max(len("model"), *map(len, models))
    print(f"{'model':<{first}}" + "".join(f"{c:>{width}}" for c in columns))
    for name, cells in rows.items():
        print(f"{name:<{first}}" + "".join(f"{c:>{width}}" for c in cells))
