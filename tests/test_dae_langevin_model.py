"""The DAE + Langevin sampler as a registered, sample-only model (dae_langevin_model.py): its config's refusals, its
samples on a Gaussian where the law of both App. F estimators' chains is known in closed form, and end to end
through train/run.py and eval/run.py.

For data N(m, S) in the density's coordinates, the optimal DAE gives the score of N(m, S + sigma^2 I) =: N(m, A^{-1})
and the residual estimator -c grad ||phi - x||^2 = -2 c sigma^4 A^2 (x - m) (tests/test_score.py). Unadjusted
Langevin with a linear drift -(eps / 2) P (x - m) is stationary at N(m, (P (I - eps P / 4))^{-1}), so the score
chains end near P = A and the residual chains near P = 2 c sigma^4 A^2.
"""

from __future__ import annotations

import dataclasses
import json
import math

import keras
import numpy as np
import pytest

from _helpers import assert_usage_error, run_command
from infusion_tf import dae_langevin_model as dlm
from infusion_tf import protocol, registry, toy_densities

MEAN = np.array([0.5, -1.0])
COV = np.array([[1.0, 0.3], [0.3, 0.36]])
SIGMA, EPS, RESIDUAL_SCALE = 0.5, 0.05, 8.0  # 2 c sigma^4 = 1: the residual chain's precision is A^2


def chain_covariance(precision: np.ndarray, eps: float) -> np.ndarray:
    """Stationary covariance of x <- x - (eps / 2) P (x - m) + sqrt(eps) z: (P (I - eps P / 4))^{-1}."""
    return np.linalg.inv(precision @ (np.eye(2) - eps * precision / 4))


def test_config_refuses_bad_values_at_construction():
    for bad, words in [({"dataset": "mnist"}, "dataset"), ({"estimator": "hessian"}, "estimator"),
                       ({"sigma": 0.0}, "sigma"), ({"step_size": -0.1}, "step_size"),
                       ({"residual_scale": float("nan")}, "residual_scale"), ({"sampling_steps": 0}, "sampling_steps"),
                       ({"annealed_sigmas": "0.1"}, "annealed_sigmas"), ({"annealed_sigmas": "1,2"}, "annealed_sigmas"),
                       ({"annealed_sigmas": "1,x"}, "annealed_sigmas")]:
        with pytest.raises(ValueError, match=words):
            dlm.DAELangevinConfig(**bad)
    assert dlm.DAELangevinConfig(annealed_sigmas=" 1, 0.5 ").sigmas == (1.0, 0.5, 0.2)
    with pytest.raises(ValueError, match="estimator"):
        dlm.estimator_score_fn("hessian", lambda x: x, 0.1)


def test_the_model_is_sample_only_and_its_samples_repeat_with_the_seed():
    config = dlm.DAELangevinConfig(dataset="kidney", width=16, depth=1, sampling_steps=5, annealed_sigmas="0.5")
    model = registry.MODELS.get("dae_langevin")(config)
    assert len(model.denoisers) == 2 and "likelihood" not in protocol.capabilities(model)
    assert protocol.monitor(model) is None  # keeps its last epoch: the denoising loss does not rank its samples
    with pytest.raises(ValueError, match="likelihood"):
        protocol.require(model, "likelihood", "importance sampling")
    samples = model.sample(7, seed=3).numpy()
    assert samples.shape == (7, 2) and np.all(np.isfinite(samples))
    np.testing.assert_array_equal(samples, model.sample(7, seed=3).numpy())
    assert not np.array_equal(samples, model.sample(7, seed=4).numpy())


