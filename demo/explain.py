"""The demo's explain step: the CDT checkpoint's attention and gradients over the validation pairs, scored against
what the demo data planted (`truth/truth.bed`: every regulatory motif occurrence written by the generator), so
the printed enrichment says whether the positions the model looks at are the ones that carry the signal. It
calls the function `dogmacache explain` calls, with its config dataclass."""

from __future__ import annotations

from pathlib import Path


def explain_demo(out: Path, truth: Path, n: int = 100) -> dict:
    """`explain` on out/train/cdt_best.pt against `truth` (a BED of planted motifs); returns its summary."""
    from dogmacache.explain.cdt import ExplainSources
    from dogmacache.explain.run import ExplainConfig, run_explain

    genome = out / "recipe" / "genome.fa"
    config = ExplainConfig(
        sources=ExplainSources(
            checkpoint=str(out / "train" / "cdt_best.pt"),
            chrom_sizes=str(genome) + ".fai",
            dna_table=str(out / "recipe" / "cdt" / "dna_windows.parquet"),
        ),
        out=str(out / "explain"),
        split="validation",
        n=n,
        top_k=2,  # of the demo windows' 8 bins
        features=str(truth),
        item_figures=0,
        item_tracks=False,
    )
    summary = run_explain(config, log=lambda *a, **k: None)
    print_enrichment(summary.get("features") or {})
    return summary


def print_enrichment(features: dict) -> None:
    """Top-k bins on planted motifs, against the same positions in other windows (the position-matched background),
    with the window-level permutation p-value."""
    if not features:
        return
    print(
        f"  top bins on planted motifs ({features.get('n_items')} validation pairs in {features.get('n_windows')} "
        f"windows; truth: {features.get('features')})"
    )
    for ranking in ("attention", "gradient"):
        r = features.get(ranking) or {}
        if r:
            print(
                f"  {ranking:<10} {r.get('fraction', float('nan')):.3f} of top bins on a motif; position-matched "
                f"background {r.get('background_fraction', float('nan')):.3f}; enrichment "
                f"{r.get('enrichment', float('nan')):.2f} (window-level permutation p "
                f"{r.get('permutation_p_greater', float('nan')):.2g})"
            )
