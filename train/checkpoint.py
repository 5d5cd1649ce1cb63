"""Checkpoints that rebuild their model from the file alone and refuse to resume a different run.

A checkpoint is a dict (torch.save) with:
  format        "dogmacache-checkpoint-1"
  task          name in `registry.TASKS` (the task whose `models` rebuild it)
  model_class   key in that task's `models`; model_config: that model's config dict
  model         the state dict
  config        the resolved RunConfig.to_dict() of the run (None for imported weights)
  fingerprints  per cache: model, revision, input / ids / shard digests (`EmbeddingCache.fingerprint`)
  versions      package versions; extras: task inputs the model needs (e.g. the DNA scaling)
and, in `<name>_last.pt` only, the optimiser, scheduler, RNG and loop state for resuming.
"""

from __future__ import annotations

import errno
import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from dogmacache.cache.fingerprint import first_fingerprint_difference
from dogmacache.cache.manifest import digest_strings
from dogmacache.cache.storage import disk_error, replace_whole
from dogmacache.contracts.provenance import file_sha256
from dogmacache.errors import InputError
from dogmacache.train.config import changed_keys
from torch import nn

FORMAT = "dogmacache-checkpoint-1"


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a kill mid-save leaves the previous checkpoint intact. A full or read-only disk is one
    line saying what is kept (`cache.storage.disk_error`); the partial temporary file is removed, so it holds no
    space."""
    try:
        with replace_whole(path) as tmp:  # removed if the save fails, so it holds no space
            torch.save({"format": FORMAT, **payload}, tmp)
    except (OSError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and "inline_container" in str(err):
            # torch reports a short write (the disk filled) as RuntimeError, without the OSError behind it
            err = OSError(errno.ENOSPC, "No space left on device", str(path))
        kept = f"{path} (the previous one) is kept" if path.exists() else "no checkpoint of this model was kept"
        error = disk_error(err, f"write {path}", kept, kind=InputError)
        if error is None:
            raise
        raise error from None


def read(path: str | Path, map_location: str | torch.device = "cpu", what: str = "", fix: str = "") -> dict[str, Any]:
    """The checkpoint at `path`; `what` names where it was asked for (a [data] key) and `fix` what to do where it
    is missing or torn (default: point at a checkpoint file)."""
    path = Path(path)
    where = f"{what} = {str(path)!r}" if what else f"checkpoint {str(path)!r}"
    if not path.is_file():
        raise InputError(f"{where} does not exist; {fix or 'point at a <model>_best.pt / _last.pt file'}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # a torn or foreign file
        raise InputError(
            f"{where} is not a readable checkpoint ({type(err).__name__}: {err}); "
            f"{fix or 'point at a <model>_best.pt / _last.pt file'}"
        ) from err
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise InputError(
            f"{path} is not a dogmacache checkpoint (format {FORMAT!r}); a state dict of the CDT "
            "authors' model converts with `dogmacache train import-checkpoint`"
        )
    return checkpoint


def resume_fix(last: Path) -> str:
    """What to do with a model's last checkpoint a resume cannot read (torn by a full disk, or not a checkpoint)."""
    return (
        f"remove {last} to train that model again from its first epoch, or start the run over with --set "
        "output.resume=false --set output.overwrite=true"
    )