def test_samples_of_both_estimators_on_a_gaussian():
    """Trains the DAE on N(MEAN, COV) and checks each estimator's chains against its closed-form law: means within 5
    standard errors, variances within 5 standard errors plus 5% for the trained DAE's error."""
    keras.utils.set_random_seed(0)
    config = dlm.DAELangevinConfig(dataset="kidney", sigma=SIGMA, step_size=EPS, sampling_steps=300, epochs=12,
                                   batch_size=256, learning_rate=3e-3, width=64, depth=2)
    model = dlm.DAELangevinModel(config)
    offset, scale = toy_densities.toy_affine("kidney")
    raw = np.random.default_rng(0).multivariate_normal(MEAN, COV, size=20_000)
    model.fit_prior(((raw - offset) / scale).astype(np.float32))
    model.compile(optimizer=model.make_optimizer())
    model.fit(((raw - offset) / scale).astype(np.float32), batch_size=256, epochs=12, verbose=0)

    precision = np.linalg.inv(COV + SIGMA**2 * np.eye(2))  # A
    laws = {"score": chain_covariance(precision, EPS),
            "residual": chain_covariance(2 * RESIDUAL_SCALE * SIGMA**4 * precision @ precision, EPS)}
    n = 4000

    def tolerance(law):  # on each variance: 5 standard errors (n independent chains) plus 5% for the DAE's error
        return (5 * math.sqrt(2 / (n - 1)) + 0.05) * np.diag(law)

    for estimator, law in laws.items():
        model.config = dataclasses.replace(config, estimator=estimator, residual_scale=RESIDUAL_SCALE)
        x = offset + scale * model.sample(n, seed=1).numpy().astype(np.float64)  # [n, 2], raw coordinates
        np.testing.assert_array_less(np.abs(x.mean(0) - MEAN), 5 * np.sqrt(np.diag(law) / n), err_msg=estimator)
        variance = x.var(0, ddof=1)
        np.testing.assert_array_less(np.abs(variance - np.diag(law)), tolerance(law), err_msg=estimator)
        other = laws["residual" if estimator == "score" else "score"]  # the other estimator's law is refused
        assert np.any(np.abs(variance - np.diag(other)) > tolerance(other)), (estimator, variance, np.diag(other))


def test_train_resume_and_evaluate_through_the_commands(tmp_path):
    run = tmp_path / "dl"
    result = run_command("train/run.py", "--model", "dae_langevin", "--dataset", "banana", "--output-dir", run,
                         "--epochs", "1", "--train-examples", "1024", "--validation-examples", "256", "--width", "16",
                         "--batch-size", "256", "--sampling-steps", "10", "--annealed-sigmas", "0.4", "--verbose", "0")
    assert result.returncode == 0, result.stderr
    resumed = run_command("train/run.py", "--resume", "--output-dir", run, "--epochs", "2", "--verbose", "0")
    assert resumed.returncode == 0, resumed.stderr
    model = keras.models.load_model(run / "checkpoints" / "last.keras")
    assert int(model.optimizer.iterations) == 8 and model.config.sigmas == (0.4, 0.2)  # 2 epochs x 4 steps
    log = (run / "log.csv").read_text().splitlines()
    assert log[0].split(",")[-1] == "val_denoising_loss" and len(log) == 3
    assert (run / "saved_model" / "saved_model.pb").is_file() and (run / "samples" / "samples.png").is_file()
    assert not (run / "checkpoints" / "best.weights.h5").exists()  # no best epoch: evaluation reads the last
    refused = run_command("train/run.py", "--resume", "--output-dir", run, "--epochs", "3", "--patience", "1")
    assert_usage_error(refused, "keeps its last epoch", "--patience")

    refused = run_command("eval/run.py", "--checkpoint", run, "--estimator", "importance_sampling")
    assert_usage_error(refused, "likelihood", "dae_langevin")
    out = tmp_path / "parzen.json"
    parzen = run_command("eval/run.py", "--checkpoint", run, "--estimator", "parzen", "--num-examples", "100",
                         "--num-samples", "300", "--repeats", "1", "--validation-examples", "100", "--output", out,
                         "--model-setting", "estimator=residual", "--model-setting", "residual_scale=50")
    assert parzen.returncode == 0, parzen.stderr
    results = json.loads(out.read_text())
    assert np.isfinite(results["mean_nats"])
    assert results["model_settings"] == {"estimator": "residual", "residual_scale": 50.0}

    out = tmp_path / "distance.json"
    distance = run_command("eval/toy_distance.py", "--checkpoint", run, "--num-samples", "200", "--output", out,
                           "--fit-residual-scale", "--model-setting", "estimator=residual",
                           "--figure", tmp_path / "samples.png")
    assert distance.returncode == 0, distance.stderr
    results = json.loads(out.read_text())
    assert results["model_settings"][0] == "estimator=residual" and results["model_settings"][1].startswith(
        "residual_scale=")
    assert np.isfinite(results["samples"]["energy_distance"]) and len(results["exact_vs_exact"]["repeats"]) == 10
    assert (tmp_path / "samples.png").stat().st_size > 1000
