"""The demo genome's gene layouts beyond the CRISPRi screen's chr1-chr3 (`make_demo_data.py` states the rules):
chr4's isoform genes (alternative first exons, each coding transcript's CDS starting at the first ATG in a Kozak
context) and chr5's Bio-DTA genes (one promoter each). Each layout returns the chromosome's sequence, its gene and
transcript records (as `demo_files.py` writes them) and every planted motif as (chrom, start0, end0, kind, strand)."""

from __future__ import annotations

import re

import numpy as np
from dogmacache.contracts.sequences import reverse_complement

GC_BOX = "GGGCGG"  # SP1-like GC box, repeated into 64 bp blocks
GC_BLOCK = (GC_BOX * 11)[:64]
PROMOTER_MOTIF = "TATAAA"
ARE_BLOCK = "TATTTA" * 6  # 36 bp AU-rich element (ATTTA repeats); in frame, one repeated NT 6-mer token
KOZAK = "GCCACCATGG"  # gccRccATGG; the CDS starts at its ATG (offset 6)
KOZAK_PATTERN = re.compile("[AG]CCATGG")  # what makes an ATG a start: R at -3, G at +4
DECOY_ATG = "TTTATGT"  # an ATG in poor context (T at -3 and +4): never a start
N_ISO_GENES, N_REG_GENES = 80, 320
ISO_CHROM, REG_CHROM = "chr4", "chr5"
CODONS = {
    "A": "GCC",
    "R": "CGG",
    "N": "AAC",
    "D": "GAC",
    "C": "TGC",
    "Q": "CAG",
    "E": "GAG",
    "G": "GGC",
    "H": "CAC",
    "I": "ATC",
    "L": "CTG",
    "K": "AAG",
    "M": "ATG",
    "F": "TTC",
    "P": "CCC",
    "S": "AGC",
    "T": "ACC",
    "W": "TGG",
    "Y": "TAC",
    "V": "GTG",
}
# no codon ends in A or AT, so back-translated sequence holds an ATG only where a residue is M (in frame)
LINKER = 20  # residues before the shared exon's own start: 18 random (no M) + A, T, whose codons GCC ACC are a Kozak


def random_dna(rng: np.random.Generator, n: int, p: list[float] | None = None) -> str:
    return "".join(rng.choice(list("ACGT"), size=n, p=p))


def utr(rng: np.random.Generator, n: int) -> str:
    """Random untranslated sequence, as AT-rich as the genome around it (the GC-rich codons stand out), without a
    Kozak-context ATG (its +4 G turned to T)."""
    seq = random_dna(rng, n, [0.29, 0.21, 0.21, 0.29])
    while (m := KOZAK_PATTERN.search(seq)) is not None:
        seq = seq[: m.end() - 1] + "T" + seq[m.end() :]
    return seq


def protein(rng: np.random.Generator, weight: float, length: tuple[int, int] = (80, 160)) -> str:
    """Random protein whose K/R vs D/E balance encodes `weight` (0.4 .. 1.4)."""
    n = int(rng.integers(*length))
    basic = 0.04 + 0.16 * (weight - 0.4)  # 4% .. 20% K/R
    acidic = 0.20 - basic + 0.04
    others = "ACGHILMNPQSTVWYF"
    p = np.array([basic / 2, basic / 2, acidic / 2, acidic / 2] + [(1 - basic - acidic) / len(others)] * len(others))
    residues = rng.choice(list("KRDE" + others), size=n - 1, p=p / p.sum())
    return "M" + "".join(residues)


def back_translate(peptide: str) -> str:
    return "".join(CODONS[a] for a in peptide)


def _no_m(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(list("ACDEFGHIKLNPQRSTVWY"), size=n))


def promoter(local: list[str], tss: int, n_gc: int, n_tata: int, motifs: list[tuple[int, int, str]]) -> None:
    """GC-box blocks in [-480, -256) (80 bp apart) and TATAAA at -180, -120, -60 of `tss` (sense, 0-based)."""
    for b in range(n_gc):
        a = tss - 480 + 80 * b
        local[a : a + 64] = list(GC_BLOCK)
        motifs.append((a, a + 64, "gc_box"))
    for b in range(n_tata):
        a = tss - 180 + 60 * b
        local[a : a + 6] = list(PROMOTER_MOTIF)
        motifs.append((a, a + 6, "tata"))


def _place(pieces, motifs_local, start0: int, sense: str, strand: str, chrom: str, motifs: list) -> None:
    """Record a gene's sense sequence at 0-based `start0` on `strand`, and its motifs in genome coordinates."""
    size = len(sense)
    pieces.append((start0, sense if strand == "+" else reverse_complement(sense)))
    for a, b, kind in motifs_local:
        lo, hi = (start0 + a, start0 + b) if strand == "+" else (start0 + size - b, start0 + size - a)
        motifs.append((chrom, lo, hi, kind, strand))


