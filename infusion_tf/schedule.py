"""Infusion-rate schedules alpha(t) and denoising weights eta(t) (Section 2.3, footnotes 2 and 3)."""

from __future__ import annotations

import numpy as np

__all__ = ["infusion_rates", "denoising_weights"]


def infusion_rates(num_steps: int, alpha0: float, omega: float, kind: str = "increasing") -> np.ndarray:
    """Infusion rates alpha(t) = alpha(t-1) + omega, alpha(0) = alpha0 (Section 2.3.1, footnote 2).

    `kind="constant"` gives alpha(t) = alpha0 for every t (Figure 6e, 6f).
    Returns: float64 [num_steps], alpha(t) for t = 0 .. T-1, the rates of q(0) .. q(T-1).
    Raises: ValueError if any rate leaves [0, 1]; the message names the step and the value.
    """
    if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if kind not in ("increasing", "constant"):
        raise ValueError(f"schedule kind must be 'increasing' or 'constant', got {kind!r}")
    t = np.arange(int(num_steps), dtype=np.float64)
    increment = float(omega) if kind == "increasing" else 0.0
    alpha = float(alpha0) + increment * t  # [T]
    bad = np.flatnonzero(~((alpha >= 0.0) & (alpha <= 1.0)))
    if bad.size:
        step = int(bad[0])
        raise ValueError(
            f"infusion rate alpha({step}) = {alpha[step]:.6g} is outside [0, 1] "
            f"(alpha0={alpha0}, omega={omega}, T={num_steps}, {kind}); choose alpha0 and omega so that "
            f"alpha0 + omega * (T - 1) stays within [0, 1]")
    return alpha


def denoising_weights(num_steps: int, eta0: float = 1.0) -> np.ndarray:
    """Weights eta(t) = eta0 * t / T of the denoising objective's step t (footnote 3).

    Returns: float64 [num_steps], eta(t) for t = 1 .. T.
    """
    if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    t = np.arange(1, int(num_steps) + 1, dtype=np.float64)
    return float(eta0) * t / float(num_steps)
