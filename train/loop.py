"""The training loop, read top to bottom: seeded, resumable, early-stopped on validation Pearson, the test
split evaluated once with the checkpoint chosen on validation. Runs as one process or under `torchrun`
(DDP; gloo on CPU, nccl on CUDA): every process walks the same blocks and takes its slice of each global
batch, so the averaged gradient is the one-process gradient up to summation order.

Shapes: B pairs per batch, L DNA positions, D_dna DNA width, G genes.
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from dogmacache.devices import pick_device
from dogmacache.train.config import RunConfig
from dogmacache.train.data import CdtTables, EnhancerBlocks
from dogmacache.train.metrics import regression_metrics
from torch import nn
from tqdm.auto import tqdm


def world() -> tuple[int, int]:
    """(rank, world size) under torchrun, (0, 1) otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _loader(dataset: EnhancerBlocks, num_workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers,
                                       prefetch_factor=2 if num_workers else None)  # fmt: skip


@torch.no_grad()
def predict(model: nn.Module, tables: CdtTables, pairs: pd.DataFrame, config: RunConfig, device: torch.device,
            preload: np.ndarray | None) -> np.ndarray:  # fmt: skip
    """Predictions for `pairs` (in their order), eval mode, batch by batch."""
    model.eval()
    dataset = EnhancerBlocks(pairs.reset_index(drop=True), tables.dna, config.train.block_enhancers,
                             config.train.seed, shuffle=False, preload=preload, scale=tables.dna_scale)  # fmt: skip
    out = np.zeros(len(pairs), dtype=np.float32)
    rna, protein = tables.rna.to(device), tables.protein.to(device)
    for block in _loader(dataset, config.train.num_workers):
        dna = block["dna"].to(device)
        for a in range(0, len(block["local"]), 64):
            sl = slice(a, a + 64)
            y = model(dna[block["local"][sl]], rna, protein, block["gene_index"][sl].to(device))
            out[block["pair"][sl].numpy()] = y.float().cpu().numpy()
    return out


def _save(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a kill mid-save leaves the previous checkpoint intact


def fit(
    name: str,
    model: nn.Module,
    tables: CdtTables,
    config: RunConfig,
    out_dir: Path,
    meta: dict[str, Any],
    preload: np.ndarray | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train `model` on the train split; returns validation and test metrics of the best-on-validation epoch."""
    t = config.train
    rank, size = world()
    device = pick_device(t.device)
    torch.manual_seed(t.seed)
    model = model.to(device)
    pairs = tables.pairs
    train_pairs = pairs[pairs["split"] == "train"].reset_index(drop=True)
    val_pairs = pairs[pairs["split"] == "validation"].reset_index(drop=True)
    test_pairs = pairs[pairs["split"] == "test"].reset_index(drop=True)
    blocks = EnhancerBlocks(train_pairs, tables.dna, t.block_enhancers, t.seed, shuffle=True, preload=preload,
                            scale=tables.dna_scale)  # fmt: skip
    rna, protein = tables.rna.to(device), tables.protein.to(device)
    ddp = size > 1
    trained = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=t.plateau_factor,
                                                           patience=t.plateau_patience)  # fmt: skip
    loss_fn = nn.SmoothL1Loss(beta=t.smooth_l1_beta)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if t.precision == "bf16" and device.type == "cuda"
                else torch.autocast("cpu", enabled=False))  # fmt: skip

    last, best_path = out_dir / f"{name}_last.pt", out_dir / f"{name}_best.pt"
    state = {"epoch": 0, "best": -math.inf, "best_epoch": -1, "stale": 0, "history": []}
    if config.output.resume and last.is_file():
        checkpoint = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["torch_rng"])
        state = checkpoint["state"]
        if rank == 0:
            print(f"{name}: resuming from {last} after epoch {state['epoch']}")

    while state["epoch"] < t.epochs and state["stale"] < t.early_stop_patience:
        epoch = state["epoch"]
        start = time.perf_counter()
        blocks.set_epoch(epoch)
        trained.train()
        losses = []
        bar = tqdm(total=len(train_pairs), desc=f"{name} epoch {epoch + 1}/{t.epochs}", unit="pair",
                   disable=True if not progress or rank != 0 else None, leave=False)  # fmt: skip
        for block in _loader(blocks, t.num_workers):
            dna = block["dna"].to(device)
            n = len(block["local"])
            for a in range(0, n, t.batch_size):
                idx = torch.arange(a, min(a + t.batch_size, n))
                if ddp:
                    if len(idx) < size:
                        continue  # every process needs at least one pair of each global batch
                    idx = idx[rank::size]
                with autocast:
                    y = trained(dna[block["local"][idx]], rna, protein, block["gene_index"][idx].to(device))
                    loss = loss_fn(y.float(), block["target"][idx].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), t.clip_norm)
                optimizer.step()
                losses.append(loss.item())
                bar.update(len(idx) * size)
        bar.close()
        val = regression_metrics(
            predict(model, tables, val_pairs, config, device, preload), val_pairs["target"]
        )
        scheduler.step(val["pearson"] if math.isfinite(val["pearson"]) else -1.0)
        improved = val["pearson"] > state["best"]
        if val["pearson"] > state["best"] + t.early_stop_min_delta:
            state["stale"] = 0
        else:
            state["stale"] += 1
        if improved:
            state["best"], state["best_epoch"] = val["pearson"], epoch + 1
        state["epoch"] = epoch + 1
        row = {"model": name, "epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
               "val_pearson": val["pearson"], "val_spearman": val["spearman"], "val_mse": val["mse"],
               "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
        state["history"].append(row)
        if rank == 0:
            payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(), "state": state,
                       **meta}  # fmt: skip
            if improved:
                _save(best_path, {k: v for k, v in payload.items() if k not in ("optimizer", "scheduler")})
            _save(last, payload)
            _append_log(out_dir / "log.csv", row)
            if progress:
                print(f"{name} epoch {epoch + 1}: train loss {row['train_loss']:.4f}, val Pearson "
                      f"{val['pearson']:.3f}{' (best)' if improved else ''}, lr {row['lr']:.1e}, {row['seconds']} s")  # fmt: skip
        if ddp:
            torch.distributed.barrier()

    best = torch.load(best_path, map_location=device, weights_only=False)
    model.load_state_dict(best["model"])
    val_pred = predict(model, tables, val_pairs, config, device, preload)
    test_pred = predict(model, tables, test_pairs, config, device, preload)  # the one look at the test split
    return {
        "best_epoch": state["best_epoch"], "epochs_run": state["epoch"], "history": state["history"],
        "validation": regression_metrics(val_pred, val_pairs["target"]),
        "test": regression_metrics(test_pred, test_pairs["target"]),
        "predictions": {"validation": val_pred, "test": test_pred},
    }  # fmt: skip


def _append_log(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
