"""Gasperini 2019 CRISPRi enhancer screen in K562 (GEO GSE120861), the CDT task.

From the at-scale results: DHS sites only; target `beta` (natural-log effect size); significant when
`pvalue.empirical.adjusted` < 0.05 (`not_applicable` is not significant); site midpoints lifted hg19 -> hg38
with the UCSC chain file; genes aligned by symbol across the RNA vocabulary and the protein set into one
canonical order (one sorted list writes both tables; the CDT task checks the caches' orders when it loads them);
split by enhancer 70/15/15, stratified on significance, seeded.

Coordinates: one convention, 1-based, as `contracts/windows.py` reads `center`. The site's `target_site.start`
and `target_site.stop` are read as 1-based positions, its midpoint (`mid_hg19`, `contracts.windows.interval_center`:
the base whose left edge is the site's midpoint, for an even-length site the right one of its two middle bases, as
for a BED interval) is a 1-based hg19 position, and it is lifted as one (`liftover.ChainFile(..., one_based=True)`:
1-based in, 1-based out, also across inverted chain blocks and at a block's last base), so `center` is the 1-based
hg38 base at the midpoint.

Outputs (parquet): `dna_windows` (id = enhancer, chrom, center (1-based hg38), strand: the DNA items), `genes`
(id = symbol in canonical order: the RNA gene-token items), `proteins` (id = symbol, sequence: the protein items,
same order), `labels` (enhancer, gene, gene_index, beta, significant, split).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from dogmacache.contracts.windows import interval_center, tss, window_site_id
from dogmacache.data_recipes import formats, sources, tables
from dogmacache.errors import InputError

SOURCES = {
    "results": sources.Source(
        "results",
        "GSE120861_all_deg_results.at_scale.txt.gz",
        "https://ftp.ncbi.nlm.nih.gov/geo/series/GSE120nnn/GSE120861/suppl/GSE120861_all_deg_results.at_scale.txt.gz",
        "GEO public data (Gasperini et al., Cell 2019); cite the paper",
        "at-scale CRISPRi screen: every tested (gRNA group, gene) pair, hg19 coordinates",
        size="~200 MB",
    ),
    "chain": sources.Source(
        "chain",
        "hg19ToHg38.over.chain.gz",
        "https://hgdownload.soe.ucsc.edu/goldenPath/hg19/liftOver/hg19ToHg38.over.chain.gz",
        "UCSC Chain Files: free for non-commercial use by independent researchers and non-profits; other use "
        "needs a commercial licence (https://genome.ucsc.edu/license/)",
        "UCSC liftOver chain hg19 -> hg38",
        size="~0.2 MB",
    ),
    "uniprot": sources.Source(
        "uniprot",
        "uniprot_human_swissprot.fasta.gz",
        "https://rest.uniprot.org/uniprotkb/stream?compressed=true&format=fasta"
        "&query=%28organism_id%3A9606%29+AND+%28reviewed%3Atrue%29",
        "CC BY 4.0 (UniProt)",
        "UniProtKB/Swiss-Prot human entries (~20.4k), gene symbol after GN=",
        size="~7 MB",
    ),
}

RESULT_COLUMNS = (
    "gRNA_group",
    "ENSG",
    "gene_short_name",
    "target_site.chr",
    "target_site.start",
    "target_site.stop",
    "site_type",
    "beta",
    "pvalue.empirical.adjusted",
    "target_gene.start",
    "target_gene.stop",
    "strand",
)


@dataclass(frozen=True)
class GasperiniConfig:
    site_type: str = "DHS"  # CDT keeps DNase hypersensitive sites (drops TSS controls, NTC rows)
    significance: float = 0.05  # on pvalue.empirical.adjusted; `not_applicable` counts as not significant
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)  # train / validation / test, by enhancer
    # chromosomes (hg38, as the windows name them) whose enhancers form the test split, the rest drawn into train
    # and validation by the first two fractions: no test window shares sequence with a training one; () = by site
    test_chroms: tuple[str, ...] = ()
    seed: int = 0  # fixed: runs on the same inputs with the same filters hold out the same enhancers (another filter
    # draws the split anew over the enhancers it keeps)
    max_distance_kb: float | None = None  # keep pairs with |site midpoint - gene TSS| <= this (hg19); None = all

    def __post_init__(self) -> None:
        if not (0 < self.significance <= 1):  # also refuses nan
            raise InputError(
                f"--significance {self.significance}: expected an adjusted p-value cut in (0, 1], e.g. 0.05"
            )
        if self.max_distance_kb is not None and not (0 <= self.max_distance_kb < float("inf")):
            raise InputError(
                f"--max-distance-kb {self.max_distance_kb}: expected a distance in kb >= 0 (e.g. 1000), or leave "
                "it out to keep every pair"
            )


# chr1's length in each build (UCSC chromInfo): a chain's header names both, which says its direction
CHR1_BP = {"hg19": 249_250_621, "hg38": 248_956_422}


def _check_direction(chain_path: Path) -> None:
    """Refuse a chain that lifts hg38 to hg19 (in its first chr1-to-chr1 header the reference chr1 has hg38's length
    and the query chr1 hg19's): read the wrong way, it would move every site to another place. Chains of other sizes
    (the tests' small ones) are not judged here."""
    sizes = None
    try:
        with formats.open_source(chain_path) as fh:  # gzipped or plain: liftover reads either
            for line in fh:
                fields = line.split()
                if len(fields) >= 9 and fields[0] == "chain" and fields[2] == "chr1" and fields[7] == "chr1":
                    sizes = (int(fields[3]), int(fields[8]))
                    break
    except (OSError, EOFError, ValueError, UnicodeDecodeError, InputError):
        return  # an unreadable file is named by ChainFile's own error
    if sizes == (CHR1_BP["hg38"], CHR1_BP["hg19"]):
        raise InputError(
            f"{chain_path} lifts hg38 to hg19 (its reference chr1 is {CHR1_BP['hg38']:,} bp, hg38's length); the "
            "recipe lifts hg19 sites to hg38: use hg19ToHg38.over.chain.gz"
        )


def _lift(chain_path: Path, chroms: pd.Series, positions: pd.Series) -> tuple[list, list, int, int]:
    """1-based hg19 `positions` on `chroms` -> (hg38 chroms, 1-based hg38 positions, unmapped, ambiguous); a site
    that maps to no place or to several gets chrom None and position -1."""
    from liftover import ChainFile

    _check_direction(chain_path)
    try:
        chain = ChainFile(str(chain_path), one_based=True)  # 1-based in and out: `center` is 1-based
    except (ValueError, OSError, EOFError) as err:
        raise InputError(
            f"{chain_path} could not be read as a UCSC chain file ({err}); it is truncated or another file: "
            "delete it and download hg19ToHg38.over.chain.gz again"
        ) from err
    out_chrom, out_pos, unmapped, ambiguous = [], [], 0, 0
    for chrom, pos in zip(chroms.tolist(), positions.tolist(), strict=True):
        hits = chain[chrom][int(pos)] if chrom in chain else []
        if len(hits) != 1:
            unmapped += len(hits) == 0
            ambiguous += len(hits) > 1
            out_chrom.append(None)
            out_pos.append(-1)
            continue
        out_chrom.append(hits[0][0])
        out_pos.append(int(hits[0][1]))
    return out_chrom, out_pos, unmapped, ambiguous


def _gene_tss(pairs: pd.DataFrame, results: Path, header: list[str]) -> pd.Series:
    """Each pair's target gene's hg19 TSS: `target_gene.start` on the + strand, `target_gene.stop` on the - strand
    (the file gives a gene's lowest and highest coordinate, whichever its strand). InputError naming the file,
    line and column for a strand other than + or -."""
    strand = pairs["strand"].astype(str).str.strip()
    bad = ~strand.isin(["+", "-"])
    if bad.any():
        line = bad.index[np.argmax(bad.to_numpy())]
        raise InputError(
            f"{formats.cell(results, line, header, 'strand')} has {pairs['strand'][line]!r}; expected + or -, the "
            "target gene's strand (--max-distance-kb measures from its TSS). Fix that row, or drop --max-distance-kb"
        )
    ends = {
        end: formats.numbers(
            pairs, f"target_gene.{end}", results, header, expected=f"the gene's hg19 {end} (a whole number)", whole=True
        )
        for end in ("start", "stop")
    }
    return pd.Series(tss(ends["start"].to_numpy(), ends["stop"].to_numpy(), strand.to_numpy()), index=pairs.index)


def build_gasperini(
    paths: dict[str, Path],
    out: Path,
    config: GasperiniConfig,
    rna_vocab: set[str] | None = None,
    sources_info: dict | None = None,
) -> dict:
    """The whole recipe from explicit files (keys results, chain, uniprot). Returns the written manifest."""
    counts: dict[str, int] = {}
    missing: dict[str, int] = {}
    results = paths["results"]
    header = formats.header_of(results)
    raw = formats.read_table(
        results, RESULT_COLUMNS, dtype={"pvalue.empirical.adjusted": str, "ENSG": str, "strand": str}
    )
    counts["result_rows"] = len(raw)
    ntc = raw["target_site.chr"].astype(str) == "NTC"
    counts["ntc_rows_dropped"] = int(ntc.sum())
    pairs = raw[~ntc & (raw["site_type"] == config.site_type)].copy()
    counts[f"{config.site_type}_rows"] = len(pairs)
    if pairs.empty:
        kinds = sorted(raw["site_type"].dropna().astype(str).unique())[:8]
        raise InputError(f"{results} has no rows with site_type == {config.site_type!r}; it has {kinds}")
    pairs["beta"] = formats.numbers(
        pairs, "beta", results, header, allow_missing=True, expected="the effect size, a number, or NA"
    )
    missing["beta"] = int(pairs["beta"].isna().sum())
    pairs = pairs[pairs["beta"].notna()]
    padj_text = pairs[["pvalue.empirical.adjusted"]].replace("not_applicable", np.nan)
    padj = formats.numbers(
        padj_text,
        "pvalue.empirical.adjusted",
        results,
        header,
        allow_missing=True,
        expected="an adjusted p-value, NA or not_applicable",
    )
    pairs["significant"] = (padj < config.significance).fillna(False).astype(bool)
    pairs["pvalue_adjusted"] = padj
    pairs["chrom_hg19"] = [c if str(c).startswith("chr") else f"chr{c}" for c in pairs["target_site.chr"].astype(str)]
    for column in ("target_site.start", "target_site.stop"):
        pairs[column] = formats.numbers(
            pairs, column, results, header, expected="an hg19 position (a whole number)", whole=True
        ).astype(np.int64)
    # 1-based, like start/stop; an even-length site's right middle base, as for a BED interval (`interval_center`)
    pairs["mid_hg19"] = interval_center(pairs["target_site.start"] - 1, pairs["target_site.stop"])
    if config.max_distance_kb is not None:
        near = (pairs["mid_hg19"] - _gene_tss(pairs, results, header)).abs() <= config.max_distance_kb * 1000
        counts["pairs_beyond_max_distance"] = int((~near).sum())
        pairs = pairs[near]
        if pairs.empty:
            raise InputError(
                f"--max-distance-kb {config.max_distance_kb:g} drops all {int((~near).sum()):,} pairs of {results} "
                "(measured from each site's midpoint to its target gene's TSS, hg19); give a larger distance"
            )

    # genes: target symbols that the protein set (and the RNA vocabulary, when given) also have
    proteins = formats.read_uniprot(paths["uniprot"])
    counts["uniprot_entries"] = len(proteins)
    counts["uniprot_duplicate_symbols"] = int(proteins["gene"].duplicated().sum())
    proteins = proteins.drop_duplicates("gene", keep="first")  # Swiss-Prot lists the canonical entry first
    targets = set(pairs["gene_short_name"].dropna().astype(str))
    in_protein = targets & set(proteins["gene"])
    missing["symbols_not_in_uniprot"] = len(targets - in_protein)
    if rna_vocab is not None:
        missing["symbols_not_in_rna_vocab"] = len(in_protein - rna_vocab)
        in_protein &= rna_vocab
    gene_order = sorted(in_protein)  # the canonical order: RNA and protein tables both follow it
    if not gene_order:
        where = "the protein set and the RNA vocabulary (--rna-vocab)" if rna_vocab is not None else "the protein set"
        raise InputError(
            f"no target gene of {results} is in {where} ({len(targets):,} target symbols); check that the files "
            "name genes by the same symbols"
        )
    gene_index = {g: i for i, g in enumerate(gene_order)}
    n_before = len(pairs)
    pairs = pairs[pairs["gene_short_name"].isin(gene_index)]
    counts["pairs_dropped_gene_unaligned"] = n_before - len(pairs)

    # enhancers: one window per gRNA group, at the hg38 position of its site midpoint
    sites = pairs.drop_duplicates("gRNA_group")[
        ["gRNA_group", "chrom_hg19", "mid_hg19", "target_site.start", "target_site.stop"]
    ]
    chrom38, pos38, unmapped, ambiguous = _lift(paths["chain"], sites["chrom_hg19"], sites["mid_hg19"])
    sites = sites.assign(chrom=chrom38, center=pos38)
    missing["enhancers_unmapped_by_liftover"] = unmapped
    missing["enhancers_ambiguous_liftover"] = ambiguous
    if sites["chrom"].isna().all():
        on = sorted(sites["chrom_hg19"].astype(str).unique())
        raise InputError(
            f"no enhancer site lifted from hg19 to hg38 through {paths['chain']} ({unmapped:,} mapped nowhere, "
            f"{ambiguous:,} to several places; the sites lie on {', '.join(on[:6])}{' ...' if len(on) > 6 else ''}): "
            "pass the UCSC hg19ToHg38 chain"
        )
    sites = sites[sites["chrom"].notna()]
    pairs = pairs[pairs["gRNA_group"].isin(sites["gRNA_group"])]
    counts["duplicate_pairs_dropped"] = int(pairs.duplicated(["gRNA_group", "gene_short_name"]).sum())
    pairs = pairs.drop_duplicates(["gRNA_group", "gene_short_name"], keep="first")

    # split by enhancer, stratified on whether any of its pairs is significant; gRNA groups that target one site
    # (the screen's top_two and second_two pairs of a candidate) are one window: linked, they fall in one split
    site = sites.set_index("gRNA_group")
    site_of = window_site_id(site["chrom"], site["center"].astype("int64"))
    linked = tables.linked_groups(pairs.assign(site=pairs["gRNA_group"].map(site_of)), "gRNA_group", ["site"])
    sizes = pd.Series(linked).value_counts()
    counts["enhancers_sharing_a_site"] = int(sizes[sizes > 1].sum())
    group_sig = pairs.assign(group=pairs["gRNA_group"].map(linked)).groupby("group")["significant"].any()
    test, _ = (  # sites link only gRNA groups of one site: no group spans two chromosomes
        tables.held_out_groups(
            {g: c for g, c in site["chrom"].astype(str).items() if g in linked}, linked, config.test_chroms
        )
        if config.test_chroms
        else (set(), set())
    )
    split_of_group = tables.split_holding_out(
        list(group_sig.index), config.fractions, config.seed, list(group_sig.values), test
    )
    split = {g: split_of_group[root] for g, root in linked.items()}
    labels = pd.DataFrame(
        {
            "enhancer": pairs["gRNA_group"].astype(str).values,
            "gene": pairs["gene_short_name"].astype(str).values,
            "gene_index": pairs["gene_short_name"].map(gene_index).astype(np.int32).values,
            "ensembl_gene": pairs["ENSG"].astype(str).values,
            "beta": pairs["beta"].astype(np.float32).values,
            "significant": pairs["significant"].values,
            "pvalue_adjusted": pairs["pvalue_adjusted"].astype(np.float32).values,
        }
    )
    labels["split"] = labels["enhancer"].map(split)
    tables.assert_no_leak(labels, "enhancer")
    used = sites[sites["gRNA_group"].isin(labels["enhancer"])]
    dna = pd.DataFrame(
        {
            "id": used["gRNA_group"].astype(str).values,
            "chrom": used["chrom"].values,
            "center": np.asarray(used["center"], dtype=np.int64),
            "strand": "+",  # enhancers have no orientation; windows are read on the reference strand
            "chrom_hg19": used["chrom_hg19"].values,
            "start_hg19": used["target_site.start"].astype(np.int64).values,
            "end_hg19": used["target_site.stop"].astype(np.int64).values,
        }
    )
    dna["split"] = dna["id"].map(split)
    protein_table = proteins.set_index("gene").loc[gene_order].reset_index()
    genes = pd.DataFrame({"id": gene_order, "gene_index": np.arange(len(gene_order), dtype=np.int32)})
    protein_out = pd.DataFrame(
        {"id": protein_table["gene"], "accession": protein_table["accession"], "sequence": protein_table["sequence"]}
    )

    for name in tables.SPLITS:
        part = labels[labels["split"] == name]
        counts[f"pairs_{name}"] = len(part)
        counts[f"enhancers_{name}"] = part["enhancer"].nunique()
        counts[f"significant_pairs_{name}"] = int(part["significant"].sum())
    counts["genes"] = len(gene_order)
    return tables.write_outputs(
        out,
        "gasperini",
        {"dna_windows": dna, "genes": genes, "proteins": protein_out, "labels": labels},
        counts=counts,
        missing=missing,
        sources=sources_info or {k: {"path": str(p)} for k, p in paths.items()},
        params={**asdict(config), "rna_vocab": None if rna_vocab is None else len(rna_vocab)},
        extra={"genome_build": "hg38"},
    )


def read_vocab(path: str | Path) -> set[str]:
    """Gene symbols of an scGPT `vocab.json` ({gene: id}); special tokens (`<pad>`, `<cls>`, ...) dropped."""
    return set(formats.read_vocab_json(path, "--rna-vocab"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rna-vocab", default=None, help="scGPT vocab.json: keep only genes the RNA model knows")
    parser.add_argument(
        "--max-distance-kb",
        type=float,
        default=None,
        help="keep pairs whose site midpoint lies within this many kb of the target gene's TSS (hg19)",
    )
    parser.add_argument("--significance", type=float, default=GasperiniConfig.significance)


def run(args: argparse.Namespace) -> dict:
    config = GasperiniConfig(  # options and the vocabulary checked before any download
        seed=args.seed,
        max_distance_kb=args.max_distance_kb,
        significance=args.significance,
        test_chroms=tables.comma_list(args.test_chroms),
    )
    vocab = read_vocab(args.rna_vocab) if args.rna_vocab else None
    paths, info = sources.fetch_all(SOURCES, args.source_dir, args.cache_dir)
    return build_gasperini(paths, Path(args.out), config, rna_vocab=vocab, sources_info=info)
