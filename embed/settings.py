"""What an embed run is asked for (`EmbedConfig`) and what it uses once decided (`EmbedSettings`, `resolve`):
"auto" precision for the device, the adapter's token budget for `max_tokens` 0, input workers and torch threads
for the usable cores (`devices.cpu_plan`), and the adapter's options as the loaded model fixes them. The result
goes to the manifest, the stream and the dask workers; the settings that change the numbers
(`number_fingerprint`) decide whether an existing cache may be extended or reused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from dogmacache.cache import open_cache
from dogmacache.cache.manifest import config_differences
from dogmacache.cache.storage import local_path
from dogmacache.contracts.provenance import file_sha256
from dogmacache.devices import CoreWatch, busy_note, cores_for, cpu_plan, env_threads
from dogmacache.embed.adapters import AdapterOptions, EmbeddingAdapter, ModelInfo
from dogmacache.embed.adapters.weights import WEIGHT_FILES
from dogmacache.embed.genome import genome_digest
from dogmacache.errors import CacheError, InputError


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
    num_workers: int | None = None  # CPU processes preparing inputs beside the device; None = devices.cpu_plan's
    torch_threads: int | None = None  # torch intra-op threads; None = OMP_NUM_THREADS if set, else devices.cpu_plan's
    shard_items: int | None = None  # items per shard (default: ~1 GiB shards)
    overwrite: bool = False
    progress: bool = True
    options: AdapterOptions | None = None  # the adapter's options dataclass; None = its defaults
    max_positions: int | None = None  # per-position outputs average-pooled to at most this many positions per item
    random_init: int | None = None  # seed: the model's architecture with weights drawn at random, none loaded
    reuse: tuple[str, ...] = ()  # caches (or folders of caches, local or URLs) whose rows are copied by item digest
    fidelity_items: int = 16  # items embedded again in float32 for the manifest's fidelity receipt (0: none)
    compile: str = "off"  # torch.compile of the forward: off | default | max-autotune | reduce-overhead

    def __post_init__(self) -> None:
        """The sizes checked once, as the command line and code (`run_embed(EmbedConfig(...))`) give them, before
        anything is loaded or written; each said as its flag."""
        if self.max_positions is not None and self.max_positions < 1:
            raise InputError(
                f"--max-positions {self.max_positions} must be at least 1 (or left out to keep every position)"
            )
        if self.fidelity_items < 0:
            raise InputError(f"--fidelity-items {self.fidelity_items} must be 0 (no receipt) or more")
        if self.max_tokens < 0:
            raise InputError(
                f"--max-tokens {self.max_tokens} must be a token budget of 1 or more, or 0 for the default"
            )
        if self.max_batch < 1:
            raise InputError(f"--max-batch {self.max_batch} must be at least 1 item per batch")
        if self.shard_items is not None and self.shard_items < 1:
            raise InputError(
                f"--shard-items {self.shard_items} must be at least 1 item per shard, or left out for ~1 GiB"
            )


COMPILE_MODES = ("off", "default", "max-autotune", "reduce-overhead")


IN_PROCESS_ROWS = 256  # fewer rows than this, under the default plan: prepared in this process


@dataclass(frozen=True)
class EmbedSettings:
    """What a run uses, every "auto", 0 and None of `EmbedConfig` and the adapter options decided
    (`resolve`); written into the cache manifest."""

    config: EmbedConfig
    device: torch.device
    precision: str  # fp32 | bf16 | fp16: the autocast dtype of the forward pass
    max_tokens: int  # token budget per batch
    options: AdapterOptions  # as the loaded adapter resolved them (window from the model's bins, ...)
    num_workers: int  # input-preparation processes
    torch_threads: int  # torch intra-op threads of the forward pass (recorded: they may move values by float rounding)
    threads_note: str = ""  # on a resume: where the thread count came from (`resume_threads`), said with it
    threads_planned: bool = False  # the count is the plan's, from this machine's cores (no user, env, resume, reuse)

    def workers_for(self, n_rows: int) -> int:
        """Input workers for a pass over `n_rows` rows (embedding them, or digesting them for `--reuse`): the
        plan's, except that a default plan prepares a few rows (what `--reuse` leaves, a resumed last shard) in
        this process, where forking a worker and passing each item back costs more than preparing them (102 tiny
        ESM-2 proteins, when they still had a worker: ~0.03 s of a 0.2 s run). An explicit `--num-workers` is
        always honoured."""
        if self.config.num_workers is None and n_rows < IN_PROCESS_ROWS:
            return 0
        return self.num_workers

    def stream_options(self, n_rows: int, **overrides: Any) -> dict[str, Any]:
        """The batch loop's options (`stream.embed_segments`, `embed_stream`, `embed_rows`) for a pass over `n_rows`
        rows as this run decided them; `overrides` replace any (the receipt's float32 reference, a dask worker's
        in-process inputs)."""
        config = self.config
        return {
            "device": self.device,
            "precision": self.precision,
            "max_tokens": self.max_tokens,
            "max_batch": config.max_batch,
            "num_workers": self.workers_for(n_rows),
            "dtype": config.dtype,
            "max_positions": config.max_positions,
            **overrides,
        }

    def manifest_config(self, info: ModelInfo) -> dict[str, Any]:
        """The manifest's `config`: the run's settings, the adapter's options, the model's facts, and the files
        read, by name and digest: a manifest is published with its cache, so it holds no local path."""
        config = self.config
        run = {
            k: v
            for k, v in asdict(config).items()
            if k not in ("progress", "overwrite", "options", "reuse", "num_workers", "torch_threads", *PATHS)
        }
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
            "num_workers": self.num_workers,
            "torch_threads": self.torch_threads,
        }
        clash = sorted(set(info.config) & (set(run) | set(files) | set(resolved)))
        assert not clash, f"adapter facts {clash} would overwrite the run's settings"  # one value per key
        return {**run, **info.config, **files, **resolved}


PATHS = ("input", "out", "genome", "model_path")  # EmbedConfig fields that hold local paths
# Resolved settings whose change changes the numbers: a cache is extended or reused only when they agree.
# Batch sizes (max_tokens, max_batch), torch_threads and compile are left out: with batches inside shards they move
# values by float rounding at most, and a resume on another machine may need another budget, core count or compiler.
# `batching` is an adapter's mark where its batches were cut another way before (an earlier cache's rows would
# differ by float rounding): a cache without it, or with another, is neither resumed nor reused by such a run.
NUMBER_SETTINGS = ("random_init", "precision", "device", "dtype", "compression", "max_positions", "batching")


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


def check_same_settings(out: str, wanted: dict[str, Any], flags: dict[str, dict], modality: str, model: str) -> None:
    """A cache already at `out` (finished or not) is extended or reused only when its recorded settings agree
    with this run's; InputError naming the first that differs, its value in the cache and now, and the fix. A
    cache of another modality or model is named as such first (its options differ by the dozen)."""
    found = existing_manifest(out)
    if found is None:
        return  # no cache there (or none readable: creating the cache names the problem)
    if (found.modality, found.model) != (modality, model):  # another cache altogether
        raise InputError(
            f"{out} holds a {found.modality} cache of {found.model}, not of {model} ({modality}); choose another "
            "--out, or pass --overwrite to replace it"
        )
    old, new = number_fingerprint(found.config, flags), number_fingerprint(wanted, flags)
    differ = config_differences(old, new)
    if differ:
        first = differ[0]
        more = f" (and {len(differ) - 1} more: {', '.join(differ[1:4])})" if len(differ) > 1 else ""
        then, now = found.config.get("genome") or {}, wanted.get("genome") or {}
        if then and not now and modality != "dna":  # begun with a --genome this modality never read
            raise InputError(
                f"{out} was begun with --genome {then.get('name')!r} beside --modality {modality}, which reads no "
                "genome (a --genome now refused there): embed into another --out with --reuse "
                f"{out} (its rows are copied), or pass --overwrite"
            )
        if then and now and then.get("sha256") == now.get("sha256") and then.get("name") != now.get("name"):
            raise InputError(  # the same bases under another name: the name is part of the cache's identity
                f"{out} was embedded from the genome file {then['name']!r}, and this run's is {now['name']!r} with the "
                f"same sha256: the cache records the file by name too; pass it under that name (a symlink "
                f"{then['name']} -> {now['name']}) to resume"
            )
        weight_keys = {f"model file {name}" for name in WEIGHT_FILES}
        if set(differ) <= weight_keys and len(differ) == 2 and new.get(f"model file {WEIGHT_FILES[1]}") is None:
            raise InputError(  # the folder holds both formats: an earlier version named the one it did not load
                f"{out} was begun by a version that recorded {WEIGHT_FILES[1]} for a model folder holding both weight "
                f"formats; its rows came from {WEIGHT_FILES[0]}, which is what is recorded now: pass --overwrite (or "
                "another --out) to embed it anew under this record"
            )
        if first == "batching":
            raise InputError(
                f"{out} was cut into batches another way ({old.get(first)!r} in the cache, {new.get(first)!r} now: "
                f"an earlier version's){more}; pass --overwrite (or another --out) to embed it anew"
            )
        raise InputError(
            f"{out} was embedded with other settings: {first}: {old.get(first)!r} in the cache, "
            f"{new.get(first)!r} now{more}; re-run with the cache's settings to resume or reuse it, or pass "
            "--overwrite (or another --out) to embed anew"
        )


def existing_manifest(out: str):
    """The manifest of the cache (finished or not) already at the local path `out`, read without its writer lock;
    None where there is none, or none that reads as a cache."""
    cache = _existing_cache(out)
    return None if cache is None else cache.manifest


def _existing_cache(out: str):
    """The cache (finished or not) already at the local path `out`, opened without its writer lock; None where
    there is none, or none that reads as a cache."""
    local = local_path(out)
    if local is None or not Path(local).exists():
        return None
    try:
        return open_cache(out, allow_partial=True)
    except (CacheError, OSError):
        return None


def begun_threads(out: str) -> int | None:
    """The torch threads an unfinished cache at `out` was begun with (its manifest's `torch_threads`); None where
    there is no cache, a finished one, one without a finished shard (no rows to match: the run chooses afresh), or
    no count recorded. CPU kernels may split reductions by thread count, so a resume on the CPU takes this count
    unless the user chooses one (`resume_threads`)."""
    cache = _existing_cache(out)
    count = None if cache is None or cache.manifest.complete else cache.manifest.config.get("torch_threads")
    if not (isinstance(count, int) and count > 0):
        return None
    try:
        begun = bool(cache.done_shards().any())
    except (CacheError, OSError):
        begun = True  # unreadable here: the writer names the problem; keep the recorded count meanwhile
    return count if begun else None


def resuming_line(out: str, done: int, n_shards: int, note: str = "") -> str:
    """What a run says when it finishes a cache begun earlier, with where its thread count came from (`note`)."""
    return f"resuming {out}: {done} of {n_shards} shards already written" + (f"; {note}" if note else "")


def resume_threads(
    outs: list[str], config: EmbedConfig, device: torch.device, share: int = 1
) -> tuple[int | None, str]:
    """The torch threads for a run on the CPU that finishes the unfinished caches at `outs` (one run, one count):
    the count they were begun with, so that their shards match an uninterrupted run's (`matching_threads`)."""
    if config.overwrite:
        return None, ""
    return matching_threads(
        {out: begun_threads(out) for out in outs},
        config,
        device,
        share,
        matched="as the cache was begun with, so that its shards match an uninterrupted run's",
        unmatched=(
            "the caches were begun with",
            "the new shards may differ from an uninterrupted run's by float rounding",
        ),
    )


def matching_threads(
    recorded: dict[str, int | None],
    config: EmbedConfig,
    device: torch.device,
    share: int = 1,
    *,
    matched: str,
    unmatched: tuple[str, str],
) -> tuple[int | None, str]:
    """The torch threads for a run on the CPU whose numbers must match rows computed earlier at the `recorded`
    counts (cache -> its manifest's torch_threads; None: none recorded), where the user chose none (no --threads,
    no OMP_NUM_THREADS): CPU kernels may split reductions by thread count. That count, with the line
    "torch threads: N, `matched`"; None (the plan decides) elsewhere, with a line "`unmatched[0]` <the counts>;
    `unmatched[1]`" where the counts differ or exceed the cores this process may use."""
    if config.torch_threads is not None or env_threads() is not None or device.type != "cpu":
        return None, ""
    counted = {name: n for name, n in recorded.items() if isinstance(n, int) and n > 0}
    counts = sorted(set(counted.values()))
    if not counts:
        return None, ""
    cores = cores_for(share)
    if len(counts) == 1 and counts[0] <= cores:
        return counts[0], f"torch threads: {counts[0]}, {matched}"
    why = f"{counts[0]} torch threads, more than the {cores} cores this process may use"
    if len(counts) > 1:
        why = "different torch thread counts (" + ", ".join(f"{name}: {n}" for name, n in counted.items()) + ")"
    return None, f"{unmatched[0]} {why}; {unmatched[1]}"


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtype; None = no autocast


def resolve_precision(device: torch.device, precision: str) -> str:
    """ "auto" is bf16 autocast on CUDA and fp32 elsewhere; any other value must be one of PRECISIONS."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision!r} is not one of auto, {', '.join(PRECISIONS)}")
    return precision


def resolve(
    config: EmbedConfig,
    adapter: EmbeddingAdapter,
    device: torch.device,
    watch: CoreWatch | None = None,
    share: int = 1,
    quiet: bool = False,
    resume: bool = True,
    reuse_threads: dict[str, int | None] | None = None,
) -> EmbedSettings:
    """The one place a run's settings are decided, once the adapter is loaded and the device picked; the threads
    never exceed torch's current count (a caller's `torch.set_num_threads` holds), except that a resume on the CPU
    takes the count the cache was begun with (`resume_threads`; not with `resume` False) where the user chose none.
    `watch`: the cores, watched
    since before the model load (`devices.CoreWatch`). `share`: how many processes of this run split the
    machine's cores (a local dask cluster's workers; `devices.cpu_plan`). Cores given
    up to other processes are said in one line unless `quiet` (a run deciding several caches' settings says it
    once). `reuse_threads`: the counts the `--reuse` caches were embedded with on the CPU (cache -> count): a run
    that resumes no cache, and where the user chose none, takes theirs (`matching_threads`), so that its copied and
    embedded rows come from the same kernels."""
    threads, threads_note = config.torch_threads, ""
    if threads is None and resume:
        threads, threads_note = resume_threads([config.out], config, device, share)
    if threads is None and not threads_note and reuse_threads:
        threads, reuse_note = matching_threads(
            reuse_threads,
            config,
            device,
            share,
            matched="as the --reuse caches were embedded with, so that copied and embedded rows come from the same "
            "kernels",
            unmatched=("the --reuse caches were embedded with", "those at another count than this run's are not used"),
        )
        if reuse_note and not quiet:
            print(reuse_note)
    # an adapter whose inputs cost less to prepare than to pass between processes prepares them here by default
    # (tiny ESM-2, 4,096 proteins on 2 cores: 2.4-2.6 s in this process, 3.1-3.5 s with a worker)
    cpu = cpu_plan(
        device.type,
        config.num_workers,
        threads,
        ceiling=torch.get_num_threads(),
        cheap_inputs=adapter.cheap_inputs,
        watch=watch,
        share=share,
    )
    note = busy_note(cpu, "--threads N")
    if note and not quiet:
        print(note)
    return EmbedSettings(
        config=config,
        device=device,
        precision=resolve_precision(device, config.precision),
        max_tokens=config.max_tokens or adapter.default_max_tokens(device),
        options=adapter.options,
        num_workers=cpu.workers,
        torch_threads=cpu.threads,
        threads_note=threads_note,
        threads_planned=threads is None and env_threads() is None,
    )
