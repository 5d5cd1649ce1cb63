"""GTEx v8 isoform expression across tissues (IsoFormer / CDBridge GTEx task).

Owns the GTEx recipe. GTEx v8 transcript TPM (GCT 1.2, ~200k transcripts x ~17k samples, streamed in row chunks)
and the sample attributes give the mean TPM of each transcript in each tissue; the Ensembl GTF (release 88 =
GENCODE v26, GTEx's annotation) gives the protein-coding transcripts, their TSS and coding regions; the Ensembl
cDNA and peptide FASTAs give their RNA and protein. By default the protein-coding transcripts are kept, each with
DNA, RNA and protein; `transcripts="all"` keeps every biotype, and a transcript without a peptide record
(non-coding) has no protein. Transcripts are split 80/10/10 by gene, so no gene sits in two splits.

Items are embedded once: transcripts that share a TSS window or a peptide share one row of the item table and
name it in their labels row (T transcripts, W distinct windows, P distinct peptides, K tissues, B = window_bins,
G = train-split genes):
  dna_windows        (W)  id = "chrom:center:strand", chrom, center (the TSS, 1-based), strand, gene_id, gene_name,
                          split (those of the window's first transcript by id), n_transcripts
  coding_masks       (T)  id (transcript), dna_id (its window), mask (B uint8 flags; geometry in gtex_masks.py)
  rna_sequences      (T)  id (transcript), sequence (cDNA)
  protein_sequences  (P)  id (the smallest Ensembl protein id carrying the peptide), sequence (peptide without a
                          trailing '*'), n_transcripts
  labels             (T)  id, gene_id, split, dna_id, rna_id, protein_id ("" = no protein), K tissue columns:
                          (log1p(mean TPM) - train mean) / train std
  labels_log1p       (T)  the same layout, log1p(mean TPM) unstandardised
  tissues            (K)  tissue, n_samples, train_mean, train_std, held_out
  tissue_profiles    (K)  id (the tissue), G columns named by gene symbol: log1p(sum of the gene's mean TPM)

`id` is GTEx's versioned transcript id; GTEx rows meet the GTF by unversioned id, and version differences are
counted, not dropped. `gene_id` is GTEx's versioned gene id. T-row tables are in the same order, sorted by id;
item tables are sorted by id. recipe.json's `expected_cache_bytes` states the caches' sizes (gtex_sizes.py).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from dogmacache.contracts.windows import ORIENTATIONS, tss
from dogmacache.data_recipes import formats, sources, tables
from dogmacache.data_recipes.gtex_masks import coding_masks
from dogmacache.data_recipes.gtex_sizes import CacheSizeConfig, describe, expected_cache_bytes
from dogmacache.errors import InputError

_ENSEMBL = "Ensembl data: no restrictions on use (EMBL-EBI terms of use); cite the Ensembl release"
SOURCES = {
    "tpm": sources.Source(
        "tpm",
        "GTEx_Analysis_2017-06-05_v8_RSEMv1.3.0_transcript_tpm.gct.gz",
        "https://storage.googleapis.com/adult-gtex/bulk-gex/v8/rna-seq/"
        "GTEx_Analysis_2017-06-05_v8_RSEMv1.3.0_transcript_tpm.gct.gz",
        "GTEx open access data (no dbGaP application needed); cite the GTEx Consortium",
        "GTEx v8 RSEM transcript TPM, GENCODE v26 ids, GCT 1.2",
        size="~1.5 GB",
    ),
    "attributes": sources.Source(
        "attributes",
        "GTEx_Analysis_v8_Annotations_SampleAttributesDS.txt",
        "https://storage.googleapis.com/adult-gtex/annotations/v8/metadata-files/"
        "GTEx_Analysis_v8_Annotations_SampleAttributesDS.txt",
        "GTEx open access data (no dbGaP application needed); cite the GTEx Consortium",
        "GTEx v8 sample attributes (SAMPID, SMTS, SMTSD, ...)",
        size="~11 MB",
    ),
    "gtf": sources.Source(
        "gtf",
        "Homo_sapiens.GRCh38.88.gtf.gz",
        "https://ftp.ensembl.org/pub/release-88/gtf/homo_sapiens/Homo_sapiens.GRCh38.88.gtf.gz",
        _ENSEMBL,
        "Ensembl 88 gene annotation (= GENCODE v26)",
        size="~40 MB",
    ),
    "cdna": sources.Source(
        "cdna",
        "Homo_sapiens.GRCh38.cdna.all.fa.gz",
        "https://ftp.ensembl.org/pub/release-88/fasta/homo_sapiens/cdna/Homo_sapiens.GRCh38.cdna.all.fa.gz",
        _ENSEMBL,
        "Ensembl 88 transcript cDNA sequences",
        size="~65 MB",
    ),
    "pep": sources.Source(
        "pep",
        "Homo_sapiens.GRCh38.pep.all.fa.gz",
        "https://ftp.ensembl.org/pub/release-88/fasta/homo_sapiens/pep/Homo_sapiens.GRCh38.pep.all.fa.gz",
        _ENSEMBL,
        "Ensembl 88 peptide sequences",
        size="~13 MB",
    ),
}

# GTEx SMTS values minus "Bone Marrow" (IsoFormer's 30 tissues, in its order).
ISOFORMER_TISSUES = (
    "Adipose Tissue",
    "Adrenal Gland",
    "Bladder",
    "Blood",
    "Blood Vessel",
    "Brain",
    "Breast",
    "Cervix Uteri",
    "Colon",
    "Esophagus",
    "Fallopian Tube",
    "Heart",
    "Kidney",
    "Liver",
    "Lung",
    "Muscle",
    "Nerve",
    "Ovary",
    "Pancreas",
    "Pituitary",
    "Prostate",
    "Salivary Gland",
    "Skin",
    "Small Intestine",
    "Spleen",
    "Stomach",
    "Testis",
    "Thyroid",
    "Uterus",
    "Vagina",
)
TISSUE_COLUMNS = ("SMTS", "SMTSD")
CHROM_STYLES = ("ucsc", "ensembl")
TRANSCRIPT_SETS = ("protein_coding", "all")
_GCT_CHUNK_ROWS = 1000  # ~17k samples x 1000 rows x 8 B = ~140 MB of TPM per chunk
_PRIMARY = {str(i) for i in range(1, 23)} | {"X", "Y"}


@dataclass(frozen=True)
class GtexConfig:
    """What the GTEx recipe keeps and how it shapes it."""

    # Tissue names as written in `tissue_column`; () = every tissue with samples in the GCT.
    tissues: tuple[str, ...] = ISOFORMER_TISSUES
    # "SMTS" (31 coarse tissues) or "SMTSD" (detailed, e.g. "Brain - Cortex").
    tissue_column: str = "SMTS"
    # train / validation / test fractions, drawn by gene: a gene's isoforms share most of their sequence, so
    # isoforms of one gene in two splits would leak test labels into training.
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # Seeds the shuffle of genes into splits; fixed, so runs and models are compared on the same test genes.
    seed: int = 0
    # bp; genes whose GTF gene line spans more (end - start + 1) are excluded, as CDBridge's GTEx-Benchmark does
    # (docs/papers.md#cdbridge-gtex-benchmark); IsoFormer's data has no such filter.
    max_gene_length: int = 200_000
    # Enformer's output: 896 bins x 128 bp = 114,688 bp centred on the TSS.
    window_bins: int = 896
    bin_bp: int = 128
    # "reference": mask bin 0 = lowest coordinate; "transcript": minus-strand masks reversed, bin 0 = 5'-most.
    mask_orientation: str = "reference"
    # Tissues whose labels stay but are flagged held out (zero-shot evaluation); each must be in `tissues`.
    holdout_tissues: tuple[str, ...] = ()
    # "ucsc" (chr1 ... chrM, as in UCSC hg38.fa, the default genome) or "ensembl" (the GTF's 1 ... MT).
    chrom_style: str = "ucsc"
    # "protein_coding" (GTF transcript_biotype, IsoFormer's ~90k) or "all" (non-coding ones kept without protein).
    transcripts: str = "protein_coding"
    # Encoders, caps and the K whose cache sizes recipe.json states.
    cache_sizes: CacheSizeConfig = CacheSizeConfig()

    def __post_init__(self):
        object.__setattr__(self, "tissues", tuple(self.tissues))
        object.__setattr__(self, "holdout_tissues", tuple(self.holdout_tissues))
        object.__setattr__(self, "fractions", tuple(self.fractions))
        for name, value, allowed in (
            ("tissue_column", self.tissue_column, TISSUE_COLUMNS),
            ("mask_orientation", self.mask_orientation, ORIENTATIONS),
            ("chrom_style", self.chrom_style, CHROM_STYLES),
            ("transcripts", self.transcripts, TRANSCRIPT_SETS),
        ):
            if value not in allowed:
                raise InputError(f"GTEx {name} {value!r} is not one of {allowed}; pick one of them")
        for name in ("max_gene_length", "window_bins", "bin_bp"):
            if getattr(self, name) <= 0:
                raise InputError(f"GTEx {name} is {getattr(self, name)}; expected a positive number of bp/bins")
        outside = [t for t in self.holdout_tissues if self.tissues and t not in self.tissues]
        if outside:
            raise InputError(
                f"held-out tissue {outside[0]!r} is not among the tissues {list(self.tissues)}; "
                "hold out only tissues you also select (names are case-sensitive)"
            )


def build_gtex(paths: dict[str, Path], out: Path, config: GtexConfig, sources_info: dict | None = None) -> dict:
    """The whole recipe from explicit files (keys tpm, attributes, gtf, cdna, pep, any names): writes the tables
    and recipe.json into `out` and returns the manifest."""
    missing_keys = sorted(set(SOURCES) - set(paths))
    if missing_keys:
        raise InputError(f"build_gtex needs files for {missing_keys}; pass paths for all of {sorted(SOURCES)}")
    paths = {k: Path(v) for k, v in paths.items()}
    samples, tissues, counts = _sample_tissues(paths["attributes"], _gct_samples(paths["tpm"]), config)
    expression = _mean_tpm(paths["tpm"], samples, tissues)
    counts["gct_transcripts"] = len(expression)
    transcripts, coding_parts = _read_annotation(paths["gtf"])
    kept, match_counts, mismatches = _match_annotation(expression, transcripts, config)
    counts.update(match_counts)
    kept, missing = _attach_sequences(kept, paths["cdna"], paths["pep"])
    kept, missing["ucsc_chrom_name"] = _styled_chroms(kept, config.chrom_style)
    if kept.empty:
        raise InputError(
            f"no transcript of {paths['tpm']} survives the filters (counts {counts}, dropped {missing}); "
            "are the GTF and FASTAs the Ensembl release matching the GTEx annotation (88)?"
        )
    kept = kept.sort_values("id", ignore_index=True)
    split_of = tables.split_groups(sorted(kept["gene_id"].unique()), config.fractions, config.seed)
    kept["split"] = kept["gene_id"].map(split_of)
    train = (kept["split"] == "train").to_numpy()
    if not train.any():
        raise InputError(f"no transcript fell in the train split (fractions {config.fractions}); keep more genes")
    log1p = np.log1p(kept[list(tissues)].to_numpy(dtype=np.float64))  # (T, K)
    train_mean, train_std = log1p[train].mean(axis=0), log1p[train].std(axis=0)  # population std, train only
    standardised = (log1p - train_mean) / np.where(train_std > 0, train_std, 1.0)  # constant tissue: centred only

    kept = _join_ids(kept)
    keys = kept[["id", "gene_id", "split", "dna_id", "rna_id", "protein_id"]]
    masks = _masks(kept, coding_parts, config)
    outputs = {
        "dna_windows": _distinct_items(kept, "dna_id", ["chrom", "center", "strand", "gene_id", "gene_name", "split"]),
        "coding_masks": pd.DataFrame({"id": kept["id"], "dna_id": kept["dna_id"], "mask": list(masks)}),
        "rna_sequences": kept[["id", "cdna"]].rename(columns={"cdna": "sequence"}),
        "protein_sequences": _distinct_items(kept[kept["protein_id"] != ""], "protein_id", ["peptide"]).rename(
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
                "held_out": [t in config.holdout_tissues for t in tissues],
            }
        ),
        "tissue_profiles": _tissue_profiles(expression, kept, tissues),
    }
    tables.assert_no_leak(outputs["labels"], "gene_id")
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
        "train-split transcripts (a std of 0 divides by 1)",
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


def _gct_samples(path: Path) -> list[str]:
    """Sample ids of the GCT header (read through formats.read_gct, which checks the '#1.2' and dims lines)."""
    chunks = formats.read_gct(path, chunksize=1)
    try:
        header = [str(c) for c in next(chunks).columns]
    except StopIteration:
        raise InputError(f"{path} holds no transcript rows; expected GTEx's transcript TPM GCT") from None
    finally:
        chunks.close()
    formats.require_columns(path, header, ["transcript_id", "gene_id"])
    return header[2:]


def _sample_tissues(path: Path, gct_samples: list[str], config: GtexConfig) -> tuple[pd.DataFrame, tuple, dict]:
    """(sample, tissue) for the GCT samples in the selected tissues, the tissues in order, and the sample counts."""
    column = config.tissue_column
    attributes = formats.read_table(path, ["SAMPID", column], dtype={"SAMPID": str, column: str})
    tissue_of = attributes.dropna(subset=[column]).set_index("SAMPID")[column].to_dict()
    available = sorted({tissue_of[s] for s in gct_samples if s in tissue_of})
    tissues = config.tissues or tuple(available)
    absent = [t for t in tissues if t not in available]
    if absent:
        raise InputError(
            f"tissue {absent[0]!r} has no GCT sample in column {column} of {path}"
            + (f" (nor {absent[1:4]}{' ...' if len(absent) > 4 else ''})" if len(absent) > 1 else "")
            + f"; tissues there: {available[:8]}{' ...' if len(available) > 8 else ''}. Pass --tissues from those "
            "(case-sensitive) or the matching --tissue-column"
        )
    wanted = set(tissues)
    samples = pd.DataFrame(
        [(s, tissue_of[s]) for s in gct_samples if tissue_of.get(s) in wanted], columns=["sample", "tissue"]
    )
    counts = {
        "gct_samples": len(gct_samples),
        "samples_without_attributes": sum(s not in tissue_of for s in gct_samples),  # no tissue: skipped
        "samples_in_other_tissues": sum(s in tissue_of and tissue_of[s] not in wanted for s in gct_samples),
        "samples_used": len(samples),
    }
    return samples, tissues, counts


def _mean_tpm(path: Path, samples: pd.DataFrame, tissues: tuple[str, ...]) -> pd.DataFrame:
    """transcript_id, gene_id and the mean TPM over each tissue's samples, for every GCT row; streamed in chunks."""
    sample_ids = list(samples["sample"])
    one_hot = (samples["tissue"].to_numpy()[:, None] == np.array(tissues, dtype=object)[None, :]).astype(np.float64)
    n_per_tissue = one_hot.sum(axis=0)  # (K,) samples per tissue, all > 0 by construction
    header = formats.header_of(path, comment_lines=2)
    parts = []
    for chunk in formats.read_gct(path, usecols=["transcript_id", "gene_id", *sample_ids], chunksize=_GCT_CHUNK_ROWS):
        tpm = _checked_tpm(chunk, sample_ids, path, header)  # (rows, S)
        means = pd.DataFrame(tpm @ one_hot / n_per_tissue, columns=list(tissues))  # (rows, K)
        ids = chunk[["transcript_id", "gene_id"]].reset_index(drop=True)
        parts.append(pd.concat([ids, means], axis=1))
    expression = pd.concat(parts, ignore_index=True)
    with formats.open_text(path) as fh:
        fh.readline()
        declared = int(fh.readline().split("\t")[0])
    if declared != len(expression):
        raise InputError(
            f"{path} declares {declared} rows on line 2 but holds {len(expression)}; the file is "
            "incomplete, download it again"
        )
    return expression


