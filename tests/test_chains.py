"""Tests of infusion_tf.chains against scipy and numpy references (Sections 2.2, 2.3.1 and 2.4).

Statistical checks use a fixed seed and a tolerance of 5 standard errors of the checked statistic.
"""

import numpy as np
import pytest
import tensorflow as tf
from scipy import special, stats

from infusion_tf import chains
from infusion_tf.networks import MLPOperator

Z_TOL = 5.0  # standard errors


def _seed(a, b=0):
    return tf.constant([a, b], tf.int32)


def _numpy_infusion_log_prob(z, x, m, v, alpha, delta):
    """Reference of log q(t): sum_i log[(1 - alpha) N(z_i; m_i, v_i) + alpha N(z_i; x_i, delta)], in float64."""
    z, x, m, v = (np.asarray(a, np.float64) for a in (z, x, m, v))
    log_p = stats.norm.logpdf(z, m, np.sqrt(v))
    log_x = stats.norm.logpdf(z, x, np.sqrt(delta))
    with np.errstate(divide="ignore"):
        weights = np.log([1.0 - alpha, alpha])
    per_pixel = special.logsumexp(np.stack([log_p + weights[0], log_x + weights[1]]), axis=0)
    return per_pixel.reshape(len(z), -1).sum(axis=1)


class SpyOperator:
    """A small deterministic operator that records every (z, step) it receives, for hand recomputation.

    mean = sigmoid(a[step] * z + b[step]), variance = v[step] + 0.01 * z**2 (depends on z).
    """

    def __init__(self, num_steps, seed=0):
        rng = np.random.default_rng(seed)
        self.a = rng.uniform(0.5, 2.0, num_steps).astype(np.float32)
        self.b = rng.normal(0.0, 0.5, num_steps).astype(np.float32)
        self.v = rng.uniform(0.01, 0.1, num_steps).astype(np.float32)
        self.num_steps = num_steps
        self.calls = []

    def numpy(self, z, step):
        step = min(step, self.num_steps - 1)
        z = np.asarray(z, np.float64)
        return special.expit(self.a[step] * z + self.b[step]), self.v[step] + 0.01 * z ** 2

    def __call__(self, z, step, use_batch_statistics=False, update_statistics=False):
        self.calls.append((np.asarray(z), int(step)))
        index = tf.minimum(tf.cast(step, tf.int32), self.num_steps - 1)
        a, b, v = (tf.gather(tf.constant(p), index) for p in (self.a, self.b, self.v))
        return tf.sigmoid(a * z + b), v + 0.01 * z * z


def _small_mlp(example_shape=(4, 4, 1), num_steps=3):
    op = MLPOperator(example_shape, num_steps, width=32, depth=1)
    op.build((None, *example_shape))
    return op


# ------------------------------------------------------------------------------- densities
def test_gaussian_log_prob_matches_scipy():
    rng = np.random.default_rng(0)
    z = rng.normal(0.5, 1.0, (3, 5)).astype(np.float32)
    mean = rng.uniform(0, 1, (3, 5)).astype(np.float32)
    variance = rng.uniform(1e-4, 0.2, (1, 5)).astype(np.float32)  # broadcasts
    expected = stats.norm.logpdf(z, mean, np.sqrt(variance.astype(np.float64)))
    np.testing.assert_allclose(chains.gaussian_log_prob(z, mean, variance), expected, rtol=1e-5, atol=1e-4)
    # A scalar variance, as delta_x uses.
    np.testing.assert_allclose(chains.gaussian_log_prob(z, mean, 1e-4),
                               stats.norm.logpdf(z, mean, 1e-2), rtol=1e-5)


def test_prior_log_prob_sums_over_pixels():
    rng = np.random.default_rng(1)
    z = rng.normal(0.5, 0.3, (4, 3, 3, 1)).astype(np.float32)
    mean = rng.uniform(0, 1, (3, 3, 1)).astype(np.float32)
    variance = rng.uniform(0.01, 0.1, (3, 3, 1)).astype(np.float32)
    expected = stats.norm.logpdf(z, mean, np.sqrt(variance)).reshape(4, -1).sum(1)
    result = chains.prior_log_prob(z, mean, variance)
    assert result.shape == (4,)
    np.testing.assert_allclose(result, expected, rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.3, 0.99, 1.0])
