"""Overlapping transformations (infusion_tf/overlapping.py) against numerical integration and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy import integrate

from infusion_tf import overlapping as o

LOGITS = [-30.0, -8.0, -1.5, 0.0, 2.0, 8.0, 30.0]  # q from ~1e-13 to 1 - 1e-13: clipped at both ends
BETAS = [1.0, 8.0, 18.0]
QUADRATURE_LOGITS = [-30.0, -1.5, 0.0, 8.0]  # fewer for the (slow, scalar) quadratures


def exponential(fn, *args):
    return fn(*[tf.constant(a, tf.float64) for a in args]).numpy()


def logistic(fn, *args, beta):
    return fn(*[tf.constant(a, tf.float64) for a in args], 0.0, 1.0, 1.0 / beta).numpy()


@pytest.mark.parametrize("beta", BETAS)
def test_exponential_densities_integrate_to_one_and_the_cdf_is_their_integral(beta):
    for z in (0.0, 1.0):
        total, _ = integrate.quad(lambda v: np.exp(exponential(o.exponential_log_r, v, z, beta)), 0, 1)
        assert total == pytest.approx(1.0, abs=1e-9)
    for logits in QUADRATURE_LOGITS:
        density = lambda v: np.exp(exponential(o.exponential_log_q, v, logits, beta))  # noqa: E731
        assert integrate.quad(density, 0, 1, limit=200)[0] == pytest.approx(1.0, abs=1e-9)
        for zeta in (0.1, 0.93):
            assert exponential(o.exponential_cdf, zeta, logits, beta) == pytest.approx(
                integrate.quad(density, 0, zeta, limit=200)[0], abs=1e-9)


@pytest.mark.parametrize("beta", [1.0, 18.0])
def test_logistic_densities_integrate_to_one_and_the_cdf_is_their_integral(beta):
    """Simpson's rule on a grid of step 1e-4 over [-40, 41] (the tails beyond hold < 1e-17), one vectorized call."""
    grid = np.linspace(-40.0, 41.0, 810_001)
    for logits in LOGITS:
        density = np.exp(logistic(o.logistic_log_q, grid, np.full_like(grid, logits), beta=beta))
        assert integrate.simpson(density, x=grid) == pytest.approx(1.0, abs=1e-8)
        for zeta in (-0.3, 0.5, 1.2):
            upto = int(round((zeta + 40.0) / 1e-4)) + 1
            assert logistic(o.logistic_cdf, grid[upto - 1], logits, beta=beta) == pytest.approx(
                integrate.simpson(density[:upto], x=grid[:upto]), abs=1e-8)


@pytest.mark.parametrize("beta", BETAS)
def test_inverse_cdfs_invert_the_cdfs(beta):
    rho = np.linspace(1e-4, 1 - 1e-4, 41)
    for logits in LOGITS:
        # Clipping q to [CLIP, 1 - CLIP] moves F by at most CLIP; elsewhere the inversion is exact.
        tol = 2 * o.CLIP if abs(logits) > 12 else 1e-10
        zeta = exponential(o.exponential_inverse_cdf, rho, np.full_like(rho, logits), beta)
        assert np.all((zeta >= 0) & (zeta <= 1)) and np.all(np.diff(zeta) >= 0)
        np.testing.assert_allclose(exponential(o.exponential_cdf, zeta, logits, beta), rho, atol=tol)
        zeta = logistic(o.logistic_inverse_cdf, rho, np.full_like(rho, logits), beta=beta)
        np.testing.assert_allclose(logistic(o.logistic_cdf, zeta, logits, beta=beta), rho, atol=tol)


