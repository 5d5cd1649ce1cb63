"""One TSS-centred DNA window per gene, for Bio-DTA (DNA embedding -> single-cell gene token).

Owns the gene_tss recipe. Inputs: an Ensembl/GENCODE GTF and a gene list (a text file, one symbol a line, or
scGPT's vocab.json, whose special tokens `<...>` are skipped). Each listed symbol found among the GTF's gene lines
gets one window centred on its gene's TSS (gene start on '+', gene end on '-', 1-based); a symbol carried by
several GTF genes keeps the first on the primary chromosomes (1-22, X, Y, then others) by gene id. Genes are
split train/validation/test 80/10/10 (seeded) by symbol group: symbols whose windows share chrom and TSS form one
group (`tables.split_linked`), on either strand (a window is cut from the reference strand, so the two strands of a
bidirectional promoter read the same bases), and no gene, window or TSS sits in two splits.

Outputs (G = kept genes):
  dna_windows  (G)  id (the gene symbol), chrom (as the GTF names it), center (the TSS, 1-based), strand, gene_id
  genes        (G)  id, gene_id, chrom, center, strand, split: Bio-DTA's labels (targets come from the scGPT
                    gene-token cache, joined by symbol)
  recipe.json       genome_build: the build the GTF's header names (`#!genome-build`, GENCODE's description
                    line; None where it names none): embed these windows from a FASTA of that build;
                    counts: listed, kept, not in the GTF, duplicated symbols in the GTF, windows shared by
                    several symbols, split groups (split_groups, split_groups_merged)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from dogmacache.contracts.windows import tss, window_id, window_site_id
from dogmacache.data_recipes import formats, sources, tables
from dogmacache.errors import InputError

SOURCES: dict[str, sources.Source] = {}  # a user's GTF and gene list, named on the command line
FRACTIONS = (0.8, 0.1, 0.1)  # train / validation / test, by gene
_PRIMARY = [str(i) for i in range(1, 23)] + ["X", "Y"]


def read_genes(path: str | Path) -> list[str]:
    """Gene symbols from a text file (one a line; blank lines and `#` comments skipped) or an scGPT vocab.json
    ({symbol: id}; `<pad>`-style special tokens skipped), in file order, each once."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"gene list {str(path)!r} does not exist; pass a text file of symbols or scGPT's vocab.json")
    if path.suffix == ".json":
        return formats.read_vocab_json(path, "gene list")
    genes = []
    with formats.open_text(path) as fh:
        for n, line in enumerate(fh, 1):
            symbol = line.split("#", 1)[0].strip()
            if not symbol:
                continue
            if any(c.isspace() for c in symbol):
                raise InputError(f"{path} line {n}: {symbol!r} is not one gene symbol; put one symbol on each line")
            genes.append(symbol)
    if not genes:
        raise InputError(f"{path} lists no gene symbol; put one symbol on each line")
    return list(dict.fromkeys(genes))


def gene_tss(gtf: str | Path) -> pd.DataFrame:
    """One row per GTF gene line with a gene_name: symbol, gene_id, chrom, center (TSS, 1-based), strand."""
    rows = formats.read_gtf(gtf, ["gene"], ["gene_id", "gene_name"])
    build = rows.attrs.get("genome_build")
    if rows.empty:
        raise InputError(f"{gtf} has no 'gene' lines; expected an Ensembl or GENCODE GTF")
    bad = rows.index[~rows["strand"].isin(["+", "-"])]
    if len(bad):
        raise InputError(
            f"{gtf}: gene {rows.loc[bad[0], 'gene_id']!r} has strand {rows.loc[bad[0], 'strand']!r}; "
            "a gene's TSS needs strand + or -, fix or drop the line"
        )
    rows = rows[rows["gene_name"].notna()].copy()
    rows["center"] = tss(rows["start"].to_numpy(), rows["end"].to_numpy(), rows["strand"].to_numpy())
    rank = {c: i for i, c in enumerate(_PRIMARY)}
    rows["_rank"] = rows["chrom"].str.removeprefix("chr").map(rank).fillna(len(rank))
    rows = rows.sort_values(["_rank", "gene_id"]).drop(columns="_rank").reset_index(drop=True)
    rows.attrs["genome_build"] = build
    return rows