def _checked_tpm(chunk: pd.DataFrame, sample_ids: list[str], path: Path, header: list[str]) -> np.ndarray:
    """(rows, S) TPM of a GCT chunk; a missing id, or a TPM that is not a finite number >= 0, is an InputError
    naming line and column: one NaN would otherwise turn every label of its tissue into NaN."""
    for column in ("transcript_id", "gene_id"):
        if chunk[column].isna().any():
            line = int(chunk.index[chunk[column].isna().to_numpy()][0])
            raise InputError(
                f"{formats.cell(path, line, header, column)} is empty (a blank line?); every GCT row "
                "names its transcript and gene. The file is damaged: download it again"
            )
    values = chunk[sample_ids]
    try:
        tpm = values.to_numpy(dtype=np.float64)
    except ValueError:  # text in a sample column: find the cell by parsing each column on its own
        tpm = values.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(tpm) & (tpm >= 0))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raw = values.iat[row, col]
        shown = "has no value (the cell is empty or NaN, or the row ends early)" if pd.isna(raw) else f"has {raw!r}"
        raise InputError(
            f"{formats.cell(path, int(chunk.index[row]), header, sample_ids[col])} {shown}; expected a "
            "TPM, a finite non-negative number, in every sample column. The file is damaged: download "
            "it again"
        )
    return tpm


