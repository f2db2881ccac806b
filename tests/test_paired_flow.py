"""MADE/MAF (maf.py), the paired-flow sampler and its diagnostics (paired_flow.py), the exact kidney sampler, and the
Bayesian logistic-regression pieces (bayes_logreg.py), against numpy/scipy references."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import special, stats

from infusion_tf import annealing, maf, paired_flow, toy_densities


def _random_made(dim, hidden, seed):
    keras.utils.set_random_seed(seed)
    made = maf.MADE(dim, hidden)
    made.kernels[-1].assign(0.3 * np.random.default_rng(seed).normal(size=made.kernels[-1].shape).astype(np.float32))
    return made


def test_made_output_d_depends_only_on_inputs_before_d():
    made = _random_made(5, (16, 16), seed=0)
    x = tf.random.normal([3, 5], seed=1)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        shift, log_scale = made(x)
    for out in (shift, log_scale):
        jac = tape.batch_jacobian(out, x).numpy()  # [3, 5, 5]: d out_i / d x_j
        assert np.all(jac[:, np.triu_indices(5)[0], np.triu_indices(5)[1]] == 0.0)
        assert np.all(np.abs(jac[:, np.tril_indices(5, -1)[0], np.tril_indices(5, -1)[1]]).max(axis=0) > 0)


def test_maf_density_is_the_change_of_variables_and_integrates_to_one():
    made = _random_made(2, (32, 32), seed=2)
    flow = maf.maf_distribution([made], 2)
    x = np.random.default_rng(3).normal(size=(50, 2)).astype(np.float32)
    # x = flip(y), y = MAF(z): z = (y - shift(y)) exp(-log_scale(y)), log nu = log N(z) - sum log_scale(y)
    y = x[:, ::-1].copy()
    shift, log_scale = (t.numpy().astype(np.float64) for t in made(y))
    z = (y - shift) * np.exp(-log_scale)
    expected = stats.norm.logpdf(z).sum(1) - log_scale.sum(1)
    np.testing.assert_allclose(flow.log_prob(x).numpy(), expected, atol=1e-4)

    two = maf.maf_distribution([_random_made(2, (32, 32), seed=s) for s in (4, 5)], 2)
    grid = np.linspace(-9, 9, 601)
    points = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2).astype(np.float32)
    mass = np.exp(two.log_prob(points).numpy().astype(np.float64)).sum() * (grid[1] - grid[0]) ** 2
    assert abs(mass - 1.0) < 2e-3
    samples = two.sample(4000, seed=tf.constant([1, 2], tf.int32)).numpy()
    assert np.all(np.isfinite(samples))  # the slow direction (D passes) inverts the fast one:
    np.testing.assert_allclose(two.bijector.inverse(samples[:5]).numpy(),
                               two.bijector.inverse(two.bijector.forward(two.bijector.inverse(samples[:5]))).numpy(),
                               atol=1e-4)


def test_made_masks_refuse_one_dimension():
    with pytest.raises(ValueError, match="dim >= 2"):
        maf.made_masks(1, (8,))


def test_toy_log_u_in_tensorflow_match_the_numpy_densities():
    x = np.random.default_rng(0).normal(scale=3.0, size=(200, 2))
    for name, fn in paired_flow.TOY_LOG_U.items():
        np.testing.assert_allclose(fn(tf.constant(x)).numpy(), toy_densities.log_unnormalized(name, x), rtol=1e-10)


def test_importance_diagnostics_against_gaussian_closed_forms():
    # r = N(0, 1), mu = N(0, s^2) known as u = Z mu with Z = 3: KL(r || mu) = log s + 1 / (2 s^2) - 1/2 and
    # E_r[(mu / r)^2] = 1 / (s^2 sqrt(2 / s^2 - 1)); the ESS fraction tends to its inverse (E_r[mu / r] = 1).
    s, n, log_z = 0.7, 200_000, math.log(3.0)
    x = np.random.default_rng(1).normal(size=n)
    log_u = log_z + stats.norm.logpdf(x, scale=s)
    out = paired_flow.importance_diagnostics(log_u, stats.norm.logpdf(x), log_z)
    kl = math.log(s) + 1 / (2 * s**2) - 0.5
    assert abs(out["reverse_kl"] - kl) < 5 * out["reverse_kl_se"]
    second_moment = 1.0 / (s**2 * math.sqrt(2.0 / s**2 - 1.0))
    assert abs(out["ess_fraction"] - 1.0 / second_moment) < 0.02
    assert abs(out["log_z_estimate"] - log_z) < 0.01
    exact = paired_flow.importance_diagnostics(log_z + stats.norm.logpdf(x[:1000]), stats.norm.logpdf(x[:1000]), log_z)
    assert abs(exact["reverse_kl"]) < 1e-12 and abs(exact["ess_fraction"] - 1.0) < 1e-12


def test_kidney_samples_are_exact():
    """Moments of 40 000 rejection samples against quadrature on a grid: E[x1^2], E[x2^2], P(x1 > 0) = 1/2."""
    x = toy_densities.kidney_samples(40_000, seed=0)
    grid = np.linspace(-6, 6, 1201)
    points = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
    p = np.exp(toy_densities.log_density("kidney", points)) * (grid[1] - grid[0]) ** 2
    for f in (lambda v: v[:, 0] ** 2, lambda v: v[:, 1] ** 2, lambda v: (v[:, 0] > 0).astype(float)):
        values = f(x)
        assert abs(values.mean() - np.sum(p * f(points))) < 5 * values.std() / math.sqrt(len(x))


def test_paired_flow_learns_a_gaussian_from_its_unnormalized_log_density():
    mean, scale = np.array([1.0, -2.0], np.float32), np.array([0.5, 2.0], np.float32)

    def log_u(x):  # N(mean, diag(scale^2)) without its normalizer
        return -0.5 * tf.reduce_sum(((x - mean) / scale) ** 2, axis=-1)

    log_z = float(np.sum(np.log(scale)) + math.log(2 * math.pi))
    sampler = paired_flow.PairedFlowSampler(2, log_u, np.ones(1), blocks=2, hidden=(32, 32), generator_width=32,
                                            generator_depth=2, batch_size=128, flow_steps=3, seed=0)
    sampler.train(400)
    x, log_nu = sampler.flow_samples(2000, seed=1)
    out = paired_flow.importance_diagnostics(log_u(x).numpy(), log_nu, log_z)
    assert out["reverse_kl"] < 0.25 and out["ess_fraction"] > 0.6  # at the start: KL > 1
    g = sampler.generate(2000, seed=2).numpy()
    np.testing.assert_allclose(g.mean(0), mean, atol=0.25)
    np.testing.assert_allclose(g.std(0), scale, rtol=0.2)


def test_paired_flow_refuses_bad_temperatures():
    with pytest.raises(ValueError, match="inverse temperatures > 0"):
        paired_flow.PairedFlowSampler(2, paired_flow.banana_log_u, [0.5, 0.0], blocks=1, hidden=(4, 4))
    with pytest.raises(ValueError, match="inverse temperatures > 0"):
        paired_flow.PairedFlowSampler(2, paired_flow.banana_log_u, [np.inf], blocks=1, hidden=(4, 4))


def test_regularized_objectives_are_the_tempered_objective_of_corollary_2_2():
    """App. B: KL + lambda S = (1 + lambda) F(beta_ent) and KL - lambda E[log mu] = F(beta_lik); at lambda = 0 both
    are the plain reverse KL (without log Z), E[log q] - E[log u], here against numpy means."""
    rng = np.random.default_rng(0)
    log_q, log_u = rng.normal(-2.0, 1.0, 500), rng.normal(-3.0, 2.0, 500)
    plain = log_q.mean() - log_u.mean()
    for form in annealing.FORMS:
        got = float(paired_flow.regularized_objective(form, tf.constant(log_q), tf.constant(log_u), 0.0))
        assert got == pytest.approx(plain, rel=1e-12)
        assert float(paired_flow.tempered_objective(tf.constant(log_q), tf.constant(log_u), 1.0)) == pytest.approx(
            plain, rel=1e-12)
    for lam in (1.0, -0.5, 4.0):
        lik = float(paired_flow.regularized_objective("likelihood", tf.constant(log_q), tf.constant(log_u), lam))
        ent = float(paired_flow.regularized_objective("entropy", tf.constant(log_q), tf.constant(log_u), lam))
        assert lik == pytest.approx(plain - lam * log_u.mean(), rel=1e-12)
        assert ent == pytest.approx(plain + lam * log_q.mean(), rel=1e-12)
        tempered = {form: float(paired_flow.tempered_objective(tf.constant(log_q), tf.constant(log_u),
                                                               annealing.annealed_beta(form, lam)))
                    for form in annealing.FORMS}
        assert lik == pytest.approx(tempered["likelihood"], rel=1e-12)
        assert ent == pytest.approx((1 + lam) * tempered["entropy"], rel=1e-12)
    with pytest.raises(ValueError, match="annealing form"):
        paired_flow.regularized_objective("free_energy", tf.constant(log_q), tf.constant(log_u), 0.5)


@pytest.mark.parametrize("form, lam", [("likelihood", 1.0), ("likelihood", -0.5), ("entropy", 1.0)])
def test_regularized_gradient_vanishes_at_the_tempered_target(form, lam):
    """q = N(m, a^2 I_2) by x = m + a z against mu = N(0, I_2), log q held fixed as the paired flow is (the gradient
    flows through x only). Closed form: d/da = (1 + lambda) (-2 / a) + 2 a (entropy), -2 / a + (1 + lambda) 2 a
    (likelihood); zero at a* = 1 / sqrt(beta), the scale of mu^beta. The Monte Carlo gradient matches it within 5
    standard errors at a*, 0.7 a* and 1.4 a*, so its sign says which way the form moves the generator."""
    beta = float(annealing.annealed_beta(form, lam))
    a_star = 1.0 / math.sqrt(beta)
    z = tf.random.stateless_normal([20_000, 2], [0, 1], dtype=tf.float64)
    for a_value in (a_star, 0.7 * a_star, 1.4 * a_star):
        a, m = tf.Variable(a_value, dtype=tf.float64), tf.Variable([0.3, -0.2], dtype=tf.float64)
        with tf.GradientTape() as tape:
            x = m + a * z  # [n, 2]
            log_q = -0.5 * tf.reduce_sum(((x - tf.stop_gradient(m)) / tf.stop_gradient(a)) ** 2, -1)
            log_u = -0.5 * tf.reduce_sum(x**2, -1)
            loss = paired_flow.regularized_objective(form, log_q, log_u, lam)
        grad = float(tape.gradient(loss, a))
        scale_q, scale_u = (1 + lam, 1.0) if form == "entropy" else (1.0, 1 + lam)
        expected = scale_q * (-2 / a_value) + scale_u * 2 * a_value
        per_sample = (scale_q * -tf.reduce_sum(z**2, -1) / a_value
                      + scale_u * tf.reduce_sum(z * (m + a_value * z), -1)).numpy()  # its mean is grad
        assert grad == pytest.approx(per_sample.mean(), rel=1e-9)
        assert abs(grad - expected) < 5 * per_sample.std() / math.sqrt(len(per_sample))
        if a_value != a_star:
            assert np.sign(grad) == np.sign(a_value - a_star) and abs(expected) > 0.5


def test_likelihood_annealing_schedule_of_the_toy_command():
    from infusion_tf.paired_flow_toys import PairedFlowSettings, annealed_betas

    lik = annealed_betas(PairedFlowSettings(steps=100, anneal="likelihood", lambda0=-0.5), -0.5)
    np.testing.assert_allclose(lik, 1.0 - 0.5 * np.maximum(1 - np.arange(100) / 90.0, 0.0), rtol=1e-12)
    ent = annealed_betas(PairedFlowSettings(steps=100, anneal="entropy", lambda0=1.0), 1.0)
    np.testing.assert_allclose(ent, 1.0 / (2.0 - np.minimum(np.arange(100) / 90.0, 1.0)), rtol=1e-12)
    assert lik[0] == ent[0] == 0.5 and lik[-1] == ent[-1] == 1.0  # the same start and end, other paths between
    np.testing.assert_array_equal(annealed_betas(PairedFlowSettings(anneal="likelihood"), 0.0), [1.0])
    with pytest.raises(ValueError, match="annealing form"):
        PairedFlowSettings(anneal="both")
    with pytest.raises(ValueError, match="> -1"):
        PairedFlowSettings(anneal="likelihood", lambda0=-1.0)


def test_paired_flow_learns_the_tempered_gaussian_of_the_likelihood_form():
    """Constant lambda = 1 with the likelihood form, beta_lik = 2: the target u^2 of N(m, S) is N(m, S / 2), so the
    generator's standard deviations shrink by sqrt(2) (the entropy form at lambda = 1 would widen them by sqrt(2))."""
    mean, scale = np.array([1.0, -2.0], np.float32), np.array([0.5, 2.0], np.float32)

    def log_u(x):
        return -0.5 * tf.reduce_sum(((x - mean) / scale) ** 2, axis=-1)

    betas = annealing.annealed_beta("likelihood", np.ones(1))
    sampler = paired_flow.PairedFlowSampler(2, log_u, betas, blocks=2, hidden=(32, 32), generator_width=32,
                                            generator_depth=2, batch_size=128, flow_steps=3, seed=0)
    sampler.train(400)
    g = sampler.generate(2000, seed=2).numpy()
    np.testing.assert_allclose(g.mean(0), mean, atol=0.2)
    np.testing.assert_allclose(g.std(0), scale / math.sqrt(2.0), rtol=0.15)  # sqrt(2) lies at 1.41: well outside


