"""Coding masks: which output bins of a TSS-centred DNA window hold coding sequence (CDS + stop codon).

CDBridge's functional decoder reads one flag per model output bin. The geometry, exactly (B = window_bins):

- `center` is the TSS, 1-based as in the GTF; c0 = center - 1 is the same base 0-based.
- The window spans window_bp = B * bin_bp bases, 0-based half-open [w0, w0 + window_bp) with
  w0 = c0 - window_bp // 2, so the TSS is the first base of bin B // 2 (Enformer: bin 448 of 896, 128 bp each,
  114,688 bp in all).
- Bin k covers 0-based half-open [w0 + k * bin_bp, w0 + (k + 1) * bin_bp), i.e. 1-based inclusive
  [w0 + k * bin_bp + 1, w0 + (k + 1) * bin_bp].
- A GTF interval [start, end] (1-based inclusive) is 0-based [start - 1, end); a bin is 1 when it holds at least one
  coding base. Parts of an interval outside the window are clipped away.
- orientation "reference": bin 0 is the lowest coordinate on every strand. "transcript": minus-strand masks are
  reversed, so bin 0 is the 5'-most (highest-coordinate) bin for every transcript.
"""

from __future__ import annotations

import numpy as np
from dogmacache.errors import InputError

ORIENTATIONS = ("reference", "transcript")


def window_start0(centers: np.ndarray, window_bins: int, bin_bp: int) -> np.ndarray:
    """0-based first base of each window (T,), from 1-based TSS `centers` (T,)."""
    return np.asarray(centers, dtype=np.int64) - 1 - (window_bins * bin_bp) // 2


def coding_masks(
    centers: np.ndarray,
    strands: np.ndarray,
    interval_rows: np.ndarray,
    interval_starts: np.ndarray,
    interval_ends: np.ndarray,
    *,
    window_bins: int,
    bin_bp: int,
    orientation: str,
) -> np.ndarray:
    """(T, B) uint8 coding flags for T windows.

    centers (T,) 1-based TSS; strands (T,) '+'/'-'; interval_rows (N,) the window each coding interval belongs to
    (0..T-1); interval_starts/interval_ends (N,) GTF 1-based inclusive coordinates of CDS and stop_codon features.
    """
    if orientation not in ORIENTATIONS:
        raise InputError(f"mask orientation {orientation!r} is not one of {ORIENTATIONS}; pick one of them")
    w0 = window_start0(centers, window_bins, bin_bp)
    window_bp = window_bins * bin_bp
    rows = np.asarray(interval_rows, dtype=np.int64)
    # Interval as 0-based half-open offsets from its window's first base, clipped to the window.
    lo = np.clip(np.asarray(interval_starts, dtype=np.int64) - 1 - w0[rows], 0, window_bp)
    hi = np.clip(np.asarray(interval_ends, dtype=np.int64) - w0[rows], 0, window_bp)
    inside = hi > lo
    first_bin = lo[inside] // bin_bp
    last_bin = (hi[inside] - 1) // bin_bp  # the bin of the last coding base, inclusive
    masks = np.zeros((len(w0), window_bins), dtype=np.uint8)
    for row, a, b in zip(rows[inside], first_bin, last_bin, strict=True):
        masks[row, a : b + 1] = 1
    if orientation == "transcript":
        minus = np.asarray(strands) == "-"
        masks[minus] = masks[minus, ::-1]
    return masks
