"""Annealed importance sampling for the partition function of an RBM (Neal 2001; Salakhutdinov & Murray 2008),
the log Z that DVAE++'s likelihood needs (Vahdat et al. 2018, Section 5 and Table 2).

The path of distributions over z1 (z2 summed out) scales the target RBM (a1, a2, W) by an inverse temperature
b in [0, 1] and mixes its z1-biases with those of a factorial base a_A:

    log f_b(z1) = z1^T ((1 - b) a_A + b a1) + sum_j softplus(b (a2_j + (z1^T W)_j)),

an RBM with biases ((1 - b) a_A + b a1, b a2) and weights b W at every b, so block Gibbs sweeps leave each f_b
invariant. f_0 is factorial with log Z_0 = sum_i softplus(a_A,i) + n2 log 2; f_1 = exp(-F) of the target.
M chains start from f_0's exact samples and accumulate log w += log f_{b_k}(z1) - log f_{b_{k-1}}(z1) before each
sweep at b_k. Then Z_hat = Z_0 mean_m w_m is unbiased, E[Z_hat] = Z, so by Jensen E[log Z_hat] <= log Z: the
estimate of log Z is a stochastic lower bound, low by about var(w) / (2 M mean(w)^2) for many chains. The
standard error reported is the delta method's std(w) / (sqrt(M) mean(w)).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

__all__ = ["AISResult", "inverse_temperatures", "annealed_log_partition"]


@dataclasses.dataclass(frozen=True)
class AISResult:
    """An AIS estimate of log Z (nats) and how it was made."""

    log_z: float  # log Z_0 + logsumexp(log w) - log M
    stderr: float  # delta-method standard error of log Z_hat: std(w) / (sqrt(M) mean(w))
    effective_chains: float  # (sum w)^2 / sum w^2, out of `chains`
    chains: int
    temperatures: int
    log_z_base: float  # log Z_0 of the factorial base

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def inverse_temperatures(num: int) -> np.ndarray:
    """b_0 = 0 < ... < b_num = 1, spaced as Salakhutdinov & Murray (2008): 1/14.5 of the steps on [0, 0.5],
    4/14.5 on [0.5, 0.9], the rest on [0.9, 1], where the distributions change fastest. float64 [num + 1]."""
    if num < 3:
        raise ValueError(f"AIS needs at least 3 temperatures, got {num}")
    first = max(1, round(num / 14.5))
    second = max(1, round(4 * num / 14.5))
    third = num - first - second
    return np.concatenate([np.linspace(0.0, 0.5, first + 1), np.linspace(0.5, 0.9, second + 1)[1:],
                           np.linspace(0.9, 1.0, third + 1)[1:]])


def _log_f(z1, b, base, a1, a2, w):
    """log f_b(z1) [M] (module docstring), float64."""
    return tf.linalg.matvec(z1, (1.0 - b) * base + b * a1) + \
        tf.reduce_sum(tf.math.softplus(b * (a2 + tf.matmul(z1, w))), -1)


def _bernoulli(logits, seed):
    u = tf.random.stateless_uniform(tf.shape(logits), seed, dtype=logits.dtype)
    return tf.cast(u < tf.sigmoid(logits), logits.dtype)


@tf.function(reduce_retracing=True)
def _anneal(base, a1, a2, w, betas, seed, num_chains):
    """The M chains' log-weights [M] (float64) along betas [K + 1]."""
    seeds = tf.random.experimental.stateless_split(seed, 1 + 2 * (tf.shape(betas)[0] - 1))
    z1 = _bernoulli(tf.broadcast_to(base, [num_chains, tf.shape(base)[0]]), seeds[0])  # [M, n1] ~ f_0

    def step(k, z1, log_w):
        b_prev, b = betas[k - 1], betas[k]
        log_w += _log_f(z1, b, base, a1, a2, w) - _log_f(z1, b_prev, base, a1, a2, w)
        z2 = _bernoulli(b * (a2 + tf.matmul(z1, w)), seeds[2 * k - 1])  # a sweep that leaves f_b invariant
        z1 = _bernoulli((1.0 - b) * base + b * (a1 + tf.matmul(z2, w, transpose_b=True)), seeds[2 * k])
        return k + 1, z1, log_w

    _, _, log_w = tf.while_loop(lambda k, *_: k < tf.shape(betas)[0], step,
                                (tf.constant(1), z1, tf.zeros([num_chains], tf.float64)))
    return log_w


def annealed_log_partition(a1, a2, w, *, num_chains: int = 100, num_temperatures: int = 1000, seed=(0, 0),
                           base_logits=None) -> AISResult:
    """AIS estimate of log Z of the RBM (a1 [n1], a2 [n2], W [n1, n2]); see the module docstring.

    base_logits [n1]: the factorial base's logits a_A (default: a1, the target without its couplings); the
    closer its marginals to the target's, the fewer temperatures are needed. seed: two ints.
    """
    if num_chains < 2:
        raise ValueError(f"AIS needs at least 2 chains for its standard error, got {num_chains}")
    a1, a2, w = (tf.cast(tf.convert_to_tensor(t), tf.float64) for t in (a1, a2, w))
    base = a1 if base_logits is None else tf.cast(tf.convert_to_tensor(base_logits), tf.float64)
    betas = inverse_temperatures(num_temperatures)
    log_w = _anneal(base, a1, a2, w, tf.constant(betas), tf.constant(seed, tf.int32),
                    tf.constant(num_chains)).numpy()
    log_z_base = float(np.logaddexp(0.0, base.numpy()).sum() + a2.shape[0] * math.log(2.0))
    top = log_w.max()
    scaled = np.exp(log_w - top)  # w / max w
    log_z = log_z_base + top + math.log(scaled.mean())
    stderr = float(scaled.std(ddof=1) / (math.sqrt(num_chains) * scaled.mean()))
    return AISResult(log_z=float(log_z), stderr=stderr, effective_chains=float(scaled.sum() ** 2 / (scaled ** 2).sum()),
                     chains=int(num_chains), temperatures=int(num_temperatures), log_z_base=log_z_base)
