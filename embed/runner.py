"""The embed runner: one frozen model over an input table into one cache, resumable shard by shard.

Flow per pending shard: the shard's rows are prepared on the CPU by DataLoader worker processes (FASTA
reads, one-hot, tokenisation) while the device computes; prepared items are grouped into batches by a token
budget counted after tokenisation; outputs are cast to the storage dtype on the device (float16 and bfloat16
halve the transfer and the shard buffer) and the whole shard is written at once (`CacheWriter.write_shard`).
Re-running the same command skips finished shards; on a complete cache it does nothing and says so.

Settings are resolved once (`resolve`): "auto" precision for the device, the adapter's token budget for
`max_tokens` 0, and the adapter's options as the loaded model fixes them; `EmbedSettings` carries the result
to the manifest, the stream and the dask workers.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import functools
import os
import signal
import sys
import tempfile
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from dogmacache.cache import open_cache
from dogmacache.cache.layout import numpy_view
from dogmacache.cache.spec import CacheSpec
from dogmacache.cache.writer import CacheWriter
from dogmacache.contracts.provenance import file_sha256
from dogmacache.devices import pick_device
from dogmacache.embed.adapters import AdapterOptions, EmbeddingAdapter, ModelInfo, get_adapter
from dogmacache.embed.genome import genome_digest
from dogmacache.embed.inputs import input_digest, read_input_table
from dogmacache.errors import CacheError, DogmaError, InputError
from tqdm.auto import tqdm


@dataclass(frozen=True)
class EmbedConfig:
    input: str  # the recipe's table (parquet/TSV)
    modality: str  # dna | rna | protein | gene | context
    model: str  # adapter name (see `dogmacache embed --help`)
    out: str  # cache directory to write
    model_path: str | None = None  # hub id or local directory; None = the adapter's default weights
    revision: str | None = None  # hub revision to download; None = main (local directories: unused)
    genome: str | None = None  # FASTA for dna windows
    device: str = "auto"  # auto = cuda when available, else cpu
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU; or fp32 | bf16 | fp16
    dtype: str = "float16"  # storage dtype of the cache
    compression: str = "none"
    max_tokens: int = 0  # token budget per batch (after tokenisation, specials included); 0 = adapter default
    max_batch: int = 64  # never more items per batch than this
    num_workers: int = 2  # CPU processes preparing inputs beside the device
    shard_items: int | None = None  # items per shard (default: ~1 GiB shards)
    overwrite: bool = False
    progress: bool = True
    options: AdapterOptions | None = None  # the adapter's options dataclass; None = its defaults
    max_positions: int | None = None  # per-position outputs average-pooled to at most this many positions per item
    random_init: int | None = None  # seed: the model's architecture with weights drawn at random, none loaded


@dataclass(frozen=True)
class EmbedSettings:
    """What a run uses, every "auto", 0 and None of `EmbedConfig` and the adapter options decided
    (`resolve`); written into the cache manifest."""

    config: EmbedConfig
    device: torch.device
    precision: str  # fp32 | bf16 | fp16: the autocast dtype of the forward pass
    max_tokens: int  # token budget per batch
    options: AdapterOptions  # as the loaded adapter resolved them (window from the model's bins, ...)

    def manifest_config(self, info: ModelInfo) -> dict[str, Any]:
        """The manifest's `config`: the run's settings, the adapter's options, the model's facts, and the files
        read, by name and digest: a manifest is published with its cache, so it holds no local path."""
        config = self.config
        run = {k: v for k, v in asdict(config).items() if k not in ("progress", "overwrite", "options", *PATHS)}
        files = {
            "input": {"name": Path(config.input).name, "sha256": file_sha256(config.input)},
            "out": Path(config.out).name,
            "genome": {"name": Path(config.genome).name, "sha256": genome_digest(config.genome)}
            if config.genome
            else None,
            "model_files": info.files,
        }
        resolved = {
            "precision": self.precision,
            "max_tokens": self.max_tokens,
            "device": self.device.type,
            "options": asdict(self.options),
        }
        clash = sorted(set(info.config) & (set(run) | set(files) | set(resolved)))
        assert not clash, f"adapter facts {clash} would overwrite the run's settings"  # one value per key
        return {**run, **info.config, **files, **resolved}


PATHS = ("input", "out", "genome", "model_path")  # EmbedConfig fields that hold local paths
# Resolved settings whose change changes the numbers: a cache is extended or reused only when they agree.
# Batch sizes (max_tokens, max_batch) are left out: with batches inside shards they move values by float
# rounding at most, and a resume on another machine may need another budget.
NUMBER_SETTINGS = ("random_init", "precision", "device", "dtype", "compression", "max_positions")


def number_fingerprint(config: dict[str, Any], flags: dict[str, dict]) -> dict[str, Any]:
    """What in a manifest `config` decides the numbers, one label per setting (an option as its flag)."""
    found = {name: config.get(name) for name in NUMBER_SETTINGS}
    for name, value in (config.get("options") or {}).items():
        found[flags[name]["flags"][0] if name in flags else f"option {name}"] = value
    for name, digest in (config.get("model_files") or {}).items():
        found[f"model file {name}"] = digest
    genome = config.get("genome")
    if genome:
        found[f"genome {genome['name']}"] = genome["sha256"]
    return found


def check_same_settings(out: str, wanted: dict[str, Any], flags: dict[str, dict]) -> None:
    """A cache already at `out` (finished or not) is extended or reused only when its recorded settings agree
    with this run's; InputError naming the first that differs, its value in the cache and now, and the fix."""
    if not Path(out).exists():
        return
    try:
        there = open_cache(out, allow_partial=True).manifest.config  # read only: takes no writer lock
    except (CacheError, OSError):
        return  # not a cache: creating the cache names the problem
    old, new = number_fingerprint(there, flags), number_fingerprint(wanted, flags)
    differ = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
    if differ:
        first = differ[0]
        more = f" (and {len(differ) - 1} more: {', '.join(differ[1:4])})" if len(differ) > 1 else ""
        raise InputError(
            f"{out} was embedded with other settings: {first}: {old.get(first)!r} in the cache, "
            f"{new.get(first)!r} now{more}; re-run with the cache's settings to resume or reuse it, or pass "
            "--overwrite (or another --out) to embed anew"
        )


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtype; None = no autocast


