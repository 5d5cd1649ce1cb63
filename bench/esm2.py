"""ESM-2 for the `gpu` section (`bench/gpu.py`): a random model of the section's size, timed two ways.

- Fixed length (`bench_esm2`): random proteins of one length, proteins/s per batch size and precision.
- Ragged lengths (`bench_esm2_ragged`): proteins whose lengths follow the human proteome's
  (docs/bench.md#human-protein-lengths: a seeded log-normal, median 415 and mean 560 residues, capped at ESM-2's
  1,022), embedded through the project's adapter (`embed/adapters/hf_esm.py`, random weights by its
  `random_init` path from a saved config and tokenizer) two ways: by `embed_rows` (length-bucketed batches,
  `embed/shapes.py`) and naively (batches of N proteins in input order, each padded to its longest). Per way:
  proteins/s, real tokens/s (each protein's own tokens, <cls> and <eos> included), padded tokens/s (every token
  computed: padding and the filler items of proteins alone in their bucket's batch too), the padding fraction,
  and TFLOP/s and MFU on the real tokens' FLOPs.

FLOPs per protein come from torch's flop counter: a transformer's count at T tokens is a T + b T² (the
projections, and attention's two products), so two counts give a and b (`flop_coefficients`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dogmacache.bench.mfu import count_flops, utilisation
from dogmacache.bench.timing import median_seconds, sync
from dogmacache.embed.shapes import pad_length

PROTEIN_MEDIAN, PROTEIN_MEAN = 415, 560  # residues, human proteome (docs/bench.md#human-protein-lengths)
ESM2_RESIDUES = 1022  # ESM-2 keeps 1,022 residues + <cls> + <eos>
STANDARD = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)


def esm2_config(hparams: dict[str, int]):
    """An ESM-2 configuration (33-token vocabulary, rotary positions, 1,026 positions) of the given size."""
    from transformers import EsmConfig

    return EsmConfig(
        vocab_size=33,
        pad_token_id=1,
        mask_token_id=32,
        max_position_embeddings=1026,
        position_embedding_type="rotary",
        **hparams,
    )


def flop_coefficients(model: torch.nn.Module, device: torch.device, tokens: tuple[int, int] = (64, 128)) -> dict:
    """{linear, quadratic}: FLOPs of one forward at T tokens = linear T + quadratic T², from two counts."""
    counts = []
    for n in tokens:
        ids = torch.randint(4, 24, (1, n), device=device)
        with torch.inference_mode():
            counts.append(count_flops(lambda ids=ids: model(input_ids=ids, attention_mask=torch.ones_like(ids))))
    if None in counts:
        return {"linear": None, "quadratic": None}
    (t1, t2), (c1, c2) = tokens, counts
    quadratic = (c2 / t2 - c1 / t1) / (t2 - t1)
    return {"linear": c1 / t1 - quadratic * t1, "quadratic": quadratic}


def forward_tflop(coefficients: dict, tokens: np.ndarray) -> float | None:
    """TFLOP of forwards at each count of `tokens` (summed)."""
    if coefficients["linear"] is None:
        return None
    t = np.asarray(tokens, dtype=np.float64)
    return float((coefficients["linear"] * t + coefficients["quadratic"] * t * t).sum() / 1e12)


@torch.no_grad()
def bench_esm2(
    device: torch.device, hparams: dict[str, int], length: int, batches: tuple[int, ...], calls: int = 3
) -> dict[str, Any]:
    """Proteins/s of a random ESM-2-shaped encoder per batch size and precision, with TFLOP/s and MFU."""
    from dogmacache.embed.runner import autocast_for
    from transformers import EsmModel

    torch.manual_seed(0)
    model = EsmModel(esm2_config(hparams), add_pooling_layer=False).to(device).eval()
    tflop = forward_tflop(flop_coefficients(model, device), np.array([length + 2]))
    runs = []
    for precision in ("fp32", "bf16"):
        for batch in batches:
            ids = torch.randint(4, 24, (batch, length + 2), device=device)

            def forward(ids=ids, precision=precision, model=model):
                with autocast_for(device, precision):
                    model(input_ids=ids)

            seconds = median_seconds(forward, device, calls)
            rate = batch / seconds * tflop if tflop else None
            runs.append(
                {
                    "precision": precision,
                    "batch": batch,
                    "proteins_per_s": batch / seconds,
                    "tflop_per_s": rate,
                    **utilisation(rate, device, precision),
                }
            )
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "length": length,
        "tflop_per_protein": tflop,
        "runs": runs,
    }


# ---- ragged lengths --------------------------------------------------------------------------------------------
def protein_lengths(n: int, seed: int, median: float = PROTEIN_MEDIAN, mean: float = PROTEIN_MEAN) -> np.ndarray:
    """`n` protein lengths from the log-normal of this median and mean (sigma² = 2 ln(mean / median)), rounded,
    at least 1 and at most ESM2_RESIDUES (longer proteins are cut there by the adapter)."""
    sigma = float(np.sqrt(2 * np.log(mean / median)))
    draws = np.random.default_rng(seed).lognormal(np.log(median), sigma, n)
    return np.clip(np.rint(draws), 1, ESM2_RESIDUES).astype(np.int64)


def random_proteins(lengths: np.ndarray, seed: int) -> list[dict[str, Any]]:
    """Rows {id, sequence} of uniformly random standard amino acids, one per length."""
    rng = np.random.default_rng(seed)
    return [
        {"id": f"p{i:05d}", "sequence": STANDARD[rng.integers(0, 20, int(n))].tobytes().decode()}
        for i, n in enumerate(lengths)
    ]


def write_esm2_config(directory: Path, hparams: dict[str, int]) -> Path:
    """A model folder without weights: ESM-2's tokenizer and a config of the given size (`save_pretrained`)."""
    from dogmacache.embed.adapters.hf_esm import ESM2_TOKENS
    from transformers import EsmTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(ESM2_TOKENS) + "\n")
    EsmTokenizer(str(directory / "vocab.txt")).save_pretrained(str(directory))
    esm2_config(hparams).save_pretrained(str(directory))
    return directory


