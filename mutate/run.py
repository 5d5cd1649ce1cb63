"""`dogmacache mutate`: in-silico edits near a gene, through a trained Bio-DTA adapter and the scGPT encoder.

For each variant (all edits together, or each edit alone with `each`):
(a) token shift: the adapted token of every window holding an edit, reference (cached row) vs edited (re-embedded
    window): cosine and L2 between them, and each one's cosine to the gene's true scGPT token; beside the gene's,
    the same for `null_edits` matched edits at random places of its window (`null.py`), the control;
(b) with a profile (a tissue or cell: id + one column per gene symbol, as `embed --modality context` reads), the
    scGPT encoder runs on it twice with the tokens of the edited windows' genes replaced by their adapted tokens,
    reference and edited; the genes whose output embeddings move most (L2 between the two runs) are the top-N table;
(c) the adapter-free comparator, side by side with (b): the same encoder and profile with raw scGPT tokens, the gene
    knocked out in expression space (its token and value dropped from the input) instead of its token adapted; the
    other genes ranked the same way (`encoder.knockout_moves`). It does not depend on the edits.

The adapted tokens live where the token cache's vectors live; when that cache is unit length (scGPT's `l2`
option), each adapted token is scaled to the length of the gene's own input token enc_norm(embedding) before it
stands in for it, so the encoder sees inputs of its usual size.

With a gene-set file, each set is scored against each variant's top N moved genes and the comparator's (overlap,
fold enrichment and a hypergeometric p over the genes scored; `genesets.py`), the evaluation Bio-DTA reports
(docs/papers.md#bio-dta-reported-results).

Writes into `out`: token_shift.tsv, tokens.npz (its rows' adapted tokens: `reference` and `edited` (rows, D_tok),
with `id` and `variant`; `null_moves_<v>` (draws, D_tok): the gene's token move under variant v's matched random
edits), moved_genes.tsv (top N per variant), moved_genes_knockout.tsv (the comparator's
top N), gene_sets.tsv (with a gene-set file; column `model` says which ranking), summary.json, moved_genes.png.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from dogmacache.cache import first_fingerprint_difference, open_cache
from dogmacache.cache.storage import check_own_summary, check_writable, replace_whole
from dogmacache.errors import InputError
from dogmacache.mutate.edits import Edit, parse_edit, read_vcf
from dogmacache.mutate.encoder import adapter_moves, cosine, knockout_moves, open_profile, top
from dogmacache.mutate.genesets import UNIVERSE_NOTE, GeneSet, read_gene_sets, score_gene_sets
from dogmacache.mutate.null import null_table, place, shape
from dogmacache.mutate.scan import Scanner, open_scanner
from dogmacache.train.checkpoint import read
from dogmacache.train.registry import load_model


@dataclass(frozen=True)
class MutateConfig:
    checkpoint: str  # a Bio-DTA <name>_best.pt
    genome: str  # the FASTA the DNA cache was embedded from
    dna_model: str | None  # the DNA model folder (or hub id) the cache was embedded with (None: kmer, no weights)
    gene: str  # gene symbol (an id of the windows table)
    out: str  # output folder
    edits: tuple[str, ...] = ()  # `chr:pos REF>ALT` or `chr:start-end` (deletion), 1-based
    vcf: str | None = None  # VCF of SNVs / indels, added to `edits`
    each: bool = False  # each edit its own variant (a scan); default: all edits together (one haplotype)
    windows: str | None = None  # the windows table; None = the checkpoint's [data] labels (gene_tss genes table)
    scgpt_model: str | None = None  # scGPT checkpoint folder of the token cache; None = token shift only
    profiles: str | None = None  # table: id + one column per gene symbol (tissue or cell profiles)
    profile: str | None = None  # the row id in `profiles`
    top_n: int = 50  # moved genes reported per variant
    gene_set: str | None = None  # GMT or one symbol per line: each set scored against the top_n moved genes
    device: str | None = None  # None = the device the DNA cache was embedded on (the numbers depend on it)
    null_edits: int = 20  # matched random edits per variant shape, the token shift's control (`null.py`); 0: none
    seed: int = 0  # their draw


def load_adapter(path: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    checkpoint = read(path)
    if checkpoint.get("task") != "biodta":
        raise InputError(f"{path} is a {checkpoint.get('task')!r} checkpoint; mutate needs a Bio-DTA one (task biodta)")
    if not checkpoint.get("config"):
        raise InputError(f"{path} carries no training config naming its caches; use a checkpoint written by train")
    return load_model(path), checkpoint


def _check_trained_on(checkpoint: dict[str, Any], path: str, caches: dict[str, Any]) -> None:
    """Refuse caches whose fingerprint differs from the one the checkpoint recorded for them."""
    recorded = {name: f for name, f in (checkpoint.get("fingerprints") or {}).items() if name in caches}
    difference = first_fingerprint_difference(recorded, {name: caches[name].fingerprint() for name in recorded})
    if difference is not None:
        raise InputError(
            f"{path} was trained on a {difference.name} cache with {difference.key} {difference.recorded!r} but "
            f"{difference.url} has {difference.current!r}; point the checkpoint's config at the cache it was "
            "trained on"
        )


def collect_edits(config: MutateConfig, scanner: Scanner) -> list[Edit]:
    edits = [parse_edit(spec, scanner.genome) for spec in config.edits]
    if config.vcf:
        edits += read_vcf(config.vcf, scanner.genome)
    if not edits:
        raise InputError("mutate got no edit; pass --edit 'chr:pos REF>ALT' / --edit chr:start-end or --vcf FILE")
    return edits


def _gene_row(scanner: Scanner, gene: str, tokens_ids: set[str]) -> int:
    ids = scanner.table["id"].astype(str)
    if gene not in set(ids) or gene not in tokens_ids:
        where = "the windows table" if gene not in set(ids) else "the token cache"
        raise InputError(
            f"gene {gene!r} is not in {where} ({len(ids)} genes, e.g. {', '.join(ids[:3])}); give a "
            "symbol the adapter was trained on"
        )
    return int(np.flatnonzero(ids.to_numpy() == gene)[0])


# what a run writes under --out; a run removes an earlier run's (summary.json first) once its inputs are checked,
# so a run without scGPT, or one stopped midway, never leaves another run's tables beside its own
OUTPUTS = (
    "summary.json",
    "token_shift.tsv",
    "tokens.npz",
    "moved_genes.tsv",
    "moved_genes_knockout.tsv",
    "gene_sets.tsv",
    "moved_genes.png",
)


def run_mutate(config: MutateConfig) -> dict[str, Any]:
    start = time.perf_counter()
    if config.top_n < 1:
        raise InputError(f"--top-n {config.top_n}: expected at least 1 moved gene per variant")
    if config.null_edits < 0:
        raise InputError(f"--null-edits {config.null_edits}: expected 0 (no control) or more matched random edits")
    check_writable(config.out, "--out", "nothing was computed")
    check_own_summary(config.out, "mutate", "token_shift")
    if (config.profiles or config.profile) and not config.scgpt_model:
        raise InputError(
            "--profiles / --profile choose what the scGPT encoder runs on; add --scgpt-model (the token cache's scGPT "
            "folder), or leave them out for the token shift alone"
        )
    if config.gene_set and not config.scgpt_model:
        raise InputError(
            f"--gene-set {config.gene_set} scores the genes the scGPT encoder moves; add --scgpt-model, --profiles "
            "and --profile"
        )
    sets, warnings = read_gene_sets(config.gene_set) if config.gene_set else ([], [])
    model, checkpoint = load_adapter(config.checkpoint)
    data = checkpoint["config"]["data"]
    dna, token_cache = open_cache(data["dna_cache"]), open_cache(data["token_cache"])
    _check_trained_on(checkpoint, config.checkpoint, {"dna": dna, "token": token_cache})
    scanner = open_scanner(dna, config.windows or data["labels"], config.genome, config.dna_model, model, config.device)
    token_ids = [str(i) for i in token_cache.ids]
    gene_row = _gene_row(scanner, config.gene, set(token_ids))
    edits = collect_edits(config, scanner)
    outside = [e for e in edits if gene_row not in scanner.affected([e])]
    own = [e for e in outside if any(row == gene_row for row, _ in scanner.crossing([e]))]
    if own:
        raise InputError(
            f"edit {own[0].label!r} crosses the edge of {config.gene}'s window ({scanner.window_label(gene_row)}): "
            "mutate applies whole edits only; give the part inside the window as its own edit"
        )
    if outside and not outside[0].ref:  # an insertion at an edge: its anchor base may lie in the window
        raise InputError(
            f"edit {outside[0].label!r} inserts its bases at an edge of {config.gene}'s window "
            f"({scanner.window_label(gene_row)}) or outside it: before its first base it would shift the whole "
            "window, after its last it changes nothing in it; give an insertion between two of the window's bases"
        )
    if outside:
        row = scanner.table.iloc[gene_row]
        raise InputError(
            f"edit {outside[0].label!r} is outside the window of {config.gene} ({scanner.window_label(gene_row)}, "
            f"{scanner.window_bp:,} bp around its TSS {row['chrom']}:{int(row['center']):,}); give edits "
            "inside it"
        )
    crossed = [
        {"gene": str(scanner.table["id"].iloc[row]), "window": scanner.window_label(row), "edit": edit.label}
        for row, edit in scanner.crossing(edits)
    ]
    for c in crossed[:5]:
        print(
            f"dogmacache mutate: warning: edit {c['edit']!r} crosses the edge of {c['gene']}'s window ({c['window']}): "
            "it is not applied to that window (whole edits only; summary.json lists it under windows_crossed)",
            file=sys.stderr,
        )
    if len(crossed) > 5:
        print(
            f"dogmacache mutate: warning: and {len(crossed) - 5} more windows crossed (windows_crossed)",
            file=sys.stderr,
        )
    variants = [[e] for e in edits] if config.each else [edits]
    table, tokens, counts = scanner.shifts(variants)
    true = (
        token_cache.read_rows(token_cache.rows_of(table["id"]), dtype=np.float32)
        if set(table["id"]) <= set(token_ids)
        else None
    )
    labels = [" + ".join(e.label for e in v) for v in variants]  # each variant's edits, as written
    shift = table.drop(columns="row").assign(
        variant_edits=[labels[v] for v in table["variant"]],
        cosine=cosine(tokens["reference"], tokens["edited"]),
        l2=np.linalg.norm(tokens["edited"] - tokens["reference"], axis=1),
    )
    if true is not None:
        shift["cosine_reference_to_true"] = cosine(tokens["reference"], true)
        shift["cosine_edited_to_true"] = cosine(tokens["edited"], true)
    inputs = open_profile(config, token_cache) if config.scgpt_model else None  # refused before the control's work
    gene_true = token_cache.read_rows(token_cache.rows_of([config.gene]), dtype=np.float32)[0]
    skipped: dict[tuple, str] = {}
    nulls = null_table(scanner, config.gene, gene_row, variants, config.null_edits, config.seed, gene_true, skipped)
    no_control = [
        (labels[v], skipped[shape(variant)]) for v, variant in enumerate(variants) if shape(variant) in skipped
    ]
    for label, why in no_control[:5]:
        print(
            f"dogmacache mutate: warning: no matched random edits for {label!r} ({why}): its null columns are empty",
            file=sys.stderr,
        )
    _place_among_nulls(shift, variants, config.gene, nulls)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        (out / name).unlink(missing_ok=True)
    shift.to_csv(out / "token_shift.tsv", sep="\t", index=False, float_format="%.6g")
    null_moves = {  # the gene's move under each variant's matched random edits
        f"null_moves_{v}": nulls[shape(variant)]["moves"]
        for v, variant in enumerate(variants)
        if shape(variant) in nulls
    }
    with replace_whole(out / "tokens.npz") as tmp, open(tmp, "wb") as fh:  # the rows of token_shift.tsv, in order
        np.savez(fh, id=table["id"].to_numpy(dtype=str), variant=table["variant"].to_numpy(), **tokens, **null_moves)
    summary: dict[str, Any] = {
        "gene": config.gene,
        "n_edits": len(edits),
        "n_variants": len(variants),
        **counts,
        "window": scanner.window_label(gene_row),
        "windows_crossed": crossed,
        "token_shift": shift[shift["id"] == config.gene].drop(columns="edits").to_dict("records"),
        "token_shift_control": {
            "what": f"each variant's edits moved to random places of {config.gene}'s window, their lengths kept "
            "(mutate/null.py); null_median and null_p_at_least per token_shift row",
            "draws": config.null_edits,
            "variants_without_control": [{"variant": label, "why": why} for label, why in no_control],
            "seed": config.seed,
            "windows_reembedded": int(sum(n["windows"] for n in nulls.values())),
        },
    }
    if config.scgpt_model:
        summary.update(_moved_genes(config, inputs, shift, tokens, sets, warnings, out, labels))
    summary["seconds"] = round(time.perf_counter() - start, 2)
    summary["config"] = asdict(config)
    with replace_whole(out / "summary.json") as tmp:  # written last, whole: its presence says the run finished
        tmp.write_text(json.dumps(summary, indent=2, default=str))
    return summary


ADAPTER, KNOCKOUT = "bio-dta adapter", "adapter-free knockout"


def _place_among_nulls(shift: pd.DataFrame, variants, gene: str, nulls: dict) -> None:
    """`shift` gets the gain in cosine to the true token, and the gene's rows, per statistic, the median of the
    matched random edits and the p of a value at least as large (`null.place`); NaN where none was drawn."""
    names = ["l2"]
    if "cosine_edited_to_true" in shift:
        shift["cosine_to_true_gain"] = shift["cosine_edited_to_true"] - shift["cosine_reference_to_true"]
        names.append("cosine_to_true_gain")
    for name in names:
        shift[f"{name}_null_median"] = np.nan
        shift[f"{name}_null_p_at_least"] = np.nan
    for index in np.flatnonzero((shift["id"] == gene).to_numpy()):
        found = nulls.get(shape(variants[int(shift["variant"].iloc[index])]))
        for name in names if found is not None else ():
            placed = place(float(shift[name].iloc[index]), found[name])
            shift.loc[shift.index[index], f"{name}_null_median"] = placed["null_median"]
            shift.loc[shift.index[index], f"{name}_null_p_at_least"] = placed["null_p_at_least"]


def _moved_genes(
    config: MutateConfig,
    inputs,
    shift,
    tokens,
    sets: list[GeneSet],
    warnings: list[str],
    out: Path,
    labels: list[str],
):
    """moved_genes.tsv / .png, moved_genes_knockout.tsv and, with gene sets, gene_sets.tsv; the summary's entries.
    `inputs`: the scGPT encoder and profile (`open_profile`); `labels`: each variant's edits, as written."""
    ranking, knockout = adapter_moves(inputs, shift, tokens), knockout_moves(inputs, config.gene)
    moved, moved_knockout = top(ranking, config.top_n), top(knockout, config.top_n)
    moved.to_csv(out / "moved_genes.tsv", sep="\t", index=False, float_format="%.6g")
    moved_knockout.to_csv(out / "moved_genes_knockout.tsv", sep="\t", index=False, float_format="%.6g")
    shown = ["gene", "l2_shift", "cosine"]
    found: dict[str, Any] = {
        "genes_scored": len(inputs.names),
        # one variant: its top genes; several (--each): each variant's, named by its edits
        "top_moved": moved[moved["variant"] == 0].head(10)[shown].to_dict("records")
        if len(labels) == 1
        else [
            {"variant": v, "edits": labels[v], "genes": part.head(10)[shown].to_dict("records")}
            for v, part in moved.groupby("variant")
        ],
        "comparator": f"{KNOCKOUT}: the same scGPT encoder and profile, {config.gene} dropped from its input "
        "(token and value) instead of its token adapted; moved_genes_knockout.tsv",
        "top_moved_knockout": moved_knockout.head(10)[shown].to_dict("records"),
    }
    from dogmacache.mutate.figures import moved_genes_figure

    moved_genes_figure(moved, labels, config, out / "moved_genes.png")
    if sets:
        # a gene whose own token the edit replaced moves by construction (rank 1): left out, as the knockout
        # leaves out the gene it drops, so both rankings are scored over the genes the edit reaches only through
        # the encoder
        rankings = {int(v): list(part.loc[~part["token_replaced"], "gene"]) for v, part in ranking.groupby("variant")}
        table, more = score_gene_sets(rankings, config.top_n, sets, ADAPTER)
        table_knockout, more_knockout = score_gene_sets({None: list(knockout["gene"])}, config.top_n, sets, KNOCKOUT)
        table = pd.concat([table.astype({"variant": object}), table_knockout], ignore_index=True)
        table.to_csv(out / "gene_sets.tsv", sep="\t", index=False, float_format="%.6g")
        found["gene_sets"] = table.to_dict("records")
        found["gene_set_universe"] = UNIVERSE_NOTE
        warnings = [*warnings, *more, *more_knockout]
    if warnings:
        found["gene_set_warnings"] = warnings
    return found
