"""`dogmacache embed --layers L1,L2,...`: several layers of one model from one forward pass per batch, each into
its own ordinary cache.

Each layer's cache is the one `--layer L` alone writes: the adapter is loaded once and `for_layer` gives each
layer's view of it (its options, its manifest, its settings check on resume), and the batches are those of a
single-layer run, cut at every layer's shard boundaries. Where the layers share one shard layout (the same item
size, or `--shard-items`) a layer's cache is bit for bit the single-layer run's; otherwise a batch also breaks at
the other layers' boundaries, which moves values by float rounding at most, as another batch size does.

Resume: a shard is computed while any layer still lacks it, for the layers that lack it, and written to those
caches only; a crash leaves every cache resumable, the same command finishes them all, and on a set of complete
caches it does nothing and says so. Where the caches go: `layer_out`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from dogmacache.cache import storage
from dogmacache.cache.writer import CacheWriter
from dogmacache.devices import CoreWatch, pick_device, torch_threads
from dogmacache.embed.adapters import get_adapter
from dogmacache.embed.adapters.base import LayeredAdapter
from dogmacache.embed.fidelity import Capture, receipt, sample_rows
from dogmacache.embed.runner import check_output, count_truncated, load, open_writer, print_fidelity, resolve
from dogmacache.embed.settings import EmbedConfig, EmbedSettings, resume_threads, resuming_line
from dogmacache.embed.shard_filler import ShardFiller, settled
from dogmacache.embed.stream import embed_segments, stored_info
from dogmacache.errors import InputError
from tqdm.auto import tqdm

PLACEHOLDER = "{layer}"


def parse_layers(text: str) -> tuple[str, ...]:
    """`--layers` as layer names, in the order given; InputError for an empty or repeated name."""
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise InputError(f"--layers {text!r} has an empty name; give names separated by commas, e.g. trunk,conv_tower")
    twice = [name for i, name in enumerate(names) if name in names[:i]]
    if twice:
        raise InputError(f"--layers names {twice[0]!r} twice; give each layer once")
    return names


def layer_out(out: str, layer: str) -> str:
    """Where `layer`'s cache goes: `--out` with `{layer}` replaced by the layer's name when it holds the
    placeholder (caches/dna-{layer}.zarr), else a folder per layer inside it (`<out>/layer_<name>`)."""
    return out.replace(PLACEHOLDER, layer) if PLACEHOLDER in out else f"{out.rstrip('/')}/layer_{layer}"


def run_embed_layers(config: EmbedConfig, layers: Sequence[str]) -> dict[str, Any]:
    """Embed `config.input` once into one cache per layer of `layers` (at `layer_out(config.out, layer)`).
    Returns a summary (items, seconds, items/s, and per layer its cache and the shards written)."""
    layers = tuple(layers)
    cls = get_adapter(config.model, config.modality)
    if not issubclass(cls, LayeredAdapter):
        one = (
            "embeds one --layer per run: run it once per layer"
            if "layer" in cls.options_class.flags
            else "has one fixed output, no layers"
        )
        raise InputError(
            f"--layers does not apply to --model {config.model} --modality {config.modality}: it {one}; drop --layers"
        )
    if not layers:
        raise InputError("--layers is empty; name at least one layer")
    outs = {layer: layer_out(config.out, layer) for layer in layers}
    for out in outs.values():
        check_output(out)
    watch = CoreWatch()  # watched while the model loads; every layer's plan takes its one answer
    device = pick_device(config.device)
    table, rows, adapter = load(config, device)
    for layer in layers:
        adapter.check_layer(layer)
    writers: dict[str, CacheWriter] = {}
    threads, threads_note = resume_threads(list(outs.values()), config, device)  # one count for every layer's cache
    if threads is not None:
        config = replace(config, torch_threads=threads)
    try:
        for k, layer in enumerate(layers):
            one = adapter.for_layer(layer)
            settings = resolve(replace(config, out=outs[layer]), one, device, watch, quiet=k > 0, resume=False)
            writers[layer] = open_writer(settings, table, stored_info(one.info(), config.max_positions))
        settings = replace(settings, threads_note=threads_note)
        with torch_threads(settings.torch_threads):
            return _run(config, settings, adapter, rows, writers)
    except OSError as err:
        kept = "; ".join(
            f"{outs[k]}: {len(w.done_shards())} of {w.manifest.n_shards} shards kept" for k, w in writers.items()
        )
        raise storage.disk_error(err, f"write {config.out}", kept or "nothing was written") or err from err
    finally:
        for writer in writers.values():
            writer.close()  # a finished writer has let go already


def _plan(writers: dict[str, CacheWriter]) -> tuple[list[int], set[int], dict[str, set[int]]]:
    """The rows to embed (those of any layer's pending shards, in order), the positions among them where a batch
    must start (every layer's shard starts, and each run of rows after a gap), and each layer's pending shards."""
    pending = {layer: set(writer.pending_shards()) for layer, writer in writers.items()}
    n_items = next(iter(writers.values())).manifest.n_items
    needed = np.zeros(n_items, dtype=bool)
    cuts = np.zeros(n_items, dtype=bool)
    for layer, writer in writers.items():
        for shard in range(writer.manifest.n_shards):
            a, b = writer.manifest.shard_rows(shard)
            cuts[a] = True
            if shard in pending[layer]:
                needed[a:b] = True
    order = np.flatnonzero(needed).tolist()
    gap = np.diff([-2, *order]) != 1  # the first row of each run
    starts = {i for i, row in enumerate(order) if cuts[row] or gap[i]}
    return order, starts, pending


def _run(
    config: EmbedConfig,
    settings: EmbedSettings,
    adapter: LayeredAdapter,
    rows: list[dict[str, Any]],
    writers: dict[str, CacheWriter],
) -> dict[str, Any]:
    outs = {layer: str(writer.path) for layer, writer in writers.items()}
    order, starts, pending = _plan(writers)
    if all(writer.manifest.complete for writer in writers.values()):
        print(f"all {len(writers)} caches are already complete ({', '.join(outs.values())}); nothing to do")
        return {"items": 0, "caches": outs, "shards": dict.fromkeys(writers, 0), "complete": True}
    # with every shard written but a manifest not yet final (stopped in a receipt), the stream has nothing to embed
    # and the receipts and manifests below finish the caches
    fillers = {}
    note = settings.threads_note  # said once, with the first cache resumed
    for layer, writer in writers.items():
        m = writer.manifest
        if pending[layer] and len(pending[layer]) < m.n_shards:
            print(resuming_line(outs[layer], m.n_shards - len(pending[layer]), m.n_shards, note))
            note = ""
        fillers[layer] = ShardFiller(writer, [(s, *m.shard_rows(s)) for s in sorted(pending[layer])])
    bar = tqdm(
        total=len(order),
        unit="item",
        desc=f"embed {config.model}, {len(writers)} layers",
        disable=None if config.progress else True,
    )  # None: off when not a terminal
    start, padded = time.perf_counter(), 0
    captures, drawn = {}, {}  # per layer: the fidelity sample (kept from the stream where it can be), its source
    for layer, writer in writers.items():
        per, resumed = writer.manifest.shard_items, len(pending[layer]) < writer.manifest.n_shards
        mine = [position for position, row in enumerate(order) if row // per in pending[layer]]
        sample, drawn[layer] = sample_rows([order[p] for p in mine], len(rows), config.fidelity_items, resumed)
        captures[layer] = Capture(sample, {order[p]: p for p in mine}, settings)

    def layers_for(segment) -> tuple[str, ...]:
        """The layers whose pending shards hold the segment's rows (its first row lies in one shard of each)."""
        first = order[segment.first]
        return tuple(k for k, w in writers.items() if first // w.manifest.shard_items in pending[k])

    with settled(fillers.values()):
        for segment, outputs in embed_segments(
            adapter,
            [rows[i] for i in order],
            layers_for,
            adapter.embed_layers,
            starts=starts,
            captures=captures,
            **settings.stream_options(len(order)),
        ):
            for layer, (embedded, extras) in outputs.items():
                fillers[layer].add(embedded, extras)
            _, extras = next(iter(outputs.values()), (None, {}))  # the adapter's extras: alike in every layer
            padded += int(np.count_nonzero(extras.get("n_padded", ())))
            bar.update(len(segment.items))
        for filler in fillers.values():
            filler.close()  # inside: a failed close settles every layer's writer before the locks go
    bar.close()
    complete, receipts = True, {}
    for layer, writer in writers.items():
        if writer.manifest.complete:
            continue
        capture = captures[layer]
        fidelity = receipt(
            adapter.for_layer(layer),
            rows,
            outs[layer],
            settings=settings,
            sample=capture.sample,
            sampled_from=drawn[layer],
            captured=capture.rows,
        )
        complete &= writer.finalize(fidelity=fidelity).complete
        receipts[layer] = fidelity
    seconds = time.perf_counter() - start
    written = {layer: len(pending[layer]) for layer in writers}
    truncated = count_truncated(outs[next(iter(writers))])  # one pass: every layer's cache cut the same items
    summary = {
        "items": len(order),
        "seconds": round(seconds, 2),
        "items_per_s": round(len(order) / max(seconds, 1e-9), 2),
        "caches": outs,
        "shards": written,
        "padded_windows": padded,
        "truncated_items": truncated,
        "complete": complete,
    }
    caches = ", ".join(f"{layer} -> {outs[layer]} ({written[layer]} shards)" for layer in writers)
    print(
        f"embedded {len(order):,} items in {seconds:.1f} s ({summary['items_per_s']:,} items/s), one forward pass "
        f"for {len(writers)} layers, into {len(writers)} caches: {caches}; "
        + (f"{padded} windows padded with N, " if getattr(adapter.options, "window_bp", None) else "")
        + (f"{truncated:,} items cut to {adapter.options.max_length:,} tokens, " if truncated else "")
        + "caches complete"
    )
    for layer, fidelity in receipts.items():
        print_fidelity(fidelity, layer)
    return summary
