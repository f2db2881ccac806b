"""The RBM-prior discrete VAE (infusion_tf/dvae_rbm.py) and the binarized_mnist dataset: KL and log p(x) against
enumeration of an 8-latent model, a PCD training step, and a tiny run through the training and evaluation commands."""

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

from infusion_tf import data, dvae_rbm, evaluate
from infusion_tf.binarization import static_binarization

SMALL = dvae_rbm.DVAERBMConfig(latent_units=8, hidden_units=16, train_examples=300, validation_examples=100,
                               epochs=2, pcd_chains=20, pcd_sweeps=5, ais_chains=200, ais_temperatures=2000,
                               validation_ais_chains=20, validation_ais_temperatures=50, sampling_steps=20)


@pytest.fixture(scope="module")
def mnist():
    return data.load_splits("mnist")


def small_model(mnist, **changes) -> dvae_rbm.DVAERBMModel:
    keras.utils.set_random_seed(0)
    model = dvae_rbm.DVAERBMModel(dataclasses.replace(SMALL, **changes))
    model.fit_prior(mnist.train[:300])
    rng = np.random.default_rng(1)
    model.a1.assign(rng.normal(0, 1, 4).astype(np.float32))
    model.a2.assign(rng.normal(0, 1, 4).astype(np.float32))
    if model.config.prior == "rbm":
        model.w.assign(rng.normal(0, 1.5, (4, 4)).astype(np.float32))
    return model


def exact_log_prior(model) -> tuple[np.ndarray, np.ndarray]:
    """Every latent state z [256, 8] and log p(z) [256] of the model's prior, by enumeration in float64."""
    z = np.array(list(itertools.product((0.0, 1.0), repeat=8)))
    a1, a2 = model.a1.numpy().astype(np.float64), model.a2.numpy().astype(np.float64)
    w = model.w.numpy().astype(np.float64) if model.config.prior == "rbm" else np.zeros((4, 4))
    neg_energy = z[:, :4] @ a1 + z[:, 4:] @ a2 + np.einsum("si,ij,sj->s", z[:, :4], w, z[:, 4:])
    return z, neg_energy - special.logsumexp(neg_energy)


def test_config_refuses_bad_values():
    for bad in ({"prior": "gaussian"}, {"latent_units": 7}, {"beta": 0.0}, {"lr_drop_fractions": (0.9, 0.5)},
                {"dequantize": True}, {"ais_temperatures": 2}):
        with pytest.raises(ValueError):
            dataclasses.replace(SMALL, **bad)


def test_binarized_mnist_is_the_models_static_binarization(mnist):
    binary = data.load_splits("binarized_mnist")
    assert binary.train.shape == mnist.train.shape and binary.train.dtype == np.uint8
    assert set(np.unique(binary.test[:100])) == {0, 255}
    expected = static_binarization(tf.constant(mnist.test[:200], tf.float32) / 255.0, 0).numpy()
    np.testing.assert_array_equal(binary.test[:200].reshape(200, -1) / 255.0, expected)
    again = static_binarization(tf.constant(binary.test[:200], tf.float32) / 255.0, 0).numpy()
    np.testing.assert_array_equal(again, expected)  # binary images pass the model's binarization unchanged


@pytest.mark.parametrize("prior", ["rbm", "factorial"])
def test_kl_matches_enumeration(mnist, prior):
    model = small_model(mnist, prior=prior)
    z, log_prior = exact_log_prior(model)
    model.log_z.assign(np.float32(0.0))
    if prior == "rbm":  # the exact log Z, as prepare_evaluation would estimate it
        neg_energy = -model.prior_energy(tf.constant(z, tf.float32)).numpy().astype(np.float64)
        model.log_z.assign(np.float32(special.logsumexp(neg_energy)))
    logits = np.random.default_rng(2).normal(0, 2, (5, 8)).astype(np.float32)
    log_q = (z[None] * special.log_expit(logits[:, None].astype(np.float64)) +
             (1 - z[None]) * special.log_expit(-logits[:, None].astype(np.float64))).sum(-1)  # [5, 256]
    exact = (np.exp(log_q) * (log_q - log_prior[None])).sum(-1)
    np.testing.assert_allclose(model.kl(tf.constant(logits)).numpy(), exact, rtol=1e-4, atol=1e-3)


