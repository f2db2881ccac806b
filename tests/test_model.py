"""Tests of infusion_tf.model.InfusionModel: training steps, objectives, gradients, saving, distribution."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from infusion_tf import chains
from infusion_tf.config import InfusionConfig
from infusion_tf.model import InfusionModel

OBJECTIVES = ["denoising", "lower_bound"]


def _config(**kwargs):
    """A small MNIST-shaped model: one hidden layer of 64 units, T = 3, 4 sampling steps."""
    values = dict(width=64, depth=1, num_steps=3, omega=0.1, batch_size=32, sampling_steps=4)
    return InfusionConfig(**{**values, **kwargs})


def _model(images, seed=0, learning_rate=1e-3, **kwargs):
    keras.utils.set_random_seed(seed)
    model = InfusionModel(_config(**kwargs))
    model.set_prior(images.mean(0), images.var(0))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    return model


def _dataset(images, batch_size=32):
    return tf.data.Dataset.from_tensor_slices(images).batch(batch_size)


def _seed(a):
    return tf.constant([a, 0], tf.int32)


# ---------------------------------------------------------------------------------------- objective
def test_objectives_match_their_definitions():
    rng = np.random.default_rng(0)
    terms = chains.ChainTerms(*(tf.constant(rng.normal(0, 100, (3, 5)), tf.float32) for _ in range(3)))
    p_target, p_chain, q_chain = (t.numpy().astype(np.float64) for t in terms[:3])
    # Denoising (Section 2.3.2, footnote 3): -sum_t eta(t) log p(t)(x | z~(t-1)), eta(t) = t / T.
    denoising = InfusionModel(_config(objective="denoising")).objective(terms).numpy()
    eta = np.arange(1, 4) / 3.0
    np.testing.assert_allclose(denoising, -(eta[:, None] * p_target).sum(0), rtol=1e-5)
    # Lower bound (Section 2.4.1): minus the integrand of Eq. 3.
    bound = InfusionModel(_config(objective="lower_bound")).objective(terms).numpy()
    np.testing.assert_allclose(bound, -(p_chain.sum(0) - q_chain.sum(0) + p_target[-1]), rtol=1e-5)


def test_schedules_are_variables_from_the_config():
    model = InfusionModel(_config(alpha0=0.2, omega=0.3, eta0=2.0))
    np.testing.assert_allclose(model.alpha.numpy(), [0.2, 0.5, 0.8], rtol=1e-6)
    np.testing.assert_allclose(model.eta.numpy(), [2 / 3, 4 / 3, 2.0], rtol=1e-6)
    assert not model.alpha.trainable and not model.eta.trainable
    schedules_and_prior = {"alpha", "eta", "prior_mean", "prior_variance", "rng_counter"}
    assert not schedules_and_prior & {v.name for v in model.trainable_variables}
    assert schedules_and_prior <= {v.name for v in model.non_trainable_variables}


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_gradients_finite_and_nonzero(objective, mnist_images):
    model = _model(mnist_images, objective=objective)
    x = tf.constant(mnist_images[:16])
    stop = objective == "denoising"

    def gradients(stop_gradient):
        with tf.GradientTape() as tape:
            terms = model.chain_terms(x, _seed(1), stop_gradient=stop_gradient)
            loss = tf.reduce_mean(model.objective(terms))
        return tape.gradient(loss, model.trainable_variables)

    grads = gradients(stop)
    assert len(grads) == len(model.trainable_variables) > 0
    for variable, grad in zip(model.trainable_variables, grads):
        assert grad is not None, variable.path
        grad = tf.convert_to_tensor(grad).numpy()  # the prior's gather may give IndexedSlices
        assert np.all(np.isfinite(grad)), variable.path
        assert np.any(grad != 0.0), variable.path
    if objective == "lower_bound":  # the reparametrized chain adds gradient paths through z~ (Sec. 2.4.1)
        stopped = gradients(True)
        assert any(not np.allclose(tf.convert_to_tensor(a), tf.convert_to_tensor(b)) for a, b in zip(grads, stopped))


def test_denoising_train_step_gradient_equals_the_step_by_step_chain(mnist_images):
    """The denoising train_step scores all steps in one batch; its update must be the one the step-by-step
    chain gives: same loss, same gradients, same moving statistics."""
    x = tf.constant(mnist_images[:32])
    by_step, at_once = _model(mnist_images), _model(mnist_images)
    # Batch <= 256 scores all at once, replaying the MLP's products; batch 512 step by step (docs/performance.md).
    assert at_once.score_steps_together and at_once.operator.supports_replay
    assert not _model(mnist_images, precision="mixed_bfloat16", batch_size=512).score_steps_together
    assert not _model(mnist_images, batch_size=512).score_steps_together
    by_step.rng_counter.assign(5)  # both draw the seed of counter 6
    with tf.GradientTape() as tape:
        terms = by_step.chain_terms(x, by_step._next_seed(), update_statistics=True)
        loss = tf.reduce_mean(by_step.objective(terms))
    expected = [tf.convert_to_tensor(g) for g in tape.gradient(loss, by_step.trainable_variables)]
    at_once.rng_counter.assign(5)
    at_once.optimizer = keras.optimizers.SGD(1.0)  # one step of SGD(1): weights move by minus the gradient
    before = [v.numpy().copy() for v in at_once.trainable_variables]
    logs = at_once.train_step(x)
    np.testing.assert_allclose(logs["loss"], loss, rtol=1e-4)
    for old, variable, grad in zip(before, at_once.trainable_variables, expected):
        np.testing.assert_allclose(old - variable.numpy(), grad, rtol=2e-3, atol=1e-5, err_msg=variable.path)
    for a, b in zip(by_step.non_trainable_variables, at_once.non_trainable_variables):
        if a.name != "rng_counter":
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)


# ---------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_fit_runs_with_tf_data(objective, mnist_images):
    images = mnist_images[:128]
    model = _model(images, objective=objective)
    norms = model.step_batch_norms()
    assert len(norms) == 1
    before = norms[0].moving_mean.numpy().copy()
    history = model.fit(_dataset(images), epochs=1, verbose=0, shuffle=False)
    assert set(history.history) == {"loss", "lower_bound"}
    assert np.isfinite(history.history["loss"][0]) and np.isfinite(history.history["lower_bound"][0])
    assert int(model.rng_counter.numpy()) == 4  # one fresh seed per training step
    # Each training step updates every step's batch-normalization statistics (all T rows move).
    after = norms[0].moving_mean.numpy()
    assert np.all(np.any(after != before, axis=1))
    if objective == "lower_bound":  # the loss is minus the bound, on the same chains
        np.testing.assert_allclose(history.history["loss"][0], -history.history["lower_bound"][0], rtol=1e-5)


def test_no_retracing_across_steps_and_epochs(mnist_images):
    """The step functions are traced once, whatever the step, epoch or seed: nothing in them is Python state."""
    images = mnist_images[:128]
    model = _model(images)
    traces = {"train": 0, "test": 0}
    train_step, test_step = model.train_step, model.test_step

    def counting_train_step(data):  # Python code in a step runs only while it is being traced
        traces["train"] += 1
        return train_step(data)

    def counting_test_step(data):
        traces["test"] += 1
        return test_step(data)

    model.train_step, model.test_step = counting_train_step, counting_test_step
    after_epoch = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: after_epoch.append(dict(traces)))
    model.fit(_dataset(images), validation_data=_dataset(images[:64]), epochs=3, verbose=0, shuffle=False,
              callbacks=[record])
    assert int(model.optimizer.iterations.numpy()) == 12
    # The first call traces once more while it creates the optimizer's variables; after that, never again.
    assert after_epoch[0]["train"] <= 2 and after_epoch[0]["test"] == 1
    assert after_epoch[0] == after_epoch[1] == after_epoch[2]


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_loss_falls_on_mnist(objective, mnist_images):
    """512 real MNIST images, 4 epochs of 8 batches: the last epoch's mean loss is well below the first's."""
    model = _model(mnist_images, objective=objective, learning_rate=3e-3)
    dataset = tf.data.Dataset.from_tensor_slices(mnist_images).shuffle(512, seed=0).batch(64)
    losses = model.fit(dataset, epochs=4, verbose=0, shuffle=False).history["loss"]
    assert np.all(np.isfinite(losses))
    # In nats per example; the fall is about 1000 nats (over 70%), far above epoch-to-epoch noise.
    assert losses[-1] < losses[0] - 0.25 * abs(losses[0]), losses


def test_evaluate_reports_metrics_and_changes_no_weights(mnist_images):
    images = mnist_images[:64]
    model = _model(images, objective="lower_bound")
    model.fit(_dataset(images), epochs=1, verbose=0, shuffle=False)
    weights = [w.numpy().copy() for w in model.weights if "rng_counter" not in w.path]
    result = model.evaluate(_dataset(images), verbose=0, return_dict=True)
    assert set(result) == {"loss", "lower_bound"}
    assert np.isfinite(result["loss"]) and np.isfinite(result["lower_bound"])
    np.testing.assert_allclose(result["loss"], -result["lower_bound"], rtol=1e-5)
    # test_step uses the batch statistics but updates neither weights nor moving statistics.
    for old, new in zip(weights, [w for w in model.weights if "rng_counter" not in w.path]):
        np.testing.assert_array_equal(old, new.numpy(), err_msg=new.path)
    assert int(model.rng_counter.numpy()) == 4


def test_call_returns_per_example_bound(mnist_images):
    model = _model(mnist_images[:8])
    bound = model(tf.constant(mnist_images[:8]))
    assert bound.shape == (8,)
    assert np.all(np.isfinite(bound.numpy()))


# ---------------------------------------------------------------------------------------- prior
def test_set_prior_floors_the_variance_and_checks_the_shape():
    model = InfusionModel(_config(example_shape=(3,), prior_variance_floor=1e-3))
    model.set_prior(np.array([0.1, 0.2, 0.3]), np.array([0.0, 1e-4, 0.5]))
    np.testing.assert_allclose(model.prior_mean.numpy(), [0.1, 0.2, 0.3], rtol=1e-6)
    np.testing.assert_allclose(model.prior_variance.numpy(), [1e-3, 1e-3, 0.5], rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        model.set_prior(np.zeros(4), np.ones(4))


def test_fit_prior_is_the_maximum_likelihood_gaussian(mnist_uint8):
    """Eq. 1 on dequantized pixels x = (u + U[0,1)) / 256: mean (E[u] + 1/2) / 256, Var[u] / 256^2 + 1 / (12 256^2)."""
    pytest.importorskip("infusion_tf.data")
    model = InfusionModel(_config())
    model.fit_prior(mnist_uint8)
    u = mnist_uint8.astype(np.float64)
    mean = (u.mean(0) + 0.5) / 256
    variance = np.maximum(u.var(0) / 256**2 + 1 / (12 * 256**2), model.config.prior_variance_floor)
    np.testing.assert_allclose(model.prior_mean.numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(model.prior_variance.numpy(), variance, rtol=1e-5)


# ---------------------------------------------------------------------------------------- sampling
def test_sample_shapes_and_seeds(mnist_images):
    model = _model(mnist_images[:64])
    samples = model.sample(3)
    assert samples.shape == (3, 28, 28, 1)
    last, chain = model.sample(2, num_steps=7, seed=5, return_chain=True)  # 7 steps > T = 3
    assert chain.shape == (8, 2, 28, 28, 1)
    np.testing.assert_array_equal(last, chain[-1])
    np.testing.assert_array_equal(model.sample(2, seed=5), model.sample(2, seed=5))
    assert not np.allclose(model.sample(2, seed=5), model.sample(2, seed=6))
    assert not np.allclose(model.sample(2), model.sample(2))  # no seed: a fresh one per call
    for bad in (dict(num_samples=0), dict(num_samples=2, num_steps=0)):
        with pytest.raises(ValueError):
            model.sample(**bad)


def test_inpaint_keeps_known_pixels(mnist_images):
    model = _model(mnist_images[:64])
    images = mnist_images[:4]
    mask = np.zeros_like(images)
    mask[:, :14] = 1.0  # the top half is known
    filled = model.inpaint(images, mask, seed=3).numpy()
    np.testing.assert_array_equal(filled[:, :14], images[:, :14])
    assert not np.allclose(filled[:, 14:], images[:, 14:])
    with pytest.raises(ValueError, match="mask"):
        model.inpaint(images, mask[:, :14])


def test_save_and_load_round_trip(tmp_path, mnist_images):
    images = mnist_images[:64]
    model = _model(images)
    model.fit(_dataset(images), epochs=1, verbose=0, shuffle=False)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, InfusionModel)
    assert loaded.config == model.config
    assert int(loaded.rng_counter.numpy()) == int(model.rng_counter.numpy()) == 2
    assert [w.path for w in loaded.weights] == [w.path for w in model.weights]
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    np.testing.assert_array_equal(loaded.sample(4, seed=7), model.sample(4, seed=7))
    # Without a seed both continue the same random stream from the saved counter.
    np.testing.assert_array_equal(loaded.sample(4), model.sample(4))
    # The loaded model trains on (recompiled by load_model from the saved compile config).
    loaded.fit(_dataset(images), epochs=1, verbose=0, shuffle=False)


# ---------------------------------------------------------------------------------------- distribution
_MIRRORED_SCRIPT = textwrap.dedent("""
    import json, os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from infusion_tf import InfusionConfig, InfusionModel

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    result = {"replicas": strategy.num_replicas_in_sync}
    rng = np.random.default_rng(0)

    def make(config, x, scope, optimizer):
        keras.utils.set_random_seed(0)
        with scope:  # the model and its optimizer's variables are created under the strategy
            model = InfusionModel(config)
            model.compile(optimizer=optimizer())
        model.set_prior(x.mean(0), x.var(0))
        return model

    # 1. One epoch of fit, global batch 16 = 8 per replica.
    x = rng.uniform(size=(64, 16)).astype(np.float32)
    config = InfusionConfig(example_shape=(16,), width=32, depth=1, num_steps=3, batch_size=16, dequantize=False)
    model = make(config, x, strategy.scope(), lambda: keras.optimizers.Adam(1e-3))
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(16)
    history = model.fit(dataset, epochs=1, verbose=0, shuffle=False).history
    result["loss"], result["lower_bound"] = history["loss"][0], history["lower_bound"][0]
    result["rng_counter"] = int(model.rng_counter.numpy())
    copies = [v.numpy() for v in model.step_batch_norms()[0].moving_mean.value.values]
    result["moving_mean_replica_gap"] = float(np.abs(copies[0] - copies[1]).max())

    # 2. Per-replica loss scaling: one SGD step (learning rate 1) on the global batch [A; A] moves the weights
    # as a single device does on the same batch. Each replica sees A, whose batch statistics equal those of
    # [A; A]; alpha = 1 with delta = 1e-12 makes z~ = x up to 1e-6, so the replicas' seeds do not matter.
    a = rng.uniform(size=(8, 16)).astype(np.float32)
    x = np.concatenate([a, a])
    for objective in ("denoising", "lower_bound"):
        config = InfusionConfig(example_shape=(16,), width=32, depth=1, num_steps=3, batch_size=16,
                                dequantize=False, schedule="constant", alpha0=1.0, delta_variance=1e-12,
                                objective=objective)
        sgd = lambda: keras.optimizers.SGD(1.0)
        mirrored = make(config, x, strategy.scope(), sgd)
        single = make(config, x, tf.name_scope("single"), sgd)
        single.set_weights(mirrored.get_weights())
        start = [v.numpy().copy() for v in single.trainable_variables]
        for model in (mirrored, single):
            model.fit(tf.data.Dataset.from_tensor_slices(x).batch(16), epochs=1, verbose=0, shuffle=False)
        errors, ratios = [], []
        for v0, vm, vs in zip(start, mirrored.trainable_variables, single.trainable_variables):
            step_m, step_s = vm.numpy() - v0, vs.numpy() - v0
            errors.append(float(np.abs(step_m - step_s).max() / np.abs(step_s).max()))
            ratios.append(float(np.linalg.norm(step_m) / np.linalg.norm(step_s)))
        result["step_" + objective] = {"max_relative_error": max(errors), "norm_ratios": ratios}
    print(json.dumps(result))
