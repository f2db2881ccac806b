"""Denoiser score estimators and Langevin sampling (infusion_tf/score.py) on Gaussians, where every score is known.

For data N(m, S), the sigma-smoothed density is N(m, S + sigma^2 I) and the optimal denoiser is linear (Tweedie):
phi*(x) = x - sigma^2 (S + sigma^2 I)^{-1} (x - m), so s_sigma = -(S + sigma^2 I)^{-1} (x - m) exactly and the residual
estimator is -grad ||phi*(x) - x||^2 = -2 sigma^4 (S + sigma^2 I)^{-2} (x - m).
"""

import math
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from infusion_tf import score

MEAN = np.array([1.0, -2.0])
COV = np.array([[1.0, 0.6], [0.6, 0.5]])


def smoothed_precision(sigma: float) -> np.ndarray:
    return np.linalg.inv(COV + sigma**2 * np.eye(2))


def optimal_phi(sigma: float):
    precision = tf.constant(smoothed_precision(sigma), tf.float32)
    return lambda x: x - sigma**2 * tf.matmul(x - MEAN.astype(np.float32), precision)  # precision is symmetric


def test_estimators_with_the_optimal_denoiser_plugged_in():
    sigma = 0.3
    x = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32) * 2
    precision = smoothed_precision(sigma)
    exact_score = -(x - MEAN) @ precision  # [64, 2]
    np.testing.assert_allclose(score.dae_score(optimal_phi(sigma), tf.constant(x), sigma).numpy(), exact_score,
                               rtol=1e-4, atol=1e-4)
    residual = score.dae_residual_score(optimal_phi(sigma), tf.constant(x)).numpy()
    np.testing.assert_allclose(residual, -2 * sigma**4 * (x - MEAN) @ precision @ precision, rtol=1e-4, atol=1e-5)



def test_residual_rescale_is_the_least_squares_constant():
    """With the optimal phi: s = -A (x - m), s^r = -2 sigma^4 A^2 (x - m); c = <s, s^r> / <s^r, s^r> (numpy)."""
    sigma = 0.3
    x = np.random.default_rng(2).normal(size=(200, 2)) * 2 + MEAN
    precision = smoothed_precision(sigma)
    s, r = -(x - MEAN) @ precision, -2 * sigma**4 * (x - MEAN) @ precision @ precision
    expected = np.sum(s * r) / np.sum(r * r)
    assert score.residual_rescale(optimal_phi(sigma), x, sigma) == pytest.approx(expected, rel=1e-4)
    phi_scaled = lambda y: y - sigma**2 * 0.5 * (y - MEAN.astype(np.float32))  # noqa: E731  s = -(x - m) / 2
    assert score.residual_rescale(phi_scaled, x, sigma) == pytest.approx(1 / (2 * sigma**4 * 0.5), rel=1e-4)

