"""The short-run model (infusion_tf/short_run.py): Langevin inference against a Gaussian posterior in closed
form, the likelihood estimate against the exact log p(y) of a linear-Gaussian generator, and tiny end-to-end runs
through training.train, eval/run.py and train/run.py.

The linear-Gaussian generator: G(z) = z W + b, z ~ N(0, I_m), y = G(z) + sigma eps in R^d. Then
p(y) = N(b, W^T W + sigma^2 I), and the posterior is N(mu, A^-1) with A = I + W W^T / sigma^2 and
mu = A^-1 W (y - b) / sigma^2. Langevin with step s (h = s^2 / 2) on a Gaussian keeps the mean mu and has the
stationary covariance A^-1 (I - h A / 2)^-1 (the discretization's known bias), which the test checks exactly.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from infusion_tf import evaluate, registry, short_run

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(batch_size=50, langevin_steps=2, learning_steps=2, proposal_chains=2, proposal_steps=4)


def linear_gaussian(m=2, d=3, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.6, (m, d)).astype(np.float32)
    b = rng.normal(0.0, 0.3, d).astype(np.float32)
    return w, b, (lambda z: tf.matmul(z, w) + b)


def posterior(w, b, y, sigma):
    precision = np.eye(len(w)) + w @ w.T / sigma**2
    cov = np.linalg.inv(precision)
    return cov @ w @ (y - b) / sigma**2, cov, precision


def test_langevin_chain_reaches_the_gaussian_posterior_with_its_discretization_variance():
    w, b, generator = linear_gaussian()
    sigma, s, n = 0.5, 0.3, 4000
    y = np.array([0.4, -0.2, 0.7], np.float32)
    mu, cov, precision = posterior(w, b, y, sigma)
    h = s**2 / 2
    stationary = cov @ np.linalg.inv(np.eye(2) - h * precision / 2)  # ULA on a Gaussian
    z, _, _ = short_run.short_run_langevin(generator, tf.zeros([n, 2]), tf.tile(y[None], [n, 1]), sigma, s, 300,
                                           tf.constant([3, 4]), keep_from=299)
    z = z.numpy().astype(np.float64)  # n independent chains, converged ((1 - h)^300 < 1e-5)
    sd = np.sqrt(np.diag(stationary))
    np.testing.assert_allclose(z.mean(0), mu, atol=5 * sd.max() / math.sqrt(n))
    np.testing.assert_allclose(np.cov(z.T), stationary, atol=5 * sd.max() ** 2 * math.sqrt(2 / n))
    # The step is the paper's update exactly: gradient descent on U with rate s^2 / 2 plus s times the noise.
    z0, noise = tf.constant([[0.3, -0.1]]), tf.constant([[0.5, 2.0]])
    expected = z0.numpy()[0] - h * (precision @ z0.numpy()[0] - w @ (y - b) / sigma**2) + s * noise.numpy()[0]
    step = short_run.langevin_step(generator, z0, y[None], sigma, s, noise).numpy()[0]
    np.testing.assert_allclose(step, expected, rtol=1e-5, atol=1e-5)


def test_importance_sampling_gives_the_exact_log_likelihood_of_a_linear_gaussian_generator():
    w, b, generator = linear_gaussian()
    sigma = 0.5
    y = np.array([[0.4, -0.2, 0.7], [-1.0, 0.5, 0.1]], np.float32)
    exact = stats.multivariate_normal(b, w.T @ w + sigma**2 * np.eye(3)).logpdf(y)
    posts = [posterior(w, b, row, sigma) for row in y]
    # A proposal with the posterior's mean and a wider diagonal variance ...
    mean = np.array([p[0] for p in posts], np.float32)
    weights = short_run.gaussian_log_weights(generator, y, mean, np.full_like(mean, 0.5), sigma, 20000,
                                             tf.constant([1, 2])).numpy().sum(0).astype(np.float64)  # [2, k]
    estimate = np.logaddexp.reduce(weights, axis=1) - math.log(20000)
    rel_se = np.exp(weights - weights.max(1, keepdims=True)).std(1) / np.exp(weights - weights.max(1, keepdims=True)
                                                                               ).mean(1) / math.sqrt(20000)
    np.testing.assert_allclose(estimate, exact, atol=5 * rel_se.max() + 1e-4)
    assert np.all(weights.mean(1) < exact)  # the bound is below log p(y): Jensen
    # ... and the proposal fitted to short-run chains, as the model's log_weights does.
    n_chains = 16
    rows = np.repeat(y, n_chains, axis=0)
    _, chain_mean, chain_var = short_run.short_run_langevin(generator, tf.zeros([len(rows), 2]), rows, sigma, 0.3,
                                                            200, tf.constant([5, 6]))
    center, variance = short_run.fit_gaussian_proposal(tf.reshape(chain_mean, [2, n_chains, 2]),
                                                       tf.reshape(chain_var, [2, n_chains, 2]), widen=1.5)
    weights = short_run.gaussian_log_weights(generator, y, center, variance, sigma, 5000,
                                             tf.constant([7, 8])).numpy().sum(0).astype(np.float64)
    estimate = np.logaddexp.reduce(weights, axis=1) - math.log(5000)
    np.testing.assert_allclose(estimate, exact, atol=0.02)


def test_config_refuses_other_shapes_and_bad_values():
    with pytest.raises(ValueError, match="28x28x1"):
        short_run.ShortRunConfig(example_shape=(2,))
    with pytest.raises(ValueError, match="alpha must be in"):
        short_run.ShortRunConfig(alpha=1.5)
    with pytest.raises(ValueError, match="langevin_steps must be a positive integer"):
        short_run.ShortRunConfig(langevin_steps=0)
    assert registry.MODEL_CONFIGS.get("short_run_ot") is short_run.ShortRunConfig


def test_training_and_evaluation_through_the_protocol(tmp_path, capsys):
    """training.train on 100 MNIST images: one Keras step per batch of Algorithm 1, Adam(0.5, 0.99), the shared
    estimators, the SavedModel's sample signature."""
    from infusion_tf import training

    run = tmp_path / "run"
    config = short_run.ShortRunConfig(train_examples=100, validation_examples=10, epochs=1, **TINY)
    training.train(config, str(run), verbose=2)
    assert "short_run_ot: generator of Table 1" in capsys.readouterr().out
    model = registry.MODELS.get("short_run_ot")(config)
    model.compile()
    assert (model.optimizer.beta_1, model.optimizer.beta_2) == (0.5, 0.99)
    assert (run / "samples" / "samples_epoch0001.png").is_file()
    results = {}
    for estimator, k in (("lower_bound", "2"), ("importance_sampling", "4")):
        out = tmp_path / f"{estimator}.json"
        assert evaluate.main(["--checkpoint", str(run), "--estimator", estimator, "--k", k, "--repeats", "1",
                              "--num-examples", "4", "--output", str(out)]) == 0
        results[estimator] = json.loads(out.read_text())
        assert len(results[estimator]["per_step"]) == 2 and math.isfinite(results[estimator]["mean_nats"])
    loaded = tf.saved_model.load(str(run / "saved_model"))
    images = loaded.signatures["sample"](num_samples=tf.constant(3), num_steps=tf.constant(1),
                                         seed=tf.constant(0))["images"].numpy()
    assert images.shape == (3, 28, 28, 1) and images.min() >= 0.0 and images.max() <= 1.0


