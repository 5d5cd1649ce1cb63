"""What `explain` reads besides the model: the checkpoint's run config (or `--config` for imported weights),
the caches it names, checked against the checkpoint's fingerprints, and the window geometry of the DNA cache.

A checkpoint trained here carries its RunConfig and the fingerprints of every cache it read; explaining it
against a cache whose numbers changed would attribute to inputs the model never saw, so that is refused.
Weights imported with `train import-checkpoint` carry neither: `--config` names the caches, and nothing can be
compared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dogmacache.cache import EmbeddingCache, open_cache
from dogmacache.contracts.windows import WindowGeometry
from dogmacache.errors import DogmaError, InputError
from dogmacache.train.config import RunConfig
from dogmacache.train.registry import config_from_dict, load_config


def run_config(checkpoint: dict[str, Any], checkpoint_path: str | Path, config_path: str | None) -> RunConfig:
    """The run config: `--config` when given (imported weights, or caches that moved), else the checkpoint's."""
    if config_path:
        config = load_config(config_path)
        if config.task != checkpoint["task"]:
            raise InputError(
                f"{config_path} is a {config.task!r} config but {checkpoint_path} holds a "
                f"{checkpoint['task']!r} model; pass a config of task {checkpoint['task']!r}"
            )
        return config
    if checkpoint.get("config") is None:
        raise InputError(
            f"{checkpoint_path} holds imported weights without a run config; pass --config FILE "
            "(a train config whose [data] names the caches to explain them on)"
        )
    return config_from_dict(checkpoint["config"], where=f"{checkpoint_path} (its run config)")


def open_checked(url: str, name: str, checkpoint: dict[str, Any], checkpoint_path: str | Path) -> EmbeddingCache:
    """Open the `name` cache at `url` and refuse it when its fingerprint differs from the checkpoint's."""
    try:
        cache = open_cache(url)
    except (DogmaError, FileNotFoundError, OSError) as err:
        raise InputError(
            f"{checkpoint_path} reads its {name} cache from {url}, which cannot be opened "
            f"({str(err).splitlines()[0]}); re-create it or pass --config naming where it is now"
        ) from err
    before = (checkpoint.get("fingerprints") or {}).get(name)
    if not before:
        return cache  # imported weights: no fingerprint to compare
    now = cache.fingerprint()
    for key in sorted(set(before) | set(now)):
        if key != "url" and before.get(key) != now.get(key):
            raise InputError(
                f"{checkpoint_path} was trained on a {name} cache with {key} {before.get(key)!r} but "
                f"{url} has {now.get(key)!r}; explain it on the caches it was trained on (re-embed "
                "them, or pass --config naming them)"
            )
    return cache


def window_geometry(dna: EmbeddingCache, bin_bp: int | None) -> WindowGeometry:
    """Bins per window from the cache's item shape; bp per bin from its manifest (or `--bin-bp`)."""
    recorded = dna.manifest.config.get("bin_bp")
    if bin_bp is None and recorded is None:
        raise InputError(
            f"{dna.url} does not record bp per bin (bin_bp) in its manifest; pass --bin-bp (Enformer: 128)"
        )
    size = int(bin_bp if bin_bp is not None else recorded)
    geometry = WindowGeometry(
        n_bins=int(dna.item_shape[0]), bin_bp=size, orientation=dna.manifest.config.get("bin_orientation", "reference")
    )
    span = dna.manifest.config.get("output_span_bp")
    if span is not None and int(span) != geometry.span_bp:
        raise InputError(
            f"{dna.url} records an output span of {span} bp but its {geometry.n_bins} bins of "
            f"{size} bp make {geometry.span_bp}; pass the --bin-bp the cache was embedded with"
        )
    return geometry


def chrom_sizes(dna: EmbeddingCache, path: str | None) -> dict[str, int] | None:
    """Chromosome lengths from `--chrom-sizes` (UCSC chrom.sizes or a .fai), else the FASTA index of the genome the
    DNA cache was embedded from, else None (then bins clip at position 0 only)."""
    if path is None:
        genome = dna.manifest.config.get("genome")
        index = Path(f"{genome}.fai") if genome else None
        if index is None or not index.is_file():
            return None
        path = str(index)
    if not Path(path).is_file():
        raise InputError(f"--chrom-sizes {path!r} does not exist; pass a UCSC chrom.sizes file or a FASTA .fai")
    sizes = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 2 or not fields[1].strip().isdigit():
            raise InputError(f"{path} line {n} is {line[:60]!r}, not `chrom<TAB>length`; pass a chrom.sizes or .fai")
        sizes[fields[0]] = int(fields[1])
    return sizes