def test_infusion_log_prob_matches_numpy_mixture(alpha):
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (5, 6, 2)).astype(np.float32)
    # Half the pixels near x (the delta_x component dominates), half drawn from p.
    m = rng.uniform(0, 1, x.shape).astype(np.float32)
    v = rng.uniform(0.005, 0.1, x.shape).astype(np.float32)
    near = rng.uniform(size=x.shape) < 0.5
    z = np.where(near, x + 0.01 * rng.normal(size=x.shape), m + np.sqrt(v) * rng.normal(size=x.shape))
    z = z.astype(np.float32)
    delta = 1e-4
    result = chains.infusion_log_prob(z, x, m, v, alpha, delta).numpy()
    assert result.shape == (5,)
    assert np.all(np.isfinite(result))
    np.testing.assert_allclose(result, _numpy_infusion_log_prob(z, x, m, v, alpha, delta), rtol=1e-5, atol=1e-3)
    if alpha == 0.0:  # only p's component
        np.testing.assert_allclose(result, chains.prior_log_prob(z, m, v), rtol=1e-6)
    if alpha == 1.0:  # only delta_x
        np.testing.assert_allclose(result, stats.norm.logpdf(z, x, 1e-2).reshape(5, -1).sum(1), rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_infusion_log_prob_gradients_finite_at_edges(alpha):
    rng = np.random.default_rng(3)
    x = tf.constant(rng.uniform(size=(2, 8)), tf.float32)
    m = tf.Variable(rng.uniform(size=(2, 8)), dtype=tf.float32)
    v = tf.Variable(rng.uniform(0.01, 0.1, (2, 8)), dtype=tf.float32)
    z = tf.constant(rng.uniform(size=(2, 8)), tf.float32)
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(chains.infusion_log_prob(z, x, m, v, alpha, 1e-4))
    grads = tape.gradient(value, [m, v])
    for g in grads:
        assert np.all(np.isfinite(g.numpy()))
    if alpha < 1.0:
        assert np.any(grads[0].numpy() != 0.0)


def test_prior_parameters_floor():
    mean = np.array([[0.0, 0.5], [1.0, 0.2]])
    variance = np.array([[0.0, 1e-6], [0.3, 1e-4]])
    m, v = chains.prior_parameters(mean, variance, 1e-4)
    assert m.dtype == np.float32 and v.dtype == np.float32
    np.testing.assert_array_equal(m, mean.astype(np.float32))
    np.testing.assert_allclose(v, [[1e-4, 1e-4], [0.3, 1e-4]], rtol=1e-7)
    assert np.all(v >= np.float32(1e-4))


# ------------------------------------------------------------------------------- sampling
def test_sample_prior_statistics():
    mean = np.array([0.2, 0.7, 0.5], np.float32)
    variance = np.array([0.01, 0.04, 0.09], np.float32)
    n = 20000
    z = chains.sample_prior(n, mean, variance, _seed(3)).numpy()
    assert z.shape == (n, 3)
    standardized = (z - mean) / np.sqrt(variance)
    assert np.all(np.abs(standardized.mean(0)) < Z_TOL / np.sqrt(n))
    assert np.all(np.abs(standardized.var(0) - 1.0) < Z_TOL * np.sqrt(2.0 / n))


def test_infusion_sample_alpha_one_returns_x_within_delta():
    delta = 1e-4
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(50, 400)).astype(np.float32)
    p_mean = np.full_like(x, 5.0)  # far from x: any pixel taken from p would show
    p_variance = np.full_like(x, 0.01)
    z = chains.infusion_sample(x, p_mean, p_variance, 1.0, delta, _seed(5)).numpy()
    n = z.size
    diff = (z.astype(np.float64) - x)
    sigma = np.sqrt(delta)
    assert abs(diff.mean()) < Z_TOL * sigma / np.sqrt(n)
    assert abs(diff.std() - sigma) < Z_TOL * sigma / np.sqrt(2.0 * n)
    assert np.abs(diff).max() < 7 * sigma


