"""The annealed GAN as a registered, sample-only model (annealed_gan_model.py): its pieces against references, and
end to end through train/run.py and eval/run.py."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from _helpers import assert_usage_error, run_command
from infusion_tf import annealed_gan_model as agm
from infusion_tf import annealing, protocol, registry
from infusion_tf.energy_distance import energy_distance


def test_batch_energy_distance_matches_the_numpy_u_statistic():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5)), rng.normal(0.3, 1.2, size=(40, 5))
    got = float(agm.batch_energy_distance(tf.constant(x, tf.float32), tf.constant(y, tf.float32)))
    assert got == pytest.approx(energy_distance(x, y), abs=1e-4)


def test_lambda_values_follow_the_annealing_schedules():
    config = agm.AnnealedGANConfig(epochs=3, train_examples=1000, batch_size=100, lambda0=2.0)
    np.testing.assert_allclose(agm.lambda_values(config), annealing.linear_lambda(30, 2.0, 27.0), rtol=1e-6)
    sine = agm.AnnealedGANConfig(epochs=3, train_examples=1000, batch_size=100, schedule="sinusoidal")
    np.testing.assert_allclose(agm.lambda_values(sine), annealing.sinusoidal_lambda(30, 1.0, 5.0), atol=1e-6)
    with pytest.raises(ValueError, match="schedule"):
        agm.AnnealedGANConfig(schedule="stepwise")
    with pytest.raises(ValueError, match="lambda0"):
        agm.AnnealedGANConfig(lambda0=-0.5)


def test_the_model_is_sample_only_and_monitors_its_energy_distance():
    model = registry.MODELS.get("annealed_gan")(agm.AnnealedGANConfig.for_dataset("banana"))
    assert "likelihood" not in protocol.capabilities(model)
    assert protocol.monitor(model) == ("energy_distance", "min")
    with pytest.raises(ValueError, match="likelihood"):
        protocol.require(model, "likelihood", "importance sampling")
    samples = model.sample(7, seed=3)
    assert samples.shape == (7, 2)
    np.testing.assert_array_equal(samples, model.sample(7, seed=3))
    images = registry.MODELS.get("annealed_gan")(agm.AnnealedGANConfig(width=16, depth=1)).sample(3, seed=0).numpy()
    assert images.shape == (3, 28, 28, 1) and images.min() >= 0 and images.max() <= 1


def test_train_and_evaluate_through_the_commands(tmp_path):
    run = tmp_path / "gan"
    result = run_command("train/run.py", "--model", "annealed_gan", "--dataset", "banana", "--output-dir", run,
                         "--epochs", "1", "--train-examples", "1024", "--validation-examples", "256", "--width", "32",
                         "--verbose", "0")
    assert result.returncode == 0, result.stderr
    resumed = run_command("train/run.py", "--resume", "--output-dir", run, "--epochs", "2", "--verbose", "0")
    assert resumed.returncode == 0, resumed.stderr  # the three optimizers come back from last.keras
    model = keras.models.load_model(run / "checkpoints" / "last.keras")
    assert [int(o.iterations) for o in (model.optimizer, model.d_optimizer, model.dae_optimizer)] == [8, 8, 8]
    log = (run / "log.csv").read_text().splitlines()
    assert log[0].split(",")[-1] == "val_energy_distance" and len(log) == 3
    distances = [float(line.split(",")[-1]) for line in log[1:]]
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["best_epoch"] == 1 + int(np.argmin(distances))  # the monitored metric, minimized
    assert (run / "checkpoints" / "best.weights.h5").is_file() and (run / "saved_model" / "saved_model.pb").is_file()

    refused = run_command("eval/run.py", "--checkpoint", run, "--estimator", "importance_sampling")
    assert_usage_error(refused, "likelihood", "annealed_gan")
    parzen = run_command("eval/run.py", "--checkpoint", run, "--estimator", "parzen", "--num-examples", "200",
                         "--num-samples", "500", "--repeats", "1", "--validation-examples", "200",
                         "--output", tmp_path / "parzen.json")
    assert parzen.returncode == 0, parzen.stderr
    assert np.isfinite(json.loads((tmp_path / "parzen.json").read_text())["mean_nats"])
