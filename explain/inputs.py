"""What `explain` reads besides the model: the checkpoint's run config (or `--config` for imported weights), the
fingerprints of the caches the task loads from it, the window geometry of the DNA cache, and the two files a
cache's manifest cannot stand in for: the windows table (`--dna-table`) and the chromosome lengths
(`--chrom-sizes`).

A checkpoint trained here carries its RunConfig and the fingerprints of every cache it read; explaining it
against a cache whose numbers changed would attribute to inputs the model never saw, so that is refused.
Weights imported with `train import-checkpoint` carry neither: `--config` names the caches, and nothing can be
compared.

A cache's manifest records the files it was embedded from by name and digest only, never by path (it is
published with its cache: `embed.runner.EmbedSettings.manifest_config`): the genome FASTA and the windows table
are not reachable from it, so their paths come from the run config (`[data] dna_table`) or the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dogmacache.cache import EmbeddingCache, first_fingerprint_difference
from dogmacache.contracts.tables import TSV_SUFFIXES
from dogmacache.contracts.windows import WindowGeometry
from dogmacache.embed.genome import chrom_alias
from dogmacache.errors import InputError
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


def check_fingerprints(checkpoint: dict[str, Any], checkpoint_path: str | Path, current: dict[str, Any]) -> None:
    """Refuse caches whose fingerprint differs from the one the checkpoint recorded for the same role."""
    recorded = checkpoint.get("fingerprints") or {}
    if not recorded:
        return  # imported weights: no fingerprint to compare
    difference = first_fingerprint_difference(recorded, {name: current.get(name) or {} for name in recorded})
    if difference is not None:
        raise InputError(
            f"{checkpoint_path} was trained on a {difference.name} cache with {difference.key} "
            f"{difference.recorded!r} but {difference.url} has {difference.current!r}; explain it on the caches it "
            "was trained on (re-embed them, or pass --config naming them)"
        )


def dna_table_path(given: str | None, config: RunConfig, dna: str) -> str:
    """The windows table: `--dna-table`, else the run config's [data] dna_table; refused when neither names one."""
    path = given or getattr(config.data, "dna_table", "")
    if not path:
        raise InputError(
            f"explain needs the DNA windows table (id, chrom, center, strand) to place each bin of {dna} on the "
            "genome, and the run config's [data] dna_table is empty (a cache records only its input's name and "
            "digest); pass --dna-table with the recipe's dna_windows.parquet"
        )
    if not str(path).endswith((".parquet", *TSV_SUFFIXES)):  # what embed reads (`embed.inputs.read_input_table`)
        raise InputError(
            f"--dna-table {path!r} is not a .parquet or .tsv table; pass the windows table the DNA cache was "
            "embedded from (the recipe's dna_windows.parquet)"
        )
    return str(path)


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


def chrom_sizes(path: str | None) -> dict[str, int]:
    """Chromosome lengths from `--chrom-sizes` (UCSC chrom.sizes or a FASTA .fai), which explain needs to clip
    bins at chromosome ends and to write bigWig headers."""
    if not path:
        raise InputError(
            "explain needs the chromosome lengths to clip bins at chromosome ends and write bigWig headers, and a "
            "DNA cache records only the name and digest of its genome; pass --chrom-sizes with the genome's .fai "
            "(samtools faidx) or a UCSC chrom.sizes"
        )
    if not Path(path).is_file():
        raise InputError(f"--chrom-sizes {path!r} does not exist; pass a UCSC chrom.sizes file or a FASTA .fai")
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError:
        raise InputError(
            f"--chrom-sizes {path} is not a text file (a binary file such as parquet?); pass a UCSC chrom.sizes file "
            "or a FASTA .fai"
        ) from None
    sizes = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue  # a blank line (one at the end is common) holds no chromosome
        fields = line.split("\t")
        if len(fields) < 2 or not fields[1].strip().isdigit():
            raise InputError(f"{path} line {n} is {line[:60]!r}, not `chrom<TAB>length`; pass a chrom.sizes or .fai")
        sizes[fields[0]] = int(fields[1])
    return sizes


def sized_chromosomes(sizes: dict[str, int], chroms: set[str], path: str, table: str) -> dict[str, str]:
    """Each chromosome of the windows -> its name in the chrom sizes (itself, or its other spelling, `1` for
    `chr1`, as embed resolved it against the genome: `genome.chrom_alias`); the tracks are written under those
    names. InputError for one with no length, whose bins could not be clipped."""
    named = {c: c if c in sizes else chrom_alias(c) for c in chroms}
    missing = sorted(c for c, name in named.items() if name not in sizes)
    if missing:
        raise InputError(
            f"--chrom-sizes {path} has no length for chromosome {missing[0]!r} of {table} ({len(missing)} "
            f"missing; it names {sorted(sizes)[:4]}); pass the sizes of the genome the DNA cache was embedded from"
        )
    return named