def build_gene_tss(
    gtf: str | Path,
    genes: str | Path | list[str],
    out: str | Path,
    seed: int = 0,
    fractions: tuple[float, float, float] = FRACTIONS,
    test_chroms: tuple[str, ...] = (),
) -> dict:
    """The recipe from a GTF and a gene list (path or symbols): writes dna_windows, genes and recipe.json into
    `out`, returns the manifest."""
    listed = read_genes(genes) if isinstance(genes, str | Path) else list(dict.fromkeys(map(str, genes)))
    annotation = gene_tss(gtf)
    duplicated = annotation["gene_name"].duplicated()
    first = annotation[~duplicated].set_index("gene_name")
    kept = [g for g in listed if g in first.index]
    if not kept:
        raise InputError(
            f"none of the {len(listed)} listed genes (e.g. {listed[:3]}) is a gene_name in {gtf}; "
            "check that the list holds symbols of the GTF's release"
        )
    rows = first.loc[kept].reset_index().rename(columns={"gene_name": "id"})
    windows = rows[["id", "chrom", "center", "strand", "gene_id"]].astype({"center": "int64"})
    # symbols whose windows hold the same bases (the same chrom and TSS, on either strand) fall in one split together
    site = window_site_id(windows["chrom"], windows["center"])
    place = windows.assign(site=site, window=window_id(site, windows["strand"]))
    split, group_counts = tables.split_linked(
        place, "id", ["site"], fractions, seed, what="genes", test_chroms=test_chroms
    )
    labels = windows.assign(split=windows["id"].map(split))
    tables.assert_no_leak(labels, "id")
    tables.assert_no_leak(place.assign(split=labels["split"]), "site")
    counts = {
        "genes_listed": len(listed),
        "genes_kept": len(kept),
        "gtf_symbols_on_several_genes": int(annotation.loc[duplicated, "gene_name"].nunique()),
        "dna_windows_shared_by_genes": int((place.groupby("window")["id"].nunique() > 1).sum()),
        **group_counts,
        **{f"genes_{s}": int((labels["split"] == s).sum()) for s in ("train", "validation", "test")},
    }
    return tables.write_outputs(
        out,
        "gene_tss",
        {"dna_windows": windows, "genes": labels},
        counts=counts,
        missing={"listed_genes_not_in_gtf": len(listed) - len(kept)},
        sources={
            "gtf": {"name": Path(gtf).name, "sha256": sources.sha256_of(Path(gtf))},
            "genes": (
                {"name": Path(genes).name, "sha256": sources.sha256_of(Path(genes))}
                if isinstance(genes, str | Path)
                else {"name": "list", "n": len(listed)}
            ),
        },
        params={
            "seed": seed,
            "fractions": list(fractions),
            "test_chroms": list(test_chroms),
            "tss": "gene line start (+) / end (-)",
        },
        # the build the GTF's header names (None: it names none): the windows are cut from a FASTA of this build
        extra={"genome_build": annotation.attrs.get("genome_build")},
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gtf", required=True, help="Ensembl/GENCODE GTF (plain or gzipped)")
    parser.add_argument("--genes", required=True, help="gene symbols: a text file (one a line) or scGPT's vocab.json")


def run(args: argparse.Namespace) -> dict:
    if not Path(args.gtf).is_file():
        raise InputError(f"--gtf {args.gtf!r} is not a file; pass an Ensembl or GENCODE GTF (plain or gzipped)")
    return build_gene_tss(
        args.gtf, args.genes, Path(args.out), seed=args.seed, test_chroms=tables.comma_list(args.test_chroms)
    )