def _chromosome(rng: np.random.Generator, length: int, pieces) -> str:
    chrom = list(rng.choice(list("ACGT"), size=length, p=[0.29, 0.21, 0.21, 0.29]))
    for start0, seq in pieces:
        chrom[start0 : start0 + len(seq)] = list(seq)
    for _ in range(len(chrom) // 20_000):  # soft-masked repeats, as on chr1-chr3
        a, n = int(rng.integers(0, len(chrom) - 400)), int(rng.integers(100, 400))
        chrom[a : a + n] = [b.lower() for b in chrom[a : a + n]]
    return "".join(chrom)


def isoform_genes(rng: np.random.Generator, first_gene: int) -> tuple[str, list[dict], list[dict], list[tuple]]:
    """chr4: N_ISO_GENES genes, each laid out 5' -> 3' in its own sense sequence, then written on its strand."""
    genes, transcripts, pieces, motifs, pos = [], [], [], [], 2_000
    for k in range(N_ISO_GENES):
        g, strand = first_gene + k, "+" if k % 2 == 0 else "-"
        weight = float(rng.uniform(0.4, 1.4))
        body = protein(rng, weight, (40, 71))
        body = "M" + str(rng.choice(list("AGVED"))) + body[2:]  # its second codon starts with G: a Kozak +4
        n_coding, noncoding = int(rng.integers(2, 6)), bool(rng.random() < 0.35)
        tss = [600 + 1_600 * j + int(rng.integers(0, 100)) for j in range(n_coding)]
        local = list(random_dna(rng, tss[-1]))
        here: list[tuple[int, int, str]] = []
        features, exon1, nterm = [], [], []
        for j, start in enumerate(tss):
            n_gc, n_tata = int(rng.integers(0, 4)), int(rng.integers(0, 4))
            promoter(local, start, n_gc, n_tata, here)
            features.append((n_gc, n_tata))
            # exon 1: its own start codon (Kozak) at 24-300 bp from the TSS, or 5' UTR only (start in exon 2); the
            # first transcript of a gene with a non-coding isoform (same TSS) is 5' UTR only, so the window agrees
            own_start = rng.random() < 0.6 and not (noncoding and j == 0)
            if own_start:
                d, n_res = int(rng.integers(24, 331)), int(rng.integers(20, 41))
                d -= (d + 3 * n_res) % 6  # exon 1 ends in frame with the cDNA's 6-mers
                peptide = "M" + str(rng.choice(list("AGVED"))) + _no_m(rng, n_res - 2)
                lead = list(utr(rng, d - 6))
                for _ in range(int(rng.integers(0, 3))):  # decoy ATGs in poor context upstream of the start
                    at = int(rng.integers(0, max(d - 6 - len(DECOY_ATG), 1)))
                    if at + len(DECOY_ATG) <= len(lead):
                        lead[at : at + len(DECOY_ATG)] = list(DECOY_ATG)
                seq = "".join(lead) + "GCC" + str(rng.choice(list("AG"))) + "CC" + back_translate(peptide)
                here.append((start + d - 6, start + d + 4, "kozak_atg"))
            else:
                peptide, seq = "", list(utr(rng, 6 * int(rng.integers(10, 51))))
                at = int(rng.integers(0, len(seq) - len(DECOY_ATG)))
                seq[at : at + len(DECOY_ATG)] = list(DECOY_ATG)
                seq = "".join(seq)
            here += [(start + m.start(), start + m.end(), "decoy_atg") for m in re.finditer(DECOY_ATG, seq)]
            if j < n_coding - 1:
                local[start : start + len(seq)] = list(seq)
            else:  # the last first exon: a 60-500 bp intron to the shared coding exon
                local[start:] = list(seq) + list(random_dna(rng, int(rng.integers(60, 501))))
            exon1.append((start, start + len(seq)))
            nterm.append(peptide)
        linker = _no_m(rng, LINKER - 2) + "AT"
        cds = back_translate(linker + body) + "TAA"  # from the linker: in frame with every exon-1 start
        pad = (-(len(cds) + 30)) % 6  # exons 1 and 2 are whole 6-mers: exon 3 starts in frame with the cDNA's
        exon2_seq = cds + utr(rng, 30 + pad)
        e2 = len(local)
        local += list(exon2_seq)
        here.append((e2 + 3 * LINKER - 6, e2 + 3 * LINKER + 4, "kozak_atg"))
        exon3, are = [], []
        for _ in range(2):  # two alternative 3' UTR exons, 156 bp each, with 0-3 AU-rich blocks at in-frame offsets
            local += list(random_dna(rng, 300))
            seq, n_are = list(utr(rng, 156)), int(rng.integers(0, 4))
            for b in range(n_are):
                seq[6 + 48 * b : 42 + 48 * b] = list(ARE_BLOCK)
                here.append((len(local) + 6 + 48 * b, len(local) + 42 + 48 * b, "are"))
            exon3.append((len(local), len(local) + 156))
            are.append(n_are)
            local += seq
        local += list(random_dna(rng, 200))
        sense, start0, size = "".join(local), pos, len(local)
        _place(pieces, here, start0, sense, strand, ISO_CHROM, motifs)
        pos += size + 1_500

        def span(a: int, b: int, start0=start0, size=size, strand=strand) -> tuple[int, int]:
            return (start0 + a + 1, start0 + b) if strand == "+" else (start0 + size - b + 1, start0 + size - a)

        genes.append(
            dict(symbol=f"ISO{k + 1:02d}", gene_id=f"ENSG9{g + 1:010d}", chrom=ISO_CHROM, strand=strand, weight=weight)
        )
        genes[-1]["protein"] = body
        genes[-1]["tss_features"] = features[0]  # the gene line starts at transcript 1's TSS
        for j in range(n_coding + noncoding):
            coding, variant = j < n_coding, int(rng.integers(0, 2))
            first = exon1[j] if coding else exon1[0]  # the non-coding transcript starts at transcript 1's TSS
            parts = [first, (e2, e2 + len(exon2_seq)), exon3[variant]] if coding else [first, exon3[variant]]
            if coding and nterm[j]:  # CDS from exon 1's Kozak ATG, through the linker, into exon 2
                pieces_cds = [(first[1] - 3 * len(nterm[j]), first[1]), (e2, e2 + len(cds) - 3)]
                peptide = nterm[j] + linker + body
            else:
                pieces_cds, peptide = [(e2 + 3 * LINKER, e2 + len(cds) - 3)], body
            ends = [span(*parts[0]), span(*parts[-1])]
            transcripts.append(
                dict(
                    gene=g,
                    tx_id=f"ENST9{g + 1:07d}{j + 1:03d}",
                    prot_id=f"ENSP9{g + 1:07d}{j + 1:03d}",
                    start=min(e[0] for e in ends),
                    end=max(e[1] for e in ends),
                    exons=sorted(span(a, b) for a, b in parts),
                    cds=sorted(span(a, b) for a, b in pieces_cds) if coding else None,
                    stop=span(e2 + len(cds) - 3, e2 + len(cds)) if coding else None,
                    cdna="".join(sense[a:b] for a, b in parts),
                    protein=peptide if coding else None,
                    promoter=features[j if coding else 0][1],
                    gc=features[j if coding else 0][0],
                    are=are[variant],
                    biotype="protein_coding" if coding else "processed_transcript",
                )
            )
    return _chromosome(rng, pos + 500, pieces), genes, transcripts, motifs


def regulated_genes(rng: np.random.Generator, first_gene: int) -> tuple[str, list[dict], list[dict], list[tuple]]:
    """chr5: N_REG_GENES lncRNA genes 2.6 kb apart (a TSS window holds one promoter), alternating strands, each
    with 0-3 GC-box blocks and 0-3 TATA boxes upstream of its TSS and two exons (200 + 300 bp, 400 bp intron)."""
    genes, transcripts, pieces, motifs, pos = [], [], [], [], 1_500
    for k in range(N_REG_GENES):
        g, strand = first_gene + k, "+" if k % 2 == 0 else "-"
        local, here = list(random_dna(rng, 1_700)), []
        tss = 600
        n_gc, n_tata = int(rng.integers(0, 4)), int(rng.integers(0, 4))
        promoter(local, tss, n_gc, n_tata, here)
        exons = [(tss, tss + 200), (tss + 600, tss + 900)]
        for a, b in exons:
            local[a:b] = list(utr(rng, b - a))
        sense, size = "".join(local), len(local)
        _place(pieces, here, pos, sense, strand, REG_CHROM, motifs)

        def span(a: int, b: int, start0=pos, size=size, strand=strand) -> tuple[int, int]:
            return (start0 + a + 1, start0 + b) if strand == "+" else (start0 + size - b + 1, start0 + size - a)

        genes.append(
            dict(
                symbol=f"REG{k + 1:03d}",
                gene_id=f"ENSG9{g + 1:010d}",
                chrom=REG_CHROM,
                strand=strand,
                biotype="lncRNA",
                tss_features=(n_gc, n_tata),
            )
        )
        spans = sorted(span(a, b) for a, b in exons)
        transcripts.append(
            dict(
                gene=g,
                tx_id=f"ENST9{g + 1:07d}001",
                start=spans[0][0],
                end=spans[-1][1],
                exons=spans,
                cds=None,
                stop=None,
                cdna="".join(sense[a:b] for a, b in exons),
                biotype="lncRNA",
            )
        )
        pos += 2_600
    return _chromosome(rng, pos + 1_000, pieces), genes, transcripts, motifs
