"""CDT evaluation throughput for `dogmacache bench`'s CDT section (`bench/cdt.py`): one forward per unique
enhancer (`predict_all_genes`) against one forward per (enhancer, gene) pair, at the pairs-per-enhancer shapes of
the paper's Gasperini set and of the demo recipe, with the predictions compared."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from dogmacache.bench.report import Table, table
from dogmacache.train.tasks.cdt.model import CentralDogmaTransformer
from dogmacache.train.tasks.cdt.sizes import preset as get_preset

# pairs per unique enhancer: the paper's Gasperini set (5,601 pairs over ~5,303 DNA windows,
# docs/papers.md#cdt-data) and the demo recipe's (1,060 pairs over 180 enhancers, like the at-scale screen with
# several genes per enhancer)
EVAL_SHAPES = {"gasperini-paper": 5601 / 5303, "demo": 1060 / 180}


@torch.no_grad()
def bench_cdt_eval(
    preset: str = "small",
    n_enhancers: int = 64,
    pairs_per_enhancer: float = EVAL_SHAPES["demo"],
    pair_batch: int = 64,
    enhancer_batch: int = 16,
    seed: int = 0,
    repeats: int = 3,
) -> dict[str, Any]:
    """Evaluation pairs/s with one forward pass per pair (batches of `pair_batch` pairs, how evaluation used to
    run) against one per unique enhancer (`predict_all_genes` on `enhancer_batch` enhancers, each pair's gene
    read from it: what the CDT task does), same model and inputs, same process; the two agree to float error.
    After one untimed batch of each way, `repeats` passes of each, alternated; the medians are reported."""
    config = get_preset(preset)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = CentralDogmaTransformer(config).eval()
    dna = torch.randn(n_enhancers, config.dna_positions, config.dna_width, generator=generator)
    rna = torch.randn(config.n_genes, config.rna_width, generator=generator)
    protein = torch.randn(config.n_genes, config.protein_width, generator=generator)
    n_pairs = max(n_enhancers, round(n_enhancers * pairs_per_enhancer))
    enhancer = torch.cat(
        [torch.arange(n_enhancers), torch.randint(0, n_enhancers, (n_pairs - n_enhancers,), generator=generator)]
    )
    enhancer = enhancer.sort().values  # pairs grouped by enhancer, as the evaluation chunks hold them
    gene = torch.randint(0, config.n_genes, (n_pairs,), generator=generator)

    def each_pair(pairs: range) -> torch.Tensor:
        return torch.cat(
            [model(dna[enhancer[a : a + pair_batch]], rna, protein, gene[a : a + pair_batch]) for a in pairs]
        )

    def each_enhancer(enhancers: range) -> torch.Tensor:
        return torch.cat([model.predict_all_genes(dna[a : a + enhancer_batch], rna, protein) for a in enhancers])

    each_pair(range(0, min(pair_batch, n_pairs), pair_batch))  # warm-up: a batch of each way, untimed
    each_enhancer(range(0, min(enhancer_batch, n_enhancers), enhancer_batch))
    pair_times, enhancer_times = [], []
    for _ in range(repeats):  # alternated, so that a busy moment of the machine hits both alike
        start = time.perf_counter()
        per_pair = each_pair(range(0, n_pairs, pair_batch))
        pair_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        per_enhancer = each_enhancer(range(0, n_enhancers, enhancer_batch))[enhancer, gene]
        enhancer_times.append(time.perf_counter() - start)
    per_pair_seconds, per_enhancer_seconds = float(np.median(pair_times)), float(np.median(enhancer_times))
    return {
        "preset": preset,
        "enhancers": n_enhancers,
        "pairs": n_pairs,
        "threads": torch.get_num_threads(),
        "per_pair_pairs_per_s": n_pairs / per_pair_seconds,
        "per_enhancer_pairs_per_s": n_pairs / per_enhancer_seconds,
        "speedup": per_pair_seconds / per_enhancer_seconds,
        "repeats": repeats,
        "max_abs_difference": float((per_pair - per_enhancer).abs().max()),
    }


def cdt_eval_tables(r: dict[str, Any]) -> list[Table]:
    rows = [
        [
            shape,
            e["pairs"],
            e["enhancers"],
            e["per_pair_pairs_per_s"],
            e["per_enhancer_pairs_per_s"],
            e["speedup"],
            e["max_abs_difference"],
        ]
        for shape, e in r["shapes"].items()
    ]
    return [
        table(
            f"cdt: evaluation, one forward per pair vs one per enhancer, preset {r['preset']}, same process "
            f"(threads: {r['threads']}; after a warm-up batch, medians of alternated passes)",
            [
                "table shape",
                "pairs",
                "enhancers",
                "per pair: pairs/s",
                "per enhancer: pairs/s",
                "speedup",
                "max |difference|",
            ],
            rows,
            ["gasperini-paper: 5,601 pairs over ~5,303 windows; demo: 1,060 pairs over 180 enhancers"],
        )
    ]
