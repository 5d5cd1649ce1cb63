"""Writes the bundled demo sources (`data_recipes/demo_data/`): a synthetic genome and every file the real
recipes read, in the real formats and under the real file names, so the demo runs the real parsers, and `truth/`,
what was planted (`demo_truth.py`).

    python -m dogmacache.data_recipes.make_demo_data [DIR]     # deterministic: the same bytes every time
    write_demo_data(DIR, null=True)                            # the null twin (a few seconds)

The genome: chr1-chr3 (250 + 200 + 150 kb) hold the CRISPRi screen's 36 genes and 180 enhancers; chr4 and chr5
(written after them, each from its own random stream, so chr1-chr3 and the screen's files do not depend on them)
hold 80 isoform genes and 320 Bio-DTA genes. UCSC names, 60-column lines, soft-masked stretches.
Genes DEMO01-36 (chr1-3): both strands, 1-3 transcripts each (alternative first exons), two exons, CDS
back-translated from a protein whose composition carries a per-gene weight (its CDS lies beyond the TSS windows).
Genes ISO01-80 (chr4, `demo_layout.py`): both strands, 2-5 protein-coding transcripts each with its own first exon
(its own TSS, >= 1.5 kb from the next, so the 2,048 bp around a TSS that the tiny Enformer reads hold one promoter),
a shared coding exon 60-500 bp after the last first exon, and one of two 3' UTR exons; about a third of the genes
add a non-coding transcript (the first transcript's first exon, 5' UTR only, so the two share a TSS window and its
all-zero mask, + a 3' UTR exon). 60 % of the other first exons carry their own start codon 19-330 bp after the TSS.
Genes REG001-320 (chr5): lncRNA genes 2.6 kb apart, one promoter and two exons each.
Enhancers: 180 sites, each with 0-3 active blocks (64 bp of repeated GC box GGGCGG) and 0-3 inert AT-rich
blocks, each block in its own 128 bp slot of the central 1,024 bp.

The hidden rules (what a model can learn; nothing downstream reads them; coefficients in demo_truth.py and
truth/truth.json):
- CRISPRi: beta(enhancer e, gene g) = c_g - 0.25 * w_g * active_e + N(0, 0.08), for the 6 genes nearest e
  (active_e = number of GC-box blocks, 0-3).
  c_g ~ N(0, 0.1); w_g in [0.4, 1.4] is written into the protein's lysine/arginine vs aspartate/glutamate balance.
- Expression, per sample: log(1 + TPM(t, tissue)) = 2 + 0.45 a_t + 0.3 p_t - 0.35 r_t   (shared: every tissue)
  + u_tissue * (0.3 a_t - 0.3 p_t) + 1.2 * coding_t * (w_g - 0.9) * v_tissue + N(0, 0.15)   (tissue-specific),
  floored at 0, where a_t = 64 bp GC-box blocks in [-480, -256) of the transcript's TSS (0-3; DNA), p_t = TATAAA
  copies at -180/-120/-60 (0-3; DNA), r_t = 36 bp AU-rich blocks (TATTTA x 6, in frame with the cDNA's 6-mers) in
  its 3' UTR exon (0-3; RNA), coding_t = 1 when it has a protein, w_g the gene's protein weight (protein);
  |u_tissue|, |v_tissue| in [0.3, 1] with random signs. Since |u| <= 1, a GC box or TATA box raises expression in
  every tissue: a tissue-agnostic model learns the shared part, tissue conditioning adds the rest. The DEMO genes
  have a_t = r_t = 0. Held-out folds (demo_truth.HOLDOUT_FOLDS, 3 x 3 tissues) are matched on |u| and |v|.
- Coding: a coding transcript's CDS starts at the first ATG of its cDNA in a Kozak context ([AG]CCATGG), either in
  its first exon (N-terminal residues of its own, then an 18-residue linker, into the shared coding exon) or at
  the shared coding exon's own Kozak ATG after the linker; decoy ATGs in poor context (TTTATGT) sit upstream.
- Bio-DTA: the scGPT gene-embedding row of each of the 436 genes = P @ (gc - 1.5, tata - 1.5) + 0.7 N(0, I_32),
  gc/tata the GC-box blocks and TATA boxes upstream of the gene line's TSS, P a fixed random 32 x 2 projection.
- Null twin: the same genome, GTF and sequences; each label reads a shuffled enhancer's, transcript's or gene's
  features, so no label depends on its own inputs.

Here: the screen's genome, genes, transcripts and enhancers, and the hidden rules' inputs; `demo_layout.py` lays
out chr4 and chr5, `demo_files.py` writes everything into each source's real format, `demo_truth.py` writes truth/.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from dogmacache.contracts.sequences import reverse_complement
from dogmacache.data_recipes.demo_files import (
    HG19_SHIFT,
    fasta,
    write_ensembl,
    write_gasperini,
    write_gtex,
    write_gz,
    write_uniprot,
)
from dogmacache.data_recipes.demo_layout import (
    ARE_BLOCK,
    CODONS,
    GC_BOX,
    ISO_CHROM,
    N_ISO_GENES,
    PROMOTER_MOTIF,
    REG_CHROM,
    isoform_genes,
    regulated_genes,
)
from dogmacache.data_recipes.demo_layout import protein as _protein
from dogmacache.data_recipes.demo_layout import random_dna as _random
from dogmacache.data_recipes.demo_truth import tissue_weights, write_truth

HERE = Path(__file__).parent / "demo_data"
CHROMS = {"chr1": 250_000, "chr2": 200_000, "chr3": 150_000}
N_GENES, N_ENHANCERS = 36, 180
SEED = 7

__all__ = ["ARE_BLOCK", "CODONS", "GC_BOX", "HERE", "ISO_CHROM", "N_ISO_GENES", "REG_CHROM", "write_demo_data"]


def write_demo_data(out_dir: str | Path = HERE, null: bool = False) -> Path:
    """Every demo source and `truth/` into `out_dir`; `null`: the same inputs with every label drawn independently
    of them (CRISPRi betas, GTEx TPMs, the planted gene tokens). Returns `out_dir`."""
    out = Path(out_dir)
    build(out, SEED, null)
    return out


def build(out: Path = HERE, seed: int = SEED, null: bool = False) -> None:
    """The sources and truth/ (`write_demo_data` is the entry point). chr1-chr3 and the screen's labels come from
    one random stream in a fixed order; everything added later draws from its own stream, so they never change."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    genome = {c: list(rng.choice(list("ACGT"), size=n, p=[0.29, 0.21, 0.21, 0.29])) for c, n in CHROMS.items()}

    def put(chrom: str, pos: int, seq: str) -> None:  # 0-based
        genome[chrom][pos : pos + len(seq)] = list(seq)

    # genes: evenly spread, alternating strands. Transcripts share exon 2 (5' UTR, CDS + stop, 3' UTR) and
    # differ in their first exon, 600 bp further upstream for each alternative transcript.
    gene_rows, transcripts, occupied, motifs = [], [], [], []
    chrom_of_gene = np.repeat(list(CHROMS), [16, 11, 9])
    for g in range(N_GENES):
        chrom = str(chrom_of_gene[g])
        k = int((chrom_of_gene[:g] == chrom).sum())
        slot = CHROMS[chrom] // (int((chrom_of_gene == chrom).sum()) + 1)
        anchor = slot * (k + 1) + int(rng.integers(-1500, 1500))  # 0-based start (+) / end (-) of exon 2
        strand = "+" if g % 2 == 0 else "-"
        # base: no longer in any rule, still drawn so that the random stream (and the screen's files) stay as they were
        weight, offset, base = float(rng.uniform(0.4, 1.4)), float(rng.normal(0, 0.1)), float(rng.normal(0, 1))
        protein = _protein(rng, weight)
        cds = "".join(CODONS[a] for a in protein) + "TAA"  # the GTF's CDS excludes the stop codon
        symbol, gene_id = f"DEMO{g + 1:02d}", f"ENSG9{g + 1:010d}"
        gene_rows.append(
            dict(
                symbol=symbol,
                gene_id=gene_id,
                chrom=chrom,
                strand=strand,
                weight=weight,
                offset=offset,
                base=base,
                protein=protein,
            )
        )
        utr5, utr3 = _random(rng, 60), _random(rng, 57)
        exon2 = utr5 + cds + utr3
        n2, c0, c1 = len(exon2), len(utr5), len(utr5) + len(cds)  # CDS+stop at exon-2 offsets [c0, c1)
        if strand == "+":
            put(chrom, anchor, exon2)
            exon2_span, cds_span, stop_span = (
                (anchor + 1, anchor + n2),
                (anchor + c0 + 1, anchor + c1 - 3),
                (anchor + c1 - 2, anchor + c1),
            )
        else:
            put(chrom, anchor - n2, reverse_complement(exon2))
            exon2_span, cds_span, stop_span = (
                (anchor - n2 + 1, anchor),
                (anchor - c1 + 4, anchor - c0),
                (anchor - c1 + 1, anchor - c1 + 3),
            )
        for t in range(int(rng.integers(1, 4))):
            intron = 400 + 600 * t + int(rng.integers(0, 200))
            exon1 = _random(rng, 150)
            upstream = list(_random(rng, 200))
            n_promoter = int(rng.integers(0, 4))
            for j in range(n_promoter):
                upstream[20 + 60 * j : 26 + 60 * j] = list(PROMOTER_MOTIF)
            upstream = "".join(upstream)
            if strand == "+":
                first = anchor - intron - 150  # 0-based start of exon 1
                put(chrom, first - 200, upstream + exon1)
                exon1_span, tx = (first + 1, first + 150), (first + 1, exon2_span[1])
                tata = [(first - 180 + 60 * j, first - 174 + 60 * j) for j in range(n_promoter)]
            else:
                first = anchor + intron  # 0-based start (lowest coordinate) of exon 1
                put(chrom, first, reverse_complement(upstream + exon1))
                exon1_span, tx = (first + 1, first + 150), (exon2_span[0], first + 150)
                tata = [(first + 324 - 60 * j, first + 330 - 60 * j) for j in range(n_promoter)]
            motifs += [(chrom, lo, hi, "tata", strand) for lo, hi in tata]
            transcripts.append(
                dict(
                    gene=g,
                    tx_id=f"ENST9{g + 1:07d}{t + 1:03d}",
                    prot_id=f"ENSP9{g + 1:07d}{t + 1:03d}",
                    start=tx[0],
                    end=tx[1],
                    exons=[exon1_span, exon2_span],
                    cds=[cds_span],
                    stop=stop_span,
                    cdna=exon1 + exon2,
                    protein=protein,
                    promoter=n_promoter,
                    gc=0,
                    are=0,
                    biotype="protein_coding",
                )
            )
            occupied.append((chrom, tx[0] - 400, tx[1] + 400))

    # enhancers: GC-box blocks carry the effect, AT-rich blocks of the same size are decoys, so a model must read
    # the motif and not merely notice that something was inserted
    enhancers = []
    for e in range(N_ENHANCERS):
        while True:  # away from genes, so no motif lands in a transcript
            chrom = str(rng.choice(list(CHROMS), p=np.array(list(CHROMS.values())) / sum(CHROMS.values())))
            center = int(rng.integers(3_000, CHROMS[chrom] - 3_000))
            if not any(c == chrom and a - 700 < center < b + 700 for c, a, b in occupied):
                break
        occupied.append((chrom, center - 700, center + 700))  # windows of two enhancers never share a block
        # GC-box blocks (active, 0-3) and AT-rich blocks (inert decoys, 0-3), 64 bp each, in distinct
        # 128 bp slots of the central 1,024 bp (the tiny Enformer's output span)
        n_active, n_decoy = int(rng.choice(4, p=[0.4, 0.3, 0.2, 0.1])), int(rng.integers(0, 4))
        slots = rng.permutation(8)[: n_active + n_decoy]
        for k, slot in enumerate(slots):
            block = GC_BOX * 11 if k < n_active else "".join(rng.choice(list("AT"), size=66))
            at = center - 512 + 128 * int(slot) + int(rng.integers(0, 60))
            put(chrom, at, block[:64])
            motifs.append((chrom, at, at + 64, "gc_box" if k < n_active else "at_decoy", "+"))
        enhancers.append(dict(id=f"{chrom}.demo_enh{e + 1:03d}_top_two", chrom=chrom, center=center, active=n_active))

    # soft-masked repeats (lowercase), as UCSC hg38 has them
    for seq in genome.values():
        for _ in range(len(seq) // 20_000):
            a, n = int(rng.integers(0, len(seq) - 400)), int(rng.integers(100, 400))
            seq[a : a + n] = [b.lower() for b in seq[a : a + n]]
    genome_text = {c: "".join(s) for c, s in genome.items()}
    iso_sequence, iso_genes, iso_transcripts, iso_motifs = isoform_genes(np.random.default_rng([seed, 4]), N_GENES)
    first_reg = N_GENES + len(iso_genes)
    reg_sequence, reg_genes, reg_transcripts, reg_motifs = regulated_genes(np.random.default_rng([seed, 5]), first_reg)
    genome_text |= {ISO_CHROM: iso_sequence, REG_CHROM: reg_sequence}
    write_gz(out / "genome.fa.gz", fasta(list(genome_text.items())))

    # chain file demo-hg19 -> demo-hg38
    chain = []
    for i, (chrom, size) in enumerate(CHROMS.items(), 1):
        shift = HG19_SHIFT[chrom]
        chain += [
            f"chain 1000 {chrom} {size - shift} + 0 {size - shift} {chrom} {size} + {shift} {size} {i}",
            f"{size - shift}",
            "",
        ]
    write_gz(out / "hg19ToHg38.over.chain.gz", "\n".join(chain) + "\n")

    null_rng = np.random.default_rng([seed, 99])  # the null twin's shuffles; never touches the other streams
    activity = [e["active"] for e in enhancers]  # what the betas read: shuffled across enhancers in the null
    for e, active in zip(enhancers, null_rng.permutation(activity) if null else activity, strict=True):
        e["label_active"] = int(active)
    write_gasperini(out, rng, gene_rows, transcripts, enhancers, null_rng if null else None)
    write_uniprot(out, gene_rows)
    for g, gene in enumerate(gene_rows):  # the gene line starts at its farthest transcript's TSS; no GC box there
        farthest = max((t for t in transcripts if t["gene"] == g), key=lambda t: t["end"] - t["start"])
        gene["tss_features"] = (0, farthest["promoter"])
    write_ensembl(out, gene_rows + iso_genes + reg_genes, transcripts + iso_transcripts + reg_transcripts)
    expressed = transcripts + iso_transcripts  # GTEx measures the screen's and the isoform genes
    weights = tissue_weights(np.random.default_rng([seed, 6]))
    order = null_rng.permutation(len(expressed)) if null else np.arange(len(expressed))
    write_gtex(out, rng, gene_rows + iso_genes, expressed, weights, [expressed[i] for i in order])
    write_truth(
        out,
        genome_text,
        motifs + iso_motifs + reg_motifs,
        gene_rows + iso_genes + reg_genes,
        weights,
        np.random.default_rng([seed, 8]),
        null_rng if null else None,
    )


if __name__ == "__main__":
    write_demo_data(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
