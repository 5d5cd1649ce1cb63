"""The one training loop, read top to bottom, for every task (`task.py`): seeded, resumable (refusing a
changed run), early-stopped on the task's validation metric with the CDT authors' rule, ReduceLROnPlateau on
the same metric, gradient clipping, optional bf16 autocast on CUDA, a progress bar and `log.csv`. The test split
is predicted once, with the checkpoint chosen on validation.

Runs as one process or under `torchrun` (DDP; gloo on CPU, nccl on CUDA): every process walks the same chunks
and takes its slice of each global batch, its loss weighted by its share of the batch (slices differ by one
example where the batch does not divide), so that for a loss that is a mean over its examples (CDT, IsoFormer,
Bio-DTA, CDBridge's stage 1 and its MSE) the averaged gradient is the one-process gradient up to summation order,
and `log.csv`'s train loss the global batch's. A loss over pairs within a batch is not: CDBridge's contrastive term
takes its negatives from each process's own slice.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dogmacache.cache.storage import replace_whole
from dogmacache.devices import pick_device
from dogmacache.errors import InputError, ModelError
from dogmacache.train import checkpoint
from dogmacache.train.task import Chunk, Task, TaskData
from torch import nn
from tqdm.auto import tqdm


def world() -> tuple[int, int]:
    """(rank, world size) under torchrun, (0, 1) otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _loader(dataset: torch.utils.data.Dataset, num_workers: int | None) -> torch.utils.data.DataLoader:
    """Chunks in order, `num_workers` processes reading ahead (2 chunks each)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers or 0,  # None: not decided by run_training (a direct call): read in this process
        collate_fn=_identity,
        prefetch_factor=2 if num_workers else None,
    )


def _identity(chunk: Chunk) -> Chunk:
    return chunk


@torch.no_grad()
def predict(task: Task, model: nn.Module, data: TaskData, split: str, device: torch.device) -> np.ndarray:
    """Predictions for the examples of `split`, in the split table's order, eval mode."""
    model.eval()
    tables = task.on_device(data, device)
    out = None  # (n, ...) once the first chunk shows the prediction's shape
    for chunk in _loader(task.eval_chunks(data, split), task.config.train.num_workers):
        chunk = chunk.to(device)
        predicted = task.predict_chunk(model, chunk, tables).float().cpu().numpy()
        if out is None:
            out = np.full((len(data.splits[split]), *predicted.shape[1:]), np.nan, dtype=np.float32)
        out[chunk.examples["index"].cpu().numpy()] = predicted
    return out


class EarlyStopping:
    """The CDT authors' rule: the first score becomes the reference; a score below reference + min_delta counts
    one stale epoch (stop at `patience`); otherwise the reference becomes that score and the count resets.
    Separately, `best` moves on any strict improvement (the checkpoint kept)."""

    @staticmethod
    def update(state: dict[str, Any], score: float, epoch: int, min_delta: float) -> bool:
        """Update `state` in place; True when `score` is a new best."""
        if math.isfinite(score) and (state["reference"] is None or score >= state["reference"] + min_delta):
            state["reference"], state["stale"] = score, 0  # a NaN never becomes the reference
        else:
            state["stale"] += 1
        improved = score > state["best"]
        if improved:
            state["best"], state["best_epoch"] = score, epoch
        return improved