def resolve_precision(device: torch.device, precision: str) -> str:
    """ "auto" is bf16 autocast on CUDA and fp32 elsewhere; any other value must be one of PRECISIONS."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision!r} is not one of auto, {', '.join(PRECISIONS)}")
    return precision


def resolve(config: EmbedConfig, adapter: EmbeddingAdapter, device: torch.device) -> EmbedSettings:
    """The one place a run's settings are decided, once the adapter is loaded and the device picked."""
    return EmbedSettings(
        config=config,
        device=device,
        precision=resolve_precision(device, config.precision),
        max_tokens=config.max_tokens or adapter.default_max_tokens(device),
        options=adapter.options,
    )


def autocast_for(device: torch.device, precision: str):
    """The autocast context for the forward pass under a resolved `precision` (weights stay fp32)."""
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def pool_positions(
    embedded: torch.Tensor, mask: np.ndarray | None, max_positions: int
) -> tuple[torch.Tensor, np.ndarray | None]:
    """(b, L, D) outputs average-pooled to (b, K, D), K = min(L, max_positions), bins as torch's adaptive pooling.
    With a `mask` (b, L) of real positions, only an item's real positions are pooled, into min(n_real, K) bins
    at the front; the returned mask (b, K) marks the bins that hold any."""
    length = embedded.shape[1]
    if length <= max_positions:
        return embedded, mask
    if mask is None:
        pooled = torch.nn.functional.adaptive_avg_pool1d(embedded.transpose(1, 2).float(), max_positions)
        return pooled.transpose(1, 2).to(embedded.dtype), None
    out = embedded.new_zeros(embedded.shape[0], max_positions, embedded.shape[2])
    kept = np.zeros((embedded.shape[0], max_positions), dtype=bool)
    for i, row in enumerate(np.asarray(mask, dtype=bool)):
        real = torch.from_numpy(np.flatnonzero(row)).to(embedded.device)
        bins = min(len(real), max_positions)
        if bins:
            tokens = embedded[i, real].T.unsqueeze(0).float()  # (1, D, n_real)
            out[i, :bins] = torch.nn.functional.adaptive_avg_pool1d(tokens, bins)[0].T.to(embedded.dtype)
            kept[i, :bins] = True
    return out, kept


