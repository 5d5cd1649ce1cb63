"""Gene sets against the top moved genes: Bio-DTA's evaluation asks whether experimentally verified targets of the
perturbed gene are among the 50 genes whose embeddings move most (docs/papers.md#bio-dta-reported-results).

A gene-set file is either GMT (one set per line: name, description, genes, tab-separated; several sets allowed) or
one gene symbol per line (one set, named after the file). Blank lines and lines starting with `#` are skipped.

Per set and per ranking: the universe is the genes that ranking scored (the profile's genes the encoder ran on);
the set counts only its genes inside that universe (K). Of the top n = min(top_n, universe) genes, `overlap` are in
the set; `expected` = n K / universe, fold enrichment = overlap / expected, and the p-value is the hypergeometric
P(X >= overlap) for n draws without replacement from the universe holding K set genes (scipy.stats.hypergeom).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from dogmacache.errors import InputError
from scipy.stats import hypergeom

UNIVERSE_NOTE = (
    "universe = the genes scored by that ranking (the profile's genes the encoder ran on, less the genes whose own "
    "token the edit replaced, or the knocked-out gene); each set counts only its genes inside the universe; "
    "p = hypergeometric P(overlap >= observed)"
)
COLUMNS = [
    "gene_set",
    "set_size",
    "in_universe",
    "universe",
    "top_n",
    "overlap",
    "expected",
    "fold_enrichment",
    "p_value",
    "overlap_genes",
]


@dataclass(frozen=True)
class GeneSet:
    name: str
    genes: tuple[str, ...]  # in file order, without repeats
    line: int  # where the set starts in its file (1-based)


def read_gene_sets(path: str | Path) -> tuple[list[GeneSet], list[str]]:
    """The sets of a GMT or one-symbol-per-line file, and warning lines (empty sets, which are skipped).
    InputError, naming the file and line, when the file cannot be read as either."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"gene-set file {str(path)!r} does not exist; pass a .gmt file or one gene symbol per line")
    try:
        lines = [
            (n, line.rstrip("\r\n"))
            for n, line in enumerate(path.read_text().splitlines(), 1)
            if line.strip() and not line.startswith("#")
        ]
    except UnicodeDecodeError as err:
        raise InputError(f"gene-set file {path} is not text ({err.reason}); pass a .gmt file or a gene list") from None
    if not lines:
        raise InputError(f"gene-set file {path} holds no gene; write one symbol per line or GMT lines")
    if path.suffix.lower() == ".gmt" or any("\t" in line for _, line in lines):
        sets, warnings = _gmt(path, lines)
    else:
        sets, warnings = [GeneSet(path.stem, _unique([_symbol(path, n, line) for n, line in lines]), lines[0][0])], []
    if not sets:
        raise InputError(f"gene-set file {path} holds only empty sets; give each GMT line at least one gene")
    return sets, warnings


def _symbol(path: Path, n: int, line: str) -> str:
    if len(line.split()) != 1:
        raise InputError(
            f"{path} line {n}: {line.strip()!r} is not one gene symbol; write one symbol per line, or GMT lines "
            "(name<TAB>description<TAB>genes)"
        )
    return line.strip()


def _unique(genes: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(genes))


def _gmt(path: Path, lines: list[tuple[int, str]]) -> tuple[list[GeneSet], list[str]]:
    sets, warnings, seen = [], [], {}
    for n, line in lines:
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].strip():
            raise InputError(
                f"{path} line {n}: {len(fields)} tab-separated field(s) {line[:40]!r}; a GMT line is "
                "name<TAB>description<TAB>gene<TAB>gene..., a one-symbol-per-line list has no tabs"
            )
        name = fields[0].strip()
        if name in seen:
            raise InputError(f"{path} line {n}: gene set {name!r} is already named on line {seen[name]}; rename one")
        seen[name] = n
        bad = [g for g in fields[2:] if len(g.split()) > 1]
        if bad:
            raise InputError(f"{path} line {n}: {bad[0]!r} is not one gene symbol; separate the genes with tabs")
        genes = _unique([g.strip() for g in fields[2:] if g.strip()])
        if not genes:
            warnings.append(f"{path} line {n}: gene set {name!r} lists no gene; skipped")
            continue
        sets.append(GeneSet(name, genes, n))
    return sets, warnings


def enrichment(top: list[str], universe: list[str], gene_set: GeneSet) -> dict | None:
    """One set against one ranking's `top` genes (already cut to top N) among the `universe` it scored; None when
    no gene of the set is in the universe."""
    scored = set(universe)
    members = [g for g in gene_set.genes if g in scored]
    if not members:
        return None
    m, k, n = len(scored), len(members), len(top)
    hits = [g for g in top if g in set(members)]
    expected = n * k / m
    return {
        "gene_set": gene_set.name,
        "set_size": len(gene_set.genes),
        "in_universe": k,
        "universe": m,
        "top_n": n,
        "overlap": len(hits),
        "expected": expected,
        "fold_enrichment": len(hits) / expected if expected else float("nan"),
        "p_value": float(hypergeom.sf(len(hits) - 1, m, k, n)),
        "overlap_genes": ",".join(hits),
    }


def score_gene_sets(
    rankings: dict[int | None, list[str]], top_n: int, sets: list[GeneSet], label: str
) -> tuple[pd.DataFrame, list[str]]:
    """Every set against every ranking (variant -> all genes scored, in rank order; variant None = a ranking that
    no variant decides): a table (model = `label`, variant, then COLUMNS) and warning lines for sets with no gene
    among those scored."""
    rows, warnings = [], []
    for variant, genes in rankings.items():
        which = label if variant is None else f"{label}, variant {variant}"
        for gene_set in sets:
            found = enrichment(genes[:top_n], genes, gene_set)
            if found is None:
                warnings.append(
                    f"gene set {gene_set.name!r} (line {gene_set.line}): none of its {len(gene_set.genes)} genes is "
                    f"among the {len(genes)} genes scored by the {which}; skipped"
                )
                continue
            rows.append({"model": label, "variant": variant, **found})
    return pd.DataFrame(rows, columns=["model", "variant", *COLUMNS]), warnings
