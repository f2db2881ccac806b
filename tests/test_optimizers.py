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