def bounded_info(info: ModelInfo, max_positions: int | None) -> ModelInfo:
    """The model's outputs as the cache holds them once pooled to `max_positions` (item shape and mask)."""
    if not max_positions or len(info.item_shape) != 2 or info.item_shape[0] <= max_positions:
        return info
    extras = tuple(dataclasses.replace(e, item_shape=(max_positions,)) if e.name == "mask" else e for e in info.extras)
    return dataclasses.replace(info, item_shape=(max_positions, info.item_shape[1]), extras=extras)


def to_host(embedded: torch.Tensor, dtype: str, ids: list[str]) -> np.ndarray:
    """(b, ...) outputs cast to the storage `dtype` on their device, then copied to the host. bfloat16 comes
    back as ml_dtypes' bfloat16 (same bits). Values finite before the cast and not after (beyond float16's
    range) are refused here, naming the item, where the cause is still known."""
    stored = embedded.to(getattr(torch, dtype))
    if dtype == "float16":
        overflow = (torch.isinf(stored) & torch.isfinite(embedded)).flatten(1).any(1)  # (b,)
        if bool(overflow.any()):
            first = int(overflow.nonzero()[0, 0])
            raise CacheError(
                f"item {ids[first]!r} has values beyond float16's range (|x| > 65,504); store float32 instead "
                "(--dtype float32)"
            )
    if dtype == "bfloat16":  # numpy has no bfloat16 of its own: move the bits, view them as ml_dtypes'
        return stored.view(torch.int16).cpu().numpy().view(numpy_view("bfloat16"))
    return stored.cpu().numpy()


class _Prepared(torch.utils.data.Dataset):
    """Rows of the table for the pending shards, prepared one by one in worker processes."""

    def __init__(self, rows: list[dict[str, Any]], adapter: EmbeddingAdapter):
        self.rows, self.adapter = rows, adapter

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        # A worker's exception reaches the parent re-raised inside torch's multi-line wrapper; the user's error
        # travels as data instead and is raised as itself (`_raise_errors`), one line as always.
        try:
            return self.adapter.prepare(self.rows[i])
        except DogmaError as err:
            return {_ERROR: err}


_ERROR = "_error"  # key of an item whose preparation failed


def _raise_errors(items):
    for item in items:
        if _ERROR in item:
            raise item[_ERROR]
        yield item


def _die_with_parent(parent_pid: int, worker_id: int) -> None:
    """DataLoader worker init: the kernel kills this worker when the embed process dies (even by kill -9).
    torch's own check exits the work loop, but the exiting worker then waits forever to flush results into a
    pipe whose read end its sibling workers still hold. Linux only; elsewhere torch's check is all there is."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)


PR_SET_PDEATHSIG = 1  # <sys/prctl.h>


def _as_prepared(item: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Items stay as the adapter prepared them (the default would turn numpy arrays into tensors)."""
    return item


def batches_by_budget(items, n_tokens, max_tokens: int, max_batch: int, starts: Collection[int] = ()):
    """Group a stream of prepared items into batches whose padded cost (B x longest) fits `max_tokens`; the
    items at positions `starts` always open a new batch (shard boundaries: a shard's bytes then depend only on
    the shard, since CPU kernels round differently at other batch sizes)."""
    batch, longest = [], 0
    for position, item in enumerate(items):
        cost = n_tokens(item)
        full = max(longest, cost) * (len(batch) + 1) > max_tokens or len(batch) >= max_batch
        if batch and (full or position in starts):
            yield batch
            batch, longest = [], 0
        batch.append(item)
        longest = max(longest, cost)
    if batch:
        yield batch


