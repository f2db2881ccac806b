"""RBM prior (infusion_tf/rbm.py) and annealed importance sampling (infusion_tf/ais.py) against enumeration."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from infusion_tf import ais, rbm


def _random_rbm(n1, n2, weight_std, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 0.5, n1), rng.normal(0, 0.5, n2), rng.normal(0, weight_std, (n1, n2))


def _states(n):
    return np.array(list(itertools.product((0.0, 1.0), repeat=n)))


def _brute_log_z(a1, a2, w):
    """log sum over every joint state (z1, z2) of exp(-E), independent of the free energy."""
    z1, z2 = _states(len(a1)), _states(len(a2))
    neg_energy = (z1 @ a1)[:, None] + (z2 @ a2)[None, :] + z1 @ w @ z2.T  # [2^n1, 2^n2]
    return float(np.logaddexp.reduce(neg_energy.ravel()))


def test_energy_and_free_energy_match_enumeration():
    a1, a2, w = _random_rbm(5, 6, 1.0, 0)
    z1, z2 = _states(5), _states(6)
    energy = rbm.energy(tf.constant(z1[:, None, :]), tf.constant(z2[None, :, :]), a1, a2, w).numpy()  # [32, 64]
    np.testing.assert_allclose(energy, -((z1 @ a1)[:, None] + (z2 @ a2)[None, :] + z1 @ w @ z2.T), rtol=1e-12)
    free = rbm.free_energy(tf.constant(z1), a1, a2, w).numpy()
    np.testing.assert_allclose(free, -np.logaddexp.reduce(-energy, axis=1), rtol=1e-10)
    assert rbm.exact_log_partition(a1, a2, w) == pytest.approx(_brute_log_z(a1, a2, w), abs=1e-10)


def test_gibbs_chains_sample_the_rbm_and_the_surrogate_gives_the_gradient_of_log_z():
    """Long block-Gibbs chains reach p(z1) (chi-square over the 8 states), and the PCD surrogate's gradient in
    W equals d log Z / dW (central differences of the exact log Z) within 5 standard errors."""
    a1, a2, w = _random_rbm(3, 4, 1.0, 1)
    z1 = tf.zeros([4000, 3], tf.float64)
    z1, z2 = rbm.gibbs_sweeps(z1, a1, a2, w, 50, tf.constant([3, 4]))
    states = _states(3)
    neg_free = states @ a1 + np.logaddexp(0.0, a2 + states @ w).sum(-1)
    p = np.exp(neg_free - np.logaddexp.reduce(neg_free))
    counts = np.array([np.all(z1.numpy() == s, axis=1).sum() for s in states])
    chi2 = ((counts - 4000 * p) ** 2 / (4000 * p)).sum()
    assert chi2 < 24.3, (chi2, counts, 4000 * p)  # 7 degrees of freedom, p = 0.001

    w_var = tf.Variable(w)
    with tf.GradientTape() as tape:
        surrogate = rbm.log_partition_surrogate(z1, z2, a1, a2, w_var)
    gradient = tape.gradient(surrogate, w_var).numpy()  # mean of z1 z2^T over the chains
    products = z1.numpy()[:, :, None] * z2.numpy()[:, None, :]
    np.testing.assert_allclose(gradient, products.mean(0), atol=1e-12)
    eps, numeric = 1e-5, np.zeros_like(w)
    for i, j in np.ndindex(*w.shape):
        step = np.zeros_like(w)
        step[i, j] = eps
        numeric[i, j] = (rbm.exact_log_partition(a1, a2, w + step) - rbm.exact_log_partition(a1, a2, w - step)) / (
            2 * eps)
    stderr = products.std(0) / np.sqrt(len(products)) + 1e-3
    assert np.all(np.abs(gradient - numeric) < 5 * stderr), np.abs(gradient - numeric) / stderr


def test_ais_matches_the_exact_log_partition_of_a_12_by_12_rbm():
    """1000 temperatures, 100 chains, 10 seeds: the mean estimate is within 4 standard errors of the exact log Z,
    and the reported delta-method standard error has the size of the spread over seeds."""
    a1, a2, w = _random_rbm(12, 12, 1.5, 1)
    exact = rbm.exact_log_partition(a1, a2, w)
    results = [ais.annealed_log_partition(a1, a2, w, num_chains=100, num_temperatures=1000, seed=(s, 0))
               for s in range(10)]
    log_z = np.array([r.log_z for r in results])
    spread = log_z.std(ddof=1)
    assert abs(log_z.mean() - exact) < 4 * spread / np.sqrt(10) + 1e-3, (log_z.mean() - exact, spread)
    reported = np.mean([r.stderr for r in results])
    assert 0.25 * reported < spread < 4 * reported, (spread, reported)
    assert all(r.chains == 100 and r.temperatures == 1000 and r.effective_chains <= 100 for r in results)


def test_ais_is_unbiased_in_z_and_biased_low_in_log_z():
    """With 3 temperatures and 10 chains the log-weights vary a lot: the average of Z_hat / Z is 1 within 4
    standard errors (E[Z_hat] = Z), while the average log Z_hat lies below log Z by more than 2 standard errors
    (Jensen: E[log Z_hat] <= log Z)."""
    a1, a2, w = _random_rbm(12, 12, 1.5, 1)
    exact = rbm.exact_log_partition(a1, a2, w)
    log_z = np.array([ais.annealed_log_partition(a1, a2, w, num_chains=10, num_temperatures=3, seed=(s, 1)).log_z
                      for s in range(100)])
    ratio = np.exp(log_z - exact)
    assert abs(ratio.mean() - 1) < 4 * ratio.std(ddof=1) / 10, (ratio.mean(), ratio.std(ddof=1))
    assert log_z.mean() + 2 * log_z.std(ddof=1) / 10 < exact, (log_z.mean() - exact, log_z.std(ddof=1))


def test_inverse_temperatures_and_bad_settings():
    betas = ais.inverse_temperatures(1000)
    assert betas[0] == 0 and betas[-1] == 1 and len(betas) == 1001 and np.all(np.diff(betas) > 0)
    with pytest.raises(ValueError, match="at least 3 temperatures"):
        ais.inverse_temperatures(2)
    with pytest.raises(ValueError, match="at least 2 chains"):
        ais.annealed_log_partition(np.zeros(2), np.zeros(2), np.zeros((2, 2)), num_chains=1)
    with pytest.raises(ValueError, match="n1 = 21"):
        rbm.exact_log_partition(np.zeros(21), np.zeros(2), np.zeros((21, 2)))