def rebuild(checkpoint: dict[str, Any], models: dict[str, Any], path: str | Path = "checkpoint") -> nn.Module:
    """The checkpoint's model from `models` (its task's class name -> builder), weights loaded, in eval mode."""
    if checkpoint["model_class"] not in models:
        raise InputError(
            f"{path}: model class {checkpoint['model_class']!r} is not one of task "
            f"{checkpoint['task']!r}'s {sorted(models)}"
        )
    model = models[checkpoint["model_class"]](checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def check_resume(
    checkpoint: dict[str, Any],
    path: Path,
    config: dict[str, Any],
    fingerprints: dict[str, Any],
    splits: dict[str, str] | None = None,
    files_read: dict[str, str] | None = None,
    extras: dict[str, Any] | None = None,
) -> None:
    """Refuse to resume from a checkpoint of another run: the first differing config key, cache fingerprint,
    split's examples (`splits`, `split_digests`) or [data] file content (`data_files`, with the files read from
    a default place, `files_read`). A labels file rewritten in place with other splits would otherwise score the
    resumed model on the rows it trained on; a tissues table swapped beside them, on a tissue it trained on.
    `extras`: the scalings this run fitted on its training rows (`TaskData.extras`, e.g. CDBridge's DNA scale); one
    that differs from the checkpoint's beyond float rounding (a sample drawn another way by an earlier version)
    would feed the resumed model inputs scaled unlike those it trained on."""
    fix = (
        f"set --set output.resume=false --set output.overwrite=true to start over in {path.parent}, "
        "or choose another [output] dir"
    )
    changed = changed_keys(checkpoint.get("config") or {}, config)
    if changed:
        key = changed[0]
        old, new = _lookup(checkpoint.get("config") or {}, key), _lookup(config, key)
        raise InputError(f"{path} was trained with {key} = {old!r} but this run has {new!r}; {fix}")
    difference = first_fingerprint_difference(checkpoint.get("fingerprints") or {}, fingerprints)
    if difference:
        raise InputError(f"{path} was trained on {difference.describe()}; {fix}")
    _check_splits(checkpoint, path, config, splits, fix)
    done, epochs = (checkpoint.get("state") or {}).get("epoch"), _lookup(config, "train.epochs")
    if isinstance(done, int) and isinstance(epochs, int) and done > epochs:
        raise InputError(
            f"{path} has trained {done} epochs, more than this run's train.epochs = {epochs}; a resume may add "
            f"epochs, not take them back: set train.epochs to {done} or more, or {fix.removeprefix('set ')}"
        )
    files, now = checkpoint.get("data_files") or {}, data_files(config, files_read)
    for key in sorted(set(files) & set(now)):
        _check_file(files, now, key, path, config, fix, files_read)
    gone = sorted(set(files) - set(now))
    if gone:  # a file it read is not read now (labels_log1p.parquet removed from beside the labels)
        raise InputError(f"{path} was trained reading a [data] {gone[0]} file this run does not read; {fix}")
    saved = checkpoint.get("extras") or {}
    for key in sorted(set(saved) & set(extras or {})):
        if not _same_numbers(saved[key], extras[key]):
            raise InputError(
                f"{path} was trained with inputs scaled by another {key} than this run fits on the same training rows "
                f"(written by another version of the task); {fix}"
            )


def _same_numbers(a: Any, b: Any) -> bool:
    """Two JSON-like values alike, numbers within float32 rounding (relative 1e-5)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_numbers(a[k], b[k]) for k in a)
    try:
        x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError):
        return a == b
    return x.shape == y.shape and bool(np.allclose(x, y, rtol=1e-5, atol=1e-8, equal_nan=True))


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and bytes, in key order: which weights a model handed on
    (a prerequisite's best checkpoint, which the run that needs it starts from)."""
    import hashlib

    h = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        h.update(f"{key}\t{tensor.dtype}\t{tuple(tensor.shape)}\n".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def check_prerequisites_kept(
    checkpoint: dict[str, Any], path: Path, now: dict[str, dict[str, Any]], fix: str | None = None
) -> None:
    """Refuse to resume a model from `checkpoint` (its last.pt at `path`) whose prerequisite runs (CDBridge's stage
    1) now hand on other weights than those it started from: it holds those weights (frozen), while the run would
    report the new ones' numbers beside it. `now`: role -> {"weights": digest, "epoch": best epoch}; a role whose
    weights are not known yet (it trains further in this run) has "weights" None."""
    fix = fix or (
        f"--set output.resume=false --set output.overwrite=true starts over in {path.parent}, or choose another "
        "[output] dir"
    )
    for role, then in (checkpoint.get("prerequisites") or {}).items():
        current = now.get(role)
        if current is None or current.get("weights") == then.get("weights"):
            continue
        change = (
            "is trained further, or anew, in this run (train.epochs above the epochs it ran, or its checkpoints gone)"
            if current.get("weights") is None
            else f"now holds other weights (best epoch {current.get('epoch')})"
        )
        raise InputError(
            f"{path} started from its {role} as it was after epoch {then.get('epoch')}, and that {role} {change}: the "
            f"model would keep the old {role} while the run reports the new one; {fix}"
        )


def _check_splits(
    checkpoint: dict[str, Any], path: str | Path, config: dict[str, Any], splits: dict[str, str] | None, fix: str
) -> None:
    recorded = checkpoint.get("splits")
    if recorded is not None and splits is not None and recorded != splits:
        split = next(s for s in sorted(set(recorded) | set(splits)) if recorded.get(s) != splits.get(s))
        raise InputError(
            f"{path} was trained on other {split} examples than this run's (labels table "
            f"{_lookup(config, 'data.labels')!r}); {fix}"
        )


def _check_file(
    files: dict[str, str],
    now: dict[str, str],
    key: str,
    path: str | Path,
    config: dict[str, Any],
    fix: str,
    files_read: dict[str, str] | None = None,
) -> None:
    if files[key] != now[key]:
        shown = _lookup(config, f"data.{key}") or (files_read or {}).get(key)
        raise InputError(
            f"{path} was trained on another [data] {key} file than this run's {shown!r} (sha256 differs); {fix}"
        )


def check_prerequisite(
    checkpoint: dict[str, Any],
    path: str,
    config: dict[str, Any],
    fingerprints: dict,
    reads: tuple[str, ...],
    splits: dict[str, str] | None = None,
    fix: str = "train stage 1 in this run (leave [data] stage1_checkpoint empty) or name the one trained on these data",
    model_keys: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
) -> None:
    """Refuse a finished prerequisite checkpoint (CDBridge's [data] stage1_checkpoint) trained on other data than
    this run's: the fingerprint of each cache it `reads` (`<name>_cache` -> `<name>`: the cache's content, wherever
    it lies), the examples of each split (`splits`, `split_digests`; by the labels path where the checkpoint
    predates them) and its other `reads` keys. A stage 1 trained on other splits would carry this run's test
    examples into stage 2, which starts from it. `fix`: what the refusal tells the user to do."""
    saved = checkpoint.get("config") or {}
    then, now, defaults = saved.get("model") or {}, config.get("model") or {}, defaults or {}
    for key in model_keys:  # another model (a stage-2 checkpoint, other sizes or merging): no such prerequisite
        old, new = then.get(key, defaults.get(key)), now.get(key, defaults.get(key))
        if old != new:
            raise InputError(
                f"{path} was trained with [model] {key} = {old!r}, and the run it stands for has {new!r}; name a "
                f"checkpoint of that run (a <name>_best.pt of a stage-1 run with this [model]), or {fix}"
            )
    names = {key.removesuffix("_cache") for key in reads if key.endswith("_cache")}
    difference = first_fingerprint_difference(
        {k: v for k, v in (checkpoint.get("fingerprints") or {}).items() if k in names},
        {k: v for k, v in fingerprints.items() if k in names},
    )
    if difference:
        raise InputError(f"{path} was trained on {difference.describe()}; {fix}")
    _check_splits(checkpoint, path, config, splits, fix)
    recorded = checkpoint.get("splits")
    files, now = checkpoint.get("data_files") or {}, data_files(config)
    for key in reads:
        if key.endswith("_cache"):
            continue
        old, new = _lookup(saved, f"data.{key}"), _lookup(config, f"data.{key}")
        if key in files and key in now:  # a file: by its content, wherever it lies
            _check_file(files, now, key, path, config, fix)
            continue
        if key == "labels" and recorded is not None and splits is not None:
            continue  # a checkpoint without file digests: its splits matched above
        if isinstance(old, str) and isinstance(new, str) and old and new:
            old, new = os.path.realpath(old), os.path.realpath(new)
        if old != new:
            raise InputError(f"{path} was trained with [data] {key} = {old!r} but this run has {new!r}; {fix}")


def data_files(config: dict[str, Any], files_read: dict[str, str] | None = None) -> dict[str, str]:
    """The sha256 of each file a run's [data] names (labels, masks, tables; caches are folders and have their
    fingerprints), and of each file it read from a default place for a key left empty (`files_read`,
    `TaskData.files_read`): what a checkpoint records of the files it was trained on."""
    named = {k: v for k, v in (config.get("data") or {}).items() if isinstance(v, str) and v}
    found = {}
    for key, value in {**(files_read or {}), **named}.items():
        # a checkpoint named there (stage1_checkpoint) is matched by what it read, not by its own bytes
        if not key.endswith("_checkpoint") and os.path.isfile(value):
            stat = os.stat(value)
            found[key] = _file_sha256(os.path.realpath(value), stat.st_size, stat.st_mtime_ns)
    return found


@functools.cache
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """`file_sha256`, kept per (path, size, mtime): a run's models read the same labels many times."""
    return file_sha256(path)


def split_digests(splits: dict[str, Any]) -> dict[str, str] | None:
    """Per split, the digest of its examples in order: the `id` column, or where a split table has none (CDT's
    pairs: enhancer, gene) its text columns, row by row; None where a table has neither. What a checkpoint
    records of the examples it was trained and chosen on (the values to learn are the [data] files' digests)."""
    digests = {}
    for name, table in splits.items():
        keys = ["id"] if "id" in table.columns else [c for c in table.columns if _is_text(table[c])]
        if not keys:
            return None
        text = table[keys[0]].astype(str)
        if len(keys) > 1:
            text = text.str.cat([table[k].astype(str) for k in keys[1:]], sep="\t")
        digests[name] = digest_strings(text)
    return digests


def _is_text(column: Any) -> bool:
    return (
        pd.api.types.is_object_dtype(column)
        or pd.api.types.is_string_dtype(column)
        or isinstance(column.dtype, pd.CategoricalDtype)
    )


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part, "<absent>") if isinstance(tree, dict) else "<absent>"
    return tree
