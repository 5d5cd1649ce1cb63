"""The control beside a token shift: the same edits moved to random places of the gene's window.

A deletion anywhere in a window changes the DNA the adapter reads, so any edit moves the gene's adapted token
somewhat; a shift says something about the edited bases only where it stands out from edits of the same shape
elsewhere in the window. For each variant, `draws` matched variants are made (seeded by the variant's shape, so a
variant's draws do not depend on the other variants of the run): every edit of it moved to a uniformly random
position where it lies wholly inside the gene's window (an insertion between two of its bases), its length kept (a
deletion deletes as many bases, an insertion inserts the same bases, a substitution puts a random other base at
each position where the variant's changes its base and keeps the reference base where the variant's does), no
two edits of a draw overlapping. Each draw's gene window is re-embedded like the variant's, and the variant's L2
shift and gain in cosine to the gene's true token are placed among the draws': p = (1 + draws at least as large) /
(1 + draws). Variants of one shape (a scan of SNVs) share their draws, so a draw may land on a variant's own
bases (for an SNV in a 2 kb window, about one draw in 2,000 per variant). A shape whose edits cannot be placed
apart in the window gets no control, said in the run's output and in summary.json.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from dogmacache.mutate.edits import Edit, reference
from dogmacache.mutate.encoder import cosine

BASES = "ACGT"


def shape(edits: Sequence[Edit]) -> tuple:
    """What a matched draw keeps of a variant: per edit, its length and, for a substitution, which of its bases
    change ("sub:x.xx"), for an indel its inserted bases ("indel:" + bases)."""
    return tuple(sorted((len(e.ref), _kind(e)) for e in edits))


def _kind(edit: Edit) -> str:
    if len(edit.ref) != len(edit.alt):
        return f"indel:{edit.alt}"
    return "sub:" + "".join("x" if a != b else "." for a, b in zip(edit.ref.upper(), edit.alt.upper(), strict=True))


def shape_seed(seed: int, key: tuple) -> list[int]:
    """The draws' stream of a variant shape: the run's seed and a digest of the shape alone, so that a variant's
    control is the same whichever other variants a run scans."""
    return [seed, int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little")]


def matched_variant(
    edits: Sequence[Edit], genome, chrom: str, start0: int, window_bp: int, rng: np.random.Generator, k: int
) -> list[Edit]:
    """The edits of one variant moved to random places inside [start0, start0 + window_bp), none overlapping."""
    size = genome.length(chrom)
    lo, hi = max(start0, 0), min(start0 + window_bp, size)  # bases that exist: the window's N padding has none
    if sum(len(e.ref) + 1 for e in edits) > hi - lo:
        raise ValueError(f"{len(edits)} edits do not fit apart in the window's {hi - lo:,} bases")
    canonical = sorted(edits, key=lambda e: (len(e.ref), _kind(e)))  # draws in the shape's order, not as written
    for _ in range(1000):
        placed = []
        for e in canonical:
            span = len(e.ref)
            # where `contracts.windows.window_holds` holds it: an insertion between two of the window's bases, any
            # other edit wholly inside
            q = int(rng.integers(lo + 1, hi)) if span == 0 else int(rng.integers(lo, hi - span + 1))
            ref = reference(genome, chrom, q, span)
            if len(e.alt) == span:  # a substitution: another base where the variant's changes one, else the same
                changed = _kind(e).removeprefix("sub:")
                alt = "".join(
                    BASES[(BASES.find(b) + int(rng.integers(1, 4))) % 4] if c == "x" else b
                    for b, c in zip(ref, changed, strict=True)
                )
            else:
                alt = e.alt
            placed.append(Edit(chrom, q, ref, alt, f"null{k}:{chrom}:{q + 1} {ref or '-'}>{alt or '-'}"))
        placed.sort(key=lambda e: (e.start0, e.end0))
        if all(a.end0 < b.start0 for a, b in zip(placed, placed[1:], strict=False)):  # a base apart at least
            return placed
    raise ValueError(f"no placement of {len(edits)} edits a base apart in the window's {hi - lo:,} bases")


def null_table(
    scanner,
    gene: str,
    gene_row: int,
    variants: Sequence[Sequence[Edit]],
    draws: int,
    seed: int,
    true: Any,
    skipped: dict[tuple, str] | None = None,
) -> dict[tuple, dict[str, np.ndarray]]:
    """Per variant shape: the gene's L2 shift, its move (`moves`, (draws, D): edited minus reference token) and its
    cosine-to-true gain (with a true token (D,)) for `draws` matched variants, and how many windows they
    re-embedded (`windows_reembedded`). A shape with no control gets its reason in `skipped`."""
    skipped = {} if skipped is None else skipped
    if draws < 1:  # no control asked for
        return {}
    chrom = scanner.genome.resolve(str(scanner.table["chrom"].iloc[gene_row]))
    start0 = scanner.window_start0(gene_row)
    out = {}
    for key in dict.fromkeys(shape(v) for v in variants):
        example = next(v for v in variants if shape(v) == key)
        rng = np.random.default_rng(shape_seed(seed, key))
        try:
            drawn = [
                matched_variant(example, scanner.genome, chrom, start0, scanner.window_bp, rng, k) for k in range(draws)
            ]
        except ValueError as err:  # edits filling the window leave no other place for them: no control for this shape
            skipped[key] = str(err)
            continue
        table, tokens, counts = scanner.shifts(drawn, only=gene_row)  # the gene's window alone
        mine = (table["id"] == gene).to_numpy() if len(table) else np.zeros(0, dtype=bool)
        if not mine.any():
            skipped[key] = f"no matched draw moved {gene}'s window"
            continue
        reference_token, edited = tokens["reference"][mine], tokens["edited"][mine]
        moves = edited - reference_token  # (draws, D): each matched variant's move of the gene's token
        found = {"l2": np.linalg.norm(moves, axis=1), "moves": moves, "windows": counts["windows_reembedded"]}
        if true is not None:
            found["cosine_to_true_gain"] = cosine(edited, true) - cosine(reference_token, true)
        out[key] = found
    return out


def place(observed: float, null: np.ndarray) -> dict[str, float]:
    """The observed value among the draws: their median and the one-sided p of a value at least as large."""
    return {
        "null_median": float(np.median(null)),
        "null_p_at_least": float((1 + (null >= observed).sum()) / (1 + len(null))),
    }
