"""The demo's explain step: the CDT checkpoint's attention and gradients over the validation pairs, scored against
what the demo data planted for CDT (the `gc_box` rows of `truth/truth.bed`: the GC-box blocks whose count sets an
enhancer's effect) beside the AT-rich decoys planted in the same windows (`at_decoy`, which set nothing), so the
printed enrichment says whether the positions the model looks at are the ones that carry the signal, and the decoy
line whether it picks any planted block alike. It calls the function `dogmacache explain` calls, with its config
dataclass."""

from __future__ import annotations

from pathlib import Path

PLANTED, DECOYS = "gc_box", "at_decoy"  # truth.bed names: CDT's rule, and the blocks that set nothing


def truth_subsets(truth: Path, folder: Path) -> tuple[Path, Path]:
    """folder/cdt_gc_box.bed and folder/cdt_at_decoy.bed: the rows of `truth` (BED6, name in column 4) naming CDT's
    planted GC-box blocks and the AT-rich decoys."""
    import pandas as pd

    rows = pd.read_csv(truth, sep="\t", header=None, comment="#")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in (PLANTED, DECOYS):
        path = folder / f"cdt_{name}.bed"
        rows[rows[3] == name].to_csv(path, sep="\t", header=False, index=False)
        paths.append(path)
    return paths[0], paths[1]


def explain_demo(out: Path, truth: Path, n: int = 100) -> dict:
    """`explain` on out/train/cdt_best.pt against the planted GC-box blocks of `truth` (a BED of planted motifs),
    with the AT-rich decoys as the control features; returns its summary."""
    from dogmacache.explain.cdt import ExplainSources
    from dogmacache.explain.run import ExplainConfig, run_explain

    planted, decoys = truth_subsets(truth, out / "truth")

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
        features=str(planted),
        control_features=str(decoys),
        item_figures=0,
        item_tracks=False,
    )
    summary = run_explain(config, log=lambda *a, **k: None)
    print_enrichment(summary.get("features") or {}, "planted GC-box blocks")
    print_enrichment(summary.get("control_features") or {}, "AT-rich decoys (control: set nothing)")
    return summary


def print_enrichment(features: dict, what: str) -> None:
    """Top-k bins on `what`, against the same positions in other windows (the position-matched background), with
    the window-level permutation p-value."""
    if not features:
        return
    print(
        f"  top bins on {what} ({features.get('n_items')} validation pairs in {features.get('n_windows')} "
        f"windows; {features.get('features')})"
    )
    for ranking in ("attention", "gradient"):
        r = features.get(ranking) or {}
        if r:
            print(
                f"  {ranking:<10} {r.get('fraction', float('nan')):.3f} of top bins on one; position-matched "
                f"background {r.get('background_fraction', float('nan')):.3f}; enrichment "
                f"{r.get('enrichment', float('nan')):.2f} (window-level permutation p "
                f"{r.get('permutation_p_greater', float('nan')):.2g})"
            )
