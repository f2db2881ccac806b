"""Estimators against a model whose log p(x) is known in closed form: a linear-Gaussian chain.

With p(0) = N(m0, v0) and p(t)(z | z') = N(a z' + b, v) per dimension, the marginal of z(T) is
N(m_T, s_T) with m_t = a m_(t-1) + b and s_t = a^2 s_(t-1) + v, so log p(x) is exact. The infusion
proposal q mixes p's transition with N(x, delta), so importance sampling converges to log p(x).
"""

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from infusion_tf import InfusionConfig, InfusionModel, chains, estimators

D, T = 4, 3
M0, V0, A, B, V = 0.3, 0.5, 0.8, 0.1, 0.2
DELTA = 0.05


class LinearGaussianOperator:
    """p(t)(z(t) | z(t-1)) = N(A z + B, V) per dimension, with the transition-operator signature."""

    def __call__(self, z, step, use_batch_statistics=False, update_statistics=False):
        return A * z + B, V + tf.zeros_like(z)


def exact_log_likelihood(x: np.ndarray) -> np.ndarray:
    mean, var = M0, V0
    for _ in range(T):
        mean, var = A * mean + B, A * A * var + V
    return stats.norm.logpdf(x, mean, math.sqrt(var)).sum(axis=1)


def make_scorer(alpha=(0.0, 0.2, 0.4)):
    return estimators.ChainScorer(LinearGaussianOperator(), tf.fill([D], M0), tf.fill([D], V0),
                                  np.asarray(alpha, np.float32), DELTA, (D,))


@pytest.fixture(scope="module")
def points():
    return np.random.default_rng(0).normal(0.5, 0.6, size=(6, D)).astype(np.float32)


def test_importance_sampling_converges_to_exact_log_likelihood(points):
    scorer = make_scorer()
    exact = exact_log_likelihood(points)
    k = 20_000
    # Standard error of the IS estimate from the weights themselves (delta method): sd(w) / (mean(w) sqrt(k)).
    per_step, _ = scorer(points, k, tf.constant([7, 7]))
    log_w = per_step.sum(axis=0)  # [n, k]
    w = np.exp(log_w - log_w.max(axis=1, keepdims=True))
    rel_se = w.std(axis=1) / (w.mean(axis=1) * math.sqrt(k))
    estimate = estimators.importance_sampling(scorer, points, k, seed=3).per_example
    np.testing.assert_array_less(np.abs(estimate - exact), 5 * rel_se + 1e-3)
    assert np.all(rel_se < 0.05), "the test needs a proposal good enough for a tight tolerance"


def test_lower_bound_never_exceeds_exact_log_likelihood(points):
    scorer = make_scorer()
    exact = exact_log_likelihood(points)
    stats_ = estimators.score_chains(scorer, points, 4000, seed=1)
    bound = stats_.lower_bound()
    se = np.sqrt(stats_.sum_squares / 4000 - bound ** 2) / math.sqrt(4000)
    np.testing.assert_array_less(bound - 3 * se, exact)
    assert np.all(exact - bound > 5 * se), "the gap log p(x) - bound is strictly positive here"


def test_importance_sampling_rises_with_k_towards_exact(points):
    scorer = make_scorer()
    exact = exact_log_likelihood(points).mean()
    means = []
    for k in (1, 10, 100, 1000):
        repeats = [estimators.importance_sampling(scorer, points, k, seed=s).mean_nats for s in range(8)]
        means.append(np.mean(repeats))
    assert means == sorted(means), f"IS estimate fell as k grew: {means}"
    assert means[-1] <= exact + 0.05
    assert exact - means[-1] < exact - means[0]


def test_importance_sampling_with_one_chain_is_one_sample_of_the_bound(points):
    scorer = make_scorer()
    is_1 = estimators.importance_sampling(scorer, points, 1, seed=5)
    lb_1 = estimators.lower_bound(scorer, points, 1, seed=5)
    np.testing.assert_allclose(is_1.per_example, lb_1.per_example, rtol=0, atol=1e-9)