def test_a_trained_dae_estimates_the_smoothed_score():
    """After a short training on Gaussian data the DAE-score is within 0.1 (rms, ~10% of the score's size) of the
    exact score of the smoothed Gaussian on held-out data points (0.035 measured; an untrained DAE, phi = x, gives 0)."""
    sigma = 0.5
    rng = np.random.default_rng(1)
    chol = np.linalg.cholesky(COV)
    train = (MEAN + rng.normal(size=(8192, 2)) @ chol.T).astype(np.float32)
    test = (MEAN + rng.normal(size=(500, 2)) @ chol.T).astype(np.float32)
    keras.utils.set_random_seed(0)
    dae = score.DenoisingAutoencoder(2, sigma, width=32, depth=2, seed=0)
    dae.adapt(train)
    epochs, batch = 30, 512  # the loss is noisy (fresh noise every step): the rate decays to 0 to average it out
    decay = keras.optimizers.schedules.CosineDecay(3e-3, epochs * len(train) // batch)
    dae.compile(optimizer=keras.optimizers.Adam(decay))
    dae.fit(train, batch_size=batch, epochs=epochs, verbose=0)
    exact = -(test - MEAN) @ smoothed_precision(sigma)
    error = np.sqrt(np.mean(np.sum((score.dae_score(dae, tf.constant(test), sigma).numpy() - exact) ** 2, axis=1)))
    size = np.sqrt(np.mean(np.sum(exact**2, axis=1)))
    assert error < 0.1 * size, (error, size)


def test_langevin_with_the_exact_score_samples_the_gaussian():
    """Unadjusted Langevin on N(m, S) has stationary law N(m, V) with V = (A (I - eps A / 4))^{-1}, A = S^{-1}
    (the discretization bias, solved for the linear recursion); mean and variances within 5 standard errors."""
    n, eps = 4000, 0.05
    precision = np.linalg.inv(COV)
    a = tf.constant(precision, tf.float32)
    exact = lambda x: -tf.matmul(x - MEAN.astype(np.float32), a)  # noqa: E731
    x0 = np.zeros((n, 2), np.float32) + np.float32([4.0, 3.0])  # far from the mean: the chains must travel
    samples = score.langevin_sample(exact, x0, eps, 1500, seed=3).numpy()
    stationary = np.linalg.inv(precision @ (np.eye(2) - eps * precision / 4))
    sd = np.sqrt(np.diag(stationary))
    np.testing.assert_array_less(np.abs(samples.mean(axis=0) - MEAN), 5 * sd / math.sqrt(n))
    np.testing.assert_array_less(np.abs(samples.var(axis=0) - np.diag(stationary)),
                                 5 * np.diag(stationary) * math.sqrt(2 / n))
    same = score.langevin_sample(exact, x0, eps, 1500, seed=3).numpy()
    np.testing.assert_array_equal(samples, same)  # a fixed seed gives identical chains


def test_langevin_with_the_residual_estimator_samples_a_distorted_gaussian():
    """Why App. F's residual samples go wrong: with the optimal denoiser the residual estimator is
    -2 sigma^4 P^2 (x - m), P = (S + sigma^2 I)^{-1}, so Langevin samples N(m, V) with precision A = 2 sigma^4 P^2
    (ULA bias included as above): the covariance is the smoothed covariance squared over 2 sigma^4, not S."""
    n, eps, sigma = 4000, 0.05, 0.7
    p = smoothed_precision(sigma)
    a = 2 * sigma**4 * p @ p
    samples = score.langevin_sample(lambda x: score.dae_residual_score(optimal_phi(sigma), x),
                                    np.tile(np.float32(MEAN), (n, 1)), eps, 1500, seed=4).numpy()
    stationary = np.linalg.inv(a @ (np.eye(2) - eps * a / 4))
    np.testing.assert_array_less(np.abs(samples.var(axis=0) - np.diag(stationary)),
                                 5 * np.diag(stationary) * math.sqrt(2 / n))
    assert abs(samples.var(axis=0)[0] - COV[0, 0]) > 0.5  # far from the data's variance


def test_annealed_langevin_ends_at_the_last_levels_law():
    sigmas = [1.0, 0.5, 0.1]
    fns = [lambda x, s=s: score.dae_score(optimal_phi(s), x, s) for s in sigmas]
    x0 = np.random.default_rng(2).normal(size=(4000, 2)).astype(np.float32) * 5
    samples = score.annealed_langevin_sample(fns, sigmas, x0, step_size=0.02, steps_per_level=400, seed=1).numpy()
    target = COV + 0.01 * np.eye(2)
    np.testing.assert_allclose(np.cov(samples.T), target, atol=0.1)
    np.testing.assert_allclose(samples.mean(axis=0), MEAN, atol=0.1)


def test_bad_settings_fail_at_construction():
    with pytest.raises(ValueError, match="sigma must be > 0"):
        score.DenoisingAutoencoder(2, 0.0)
    with pytest.raises(ValueError, match="step_size must be > 0, got -1"):
        score.langevin_sample(lambda x: x, np.zeros((1, 2)), -1, 10)
    with pytest.raises(ValueError, match="sigmas must be positive and decreasing"):
        score.annealed_langevin_sample([lambda x: x] * 2, [0.1, 0.5], np.zeros((1, 2)), 0.1, 1)


def test_the_denoiser_saves_and_reloads(tmp_path):
    dae = score.DenoisingAutoencoder(2, 0.2, width=8, depth=1)
    dae.adapt(np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32))
    path = str(tmp_path / "dae.keras")
    dae.save(path)
    loaded = keras.models.load_model(path)
    x = tf.constant([[0.5, -1.0]])
    np.testing.assert_allclose(loaded(x).numpy(), dae(x).numpy(), rtol=1e-6)
    assert loaded.sigma == 0.2
