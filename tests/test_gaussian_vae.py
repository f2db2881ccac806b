"""The VAE with short_run_ot's decoder: its ELBO against scipy, its log-weights against its ELBO, the commands."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from infusion_tf import evaluate, gaussian_vae, registry
from tests._helpers import REPO, run_command



def _command(name):
    """The module of eval/<name>.py (eval/ is not a package: a top-level `eval` would shadow the builtin)."""
    spec = importlib.util.spec_from_file_location(f"eval_{name}", REPO / "eval" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


k_ladder_command = _command("k_ladder")


def random_model(seed=0):
    """A VAE with a random encoder output layer (the zero-initialized one would make q = N(0, I))."""
    model = gaussian_vae.GaussianVAE(gaussian_vae.GaussianVAEConfig())
    layer = model.encoder.layers[-1]
    kernel = np.random.default_rng(seed).normal(0, 0.002, size=layer.kernel.shape).astype(np.float32)
    layer.kernel.assign(kernel)
    return model


def test_elbo_equals_scipy_for_the_same_draw():
    """log N(x; (G(z) + 1) / 2, 0.15^2 I) - KL(q || N(0, I)) with scipy's densities and entropies, z the same draw."""
    model = random_model()
    x = np.random.default_rng(1).uniform(size=(3, 28, 28, 1)).astype(np.float32)
    seed = tf.constant([4, 5], tf.int32)
    elbo = model.elbo(tf.constant(x), seed).numpy()
    mean, variance = (t.numpy() for t in model.posterior(tf.constant(x)))
    z = mean + np.sqrt(variance) * tf.random.stateless_normal(mean.shape, seed).numpy()
    means = (model.generator(z, training=False).numpy().reshape(3, -1) + 1.0) / 2.0
    log_likelihood = stats.norm.logpdf(x.reshape(3, -1), means, 0.15).sum(1)
    # KL(q || p) = -H(q) - E_q log p(z), E_q log N(z; 0, 1) = log N(mean; 0, 1) - variance / 2 per dimension
    entropy = stats.norm(mean, np.sqrt(variance)).entropy().sum(1)
    cross = (stats.norm.logpdf(mean) - variance / 2).sum(1)
    np.testing.assert_allclose(elbo, log_likelihood - (-entropy - cross), rtol=1e-4)


def test_the_mean_log_weight_is_the_elbo():
    """E_q[log p(x, z) - log q(z | x)] is the ELBO: the mean of k = 4000 log-weights and of 4000 reparametrized ELBO
    draws agree within 5 standard errors of their difference."""
    model = random_model()
    x = tf.random.stateless_uniform([2, 28, 28, 1], [7, 7])
    weights = model.log_weights(x, 4000, tf.constant([1, 2], tf.int32)).per_step.numpy().sum(0)  # [2, 4000]
    draws = model.elbo(tf.repeat(x, 400, axis=0), tf.constant([3, 4], tf.int32)).numpy().reshape(2, 400)
    se = np.sqrt(weights.var(1) / 4000 + draws.var(1) / 400)
    assert np.all(np.abs(weights.mean(1) - draws.mean(1)) < 5 * se), (weights.mean(1), draws.mean(1), se)
    assert np.all(se < 5.0)  # the check is not vacuous: the estimates are a few nats apart at most


def test_config_refuses_other_shapes_and_bad_values():
    with pytest.raises(ValueError, match="28x28x1"):
        gaussian_vae.GaussianVAEConfig(example_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        gaussian_vae.GaussianVAEConfig(sigma=0.0)
    assert registry.MODELS.get("gaussian_vae") is gaussian_vae.GaussianVAE


def test_the_commands_train_and_evaluate_it(tmp_path, capsys):
    """train/run.py --model gaussian_vae on 200 images, eval/run.py's importance sampling and eval/k_ladder.py;
    --model-setting is refused (the VAE marks no evaluation-only field)."""
    run = tmp_path / "run"
    result = run_command("train/run.py", "--model", "gaussian_vae", "--dataset", "mnist", "--train-examples", "200",
                         "--validation-examples", "20", "--batch-size", "50", "--epochs", "1", "--output-dir", run,
                         "--verbose", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gaussian_vae: Gaussian encoder" in result.stdout
    log = (run / "log.csv").read_text().splitlines()
    assert len(log) == 2 and "val_lower_bound" in log[0]
    out = tmp_path / "is.json"
    assert evaluate.main(["--checkpoint", str(run), "--estimator", "importance_sampling", "--k", "50", "--repeats", "1",
                          "--num-examples", "8", "--output", str(out)]) == 0
    estimate = json.loads(out.read_text())
    assert estimate["mean_nats"] >= estimate["lower_bound_same_chains"]["mean_nats"]
    assert math.isfinite(estimate["mean_nats"]) and len(estimate["per_step"]) == 2
    ladder_out = tmp_path / "ladder.json"
    assert k_ladder_command.main(["--checkpoint", str(run), "--num-examples", "8", "--k", "20", "--ladder", "1,20",
                                  "--output", str(ladder_out)]) == 0
    rungs = json.loads(ladder_out.read_text())["rungs"]
    assert [r["k"] for r in rungs] == [1, 20] and 1.0 <= rungs[1]["ess_mean"] <= 20.0
    assert rungs[1]["importance_sampling_nats"] >= rungs[1]["lower_bound_nats"]
    capsys.readouterr()
    assert k_ladder_command.main(["--checkpoint", str(run), "--model-setting", "sigma=0.1"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "'sigma'" in errors[0] and "evaluation-only" in errors[0]