def test_infusion_sample_alpha_zero_ignores_x_and_follows_p():
    rng = np.random.default_rng(6)
    shape = (100, 300)
    p_mean = rng.uniform(size=shape).astype(np.float32)
    p_variance = rng.uniform(0.001, 0.1, shape).astype(np.float32)
    x1 = rng.uniform(size=shape).astype(np.float32)
    x2 = rng.uniform(size=shape).astype(np.float32)
    z1 = chains.infusion_sample(x1, p_mean, p_variance, 0.0, 1e-4, _seed(7)).numpy()
    z2 = chains.infusion_sample(x2, p_mean, p_variance, 0.0, 1e-4, _seed(7)).numpy()
    np.testing.assert_array_equal(z1, z2)
    standardized = (z1.astype(np.float64) - p_mean) / np.sqrt(p_variance)
    n = standardized.size
    assert abs(standardized.mean()) < Z_TOL / np.sqrt(n)
    assert abs(standardized.var() - 1.0) < Z_TOL * np.sqrt(2.0 / n)


@pytest.mark.parametrize("alpha", [0.05, 0.3, 0.8])
def test_fraction_of_pixels_from_x_is_alpha(alpha):
    shape = (100, 784)
    x = np.zeros(shape, np.float32)
    p_mean = np.full(shape, 10.0, np.float32)  # p's pixels land near 10, x's near 0
    p_variance = np.full(shape, 0.01, np.float32)
    z = chains.infusion_sample(x, p_mean, p_variance, alpha, 1e-4, _seed(8)).numpy()
    from_x = np.abs(z) < 1.0
    assert np.all(from_x | (np.abs(z - 10.0) < 1.0))
    n = from_x.size
    assert abs(from_x.mean() - alpha) < Z_TOL * np.sqrt(alpha * (1 - alpha) / n)


@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.5, 0.97, 1.0])
def test_one_uniform_gives_the_choice_and_an_independent_standard_normal(alpha):
    """mixture_choice_and_noise: P(from x) = alpha, and the noise is N(0, 1) on each side (Kolmogorov-Smirnov),
    so the choice and the noise are independent, as two separate random streams would make them."""
    uniform = tf.random.stateless_uniform([400_000], _seed(11))
    from_x, noise = (t.numpy() for t in chains.mixture_choice_and_noise(uniform, tf.constant(alpha)))
    n = from_x.size
    assert abs(from_x.mean() - alpha) <= Z_TOL * np.sqrt(max(alpha * (1 - alpha), 1e-12) / n)
    assert np.all(np.isfinite(noise))
    for side in (from_x, ~from_x):
        if side.sum() < 1000:
            continue
        assert stats.kstest(noise[side], "norm").pvalue > 1e-4
        m = side.sum()
        assert abs(noise[side].mean()) < Z_TOL / np.sqrt(m)
        assert abs(noise[side].var() - 1.0) < Z_TOL * np.sqrt(2.0 / m)


def test_infusion_sample_is_reparametrized():
    """Section 2.4.1: gradients reach p's mean exactly through the pixels drawn from p."""
    shape = (40, 100)
    alpha = 0.3
    x = tf.zeros(shape)
    p_mean = tf.Variable(tf.fill(shape, 10.0))
    with tf.GradientTape() as tape:
        z = chains.infusion_sample(x, p_mean, tf.fill(shape, 0.01), alpha, 1e-4, _seed(9))
        total = tf.reduce_sum(z)
    grad = tape.gradient(total, p_mean).numpy()
    from_p = np.abs(z.numpy() - 10.0) < 1.0
    np.testing.assert_array_equal(grad, from_p.astype(np.float32))


