"""Miniature GTEx sources in the real formats (GCT, sample attributes, GTF, cDNA and peptide FASTAs), with the
numbers the recipe must derive from them worked out by hand; shared by the GTEx recipe's tests."""

import gzip
import json

import numpy as np
import pandas as pd
from dogmacache.data_recipes import gtex

# GCT sample columns and their tissues (None: absent from the attributes file).
SAMPLES = {
    "GTEX-1117F-0226-SM-5GZZ7": "Liver",
    "GTEX-111CU-1826-SM-5GZYN": "Liver",
    "GTEX-111FC-0226-SM-5N9B8": "Lung",
    "GTEX-111VG-2326-SM-5N9BK": "Brain",  # a tissue the test config does not select
    "GTEX-ZZZZZ-0001-SM-NOATT": None,
    "GTEX-1128S-0126-SM-5H12U": "Muscle",
}
DETAILED = {"Liver": "Liver", "Lung": "Lung", "Brain": "Brain - Cortex", "Muscle": "Muscle - Skeletal"}
TISSUES = ("Liver", "Lung", "Muscle")

# (gene, gene version, symbol, chrom, gene start, gene end, strand,
#  [(transcript, GTF version, GTEx version, biotype, start, end, CDS parts, stop_codon parts, has peptide)])
GENES = [
    (
        "ENSG00000000101",
        5,
        "ALPHA",
        "1",
        1001,
        3000,
        "+",
        [("ENST00000000101", 3, 3, "protein_coding", 1001, 3000, [(1201, 1255), (1490, 1700)], [(1701, 1703)], True)],
    ),
    (
        "ENSG00000000102",
        2,
        "BETA",
        "X",
        5001,
        9000,
        "-",
        [("ENST00000000102", 1, 1, "protein_coding", 5001, 9000, [(8616, 8900)], [(8613, 8615)], True)],
    ),
    (
        "ENSG00000000103",
        1,
        "GAMMA",
        "2",
        20001,
        24000,
        "+",
        [
            ("ENST00000000103", 1, 1, "protein_coding", 20001, 24000, [(20101, 20400)], [(20401, 20403)], True),
            ("ENST00000000104", 1, 1, "retained_intron", 20001, 22000, [], [], False),
        ],
    ),
    (
        "ENSG00000000105",
        1,
        "LONG",
        "3",
        100001,
        130000,
        "+",  # 30 kb > the test's max_gene_length
        [("ENST00000000105", 1, 1, "protein_coding", 100001, 101000, [(100101, 100400)], [(100401, 100403)], True)],
    ),
    (
        "ENSG00000000106",
        1,
        "NOPEP",
        "4",
        1001,
        2000,
        "+",
        [("ENST00000000106", 1, 1, "protein_coding", 1001, 2000, [(1101, 1400)], [(1401, 1403)], False)],
    ),
    (
        "ENSG00000000107",
        1,
        "VERS",
        "5",
        1001,
        2000,
        "-",
        [("ENST00000000107", 4, 3, "protein_coding", 1001, 2000, [(1301, 1600)], [(1298, 1300)], True)],
    ),
    (
        "ENSG00000000108",
        1,
        "MT-ND9",
        "MT",
        3307,
        4262,
        "+",
        [("ENST00000000108", 1, 1, "protein_coding", 3307, 4262, [(3307, 4259)], [], True)],
    ),
] + [
    (
        f"ENSG000000002{n:02d}",
        1,
        f"FILL{n}",
        "6",
        10_000 * n + 1,
        10_000 * n + 900,
        "+",
        [
            (
                f"ENST000000002{n:02d}",
                1,
                1,
                "protein_coding",
                10_000 * n + 1,
                10_000 * n + 900,
                [(10_000 * n + 101, 10_000 * n + 400)],
                [(10_000 * n + 401, 10_000 * n + 403)],
                True,
            )
        ],
    )
    for n in range(10)
]
KEPT_GENES = 15  # 17 genes minus LONG and NOPEP
JOIN_COLUMNS = ["dna_id", "rna_id", "protein_id"]
GTEX_ONLY = ("ENST00000000199.1", "ENSG00000000199.1")  # a GTEx transcript the GTF does not have
PAR_Y = ("ENST00000000101.3_PAR_Y", "ENSG00000000101.5_PAR_Y")


def tpm_of(row: int) -> list[float]:
    """TPM in the six GCT samples of GCT row `row`; row 0 (ALPHA) is worked by hand: Liver 2, Lung 5, Muscle 0."""
    return [1.0, 3.0, 5.0, 100.0, 1000.0, 0.0] if row == 0 else [row, 2.5 * row, row % 4, 7.0, 9.0, 0.5 * row]


def gct_rows() -> list[tuple[str, str]]:
    rows = [(f"{t[0]}.{t[2]}", f"{g[0]}.{g[1]}") for g in GENES for t in g[7]]
    return [*rows, GTEX_ONLY, PAR_Y]


def expected_means() -> dict[str, np.ndarray]:
    """transcript id -> (Liver, Lung, Muscle) mean TPM, by hand from SAMPLES' order."""
    return {
        tid: np.array([(v[0] + v[1]) / 2, v[2], v[5]]) for i, (tid, _) in enumerate(gct_rows()) for v in [tpm_of(i)]
    }


def peptide_of(tid: str) -> str:
    """FILL genes 2k and 2k + 1 share one peptide (5 peptides, each on two genes, which must share a split); every
    other gene has its own (ALPHA's is MKTAYIAKQR x 8)."""
    n = int(tid[-2:])
    return f"MFILL{'W' * (n // 2)}" if tid[-3] == "2" else "MKTAYIAKQR" * 8 + "G" * (n - 1)


