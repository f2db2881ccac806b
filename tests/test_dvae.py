"""The directed-prior discrete VAE (infusion_tf/dvae.py): binarization, bounds, importance sampling against an exactly
enumerable model, and a tiny end-to-end run through the training and evaluation commands."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import special

from infusion_tf import data, dvae, evaluate

SMALL = dvae.DVAEConfig(latent_units=8, hidden_units=16, train_examples=500, validation_examples=100, epochs=2)


@pytest.fixture(scope="module")
def mnist():
    return data.load_splits("mnist")


def pixels(array) -> np.ndarray:
    return array.astype(np.float32) / 255.0


def small_model(mnist, **changes) -> dvae.DVAEModel:
    keras.utils.set_random_seed(0)
    model = dvae.DVAEModel(dataclasses.replace(SMALL, **changes))
    model.fit_prior(mnist.train[:500])
    model.prior_logits.assign(np.linspace(-1.5, 1.5, model.config.latent_units).astype(np.float32))
    return model


def test_config_refuses_bad_values():
    for field, value, message in (("network", "conv", "network must be one of"),
                                  ("objective", "iwae", "objective must be one of"),
                                  ("dequantize", True, "dequantize must be False"),
                                  ("beta_start", 0.0, "beta_start and beta_end")):
        with pytest.raises(ValueError, match=message):
            dvae.DVAEConfig(**{field: value})
    assert dvae.DVAEConfig(train_examples=1000, batch_size=100, epochs=3).total_anneal_steps == 30


def test_static_binarization_is_fixed_per_image_and_unbiased(mnist):
    x = pixels(mnist.test[:400])
    binary = dvae.static_binarization(x, seed=0).numpy()
    assert set(np.unique(binary)) <= {0.0, 1.0} and binary.shape == (400, 784)
    np.testing.assert_array_equal(dvae.static_binarization(x[::-1], seed=0).numpy()[::-1], binary)  # per image
    assert (dvae.static_binarization(x, seed=1).numpy() != binary).any()
    p = x.reshape(400, -1).astype(np.float64)
    grey = (p > 0) & (p < 1)  # pixels 0 and 1 are deterministic; the rest are Bernoulli(p)
    z = (binary[grey] - p[grey]).sum() / np.sqrt((p[grey] * (1 - p[grey])).sum())
    assert abs(z) < 4, z
    assert np.array_equal(binary[~grey], p[~grey])


def test_bernoulli_kl_and_log_prob_match_numpy():
    lq, lp = np.array([[-2.0, 0.5, 3.0]]), np.array([0.2, -1.0, 1.0])
    q, p = special.expit(lq), special.expit(lp)
    expected = (q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p))).sum()
    assert dvae.bernoulli_kl(tf.constant(lq), tf.constant(lp)).numpy()[0] == pytest.approx(expected, rel=1e-10)
    z = np.array([[1.0, 0.0, 1.0]])
    assert dvae.bernoulli_log_prob(tf.constant(z), tf.constant(lq)).numpy()[0] == pytest.approx(
        np.log(np.where(z == 1, q, 1 - q)).sum(), rel=1e-10)
    assert dvae.annealed_beta(50, 6.0, 14.0, 100).numpy() == pytest.approx(10.0)
    assert dvae.annealed_beta(500, 6.0, 14.0, 100).numpy() == pytest.approx(14.0)


def exact_log_p(model: dvae.DVAEModel, x: np.ndarray) -> np.ndarray:
    """log p(x) = logsumexp_z log p(z) + log p(x | z) over all 2^n binary z (n = 8)."""
    n = model.config.latent_units
    z = np.array(list(itertools.product([0.0, 1.0], repeat=n)), np.float32)  # [2^n, n]
    log_pz = dvae.bernoulli_log_prob(z, model.prior_logits).numpy()  # [2^n]
    decoded = model.decoder(z)  # [2^n, 784]
    x_binary = model.binarize(x)  # [B, 784]
    log_px_z = np.stack([dvae.bernoulli_log_prob(row[None], decoded).numpy() for row in x_binary.numpy()])
    return special.logsumexp(log_pz[None] + log_px_z, axis=1)  # [B]


def test_importance_sampling_converges_to_the_exact_log_likelihood_and_bounds_order(mnist):
    model = small_model(mnist)
    x = pixels(mnist.test[:20])
    exact = exact_log_p(model, x)
    per_step = model.log_weights(tf.constant(x), 4000, tf.constant([3, 4])).per_step.numpy()  # [2, 20, 4000]
    assert per_step.shape == (2, 20, 4000)
    log_w = per_step.sum(axis=0).astype(np.float64)
    is_estimate = special.logsumexp(log_w, axis=1) - math.log(4000)
    elbo = log_w.mean(axis=1)
    # Delta-method standard error of log(mean w): std(w) / (sqrt(k) mean(w)), from the normalized weights.
    w = np.exp(log_w - log_w.max(axis=1, keepdims=True))
    is_se = w.std(axis=1) / (math.sqrt(4000) * w.mean(axis=1))
    assert np.all(np.abs(is_estimate - exact) < 5 * is_se + 1e-3), (is_estimate - exact, is_se)
    assert abs((is_estimate - exact).mean()) < 5 * math.sqrt((is_se**2).sum()) / 20 + 1e-3
    se = log_w.std(axis=1) / math.sqrt(4000)
    assert np.all(elbo < exact + 4 * se) and elbo.mean() < exact.mean()


def test_marginal_elbo_is_tighter_than_the_joint_elbo_for_the_same_model(mnist):
    """App. D: L_marginal - L_joint = E KL(q(z | zeta, x) || p(z | zeta, x)) >= 0."""
    joint, marginal = small_model(mnist), small_model(mnist, objective="marginal")
    marginal.set_weights(joint.get_weights())
    x = tf.constant(np.repeat(pixels(mnist.test[:10]), 400, axis=0))  # 400 draws of zeta per image
    seed = tf.constant([5, 6])
    difference = (marginal.smoothed_elbo(x, 4.0, seed) - joint.smoothed_elbo(x, 4.0, seed)).numpy()
    assert difference.mean() > 4 * difference.std() / math.sqrt(len(difference)), difference.mean()


@pytest.mark.parametrize("objective,smoothing", [("joint", "exponential"), ("marginal", "exponential"),
                                                 ("marginal", "logistic")])
def test_gradients_of_both_elbos_are_finite_and_reach_the_encoder(mnist, objective, smoothing):
    model = small_model(mnist, objective=objective, smoothing=smoothing)
    with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(model.smoothed_elbo(tf.constant(pixels(mnist.test[:32])), 8.0, tf.constant([1, 2])))
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
    assert np.abs(grads[0].numpy()).sum() > 0  # the encoder learns through the samples zeta


def test_samples_have_the_example_shape_and_take_tensor_seeds(mnist):
    model = small_model(mnist)
    images = model.sample(tf.constant(5), seed=tf.constant([1, 2], tf.int32)).numpy()
    assert images.shape == (5, 28, 28, 1) and images.min() >= 0 and images.max() <= 1
    np.testing.assert_array_equal(model.sample(3, seed=7).numpy(), model.sample(3, seed=7).numpy())


def run_eval(run: str, *flags) -> dict:
    out = f"{run}/results.json"
    assert evaluate.main(["--checkpoint", run, "--output", out, "--num-examples", "100", *flags]) == 0
    with open(out) as f:
        return json.load(f)


def test_training_and_evaluation_commands_run_the_model_end_to_end(tmp_path, capsys):
    from infusion_tf import training
    from infusion_tf.config import load_config

    run = tmp_path / "dvae"
    config = dataclasses.replace(SMALL, network="linear", latent_units=20)
    training.train(config, str(run), verbose=2)
    out = capsys.readouterr().out
    assert "model:     dvae model" in out and load_config(str(run)) == config
    rows = (run / "log.csv").read_text().splitlines()
    assert len(rows) == 3 and "val_lower_bound" in rows[0]
    bound = run_eval(str(run), "--estimator", "lower_bound", "--k", "1", "--repeats", "1")
    k1 = run_eval(str(run), "--estimator", "importance_sampling", "--k", "1", "--repeats", "1")
    many = run_eval(str(run), "--estimator", "importance_sampling", "--k", "50", "--repeats", "1")
    assert len(many["per_step"]) == 2 and math.isfinite(many["mean_nats"])
    assert k1["mean_nats"] == pytest.approx(bound["mean_nats"], abs=1e-3)  # k = 1: the two estimators agree
    assert many["mean_nats"] > bound["mean_nats"]  # importance sampling tightens the bound
    assert tf.saved_model.load(str(run / "saved_model")).signatures["sample"] is not None