def _unversioned(ids: pd.Series) -> pd.Series:
    return ids.str.split(".", n=1).str[0]


def _versioned(ids: pd.Series, versions: pd.Series) -> pd.Series:
    """Ensembl GTFs split the version into its own attribute; GENCODE-style ids already carry it."""
    return ids.where(versions.isna(), ids + "." + versions.fillna(""))


def _read_annotation(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """GTF transcripts (key = unversioned id, gtf_id, geometry, gene_name, gene_length, biotype) and their coding
    parts (key, start, end: CDS and stop_codon lines, 1-based inclusive)."""
    attributes = ["gene_id", "gene_version", "gene_name", "transcript_id", "transcript_version", "transcript_biotype"]
    gtf = formats.read_gtf(path, ["gene", "transcript", "CDS", "stop_codon"], attributes)
    transcripts = gtf[(gtf["feature"] == "transcript") & ~gtf["transcript_id"].str.endswith("_PAR_Y")].copy()
    if transcripts.empty:
        raise InputError(f"{path} has no 'transcript' lines; expected an Ensembl GTF such as {SOURCES['gtf'].filename}")
    transcripts["key"] = _unversioned(transcripts["transcript_id"])
    transcripts["gtf_id"] = _versioned(transcripts["transcript_id"], transcripts["transcript_version"])
    # Gene length from the gene line; the span of the gene's transcripts where a GTF has no gene lines.
    genes = gtf[gtf["feature"] == "gene"].drop_duplicates("gene_id").set_index("gene_id")
    span = transcripts.groupby("gene_id").agg(start=("start", "min"), end=("end", "max"))
    length = (genes["end"] - genes["start"] + 1).combine_first(span["end"] - span["start"] + 1)
    transcripts["gene_length"] = transcripts["gene_id"].map(length)
    parts = gtf[gtf["feature"].isin(["CDS", "stop_codon"])]
    coding_parts = pd.DataFrame(
        {"key": _unversioned(parts["transcript_id"]), "start": parts["start"], "end": parts["end"]}
    )
    return transcripts.drop_duplicates("key"), coding_parts


def _match_annotation(expression: pd.DataFrame, transcripts: pd.DataFrame, config: GtexConfig):
    """GTEx rows matched by unversioned id to GTF transcripts (protein-coding ones, or all with
    transcripts="all") of genes no longer than max_gene_length, with the TSS as `center`. Returns (rows, counts,
    version-mismatch examples)."""
    par_y = expression["transcript_id"].str.endswith("_PAR_Y")  # GENCODE's chrY copies; Ensembl has the X copy
    rows = expression[~par_y].assign(key=lambda t: _unversioned(t["transcript_id"]))
    geometry = ["key", "gtf_id", "chrom", "start", "end", "strand", "gene_name", "gene_length", "transcript_biotype"]
    rows = rows.merge(transcripts[geometry], on="key", how="left")
    in_gtf = rows["gtf_id"].notna()
    coding = rows[rows["transcript_biotype"] == "protein_coding"]
    selected = coding if config.transcripts == "protein_coding" else rows[in_gtf]
    mismatched = selected[selected["transcript_id"] != selected["gtf_id"]]
    long_gene = selected["gene_length"] > config.max_gene_length
    kept = selected[~long_gene].rename(columns={"transcript_id": "id"}).reset_index(drop=True)
    kept = kept.astype({"start": np.int64, "end": np.int64})  # the left merge made them float
    kept["center"] = tss(kept["start"].to_numpy(), kept["end"].to_numpy(), kept["strand"].to_numpy())  # 1-based
    counts = {
        "gct_par_y_rows": int(par_y.sum()),
        "gct_transcripts_not_in_gtf": int((~in_gtf).sum()),
        "gct_transcripts_not_protein_coding": int(in_gtf.sum() - len(coding)),
        "protein_coding_matched": len(coding),
        "version_mismatches": len(mismatched),
        "long_genes_excluded": selected.loc[long_gene, "gene_id"].nunique(),
        "long_gene_transcripts_excluded": int(long_gene.sum()),
    }
    examples = [f"GTEx {a} / GTF {b}" for a, b in zip(mismatched["transcript_id"], mismatched["gtf_id"], strict=True)]
    return kept, counts, examples


def _attach_sequences(kept: pd.DataFrame, cdna_path: Path, pep_path: Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """Adds cdna, peptide and peptide_id (the record's versioned Ensembl protein id) columns; drops (and counts)
    transcripts without a cDNA and protein-coding ones without a peptide. Other biotypes keep an empty peptide."""
    cdna = formats.read_ensembl_fasta(cdna_path)
    pep = formats.read_ensembl_fasta(pep_path)
    cdna_keys = _unversioned(cdna["id"])
    cdna_of = dict(zip(cdna_keys, cdna["sequence"], strict=True))
    symbol_of = dict(zip(cdna_keys, cdna["gene_symbol"], strict=True))
    pep_keys = _unversioned(pep["transcript"])
    pep_of = dict(zip(pep_keys, pep["sequence"].str.rstrip("*"), strict=True))
    pep_id_of = dict(zip(pep_keys, pep["id"], strict=True))
    kept = kept.assign(
        cdna=kept["key"].map(cdna_of), peptide=kept["key"].map(pep_of), peptide_id=kept["key"].map(pep_id_of)
    )
    no_peptide = kept["peptide"].isna() & (kept["transcript_biotype"] == "protein_coding")
    missing = {"cdna_sequence": int(kept["cdna"].isna().sum()), "peptide_sequence": int(no_peptide.sum())}
    kept = kept[kept["cdna"].notna() & ~no_peptide].reset_index(drop=True)
    kept[["peptide", "peptide_id"]] = kept[["peptide", "peptide_id"]].fillna("")
    # gene_name from the GTF; the cDNA header's gene_symbol, then the gene id, where the GTF has none.
    kept["gene_name"] = kept["gene_name"].fillna(kept["key"].map(symbol_of)).replace("", np.nan)
    kept["gene_name"] = kept["gene_name"].fillna(kept["gene_id"])
    return kept, missing


def _styled_chroms(kept: pd.DataFrame, style: str) -> tuple[pd.DataFrame, int]:
    """Chromosome names in the asked style, and how many transcripts lie on contigs with no UCSC name (dropped)."""
    if style == "ensembl":
        return kept, 0
    ucsc = kept["chrom"].map(lambda c: "chrM" if c == "MT" else f"chr{c}" if c in _PRIMARY else None)
    kept = kept.assign(chrom=ucsc).dropna(subset=["chrom"]).reset_index(drop=True)
    return kept, int(ucsc.isna().sum())


def _join_ids(kept: pd.DataFrame) -> pd.DataFrame:
    """dna_id, rna_id and protein_id per transcript: the window "chrom:center:strand" (readable, and the same in every
    run over the same coordinates), the transcript id, and the smallest Ensembl protein id whose record carries the
    transcript's peptide ("" without a peptide). `kept` is sorted by id."""
    dna_id = kept["chrom"].astype(str) + ":" + kept["center"].astype(str) + ":" + kept["strand"].astype(str)
    coding = kept["peptide"] != ""
    first_id = kept[coding].groupby("peptide")["peptide_id"].min()
    protein_id = kept["peptide"].map(first_id).where(coding, "")
    return kept.assign(dna_id=dna_id, rna_id=kept["id"], protein_id=protein_id)


def _distinct_items(kept: pd.DataFrame, key: str, columns: list[str]) -> pd.DataFrame:
    """One row per distinct `key` (sorted): `columns` from its first transcript by id, and n_transcripts."""
    first = kept.drop_duplicates(key).set_index(key)[columns]
    first["n_transcripts"] = kept[key].value_counts()
    return first.sort_index().rename_axis("id").reset_index()


def _masks(kept: pd.DataFrame, coding: pd.DataFrame, config: GtexConfig) -> np.ndarray:
    """(T, B) coding flags in the row order of `kept`, from the GTF coding parts (key, start, end)."""
    row_of = pd.Series(np.arange(len(kept)), index=kept["key"])
    coding = coding[coding["key"].isin(row_of.index)]
    return coding_masks(
        kept["center"].to_numpy(),
        kept["strand"].to_numpy(),
        row_of[coding["key"]].to_numpy(),
        coding["start"].to_numpy(),
        coding["end"].to_numpy(),
        window_bins=config.window_bins,
        bin_bp=config.bin_bp,
        orientation=config.mask_orientation,
    )


def _tissue_profiles(expression: pd.DataFrame, kept: pd.DataFrame, tissues: tuple[str, ...]) -> pd.DataFrame:
    """(K, G): log1p of each train-split gene's TPM (the sum of its GTEx transcripts' mean TPM) per tissue.

    Train genes only: a profile over all genes would carry test labels into the model's inputs."""
    train = kept[kept["split"] == "train"].drop_duplicates("gene_id").sort_values("gene_id")
    gene_tpm = expression.groupby("gene_id")[list(tissues)].sum().loc[train["gene_id"]]  # (G, K)
    names = train["gene_name"]
    shared = names.duplicated(keep=False)  # a symbol on several genes: name each column symbol|gene id
    names = names.where(~shared, names + "|" + train["gene_id"])
    profile = pd.DataFrame(np.log1p(gene_tpm.to_numpy().T), columns=list(names))
    return pd.concat([pd.DataFrame({"id": list(tissues)}), profile], axis=1)


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


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
        help="'ucsc' (chr1, chrM; default) or 'ensembl' (1, MT, as in the GTF)",
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
        tissues = _comma_list(args.tissues)
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
        holdout_tissues=_comma_list(args.holdout_tissues),
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