def test_the_training_command_trains_the_model(tmp_path):
    run = tmp_path / "cli"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    result = subprocess.run([sys.executable, "train/run.py", "--model", "short_run_ot", "--dataset", "mnist",
                             "--train-examples", "200", "--validation-examples", "10", *flags, "--epochs", "1",
                             "--no-ot-correction", "--output-dir", str(run), "--verbose", "2"],
                            cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "short_run_ot" and config["ot_correction"] is False and config["langevin_steps"] == 2
    assert (run / "checkpoints" / "last.keras").is_file() and (run / "saved_model" / "saved_model.pb").is_file()


def test_log_weights_are_nats_of_x_on_the_unit_scale():
    """log p(x | z) of the model equals log N(x; (G(z) + 1) / 2, (sigma / 2)^2 I), computed with scipy, for the same z."""
    config = short_run.ShortRunConfig(proposal_chains=2, proposal_steps=4)
    model = short_run.ShortRunModel(config)
    x = np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype(np.float32)
    seed = tf.constant([5, 6], tf.int32)
    per_step = model.log_weights(tf.constant(x), 4, seed).per_step.numpy()  # [2, 3, 4]
    _, mean, var = model.infer(tf.constant(x), seed, 2, 4, config.proposal_step_size)
    center, variance = short_run.fit_gaussian_proposal(tf.reshape(mean, [3, 2, 30]), tf.reshape(var, [3, 2, 30]),
                                                       config.proposal_widen)
    eps = tf.random.stateless_normal([3, 4, 30], tf.random.experimental.stateless_fold_in(seed, 3))
    z = (center[:, None] + tf.sqrt(variance)[:, None] * eps).numpy().reshape(12, 30)
    means = (model.generator(z, training=False).numpy().reshape(3, 4, -1) + 1.0) / 2.0
    expected = stats.norm.logpdf(x.reshape(3, 1, -1), means, config.sigma / 2).sum(-1)  # [3, 4]
    np.testing.assert_allclose(per_step[1], expected, rtol=1e-4)
    prior_minus_q = stats.norm.logpdf(z).sum(-1).reshape(3, 4) - stats.norm.logpdf(
        eps.numpy(), 0, 1).sum(-1) + 0.5 * np.log(variance.numpy()).sum(-1)[:, None]
    np.testing.assert_allclose(per_step[0], prior_minus_q, rtol=1e-4, atol=1e-3)
