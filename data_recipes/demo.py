"""Offline demo: the bundled synthetic genome and sources, run through the real Gasperini and GTEx recipes.

`demo_data/` holds small files under the real names and in the real formats (written by
`make_demo_data.py`, which also states the hidden rules behind the labels). Outputs: `cdt/` (the CRISPRi
task: enhancer windows, genes, proteins, labels), `isoform/` (the GTEx task: TSS windows, cDNA, peptides,
transcript x tissue labels, tissue profiles; fold 0's tissues held out) and `genome.fa` (what embed cuts DNA
windows from). `write_demo_data(dir, null=True)` writes the null twin (labels drawn independently of the inputs) for
`build_demo(out, data=dir)`.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

from dogmacache.cache.storage import replace_whole
from dogmacache.data_recipes import gasperini, gtex, sources
from dogmacache.data_recipes.demo_truth import HOLDOUT_FOLDS
from dogmacache.data_recipes.make_demo_data import HERE as DEMO_DATA
from dogmacache.data_recipes.make_demo_data import write_demo_data
from dogmacache.errors import InputError

SOURCES: dict[str, sources.Source] = {}  # nothing to download
# HOLDOUT_FOLDS: three folds of three tissues, matched to the seen tissues on the strength of their tissue-specific
# weights (demo_truth.tissue_weights; the numbers in truth/truth.json). The recipe holds out fold 0.
HOLDOUT_TISSUES = HOLDOUT_FOLDS[0]

__all__ = ["DEMO_DATA", "HOLDOUT_FOLDS", "HOLDOUT_TISSUES", "build_demo", "write_demo_data"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window-bins", type=int, default=8, help="output bins per DNA window (tiny Enformer: 8)")
    parser.add_argument("--bin-bp", type=int, default=128, help="bp per output bin (Enformer: 128)")
    parser.add_argument(
        "--source-dir",
        default=None,
        help="a folder of demo sources written by make_demo_data.write_demo_data (for example the null twin); "
        "default: the bundled files",
    )


def build_demo(out: Path, seed: int = 0, window_bins: int = 8, bin_bp: int = 128, data: Path = DEMO_DATA) -> dict:
    data = Path(data)
    needed = [s.filename for s in (*gasperini.SOURCES.values(), *gtex.SOURCES.values())] + ["genome.fa.gz"]
    missing = [name for name in needed if not (data / name).is_file()]
    if missing:
        raise InputError(
            f"{data} lacks {len(missing)} of the demo's {len(needed)} source files (first: {missing[0]}); pass a "
            "folder written by make_demo_data.write_demo_data, or leave --source-dir out for the bundled files"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = gasperini.GasperiniConfig(seed=seed)
    cdt = gasperini.build_gasperini(_bundled(gasperini.SOURCES, data), out / "cdt", config)
    # every biotype: the demo's non-coding transcripts are kept without a protein, as IsoFormer handles them
    config = gtex.GtexConfig(
        seed=seed, window_bins=window_bins, bin_bp=bin_bp, transcripts="all", holdout_tissues=HOLDOUT_TISSUES
    )
    isoform = gtex.build_gtex(_bundled(gtex.SOURCES, data), out / "isoform", config)
    with replace_whole(out / "genome.fa") as tmp, gzip.open(data / "genome.fa.gz", "rb") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)  # plain FASTA, whole or not at all: pyfaidx indexes it for random access
    return {"cdt": cdt, "isoform": isoform, "genome": str(out / "genome.fa")}


def _bundled(listed: dict[str, sources.Source], data: Path) -> dict[str, Path]:
    """Paths of the bundled stand-ins; never `sources.fetch`, which would download the real file for a missing one."""
    return {key: data / source.filename for key, source in listed.items()}


def run(args: argparse.Namespace) -> dict:
    data = Path(args.source_dir) if args.source_dir else DEMO_DATA
    return build_demo(Path(args.out), seed=args.seed, window_bins=args.window_bins, bin_bp=args.bin_bp, data=data)
