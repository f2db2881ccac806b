"""Optimizers of the training command: Adam as one fused kernel per variable, learning-rate schedules, and the
exponential moving average of the weights used for validation and for the saved weights (`--ema-momentum`).

`FusedAdam` is `keras.optimizers.Adam` (same variables, same checkpoints, same update) whose TensorFlow update
is TensorFlow's own `ResourceApplyAdam` kernel: one pass over each variable and its two slots instead of
about ten elementwise operations, each reading and writing the whole variable. On the paper's model (4.6 M
weights) at batch 100 that is a few milliseconds of every step (docs/performance.md). The update is Adam's
(Kingma & Ba 2015, Algorithm 1 with the bias corrections folded into the step size):
    m <- m + (1 - beta1) (g - m),  v <- v + (1 - beta2) (g^2 - v),
    w <- w - lr sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + epsilon),
exactly as Keras writes it; only the order of the floating-point operations differs.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

__all__ = ["FusedAdam", "adam", "learning_rate_schedule", "has_ema", "swap_ema_weights", "ema_weights", "EMAValidation"]


@keras.saving.register_keras_serializable(package="infusion_tf")
class FusedAdam(keras.optimizers.Adam):
    """keras.optimizers.Adam with TensorFlow's fused ResourceApplyAdam kernel for the update of each variable.

    Falls back to Keras' own update where the fused kernel does not apply (amsgrad, another backend, a
    variable whose dtype differs from its gradient's).
    """

    def __init__(self, *args, name="adam", **kwargs):  # variable paths as keras' Adam writes them: adam/iteration
        super().__init__(*args, name=name, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or keras.backend.backend() != "tensorflow" or gradient.dtype != variable.dtype:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        local_step = tf.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
            beta1_power=tf.pow(tf.cast(self.beta_1, dtype), local_step),
            beta2_power=tf.pow(tf.cast(self.beta_2, dtype), local_step),
            lr=tf.cast(learning_rate, dtype), beta1=tf.cast(self.beta_1, dtype), beta2=tf.cast(self.beta_2, dtype),
            epsilon=tf.cast(self.epsilon, dtype), grad=gradient, use_locking=False)


def adam(learning_rate, **kwargs) -> keras.optimizers.Adam:
    """The training command's Adam: `FusedAdam` on TensorFlow, Keras' Adam elsewhere. learning_rate: a float or
    a keras.optimizers.schedules.LearningRateSchedule; kwargs go to Adam (beta_1, beta_2, epsilon, ...)."""
    cls = FusedAdam if keras.backend.backend() == "tensorflow" else keras.optimizers.Adam
    return cls(learning_rate, **kwargs)


def learning_rate_schedule(kind: str, learning_rate: float, total_steps: int):
    """The learning rate of `--lr-schedule`: constant (the paper's), or a decay over the run's budget of
    `total_steps` optimizer steps (epochs x steps per epoch) from learning_rate to 0: cosine,
    lr (1 + cos(pi s / S)) / 2, or linear, lr (1 - s / S). Past S the rate stays 0.
    Returns: a float (constant) or a keras LearningRateSchedule. Raises: ValueError for another kind or S < 1.
    """
    if kind == "constant":
        return float(learning_rate)
    if int(total_steps) < 1:
        raise ValueError(f"a {kind} learning-rate decay needs at least one step, got total_steps={total_steps}")
    if kind == "cosine":
        return keras.optimizers.schedules.CosineDecay(float(learning_rate), int(total_steps), alpha=0.0)
    if kind == "linear":
        return keras.optimizers.schedules.PolynomialDecay(float(learning_rate), int(total_steps),
                                                          end_learning_rate=0.0, power=1.0)
    raise ValueError(f"lr_schedule must be one of constant, cosine, linear; got {kind!r}")


def has_ema(model) -> bool:
    """Whether the model's optimizer keeps an exponential moving average of the weights (use_ema=True)."""
    return bool(getattr(getattr(model, "optimizer", None), "use_ema", False))


def swap_ema_weights(model) -> None:
    """Exchanges the model's trainable weights with the optimizer's moving averages of them (a no-op without EMA).

    Called twice, it restores both. The averages are Keras' own (`use_ema=True`, ema_momentum m: after each
    update a <- m a + (1 - m) w), kept in the optimizer, so a checkpoint of model and optimizer keeps both.
    """
    optimizer = model.optimizer if has_ema(model) else None
    if optimizer is None or not hasattr(optimizer, "_model_variables_moving_average"):  # off, or not built yet
        return
    for variable, average in zip(optimizer._trainable_variables, optimizer._model_variables_moving_average):
        current = tf.identity(variable.value)
        variable.assign(average.value)
        average.assign(current)


@contextlib.contextmanager
def ema_weights(model):
    """Within the block the model holds the moving averages of its weights (evaluation, saving the weights
    that evaluation reads); its training weights come back at the end, also on an exception."""
    swap_ema_weights(model)
    try:
        yield model
    finally:
        swap_ema_weights(model)


class EMAValidation(keras.callbacks.Callback):
    """Validation inside `fit` with the moving averages of the weights: swapped in on_test_begin, back on_test_end."""

    def on_test_begin(self, logs=None):
        swap_ema_weights(self.model)

    def on_test_end(self, logs=None):
        swap_ema_weights(self.model)