# ------------------------------------------------------------------------------- infusion chain
def test_infusion_chain_terms_match_hand_recomputation():
    """Every term of Eq. 3 and of the denoising objective, recomputed in numpy from the chain's samples."""
    num_steps, delta = 4, 1e-4
    alpha = np.array([0.1, 0.3, 0.5, 0.7], np.float32)
    rng = np.random.default_rng(10)
    x = rng.uniform(size=(6, 3, 3, 1)).astype(np.float32)
    prior_mean = rng.uniform(size=(3, 3, 1)).astype(np.float32)
    prior_variance = rng.uniform(0.01, 0.1, (3, 3, 1)).astype(np.float32)
    op = SpyOperator(num_steps)
    terms = chains.infusion_chain(op, x, prior_mean, prior_variance, tf.constant(alpha), delta, _seed(11))
    assert [tuple(t.shape) for t in terms[:3]] == [(num_steps, 6)] * 3
    assert tuple(terms.final_squared_error.shape) == (6,)
    # The operator is called once per transition p(1) .. p(T), with steps 0 .. T-1 and z~(0) .. z~(T-1).
    assert [step for _, step in op.calls] == list(range(num_steps))
    z_tilde = [z for z, _ in op.calls]

    def total(values):
        return values.reshape(6, -1).sum(1)

    log_p_target, log_p_chain, log_q_chain = [], [], []
    means, variances = [prior_mean], [prior_variance]  # parameters of p's component of q(t), t = 0 .. T-1
    for t in range(1, num_steps):
        m, v = op.numpy(z_tilde[t - 1], t - 1)
        means.append(m)
        variances.append(v)
    for t in range(num_steps):
        z, m, v = z_tilde[t], np.broadcast_to(means[t], x.shape), np.broadcast_to(variances[t], x.shape)
        log_p_chain.append(total(stats.norm.logpdf(z, m, np.sqrt(v))))
        log_q_chain.append(_numpy_infusion_log_prob(z, x, m, v, float(alpha[t]), delta))
        m_next, v_next = op.numpy(z, t)
        log_p_target.append(total(stats.norm.logpdf(x, m_next, np.sqrt(v_next))))
    np.testing.assert_allclose(terms.log_p_target, np.array(log_p_target), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(terms.log_p_chain, np.array(log_p_chain), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(terms.log_q_chain, np.array(log_q_chain), rtol=1e-4, atol=1e-3)
    # m_next is now the mean of p(T)(. | z~(T-1)): the squared error the isotropic variant rescoring uses.
    np.testing.assert_allclose(terms.final_squared_error, total((x - m_next) ** 2), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("example_shape", [(4, 4, 1), (6,)], ids=["image", "vector"])
def test_trajectory_scored_at_once_equals_the_step_by_step_chain(example_shape):
    """infusion_trajectory + score_infusion_chain (the training step's two passes) give infusion_chain's
    draws and terms for the same seed, with batch statistics and with moving statistics."""
    num_steps, delta = 3, 1e-4
    alpha = tf.constant([0.0, 0.3, 0.6], tf.float32)  # alpha(0) = 0 exercises log(0) in the mixture
    rng = np.random.default_rng(12)
    x = tf.constant(rng.uniform(size=(8, *example_shape)).astype(np.float32))
    prior_mean = rng.uniform(size=example_shape).astype(np.float32)
    prior_variance = rng.uniform(0.01, 0.1, example_shape).astype(np.float32)
    op = _small_mlp(example_shape, num_steps)
    for use_batch_statistics in (True, False):
        expected = chains.infusion_chain(op, x, prior_mean, prior_variance, alpha, delta, _seed(13),
                                         use_batch_statistics=use_batch_statistics)
        z_tilde = chains.infusion_trajectory(op, x, prior_mean, prior_variance, alpha, delta, _seed(13),
                                             use_batch_statistics=use_batch_statistics)
        assert tuple(z_tilde.shape) == (num_steps, 8, *example_shape)
        terms = chains.score_infusion_chain(op, x, z_tilde, prior_mean, prior_variance, alpha, delta,
                                            use_batch_statistics=use_batch_statistics)
        for got, want in zip(terms, expected):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-2)


def test_step_terms_match_numpy_one_step_and_all_steps_at_once():
    """The one scoring function of both training paths, against scipy: one step ([B, ...], batch_dims=1) and
    all T steps as one batch ([T, B, ...], batch_dims=2), for a tiny operator and alpha(0) = 0."""
    num_steps, delta, batch = 3, 1e-3, 5
    alpha = np.array([0.0, 0.4, 0.8], np.float32)
    rng = np.random.default_rng(20)
    x = rng.uniform(size=(batch, 2, 3)).astype(np.float32)
    op = SpyOperator(num_steps, seed=21)
    z_tilde = rng.uniform(size=(num_steps, batch, 2, 3)).astype(np.float32)  # z~(0) .. z~(T-1)
    # p(t+1)(. | z~(t)), and p(t) that z~(t) was drawn from: p(0) (a Gaussian of its own) at t = 0.
    mean, variance = (np.stack(p).astype(np.float32) for p in zip(*(op.numpy(z, t) for t, z in enumerate(z_tilde))))
    prior_mean = np.broadcast_to(rng.uniform(size=(2, 3)).astype(np.float32), (1, *x.shape))
    draw_mean = np.concatenate([prior_mean, mean[:-1]])  # [T, B, 2, 3]
    draw_variance = np.concatenate([np.full((1, *x.shape), 0.05, np.float32), variance[:-1]])

    def total(values):
        return values.reshape(batch, -1).sum(1)

    expected = []  # [T, 3 terms, B]
    for t in range(num_steps):
        z, m, v = z_tilde[t], draw_mean[t], draw_variance[t]
        expected.append([total(stats.norm.logpdf(x, mean[t], np.sqrt(variance[t]))),
                         total(stats.norm.logpdf(z, m, np.sqrt(v))),
                         _numpy_infusion_log_prob(z, x, m, v, float(alpha[t]), delta)])
    expected = np.array(expected)
    one_step = [chains._step_terms(x, z_tilde[t], draw_mean[t], draw_variance[t], mean[t], variance[t],
                                   alpha[t], delta) for t in range(num_steps)]
    all_steps = chains._step_terms(x, z_tilde, draw_mean, draw_variance, mean, variance,
                                   alpha.reshape(num_steps, 1, 1, 1), delta, batch_dims=2)
    np.testing.assert_allclose(np.array(one_step), expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.stack(all_steps, axis=1), expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(expected[0, 1], expected[0, 2], rtol=1e-6)  # alpha(0) = 0: q(0) is p(0)


def test_trajectory_draws_are_the_chain_draws_with_one_call_less():
    """Both paths draw from the same iterator: the same z~(t), in the same operator calls (steps 0 .. T-2), and
    only the step-by-step chain makes the last call p(T)(. | z~(T-1)) for its last denoising term."""
    num_steps = 4
    x = np.random.default_rng(22).uniform(size=(6, 9)).astype(np.float32)
    args = (x, np.full(9, 0.5, np.float32), np.full(9, 0.1, np.float32), tf.constant([0.1, 0.3, 0.5, 0.7]), 1e-4,
            _seed(23))
    by_step, drawn = SpyOperator(num_steps), SpyOperator(num_steps)
    chains.infusion_chain(by_step, *args)
    z_tilde = chains.infusion_trajectory(drawn, *args).numpy()  # [T, B, 9]
    assert [step for _, step in by_step.calls] == list(range(num_steps))
    assert [step for _, step in drawn.calls] == list(range(num_steps - 1))
    np.testing.assert_array_equal(z_tilde, np.stack([z for z, _ in by_step.calls]))


def test_infusion_chain_alpha_zero_gives_q_equal_p():
    """With alpha = 0, q(t) is p(t): every log p - log q term of Eq. 3 but the last is zero."""
    op = _small_mlp(num_steps=3)
    x = tf.random.stateless_uniform([8, 4, 4, 1], [1, 1])
    terms = chains.infusion_chain(op, x, tf.fill([4, 4, 1], 0.5), tf.fill([4, 4, 1], 0.1), tf.zeros([3]), 1e-4,
                                  _seed(12))
    np.testing.assert_allclose(terms.log_p_chain, terms.log_q_chain, rtol=1e-6)


def test_infusion_chain_alpha_one_stays_at_x():
    op = SpyOperator(3)
    x = np.random.default_rng(13).uniform(size=(4, 25)).astype(np.float32)
    chains.infusion_chain(op, x, np.full(25, 0.5, np.float32), np.full(25, 0.1, np.float32), tf.ones([3]), 1e-6,
                          _seed(14))
    for z, _ in op.calls:
        assert np.abs(z - x).max() < 7e-3  # 7 standard deviations of delta_x


def test_infusion_chain_fixed_seed_reproducible():
    op = _small_mlp(num_steps=3)
    x = tf.random.stateless_uniform([8, 4, 4, 1], [2, 2])
    args = (op, x, tf.fill([4, 4, 1], 0.5), tf.fill([4, 4, 1], 0.1), tf.constant([0.1, 0.2, 0.3]), 1e-4)
    first = chains.infusion_chain(*args, _seed(15))
    second = chains.infusion_chain(*args, _seed(15))
    other = chains.infusion_chain(*args, _seed(16))
    for a, b, c in zip(first, second, other):
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c)


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_infusion_chain_stop_gradient(stop_gradient):
    """Denoising stops gradients through z~; the lower-bound procedure reparametrizes them (Sec. 2.4.1)."""
    op = SpyOperator(2)
    prior_mean = tf.Variable(tf.fill([9], 0.5))
    x = tf.random.stateless_uniform([4, 9], [3, 3])
    with tf.GradientTape() as tape:
        terms = chains.infusion_chain(op, x, prior_mean, tf.fill([9], 0.1), tf.constant([0.2, 0.4]), 1e-4,
                                      _seed(17), stop_gradient=stop_gradient)
        # log p(1)(x | z~(0)) depends on the prior's mean only through the sample z~(0).
        target = tf.reduce_sum(terms.log_p_target[0])
    grad = tape.gradient(target, prior_mean)
    if stop_gradient:
        assert grad is None or np.all(grad.numpy() == 0.0)
    else:
        assert np.all(np.isfinite(grad.numpy())) and np.any(grad.numpy() != 0.0)


def test_lower_bound_terms_sum_is_log_p_minus_log_q():
    rng = np.random.default_rng(18)
    num_steps, batch = 5, 3
    terms = chains.ChainTerms(*(tf.constant(rng.normal(0, 10, (num_steps, batch)), tf.float32) for _ in range(3)))
    result = chains.lower_bound_terms(terms).numpy()
    assert result.shape == (num_steps + 1, batch)
    p_target, p_chain, q_chain = (t.numpy().astype(np.float64) for t in terms[:3])
    # Eq. 3: log p(z~, x) = log p(0)(z~0) + sum_{t=1}^{T-1} log p(t)(z~t | .) + log p(T)(x | z~(T-1)).
    log_p_joint = p_chain.sum(0) + p_target[-1]
    log_q = q_chain.sum(0)
    np.testing.assert_allclose(result.sum(0), log_p_joint - log_q, rtol=1e-5)
    np.testing.assert_allclose(result[:num_steps], p_chain - q_chain, rtol=1e-6)
    np.testing.assert_array_equal(result[num_steps], p_target[-1])


# ------------------------------------------------------------------------------- sampling chain
def test_sampling_chain_follows_operator_means():
    op = SpyOperator(3)
    prior_mean, prior_variance = np.full(16, 0.5, np.float32), np.full(16, 0.1, np.float32)
    last, chain = chains.sampling_chain(op, prior_mean, prior_variance, 5, 4, _seed(19), return_chain=True)
    chain = chain.numpy()
    assert chain.shape == (5, 5, 16)
    assert [step for _, step in op.calls] == [0, 1, 2, 3]
    # chain[0] = z(0); chain[t] = mean of p(t)(. | z(t-1)); z(t-1) is what the operator received.
    np.testing.assert_array_equal(chain[0], op.calls[0][0])
    for t in range(1, 5):
        z_prev, step = op.calls[t - 1]
        np.testing.assert_allclose(chain[t], op.numpy(z_prev, step)[0], rtol=1e-6)
    np.testing.assert_array_equal(last, chain[-1])


def test_sampling_chain_samples_have_operator_variance():
    """z(t) - mean(z(t-1)) ~ N(0, variance(z(t-1))): the standardized residuals have mean 0, variance 1."""
    op = SpyOperator(2)
    n, d = 200, 50
    chains.sampling_chain(op, np.full(d, 0.5, np.float32), np.full(d, 0.1, np.float32), n, 2, _seed(20),
                          return_means=False)
    z0, z1 = op.calls[0][0], op.calls[1][0]
    m, v = op.numpy(z0, 0)
    standardized = (z1 - m) / np.sqrt(v)
    assert abs(standardized.mean()) < Z_TOL / np.sqrt(n * d)
    assert abs(standardized.var() - 1.0) < Z_TOL * np.sqrt(2.0 / (n * d))


def test_sampling_chain_fixed_seed_reproducible():
    op = _small_mlp(num_steps=3)
    args = (op, tf.fill([4, 4, 1], 0.5), tf.fill([4, 4, 1], 0.1), 6, 3)
    first = chains.sampling_chain(*args, _seed(21), return_means=False)
    second = chains.sampling_chain(*args, _seed(21), return_means=False)
    other = chains.sampling_chain(*args, _seed(22), return_means=False)
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, other)


def test_seed_pair_is_injective_where_an_int32_would_wrap():
    np.testing.assert_array_equal(chains.seed_pair(21), [21, 0])  # the seeds used so far are unchanged
    big = [2**31 - 1, 2**31, 2**31 + 21, 2**32 + 21, 2**61]
    pairs = {tuple(chains.seed_pair(s).numpy()) for s in [21, *big]}
    assert len(pairs) == 1 + len(big)  # tf.constant([s, 0], tf.int32) gave 2**32 + 21 the pair of 21
    derived = tf.random.experimental.stateless_fold_in(tf.constant([3, 4], tf.int32), 5)
    np.testing.assert_array_equal(chains.seed_pair(derived), derived)  # a derived seed passes through
    for bad in (-1, 2**62, tf.constant([1, 2, 3]), tf.constant([0.5, 1.0])):
        with pytest.raises(ValueError, match="seed"):
            chains.seed_pair(bad)


def test_sampling_chain_past_T():
    """A T = 3 model sampled for 7 steps (Section 4.2), with a tensor step count."""
    op = _small_mlp(num_steps=3)
    last, chain = chains.sampling_chain(op, tf.fill([4, 4, 1], 0.5), tf.fill([4, 4, 1], 0.1), 2, tf.constant(7),
                                        _seed(23), return_chain=True)
    assert last.shape == (2, 4, 4, 1)
    assert chain.shape == (8, 2, 4, 4, 1)
    assert np.all(np.isfinite(chain.numpy()))
    np.testing.assert_array_equal(last, chain[-1])
    spy = SpyOperator(3)
    chains.sampling_chain(spy, np.full(4, 0.5, np.float32), np.full(4, 0.1, np.float32), 2, 7, _seed(23))
    assert [step for _, step in spy.calls] == list(range(7))


@pytest.mark.parametrize("return_means", [True, False])
def test_inpainting_keeps_known_pixels(return_means):
    op = _small_mlp(example_shape=(6, 6, 1), num_steps=3)
    rng = np.random.default_rng(24)
    known = rng.uniform(size=(3, 6, 6, 1)).astype(np.float32)
    mask = (rng.uniform(size=known.shape) < 0.5).astype(np.float32)
    last, chain = chains.sampling_chain(op, tf.fill([6, 6, 1], 0.5), tf.fill([6, 6, 1], 0.1), 3, 5, _seed(25),
                                        known=known, mask=mask, return_chain=True, return_means=return_means)
    keep = mask == 1.0
    for image in [last.numpy(), *chain.numpy()]:
        np.testing.assert_array_equal(image[keep], known[keep])
        assert not np.allclose(image[~keep], known[~keep])  # the rest is generated