def fit(
    task: Task, model: nn.Module, data: TaskData, name: str, out_dir: Path, meta: dict[str, Any], progress: bool = True
) -> dict[str, Any]:
    """Train `model` on the train split; returns validation and test metrics of the best-on-validation epoch.
    `meta` (task, model class and config, run config, fingerprints, versions) goes into every checkpoint."""
    t = task.config.train
    rank, size = world()
    device = pick_device(t.device)
    torch.manual_seed(t.seed)
    model = model.to(device)
    tables = task.on_device(data, device)
    ddp = size > 1
    trained = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    if t.compile != "no":  # the training forward only; evaluation and checkpoints use `model` itself
        trained = torch.compile(trained, mode=None if t.compile == "default" else t.compile)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=t.plateau_factor, patience=t.plateau_patience
    )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if t.precision == "bf16" and device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )

    last, best_path = out_dir / f"{name}_last.pt", out_dir / f"{name}_best.pt"
    state = {"epoch": 0, "best": -math.inf, "best_epoch": -1, "reference": None, "stale": 0, "history": []}
    if task.config.output.resume and last.is_file():
        saved = checkpoint.read(last, map_location=device, fix=checkpoint.resume_fix(last))
        checkpoint.check_resume(
            saved,
            last,
            meta["config"],
            meta["fingerprints"],
            meta.get("splits"),
            meta.get("files_read"),
            meta.get("extras"),
        )
        checkpoint.check_prerequisites_kept(saved, last, meta.get("prerequisites") or {})
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        if device.type == "cuda" and saved.get("cuda_rng") is not None:  # dropout draws on the device
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        state = saved["state"]
        if rank == 0:
            _mend_best(best_path, saved, last)
        if rank == 0:
            _restore_log_rows(out_dir / "log.csv", name, state["history"])
            print(f"{name}: resuming from {last} after epoch {state['epoch']}")
    elif rank == 0:  # a fresh start: this model's earlier rows and best checkpoint are of another run
        _drop_log_rows(out_dir / "log.csv", name)
        best_path.unlink(missing_ok=True)

    while state["epoch"] < t.epochs and state["stale"] < t.early_stop_patience:
        epoch = state["epoch"]
        start = time.perf_counter()
        chunks = task.train_chunks(data, epoch)
        trained.train()
        losses = []
        bar = tqdm(
            total=len(data.splits["train"]),
            desc=f"{name} epoch {epoch + 1}/{t.epochs}",
            unit="example",
            leave=False,
            disable=True if not progress or rank != 0 else None,
        )
        for chunk in _loader(chunks, t.num_workers):
            chunk = chunk.to(device)
            n = len(chunk)
            for a in range(0, n, t.batch_size):
                idx = torch.arange(a, min(a + t.batch_size, n), device=device)
                share = 1.0  # this process's part of the global batch's mean loss
                if ddp:
                    if len(idx) < size:
                        continue  # every process needs at least one example of each global batch
                    n_global, idx = len(idx), idx[rank::size]
                    share = len(idx) / n_global
                batch = chunk.select(idx)
                with autocast:
                    loss = task.loss(task.train_outputs(trained, batch, tables), batch, tables)
                optimizer.zero_grad(set_to_none=True)
                (loss * (share * size) if ddp else loss).backward()  # DDP averages over the processes
                nn.utils.clip_grad_norm_(model.parameters(), t.clip_norm)
                optimizer.step()
                if ddp:  # the global batch's loss: the processes' parts summed
                    part = (loss.detach() * share).float()
                    torch.distributed.all_reduce(part)
                    losses.append(part.item())
                else:
                    losses.append(loss.item())
                bar.update(len(idx) * size)
        bar.close()
        if not losses:  # a task that drops the last partial batch, with fewer examples than one batch
            raise ModelError(
                f"{name}: epoch {epoch + 1} took no training step: its {len(data.splits['train']):,} training "
                f"examples gave no batch of [train] batch_size {t.batch_size}"
                + (f" across {size} processes" if ddp else "")
                + "; lower batch_size (--set train.batch_size=...)"
            )
        val = task.metrics(predict(task, model, data, "validation", device), data, "validation")
        score = task.score(val)
        scheduler.step(score if math.isfinite(score) else -1.0)
        improved = EarlyStopping.update(state, score, epoch + 1, t.early_stop_min_delta)
        state["epoch"] = epoch + 1
        row = {
            "model": name,
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            f"val_{task.metric}": score,
            "val_mse": val.get("mse", float("nan")),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - start, 2),
        }
        state["history"].append(row)
        if rank == 0:
            payload = {
                **meta,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                "state": state,
            }
            checkpoint.save(last, payload)  # first: a kill before best.pt leaves what `_mend_best` mends
            if improved:
                checkpoint.save(best_path, _best_payload(payload))
            _append_log(out_dir / "log.csv", row)
            if progress:
                print(
                    f"{name} epoch {epoch + 1}: train loss {row['train_loss']:.4f}, val {task.metric} "
                    f"{score:.3f}{' (best)' if improved else ''}, lr {row['lr']:.1e}, {row['seconds']} s"
                )
        if ddp:
            torch.distributed.barrier()

    if state["best_epoch"] < 0:  # no epoch scored a finite validation metric, so no checkpoint was kept
        raise ModelError(
            f"{name}: none of its {state['epoch']} epochs gave a finite validation {task.metric} (the last: "
            f"{state['history'][-1][f'val_{task.metric}'] if state['history'] else 'none run'}; train loss "
            f"{state['history'][-1]['train_loss'] if state['history'] else 'none'}): the training diverged; lower "
            "[train] lr (--set train.lr=...) or check the inputs for NaN"
        )
    best = checkpoint.read(best_path, map_location=device)
    if best["state"]["epoch"] != state["best_epoch"]:  # never evaluate one epoch's weights as another's
        raise ModelError(
            f"{best_path} holds epoch {best['state']['epoch']}, but {last} records epoch {state['best_epoch']} as "
            f"the best; start over with --set output.resume=false --set output.overwrite=true"
        )
    model.load_state_dict(best["model"])
    return {
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "history": state["history"],
        "checkpoint": str(best_path),
        **evaluate(task, model, data, device),
    }


