"""GTEx v8 isoform expression across tissues (IsoFormer / CDBridge GTEx task).

Owns the GTEx recipe. GTEx v8 transcript TPM (GCT 1.2, a row per GENCODE v26 transcript x ~17k samples, streamed in
row chunks) and the sample attributes give the mean TPM of each transcript in each tissue; the Ensembl GTF (release
88 = GENCODE v26, GTEx's annotation) gives the protein-coding transcripts, their TSS and coding regions; the Ensembl
cDNA and peptide FASTAs give their RNA and protein. By default the protein-coding transcripts are kept, each with
DNA, RNA and protein; `transcripts="all"` keeps every biotype, and a transcript without a peptide record
(non-coding) has no protein. Transcripts are split 80/10/10 (seeded) by gene group: genes that share a DNA window
(or its centre on the other strand: windows are cut from the reference strand, so both strands of a bidirectional
promoter read the same bases) or a protein item, directly or through other genes, form one group
(`tables.split_linked`), so no gene, window or protein sits in two splits; recipe.json counts the groups
(split_groups, split_groups_merged).

Items are embedded once: transcripts that share a TSS window or a peptide share one row of the item table and
name it in their labels row (T transcripts, W distinct windows, P distinct peptides, K tissues, B = window_bins,
G = train-split genes):
  dna_windows        (W)  id = "chrom:center:strand", chrom, center (the TSS, 1-based), strand, gene_id, gene_name,
                          split (those of the window's first transcript by id; every transcript of a window
                          is in its split), n_transcripts
  coding_masks       (T)  id (transcript), dna_id (its window), mask (B uint8 flags; geometry in gtex_masks.py)
  rna_sequences      (T)  id (transcript), sequence (cDNA)
  protein_sequences  (P)  id (the smallest Ensembl protein id carrying the peptide), sequence (peptide without a
                          trailing '*'), n_transcripts
  labels             (T)  id, gene_id, split, dna_id, rna_id, protein_id ("" = no protein), K tissue columns:
                          (log1p(mean TPM) - train_mean) / train_std
  labels_log1p       (T)  the same layout, log1p(mean TPM) unstandardised
  tissues            (K)  tissue, n_samples, train_mean, train_std (what scaled its labels), held_out, scaled_with
                          ("own_train": its own train-split values; "seen_pooled_train": a held-out tissue,
                          scaled with every seen tissue's train-split values pooled, never its own)
  tissue_profiles    (K)  id (the tissue), G columns named by gene symbol: log1p(sum of the gene's mean TPM)

`id` is GTEx's versioned transcript id; GTEx rows meet the GTF by unversioned id, and version differences are
counted, not dropped. `gene_id` is GTEx's versioned gene id. T-row tables are in the same order, sorted by id;
item tables are sorted by id. recipe.json's `expected_cache_bytes` states the caches' sizes (gtex_sizes.py).

Here: the whole recipe (`build_gtex`: labels, splits, standardisation, outputs) and its command line. The
configuration is `gtex_config.py`'s, the sources and their parsing `gtex_sources.py`'s, the items
`gtex_items.py`'s.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from dogmacache.contracts.tables import standardise_tissues
from dogmacache.contracts.windows import ORIENTATIONS
from dogmacache.data_recipes import sources, tables
from dogmacache.data_recipes.gtex_config import (
    CHROM_STYLES,
    ISOFORMER_TISSUES,
    TISSUE_COLUMNS,
    TRANSCRIPT_SETS,
    GtexConfig,
)
from dogmacache.data_recipes.gtex_items import (
    attach_sequences,
    coding_mask_rows,
    distinct_items,
    join_ids,
    match_annotation,
    styled_chroms,
    tissue_profiles,
)
from dogmacache.data_recipes.gtex_sizes import CacheSizeConfig, describe, expected_cache_bytes
from dogmacache.data_recipes.gtex_sources import SOURCES, gct_samples, mean_tpm, read_annotation, sample_tissues
from dogmacache.errors import InputError

__all__ = ["ISOFORMER_TISSUES", "SOURCES", "GtexConfig", "add_arguments", "build_gtex", "config_from_args", "run"]


def build_gtex(paths: dict[str, Path], out: Path, config: GtexConfig, sources_info: dict | None = None) -> dict:
    """The whole recipe from explicit files (keys tpm, attributes, gtf, cdna, pep, any names): writes the tables
    and recipe.json into `out` and returns the manifest."""
    missing_keys = sorted(set(SOURCES) - set(paths))
    if missing_keys:
        raise InputError(f"build_gtex needs files for {missing_keys}; pass paths for all of {sorted(SOURCES)}")
    paths = {k: Path(v) for k, v in paths.items()}
    samples, tissues, counts = sample_tissues(paths["attributes"], gct_samples(paths["tpm"]), config)
    expression = mean_tpm(paths["tpm"], samples, tissues)
    counts["gct_transcripts"] = len(expression)
    transcripts, coding_parts = read_annotation(paths["gtf"])
    genome_build = transcripts.attrs.get("genome_build")
    kept, match_counts, mismatches = match_annotation(expression, transcripts, config, gct=paths["tpm"])
    counts.update(match_counts)
    kept, missing = attach_sequences(kept, paths["cdna"], paths["pep"])
    kept, missing["ucsc_chrom_name"] = styled_chroms(kept, config.chrom_style)
    if kept.empty:
        raise InputError(
            f"no transcript of {paths['tpm']} survives the filters (counts {counts}, dropped {missing}); "
            "are the GTF and FASTAs the Ensembl release matching the GTEx annotation (88)?"
        )
    kept = join_ids(kept.sort_values("id", ignore_index=True))
    # genes that share a DNA window (either strand of one centre: the window is cut from the reference strand) or a
    # protein item, directly or through others, fall in one split together
    split_of, group_counts = tables.split_linked(
        kept,
        "gene_id",
        ["dna_id", "dna_site", "protein_id"],
        config.fractions,
        config.seed,
        "genes",
        config.test_chroms,
    )
    counts.update(group_counts)
    kept["split"] = kept["gene_id"].map(split_of)
    kept = kept[kept["split"].notna()].reset_index(drop=True)  # --test-chroms: groups on both sides are left out
    train = (kept["split"] == "train").to_numpy()
    if not train.any():
        raise InputError(f"no transcript fell in the train split (fractions {config.fractions}); keep more genes")
    log1p = np.log1p(kept[list(tissues)].to_numpy(dtype=np.float64))  # (T, K)
    held_out = np.array([t in config.holdout_tissues for t in tissues])
    standardised, train_mean, train_std, pooled = standardise_tissues(log1p, train, held_out)

    keys = kept[["id", "gene_id", "split", "dna_id", "rna_id", "protein_id"]]
    masks = coding_mask_rows(kept, coding_parts, config)
    outputs = {
        "dna_windows": distinct_items(kept, "dna_id", ["chrom", "center", "strand", "gene_id", "gene_name", "split"]),
        "coding_masks": pd.DataFrame({"id": kept["id"], "dna_id": kept["dna_id"], "mask": list(masks)}),
        "rna_sequences": kept[["id", "cdna"]].rename(columns={"cdna": "sequence"}),
        "protein_sequences": distinct_items(kept[kept["protein_id"] != ""], "protein_id", ["peptide"]).rename(
            columns={"peptide": "sequence"}
        ),
        "labels": pd.concat([keys, pd.DataFrame(standardised, columns=list(tissues))], axis=1),
        "labels_log1p": pd.concat([keys, pd.DataFrame(log1p, columns=list(tissues))], axis=1),
        "tissues": pd.DataFrame(
            {
                "tissue": list(tissues),
                "n_samples": samples["tissue"].value_counts().reindex(list(tissues)).to_numpy(dtype=np.int64),
                "train_mean": train_mean,
                "train_std": train_std,
                "held_out": held_out,
                "scaled_with": np.where(held_out, SEEN_POOLED, OWN),
            }
        ),
        "tissue_profiles": tissue_profiles(expression, kept, tissues),
    }
    labels = outputs["labels"]
    for column in ("gene_id", "dna_id", "protein_id"):  # no gene, window or protein item in two splits
        tables.assert_no_leak(labels[labels[column] != ""], column)
    tables.assert_no_leak(kept, "dna_site")  # nor a window centre on its two strands
    for split in tables.SPLITS:
        counts[f"genes_{split}"] = kept.loc[kept["split"] == split, "gene_id"].nunique()
        counts[f"transcripts_{split}"] = int((kept["split"] == split).sum())
    counts["transcripts_kept"] = len(kept)
    counts["transcripts_without_protein"] = int((kept["protein_id"] == "").sum())
    counts["dna_windows_distinct"] = len(outputs["dna_windows"])
    counts["dna_windows_shared_by_genes"] = int((kept.groupby("dna_id")["gene_id"].nunique() > 1).sum())
    counts["proteins_distinct"] = len(outputs["protein_sequences"])
    sizes = expected_cache_bytes(
        len(outputs["dna_windows"]),
        config.window_bins,
        kept["cdna"].str.len(),
        outputs["protein_sequences"]["sequence"].str.len(),
        config.cache_sizes,
    )
    info = sources_info or {key: {"file": str(path)} for key, path in paths.items()}
    extra = {
        "genome_build": genome_build,  # as the GTF's header names it (None where it names none)
        "mask": {
            "window_bins": config.window_bins,
            "bin_bp": config.bin_bp,
            "orientation": config.mask_orientation,
            "window_bp": config.window_bins * config.bin_bp,
            "convention": "bin k = 0-based half-open [center-1 - window_bp//2 + k*bin_bp, +bin_bp); "
            "CDS + stop_codon; 'transcript' reverses minus-strand masks",
        },
        "tissues": list(tissues),
        "tissue_column": config.tissue_column,
        "holdout_tissues": list(config.holdout_tissues),
        "chrom_style": config.chrom_style,
        "standardisation": "(log1p(mean TPM) - train_mean) / train_std per tissue; population std over "
        f"train-split transcripts (a std of 0 divides by 1); a seen tissue ({OWN!r} in tissues.parquet's "
        f"scaled_with) uses its own values, a held-out tissue ({SEEN_POOLED!r}) the seen tissues' pooled ones "
        "(holdout_scaling), never its own",
        "holdout_scaling": {
            "mean": pooled[0],
            "std": pooled[1],
            "pooled_over": [t for t, held in zip(tissues, held_out, strict=True) if not held],
            "applied_to": list(config.holdout_tissues),
        },
        "tissue_profiles": "log1p(sum of mean TPM over all the gene's GTEx transcripts), train-split genes only",
        "version_mismatch_examples": mismatches[:5],
        "joins": "labels.dna_id -> dna_windows.id (one row per distinct chrom:center:strand), labels.rna_id -> "
        "rna_sequences.id (the transcript), labels.protein_id -> protein_sequences.id (one row per distinct "
        "peptide; '' = no protein); coding_masks.id is the transcript",
        "expected_cache_bytes": sizes,
    }
    manifest = tables.write_outputs(
        out, "gtex", outputs, counts=counts, missing=missing, sources=info, params=asdict(config), extra=extra
    )
    print("  " + describe(sizes, config.cache_sizes))
    return manifest


OWN, SEEN_POOLED = "own_train", "seen_pooled_train"  # tissues.parquet's scaled_with: which statistics a tissue used


_DEFAULTS = GtexConfig()  # the command line shows the config's defaults


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tissues",
        default=None,
        help="comma-separated tissue names (default: IsoFormer's 30 SMTS tissues; with "
        "--tissue-column SMTSD every detailed tissue)",
    )
    parser.add_argument(
        "--tissue-column",
        choices=TISSUE_COLUMNS,
        default=_DEFAULTS.tissue_column,
        help="sample attribute naming the tissue (default SMTS)",
    )
    parser.add_argument(
        "--holdout-tissues",
        default="",
        help="comma-separated tissues flagged held out for zero-shot evaluation, e.g. 'Liver,Lung'",
    )
    parser.add_argument(
        "--max-gene-length",
        type=int,
        default=_DEFAULTS.max_gene_length,
        help="bp; longer genes are excluded (default 200000)",
    )
    parser.add_argument(
        "--window-bins", type=int, default=_DEFAULTS.window_bins, help="coding-mask bins per window (default 896)"
    )
    parser.add_argument("--bin-bp", type=int, default=_DEFAULTS.bin_bp, help="bp per coding-mask bin (default 128)")
    parser.add_argument(
        "--mask-orientation",
        choices=ORIENTATIONS,
        default=_DEFAULTS.mask_orientation,
        help="'reference' (bin 0 = lowest coordinate) or 'transcript' (bin 0 = 5'-most)",
    )
    parser.add_argument(
        "--chrom-style",
        choices=CHROM_STYLES,
        default=_DEFAULTS.chrom_style,
        help="'ucsc' (chr1, chrM; default) or 'ensembl' (1, MT), whichever naming the GTF uses",
    )
    parser.add_argument(
        "--transcripts",
        choices=TRANSCRIPT_SETS,
        default=_DEFAULTS.transcripts,
        help="'protein_coding' (default) or 'all' (non-coding transcripts kept, without protein)",
    )
    sizes = _DEFAULTS.cache_sizes
    parser.add_argument(
        "--max-positions",
        type=int,
        default=sizes.max_positions,
        help="K positions per item for the stated cache sizes (embed --max-positions K; default 128)",
    )
    for name, what in (
        ("dna_width", "Enformer trunk width"),
        ("rna_width", "Nucleotide Transformer width"),
        ("rna_max_tokens", "NT tokens per cDNA, <cls> included"),
        ("protein_width", "ESM-2 width"),
        ("protein_max_tokens", "ESM-2 tokens per peptide, specials included"),
    ):
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=getattr(sizes, name),
            help=f"{what}, for the stated cache sizes (default {getattr(sizes, name)})",
        )


def config_from_args(args: argparse.Namespace) -> GtexConfig:
    if args.tissues is not None:
        tissues = tables.comma_list(args.tissues)
    else:
        tissues = ISOFORMER_TISSUES if args.tissue_column == "SMTS" else ()
    return GtexConfig(
        tissues=tissues,
        tissue_column=args.tissue_column,
        seed=args.seed,
        max_gene_length=args.max_gene_length,
        window_bins=args.window_bins,
        bin_bp=args.bin_bp,
        mask_orientation=args.mask_orientation,
        holdout_tissues=tables.comma_list(args.holdout_tissues),
        test_chroms=tables.comma_list(args.test_chroms),
        chrom_style=args.chrom_style,
        transcripts=args.transcripts,
        cache_sizes=CacheSizeConfig(
            dna_width=args.dna_width,
            rna_width=args.rna_width,
            rna_max_tokens=args.rna_max_tokens,
            protein_width=args.protein_width,
            protein_max_tokens=args.protein_max_tokens,
            max_positions=args.max_positions,
        ),
    )


def run(args: argparse.Namespace) -> dict:
    config = config_from_args(args)
    paths, info = sources.fetch_all(SOURCES, args.source_dir, args.cache_dir)
    return build_gtex(paths, Path(args.out), config, sources_info=info)