def embed_stream(
    adapter: EmbeddingAdapter,
    rows: list[dict[str, Any]],
    *,
    device: torch.device,
    precision: str,
    max_tokens: int,
    max_batch: int,
    num_workers: int,
    dtype: str = "float32",
    starts: Collection[int] = (),
    max_positions: int | None = None,
):
    """Yield (outputs (b, *item_shape) in the storage `dtype` on the CPU, extras each (b, ...)) batch by
    batch, in row order. `precision` is resolved (fp32 | bf16 | fp16, see `resolve_precision`); no batch
    spans a position in `starts` and the row before it."""
    loader = torch.utils.data.DataLoader(
        _Prepared(rows, adapter),
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_as_prepared,
        pin_memory=device.type == "cuda",
        prefetch_factor=16 if num_workers else None,
        multiprocessing_context="fork" if num_workers else None,
        worker_init_fn=functools.partial(_die_with_parent, os.getpid()) if num_workers else None,
    )
    done = 0
    with torch.inference_mode(), autocast_for(device, precision):
        for batch in batches_by_budget(
            _raise_errors(loader), adapter.n_tokens, max_tokens, max_batch, frozenset(starts)
        ):
            embedded, extras = adapter.embed(batch)
            if max_positions and embedded.ndim == 3:
                embedded, mask = pool_positions(embedded, extras.get("mask"), max_positions)
                if mask is not None:
                    extras = {**extras, "mask": mask}
            ids = [str(row["id"]) for row in rows[done : done + len(batch)]]
            done += len(batch)
            yield to_host(embedded, dtype, ids), {k: np.asarray(v) for k, v in extras.items()}


def embed_rows(adapter: EmbeddingAdapter, rows: list[dict[str, Any]], **kwargs) -> tuple[np.ndarray, dict]:
    """All rows at once: (N, *item_shape) in the stream's `dtype` and the extras, each (N, ...)."""
    outputs, extras = [], {}
    for embedded, batch_extras in embed_stream(adapter, rows, **kwargs):
        outputs.append(embedded)
        for key, value in batch_extras.items():
            extras.setdefault(key, []).append(value)
    return np.concatenate(outputs), {k: np.concatenate(v) for k, v in extras.items()}


class _ShardFiller:
    """Collects streamed batch outputs into whole shards and writes each in a background thread
    (at most one write in flight, so memory stays at about two shards)."""

    def __init__(self, writer: CacheWriter, shards: list[tuple[int, int, int]]):
        from concurrent.futures import ThreadPoolExecutor

        self.writer, self.shards = writer, list(shards)
        self.outputs: list[np.ndarray] = []
        self.extras: dict[str, list[np.ndarray]] = {}
        self.n = 0
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.in_flight = None
        self.padded = 0

    def add(self, embedded: np.ndarray, extras: dict[str, np.ndarray]) -> None:
        self.outputs.append(embedded)
        for key, value in extras.items():
            self.extras.setdefault(key, []).append(value)
        self.n += len(embedded)
        while self.shards and self.n >= self.shards[0][2] - self.shards[0][1]:
            shard, a, b = self.shards.pop(0)
            size = b - a
            block = np.concatenate(self.outputs)
            ex = {k: np.concatenate(v) for k, v in self.extras.items()}
            self.outputs, self.extras = [block[size:]], {k: [v[size:]] for k, v in ex.items()}
            self.n -= size
            self.padded += int(np.count_nonzero(ex.get("n_padded", np.zeros(0))[:size]))
            self._wait()
            self.in_flight = self.pool.submit(
                self.writer.write_shard, shard, block[:size], **{k: v[:size] for k, v in ex.items()}
            )

    def _wait(self) -> None:
        if self.in_flight is not None:
            self.in_flight.result()  # re-raises a failed write here
            self.in_flight = None

    def close(self) -> None:
        self._wait()
        self.pool.shutdown()
        if self.shards:
            raise RuntimeError(f"{len(self.shards)} shards got no outputs; the adapter returned too few items")


