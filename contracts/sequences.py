"""Nucleotide sequences as every stage spells them: A, C, G, T, N (soft-masked lowercase kept as lowercase)."""

from __future__ import annotations

_COMPLEMENT = str.maketrans("ACGTNacgtn", "TGCANtgcan")


def reverse_complement(seq: str) -> str:
    """The other strand, read 5' to 3'; N stays N, lowercase stays lowercase."""
    return seq.translate(_COMPLEMENT)[::-1]
