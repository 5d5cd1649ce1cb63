"""`dogmacache mutate`: edits near a gene -> the shift of its Bio-DTA adapted token and, on a tissue or cell
profile, the genes whose scGPT output embeddings move most, beside those an adapter-free knock-out of the gene
moves (see `run.py` for what it writes)."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "mutate", help="in-silico edits through a Bio-DTA adapter: token shift and the top moved genes in scGPT"
    )
    p.add_argument("--checkpoint", required=True, help="a Bio-DTA checkpoint (biodta_best.pt)")
    p.add_argument("--genome", required=True, help="the FASTA the DNA cache was embedded from")
    p.add_argument(
        "--dna-model",
        default=None,
        help="the DNA model folder (or hub id) the cache was embedded with (required but for a model that reads no "
        "weights: kmer)",
    )
    p.add_argument("--gene", required=True, help="gene symbol whose window holds the edits")
    p.add_argument(
        "--edit",
        action="append",
        default=[],
        metavar="EDIT",
        help="'chr:pos REF>ALT' (REF>- deletes) or chr:start-end (deletion, 1-based inclusive); repeatable",
    )
    p.add_argument("--vcf", help="VCF of SNVs / indels (one ALT per record), added to --edit")
    p.add_argument("--each", action="store_true", help="each edit its own variant (a scan), not all together")
    p.add_argument("--windows", help="windows table (default: the checkpoint's [data] labels)")
    p.add_argument("--scgpt-model", help="scGPT checkpoint folder the token cache was embedded with")
    p.add_argument("--profiles", help="table of id + one column per gene symbol (tissues or cells)")
    p.add_argument("--profile", help="the id of the profile to run the encoder on")
    p.add_argument("--top-n", type=int, default=50, help="moved genes reported per variant (default 50)")
    p.add_argument(
        "--gene-set",
        metavar="FILE",
        help="GMT (name, description, genes; several sets) or one gene symbol per line: each set's overlap with the "
        "top-N moved genes, fold enrichment and hypergeometric p (needs --scgpt-model)",
    )
    p.add_argument(
        "--null-edits",
        type=int,
        default=20,
        help="the token shift's control: this many matched edits at random places of the gene's window, each "
        "re-embedded (0: none; default 20)",
    )
    p.add_argument("--seed", type=int, default=0, help="the control's draw (default 0)")
    p.add_argument("--device", help="default: the device the DNA cache was embedded on")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=_mutate, interrupted=_interrupted)


def _interrupted(args: argparse.Namespace) -> str:
    return (
        f"the caches are only read; {args.out} may hold part of this run's tables but no new summary.json, "
        "which is written last; re-run the same command"
    )


def _mutate(args: argparse.Namespace) -> int:
    from dogmacache.mutate.run import MutateConfig, run_mutate

    config = MutateConfig(
        checkpoint=args.checkpoint,
        genome=args.genome,
        dna_model=args.dna_model,
        gene=args.gene,
        out=args.out,
        edits=tuple(args.edit),
        vcf=args.vcf,
        each=args.each,
        windows=args.windows,
        scgpt_model=args.scgpt_model,
        profiles=args.profiles,
        profile=args.profile,
        top_n=args.top_n,
        gene_set=args.gene_set,
        device=args.device,
        null_edits=args.null_edits,
        seed=args.seed,
    )
    summary = run_mutate(config)
    shown = {
        k: summary[k]
        for k in (
            "gene",
            "window",
            "n_edits",
            "windows_reembedded",
            "rows_reused",
            "token_shift",
            "top_moved",
            "comparator",
            "top_moved_knockout",
            "seconds",
        )
        if k in summary
    }
    print(json.dumps(shown, indent=2, default=str))
    for warning in summary.get("gene_set_warnings", []):
        print(f"dogmacache mutate: warning: {warning}", file=sys.stderr)
    if "gene_sets" in summary:
        print(gene_set_lines(summary["gene_sets"], summary["gene_set_universe"]))
    print(
        f"wrote {args.out}: token_shift.tsv, tokens.npz, summary.json"
        + (", moved_genes.tsv, moved_genes_knockout.tsv, moved_genes.png" if args.scgpt_model else "")
        + (", gene_sets.tsv" if "gene_sets" in summary else "")
    )
    return 0


def gene_set_lines(rows: list[dict], note: str) -> str:
    """The gene-set table as aligned text, one line per (model, variant, set)."""
    head = ("model", "variant", "gene_set", "overlap", "in_universe", "fold", "p_value")
    body = [
        (
            r["model"],
            "-" if r["variant"] is None else str(r["variant"]),
            r["gene_set"],
            f"{r['overlap']}/{r['top_n']}",
            f"{r['in_universe']}/{r['universe']}",
            f"{r['fold_enrichment']:.2f}",
            f"{r['p_value']:.3g}",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in (head, *body)) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in (head, *body)]
    return "\n".join([f"gene sets vs the top moved genes ({note}):", *lines])