def _rows(table: pd.DataFrame, genome) -> list[dict[str, Any]]:
    rows = table.to_dict("records")
    if genome is not None:
        for row in rows:
            row["_genome"] = genome
    return rows


def open_writer(settings: EmbedSettings, table: pd.DataFrame, info: ModelInfo) -> CacheWriter:
    """Create or resume the cache, with the resolved settings (everything that ran) in its manifest."""
    config = settings.config
    recorded = settings.manifest_config(info)
    genome_tag = f"{recorded['genome']['name']}:{recorded['genome']['sha256']}" if config.genome else ""
    if not config.overwrite:
        check_same_settings(config.out, recorded, type(settings.options).flags)
    spec = CacheSpec(
        modality=config.modality,
        model=info.model,
        model_revision=info.model_revision,
        layer=info.layer,
        pooling=info.pooling,
        item_shape=info.item_shape,
        input_digest=input_digest(table, config.modality, genome_tag),
        dtype=config.dtype,
        compression=config.compression,
        shard_items=config.shard_items,
        extras=tuple(info.extras),
        config=recorded,
    )
    return CacheWriter.create(config.out, spec, ids=table["id"].tolist(), overwrite=config.overwrite)


def load(config: EmbedConfig, device: torch.device):
    """The input table, its rows and the loaded adapter; every check that can fail before work starts."""
    cls = get_adapter(config.model, config.modality)
    options = cls.options_class() if config.options is None else config.options
    if type(options) is not cls.options_class:
        raise InputError(
            f"model {config.model!r} on --modality {config.modality} takes {cls.options_class.__name__}, "
            f"not {type(options).__name__}; build the options with {cls.options_class.__name__}(...)"
        )
    table = read_input_table(config.input, config.modality)
    genome = None
    if config.modality == "dna":
        if not config.genome:
            raise InputError("--modality dna needs the genome FASTA the windows are cut from: pass --genome")
        from dogmacache.embed.genome import Genome

        genome = Genome(config.genome)
        unknown = sorted({c for c in table["chrom"].astype(str).unique() if _unknown(genome, c)})
        if unknown:
            raise InputError(
                f"chromosomes {unknown[:5]} of {config.input} are not in {config.genome} "
                f"(it has {', '.join(genome.chromosomes[:8])}); check the genome build"
            )
        _check_centres(table, genome)
    adapter = cls(config.model_path, options, device, revision=config.revision, random_init=config.random_init)
    adapter.check_table(table)
    return table, _rows(table, genome), adapter


def _check_centres(table: pd.DataFrame, genome) -> None:
    """Every window centre inside its chromosome (1..length), all rows checked before any worker starts."""
    lengths = {c: genome.length(c) for c in table["chrom"].astype(str).unique()}
    size = table["chrom"].astype(str).map(lengths)
    center = pd.to_numeric(table["center"], errors="coerce")
    bad = table.index[~((center >= 1) & (center <= size))]
    if len(bad):
        row = table.loc[bad[0]]
        more = f" ({len(bad)} rows in all)" if len(bad) > 1 else ""
        shown = f"{int(center[bad[0]]):,}" if pd.notna(center[bad[0]]) else repr(row["center"])
        raise InputError(
            f"item {row['id']!r}: centre {shown} is outside chromosome {row['chrom']!r} "
            f"(1..{lengths[str(row['chrom'])]:,}){more}; check the table's coordinates and genome build, or drop "
            "the row"
        )


def _unknown(genome, chrom: str) -> bool:
    try:
        genome.resolve(chrom)
        return False
    except InputError:
        return True


