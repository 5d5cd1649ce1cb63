"""The GTEx recipe's items: the GTEx transcripts matched to the annotation and filtered, their cDNA and peptide
attached, chromosome names styled; then the ids that join labels to the item tables (one DNA window per distinct
TSS, one protein per distinct peptide), the coding masks and the tissue profiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from dogmacache.contracts.windows import tss, window_id, window_site_id
from dogmacache.data_recipes import formats
from dogmacache.data_recipes.gtex_config import GtexConfig
from dogmacache.data_recipes.gtex_masks import coding_masks
from dogmacache.data_recipes.gtex_sources import SOURCES, unversioned
from dogmacache.errors import InputError

_PRIMARY = {str(i) for i in range(1, 23)} | {"X", "Y"}


def match_annotation(
    expression: pd.DataFrame, transcripts: pd.DataFrame, config: GtexConfig, gct: str | Path = SOURCES["tpm"].filename
):
    """GTEx rows matched by unversioned id to GTF transcripts (protein-coding ones, or all with
    transcripts="all") of genes no longer than max_gene_length, with the TSS as `center`. Returns (rows, counts,
    version-mismatch examples). A transcript in two rows of the GCT (`gct`, named in the error) is an InputError:
    each row is one transcript's labels and coding mask."""
    par_y = expression["transcript_id"].str.endswith("_PAR_Y")  # GENCODE's chrY copies; Ensembl has the X copy
    rows = expression[~par_y].assign(key=lambda t: unversioned(t["transcript_id"]))
    repeated = rows["key"][rows["key"].duplicated()]
    if len(repeated):
        key = repeated.iloc[0]
        named = rows.loc[rows["key"] == key, "transcript_id"].tolist()
        raise InputError(
            f"{gct}: transcript {key} has {len(named)} rows ({', '.join(named[:3])}; {repeated.nunique()} such "
            "transcripts); a GTEx GCT lists each transcript once: download it again, or keep one row per transcript"
        )
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


def attach_sequences(kept: pd.DataFrame, cdna_path: Path, pep_path: Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """Adds cdna, peptide and peptide_id (the record's versioned Ensembl protein id) columns; drops (and counts)
    transcripts without a cDNA and protein-coding ones without a peptide. Other biotypes keep an empty peptide."""
    cdna = formats.read_ensembl_fasta(cdna_path)
    pep = formats.read_ensembl_fasta(pep_path)
    cdna_keys = unversioned(cdna["id"])
    cdna_of = dict(zip(cdna_keys, cdna["sequence"], strict=True))
    symbol_of = dict(zip(cdna_keys, cdna["gene_symbol"], strict=True))
    pep_keys = unversioned(pep["transcript"])
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


def _ensembl_name(chrom: str) -> str:
    """A primary chromosome as Ensembl names it (`1`, `X`, `MT`), whichever naming the GTF used (`chr1`, `chrM`
    from a GENCODE-style file); a contig as it is."""
    if chrom in ("chrM", "chrMT", "M"):
        return "MT"
    bare = chrom.removeprefix("chr")
    return bare if bare in _PRIMARY else chrom


def styled_chroms(kept: pd.DataFrame, style: str) -> tuple[pd.DataFrame, int]:
    """Chromosome names in the asked style, from a GTF that names them either way (`1` or `chr1`), and how many
    transcripts lie on contigs with no UCSC name (dropped under `ucsc`)."""
    ensembl = kept["chrom"].astype(str).map(_ensembl_name)
    if style == "ensembl":
        return kept.assign(chrom=ensembl), 0
    ucsc = ensembl.map(lambda c: "chrM" if c == "MT" else f"chr{c}" if c in _PRIMARY else None)
    kept = kept.assign(chrom=ucsc).dropna(subset=["chrom"]).reset_index(drop=True)
    return kept, int(ucsc.isna().sum())


def join_ids(kept: pd.DataFrame) -> pd.DataFrame:
    """dna_id, rna_id and protein_id per transcript: the window "chrom:center:strand" (readable, and the same in every
    run over the same coordinates), the transcript id, and the smallest Ensembl protein id whose record carries the
    transcript's peptide ("" without a peptide); and dna_site, the window's "chrom:center" whatever its strand, for
    linking split groups (a window is cut from the reference strand, so the two strands of a bidirectional promoter
    read the same bases). `kept` is sorted by id."""
    dna_site = window_site_id(kept["chrom"], kept["center"])
    coding = kept["peptide"] != ""
    first_id = kept[coding].groupby("peptide")["peptide_id"].min()
    protein_id = kept["peptide"].map(first_id).where(coding, "")
    return kept.assign(
        dna_id=window_id(dna_site, kept["strand"]), dna_site=dna_site, rna_id=kept["id"], protein_id=protein_id
    )


def distinct_items(kept: pd.DataFrame, key: str, columns: list[str]) -> pd.DataFrame:
    """One row per distinct `key` (sorted): `columns` from its first transcript by id, and n_transcripts."""
    first = kept.drop_duplicates(key).set_index(key)[columns]
    first["n_transcripts"] = kept[key].value_counts()
    return first.sort_index().rename_axis("id").reset_index()


def coding_mask_rows(kept: pd.DataFrame, coding: pd.DataFrame, config: GtexConfig) -> np.ndarray:
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


def tissue_profiles(expression: pd.DataFrame, kept: pd.DataFrame, tissues: tuple[str, ...]) -> pd.DataFrame:
    """(K, G): log1p of each train-split gene's TPM (the sum of its GTEx transcripts' mean TPM) per tissue.

    Train genes only: a profile over all genes would carry test labels into the model's inputs."""
    train = kept[kept["split"] == "train"].drop_duplicates("gene_id").sort_values("gene_id")
    gene_tpm = expression.groupby("gene_id")[list(tissues)].sum().loc[train["gene_id"]]  # (G, K)
    names = train["gene_name"]
    shared = names.duplicated(keep=False)  # a symbol on several genes: name each column symbol|gene id
    names = names.where(~shared, names + "|" + train["gene_id"])
    profile = pd.DataFrame(np.log1p(gene_tpm.to_numpy().T), columns=list(names))
    return pd.concat([pd.DataFrame({"id": list(tissues)}), profile], axis=1)
