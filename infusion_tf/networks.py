"""Transition operators p(t)(z(t) | z(t-1)): networks that return a Gaussian's (mean, variance) (Section 4).

mean = sigmoid(head_mu), variance = beta * sigmoid(head_var) + epsilon. The weights are shared by all
steps; batch normalization is not (footnote 5): `StepBatchNormalization` holds one set of parameters
and statistics per step, and a step past the trained ones reuses the last set, so a 15-step model can
sample 30 steps (Section 4.2).
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["StepBatchNormalization", "MLPOperator", "ConvOperator", "build_operator", "operator_head"]

_PACKAGE = "infusion_tf"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StepBatchNormalization(keras.layers.Layer):
    """Batch normalization with its own gamma, beta and moving statistics for each step t (footnote 5).

    call(x [..., C], step) normalizes with the batch statistics (`use_batch_statistics=True`, optionally
    updating step's moving averages) or with step's moving averages. `step` is a 0-based int or int32
    tensor; steps >= num_steps use the last step's parameters.
    """

    def __init__(self, num_steps: int, momentum: float = 0.9, epsilon: float = 1e-4, **kwargs):
        super().__init__(**kwargs)
        self.num_steps = int(num_steps)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        # Eager-only hook: recorder(layer, step, mean, variance, count) sees every batch's moments, so
        # estimators.recompute_batch_norm_statistics can pool them over the whole training set.
        self.recorder = None

    def build(self, input_shape):
        channels = int(input_shape[-1])
        shape = (self.num_steps, channels)
        self.gamma = self.add_weight(name="gamma", shape=shape, initializer="ones", autocast=False)
        self.beta = self.add_weight(name="beta", shape=shape, initializer="zeros", autocast=False)
        # aggregation="mean": under MirroredStrategy the replicas' updates are averaged, so every
        # replica keeps the same statistics.
        self.moving_mean = self.add_weight(name="moving_mean", shape=shape, initializer="zeros",
                                           trainable=False, autocast=False, aggregation="mean")
        self.moving_variance = self.add_weight(name="moving_variance", shape=shape, initializer="ones",
                                               trainable=False, autocast=False, aggregation="mean")

    def call(self, x, step, use_batch_statistics=False, update_statistics=False):
        index = tf.minimum(tf.cast(step, tf.int32), self.num_steps - 1)
        x32 = tf.cast(x, tf.float32)
        axes = list(range(len(x.shape) - 1))
        if use_batch_statistics:
            mean, variance = tf.nn.moments(x32, axes=axes)  # [C]
            if update_statistics:
                self._update_moving_statistics(index, mean, variance)
            if self.recorder is not None:
                count = tf.size(x32) // tf.shape(x32)[-1]
                self.recorder(self, index, mean, variance, count)
        else:
            mean = tf.gather(self.moving_mean, index)
            variance = tf.gather(self.moving_variance, index)
        gamma = tf.gather(self.gamma, index)
        beta = tf.gather(self.beta, index)
        y = tf.nn.batch_normalization(x32, mean, variance, beta, gamma, self.epsilon)
        return tf.cast(y, x.dtype)

    def _update_moving_statistics(self, index, mean, variance):
        # Only row `index` moves: m <- m - (1 - momentum) * onehot * (m - batch).
        row = tf.one_hot(index, self.num_steps, dtype=tf.float32)[:, None]  # [T, 1]
        decay = (1.0 - self.momentum) * row
        self.moving_mean.assign(self.moving_mean - decay * (self.moving_mean - mean[None, :]))
        self.moving_variance.assign(self.moving_variance - decay * (self.moving_variance - variance[None, :]))

    def set_statistics(self, step: int, mean, variance) -> None:
        """Overwrites step's moving statistics, e.g. with statistics over the whole training set."""
        if not 0 <= int(step) < self.num_steps:
            raise ValueError(f"step must be in [0, {self.num_steps - 1}], got {step}")
        row = tf.one_hot(step, self.num_steps, dtype=tf.float32)[:, None]
        self.moving_mean.assign(self.moving_mean * (1.0 - row) + row * tf.cast(mean, tf.float32)[None])
        self.moving_variance.assign(self.moving_variance * (1.0 - row) + row * tf.cast(variance, tf.float32)[None])

    def get_config(self):
        return {**super().get_config(), "num_steps": self.num_steps, "momentum": self.momentum,
                "epsilon": self.epsilon}


def operator_head(mean_logits, variance_logits, beta: float, epsilon: float, example_shape):
    """mean = sigmoid(head_mu), variance = beta * sigmoid(head_var) + epsilon (Section 4), in float32.

    mean_logits: [B, d] or [B, H, W, C]; variance_logits: the same shape (diagonal) or [B, 1] (isotropic).
    Returns: (mean, variance), each float32 [B, *example_shape]; the isotropic variance is broadcast.
    """
    shape = [-1, *example_shape]
    mean = tf.reshape(tf.sigmoid(tf.cast(mean_logits, tf.float32)), shape)
    variance = beta * tf.sigmoid(tf.cast(variance_logits, tf.float32)) + epsilon
    if variance.shape[-1] == 1 and len(variance.shape) == 2:  # isotropic: one value per example
        variance = tf.reshape(variance, [-1] + [1] * len(example_shape)) + tf.zeros_like(mean)
    else:
        variance = tf.reshape(variance, shape)
    return mean, variance


class _Operator(keras.layers.Layer):
    """Shared config of both operators; subclasses build `self.hidden` and the heads."""

    def __init__(self, example_shape, num_steps, width, depth=2, variance="diagonal", beta=0.1,
                 epsilon=1e-4, batch_norm_momentum=0.9, batch_norm_epsilon=1e-4, **kwargs):
        super().__init__(**kwargs)
        self.example_shape = tuple(int(s) for s in example_shape)
        self.num_steps = int(num_steps)
        self.width = int(width)
        self.depth = int(depth)
        self.variance = variance
        self.beta = float(beta)
        self.epsilon = float(epsilon)
        self.batch_norm_momentum = float(batch_norm_momentum)
        self.batch_norm_epsilon = float(batch_norm_epsilon)

    def _step_norm(self, name):
        return StepBatchNormalization(self.num_steps, self.batch_norm_momentum, self.batch_norm_epsilon,
                                      name=name)

    def get_config(self):
        return {**super().get_config(), "example_shape": list(self.example_shape),
                "num_steps": self.num_steps, "width": self.width, "depth": self.depth,
                "variance": self.variance, "beta": self.beta, "epsilon": self.epsilon,
                "batch_norm_momentum": self.batch_norm_momentum,
                "batch_norm_epsilon": self.batch_norm_epsilon}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MLPOperator(_Operator):
    """The paper's MNIST operator: depth x [Dense(width) -> step batch norm -> ReLU], then two Dense(d) heads.

    call(z [B, *example_shape], step) -> (mean, variance), float32 [B, *example_shape].
    """

    def __init__(self, example_shape, num_steps, width=1200, depth=2, **kwargs):
        super().__init__(example_shape, num_steps, width, depth, **kwargs)
        d = 1
        for s in self.example_shape:
            d *= s
        self.dense = [keras.layers.Dense(self.width, use_bias=False, name=f"dense_{i}") for i in range(self.depth)]
        self.norms = [self._step_norm(f"step_norm_{i}") for i in range(self.depth)]
        self.mean_head = keras.layers.Dense(d, name="mean_head")
        self.variance_head = keras.layers.Dense(d if self.variance == "diagonal" else 1, name="variance_head")

    def build(self, input_shape):
        d = self.mean_head.units
        shape = (None, d)
        for dense, norm in zip(self.dense, self.norms):
            dense.build(shape)
            shape = (None, self.width)
            norm.build(shape)
        self.mean_head.build(shape)
        self.variance_head.build(shape)

    def call(self, z, step, use_batch_statistics=False, update_statistics=False):
        h = tf.reshape(z, [-1, self.mean_head.units])  # [B, d]
        for dense, norm in zip(self.dense, self.norms):
            h = tf.nn.relu(norm(dense(h), step=step, use_batch_statistics=use_batch_statistics,
                                   update_statistics=update_statistics))  # [B, width]
        return operator_head(self.mean_head(h), self.variance_head(h), self.beta, self.epsilon,
                             self.example_shape)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvOperator(_Operator):
    """The paper's CIFAR-10 / CelebA operator (Section 4, after Salimans et al. 2016's generator).

    Dense(4 * 4 * width) -> transposed 5x5 stride-2 convolutions halving the channels, each with step
    batch norm and ReLU, up to half the image size; then two transposed-convolution heads to [H, W, C]:
    three transposed convolutions in all for 32x32 images, four for 64x64 (CelebA).
    call(z [B, H, W, C], step) -> (mean, variance), float32 [B, H, W, C].
    """

    def __init__(self, example_shape, num_steps, width=512, depth=2, **kwargs):
        super().__init__(example_shape, num_steps, width, depth, **kwargs)
        size, _, channels = self.example_shape
        num_upsamplings = {32: 2, 64: 3}[size]  # 4 -> 8 -> 16 (-> 32), then the heads double once more
        self.dense = keras.layers.Dense(4 * 4 * self.width, use_bias=False, name="dense")
        self.dense_norm = self._step_norm("step_norm_dense")
        filters = [max(self.width // 2 ** (i + 1), 8) for i in range(num_upsamplings)]
        self.deconvs = [keras.layers.Conv2DTranspose(f, 5, strides=2, padding="same", use_bias=False,
                                                     name=f"deconv_{i}") for i, f in enumerate(filters)]
        self.norms = [self._step_norm(f"step_norm_{i}") for i in range(num_upsamplings)]
        self.mean_head = keras.layers.Conv2DTranspose(channels, 5, strides=2, padding="same", name="mean_head")
        if self.variance == "diagonal":
            self.variance_head = keras.layers.Conv2DTranspose(channels, 5, strides=2, padding="same",
                                                              name="variance_head")
        else:
            self.variance_head = keras.layers.Dense(1, name="variance_head")

    def build(self, input_shape):
        size, _, channels = self.example_shape
        self.dense.build((None, size * size * channels))
        self.dense_norm.build((None, 4 * 4 * self.width))
        shape, side = (None, 4, 4, self.width), 4
        for deconv, norm in zip(self.deconvs, self.norms):
            deconv.build(shape)
            side *= 2
            shape = (None, side, side, deconv.filters)
            norm.build(shape)
        self.mean_head.build(shape)
        self.variance_head.build(shape if self.variance == "diagonal" else (None, shape[-1]))

    def call(self, z, step, use_batch_statistics=False, update_statistics=False):
        size, _, channels = self.example_shape
        h = tf.reshape(z, [-1, size * size * channels])
        h = tf.nn.relu(self.dense_norm(self.dense(h), step=step, use_batch_statistics=use_batch_statistics,
                                           update_statistics=update_statistics))
        h = tf.reshape(h, [-1, 4, 4, self.width])
        for deconv, norm in zip(self.deconvs, self.norms):
            h = tf.nn.relu(norm(deconv(h), step=step, use_batch_statistics=use_batch_statistics,
                                   update_statistics=update_statistics))
        variance_input = h if self.variance == "diagonal" else tf.reduce_mean(h, axis=[1, 2])
        return operator_head(self.mean_head(h), self.variance_head(variance_input), self.beta,
                             self.epsilon, self.example_shape)


def build_operator(config) -> _Operator:
    """The transition operator an `InfusionConfig` describes, built (all weights exist)."""
    kwargs = dict(variance=config.variance, beta=config.beta, epsilon=config.epsilon,
                  batch_norm_momentum=config.batch_norm_momentum,
                  batch_norm_epsilon=config.batch_norm_epsilon, name="transition_operator")
    cls = {"mlp": MLPOperator, "conv": ConvOperator}[config.operator]
    operator = cls(config.example_shape, config.num_steps, config.width, config.depth, **kwargs)
    operator.build((None, *config.example_shape))
    return operator