def check_output(out: str) -> None:
    """`out` can be written: a probe file is created and removed in it, or in the nearest folder above it that
    exists. Runs before any model loads, so a read-only or missing disk costs no model load."""
    if "://" in out:
        return  # not a local path: the writer names the problem
    path = Path(out)
    probe_dir = next(p for p in (path, *path.parents) if p.exists())
    if not probe_dir.is_dir():
        raise CacheError(f"cannot write to {out}: {probe_dir} is a file, not a folder; pick another --out")
    try:
        handle, name = tempfile.mkstemp(dir=probe_dir, prefix=".dogmacache-probe-")
        os.close(handle)
        os.unlink(name)
    except OSError as err:
        raise CacheError(
            f"cannot write to {out}: {err.strerror} (in {probe_dir}); pick a writable --out (nothing was loaded or "
            "written)"
        ) from err


DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def disk_error(err: BaseException, out: str, writer: CacheWriter | None) -> BaseException:
    """An OSError of the disk (full, read-only, no permission) raised while writing `out` as one line saying
    what was kept and how to go on; any other error unchanged."""
    cause = err
    while cause is not None and not (isinstance(cause, OSError) and cause.errno in DISK_ERRNOS):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return err
    if writer is None:
        kept = "nothing was written"
    else:
        kept = (
            f"{len(writer.done_shards())} of {writer.manifest.n_shards} shards are kept (checksummed) and the "
            "cache stays marked unfinished"
        )
    return CacheError(
        f"writing {out} failed: {cause.strerror}"
        + (f" ({cause.filename})" if cause.filename else "")
        + f"; {kept}; free space or fix the permissions, then re-run the same command to resume"
    )


def run_embed(config: EmbedConfig) -> dict[str, Any]:
    """Embed `config.input` into `config.out`. Returns a summary (items, seconds, items/s, shards written)."""
    check_output(config.out)
    device = pick_device(config.device)
    table, rows, adapter = load(config, device)
    settings = resolve(config, adapter, device)
    writer = None
    try:
        writer = open_writer(settings, table, bounded_info(adapter.info(), config.max_positions))
        return _run(config, settings, adapter, rows, writer)
    except OSError as err:
        raise disk_error(err, config.out, writer) from err


def _run(
    config: EmbedConfig,
    settings: EmbedSettings,
    adapter: EmbeddingAdapter,
    rows: list[dict[str, Any]],
    writer: CacheWriter,
) -> dict[str, Any]:
    device = settings.device
    if writer.manifest.complete:
        print(f"{config.out} is already complete ({writer.manifest.n_items:,} items); nothing to do")
        return {"items": 0, "shards": 0, "complete": True}
    pending = writer.pending_shards()
    m = writer.manifest
    todo = [(s, *m.shard_rows(s)) for s in pending]
    n_todo = sum(b - a for _, a, b in todo)
    if len(pending) < m.n_shards:
        print(f"resuming {config.out}: {m.n_shards - len(pending)} of {m.n_shards} shards already written")
    bar = tqdm(
        total=n_todo, unit="item", desc=f"embed {config.model}", disable=None if config.progress else True
    )  # None: off when not a terminal
    start = time.perf_counter()
    filler = _ShardFiller(writer, todo)
    rows_todo = [row for _, a, b in todo for row in rows[a:b]]
    starts = np.cumsum([0] + [b - a for _, a, b in todo[:-1]]).tolist()  # each shard's first row in rows_todo
    for embedded, extras in embed_stream(
        adapter,
        rows_todo,
        device=device,
        precision=settings.precision,
        max_tokens=settings.max_tokens,
        max_batch=config.max_batch,
        num_workers=config.num_workers,
        dtype=config.dtype,
        starts=starts,
        max_positions=config.max_positions,
    ):
        filler.add(embedded, extras)
        bar.update(len(embedded))
    filler.close()
    bar.close()
    padded = filler.padded
    manifest = writer.finalize()
    seconds = time.perf_counter() - start
    summary = {
        "items": n_todo,
        "seconds": round(seconds, 2),
        "items_per_s": round(n_todo / max(seconds, 1e-9), 2),
        "shards": len(pending),
        "padded_windows": padded,
        "complete": manifest.complete,
    }
    print(
        f"embedded {n_todo:,} items in {seconds:.1f} s ({summary['items_per_s']:,} items/s) into {config.out}: "
        f"{len(pending)} shards, {padded} windows padded with N, cache complete"
    )
    return summary
