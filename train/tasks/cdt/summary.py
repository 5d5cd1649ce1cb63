"""`dogmacache model-summary cdt --preset paper`: the model's modules and trainable parameter counts.

The model is built on the meta device (shapes only, no memory, no initialisation cost), so the paper-sized
model prints in well under a second. Last line: `trainable parameters: 60,093,752` for the paper preset.
"""

from __future__ import annotations

import argparse

from dogmacache.train.tasks.cdt.sizes import PRESETS

# Module kinds in the per-module counts of docs/papers.md#cdt-parameter-counts:
# (kind, top-level modules of CentralDogmaTransformer)
KINDS = (
    ("projections", ("dna_projection", "rna_projection", "protein_projection")),
    ("self-attention blocks", ("dna_self_attention", "rna_self_attention", "protein_self_attention")),
    ("cross-attention blocks", ("dna_to_rna", "rna_to_protein")),
    ("virtual cell embedder", ("vce",)),
    ("task head", ("head",)),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("model-summary", help="print a model's modules and trainable parameter counts")
    p.add_argument("model", choices=("cdt",), help="which model (cdt: Central Dogma Transformer)")
    p.add_argument("--preset", choices=tuple(PRESETS), default="paper", help="named sizes (default paper)")
    p.add_argument(
        "--protein-width",
        type=int,
        default=None,
        help="protein embedding width instead of the preset's (paper: ProteomeLM 768; ESM-2 650M: 1280)",
    )
    p.set_defaults(run=run)


def module_parameter_counts(model) -> dict[str, int]:
    """Trainable parameters of each top-level module, in definition order."""
    return {
        name: sum(p.numel() for p in child.parameters() if p.requires_grad) for name, child in model.named_children()
    }


def kind_parameter_counts(model) -> dict[str, int]:
    """Trainable parameters per kind of module (the groups of docs/papers.md#cdt-parameter-counts)."""
    counts = module_parameter_counts(model)
    grouped = {kind: sum(counts[name] for name in names) for kind, names in KINDS}
    assert sum(grouped.values()) == sum(counts.values()), "a top-level module is missing from KINDS"
    return grouped


ESM2_650M_WIDTH = 1280  # what the README's embed commands put in the protein cache instead of ProteomeLM's 768


def build_on_meta(name: str, protein_width: int | None = None):
    """The model of preset `name` (optionally another protein width), parameters on the meta device (no memory)."""
    import dataclasses

    import torch
    from dogmacache.train.tasks.cdt.model import CentralDogmaTransformer
    from dogmacache.train.tasks.cdt.sizes import preset

    config = preset(name) if protein_width is None else dataclasses.replace(preset(name), protein_width=protein_width)
    with torch.device("meta"):
        return CentralDogmaTransformer(config)


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run(args: argparse.Namespace) -> int:
    model = build_on_meta(args.preset, args.protein_width)
    config = model.config
    print(
        f"CDT, preset {args.preset}: D={config.d_model}, heads={config.n_heads}, G={config.n_genes}, "
        f"DNA {config.dna_positions}x{config.dna_width}, RNA {config.rna_width}, protein {config.protein_width}, "
        f"dropout {config.dropout}"
    )
    rows = [(name, f"{count:,}") for name, count in module_parameter_counts(model).items()]
    rows += [("", "")] + [(kind, f"{count:,}") for kind, count in kind_parameter_counts(model).items()]
    width = max(len(name) for name, _ in rows)
    count_width = max(len(count) for _, count in rows)
    print(f"{'module':<{width}}  {'parameters':>{count_width}}")
    for name, count in rows:
        print(f"{name:<{width}}  {count:>{count_width}}" if name else "")
    if args.preset == "paper" and args.protein_width is None:
        esm2 = trainable(build_on_meta("paper", ESM2_650M_WIDTH))
        print(
            f"(the paper's proteins are ProteomeLM, {config.protein_width}-d; with ESM-2 650M, {ESM2_650M_WIDTH}-d, "
            f"as `dogmacache embed --model esm2` writes: {esm2:,} parameters, --protein-width {ESM2_650M_WIDTH})"
        )
    print(f"trainable parameters: {trainable(model):,}")
    return 0
