"""Comparisons across items: top-k positions, their overlap between attention and gradient, peak distances
from the window centre, and how alike attention rows are (the paper's sections 3.3, 3.4 and 3.8).

`Summary` accumulates item by item, so memory grows by a few numbers per item plus one (L,) running sum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from dogmacache.errors import InputError


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores (L,), largest first; ties go to the lower index."""
    if not 1 <= k <= len(scores):
        raise InputError(
            f"--top-k {k} is outside the {len(scores)} DNA positions of a window; pass --top-k "
            f"between 1 and {len(scores)}"
        )
    return np.argsort(-np.asarray(scores), kind="stable")[:k]


def topk_overlap(first: np.ndarray, second: np.ndarray, k: int) -> int:
    """How many positions the top k of two score vectors (L,) share."""
    return len(np.intersect1d(top_k(first, k), top_k(second, k)))


def random_overlap(k: int, n_positions: int) -> float:
    """The expected overlap of two independent uniformly random k-subsets of n_positions: k^2 / L."""
    return k * k / n_positions


class RunningCorrelation:
    """Mean pairwise Pearson correlation of many rows (L,), from running sums.

    With z_i the centred, unit-norm rows, corr(i, j) = z_i . z_j and sum_{i != j} z_i . z_j = |sum_i z_i|^2 - n,
    so the mean over the n(n-1) ordered pairs needs no (n, n) matrix. Rows given a group (the items of one window)
    also keep a sum per group: the pairs of different groups sum to |sum_i z_i|^2 - sum_g |sum_{i in g} z_i|^2
    (`mean_across_groups`). Constant rows have no correlation and are counted apart."""

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.n = 0
        self.n_constant = 0
        self.groups: dict[str, tuple[np.ndarray, int]] = {}

    def add(self, row: np.ndarray, group: str | None = None) -> None:
        z = np.asarray(row, dtype=np.float64) - np.mean(row)
        norm = np.linalg.norm(z)
        if norm <= 1e-12 * max(1.0, float(np.abs(row).max())):
            self.n_constant += 1
            return
        self.total = z / norm if self.total is None else self.total + z / norm
        self.n += 1
        if group is not None:
            held, count = self.groups.get(group, (0.0, 0))
            self.groups[group] = (held + z / norm, count + 1)

    def mean(self) -> float:
        if self.n < 2:
            return float("nan")
        return float((self.total @ self.total - self.n) / (self.n * (self.n - 1)))

    def mean_across_groups(self) -> float:
        """The mean over ordered pairs of rows of different groups (NaN with fewer than 2 groups)."""
        pairs = self.n * self.n - sum(count * count for _, count in self.groups.values())
        if len(self.groups) < 2 or pairs <= 0:
            return float("nan")
        within = sum(float(held @ held) for held, _ in self.groups.values())
        return float((self.total @ self.total - within) / pairs)


def mean_pairwise_correlation(rows: np.ndarray) -> float:
    """The mean pairwise correlation of the rows of one (N, L) array (e.g. one item's genes)."""
    running = RunningCorrelation()
    for row in rows:
        running.add(row)
    return running.mean()