def test_ais_log_z_and_importance_sampling_match_the_exact_log_likelihood(mnist):
    """prepare_evaluation's AIS log Z equals the enumerated one within 4 of its standard errors, and 4000-sample
    importance sampling with it equals the exact log p(x) = logsumexp_z log p(x | z) p(z) within 5 standard errors."""
    model = small_model(mnist)
    z, log_prior = exact_log_prior(model)
    neg_energy = -model.prior_energy(tf.constant(z, tf.float32)).numpy().astype(np.float64)
    prepared = model.prepare_evaluation(seed=0)
    assert abs(prepared["log_z"] - special.logsumexp(neg_energy)) < 4 * prepared["stderr"] + 2e-3, prepared
    x = mnist.test[:10].astype(np.float32) / 255.0
    x_binary = static_binarization(tf.constant(x), 0).numpy().astype(np.float64)  # [10, 784]
    decoded = model.decoder(tf.constant(z, tf.float32), training=False).numpy().astype(np.float64)  # [256, 784]
    log_px_z = x_binary @ special.log_expit(decoded).T + (1 - x_binary) @ special.log_expit(-decoded).T
    exact = special.logsumexp(log_px_z + log_prior[None], axis=1)  # [10]
    per_step = model.log_weights(tf.constant(x), 4000, tf.constant([3, 4])).per_step.numpy()
    assert per_step.shape == (3, 10, 4000)
    np.testing.assert_allclose(per_step[0], -prepared["log_z"], rtol=1e-6)
    log_w = per_step.sum(0).astype(np.float64)
    estimate = special.logsumexp(log_w, axis=1) - math.log(4000)
    w = np.exp(log_w - log_w.max(axis=1, keepdims=True))
    se = w.std(axis=1) / (math.sqrt(4000) * w.mean(axis=1))
    assert np.all(np.abs(estimate - exact) < 5 * se + 5e-3), (estimate - exact, se)
    assert np.all(log_w.mean(1) < exact)  # the ELBO lies below


def test_a_training_step_advances_the_pcd_chains_and_learns_the_prior(mnist):
    model = small_model(mnist)
    model.compile()
    before_chains, before_w = model.pcd_z1.numpy().copy(), model.w.numpy().copy()
    logs = model.train_step(tf.constant(mnist.train[:50].astype(np.float32) / 255.0))
    assert float(logs["kl_weight"]) == 0 and (model.w.numpy() == before_w).all()  # the KL is annealed from 0
    logs = model.train_step(tf.constant(mnist.train[50:100].astype(np.float32) / 255.0))
    assert float(logs["kl_weight"]) == pytest.approx(1 / (0.3 * 6))
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert (model.pcd_z1.numpy() != before_chains).any() and (model.w.numpy() != before_w).any()
    schedule = dvae_rbm.learning_rate_schedule(model.config)  # 2 epochs x 3 steps: drops after steps 3, 4, 5
    assert [float(schedule(s)) for s in (3, 4, 5, 6)] == pytest.approx([3e-3, 9e-4, 2.7e-4, 8.1e-5], rel=1e-6)


def run_eval(run: str, *flags) -> dict:
    out = f"{run}/results.json"
    assert evaluate.main(["--checkpoint", run, "--output", out, "--num-examples", "50", *flags]) == 0
    with open(out) as f:
        return json.load(f)


def test_training_and_evaluation_commands_run_the_rbm_model_end_to_end(tmp_path, capsys):
    from infusion_tf.cli import train_main

    run = str(tmp_path / "rbm")
    assert train_main(["--model", "dvae_rbm", "--dataset", "binarized_mnist", "--latent-units", "20",
                       "--hidden-units", "16", "--train-examples", "200", "--validation-examples", "100",
                       "--epochs", "2", "--pcd-chains", "10", "--pcd-sweeps", "3", "--validation-ais-chains", "10",
                       "--validation-ais-temperatures", "20", "--ais-chains", "20", "--ais-temperatures", "100",
                       "--sampling-steps", "10", "--output-dir", run, "--verbose", "2"]) == 0
    assert "dvae_rbm model" in capsys.readouterr().out
    rows = open(f"{run}/log.csv").read().splitlines()
    assert len(rows) == 3 and "val_lower_bound" in rows[0] and "kl_weight" in rows[0]
    resumed = keras.saving.load_model(f"{run}/checkpoints/last.keras")  # what --resume loads
    assert int(resumed.optimizer.iterations.numpy()) == 2 * 2  # 2 epochs of 200 // 100 steps: the optimizer's state
    bound = run_eval(run, "--estimator", "lower_bound", "--k", "1", "--repeats", "1")
    many = run_eval(run, "--estimator", "importance_sampling", "--k", "50", "--repeats", "1")
    assert bound["prepared"]["method"] == "annealed importance sampling" and bound["prepared"]["chains"] == 20
    assert len(many["per_step"]) == 3 and math.isfinite(many["mean_nats"])
    assert many["mean_nats"] > bound["mean_nats"]
