"""The GTEx recipe's sources and their parsing: the files to download (`SOURCES`); the GCT's samples and the
sample attributes' tissues; the mean TPM per transcript and tissue, streamed in row chunks; the GTF's transcripts
and coding parts (CDS + stop codon). Ids meet by unversioned Ensembl id (`unversioned`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from dogmacache.data_recipes import formats, sources
from dogmacache.data_recipes.gtex_config import GtexConfig
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
_GCT_CHUNK_ROWS = 1000  # ~17k samples x 1000 rows x 8 B = ~140 MB of TPM per chunk


def gct_samples(path: Path) -> list[str]:
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


def sample_tissues(path: Path, gct_samples: list[str], config: GtexConfig) -> tuple[pd.DataFrame, tuple, dict]:
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
    unheld = [t for t in config.holdout_tissues if t not in tissues]
    if unheld:  # with no --tissues (every tissue of the column) the config could not check these names
        near = [t for t in tissues if t.lower().startswith(unheld[0].lower())] or list(tissues)
        raise InputError(
            f"held-out tissue {unheld[0]!r} has no GCT sample in column {column} of {path}; tissues there: "
            f"{near[:8]}{' ...' if len(near) > 8 else ''}. Pass --holdout-tissues from those (case-sensitive) "
            "or the matching --tissue-column"
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


def mean_tpm(path: Path, samples: pd.DataFrame, tissues: tuple[str, ...]) -> pd.DataFrame:
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


def unversioned(ids: pd.Series) -> pd.Series:
    return ids.str.split(".", n=1).str[0]


def _versioned(ids: pd.Series, versions: pd.Series) -> pd.Series:
    """Ensembl GTFs split the version into its own attribute; GENCODE-style ids already carry it."""
    return ids.where(versions.isna(), ids + "." + versions.fillna(""))


def read_annotation(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """GTF transcripts (key = unversioned id, gtf_id, geometry, gene_name, gene_length, biotype) and their coding
    parts (key, start, end: CDS and stop_codon lines, 1-based inclusive)."""
    attributes = ["gene_id", "gene_version", "gene_name", "transcript_id", "transcript_version", "transcript_biotype"]
    gtf = formats.read_gtf(path, ["gene", "transcript", "CDS", "stop_codon"], attributes)
    formats.require_build(gtf, path, "GRCh38", "GTEx v8's transcript annotation")
    transcripts = gtf[(gtf["feature"] == "transcript") & ~gtf["transcript_id"].str.endswith("_PAR_Y")].copy()
    if transcripts.empty:
        raise InputError(f"{path} has no 'transcript' lines; expected an Ensembl GTF such as {SOURCES['gtf'].filename}")
    transcripts["key"] = unversioned(transcripts["transcript_id"])
    transcripts["gtf_id"] = _versioned(transcripts["transcript_id"], transcripts["transcript_version"])
    # Gene length from the gene line; the span of the gene's transcripts where a GTF has no gene lines.
    genes = gtf[gtf["feature"] == "gene"].drop_duplicates("gene_id").set_index("gene_id")
    span = transcripts.groupby("gene_id").agg(start=("start", "min"), end=("end", "max"))
    length = (genes["end"] - genes["start"] + 1).combine_first(span["end"] - span["start"] + 1)
    transcripts["gene_length"] = transcripts["gene_id"].map(length)
    parts = gtf[gtf["feature"].isin(["CDS", "stop_codon"])]
    coding_parts = pd.DataFrame(
        {"key": unversioned(parts["transcript_id"]), "start": parts["start"], "end": parts["end"]}
    )
    transcripts = transcripts.drop_duplicates("key")
    transcripts.attrs["genome_build"] = gtf.attrs.get("genome_build")  # recipe.json records it
    return transcripts, coding_parts
