"""Regression metrics, computed the same way for every model and baseline (float64, NaN-safe labels)."""

from __future__ import annotations

import numpy as np
from scipy import stats


def regression_metrics(predicted: np.ndarray, observed: np.ndarray) -> dict[str, float]:
    """Pearson, Spearman, R² (1 - SSE/SST), MSE, MAE and n over paired values."""
    kinds = (float_kind(predicted), float_kind(observed))  # what rounding each side was computed in
    p = np.asarray(predicted, dtype=np.float64).ravel()
    o = np.asarray(observed, dtype=np.float64).ravel()
    keep = np.isfinite(o)
    p, o = p[keep], o[keep]
    n = int(p.size)
    if n < 2:
        return {
            "n": n,
            "pearson": float("nan"),
            "spearman": float("nan"),
            "r2": float("nan"),
            "mse": float("nan"),
            "mae": float("nan"),
        }
    # a correlation with a constant side is undefined: reported as 0 (no association), not a warning and NaN
    constant = flat(p, kinds[0]) or flat(o, kinds[1])
    sst = float(np.sum((o - o.mean()) ** 2))
    return {
        "n": n,
        "pearson": 0.0 if constant else float(stats.pearsonr(p, o)[0]),
        "spearman": 0.0 if constant else float(stats.spearmanr(p, o)[0]),
        "r2": float(1.0 - np.sum((o - p) ** 2) / sst) if sst > 0 else float("nan"),
        "mse": float(np.mean((o - p) ** 2)),
        "mae": float(np.mean(np.abs(o - p))),
    }


def float_kind(values) -> type:
    """The float type `values` were computed in (float64 for lists and integers)."""
    dtype = np.asarray(values).dtype
    return dtype.type if np.issubdtype(dtype, np.floating) else np.float64


def flat(x: np.ndarray, kind: type = np.float64, scale: float | None = None) -> bool:
    """Constant up to the rounding of the type `kind` it was computed in: a spread within 64 units in the last place
    of its largest value (or of `scale`, for values derived from larger ones, such as differences of predictions).
    A per-tissue constant computed in batches of other sizes differs by rounding (14 units between the demo's
    float32 tissue-only predictions), which would otherwise score a correlation of that rounding; float64 values
    (a ridge probe's) keep their finer spread."""
    largest = scale if scale is not None else float(np.abs(x).max()) if x.size else 0.0
    return bool(np.ptp(x) <= 64 * float(np.spacing(kind(largest))))
