"""A restricted Boltzmann machine over binary latents, the prior of DVAE++ (Vahdat et al. 2018, Section 5, App. E).

p(z1, z2) = exp(-E(z1, z2)) / Z with E(z1, z2) = -a1^T z1 - a2^T z2 - z1^T W z2 (Section 5). z1 [.., n1] and
z2 [.., n2] are the two sides of the bipartite graph. Summing z2 out gives the free energy
F(z1) = -a1^T z1 - sum_j softplus(a2_j + (z1^T W)_j), so log Z = logsumexp_{z1} -F(z1): exact by enumeration for a
small n1 (`exact_log_partition`), by annealed importance sampling otherwise (infusion_tf/ais.py).

The gradient of log Z is -E_p[dE/dtheta] (App. E). It is estimated from persistent contrastive divergence chains
(`gibbs_sweeps`, 40 block-Gibbs sweeps per update in App. E): `log_partition_surrogate` returns -mean_l E(z^(l))
with stop-gradient on the chains' samples, a scalar whose gradient is that estimate.

All functions are pure: parameters (a1 [n1], a2 [n2], W [n1, n2]) and states in, tensors out.
"""

from __future__ import annotations

import itertools

import numpy as np
import tensorflow as tf

__all__ = ["energy", "free_energy", "gibbs_sweeps", "log_partition_surrogate", "exact_log_partition",
           "mean_field_cross_entropy"]


def energy(z1, z2, a1, a2, w):
    """E(z1, z2) = -a1^T z1 - a2^T z2 - z1^T W z2 (Section 5). z1 [..., n1], z2 [..., n2] -> [...]."""
    return -(tf.reduce_sum(z1 * a1, -1) + tf.reduce_sum(z2 * a2, -1) +
             tf.reduce_sum(tf.matmul(z1, w) * z2, -1))


def free_energy(z1, a1, a2, w):
    """F(z1) = -log sum_{z2} exp(-E(z1, z2)) = -a1^T z1 - sum_j softplus(a2_j + (z1 W)_j). z1 [B, n1] -> [B]."""
    return -(tf.reduce_sum(z1 * a1, -1) + tf.reduce_sum(tf.math.softplus(a2 + tf.matmul(z1, w)), -1))


def _bernoulli(logits, seed):
    """Binary float samples of Bernoulli(sigmoid(logits)) from a stateless seed int32 [2]."""
    u = tf.random.stateless_uniform(tf.shape(logits), seed, dtype=logits.dtype)
    return tf.cast(u < tf.sigmoid(logits), logits.dtype)


def gibbs_sweeps(z1, a1, a2, w, num_sweeps: int, seed):
    """num_sweeps block-Gibbs sweeps z2 ~ p(z2 | z1), z1 ~ p(z1 | z2) from z1 [L, n1] (PCD, App. E).

    seed: int32 [2]. Returns (z1 [L, n1], z2 [L, n2]), the last sweep's states, without gradient (the samples of
    a discrete chain carry none; App. E stops it so that no graph is kept for them).
    """
    z1 = tf.stop_gradient(z1)
    a1, a2, w = (tf.stop_gradient(t) for t in (a1, a2, w))
    seeds = tf.random.experimental.stateless_split(seed, 2 * num_sweeps)

    def sweep(i, z1, _):
        z2 = _bernoulli(a2 + tf.matmul(z1, w), seeds[2 * i])
        z1 = _bernoulli(a1 + tf.matmul(z2, w, transpose_b=True), seeds[2 * i + 1])
        return i + 1, z1, z2

    z2 = tf.zeros([tf.shape(z1)[0], tf.shape(w)[1]], z1.dtype)
    _, z1, z2 = tf.while_loop(lambda i, *_: i < num_sweeps, sweep, (tf.constant(0), z1, z2))
    return tf.stop_gradient(z1), tf.stop_gradient(z2)


def log_partition_surrogate(z1, z2, a1, a2, w):
    """-mean_l E(z1^(l), z2^(l)) over model samples (App. E): its gradient in (a1, a2, W) estimates that of log Z.

    Its value is not log Z; add `log_z - tf.stop_gradient(surrogate) + surrogate` to carry an estimate's value.
    """
    return -tf.reduce_mean(energy(tf.stop_gradient(z1), tf.stop_gradient(z2), a1, a2, w))


def mean_field_cross_entropy(mu1, mu2, a1, a2, w):
    """E_q[E(z1, z2)] for a factorial q with means mu1 [..., n1], mu2 [..., n2]: -a1^T mu1 - a2^T mu2 - mu1^T W mu2.

    The cross-entropy term of Eq. (6) when z1 and z2 are independent under q (one latent layer, Section 7.2).
    """
    return energy(mu1, mu2, a1, a2, w)


def exact_log_partition(a1, a2, w) -> float:
    """log Z by enumerating the 2^n1 states of z1 and summing z2 out (float64 numpy; n1 <= 20)."""
    a1, a2, w = (np.asarray(t, np.float64) for t in (a1, a2, w))
    n1 = a1.shape[0]
    if n1 > 20:
        raise ValueError(f"exact_log_partition enumerates 2^n1 states; n1 = {n1} is above 20")
    states = np.array(list(itertools.product((0.0, 1.0), repeat=n1)))  # [2^n1, n1]
    neg_free = states @ a1 + np.logaddexp(0.0, a2 + states @ w).sum(-1)  # [2^n1]
    top = neg_free.max()
    return float(top + np.log(np.exp(neg_free - top).sum()))
