"""The demo's planted truth: the per-tissue weights (drawn so that every held-out fold is as hard as the seen
tissues), the Bio-DTA gene tokens (a fixed projection of promoter motif counts) and `truth/`, where the generator
writes down what it planted (`make_demo_data.py` states the rules):

  truth/truth.bed        BED6, 0-based half-open: every planted motif (gc_box, tata, are, kozak_atg, decoy_atg,
                         at_decoy); score 1000 for a motif a rule reads, 0 for a decoy; strand: the gene's ('+' for
                         enhancer blocks)
  truth/truth.json       the rules' coefficients, per-tissue weights, folds, coding rule, token rule, target set
  truth/gene_tokens.tsv  symbol + the planted scGPT gene-embedding row of every Bio-DTA gene (the demo writes
                         them into its Bio-DTA scGPT checkpoint)
  truth/targets.txt      the planted target set for `mutate --gene-set`, one symbol a line
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from dogmacache.data_recipes.demo_layout import DECOY_ATG, GC_BLOCK, KOZAK, PROMOTER_MOTIF
from dogmacache.data_recipes.gtex_config import ISOFORMER_TISSUES as TISSUES  # the tissues the demo samples

# Three folds of three held-out tissues; fold 0 is the demo recipe's own held-out set (Heart as before).
HOLDOUT_FOLDS = (("Heart", "Liver", "Brain"), ("Lung", "Kidney", "Muscle"), ("Pancreas", "Skin", "Testis"))
PERTURBED_GENE = "DEMO05"  # the gene whose planted TATA boxes the demo knocks out; the target set is defined around it
TOKEN_WIDTH = 32  # the tiny scGPT's embsize (embed/adapters/scgpt_model.py write_tiny_scgpt)
TOKEN_NOISE = 0.7  # sd of each gene's own part of its token, beside P @ (motif counts - 1.5)
N_TARGETS = 10
# expression: log(1 + TPM) = 2 + SHARED . (a, p, r) + u_tissue * TISSUE_DNA . (a, p) + PROTEIN * coding * (w - 0.9)
# * v_tissue + N(0, NOISE), floored at 0
# |u| <= 1 < shared / tissue_dna: a GC box or TATA box raises expression in every tissue, by 0.15-0.75 or 0-0.6
SHARED = {"a": 0.45, "p": 0.3, "r": -0.35}
TISSUE_DNA = {"a": 0.3, "p": -0.3}
PROTEIN, NOISE = 1.2, 0.15
STRENGTH = (0.3, 1.0)  # |u_tissue|, |v_tissue| drawn uniform in this range


def tissue_weights(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """u (tissue-specific promoter effect) and v (protein effect) per tissue. Strengths are drawn, ranked, and the
    i-th tissue of fold f gets rank 10 i + f (ranks 0 = strongest): each fold holds one tissue of each tercile,
    near its top, so no fold's held-out tissues are easier (weaker tissue effects) than the seen ones."""
    folded = [t for i in range(3) for t in (fold[i] for fold in HOLDOUT_FOLDS)]  # rank order 0, 1, 2, 10, ...
    weights: dict[str, dict[str, float]] = {t: {} for t in TISSUES}
    for name in ("u", "v"):
        strengths = np.sort(rng.uniform(*STRENGTH, size=len(TISSUES)))[::-1]
        fold_ranks = [10 * i + f for i in range(3) for f in range(3)]
        rest = [r for r in range(len(TISSUES)) if r not in fold_ranks]
        others = [t for t in TISSUES if t not in folded]
        ranks = dict(zip(folded, fold_ranks, strict=True)) | dict(
            zip(others, np.array(rest)[rng.permutation(len(rest))], strict=True)
        )
        signs = rng.choice([-1.0, 1.0], size=len(TISSUES))
        for sign, tissue in zip(signs, TISSUES, strict=True):
            weights[tissue][name] = round(float(sign * strengths[ranks[tissue]]), 4)
    return weights


def fold_strengths(weights: dict[str, dict[str, float]]) -> list[dict]:
    """Per fold: mean and median |u|, |v| of its held-out tissues and of the tissues it sees."""
    table = []
    for k, fold in enumerate(HOLDOUT_FOLDS):
        entry: dict = {"fold": k, "held_out": list(fold)}
        for name in ("u", "v"):
            for where, tissues in (("held_out", fold), ("seen", [t for t in TISSUES if t not in fold])):
                values = np.abs([weights[t][name] for t in tissues])
                entry[f"{name}_mean_{where}"] = round(float(values.mean()), 4)
                entry[f"{name}_median_{where}"] = round(float(np.median(values)), 4)
        table.append(entry)
    return table


def planted_tokens(genes: list[dict], rng: np.random.Generator, null_rng) -> tuple[np.ndarray, np.ndarray]:
    """(G, TOKEN_WIDTH) token rows and the projection P (TOKEN_WIDTH, 2): row = P @ (gc - 1.5, tata - 1.5) +
    TOKEN_NOISE * N(0, 1), from the GC-box blocks and TATA boxes at each gene's TSS; in the null, rows drawn from a
    zero-mean Gaussian with the same covariance, so a token follows no gene's DNA."""
    projection = rng.normal(size=(TOKEN_WIDTH, 2))
    features = np.array([g["tss_features"] for g in genes], dtype=np.float64) - 1.5
    if null_rng is not None:
        features = features[null_rng.permutation(len(features))]
    rows = features @ projection.T + TOKEN_NOISE * rng.normal(size=(len(genes), TOKEN_WIDTH))
    if null_rng is not None:
        # drawn afresh from a zero-mean Gaussian with the planted rows' covariance: independent of every input, and
        # symmetric, so neither a mean token nor a skew of the counts' distribution gives a score
        cov = np.cov(rows, rowvar=False) + 1e-9 * np.eye(TOKEN_WIDTH)
        rows = null_rng.normal(size=rows.shape) @ np.linalg.cholesky(cov).T
    return np.round(rows, 4), projection


