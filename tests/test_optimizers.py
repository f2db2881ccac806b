"""FusedAdam (TensorFlow's ResourceApplyAdam kernel) against keras.optimizers.Adam, the independent reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from infusion_tf.optimizers import FusedAdam, adam


def _compiled_apply(optimizer, variables):
    return tf.function(lambda grads: optimizer.apply(grads, variables))


@pytest.mark.parametrize("learning_rate", [1e-3, keras.optimizers.schedules.CosineDecay(1e-2, 5)])
def test_fused_adam_follows_keras_adam_step_for_step(learning_rate):
    rng = np.random.default_rng(0)
    start = [rng.standard_normal((30, 20)).astype(np.float32), rng.standard_normal(20).astype(np.float32)]
    gradients = [[rng.standard_normal(w.shape).astype(np.float32) for w in start] for _ in range(6)]
    trajectories = []
    for optimizer in (FusedAdam(learning_rate, epsilon=1e-3), keras.optimizers.Adam(learning_rate, epsilon=1e-3)):
        variables = [keras.Variable(w) for w in start]
        optimizer.build(variables)
        step = _compiled_apply(optimizer, variables)
        path = []
        for grads in gradients:
            step([tf.constant(g) for g in grads])
            path.append([v.numpy().copy() for v in variables])
        trajectories.append(path)
    for fused, reference in zip(*trajectories):
        for a, b in zip(fused, reference):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    moved = [np.abs(a - b).max() for a, b in zip(trajectories[0][-1], start)]
    assert min(moved) > 1e-3  # the check compares real updates


def test_adam_is_fused_on_tensorflow_and_keeps_its_settings():
    optimizer = adam(0.5, beta_1=0.5, beta_2=0.99)
    assert isinstance(optimizer, FusedAdam) and isinstance(optimizer, keras.optimizers.Adam)
    assert (optimizer.beta_1, optimizer.beta_2) == (0.5, 0.99)
    restored = FusedAdam.from_config(optimizer.get_config())
    assert restored.beta_1 == 0.5 and float(restored.learning_rate) == 0.5


def test_learning_rate_schedules_decay_to_zero_over_the_budget():
    from infusion_tf.optimizers import learning_rate_schedule

    assert learning_rate_schedule("constant", 2e-3, 0) == 2e-3
    cosine, linear = (learning_rate_schedule(kind, 2e-3, 100) for kind in ("cosine", "linear"))
    for step, want_cosine, want_linear in ((0, 2e-3, 2e-3), (50, 1e-3, 1e-3), (25, 1e-3 * (1 + np.cos(np.pi / 4)), 1.5e-3),
                                           (100, 0.0, 0.0), (150, 0.0, 0.0)):
        np.testing.assert_allclose(float(cosine(step)), want_cosine, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(float(linear(step)), want_linear, rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="lr_schedule"):
        learning_rate_schedule("step", 1e-3, 10)
    with pytest.raises(ValueError, match="at least one step"):
        learning_rate_schedule("cosine", 1e-3, 0)


def test_training_model_decays_over_epochs_times_steps_per_epoch(mnist_uint8):
    from infusion_tf import InfusionConfig
    from infusion_tf.training import build_model

    with pytest.raises(ValueError, match="lr_schedule"):
        InfusionConfig(lr_schedule="exponential")
    config = InfusionConfig(num_steps=2, width=16, batch_size=32, epochs=3, lr_schedule="cosine")
    train = mnist_uint8[:100]
    model = build_model(config, train)
    schedule = model.optimizer.learning_rate  # a variable holding schedule(iterations)
    assert isinstance(model.optimizer._learning_rate, keras.optimizers.schedules.CosineDecay)
    assert model.optimizer._learning_rate.decay_steps == 100 // 32 * 3
    np.testing.assert_allclose(float(schedule), 1e-3, rtol=1e-6)
    constant = build_model(InfusionConfig(num_steps=2, width=16), train).optimizer._learning_rate
    assert not isinstance(constant, keras.optimizers.schedules.LearningRateSchedule)  # the paper's constant rate


def test_ema_weights_swap_in_and_back():
    from infusion_tf.optimizers import ema_weights, has_ema

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=adam(0.1, use_ema=True, ema_momentum=0.5), loss="mse")
    assert has_ema(model)
    model.optimizer.build(model.trainable_variables)
    for _ in range(3):  # (fit would overwrite the weights with their averages at its end: Keras' finalize)
        model.optimizer.apply([tf.ones_like(w) for w in model.trainable_variables], model.trainable_variables)
    trained = [w.numpy().copy() for w in model.trainable_variables]
    averages = [a.numpy().copy() for a in model.optimizer._model_variables_moving_average]
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(trained, averages))
    with ema_weights(model):
        for w, a in zip(model.trainable_variables, averages):
            np.testing.assert_array_equal(w.numpy(), a)
    for w, t in zip(model.trainable_variables, trained):
        np.testing.assert_array_equal(w.numpy(), t)


def test_training_with_ema_saves_the_average_and_resumes_from_the_training_weights(tmp_path):
    """--ema-momentum: best/last.weights.h5 hold the moving average; last.keras the training weights and the
    optimizer with its averages, so a resumed run continues them."""
    from infusion_tf import training
    from infusion_tf.config import InfusionConfig

    config = InfusionConfig(width=16, depth=1, num_steps=2, sampling_steps=2, batch_size=50, train_examples=200,
                            validation_examples=100, epochs=1, ema_momentum=0.9)
    training.train(config, str(tmp_path / "run"), verbose=0, export=False)
    resumed = keras.models.load_model(tmp_path / "run" / "checkpoints" / "last.keras")
    assert resumed.optimizer.use_ema and resumed.optimizer.ema_momentum == 0.9
    averages = [a.numpy() for a in resumed.optimizer._model_variables_moving_average]
    saved = keras.models.load_model(tmp_path / "run" / "checkpoints" / "last.keras")
    saved.load_weights(tmp_path / "run" / "checkpoints" / "best.weights.h5")
    for variable, average, raw in zip(saved.trainable_variables, averages, resumed.trainable_variables):
        np.testing.assert_allclose(variable.numpy(), average, rtol=0, atol=0)
    assert any(np.abs(a - r.numpy()).max() > 1e-6 for a, r in zip(averages, resumed.trainable_variables))
