"""Coding masks: which output bins of a TSS-centred DNA window hold coding sequence (CDS + stop codon).

CDBridge's functional decoder reads one flag per model output bin (B = window_bins of bin_bp bases). The window,
its bins and their orientation are `contracts/windows.py`'s (the TSS is the window's 1-based `center`, so it is
the first base of bin B // 2 in reference order; Enformer: bin 448 of 896). Here only the masks' own rules: a GTF
interval [start, end] (1-based inclusive) is 0-based [start - 1, end); a bin is 1 when it holds at least one
coding base; parts of an interval outside the window are clipped away.
"""

from __future__ import annotations

import numpy as np
from dogmacache.contracts.windows import orient_bins
from dogmacache.contracts.windows import window_start0 as _window_start0


def window_start0(centers: np.ndarray, window_bins: int, bin_bp: int) -> np.ndarray:
    """0-based first base of each window (T,), from 1-based TSS `centers` (T,) (`contracts.windows`)."""
    return _window_start0(np.asarray(centers, dtype=np.int64), window_bins * bin_bp)


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
    return orient_bins(masks, strands, orientation)
