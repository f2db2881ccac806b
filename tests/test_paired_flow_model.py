"""The paired-flow sampler as a registered model (paired_flow_model.py): its schedule, its coordinates and its
flow's density against scipy, and end to end through train/run.py (train, resume) and eval/run.py (the likelihood
estimators refused for the generator, exact for the flow)."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import integrate, stats

from _helpers import assert_usage_error, run_command
from infusion_tf import annealing, checkpoint, data, protocol, registry
from infusion_tf import paired_flow_model as pfm

_TINY = {"blocks": 2, "hidden": 16, "generator_width": 16, "generator_depth": 2}


def test_beta_values_follow_the_schedule_in_either_form():
    config = pfm.PairedFlowConfig(epochs=3, train_examples=2560, batch_size=256, lambda0=1.0)
    np.testing.assert_allclose(pfm.beta_values(config), 1 / (1 + annealing.linear_lambda(30, 1.0, 27.0)), rtol=1e-6)
    lik = pfm.PairedFlowConfig(epochs=3, train_examples=2560, batch_size=256, anneal="likelihood", lambda0=-0.5,
                               schedule="sinusoidal")
    np.testing.assert_allclose(pfm.beta_values(lik), 1 + annealing.sinusoidal_lambda(30, -0.5, 5.0), rtol=1e-6)
    plain = pfm.PairedFlowConfig(epochs=1, train_examples=512, lambda0=0.0, anneal="likelihood")
    np.testing.assert_array_equal(pfm.beta_values(plain), [1.0, 1.0])


@pytest.mark.parametrize("settings, words", [({"dataset": "mnist"}, ("log u", "banana", "kidney")),
                                             ({"dataset": "mixture_of_gaussians"}, ("log u",)),
                                             ({"anneal": "both"}, ("anneal", "entropy", "likelihood")),
                                             ({"sampler": "langevin"}, ("sampler", "generator", "flow")),
                                             ({"lambda0": -1.0}, ("> -1",)),
                                             ({"flow_steps": 0}, ("flow_steps",))])
def test_config_refuses_what_the_model_cannot_learn(settings, words):
    with pytest.raises(ValueError) as error:
        pfm.PairedFlowConfig(**settings)
    for word in words:
        assert word in str(error.value)


def test_likelihood_only_for_the_flow_and_its_density_is_the_change_of_variables():
    """At initialization every MADE outputs zero, so nu = N(0, I_2) in raw coordinates; in the dataset's [0, 1]^2
    coordinates its log density is the scipy normal's at raw(x) plus log |d raw / d x| (data.toy_to_raw), and it
    integrates to the normal's mass inside the kidney's box [-5, 5]^2."""
    generator = registry.MODELS.get("paired_flow")(pfm.PairedFlowConfig(**_TINY))
    assert "likelihood" not in protocol.capabilities(generator)
    with pytest.raises(ValueError, match="likelihood"):
        protocol.require(generator, "likelihood", "importance sampling")
    assert protocol.monitor(generator) == ("energy_distance", "min")
    np.testing.assert_array_equal(generator.sample(5, seed=2), generator.sample(5, seed=2))

    flow = registry.MODELS.get("paired_flow")(pfm.PairedFlowConfig(sampler="flow", **_TINY))
    assert protocol.capabilities(flow) == {"likelihood"}
    x = np.random.default_rng(0).uniform(0.05, 0.95, size=(40, 2)).astype(np.float32)
    per_step = flow.log_weights(tf.constant(x), 3, tf.constant([0, 0])).per_step.numpy()
    raw = data.toy_to_raw("kidney", x)
    expected = stats.norm.logpdf(raw).sum(1) + 2 * math.log(10.0 / 0.9)
    assert per_step.shape == (1, 40, 3)
    np.testing.assert_allclose(per_step, np.broadcast_to(expected[None, :, None], (1, 40, 3)), atol=1e-4)
    grid = np.linspace(0.05, 0.95, 401)
    points = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2).astype(np.float32)
    density = np.exp(flow.log_weights(tf.constant(points), 1, tf.constant([0, 0])).per_step.numpy()[0, :, 0])
    mass = integrate.trapezoid(integrate.trapezoid(density.reshape(401, 401), grid), grid)
    assert mass == pytest.approx((stats.norm.cdf(5) - stats.norm.cdf(-5)) ** 2, abs=1e-4)
    samples = flow.sample(4000, seed=1).numpy()  # N(0, I) mapped: mean 0.5, std 0.9 / 10 per coordinate
    np.testing.assert_allclose(samples.mean(0), 0.5, atol=5 * 0.09 / math.sqrt(4000))
    np.testing.assert_allclose(samples.std(0), 0.09, rtol=0.05)


def test_train_resume_and_evaluate_through_the_commands(tmp_path):
    run = tmp_path / "pf"
    tiny = [f"--{k.replace('_', '-')}={v}" for k, v in _TINY.items()]
    common = ["--train-examples", "512", "--validation-examples", "256", "--verbose", "0"]
    result = run_command("train/run.py", "--model", "paired_flow", "--dataset", "kidney", "--output-dir", run,
                         "--epochs", "1", "--anneal", "likelihood", "--lambda0", "-0.5", *tiny, *common)
    assert result.returncode == 0, result.stderr
    resumed = run_command("train/run.py", "--resume", "--output-dir", run, "--epochs", "2", "--verbose", "0")
    assert resumed.returncode == 0, resumed.stderr
    log = (run / "log.csv").read_text().splitlines()
    assert "val_energy_distance" in log[0].split(",") and len(log) == 3  # one row per epoch, across the resume
    model = keras.models.load_model(run / "checkpoints" / "last.keras")  # both Adams' states came through the resume
    assert int(model.optimizer.iterations) == 4 and int(model.flow_optimizer.iterations) == 4 * 3  # flow_steps 3
    assert model.config.anneal == "likelihood" and json.loads((run / "config.json").read_text())["epochs"] == 2

    refused = run_command("eval/run.py", "--checkpoint", run, "--estimator", "importance_sampling")
    assert_usage_error(refused, "likelihood", "paired_flow")
    out = tmp_path / "flow.json"
    scored = run_command("eval/run.py", "--checkpoint", run, "--estimator", "importance_sampling", "--model-setting",
                         "sampler=flow", "--num-examples", "50", "--k", "2", "--output", out)
    assert scored.returncode == 0, scored.stderr
    results = json.loads(out.read_text())
    flow = checkpoint.load_checkpoint(str(run), model_settings=["sampler=flow"])
    test = data.load_splits("kidney").test[:50]
    expected = flow.log_weights(tf.constant(test), 1, tf.constant([0, 0])).per_step.numpy()[0, :, 0]
    assert results["mean_nats"] == pytest.approx(float(np.mean(expected)), abs=1e-4)  # log nu(x), exactly


def _untrained_run(folder, dataset: str):
    """A run folder of an untrained paired_flow: every MADE's last layer starts at zero, so nu = N(0, I_2) in the
    density's own coordinates."""
    from infusion_tf.config import save_config

    config = pfm.PairedFlowConfig(dataset=dataset, **_TINY)
    folder.mkdir(parents=True)
    save_config(config, str(folder))
    pfm.PairedFlowModel(config).save_weights(str(folder / "last.weights.h5"))
    return folder


