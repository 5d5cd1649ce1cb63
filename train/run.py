"""`dogmacache train`: CDT from caches, with its baselines in the same run, metrics, figures, checkpoints.

Outputs in [output].dir: `cdt_best.pt` / `cdt_last.pt` (and the MLP baseline's), `metrics.json`
(validation and test for the model and each baseline), `log.csv`, `learning_curves.png`,
`test_scatter.png`. A checkpoint carries the resolved config, the model config, the cache fingerprints and
package versions, so `load_model(path)` rebuilds the model from the file alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from dogmacache.contracts.provenance import package_versions
from dogmacache.devices import apply_cpu_allocator, pick_device
from dogmacache.train import plots
from dogmacache.train.baselines import DnaOnlyMLP, per_gene_mean
from dogmacache.train.cdt import CentralDogmaTransformer
from dogmacache.train.cdt_config import CDTConfig
from dogmacache.train.config import RunConfig
from dogmacache.train.data import dna_scaler, load_cdt_tables, preload_dna
from dogmacache.train.loop import fit, world
from dogmacache.train.metrics import regression_metrics
from dogmacache.train.presets import preset


def cdt_config_for(config: RunConfig, tables) -> CDTConfig:
    """The preset's sizes with every input size taken from the caches."""
    base = preset(config.model.preset)
    overrides = {k: v for k, v in (("d_model", config.model.d_model), ("n_heads", config.model.n_heads),
                                   ("dropout", config.model.dropout)) if v is not None}  # fmt: skip
    return dataclasses.replace(
        base, n_genes=len(tables.genes), dna_positions=tables.dna.item_shape[0], dna_width=tables.dna.item_shape[1],
        rna_width=int(tables.rna.shape[1]), protein_width=int(tables.protein.shape[1]), **overrides,
    )  # fmt: skip


def load_model(path: str | Path) -> torch.nn.Module:
    """Rebuild a trained model from its checkpoint alone."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    kind = checkpoint["model_class"]
    if kind == "CentralDogmaTransformer":
        model = CentralDogmaTransformer(CDTConfig.from_dict(checkpoint["model_config"]))
    elif kind == "DnaOnlyMLP":
        model = DnaOnlyMLP(**checkpoint["model_config"])
    else:
        raise ValueError(f"{path}: unknown model class {kind!r}")
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def run_training(config: RunConfig, progress: bool = True) -> dict[str, Any]:
    if config.model.name != "cdt":
        raise ValueError(f"[model].name {config.model.name!r}: this trainer builds 'cdt'")
    rank, _ = world()
    apply_cpu_allocator(config.train.cpu_allocator, pick_device(config.train.device))  # once per process
    out = Path(config.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    d = config.data
    tables = load_cdt_tables(d.labels, d.dna_cache, d.rna_cache, d.protein_cache, d.target, d.dna_table or None)
    preload = preload_dna(tables.dna, config.train.preload_bytes)
    scaler = dna_scaler(tables, preload) if config.train.standardize_dna else None
    if scaler is not None:
        tables.dna_scale = scaler
    model_config = cdt_config_for(config, tables)
    meta = {"config": config.to_dict(), "fingerprints": tables.fingerprints, "versions": package_versions(),
            "dna_scale": None if scaler is None else {k: v.tolist() for k, v in scaler.items()}}  # fmt: skip
    results: dict[str, Any] = {}

    torch.manual_seed(config.train.seed)  # the initial weights are part of the seeded run
    model = CentralDogmaTransformer(model_config)
    results["cdt"] = fit("cdt", model, tables, config, out,
                         {**meta, "model_class": "CentralDogmaTransformer", "model_config": model_config.to_dict()},
                         preload=preload, progress=progress)  # fmt: skip
    pairs = tables.pairs
    split = {s: pairs[pairs["split"] == s].reset_index(drop=True) for s in ("train", "validation", "test")}
    if config.train.baselines:
        mean_pred = {s: per_gene_mean(split["train"], split[s]) for s in ("validation", "test")}
        results["per_gene_mean"] = {s: regression_metrics(mean_pred[s], split[s]["target"]) for s in mean_pred}
        results["per_gene_mean"]["predictions"] = mean_pred
        mlp_config = {"dna_width": model_config.dna_width, "n_genes": model_config.n_genes,
                      "hidden": config.train.baseline_hidden, "dropout": model_config.dropout}  # fmt: skip
        torch.manual_seed(config.train.seed)
        results["dna_mlp"] = fit("dna_mlp", DnaOnlyMLP(**mlp_config), tables, config, out,
                                 {**meta, "model_class": "DnaOnlyMLP", "model_config": mlp_config},
                                 preload=preload, progress=progress)  # fmt: skip
    summary = {
        "models": {name: {k: r[k] for k in ("validation", "test", "best_epoch", "epochs_run") if k in r}
                   for name, r in results.items()},
        "counts": {s: int(len(p)) for s, p in split.items()},
        "model_config": model_config.to_dict(),
        "dna_standardised": scaler is not None,
    }  # fmt: skip
    if rank == 0:
        (out / "metrics.json").write_text(json.dumps(summary, indent=2))
        log = pd.read_csv(out / "log.csv")
        plots.learning_curves(log, out / "learning_curves.png")
        predictions = {name: r["predictions"]["test"] for name, r in results.items()}
        plots.predicted_vs_observed(split["test"]["target"].to_numpy(), predictions,
                                    {name: r["test"] for name, r in results.items()}, out / "test_scatter.png")  # fmt: skip
        _print_table(summary)
    return summary


def _print_table(summary: dict[str, Any]) -> None:
    print(f"{'model':<16}{'split':<12}{'pearson':>9}{'spearman':>10}{'r2':>9}{'mse':>9}{'mae':>9}{'n':>6}")
    for name, result in summary["models"].items():
        for split in ("validation", "test"):
            m = result[split]
            print(f"{name:<16}{split:<12}{m['pearson']:>9.3f}{m['spearman']:>10.3f}{m['r2']:>9.3f}"
                  f"{m['mse']:>9.4f}{m['mae']:>9.4f}{m['n']:>6}")  # fmt: skip


def setup_distributed() -> bool:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", 1)) < 2:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend)
    return True

