"""The optimal-transport correction of short-run latents (An, Xie & Li, CVPR 2021, Algorithm 1, correction step).

Short-run Langevin inference leaves the inferred latents z_1 .. z_n off the prior N(0, I). The correction matches
them one-to-one to n fresh prior samples e_1 .. e_n so that the total squared distance sum_i ||z_i - e_pi(i)||^2
is least (the discrete optimal transport between two point sets of equal size is a permutation), then moves each
latent a fraction alpha of the way to its match: z_i <- z_i + alpha (e_pi(i) - z_i).

The paper solves the transport with a dual (semi-discrete) method over the whole training set; here it is solved
exactly on each batch with `scipy.optimize.linear_sum_assignment` (Hungarian / Jonker-Volgenant, O(n^3) time,
one [n, n] cost matrix: memory is bounded by the batch, never the data set).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from scipy.optimize import linear_sum_assignment

__all__ = ["squared_distances", "optimal_matching", "transport_correction", "matching_cost"]


def squared_distances(z: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Cost matrix C[i, j] = ||z_i - e_j||^2.

    z: [n, d]; targets: [m, d]. Returns float64 [n, m].
    """
    z, targets = np.asarray(z, np.float64), np.asarray(targets, np.float64)
    cost = (z**2).sum(1)[:, None] + (targets**2).sum(1)[None, :] - 2.0 * z @ targets.T
    return np.maximum(cost, 0.0)  # rounding can leave tiny negatives


def optimal_matching(z: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The permutation pi minimizing sum_i ||z_i - e_pi(i)||^2 (exact discrete optimal transport, equal weights).

    z, targets: [n, d]. Returns int64 [n], targets[pi] is each latent's match.
    Raises: ValueError if the two sets differ in size or dimension.
    """
    z, targets = np.asarray(z), np.asarray(targets)
    if z.ndim != 2 or z.shape != targets.shape:
        raise ValueError(f"the latents and prior samples must both be [n, d] of one shape, got {z.shape} and "
                         f"{targets.shape}")
    rows, cols = linear_sum_assignment(squared_distances(z, targets))
    pi = np.empty(len(z), np.int64)
    pi[rows] = cols
    return pi


def matching_cost(z: np.ndarray, targets: np.ndarray, pi: np.ndarray) -> float:
    """sum_i ||z_i - e_pi(i)||^2 of a matching pi."""
    return float(((np.asarray(z, np.float64) - np.asarray(targets, np.float64)[pi]) ** 2).sum())


def transport_correction(z: tf.Tensor, targets: tf.Tensor, alpha: float) -> tf.Tensor:
    """The correction step: z_i + alpha (e_pi(i) - z_i), pi the optimal matching of z to targets.

    z, targets: float32 [n, d] (targets: fresh samples of the prior N(0, I)); alpha in [0, 1]: 0 leaves z, 1 moves
    every latent onto its match. Works eagerly and inside tf.function (the matching runs in numpy on the host).
    Returns float32 [n, d], with no gradient to z (the matching is a discrete choice).
    """
    pi = tf.numpy_function(optimal_matching, [z, targets], tf.int64, stateful=False)
    pi = tf.ensure_shape(pi, [None])
    matched = tf.gather(targets, pi)  # [n, d]
    return tf.stop_gradient(z + alpha * (matched - z))