def _toy_distance(run, out, *flags) -> dict:
    result = run_command("eval/toy_distance.py", "--checkpoint", run, "--num-samples", "4000", "--output", out, *flags)
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())


def test_reverse_kl_of_nu_on_the_banana_against_its_closed_form(tmp_path):
    """nu = N(0, I_2) against the banana, log u = -(x2^2 / 4 + (x1 - x2^2 / 4)^2) / 2, Z = 4 pi: with Gaussian
    moments E[x2^2] = 1, E[x1 x2^2] = 0, E[x2^4] = 3, E_nu[log u] = -23/32 and E_nu[log nu] = -log 2 pi - 1, so
    KL(nu || p) = log 2 - 9/32. The generator's samples have no density: no reverse KL."""
    run = _untrained_run(tmp_path / "banana", "banana")
    results = _toy_distance(run, tmp_path / "flow.json", "--model-setting", "sampler=flow")
    kl = results["importance"]
    assert kl["num_samples"] == 4000 and kl["non_finite"] == 0 and kl["num_proposals"] == 1
    assert abs(kl["reverse_kl"] - (math.log(2) - 9 / 32)) < 5 * kl["reverse_kl_se"], kl
    assert 0 < kl["ess_fraction"] <= 1
    assert _toy_distance(run, tmp_path / "generator.json")["importance"] is None


def test_reverse_kl_and_effective_sample_size_of_nu_on_the_kidney_against_quadrature(tmp_path):
    """nu = N(0, I_2) against the kidney: KL(nu || p) = int nu (log nu - log p) and, with w = p / nu and m_j =
    E_nu[w^j] = int p^j / nu^(j - 1), the effective sample size fraction (sum w)^2 / (n sum w^2) tends to 1 / m_2;
    its tolerance is 5 standard errors of the delta method from m_2, m_3, m_4 (all by the trapezoid rule on a polar
    grid, radius 0-10 by 0.0025, 2000 angles)."""
    from infusion_tf import toy_densities

    radius, angle = np.linspace(0, 10, 4001), np.linspace(0, 2 * math.pi, 2001)
    r, a = np.meshgrid(radius, angle, indexing="ij")  # [4001, 2001]
    points = np.stack([r * np.cos(a), r * np.sin(a)], -1)
    log_p = toy_densities.log_unnormalized("kidney", points) - toy_densities.log_normalizer("kidney")
    log_nu = -math.log(2 * math.pi) - r**2 / 2

    def polar(values):
        return integrate.trapezoid(integrate.trapezoid(r * values, angle, axis=1), radius)

    kl = polar(np.exp(log_nu) * (log_nu - log_p))
    m2, m3, m4 = (polar(np.exp(j * log_p - (j - 1) * log_nu)) for j in (2, 3, 4))
    n = 4000
    ess_variance = (4 * (m2 - 1) / m2**2 + (m4 - m2**2) / m2**4 - 4 * (m3 - m2) / m2**3) / n
    run = _untrained_run(tmp_path / "kidney", "kidney")
    results = _toy_distance(run, tmp_path / "flow.json", "--model-setting", "sampler=flow", "--k", "3")["importance"]
    assert results["num_proposals"] == 3  # nu's k proposals are identical: log nu(x) whatever k
    assert abs(results["reverse_kl"] - kl) < 5 * results["reverse_kl_se"], (results, kl)
    assert abs(results["ess_fraction"] - 1 / m2) < 5 * math.sqrt(ess_variance), (results, 1 / m2, ess_variance)
