"""Energy distance between two samples (Szekely & Rizzo 2013): how far model samples are from exact samples.

D^2(P, Q) = 2 E||X - Y|| - E||X - X'|| - E||Y - Y'||, X, X' ~ P, Y, Y' ~ Q independent; D^2 >= 0, and 0 only when
P = Q. Used to put a number on App. F's comparison of score estimators (Tao et al. 2019), beside the distance
between two independent exact sample sets (what sampling noise alone gives).
"""

from __future__ import annotations

import numpy as np

__all__ = ["energy_distance"]


def _mean_distance(a: np.ndarray, b: np.ndarray, skip_diagonal: bool, rows: int = 1024) -> float:
    """Mean ||a_i - b_j|| over all pairs (i != j when skip_diagonal, a is b), in row blocks of bounded memory."""
    total = 0.0
    for start in range(0, len(a), rows):
        block = a[start:start + rows]  # [r, d]
        sq = np.sum(block**2, axis=1)[:, None] + np.sum(b**2, axis=1)[None, :] - 2.0 * block @ b.T  # [r, m]
        total += float(np.sum(np.sqrt(np.maximum(sq, 0.0))))  # the diagonal is ~0 either way; excluded below
    pairs = len(a) * (len(b) - 1) if skip_diagonal else len(a) * len(b)
    return total / pairs


def energy_distance(x, y, unbiased: bool = True) -> float:
    """Squared energy distance D^2 between the samples x: float [n, d] and y: float [m, d].

    unbiased=True: the U-statistic (pairs i != j within each sample), whose mean over repeats is D^2(P, Q) and
    which is about 0 (of either sign) for two samples of one law. unbiased=False: the V-statistic, D^2 between the
    two empirical distributions (>= 0; scipy.stats.energy_distance returns its square root in 1-D).
    Raises: ValueError for mismatched dimensions or fewer than 2 points.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x = x[:, None] if x.ndim == 1 else x
    y = y[:, None] if y.ndim == 1 else y
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"energy_distance needs two samples [n, d] and [m, d] with n, m >= 2, got {x.shape} "
                         f"and {y.shape}")
    within_x = _mean_distance(x, x, unbiased)
    within_y = _mean_distance(y, y, unbiased)
    return 2.0 * _mean_distance(x, y, False) - within_x - within_y