def _best_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """What `<name>_best.pt` keeps of an epoch's checkpoint: everything but the optimizer and scheduler."""
    return {k: v for k, v in payload.items() if k not in ("optimizer", "scheduler")}


def _mend_best(best_path: Path, saved: dict[str, Any], last: Path) -> None:
    """On a resume: `best_path` must hold the epoch `saved` (last.pt) records as the best. An epoch's last.pt is
    written before its best.pt, so a kill between the two leaves last.pt one best ahead: then the best is last.pt's
    own epoch, whose weights it holds, and best.pt is written from it. Any other disagreement is refused."""
    state = saved["state"]
    if state["best_epoch"] < 1:
        return
    if state["best_epoch"] == state["epoch"]:  # last.pt holds the best epoch's weights: best.pt is written from it
        checkpoint.save(best_path, _best_payload(saved))
        return
    try:
        kept = checkpoint.read(best_path, map_location="cpu")["state"]["epoch"] if best_path.is_file() else None
    except InputError as err:
        raise ModelError(
            f"{best_path} cannot be read ({err}), and {last} records epoch {state['best_epoch']} as the best, which "
            "only that file held; start over with --set output.resume=false --set output.overwrite=true"
        ) from None
    if kept == state["best_epoch"]:
        return
    raise ModelError(
        f"{best_path} holds epoch {kept if kept is not None else 'none (it is missing)'}, but {last} records epoch "
        f"{state['best_epoch']} as the best; start over with --set output.resume=false --set output.overwrite=true"
    )


def evaluate(task: Task, model: nn.Module, data: TaskData, device: torch.device) -> dict[str, Any]:
    """Validation and test metrics of `model` as it is, and its predictions (the test split looked at once)."""
    predictions = {split: predict(task, model, data, split, device) for split in ("validation", "test")}
    return {**{split: task.metrics(p, data, split) for split, p in predictions.items()}, "predictions": predictions}


def _append_log(path: Path, row: dict[str, Any]) -> None:
    """One row of log.csv, by column name. A folder's log can hold several tasks' rows (a run into a folder
    another task trained in), whose columns differ: a row with a column the header lacks rewrites the file under
    the union of both, the other rows' new cells left empty."""
    header = _log_header(path)
    if header is not None and not set(row) <= set(header):
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        union = header + [k for k in row if k not in header]
        with replace_whole(path) as tmp, open(tmp, "w", newline="") as fh:  # a kill leaves the old log whole
            writer = csv.DictWriter(fh, fieldnames=union)
            writer.writeheader()
            writer.writerows(rows)
        header = union
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header or list(row))
        if header is None:
            writer.writeheader()
        writer.writerow(row)


def _log_header(path: Path) -> list[str] | None:
    """log.csv's column names; None when there is no log (or an empty one) yet."""
    if not path.exists():
        return None
    with open(path, newline="") as fh:
        return next(csv.reader(fh), None) or None


def _restore_log_rows(path: Path, name: str, history: list[dict[str, Any]]) -> None:
    """On a resume: `name`'s rows of log.csv as its checkpoint's history has them. A kill between the checkpoint
    and the log row (or a log lost) would otherwise leave that epoch out of the log and the learning curves."""
    logged = []
    if path.exists():
        with open(path, newline="") as fh:
            logged = [row.get("epoch") for row in csv.DictReader(fh) if row.get("model") == name]
    if logged != [str(row["epoch"]) for row in history]:
        _drop_log_rows(path, name)
        for row in history:
            _append_log(path, row)


def _drop_log_rows(path: Path, name: str) -> None:
    if path.exists():
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        kept = [row for row in rows if row.get("model") != name]
        if not kept:
            path.unlink()  # the next row writes the header again
        elif len(kept) < len(rows):
            with replace_whole(path) as tmp, open(tmp, "w", newline="") as fh:  # a kill leaves the old log whole
                writer = csv.DictWriter(fh, fieldnames=list(kept[0]))
                writer.writeheader()
                writer.writerows(kept)