""")


@pytest.fixture(scope="module")
def mirrored_result():
    """Runs the MirroredStrategy checks in a fresh process: logical devices must be set before TF starts."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT], capture_output=True, text=True,
                             timeout=300, env=env)
    assert process.returncode == 0, process.stderr[-4000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


def test_mirrored_strategy_fit(mirrored_result):
    assert mirrored_result["replicas"] == 2
    assert np.isfinite(mirrored_result["loss"]) and np.isfinite(mirrored_result["lower_bound"])
    assert mirrored_result["rng_counter"] == 4  # counted once per step, not once per replica


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_mirrored_gradient_equals_single_device_gradient(mirrored_result, objective):
    result = mirrored_result["step_" + objective]
    # Without the division by num_replicas_in_sync the steps would be twice as long (ratios of 2).
    np.testing.assert_allclose(result["norm_ratios"], 1.0, rtol=1e-3)
    assert result["max_relative_error"] < 1e-3


# Per-step moving statistics use aggregation="mean": under MirroredStrategy every replica keeps the same copy.
def test_mirrored_moving_statistics_stay_identical_across_replicas(mirrored_result):
    assert mirrored_result["moving_mean_replica_gap"] < 1e-6


def test_mixed_bfloat16_trains_and_round_trips(tmp_path, mnist_images):
    """precision=mixed_bfloat16 comes from the config alone: training, saving and loading keep it."""
    images = mnist_images[:64]
    model = _model(images, precision="mixed_bfloat16")
    assert model.operator.dense[0].compute_dtype == "bfloat16"
    history = model.fit(_dataset(images), epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.operator.dense[0].compute_dtype == "bfloat16"
    assert loaded.operator.dense[0].kernel.dtype == "float32"
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_without_the_training_bound_the_denoising_update_is_the_same(mnist_images):
    """--no-train-bound skips the draws' densities (issue 14): the loss, the update and the batch-norm statistics
    are those of the default step; only the training-batch lower bound is not reported."""
    x = tf.constant(mnist_images[:32])
    with_bound, without = _model(mnist_images), _model(mnist_images, train_bound=False)
    without.set_weights(with_bound.get_weights())
    logs = [tf.function(m.train_step)(x) for m in (with_bound, without)]
    assert "lower_bound" in logs[0] and set(logs[1]) == {"loss"}
    np.testing.assert_allclose(float(logs[1]["loss"]), float(logs[0]["loss"]), rtol=1e-6)
    for a, b in zip(with_bound.weights, without.weights):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7, err_msg=a.path)


def test_chain_without_draw_scores_has_the_same_denoising_terms(mnist_images):
    model = _model(mnist_images)
    x = tf.constant(mnist_images[:16])
    full = model.chain_terms(x, _seed(3), use_batch_statistics=False)
    lean = model.chain_terms(x, _seed(3), use_batch_statistics=False, score_draws=False)
    assert lean.log_p_chain is None and lean.log_q_chain is None
    np.testing.assert_array_equal(lean.log_p_target.numpy(), full.log_p_target.numpy())
    np.testing.assert_array_equal(lean.final_squared_error.numpy(), full.final_squared_error.numpy())