def targets(symbols: list[str], rows: np.ndarray, profiled: list[str]) -> list[str]:
    """The N_TARGETS genes measured by GTEx (so in the tissue profiles mutate reads) whose planted token is most
    similar (cosine) to PERTURBED_GENE's: the genes that share its promoter motif composition."""
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    at = {s: i for i, s in enumerate(symbols)}
    cosine = {s: float(unit[at[s]] @ unit[at[PERTURBED_GENE]]) for s in profiled if s != PERTURBED_GENE}
    return sorted(cosine, key=lambda s: (-cosine[s], s))[:N_TARGETS]


def write_truth(out: Path, genome: dict[str, str], motifs: list[tuple], genes: list[dict], weights, rng, null_rng):
    truth = out / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    order = {c: i for i, c in enumerate(genome)}
    scored = {"gc_box", "tata", "are", "kozak_atg"}
    bed = [
        f"{c}\t{a}\t{b}\t{kind}\t{1000 if kind in scored else 0}\t{s}"
        for c, a, b, kind, s in sorted(motifs, key=lambda m: (order[m[0]], m[1], m[2], m[3]))
    ]
    (truth / "truth.bed").write_text("\n".join(bed) + "\n")
    rows, projection = planted_tokens(genes, rng, null_rng)
    symbols = [g["symbol"] for g in genes]
    (truth / "gene_tokens.tsv").write_text(
        "\n".join(["symbol\t" + "\t".join(f"d{i}" for i in range(TOKEN_WIDTH))])
        + "\n"
        + "\n".join(s + "\t" + "\t".join(f"{x:.4f}" for x in row) for s, row in zip(symbols, rows, strict=True))
        + "\n"
    )
    profiled = [g["symbol"] for g in genes if g.get("biotype", "protein_coding") == "protein_coding"]
    chosen = targets(symbols, rows, profiled)
    (truth / "targets.txt").write_text("\n".join(chosen) + "\n")
    facts = {
        "null": null_rng is not None,
        "null_rule": "every label drawn independently of its inputs: betas permuted over all (enhancer, gene) pairs, "
        "TPMs a shuffled transcript's features, gene tokens drawn from a zero-mean Gaussian with the planted rows' "
        "covariance; "
        "genome, GTF and sequences are the real demo's",
        "motifs": {"gc_box": GC_BLOCK, "tata": PROMOTER_MOTIF, "kozak_atg": KOZAK, "decoy_atg": DECOY_ATG},
        "crispri": {
            "formula": "beta = c_g - 0.25 * w_g * active_e + N(0, 0.08), the 6 genes nearest enhancer e",
            "active_e": "64 bp GC-box blocks (gc_box in truth.bed) in the enhancer's central 1,024 bp",
        },
        "expression": {
            "formula": "log(1 + TPM) = 2 + shared.a * a + shared.p * p + shared.r * r + u_tissue * (tissue_dna.a * a "
            "+ tissue_dna.p * p) + protein * coding * (w_g - 0.9) * v_tissue + N(0, noise), floored at 0",
            "features": "a: GC-box blocks in [-480, -256) of the TSS; p: TATA boxes at -180/-120/-60; r: AU-rich "
            "blocks in the 3' UTR exon; coding: has a protein; w_g: the protein's K/R vs D/E weight",
            "shared": SHARED,
            "tissue_dna": TISSUE_DNA,
            "protein": PROTEIN,
            "noise": NOISE,
            "tissues": weights,
        },
        "folds": {
            "rule": "fold f holds out HOLDOUT_FOLDS[f]; strengths |u|, |v| are ranked and fold f's i-th tissue has "
            "rank 10 i + f, so each fold's held-out tissues are matched to (slightly above) the seen ones",
            "folds": fold_strengths(weights),
        },
        "coding": {
            "rule": "isoform genes (chr4): each coding transcript's CDS starts at the first ATG of its cDNA in a "
            "Kozak context [AG]CCATGG; 60% of first exons carry their own start 19-330 bp from the TSS, the rest "
            "are 5' UTR and the CDS starts in the shared coding exon (60-500 bp intron after the last first exon); "
            "decoy ATGs in poor context (TTTATGT) never start a CDS. DEMO genes (chr1-3): CDS beyond their windows",
        },
        "biodta": {
            "rule": "token row (the scGPT gene-embedding row, before enc_norm) = projection @ (gc - 1.5, tata - 1.5) "
            "+ noise * N(0, I), gc/tata the GC-box blocks and TATA boxes upstream of the gene line's TSS",
            "projection": np.round(projection, 4).tolist(),
            "noise": TOKEN_NOISE,
            "genes": {g["symbol"]: list(g["tss_features"]) for g in genes},
            "rows": "truth/gene_tokens.tsv",
        },
        "targets": {
            "perturbed_gene": PERTURBED_GENE,
            "rule": f"the {N_TARGETS} GTEx-measured genes whose planted token is most similar (cosine) to the "
            "perturbed gene's: they share its promoter motif composition, so an encoder whose attention compares "
            "gene tokens moves them most when that gene's token moves",
            "genes": chosen,
        },
    }
    (truth / "truth.json").write_text(json.dumps(facts, indent=1) + "\n")
