"""Transition operators p(t)(z(t) | z(t-1)): networks that return a Gaussian's (mean, variance) (Section 4).

mean = sigmoid(head_mu), variance = beta * sigmoid(head_var) + epsilon. The weights are shared by all
steps; batch normalization is not (footnote 5): `StepBatchNormalization` holds one set of parameters
and statistics per step, and a step past the trained ones reuses the last set, so a 15-step model can
sample 30 steps (Section 4.2).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from infusion_tf.registry import OPERATORS, register_operator

__all__ = ["StepBatchNormalization", "MLPOperator", "ConvOperator", "build_operator", "operator_head",
           "fused_batch_normalization", "replayed_dense"]

_PACKAGE = "infusion_tf"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StepBatchNormalization(keras.layers.Layer):
    """Batch normalization with its own gamma, beta and moving statistics for each step t (footnote 5).

    call(x [..., C], step) normalizes with the batch statistics (`use_batch_statistics=True`, optionally
    updating step's moving averages) or with step's moving averages. `step` is a 0-based int or int32
    tensor; steps >= num_steps use the last step's parameters. With `step=None`, x is [num_steps, B, ..., C]
    and row t is step t: every step is normalized (and its statistics updated) in one call, which is how
    the training step scores a whole infusion chain at once.
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
        if step is None:
            return self._call_all_steps(x, use_batch_statistics, update_statistics)
        index = tf.minimum(tf.cast(step, tf.int32), self.num_steps - 1)
        x32 = tf.cast(x, tf.float32)
        gamma = tf.gather(self.gamma, index)
        beta = tf.gather(self.beta, index)
        if use_batch_statistics:
            y, mean, variance = fused_batch_normalization(x32, gamma, beta, self.epsilon)  # mean, variance: [C]
            if update_statistics:
                self._update_moving_statistics(index, mean, variance)
            if self.recorder is not None:
                count = tf.size(x32) // tf.shape(x32)[-1]
                self.recorder(self, index, mean, variance, count)
        else:
            mean = tf.gather(self.moving_mean, index)
            variance = tf.gather(self.moving_variance, index)
            y = tf.nn.batch_normalization(x32, mean, variance, beta, gamma, self.epsilon)
        return tf.cast(y, x.dtype)

    def _call_all_steps(self, x, use_batch_statistics, update_statistics):
        """x: [num_steps, B, ..., C] -> the same shape, row t normalized as step t."""
        if x.shape[0] != self.num_steps:
            raise ValueError(f"with step=None the leading axis must hold the {self.num_steps} steps, "
                             f"got shape {list(x.shape)}")
        x32 = tf.cast(x, tf.float32)
        broadcast = [self.num_steps] + [1] * (len(x.shape) - 2) + [-1]  # [T, 1, ..., C]
        if use_batch_statistics:
            mean, variance = tf.nn.moments(x32, axes=list(range(1, len(x.shape) - 1)))  # [T, C] each
            if update_statistics:
                decay = 1.0 - self.momentum
                self.moving_mean.assign(self.moving_mean - decay * (self.moving_mean - mean))
                self.moving_variance.assign(self.moving_variance - decay * (self.moving_variance - variance))
            if self.recorder is not None:
                count = tf.size(x32[0]) // tf.shape(x32)[-1]
                for t in range(self.num_steps):
                    self.recorder(self, tf.constant(t), mean[t], variance[t], count)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        y = tf.nn.batch_normalization(x32, tf.reshape(mean, broadcast), tf.reshape(variance, broadcast),
                                      tf.reshape(self.beta, broadcast), tf.reshape(self.gamma, broadcast),
                                      self.epsilon)
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


def fused_batch_normalization(x, gamma, beta, epsilon: float):
    """Batch normalization of x [..., C] with its own batch's statistics, as one fused kernel (and one for its gradient).

    The same values as tf.nn.moments + tf.nn.batch_normalization, from TensorFlow's FusedBatchNormV3 (oneDNN
    on CPU): 1 operation forward and 1 backward instead of about 10 small ones each, which matters at the
    paper's batch of 100 (docs/performance.md). x: float32 [N, C] or [N, H, W, C]; gamma, beta: [C].
    Returns: (y [same shape as x], batch mean [C], batch variance [C]); the variance is the biased one
    (divided by the count, as tf.nn.moments), where the kernel reports the unbiased one.
    """
    shape = tf.shape(x)
    nhwc = x if len(x.shape) == 4 else tf.reshape(x, [-1, 1, 1, x.shape[-1]])
    y, mean, unbiased, *_ = tf.raw_ops.FusedBatchNormV3(
        x=nhwc, scale=gamma, offset=beta, mean=tf.zeros([0]), variance=tf.zeros([0]), epsilon=epsilon,
        is_training=True, data_format="NHWC")
    count = tf.cast(tf.size(x) // x.shape[-1], tf.float32)
    variance = unbiased * tf.maximum(count - 1.0, 0.0) / count
    return tf.reshape(y, shape), tf.stop_gradient(mean), tf.stop_gradient(variance)


@tf.custom_gradient
def replayed_dense(h, kernel, bias, output):
    """A Dense layer's output computed earlier, h @ kernel + bias, returned with that product's gradient.

    The denoising training step computes each step's products once, while drawing the chain (forward, B rows
    per product), then differentiates the scored chain with all T steps as one batch of T * B rows
    (`chains.score_infusion_chain`). Replaying the stored products there instead of recomputing them saves
    the whole second forward pass of products; the backward products (upstream @ kernel^T and
    h^T @ upstream, on T * B rows) are the usual ones. h: [N, in]; kernel: [in, out]; bias: [out] (zeros
    for a layer without one); output: [N, out], h @ kernel + bias as computed before. Returns: output.
    """

    def gradient(upstream):
        return (tf.matmul(upstream, kernel, transpose_b=True), tf.matmul(h, upstream, transpose_a=True),
                tf.reduce_sum(upstream, axis=0), None)

    return tf.identity(output), gradient


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

    supports_replay = False  # True where call() takes products= and return_products= (MLPOperator)

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
                                      name=name, dtype=self.dtype_policy)

    def _normalize(self, norm, h, step, use_batch_statistics, update_statistics):
        """Step batch norm of h [rows, ..., C]. With step=None the rows are num_steps blocks, one per step."""
        if step is not None:
            return norm(h, step=step, use_batch_statistics=use_batch_statistics,
                        update_statistics=update_statistics)
        by_step = tf.reshape(h, [self.num_steps, -1, *h.shape[1:]])  # [T, B, ..., C]
        y = norm(by_step, step=None, use_batch_statistics=use_batch_statistics,
                 update_statistics=update_statistics)
        return tf.reshape(y, [-1, *h.shape[1:]])

    def _output(self, mean_logits, variance_logits, step):
        """operator_head, reshaped back to [T, B, *example_shape] when all steps ran at once (step=None)."""
        mean, variance = operator_head(mean_logits, variance_logits, self.beta, self.epsilon, self.example_shape)
        if step is None:
            shape = [self.num_steps, -1, *self.example_shape]
            return tf.reshape(mean, shape), tf.reshape(variance, shape)
        return mean, variance

    def get_config(self):
        return {**super().get_config(), "example_shape": list(self.example_shape),
                "num_steps": self.num_steps, "width": self.width, "depth": self.depth,
                "variance": self.variance, "beta": self.beta, "epsilon": self.epsilon,
                "batch_norm_momentum": self.batch_norm_momentum,
                "batch_norm_epsilon": self.batch_norm_epsilon}


@register_operator("mlp")
@keras.saving.register_keras_serializable(package=_PACKAGE)
class MLPOperator(_Operator):
    """The paper's MNIST operator: depth x [Dense(width) -> step batch norm -> ReLU], then two Dense(d) heads.

    call(z [B, *example_shape], step) -> (mean, variance), float32 [B, *example_shape]; with step=None,
    z [T, B, *example_shape] holds one batch per step and all T steps run as one batch.
    """

    def __init__(self, example_shape, num_steps, width=1200, depth=2, **kwargs):
        super().__init__(example_shape, num_steps, width, depth, **kwargs)
        d = 1
        for s in self.example_shape:
            d *= s
        self.dense = [keras.layers.Dense(self.width, use_bias=False, name=f"dense_{i}", dtype=self.dtype_policy)
                      for i in range(self.depth)]
        self.norms = [self._step_norm(f"step_norm_{i}") for i in range(self.depth)]
        self.mean_head = keras.layers.Dense(d, name="mean_head", dtype=self.dtype_policy)
        self.variance_head = keras.layers.Dense(d if self.variance == "diagonal" else 1, name="variance_head",
                                                dtype=self.dtype_policy)

    def build(self, input_shape):
        d = self.mean_head.units
        shape = (None, d)
        for dense, norm in zip(self.dense, self.norms):
            dense.build(shape)
            shape = (None, self.width)
            norm.build(shape)
        self.mean_head.build(shape)
        self.variance_head.build(shape)

    supports_replay = True  # call(..., products=) and return_products=True, see replayed_dense

    def call(self, z, step, use_batch_statistics=False, update_statistics=False, products=None,
             return_products=False):
        """(mean, variance); with return_products=True also the Dense layers' outputs (hidden layers, then the
        two heads) as a list of [rows, units] tensors. Given `products` (those outputs, recorded on the same
        inputs), the Dense layers replay them instead of multiplying again (`replayed_dense`)."""
        h = tf.reshape(z, [-1, self.mean_head.units])  # [B, d], or [T * B, d] with step=None
        layers = [*self.dense, self.mean_head, self.variance_head]
        outputs = []

        def dense(i, h):
            if products is None:
                outputs.append(layers[i](h))
            else:
                layer = layers[i]
                kernel = tf.cast(layer.kernel, products[i].dtype)
                bias = (tf.cast(layer.bias, products[i].dtype) if layer.use_bias
                        else tf.zeros([layer.units], products[i].dtype))
                outputs.append(replayed_dense(h, kernel, bias, products[i]))
            return outputs[-1]

        for i, norm in enumerate(self.norms):
            h = tf.nn.relu(self._normalize(norm, dense(i, h), step, use_batch_statistics, update_statistics))
        mean, variance = self._output(dense(self.depth, h), dense(self.depth + 1, h), step)
        return (mean, variance, outputs) if return_products else (mean, variance)


@register_operator("conv")
@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvOperator(_Operator):
    """The paper's CIFAR-10 / CelebA operator (Section 4, after Salimans et al. 2016's generator).

    Dense(4 * 4 * width) -> transposed 5x5 stride-2 convolutions halving the channels, each with step
    batch norm and ReLU, up to half the image size; then two transposed-convolution heads to [H, W, C]:
    three transposed convolutions in all for 32x32 images, four for 64x64 (CelebA).
    call(z [B, H, W, C], step) -> (mean, variance), float32 [B, H, W, C]; step=None as for MLPOperator.
    """

    def __init__(self, example_shape, num_steps, width=512, depth=2, **kwargs):
        super().__init__(example_shape, num_steps, width, depth, **kwargs)
        size, _, channels = self.example_shape
        num_upsamplings = {32: 2, 64: 3}[size]  # 4 -> 8 -> 16 (-> 32), then the heads double once more
        self.dense = keras.layers.Dense(4 * 4 * self.width, use_bias=False, name="dense", dtype=self.dtype_policy)
        self.dense_norm = self._step_norm("step_norm_dense")
        filters = [max(self.width // 2 ** (i + 1), 8) for i in range(num_upsamplings)]
        self.deconvs = [keras.layers.Conv2DTranspose(f, 5, strides=2, padding="same", use_bias=False,
                                                     name=f"deconv_{i}", dtype=self.dtype_policy)
                        for i, f in enumerate(filters)]
        self.norms = [self._step_norm(f"step_norm_{i}") for i in range(num_upsamplings)]
        self.mean_head = keras.layers.Conv2DTranspose(channels, 5, strides=2, padding="same", name="mean_head",
                                                      dtype=self.dtype_policy)
        if self.variance == "diagonal":
            self.variance_head = keras.layers.Conv2DTranspose(channels, 5, strides=2, padding="same",
                                                              name="variance_head", dtype=self.dtype_policy)
        else:
            self.variance_head = keras.layers.Dense(1, name="variance_head", dtype=self.dtype_policy)

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
        h = tf.nn.relu(self._normalize(self.dense_norm, self.dense(h), step, use_batch_statistics,
                                       update_statistics))
        h = tf.reshape(h, [-1, 4, 4, self.width])
        for deconv, norm in zip(self.deconvs, self.norms):
            h = tf.nn.relu(self._normalize(norm, deconv(h), step, use_batch_statistics, update_statistics))
        variance_input = h if self.variance == "diagonal" else tf.reduce_mean(h, axis=[1, 2])
        return self._output(self.mean_head(h), self.variance_head(variance_input), step)


def build_operator(config) -> _Operator:
    """The transition operator an `InfusionConfig` describes, built (all weights exist).

    Its layers compute in config.precision: float32, or mixed_bfloat16 (bfloat16 matrix products with
    float32 weights; batch normalization and the heads' outputs stay float32).
    """
    kwargs = dict(variance=config.variance, beta=config.beta, epsilon=config.epsilon,
                  batch_norm_momentum=config.batch_norm_momentum, batch_norm_epsilon=config.batch_norm_epsilon,
                  name="transition_operator", dtype=config.precision)
    cls = OPERATORS.get(config.operator)
    operator = cls(config.example_shape, config.num_steps, config.width, config.depth, **kwargs)
    operator.build((None, *config.example_shape))
    return operator