def shared_window_genes() -> list[tuple]:
    """GENES with VERS moved onto BETA's TSS (chrX, minus strand, TSS 9000): two genes, one DNA window."""
    moved = ("ENST00000000107", 4, 3, "protein_coding", 8001, 9000, [(8301, 8600)], [(8298, 8300)], True)
    vers = ("ENSG00000000107", 1, "VERS", "X", 8001, 9000, "-", [moved])
    return [vers if gene[2] == "VERS" else gene for gene in GENES]


def write_gz(path, text: str) -> None:
    with gzip.open(path, "wt") as fh:
        fh.write(text)


def wrapped(sequence: str, width: int = 60) -> str:
    return "\n".join(sequence[i : i + width] for i in range(0, len(sequence), width))


def write_sources(folder, first_gct_line="#1.2", tissue_column="SMTS", tpm=tpm_of, genes=None):
    """The five source files, named as published, in their real formats; `tpm(row)` the GCT row's six TPMs;
    `genes` another gene list than GENES with the same transcript ids (e.g. `shared_window_genes()`)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {key: folder / source.filename for key, source in gtex.SOURCES.items()}
    rows = gct_rows()
    lines = [first_gct_line, f"{len(rows)}\t{len(SAMPLES)}", "\t".join(["transcript_id", "gene_id", *SAMPLES])]
    lines += ["\t".join([t, g, *(f"{x:g}" for x in tpm(i))]) for i, (t, g) in enumerate(rows)]
    write_gz(names["tpm"], "\n".join(lines) + "\n")

    # Extra columns, in an order nobody would guess; one sample that the GCT lacks.
    header = ["SMATSSCR", "SMTSD", "SMCENTER", "SAMPID", "SMRIN", tissue_column, "SMAFRZE"]
    attr = ["\t".join(header)]
    for sample, tissue in [*SAMPLES.items(), ("GTEX-9999Z-0001-SM-NOGCT", "Liver")]:
        if tissue:
            attr.append("\t".join(["1", DETAILED[tissue], "B1", sample, "7.2", tissue, "RNASEQ"]))
    names["attributes"].write_text("\n".join(attr) + "\n")

    gtf = ["#!genome-build GRCh38.p7", "#!genome-version GRCh38", "#!genebuild-last-updated 2016-06"]
    cdna, pep = [], []
    for gene, gver, symbol, chrom, gstart, gend, strand, transcripts in genes or GENES:
        gattr = (
            f'gene_id "{gene}"; gene_version "{gver}"; gene_name "{symbol}"; gene_source "ensembl_havana"; '
            'gene_biotype "protein_coding";'
        )
        gtf.append(f"{chrom}\tensembl_havana\tgene\t{gstart}\t{gend}\t.\t{strand}\t.\t{gattr}")
        for tid, tver, _, biotype, start, end, cds, stops, has_pep in transcripts:
            tattr = (
                f'gene_id "{gene}"; gene_version "{gver}"; transcript_id "{tid}"; transcript_version "{tver}"; '
                f'gene_name "{symbol}"; transcript_name "{symbol}-201"; transcript_biotype "{biotype}"; '
                'tag "basic"; transcript_support_level "1";'
            )
            gtf.append(f"{chrom}\thavana\ttranscript\t{start}\t{end}\t.\t{strand}\t.\t{tattr}")
            gtf.append(f'{chrom}\thavana\texon\t{start}\t{end}\t.\t{strand}\t.\t{tattr} exon_number "1";')
            pid = tid.replace("ENST", "ENSP")
            for a, b in cds:
                gtf.append(f'{chrom}\thavana\tCDS\t{a}\t{b}\t.\t{strand}\t0\t{tattr} protein_id "{pid}";')
            for a, b in stops:
                gtf.append(f"{chrom}\thavana\tstop_codon\t{a}\t{b}\t.\t{strand}\t0\t{tattr}")
            loc = f"chromosome:GRCh38:{chrom}:{start}:{end}:{1 if strand == '+' else -1}"
            tail = f"gene:{gene}.{gver} gene_biotype:protein_coding transcript_biotype:{biotype} gene_symbol:{symbol}"
            cdna.append(f">{tid}.{tver} cdna {loc} {tail} description:{symbol} protein [Source:HGNC]")
            cdna.append(wrapped(("acgt" * 40)[: 100 + int(tid[-2:])]))
            if has_pep:
                pep.append(
                    f">{pid}.{tver} pep {loc} gene:{gene}.{gver} transcript:{tid}.{tver} "
                    f"gene_biotype:protein_coding transcript_biotype:{biotype} gene_symbol:{symbol}"
                )
                pep.append(wrapped(peptide_of(tid) + ("*" if tid.endswith("101") else "")))
    write_gz(names["gtf"], "\n".join(gtf) + "\n")
    write_gz(names["cdna"], "\n".join(cdna) + "\n")
    write_gz(names["pep"], "\n".join(pep) + "\n")
    return names


CONFIG = gtex.GtexConfig(tissues=TISSUES, max_gene_length=20_000, window_bins=8, bin_bp=128, holdout_tissues=("Lung",))


def read_outputs(out):
    tables = {p.stem: pd.read_parquet(p) for p in out.glob("*.parquet")}
    return tables, json.loads((out / "recipe.json").read_text())