@dataclass
class Summary:
    """Numbers across items; `add` once per item, `to_dict` at the end."""

    k: int
    n_positions: int
    overlaps: list[int] = field(default_factory=list)
    attention_peaks_bp: list[float] = field(default_factory=list)  # signed offset of each item's attention peak
    gradient_peaks_bp: list[float] = field(default_factory=list)
    gene_uniformity: list[float] = field(default_factory=list)  # per item: mean correlation of its genes' rows
    across_items: RunningCorrelation = field(default_factory=RunningCorrelation)
    offsets_bp: np.ndarray | None = None  # the bins' offsets from the window centre (one geometry per run)
    # per window: how many of its items' attention and gradient top-k fall on each position (L,), and its items
    top_counts: dict[str, list] = field(default_factory=dict)

    def add(
        self,
        attention: np.ndarray,
        gradient: np.ndarray,
        offsets_bp: np.ndarray,
        gene_rows: np.ndarray,
        window: str = "",
    ) -> int:
        """One item: its head-averaged attention row (L,), gradient norms (L,), bin offsets (L,), every gene's
        head-averaged attention row (G, L) and its window's name. Returns the item's top-k overlap."""
        overlap = topk_overlap(attention, gradient, self.k)
        self.overlaps.append(overlap)
        self.attention_peaks_bp.append(float(offsets_bp[int(np.argmax(attention))]))
        self.gradient_peaks_bp.append(float(offsets_bp[int(np.argmax(gradient))]))
        self.gene_uniformity.append(mean_pairwise_correlation(gene_rows))
        self.across_items.add(attention, window)
        if self.offsets_bp is None:
            self.offsets_bp = np.asarray(offsets_bp, dtype=np.float64)
        counts = self.top_counts.setdefault(window, [np.zeros(len(attention)), np.zeros(len(gradient)), 0])
        counts[0][top_k(attention, self.k)] += 1
        counts[1][top_k(gradient, self.k)] += 1
        counts[2] += 1
        return overlap

    def mismatched_overlap(self) -> float:
        """The mean top-k overlap of one item's attention with the gradient of an item of another window: what the
        two rankings share by their position preferences alone (both may favour the centre, say), the control beside
        the observed overlap; NaN with one window. From the per-window counts: sum over pairs (i, j) of different
        windows of |A_i & G_j| = sum_w A_w . (G - G_w)."""
        if len(self.top_counts) < 2:
            return float("nan")
        gradient_all = sum(c[1] for c in self.top_counts.values())
        n = sum(c[2] for c in self.top_counts.values())
        shared = sum(float(c[0] @ (gradient_all - c[1])) for c in self.top_counts.values())
        pairs = sum(c[2] * (n - c[2]) for c in self.top_counts.values())
        return shared / pairs

    def to_dict(self, within_bp: float = 50_000) -> dict:
        uniform_bp = np.abs(self.offsets_bp) if self.offsets_bp is not None else np.full(0, np.nan)

        def peaks(values: list[float]) -> dict:
            distance = np.abs(np.asarray(values, dtype=np.float64))
            return {
                "mean_abs_distance_bp": float(distance.mean()) if len(distance) else float("nan"),
                "median_abs_distance_bp": float(np.median(distance)) if len(distance) else float("nan"),
                # the same for a peak at a uniformly random bin of the window: the control beside them
                "mean_abs_distance_bp_if_uniform": float(uniform_bp.mean()) if len(uniform_bp) else float("nan"),
                "median_abs_distance_bp_if_uniform": float(np.median(uniform_bp)) if len(uniform_bp) else float("nan"),
                f"fraction_within_{int(within_bp)}_bp": float((distance <= within_bp).mean())
                if len(distance)
                else float("nan"),
                # the same fraction for a peak at a uniformly random bin: the control beside it (1.0 where the
                # whole window lies within the distance, as in windows shorter than twice it)
                f"fraction_within_{int(within_bp)}_bp_if_uniform": float((uniform_bp <= within_bp).mean())
                if len(uniform_bp)
                else float("nan"),
            }

        overlaps = np.asarray(self.overlaps)
        uniform = np.asarray(self.gene_uniformity, dtype=np.float64)
        return {
            "n_items": len(overlaps),
            "top_k": self.k,
            "n_positions": self.n_positions,
            "topk_overlap": {
                "mean": float(overlaps.mean()) if len(overlaps) else float("nan"),
                "histogram": {int(v): int((overlaps == v).sum()) for v in range(self.k + 1)},
                "expected_if_random": random_overlap(self.k, self.n_positions),
                "expected_if_windows_mismatched": self.mismatched_overlap(),
            },
            "attention_peak": peaks(self.attention_peaks_bp),
            "gradient_peak": peaks(self.gradient_peaks_bp),
            "attention_uniformity": {
                "across_items_mean_pairwise_correlation": self.across_items.mean(),
                # the same over pairs of items of different windows (items of one window share its bins)
                "across_windows_mean_pairwise_correlation": self.across_items.mean_across_groups(),
                "items_with_constant_rows": self.across_items.n_constant,
                "across_genes_mean_pairwise_correlation": float(np.nanmean(uniform))
                if np.isfinite(uniform).any()
                else float("nan"),
            },
        }
