"""Regression metrics, computed the same way for every model and baseline (float64, NaN-safe labels)."""

from __future__ import annotations

import numpy as np
from scipy import stats


def regression_metrics(predicted: np.ndarray, observed: np.ndarray) -> dict[str, float]:
    """Pearson, Spearman, R² (1 - SSE/SST), MSE, MAE and n over paired values."""
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
    constant = _flat(p) or _flat(o)
    sst = float(np.sum((o - o.mean()) ** 2))
    return {
        "n": n,
        "pearson": 0.0 if constant else float(stats.pearsonr(p, o)[0]),
        "spearman": 0.0 if constant else float(stats.spearmanr(p, o)[0]),
        "r2": float(1.0 - np.sum((o - p) ** 2) / sst) if sst > 0 else float("nan"),
        "mse": float(np.mean((o - p) ** 2)),
        "mae": float(np.mean(np.abs(o - p))),
    }


def _flat(x: np.ndarray) -> bool:
    """Constant up to float32 rounding: a spread within 1e-5 of its largest value (~80 units in the last place). A
    per-tissue constant computed in batches of other sizes differs by rounding (14 units in the last place between
    the demo's tissue-only predictions), which would otherwise score a correlation of that rounding."""
    return bool(np.ptp(x) <= 1e-5 * np.abs(x).max())