class _Shapes:
    """The (items, padded length) of each batch an adapter's `embed` computes, while wrapped."""

    def __init__(self, adapter):
        self.calls: list[tuple[int, int]] = []
        self.embed = adapter.embed

    def __call__(self, batch):
        self.calls.append((len(batch), max(max(len(item["ids"]) for item in batch), pad_length(batch))))
        return self.embed(batch)


def bench_esm2_ragged(
    device: torch.device,
    hparams: dict[str, int],
    n_proteins: int,
    naive_batch: int,
    seed: int = 0,
    calls: int = 3,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Ragged proteins through the ESM-2 adapter: bucketed (`embed_rows`) against naive row-order batches."""
    from dogmacache.embed.adapters.hf_esm import Esm2Adapter, EsmOptions
    from dogmacache.embed.runner import EmbedConfig, autocast_for, embed_rows, resolve_precision

    root = Path(tempfile.mkdtemp(prefix="dogmacache-bench-esm2-", dir=workdir))
    try:
        lengths = protein_lengths(n_proteins, seed)
        rows = random_proteins(lengths, seed)
        adapter = Esm2Adapter(str(write_esm2_config(root / "esm2", hparams)), EsmOptions(), device, random_init=seed)
        precision = resolve_precision(device, "auto")
        max_tokens = adapter.default_max_tokens(device)
        max_batch = EmbedConfig.max_batch
        coefficients = flop_coefficients(adapter.model, device)
        real_tokens = lengths + 2  # <cls> + residues + <eos>

        def bucketed():
            embed_rows(
                adapter,
                rows,
                device=device,
                precision=precision,
                max_tokens=max_tokens,
                max_batch=max_batch,
                num_workers=0,
            )

        def naive():
            with torch.inference_mode(), autocast_for(device, precision):
                for a in range(0, len(rows), naive_batch):
                    out, _ = adapter.embed([adapter.prepare(row) for row in rows[a : a + naive_batch]])
                    out.float().cpu()

        paths: dict[str, Any] = {}
        for name, run in (("bucketed", bucketed), ("naive", naive)):
            shapes = _Shapes(adapter)
            adapter.embed = shapes  # the batches this way computes, seen on the warm-up pass
            run()
            del adapter.embed
            paths[name] = {"run": run, "shapes": shapes.calls, "times": []}
        for _ in range(calls):  # the two ways alternated
            for path in paths.values():
                sync(device)
                t0 = time.perf_counter()
                path["run"]()
                sync(device)
                path["times"].append(time.perf_counter() - t0)
        result: dict[str, Any] = {
            "proteins": n_proteins,
            "seed": seed,
            "length_model": {"median": PROTEIN_MEDIAN, "mean": PROTEIN_MEAN, "cap": ESM2_RESIDUES},
            "lengths": {
                "median": float(np.median(lengths)),
                "mean": float(lengths.mean()),
                "max": int(lengths.max()),
                "at_cap": int((lengths == ESM2_RESIDUES).sum()),
            },
            "parameters": sum(p.numel() for p in adapter.model.parameters()),
            "precision": precision,
            "naive_batch": naive_batch,
            "max_tokens": max_tokens,
            "max_batch": max_batch,
            "flops_per_forward": coefficients,
            "real_tokens": int(real_tokens.sum()),
            "real_tflop": forward_tflop(coefficients, real_tokens),
            "timing": f"host clock around the whole pass, median of {calls} after a warm-up pass, ways alternated",
        }
        for name, path in paths.items():
            result[name] = ragged_numbers(path, result, coefficients, device)
        bucketed_rate, naive_rate = result["bucketed"]["real_tokens_per_s"], result["naive"]["real_tokens_per_s"]
        result["bucketed_over_naive_real_tokens"] = bucketed_rate / naive_rate
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def ragged_numbers(path: dict, result: dict, coefficients: dict, device: torch.device) -> dict[str, Any]:
    """One way's rates from its batch shapes and its median pass time."""
    seconds = float(np.median(path["times"]))
    items = np.array([b for b, _ in path["shapes"]])
    padded = np.array([t for _, t in path["shapes"]])
    computed_tokens = int((items * padded).sum())
    computed = forward_tflop(coefficients, np.repeat(padded, items))
    real_rate = result["real_tflop"] / seconds if result["real_tflop"] is not None else None
    return {
        "batches": len(path["shapes"]),
        "seconds": seconds,
        "seconds_per_pass": path["times"],
        "proteins_per_s": result["proteins"] / seconds,
        "real_tokens_per_s": result["real_tokens"] / seconds,
        "computed_tokens": computed_tokens,
        "padded_tokens_per_s": computed_tokens / seconds,
        "padding_fraction": 1 - result["real_tokens"] / computed_tokens,
        "computed_tflop": computed,
        "tflop_per_s": real_rate,  # the real tokens' FLOPs per second
        **utilisation(real_rate, device, result["precision"]),
    }
