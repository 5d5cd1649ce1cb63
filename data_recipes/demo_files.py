"""The demo's source files, each in the real format and under the real file name a recipe reads: the CRISPRi
screen (Gasperini), UniProt, the Ensembl GTF and FASTAs, the GTEx GCT and sample attributes. `make_demo_data.py`
lays out the genome, genes, transcripts and enhancers (and states the hidden rules); this module only writes them.
Every file is byte-for-byte deterministic (gzip without a timestamp or name)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from dogmacache.data_recipes.demo_truth import NOISE, PROTEIN, SHARED, TISSUE_DNA, TISSUES

HG19_SHIFT = {"chr1": 2_000, "chr2": 1_500, "chr3": 1_000}  # demo "hg19" = hg38 - shift (a chain file says so)
GENES_PER_ENHANCER = 6
SAMPLES_PER_TISSUE = 4


def write_gz(path: Path, text: str) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(text.encode())


def fasta(records: list[tuple[str, str]], width: int = 60) -> str:
    lines = []
    for header, seq in records:
        lines.append(f">{header}")
        lines += [seq[i : i + width] for i in range(0, len(seq), width)]
    return "\n".join(lines) + "\n"


def write_gasperini(out, rng, genes, transcripts, enhancers, null_rng=None) -> None:
    """The CRISPRi screen's results; with `null_rng` (the null twin) every pair's beta is then moved to another
    pair (a permutation over all pairs), so a beta follows neither its enhancer nor its gene."""
    header = (
        "pairs4merge gRNA_group ENSG gene_short_name target_gene.chr target_gene.start target_gene.stop strand "
        "target_site.chr target_site.start target_site.stop site_type quality_rank_grna beta intercept "
        "fold_change.transcript_remaining pvalue.raw pvalue.empirical pvalue.empirical.adjusted outlier_gene"
    )
    rows = ["\t".join(header.split())]
    tss = {g: min(t["start"] for t in transcripts if t["gene"] == g) for g in range(len(genes))}
    for enh in enhancers:
        shift = HG19_SHIFT[enh["chrom"]]
        near = sorted((abs(tss[g] - enh["center"]), g) for g in range(len(genes)) if genes[g]["chrom"] == enh["chrom"])
        for _, g in near[:GENES_PER_ENHANCER]:
            gene = genes[g]
            beta = gene["offset"] - 0.25 * gene["weight"] * enh["label_active"] + rng.normal(0, 0.08)
            effect = abs(beta - gene["offset"])
            p_adj = float(np.clip(rng.uniform(0, 0.01) if effect > 0.25 else rng.uniform(0.05, 1), 0, 1))
            p_text = "not_applicable" if rng.random() < 0.03 else f"{p_adj:.4g}"
            rows.append(
                "\t".join(
                    map(
                        str,
                        [
                            f"{gene['gene_id']}:{enh['id']}",
                            enh["id"],
                            gene["gene_id"],
                            gene["symbol"],
                            gene["chrom"],
                            tss[g] - shift,
                            tss[g] - shift + 2_000,
                            gene["strand"],
                            enh["chrom"],
                            enh["center"] - 300 - shift,
                            enh["center"] + 300 - shift,
                            "DHS",
                            "top_two",
                            f"{beta:.5f}",
                            f"{rng.normal(-2, 0.5):.4f}",
                            f"{np.exp(beta):.4f}",
                            f"{p_adj / 10:.4g}",
                            f"{p_adj:.4g}",
                            p_text,
                            "FALSE",
                        ],
                    )
                )
            )
    if null_rng is not None:
        fields = [row.split("\t") for row in rows[1:]]
        betas = null_rng.permutation([f[13] for f in fields])
        for f, beta in zip(fields, betas, strict=True):
            f[13], f[15] = beta, f"{np.exp(float(beta)):.4f}"
        rows[1:] = ["\t".join(f) for f in fields]
    for i in range(5):  # TSS controls and non-targeting rows, which the recipe drops
        gene = genes[i]
        rows.append(
            "\t".join(
                map(
                    str,
                    [
                        f"{gene['gene_id']}:tss{i}",
                        f"{gene['symbol']}_TSS",
                        gene["gene_id"],
                        gene["symbol"],
                        gene["chrom"],
                        5000,
                        7000,
                        "+",
                        gene["chrom"],
                        5000,
                        5600,
                        "TSS",
                        "top_two",
                        "-1.2",
                        "-2",
                        "0.3",
                        "1e-6",
                        "1e-5",
                        "1e-4",
                        "FALSE",
                    ],
                )
            )
        )
        rows.append(
            "\t".join(
                map(
                    str,
                    [
                        f"{gene['gene_id']}:NTC{i}",
                        f"NTC_{i}",
                        gene["gene_id"],
                        gene["symbol"],
                        gene["chrom"],
                        5000,
                        7000,
                        "+",
                        "NTC",
                        "NA",
                        "NA",
                        "NTC",
                        "NA",
                        "0.01",
                        "-2",
                        "1.01",
                        "0.8",
                        "0.9",
                        "not_applicable",
                        "FALSE",
                    ],
                )
            )
        )
    write_gz(out / "GSE120861_all_deg_results.at_scale.txt.gz", "\n".join(rows) + "\n")


def write_uniprot(out, genes) -> None:
    records = []
    for i, gene in enumerate(genes):
        if gene["symbol"] == "DEMO36":
            continue  # a target gene without a Swiss-Prot entry: the recipe counts it as missing
        acc = f"Q9D{i:03d}"
        records.append(
            (
                f"sp|{acc}|{gene['symbol']}_HUMAN Demo protein {i + 1} OS=Homo sapiens OX=9606 "
                f"GN={gene['symbol']} PE=1 SV=1",
                gene["protein"],
            )
        )
    write_gz(out / "uniprot_human_swissprot.fasta.gz", fasta(records))


def write_ensembl(out, genes, transcripts) -> None:
    lines = ["#!genome-build GRCh38.demo", "#!genome-version GRCh38"]

    def attrs(g, t=None, extra=""):
        gene = genes[g]
        text = f'gene_id "{gene["gene_id"]}"; gene_version "1"; '
        if t is not None:
            text += f'transcript_id "{t["tx_id"]}"; transcript_version "2"; '
        biotype = gene.get("biotype", "protein_coding")
        text += f'gene_name "{gene["symbol"]}"; gene_source "demo"; gene_biotype "{biotype}"; '
        if t is not None:
            text += f'transcript_name "{gene["symbol"]}-20{t["tx_id"][-1]}"; transcript_biotype "{t["biotype"]}";'
        return text + extra

    for g, gene in enumerate(genes):
        txs = [t for t in transcripts if t["gene"] == g]
        chrom = gene["chrom"].removeprefix("chr")
        lines.append(
            "\t".join(
                [
                    chrom,
                    "demo",
                    "gene",
                    str(min(t["start"] for t in txs)),
                    str(max(t["end"] for t in txs)),
                    ".",
                    gene["strand"],
                    ".",
                    attrs(g),
                ]
            )
        )
        for t in txs:
            lines.append(
                "\t".join(
                    [chrom, "demo", "transcript", str(t["start"]), str(t["end"]), ".", gene["strand"], ".", attrs(g, t)]
                )
            )
            for n, (a, b) in enumerate(t["exons"], 1):
                lines.append(
                    "\t".join(
                        [
                            chrom,
                            "demo",
                            "exon",
                            str(a),
                            str(b),
                            ".",
                            gene["strand"],
                            ".",
                            attrs(g, t, f' exon_number "{n}";'),
                        ]
                    )
                )
            if t["cds"] is None:
                continue  # non-coding: exons only
            done = 0  # coding bases before this CDS line, 5' -> 3': its frame is the bases to skip to a codon
            for a, b in t["cds"] if gene["strand"] == "+" else t["cds"][::-1]:
                extra = f' protein_id "{t["prot_id"]}"; protein_version "1";'
                lines.append(
                    "\t".join(
                        [chrom, "demo", "CDS", str(a), str(b), ".", gene["strand"], str(-done % 3), attrs(g, t, extra)]
                    )
                )
                done += b - a + 1
            lines.append(
                "\t".join(
                    [
                        chrom,
                        "demo",
                        "stop_codon",
                        str(t["stop"][0]),
                        str(t["stop"][1]),
                        ".",
                        gene["strand"],
                        "0",
                        attrs(g, t),
                    ]
                )
            )
    write_gz(out / "Homo_sapiens.GRCh38.88.gtf.gz", "\n".join(lines) + "\n")

    cdna, pep = [], []
    for t in transcripts:
        gene = genes[t["gene"]]
        loc = f"chromosome:GRCh38:{gene['chrom'].removeprefix('chr')}:{t['start']}:{t['end']}:" + (
            "1" if gene["strand"] == "+" else "-1"
        )
        common = (
            f"gene:{gene['gene_id']}.1 gene_biotype:{gene.get('biotype', 'protein_coding')} "
            f"transcript_biotype:{t['biotype']} gene_symbol:{gene['symbol']}"
        )
        cdna.append((f"{t['tx_id']}.2 cdna {loc} {common} description:demo", t["cdna"]))
        if t["gene"] == 2 and t["tx_id"].endswith("001"):
            continue  # one transcript without a peptide record: the recipe drops and counts it
        if t["cds"] is None:
            continue  # non-coding: no peptide
        pep.append(
            (
                f"{t['prot_id']}.1 pep {loc} {common.split(' ')[0]} transcript:{t['tx_id']}.2 "
                f"{' '.join(common.split(' ')[1:])} description:demo",
                t["protein"],
            )
        )
    write_gz(out / "Homo_sapiens.GRCh38.cdna.all.fa.gz", fasta(cdna))
    write_gz(out / "Homo_sapiens.GRCh38.pep.all.fa.gz", fasta(pep))


def write_gtex(out, rng, genes, transcripts, weights, label_sources) -> None:
    """TPMs of `transcripts` by the expression rule (demo_truth's coefficients, `weights` per tissue), each row
    computed from the features of its `label_sources` entry (itself; another transcript in the null twin)."""
    samples = [
        (f"GTEX-DEMO{i:02d}-{t[:3].upper()}-SM-{j}", t)
        for i, t in enumerate(TISSUES)
        for j in range(SAMPLES_PER_TISSUE)
    ]
    samples += [("GTEX-DEMO99-BMW-SM-0", "Bone Marrow"), ("GTEX-DEMO99-BMW-SM-1", "Bone Marrow")]
    columns = [s for s, _ in samples] + ["GTEX-NOATTR-0001-SM-X"]  # a sample without attributes
    rows = []
    for t, source in zip(transcripts, label_sources, strict=True):
        gene, w = genes[t["gene"]], genes[source["gene"]]["weight"]
        coding = source["cds"] is not None and not (source["gene"] == 2 and source["tx_id"].endswith("001"))
        a, p, r = source["gc"], source["promoter"], source["are"]
        shared = 2.0 + SHARED["a"] * a + SHARED["p"] * p + SHARED["r"] * r
        specific = TISSUE_DNA["a"] * a + TISSUE_DNA["p"] * p
        values = []
        for _sid, tissue in samples + [("", "Blood")]:
            u, v = (weights[tissue]["u"], weights[tissue]["v"]) if tissue in weights else (0.0, 0.0)
            log_expr = shared + u * specific + PROTEIN * coding * (w - 0.9) * v + rng.normal(0, NOISE)
            values.append(f"{max(np.expm1(max(log_expr, 0.0)), 0.0):.3f}")
        rows.append("\t".join([f"{t['tx_id']}.2", f"{gene['gene_id']}.1", *values]))
    rows.append("\t".join(["ENST99999999999.1", "ENSG99999999999.1", *["1.000"] * len(columns)]))  # not in the GTF
    text = "#1.2\n" + f"{len(rows)}\t{len(columns)}\n" + "\t".join(["transcript_id", "gene_id", *columns]) + "\n"
    write_gz(out / "GTEx_Analysis_2017-06-05_v8_RSEMv1.3.0_transcript_tpm.gct.gz", text + "\n".join(rows) + "\n")
    attrs = ["SAMPID\tSMATSSCR\tSMCENTER\tSMPTHNTS\tSMRIN\tSMTS\tSMTSD\tSMUBRID\tSMAFRZE"]
    for sid, tissue in samples:
        attrs.append(f"{sid}\t1\tB1\tdemo\t7.1\t{tissue}\t{tissue} - Demo\t0001\tRNASEQ")
    (out / "GTEx_Analysis_v8_Annotations_SampleAttributesDS.txt").write_text("\n".join(attrs) + "\n")