def test_inverse_cdfs_are_stable_in_float32_and_approach_a_step_as_beta_grows():
    rho = tf.constant(np.linspace(0.01, 0.99, 99), tf.float32)
    for logits in LOGITS:
        for fn in (lambda r, l: o.exponential_inverse_cdf(r, l, 18.0),
                   lambda r, l: o.logistic_inverse_cdf(r, l, 0.0, 1.0, 1.0 / 18.0)):
            assert np.all(np.isfinite(fn(rho, tf.fill(rho.shape, logits)).numpy()))
    q = 0.3  # beta = 80: zeta is within 0.1 of 0 below rho = 1 - q and of 1 above (Fig. 1b)
    zeta = o.exponential_inverse_cdf(rho, np.log(q / (1 - q)), 80.0).numpy()
    assert np.all(np.where(rho.numpy() < 0.69, zeta < 0.1, True)) and np.all(np.where(rho.numpy() > 0.71, zeta > 0.9, True))


def finite_difference_check(sample, logits, rho, h=1e-6):
    """d zeta / d logits through the sample, against a central difference in float64."""
    logits = tf.constant(logits, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        zeta = sample(tf.constant(rho, tf.float64), logits)
    grad = tape.gradient(zeta, logits).numpy()
    numeric = (sample(rho, logits + h).numpy() - sample(rho, logits - h).numpy()) / (2 * h)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-8)
    return grad


@pytest.mark.parametrize("beta", BETAS)
def test_gradients_through_the_samples_match_finite_differences_including_near_q_0_and_1(beta):
    rho = np.linspace(0.02, 0.98, 25)
    for logits in (-12.0, -6.0, -1.0, 0.0, 1.0, 6.0, 12.0):  # q = 6e-6 .. 1 - 6e-6, inside the clip
        finite_difference_check(lambda r, l: o.exponential_inverse_cdf(r, l, beta), np.full_like(rho, logits), rho)
        finite_difference_check(lambda r, l: o.logistic_inverse_cdf(r, l, 0.0, 1.0, 1.0 / beta),
                                np.full_like(rho, logits), rho)
    for logits in (-40.0, 40.0):  # beyond the clip: finite, zero gradients rather than NaN
        for sample in (lambda r, l: o.exponential_inverse_cdf(r, l, beta),
                       lambda r, l: o.logistic_inverse_cdf(r, l, 0.0, 1.0, 1.0 / beta)):
            logits_t = tf.constant(np.full_like(rho, logits))
            with tf.GradientTape() as tape:
                tape.watch(logits_t)
                zeta = sample(tf.constant(rho), logits_t)
            assert np.all(np.isfinite(tape.gradient(zeta, logits_t).numpy()))


def test_posterior_logits_are_bayes_rule_on_the_mixture():
    zeta, logits, beta = np.array([0.1, 0.5, 0.9]), np.array([-1.0, 0.3, 2.0]), 8.0
    r1 = exponential(o.exponential_log_r, zeta, np.ones(3), beta)
    log_q = exponential(o.exponential_log_q, zeta, logits, beta)
    posterior = np.log(1 / (1 + np.exp(-logits))) + r1 - log_q  # log q(z = 1 | x, zeta)
    np.testing.assert_allclose(exponential(o.exponential_posterior_logits, zeta, logits, beta),
                               posterior - np.log1p(-np.exp(posterior)), rtol=1e-10)
    r1 = logistic(o.logistic_log_r, zeta, np.ones(3), beta=beta)
    posterior = np.log(1 / (1 + np.exp(-logits))) + r1 - logistic(o.logistic_log_q, zeta, logits, beta=beta)
    np.testing.assert_allclose(logistic(o.logistic_posterior_logits, zeta, logits, beta=beta),
                               posterior - np.log1p(-np.exp(posterior)), rtol=1e-10)


def test_samples_follow_the_mixture():
    """Kolmogorov-Smirnov distance of 20000 reparametrized samples to the CDF, below its 0.1% critical value."""
    rho = tf.random.stateless_uniform([20000], [1, 2], dtype=tf.float64)
    for logits in (-2.0, 0.5):
        zeta = np.sort(o.exponential_inverse_cdf(rho, logits, 6.0).numpy())
        ks = np.abs(exponential(o.exponential_cdf, zeta, logits, 6.0) - np.arange(1, 20001) / 20000).max()
        assert ks < 1.95 / np.sqrt(20000)
