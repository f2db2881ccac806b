"""Overlapping transformations: smoothing a binary z into a continuous zeta (Vahdat et al. 2018, Section 3, App. A-B).

A binary z ~ Bernoulli(q) is smoothed by r(zeta | z), a pair of overlapping distributions that converge to
delta(zeta) and delta(zeta - 1) as the inverse temperature beta grows. The mixture q(zeta | x) = sum_z q(z | x)
r(zeta | z) (Eq. 2) has a closed-form inverse CDF, so zeta = F^-1(rho), rho ~ U(0, 1), is a reparametrized sample
whose gradient flows into q (Eq. 3).

Two smoothings, each as pure functions of tensors of any one shape (elementwise; all arguments broadcast):

    exponential (Section 3, App. A)   r(zeta | 0) = beta e^{-beta zeta} / (1 - e^{-beta}),
                                      r(zeta | 1) = beta e^{beta (zeta - 1)} / (1 - e^{-beta}),  zeta in [0, 1]
    logistic (App. B)                 r(zeta | z) = Logistic(zeta | mu_z, s),                   zeta in R

The Bernoulli mean enters as logits (q = sigmoid(logits)), so log q and log (1 - q) are exact log_sigmoids; the
inverse CDFs clip q into [CLIP, 1 - CLIP] where a formula divides by 1 - q or by q.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["CLIP", "exponential_log_r", "exponential_log_q", "exponential_cdf", "exponential_inverse_cdf",
           "exponential_posterior_logits", "logistic_log_r", "logistic_log_q", "logistic_cdf",
           "logistic_inverse_cdf", "logistic_posterior_logits"]

CLIP = 1e-6  # q is kept in [CLIP, 1 - CLIP] inside the inverse CDFs (float32 resolves 1 - 1e-6)


def _log_normalizer(beta):
    """log Z_beta with Z_beta = (1 - e^{-beta}) / beta (Section 3), stable for small and large beta."""
    return tf.math.log(-tf.math.expm1(-beta)) - tf.math.log(beta)


def exponential_log_r(zeta, z, beta):
    """log r(zeta | z) of the overlapping exponentials (Section 3).

    zeta in [0, 1], z in {0, 1} (float), beta > 0; any broadcastable shapes. Returns their broadcast shape.
    """
    zeta, z, beta = _same_dtype(zeta, z, beta)
    distance = z * (1.0 - zeta) + (1.0 - z) * zeta  # |zeta - z| for z in {0, 1}
    return -beta * distance - _log_normalizer(beta)


def exponential_log_q(zeta, logits, beta):
    """log q(zeta | x) = log[(1 - q) r(zeta | 0) + q r(zeta | 1)] (Eq. 2), q = sigmoid(logits), in log space."""
    zeta, logits, beta = _same_dtype(zeta, logits, beta)
    return tf.reduce_logsumexp(tf.stack([
        tf.math.log_sigmoid(-logits) + exponential_log_r(zeta, tf.zeros_like(zeta), beta),
        tf.math.log_sigmoid(logits) + exponential_log_r(zeta, tf.ones_like(zeta), beta)]), axis=0)


def exponential_cdf(zeta, logits, beta):
    """F(zeta) = [(1 - q)(1 - e^{-beta zeta}) + q (e^{beta (zeta - 1)} - e^{-beta})] / (1 - e^{-beta}) (App. A)."""
    zeta, logits, beta = _same_dtype(zeta, logits, beta)
    q = tf.sigmoid(logits)
    return ((1.0 - q) * -tf.math.expm1(-beta * zeta) + q * (tf.exp(beta * (zeta - 1.0)) - tf.exp(-beta))) / \
        -tf.math.expm1(-beta)


def exponential_inverse_cdf(rho, logits, beta):
    """zeta = F^-1(rho) = -log(m) / beta, m the positive root of m^2 + b m - c = 0 (Eq. 3, App. A).

    rho in (0, 1), logits, beta: broadcastable. With d = e^{-beta}, b = [rho + d (q - rho)] / (1 - q) - 1 and
    c = q d / (1 - q) (App. A's c, so that m^2 + b m - c = 0). The root is computed without cancellation: from
    (-b + sqrt(b^2 + 4c)) / 2 when b <= 0, from 2c / (b + sqrt(b^2 + 4c)) when b > 0; both multiplied through by
    1 - q, with q clipped to [CLIP, 1 - CLIP]. Returns zeta in [0, 1], differentiable in logits.
    """
    rho, logits, beta = _same_dtype(rho, logits, beta)
    q = tf.clip_by_value(tf.sigmoid(logits), CLIP, 1.0 - CLIP)
    d = tf.exp(-beta)
    one_minus_q = 1.0 - q
    b = rho + d * (q - rho) - one_minus_q  # (1 - q) b
    c = q * d  # (1 - q) c
    root = tf.sqrt(tf.square(b) + 4.0 * one_minus_q * c)
    negative_b = b <= 0
    safe_b = tf.where(negative_b, tf.ones_like(b), b)  # the branch not taken must not divide by ~0
    m = tf.where(negative_b, (root - b) / (2.0 * one_minus_q), 2.0 * c / (safe_b + tf.where(negative_b, 1.0, root)))
    m = tf.clip_by_value(m, d, tf.ones_like(m))  # m = e^{-beta zeta} lies in [e^{-beta}, 1]
    return -tf.math.log(m) / beta


def exponential_posterior_logits(zeta, logits, beta):
    """logit q(z = 1 | x, zeta) = logit q + log r(zeta | 1) / r(zeta | 0) = logits + beta (2 zeta - 1) (Section 5)."""
    zeta, logits, beta = _same_dtype(zeta, logits, beta)
    return logits + beta * (2.0 * zeta - 1.0)


def logistic_log_r(zeta, z, mu0, mu1, s):
    """log r(zeta | z) = log Logistic(zeta | mu_z, s) (App. B); z in {0, 1} as float."""
    zeta, z, mu0, mu1, s = _same_dtype(zeta, z, mu0, mu1, s)
    u = (zeta - (mu0 + z * (mu1 - mu0))) / s
    return -u - tf.math.log(s) - 2.0 * tf.math.softplus(-u)


def logistic_log_q(zeta, logits, mu0, mu1, s):
    """log q(zeta | x) = log[(1 - q) L(zeta | mu0, s) + q L(zeta | mu1, s)] (App. B), in log space."""
    zeta, logits, mu0, mu1, s = _same_dtype(zeta, logits, mu0, mu1, s)
    return tf.reduce_logsumexp(tf.stack([
        tf.math.log_sigmoid(-logits) + logistic_log_r(zeta, tf.zeros_like(zeta), mu0, mu1, s),
        tf.math.log_sigmoid(logits) + logistic_log_r(zeta, tf.ones_like(zeta), mu0, mu1, s)]), axis=0)


def logistic_cdf(zeta, logits, mu0, mu1, s):
    """F(zeta) = (1 - q) sigmoid((zeta - mu0) / s) + q sigmoid((zeta - mu1) / s) (App. B)."""
    zeta, logits, mu0, mu1, s = _same_dtype(zeta, logits, mu0, mu1, s)
    q = tf.sigmoid(logits)
    return (1.0 - q) * tf.sigmoid((zeta - mu0) / s) + q * tf.sigmoid((zeta - mu1) / s)


def logistic_inverse_cdf(rho, logits, mu0, mu1, s):
    """zeta = F^-1(rho) for the logistic mixture (App. B), with the change of variable m' = sqrt(d0 d1) m.

    With m = e^{-zeta / s}, d_k = e^{mu_k / s} and delta = (mu1 - mu0) / (2 s), App. B's quadratic becomes
    rho m'^2 + b' m' + (rho - 1) = 0, b' = rho (e^{-delta} + e^{delta}) - q e^{-delta} - (1 - q) e^{delta},
    whose positive root is taken without cancellation; zeta = (mu0 + mu1) / 2 - s log m'. e^{delta} must be finite:
    delta < 80 in float32 (s > (mu1 - mu0) / 160). q is clipped to [CLIP, 1 - CLIP].
    """
    rho, logits, mu0, mu1, s = _same_dtype(rho, logits, mu0, mu1, s)
    q = tf.clip_by_value(tf.sigmoid(logits), CLIP, 1.0 - CLIP)
    delta = (mu1 - mu0) / (2.0 * s)
    b = rho * (tf.exp(-delta) + tf.exp(delta)) - q * tf.exp(-delta) - (1.0 - q) * tf.exp(delta)
    root = tf.sqrt(tf.square(b) + 4.0 * rho * (1.0 - rho))
    negative_b = b <= 0
    safe_rho = tf.where(negative_b, rho, tf.ones_like(rho))
    safe_denominator = tf.where(negative_b, tf.ones_like(b), b + root)
    log_m = tf.where(negative_b, tf.math.log(root - b) - tf.math.log(2.0 * safe_rho),
                     tf.math.log(2.0 * (1.0 - rho)) - tf.math.log(safe_denominator))
    return 0.5 * (mu0 + mu1) - s * log_m


def logistic_posterior_logits(zeta, logits, mu0, mu1, s):
    """logit q(z = 1 | x, zeta) = logits + log L(zeta | mu1, s) - log L(zeta | mu0, s) (Section 5, App. B)."""
    zeta, logits, mu0, mu1, s = _same_dtype(zeta, logits, mu0, mu1, s)
    return logits + logistic_log_r(zeta, tf.ones_like(zeta), mu0, mu1, s) - \
        logistic_log_r(zeta, tf.zeros_like(zeta), mu0, mu1, s)


def _same_dtype(first, *rest):
    """Tensors of the floating dtype of `first` (a Python number becomes float32)."""
    first = tf.convert_to_tensor(first)
    if not first.dtype.is_floating:
        first = tf.cast(first, tf.float32)
    return (first, *(tf.cast(tf.convert_to_tensor(v), first.dtype) for v in rest))