def test_per_step_terms_sum_to_the_bound(points):
    scorer = make_scorer()
    est = estimators.lower_bound(scorer, points, 50, seed=2)
    assert est.per_step.shape == (T + 1,)
    np.testing.assert_allclose(est.per_step.sum(), est.mean_nats, rtol=1e-9)


def test_fixed_seed_gives_identical_results_and_chunking_bounds_memory(points):
    scorer = make_scorer()
    a = estimators.importance_sampling(scorer, points, 300, seed=11, rows_per_call=64)
    b = estimators.importance_sampling(scorer, points, 300, seed=11, rows_per_call=64)
    np.testing.assert_array_equal(a.per_example, b.per_example)
    c = estimators.importance_sampling(scorer, points, 300, seed=12, rows_per_call=64)
    assert not np.array_equal(a.per_example, c.per_example)


def test_isotropic_rescoring_matches_a_direct_isotropic_chain(points):
    scorer = make_scorer()
    per_step, sse = scorer(points, 5, tf.constant([1, 2]))
    variance = 0.07
    iso = estimators.isotropic_log_weights(per_step, sse, variance, D)

    class IsotropicLast(LinearGaussianOperator):
        def __call__(self, z, step, **kwargs):
            mean, var = super().__call__(z, step)
            return mean, tf.where(tf.equal(step, T - 1), variance + 0 * var, var)

    direct = estimators.ChainScorer(IsotropicLast(), tf.fill([D], M0), tf.fill([D], V0),
                                    np.asarray((0.0, 0.2, 0.4), np.float32), DELTA, (D,))
    per_step_direct, _ = direct(points, 5, tf.constant([1, 2]))
    np.testing.assert_allclose(iso, per_step_direct.sum(axis=0), rtol=1e-5, atol=1e-4)


def test_bad_k_is_a_clear_error(points):
    with pytest.raises(ValueError, match="k must be >= 1"):
        estimators.importance_sampling(make_scorer(), points, 0)


def test_bits_per_dim():
    assert estimators.bits_per_dim(0.0, 784) == pytest.approx(8.0)
    assert estimators.bits_per_dim(784 * math.log(2), 784, quantized_8bit=False) == pytest.approx(-1.0)


def test_moment_pool_matches_numpy_over_all_rows():
    rng = np.random.default_rng(3)
    data = rng.normal(2.0, 3.0, size=(90, 5))
    pool = estimators._MomentPool(num_steps=2, channels=5)
    for part in np.split(data, [20, 55]):
        pool(None, 1, part.mean(axis=0), part.var(axis=0), len(part))
    mean, var = pool.moments(1)
    np.testing.assert_allclose(mean, data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(var, data.var(axis=0), rtol=1e-10)


def test_recomputed_statistics_are_the_training_set_moments():
    config = InfusionConfig(width=16, depth=1, num_steps=2, omega=0.1, dequantize=False, example_shape=(4, 4, 1))
    model = InfusionModel(config)
    x = np.random.default_rng(0).uniform(0, 1, size=(64, 4, 4, 1)).astype(np.float32)
    model.set_prior(x.mean(axis=0), x.var(axis=0))
    change = estimators.recompute_batch_norm_statistics(model, x, batch_size=64, seed=9)
    assert change["max_abs_mean_change"] > 0.0
    # Step 0 sees z~(0) = infusion_sample(x, prior, alpha(0)) with the chain's seed fold_in([9, 0], 0).
    seed = tf.random.experimental.stateless_fold_in(tf.constant([9, 0], tf.int32), 0)
    z0 = chains.infusion_sample(tf.constant(x), model.prior_mean, model.prior_variance, model.alpha[0],
                                config.delta_variance, seed)
    h = np.reshape(z0.numpy(), (64, -1)) @ model.operator.dense[0].kernel.numpy()
    norm = model.operator.norms[0]
    np.testing.assert_allclose(norm.moving_mean.numpy()[0], h.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(norm.moving_variance.numpy()[0], h.var(axis=0), rtol=1e-3, atol=1e-6)