def test_logistic_regression_posterior_and_predictive_against_numpy():
    bayes_logreg = pytest.importorskip("infusion_tf.bayes_logreg")
    rng = np.random.default_rng(0)
    x, y, w = rng.normal(size=(30, 4)), (rng.uniform(size=30) < 0.5).astype(float), rng.normal(size=(7, 4))
    log_lik = (y * np.log(special.expit(w @ x.T)) + (1 - y) * np.log(special.expit(-w @ x.T))).sum(1)
    expected = log_lik + stats.norm.logpdf(w).sum(1) + 2 * math.log(2 * math.pi)  # prior without its constant
    got = bayes_logreg.log_posterior(x, y)(tf.constant(w, tf.float32)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    p1 = special.expit(w @ x.T).mean(0)
    out = bayes_logreg.predictive(w, x, y)
    assert out["accuracy"] == pytest.approx(np.mean((p1 > 0.5) == (y > 0.5)))
    assert out["log_likelihood"] == pytest.approx(np.mean(np.log(np.where(y > 0.5, p1, 1 - p1))), rel=1e-9)


def test_cancer_split_has_the_sizes_of_table_2():
    from infusion_tf import bayes_logreg  # scikit-learn comes with the test extra (setup.py)

    split = bayes_logreg.load_cancer(0)
    assert split.x_train.shape == (285, 31) and split.x_test.shape == (284, 31)
    np.testing.assert_allclose(split.x_train[:, :30].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(split.x_train[:, 30], 1.0)
    assert set(np.unique(split.y_test)) == {0.0, 1.0}
