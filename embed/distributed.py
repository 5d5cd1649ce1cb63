"""Fan shards out over dask.distributed workers: `--workers N` (a local cluster) or `--dask-scheduler ADDRESS`.

The coordinator creates (or resumes) the cache and submits one task per pending shard; each worker loads the
model once (a worker plugin), embeds whole shards and writes them itself (every shard has one owner, so
writers never share a file); the coordinator marks the cache complete when all tasks are done. With
dask-cuda installed, `--workers` starts one worker per GPU (`LocalCUDACluster`). The coordinator resolves the
settings once (`runner.resolve`); workers load the adapter with the resolved options and run with the
coordinator's precision and token budget, so every shard is computed as the manifest says.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from dogmacache.cache.writer import CacheWriter
from dogmacache.devices import pick_device
from dogmacache.embed.runner import (
    EmbedConfig,
    EmbedSettings,
    check_output,
    count_truncated,
    disk_error,
    embed_rows,
    load,
    open_writer,
    resolve,
    stored_info,
)
from dogmacache.embed.settings import resuming_line
from tqdm.auto import tqdm

_STATE: dict = {}  # per worker process: the settings, the loaded adapter, its device and the table's rows


def _plugin_base():
    from distributed.diagnostics.plugin import WorkerPlugin

    return WorkerPlugin


class AdapterPlugin(_plugin_base()):
    """Loads the adapter and the input rows once per worker process."""

    name = "dogmacache-adapter"

    def __init__(self, settings: EmbedSettings, torch_threads: int, lock_token: str):
        self.settings, self.torch_threads, self.lock_token = settings, torch_threads, lock_token

    def setup(self, worker=None) -> None:
        # CPU kernels split reductions by thread count: the recorded count gives the numbers one process gives
        torch.set_num_threads(self.torch_threads)
        device = pick_device(self.settings.config.device)  # this worker's own GPU under LocalCUDACluster
        _, rows, adapter = load(replace(self.settings.config, options=self.settings.options), device)
        _STATE.update(settings=self.settings, rows=rows, adapter=adapter, device=device, lock_token=self.lock_token)

    def teardown(self, worker=None) -> None:
        _STATE.clear()


def embed_shard(shard: int) -> int:
    """Runs on a worker: embed and write one whole shard. Returns the number of items written."""
    settings, adapter, device = _STATE["settings"], _STATE["adapter"], _STATE["device"]
    config = settings.config
    writer = CacheWriter.open(config.out, lock_token=_STATE["lock_token"])  # a share of the coordinator's lock
    start, stop = writer.manifest.shard_rows(shard)
    embeddings, extras = embed_rows(
        adapter,
        _STATE["rows"][start:stop],
        # dask workers are daemon processes: no DataLoader children; the worker's own device
        **settings.stream_options(stop - start, device=device, num_workers=0),
    )
    try:
        writer.write_shard(shard, embeddings, checked=True, **extras)  # embed_rows refused NaN/Inf on the device
    finally:
        writer.close()
    return stop - start


def fidelity_on_worker(n_sample: int) -> dict:
    """Runs on a worker: the cache's fidelity receipt (`embed/fidelity.py`) on that worker's device."""
    from dogmacache.embed.fidelity import receipt, sample_rows

    settings, rows = replace(_STATE["settings"], device=_STATE["device"]), _STATE["rows"]
    sample, drawn = sample_rows((), len(rows), n_sample)
    return receipt(_STATE["adapter"], rows, settings.config.out, settings=settings, sample=sample, sampled_from=drawn)


def _cluster(n_workers: int, scheduler: str | None):
    from dask.distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler), None
    if torch.cuda.is_available():
        try:
            from dask_cuda import LocalCUDACluster

            cluster = LocalCUDACluster(n_workers=n_workers or None, threads_per_worker=1)
            return Client(cluster), cluster
        except ImportError:
            pass
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None)
    return Client(cluster), cluster


def run_embed_dask(config: EmbedConfig, n_workers: int = 2, scheduler: str | None = None) -> dict:
    check_output(config.out)
    table, _, adapter = load(config, torch.device("cpu"))  # checks inputs once, before any worker starts
    # dask workers prepare their own inputs (no DataLoader children): the manifest records 0 input workers; a
    # local cluster's workers share this machine's cores, so each is planned for its share of them
    share = n_workers if scheduler is None else 1
    settings = resolve(replace(config, num_workers=0), adapter, pick_device(config.device), share=share)
    if scheduler is not None and settings.threads_planned and settings.device.type == "cpu":
        print(
            f"--dask-scheduler: each worker runs {settings.torch_threads} torch threads, planned from this machine's "
            "cores, not the workers'; pass --threads N to set it for theirs"
        )
    writer = None
    try:
        writer = open_writer(settings, table, stored_info(adapter.info(), config.max_positions))
        del adapter
        return _fan_out(config, settings, writer, n_workers, scheduler)
    except OSError as err:
        raise disk_error(err, config.out, writer) from err


def _fan_out(
    config: EmbedConfig, settings: EmbedSettings, writer: CacheWriter, n_workers: int, scheduler: str | None
) -> dict:
    from dask.distributed import as_completed

    if writer.manifest.complete:
        print(f"{config.out} is already complete ({writer.manifest.n_items:,} items); nothing to do")
        return {"items": 0, "shards": 0, "complete": True}
    pending = writer.pending_shards()
    m = writer.manifest
    if len(pending) < m.n_shards:
        print(resuming_line(config.out, m.n_shards - len(pending), m.n_shards, settings.threads_note))
    client, cluster = _cluster(n_workers, scheduler)
    start = time.perf_counter()
    try:
        client.register_plugin(AdapterPlugin(settings, settings.torch_threads, writer.lock_token))
        futures = [client.submit(embed_shard, shard, pure=False) for shard in pending]
        n_items = sum(writer.manifest.shard_rows(s)[1] - writer.manifest.shard_rows(s)[0] for s in pending)
        with tqdm(
            total=n_items, unit="item", desc=f"embed {config.model} on dask", disable=None if config.progress else True
        ) as bar:
            for future in as_completed(futures):
                bar.update(future.result())  # re-raises a worker's error here
        fidelity = client.submit(fidelity_on_worker, config.fidelity_items, pure=False).result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    manifest = writer.finalize(fidelity=fidelity)
    seconds = time.perf_counter() - start
    truncated = count_truncated(config.out)
    cut = f", {truncated:,} items cut to the model's token limit" if truncated else ""
    print(f"embedded {n_items:,} items in {seconds:.1f} s over dask ({len(pending)} shards) into {config.out}{cut}")
    return {
        "items": n_items,
        "seconds": seconds,
        "shards": len(pending),
        "truncated_items": truncated,
        "complete": manifest.complete,
    }
