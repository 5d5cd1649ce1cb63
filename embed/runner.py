"""The embed runner: one frozen model over an input table into one cache, resumable shard by shard.

Flow per pending shard: the shard's rows are prepared on the CPU by DataLoader worker processes (FASTA
reads, one-hot, tokenisation) while the device computes; prepared items are grouped into batches by a token
budget counted after tokenisation; outputs are cast to the storage dtype on the device (float16 and bfloat16
halve the transfer and the shard buffer) and the whole shard is written at once (`CacheWriter.write_shard`).
Re-running the same command skips finished shards; on a complete cache it does nothing and says so.

Here: loading and checking the inputs (`load`), opening the cache (`open_writer`), the run and its disk errors.
The settings are `settings.py`'s, the batch loop `stream.py`'s, the shard writer thread `shard_filler.py`'s;
their public names are importable from here too.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from dogmacache.cache import storage
from dogmacache.cache.manifest import ceiling_2e, cosine_floor
from dogmacache.cache.spec import CacheSpec
from dogmacache.cache.writer import CacheWriter
from dogmacache.devices import CoreWatch, pick_device, torch_threads
from dogmacache.embed import reuse
from dogmacache.embed.adapters import EmbeddingAdapter, ModelInfo, get_adapter
from dogmacache.embed.fidelity import Capture, receipt, sample_rows
from dogmacache.embed.inputs import genome_tag, input_digest, read_input_table
from dogmacache.embed.settings import (
    COMPILE_MODES,
    NUMBER_SETTINGS,
    PATHS,
    PRECISIONS,
    EmbedConfig,
    EmbedSettings,
    check_same_settings,
    number_fingerprint,
    resolve,
    resolve_precision,
    resuming_line,
)
from dogmacache.embed.shard_filler import ReusedRows, ShardFiller, settled
from dogmacache.embed.stream import (
    autocast_for,
    batches_by_budget,
    embed_rows,
    embed_stream,
    input_digests,
    pool_positions,
    stored_info,
)
from dogmacache.embed.transfer import to_host
from dogmacache.errors import InputError
from tqdm.auto import tqdm

__all__ = [
    "print_fidelity",
    "NUMBER_SETTINGS",
    "PATHS",
    "PRECISIONS",
    "EmbedConfig",
    "EmbedSettings",
    "autocast_for",
    "batches_by_budget",
    "stored_info",
    "check_output",
    "check_same_settings",
    "disk_error",
    "embed_rows",
    "embed_stream",
    "load",
    "number_fingerprint",
    "open_writer",
    "pool_positions",
    "resolve",
    "resolve_precision",
    "run_embed",
    "to_host",
]


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
    genome = genome_tag(recorded)
    if not config.overwrite:
        check_same_settings(config.out, recorded, type(settings.options).flags, config.modality, info.model)
    spec = CacheSpec(
        modality=config.modality,
        model=info.model,
        model_revision=info.model_revision,
        layer=info.layer,
        pooling=info.pooling,
        item_shape=info.item_shape,
        input_digest=input_digest(table, config.modality, genome),
        dtype=config.dtype,
        compression=config.compression,
        shard_items=config.shard_items,
        extras=tuple(info.extras),
        config=recorded,
    )
    flags = type(settings.options).flags
    writer = CacheWriter.create(  # a resume: the settings that decide the numbers agree, checked under the lock
        config.out,
        spec,
        ids=table["id"].tolist(),
        overwrite=config.overwrite,
        settings_of=lambda recorded: number_fingerprint(recorded, flags),
    )
    changed = {} if writer.manifest.complete else reuse.rounding_changes(writer.manifest.config, recorded)
    if not writer.manifest.complete and not writer.done_shards():  # no rows yet: the cache is this run's alone
        for key in recorded:  # its settings recorded (threads on any device, the receipt's size, ...), as they ran
            if writer.manifest.config.get(key) != recorded.get(key):
                writer.note_config(key, recorded.get(key))
        changed = {}
    if changed:  # rows of two kinds in one cache: recorded, so that --reuse never takes them for one run's
        writer.note_config("resumed_with", [*writer.manifest.config.get("resumed_with", []), changed])
        begun = {k: writer.manifest.config.get(k) for k in changed}
        print(
            f"{config.out}: continued with {changed}, begun with {begun} (float rounding may differ between the "
            "two); recorded as resumed_with, and --reuse will not copy from this cache"
        )
    return writer


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
    elif config.genome:  # it would be recorded (and digested) with a cache whose inputs never read it
        raise InputError(
            f"--genome {config.genome} cuts DNA windows, and --modality {config.modality} reads its inputs from the "
            "table: drop --genome"
        )
    adapter = cls(config.model_path, options, device, revision=config.revision, random_init=config.random_init)
    adapter.check_table(table)
    if config.compile not in COMPILE_MODES:
        raise InputError(f"--compile {config.compile!r} is not one of {', '.join(COMPILE_MODES)}")
    if config.compile != "off":
        adapter.compile(config.compile)
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
    """`out` can be written (`storage.check_writable`), before any model loads: a read-only or missing disk costs
    no model load."""
    storage.check_writable(out, "--out", "nothing was loaded or written")


def disk_error(err: BaseException, out: str, writer: CacheWriter | None) -> BaseException:
    """An OSError of the disk (full, read-only, no permission) raised while writing `out` as one line saying
    what was kept and how to go on (`cache.storage.disk_error`); any other error unchanged."""
    if writer is None:
        kept = "nothing was written"
    else:
        kept = (
            f"{len(writer.done_shards())} of {writer.manifest.n_shards} shards are kept (checksummed) and the "
            "cache stays marked unfinished"
        )
    return storage.disk_error(err, f"write {out}", kept) or err


def count_truncated(url: str) -> int | None:
    """Items of the cache at `url` cut to the model's token limit (its `n_truncated` array, >0); None for a cache
    that records none (windows, gene tokens)."""
    from dogmacache.cache import open_cache

    cache = open_cache(url, allow_partial=True)
    if "n_truncated" not in cache.manifest.extra_arrays:
        return None
    return int(np.count_nonzero(cache.read_extra("n_truncated")))


def run_embed(config: EmbedConfig) -> dict[str, Any]:
    """Embed `config.input` into `config.out`. Returns a summary (items, seconds, items/s, shards written)."""
    check_output(config.out)
    watch = CoreWatch()  # how busy other processes keep the cores, watched while the model loads
    device = pick_device(config.device)
    if config.overwrite:  # the cache --overwrite would delete cannot also be a source to copy from
        out = os.path.realpath(config.out)
        for spec in config.reuse:
            if any(os.path.realpath(storage.local_path(url) or url) == out for url in reuse.find_caches(spec)):
                raise InputError(
                    f"--reuse {spec} names {config.out}, which --overwrite would delete before copying from it; "
                    "drop --overwrite (a resume copies from the others), or write to another --out"
                )
    candidates = reuse.find_sources(config.reuse)  # a --reuse naming no cache: refused before the model loads
    table, rows, adapter = load(config, device)
    info = stored_info(adapter.info(), config.max_positions)
    settings = resolve(config, adapter, device, watch, quiet=bool(candidates))
    if candidates:  # a run choosing no thread count takes the one of the caches it can copy from
        attrs = {"modality": config.modality, "model": info.model, "model_revision": info.model_revision}
        attrs.update({"layer": info.layer, "pooling": info.pooling, "item_shape": tuple(info.item_shape)})
        attrs.update({"dtype": config.dtype, "compression": config.compression})
        attrs["extra_arrays"] = tuple(e.name for e in info.extras)
        counts = reuse.usable_threads(candidates, attrs, settings.manifest_config(info), type(adapter.options).flags)
        settings = resolve(config, adapter, device, watch, reuse_threads=counts)
    writer = None
    try:
        writer = open_writer(settings, table, info)
        with torch_threads(settings.torch_threads):
            return _run(config, settings, adapter, rows, writer, candidates)
    except OSError as err:
        raise disk_error(err, config.out, writer) from err


def _plan_reuse(
    config: EmbedConfig,
    settings: EmbedSettings,
    adapter: EmbeddingAdapter,
    rows: list[dict[str, Any]],
    writer: CacheWriter,
    todo: list[tuple[int, int, int]],
    candidates: list[reuse.Candidate],
) -> tuple[dict[int, ReusedRows], reuse.RowCopier | None]:
    """Which rows of the pending shards the `--reuse` caches hold (by item digest), per shard."""
    if not todo:  # every shard written (stopped before the manifest was final): nothing to copy
        return {}, None
    sources, skipped = reuse.open_sources(candidates, writer.manifest, type(settings.options).flags)
    for line in skipped[:3]:
        print(f"--reuse: not using {line}")
    if len(skipped) > 3:
        print(f"--reuse: not using {len(skipped) - 3} more caches of other models or settings")
    if not sources:
        return {}, None
    wanted = np.concatenate([np.arange(a, b) for _, a, b in todo])
    digests = np.zeros((len(rows), 32), dtype=np.uint8)
    with tqdm(total=len(wanted), unit="item", desc="digest inputs", disable=None if config.progress else True) as bar:
        digests[wanted] = input_digests(
            adapter, [rows[i] for i in wanted], settings.workers_for(len(wanted)), bar.update
        )
    found = reuse.plan(sources, digests, wanted)
    per_shard = {}
    for shard, a, b in todo:
        hit = np.flatnonzero(found.source[a:b] >= 0)
        if len(hit):
            per_shard[shard] = ReusedRows(hit, found.source[a + hit], found.row[a + hit])
    print(f"--reuse: {found.summary()}; {len(wanted) - found.n_reused:,} rows to embed")
    return per_shard, reuse.RowCopier(sources)


def _run(
    config: EmbedConfig,
    settings: EmbedSettings,
    adapter: EmbeddingAdapter,
    rows: list[dict[str, Any]],
    writer: CacheWriter,
    candidates: list[reuse.Candidate] = (),
) -> dict[str, Any]:
    start = time.perf_counter()  # the run's clock: from here (model loaded, cache open) to the final manifest
    if writer.manifest.complete:
        print(f"{config.out} is already complete ({writer.manifest.n_items:,} items); nothing to do")
        return {"items": 0, "shards": 0, "complete": True}
    pending = writer.pending_shards()
    m = writer.manifest
    todo = [(s, *m.shard_rows(s)) for s in pending]
    n_todo = sum(b - a for _, a, b in todo)
    if len(pending) < m.n_shards:
        print(resuming_line(config.out, m.n_shards - len(pending), m.n_shards, settings.threads_note))
    reused, copier = (
        _plan_reuse(config, settings, adapter, rows, writer, todo, candidates) if candidates else ({}, None)
    )
    # the rows to embed; each shard's first of them: a batch spans two shards only where it is filled out to one
    # shape whatever rows it holds (`batches_by_budget`' span), so that a shard's bytes depend on the shard alone
    todo_rows, starts = [], []
    for shard, a, b in todo:
        keep = np.ones(b - a, dtype=bool)
        if shard in reused:
            keep[reused[shard].offsets] = False
        if keep.any():
            starts.append(len(todo_rows))
            todo_rows.extend(a + int(i) for i in np.flatnonzero(keep))
    rows_todo = [rows[i] for i in todo_rows]
    sample, drawn = sample_rows(todo_rows, len(rows), config.fidelity_items, resumed=len(pending) < m.n_shards)
    capture = Capture(sample, {row: position for position, row in enumerate(todo_rows)}, settings)
    bar = tqdm(
        total=n_todo, unit="item", desc=f"embed {config.model}", disable=None if config.progress else True
    )  # None: off when not a terminal
    filler = ShardFiller(writer, todo, reused, copier)
    bar.update(filler.copied)
    with settled([filler]):
        for embedded, extras in embed_stream(
            adapter,
            rows_todo,
            capture=capture if capture.wanted else None,
            starts=starts,
            span=True,
            **settings.stream_options(len(rows_todo)),
        ):
            copied = filler.copied
            filler.add(embedded, extras)
            bar.update(len(embedded) + filler.copied - copied)
        filler.close()
    bar.close()
    padded = filler.padded
    truncated = count_truncated(config.out)
    fidelity = receipt(
        adapter, rows, config.out, settings=settings, sample=sample, sampled_from=drawn, captured=capture.rows
    )
    manifest = writer.finalize(fidelity=fidelity)
    seconds = time.perf_counter() - start
    summary = {
        "items": n_todo,
        "embedded": len(rows_todo),
        "reused": filler.copied,
        "seconds": round(seconds, 4),
        "items_per_s": round(n_todo / max(seconds, 1e-9), 2),
        "num_workers": settings.workers_for(len(rows_todo)),  # what this run's pass used (the plan's, or none)
        "torch_threads": settings.torch_threads,
        "shards": len(pending),
        "padded_windows": padded,
        "truncated_items": truncated,  # in the whole cache: items cut to the model's token limit (None: not counted)
        "fidelity": fidelity,
        "complete": manifest.complete,
    }
    reused_note = f" ({filler.copied:,} copied from earlier caches, {len(rows_todo):,} embedded)" if copier else ""
    print(
        f"embedded {n_todo:,} items{reused_note} in {seconds:.1f} s ({summary['items_per_s']:,} items/s) into "
        f"{config.out}: {len(pending)} shards, "
        + (f"{padded} windows padded with N, " if getattr(adapter.options, "window_bp", None) else "")
        + (f"{truncated:,} items cut to {adapter.options.max_length:,} tokens, " if truncated else "")
        + "cache complete"
    )
    print_fidelity(fidelity)
    return summary


def print_fidelity(fidelity: dict[str, Any], layer: str | int | None = None) -> None:
    """The fidelity receipt in a line (nothing where none was taken); `layer`: whose, for `--layers`."""
    if fidelity:
        print(
            f"fidelity{'' if layer is None else f' of layer {layer}'}: {fidelity['items']} items against a float32 "
            f"forward: cosine >= {cosine_floor(fidelity['cosine_min'])}, relative L2 <= "
            f"{ceiling_2e(fidelity['relative_l2_max'])}"
        )
