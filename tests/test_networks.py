"""Tests of infusion_tf.networks: the transition operators and per-step batch normalization (footnote 5)."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from infusion_tf.config import InfusionConfig
from infusion_tf.networks import (
    ConvOperator, MLPOperator, StepBatchNormalization, build_operator, operator_head)

BETA, EPS = 0.1, 1e-4


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _mlp(example_shape=(28, 28, 1), num_steps=3, width=32, depth=2, variance="diagonal"):
    op = MLPOperator(example_shape, num_steps, width, depth, variance=variance, beta=BETA, epsilon=EPS)
    op.build((None, *example_shape))
    return op


def _conv(size, num_steps=3, width=32, variance="diagonal"):
    op = ConvOperator((size, size, 3), num_steps, width, variance=variance, beta=BETA, epsilon=EPS)
    op.build((None, size, size, 3))
    return op


def _randomize_step_parameters(op, seed=0):
    """Distinct gamma, beta and moving statistics per step, so that a wrong row changes the output."""
    rng = np.random.default_rng(seed)
    for layer in op._flatten_layers():
        if isinstance(layer, StepBatchNormalization):
            shape = layer.gamma.shape
            layer.gamma.assign(rng.uniform(0.5, 2.0, shape).astype(np.float32))
            layer.beta.assign(rng.normal(0.0, 0.5, shape).astype(np.float32))
            layer.moving_mean.assign(rng.normal(0.0, 0.5, shape).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape).astype(np.float32))


def _check_mean_and_variance(mean, variance, shape):
    mean, variance = np.asarray(mean), np.asarray(variance)
    assert mean.shape == shape and variance.shape == shape
    assert mean.dtype == np.float32 and variance.dtype == np.float32
    assert np.all((mean > 0.0) & (mean < 1.0))
    # float32 rounding of beta * sigmoid + eps: one ulp of slack at each end.
    assert np.all(variance >= np.float32(EPS) * (1 - 1e-6))
    assert np.all(variance <= np.float32(BETA + EPS) * (1 + 1e-6))


# ------------------------------------------------------------------------------------ operator head
def test_operator_head_matches_numpy():
    rng = np.random.default_rng(0)
    mean_logits = rng.normal(0, 3, (4, 6)).astype(np.float32)
    var_logits = rng.normal(0, 3, (4, 6)).astype(np.float32)
    mean, variance = operator_head(mean_logits, var_logits, BETA, EPS, (3, 2))
    np.testing.assert_allclose(mean, _sigmoid(mean_logits).reshape(4, 3, 2), rtol=1e-6)
    np.testing.assert_allclose(variance, (BETA * _sigmoid(var_logits) + EPS).reshape(4, 3, 2), rtol=1e-6)
    # Isotropic: one logit per example, broadcast over all pixels.
    iso_logits = rng.normal(0, 3, (4, 1)).astype(np.float32)
    _, variance = operator_head(mean_logits, iso_logits, BETA, EPS, (3, 2))
    expected = np.broadcast_to((BETA * _sigmoid(iso_logits) + EPS)[:, :, None], (4, 3, 2))
    np.testing.assert_allclose(variance, expected, rtol=1e-6)


# ------------------------------------------------------------------------------------ output shapes
@pytest.mark.parametrize("variance", ["diagonal", "isotropic"])
@pytest.mark.parametrize("use_batch_statistics", [True, False])
def test_mlp_output(variance, use_batch_statistics):
    op = _mlp(variance=variance)
    z = tf.random.stateless_uniform([5, 28, 28, 1], [1, 2])
    mean, var = op(z, step=1, use_batch_statistics=use_batch_statistics)
    _check_mean_and_variance(mean, var, (5, 28, 28, 1))


@pytest.mark.parametrize("size, variance", [(32, "diagonal"), (32, "isotropic"), (64, "diagonal")])
def test_conv_output(size, variance):
    op = _conv(size, variance=variance)
    z = tf.random.stateless_uniform([2, size, size, 3], [3, 4])
    for use_batch_statistics in (True, False):
        mean, var = op(z, step=0, use_batch_statistics=use_batch_statistics)
        _check_mean_and_variance(mean, var, (2, size, size, 3))


def test_conv_transposed_convolution_count():
    """Section 4: three transposed convolutions for 32x32, four for 64x64 (with the heads)."""
    assert len(_conv(32).deconvs) + 1 == 3
    assert len(_conv(64).deconvs) + 1 == 4


@pytest.mark.parametrize("make", [lambda: _mlp(variance="isotropic"), lambda: _conv(32, variance="isotropic")],
                         ids=["mlp", "conv"])
def test_isotropic_variance_is_one_value_per_example(make):
    op = make()
    shape = (4, *op.example_shape)
    z = tf.random.stateless_uniform(shape, [5, 6])
    _, variance = op(z, step=0, use_batch_statistics=True)
    variance = np.asarray(variance).reshape(4, -1)
    np.testing.assert_array_equal(variance, np.broadcast_to(variance[:, :1], variance.shape))


def test_mlp_matches_numpy_forward():
    """The MLP against a numpy forward pass: Dense -> step batch norm -> ReLU, then sigmoid heads."""
    op = _mlp(example_shape=(10,), num_steps=3, width=16, depth=2)
    _randomize_step_parameters(op)
    z = np.random.default_rng(1).uniform(size=(6, 10)).astype(np.float32)
    step = 2

    def forward(use_batch_statistics):
        h = z.astype(np.float64)
        for dense, norm in zip(op.dense, op.norms):
            a = h @ dense.kernel.numpy()
            if use_batch_statistics:
                mu, var = a.mean(0), a.var(0)
            else:
                mu, var = norm.moving_mean.numpy()[step], norm.moving_variance.numpy()[step]
            a = (a - mu) / np.sqrt(var + norm.epsilon) * norm.gamma.numpy()[step] + norm.beta.numpy()[step]
            h = np.maximum(a, 0.0)
        mean = _sigmoid(h @ op.mean_head.kernel.numpy() + op.mean_head.bias.numpy())
        variance = BETA * _sigmoid(h @ op.variance_head.kernel.numpy() + op.variance_head.bias.numpy()) + EPS
        return mean, variance

    for use_batch_statistics in (True, False):
        mean, variance = op(tf.constant(z), step=step, use_batch_statistics=use_batch_statistics)
        ref_mean, ref_variance = forward(use_batch_statistics)
        np.testing.assert_allclose(mean, ref_mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(variance, ref_variance, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------- per-step batch normalization
@pytest.mark.parametrize("make, num_layers", [(lambda: _mlp(num_steps=4, depth=2), 2),
                                              (lambda: _conv(32, num_steps=4), 3)], ids=["mlp", "conv"])
def test_exactly_T_sets_of_statistics(make, num_layers):
    op = make()
    norms = [layer for layer in op._flatten_layers() if isinstance(layer, StepBatchNormalization)]
    assert len(norms) == num_layers
    for norm in norms:
        channels = norm.gamma.shape[-1]
        for variable in (norm.gamma, norm.beta, norm.moving_mean, norm.moving_variance):
            assert tuple(variable.shape) == (4, channels)
    # Every non-trainable weight of the operator is a per-step statistic.
    assert all(tuple(w.shape)[0] == 4 for w in op.non_trainable_weights)
    assert len(op.non_trainable_weights) == 2 * num_layers


def test_step_batch_norm_matches_numpy_and_updates_only_row_k():
    num_steps, k, momentum, eps = 4, 2, 0.9, 1e-4
    layer = StepBatchNormalization(num_steps, momentum=momentum, epsilon=eps)
    layer.build((None, 3))
    x = np.random.default_rng(2).normal(1.0, 2.0, (64, 3)).astype(np.float32)
    y = layer(tf.constant(x), step=k, use_batch_statistics=True, update_statistics=True)
    mu, var = x.astype(np.float64).mean(0), x.astype(np.float64).var(0)  # biased variance, as BN uses
    np.testing.assert_allclose(y, (x - mu) / np.sqrt(var + eps), rtol=1e-4, atol=1e-5)
    mean_rows, var_rows = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    others = [i for i in range(num_steps) if i != k]
    np.testing.assert_array_equal(mean_rows[others], 0.0)
    np.testing.assert_array_equal(var_rows[others], 1.0)
    np.testing.assert_allclose(mean_rows[k], (1 - momentum) * mu, rtol=1e-5)
    np.testing.assert_allclose(var_rows[k], momentum + (1 - momentum) * var, rtol=1e-5)
    # Inference with the moving statistics of row k.
    y = layer(tf.constant(x), step=k)
    np.testing.assert_allclose(y, (x - mean_rows[k]) / np.sqrt(var_rows[k] + eps), rtol=1e-4, atol=1e-5)


def test_batch_statistics_without_update_leave_statistics():
    layer = StepBatchNormalization(3)
    layer.build((None, 5))
    layer(tf.ones([4, 5]) * 3.0, step=1, use_batch_statistics=True, update_statistics=False)
    np.testing.assert_array_equal(layer.moving_mean.numpy(), 0.0)
    np.testing.assert_array_equal(layer.moving_variance.numpy(), 1.0)


@pytest.mark.parametrize("make", [lambda: _mlp(num_steps=3), lambda: _conv(32, num_steps=3)], ids=["mlp", "conv"])
def test_operator_update_changes_only_row_k(make):
    op = make()
    k = 1
    before = [w.numpy().copy() for w in op.non_trainable_weights]
    z = tf.random.stateless_uniform((4, *op.example_shape), [7, 8])
    op(z, step=tf.constant(k), use_batch_statistics=True, update_statistics=True)
    for old, new in zip(before, op.non_trainable_weights):
        new = new.numpy()
        assert not np.allclose(new[k], old[k])
        np.testing.assert_array_equal(np.delete(new, k, axis=0), np.delete(old, k, axis=0))


def test_set_statistics_overwrites_only_row_k():
    layer = StepBatchNormalization(3)
    layer.build((None, 2))
    layer.set_statistics(2, [1.0, 2.0], [3.0, 4.0])
    np.testing.assert_array_equal(layer.moving_mean.numpy(), [[0, 0], [0, 0], [1, 2]])
    np.testing.assert_array_equal(layer.moving_variance.numpy(), [[1, 1], [1, 1], [3, 4]])


@pytest.mark.parametrize("make", [lambda: _mlp(num_steps=3), lambda: _conv(32, num_steps=3)], ids=["mlp", "conv"])
def test_steps_past_T_reuse_the_last_row(make):
    """Section 4.2: a T-step model samples 2T steps; steps >= T use the statistics of step T - 1."""
    op = make()
    _randomize_step_parameters(op)
    z = tf.random.stateless_uniform((3, *op.example_shape), [9, 10])
    last = op(z, step=2)
    for step in (3, 6, tf.constant(6)):
        past = op(z, step=step)
        np.testing.assert_array_equal(past[0], last[0])
        np.testing.assert_array_equal(past[1], last[1])
    # Non-vacuous: another step's parameters do change the output.
    assert not np.allclose(op(z, step=0)[0], last[0])


def test_tensor_step_does_not_retrace():
    op = _mlp(num_steps=3)
    call = tf.function(lambda z, step: op(z, step=step, use_batch_statistics=True))
    z = tf.zeros([2, 28, 28, 1])
    for step in range(5):
        call(z, tf.constant(step))
    assert call.experimental_get_tracing_count() == 1


# ------------------------------------------------------------------------------------ serialization
@pytest.mark.parametrize("make", [lambda: _mlp(variance="isotropic"), lambda: _conv(32)], ids=["mlp", "conv"])
def test_get_config_round_trip(make):
    op = make()
    _randomize_step_parameters(op)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(op))
    assert type(restored) is type(op)
    assert restored.get_config() == op.get_config()
    clone = type(op).from_config(op.get_config())
    assert clone.get_config() == op.get_config()
    clone.build((None, *op.example_shape))
    assert [w.shape for w in clone.weights] == [w.shape for w in op.weights]
    clone.set_weights(op.get_weights())
    z = tf.random.stateless_uniform((2, *op.example_shape), [11, 12])
    for step in (0, 2):
        np.testing.assert_array_equal(clone(z, step=step)[0], op(z, step=step)[0])
        np.testing.assert_array_equal(clone(z, step=step)[1], op(z, step=step)[1])


@pytest.mark.parametrize("kwargs, cls", [
    (dict(example_shape=(6,), width=8, num_steps=2, variance="isotropic"), MLPOperator),
    (dict(example_shape=(32, 32, 3), operator="conv", width=16, num_steps=2), ConvOperator),
])
def test_build_operator(kwargs, cls):
    config = InfusionConfig(**kwargs)
    op = build_operator(config)
    assert type(op) is cls
    assert op.built and op.weights  # every weight exists before the first call
    assert op.num_steps == config.num_steps and op.variance == config.variance
    mean, variance = op(tf.zeros((2, *config.example_shape)), step=0)
    assert mean.shape == (2, *config.example_shape)


def test_step_batch_norm_all_steps_at_once_matches_step_by_step():
    """step=None normalizes row t of [T, B, C] exactly as step t does, and updates every row once."""
    num_steps = 3
    rng = np.random.default_rng(5)
    x = rng.normal(1.0, 2.0, (num_steps, 16, 4)).astype(np.float32)
    one_call, by_step = StepBatchNormalization(num_steps), StepBatchNormalization(num_steps)
    for layer in (one_call, by_step):
        layer.build((None, 4))
        layer.gamma.assign(rng.uniform(0.5, 2.0, (num_steps, 4)).astype(np.float32))
        layer.beta.assign(rng.normal(0.0, 1.0, (num_steps, 4)).astype(np.float32))
    by_step.gamma.assign(one_call.gamma)
    by_step.beta.assign(one_call.beta)
    for use_batch_statistics in (True, False):
        y = one_call(tf.constant(x), step=None, use_batch_statistics=use_batch_statistics,
                     update_statistics=use_batch_statistics)
        expected = [by_step(tf.constant(x[t]), step=t, use_batch_statistics=use_batch_statistics,
                            update_statistics=use_batch_statistics) for t in range(num_steps)]
        np.testing.assert_allclose(y, np.stack(expected), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(one_call.moving_mean, by_step.moving_mean, rtol=1e-6)
        np.testing.assert_allclose(one_call.moving_variance, by_step.moving_variance, rtol=1e-6)
    with pytest.raises(ValueError, match="leading axis"):
        one_call(tf.constant(x[:2]), step=None)


@pytest.mark.parametrize("make", [lambda: _mlp(num_steps=3), lambda: _conv(32, num_steps=3)], ids=["mlp", "conv"])
def test_operator_all_steps_at_once_matches_step_by_step(make):
    op = make()
    _randomize_step_parameters(op)
    z = tf.random.stateless_uniform((3, 5, *op.example_shape), [3, 4])  # [T, B, ...]
    for use_batch_statistics in (True, False):
        mean, variance = op(z, step=None, use_batch_statistics=use_batch_statistics)
        assert tuple(mean.shape) == (3, 5, *op.example_shape)
        for t in range(3):
            mean_t, variance_t = op(z[t], step=t, use_batch_statistics=use_batch_statistics)
            np.testing.assert_allclose(mean[t], mean_t, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(variance[t], variance_t, rtol=1e-4, atol=1e-6)


def test_operator_computes_in_the_configs_precision():
    """mixed_bfloat16: bfloat16 matrix products on float32 weights, float32 outputs; no global policy needed."""
    from infusion_tf.config import InfusionConfig

    config = InfusionConfig(width=32, depth=1, num_steps=2, precision="mixed_bfloat16")
    op = build_operator(config)
    assert op.dense[0].compute_dtype == "bfloat16" and op.dense[0].kernel.dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"
    mean, variance = op(tf.random.stateless_uniform((4, 28, 28, 1), [1, 2]), step=0, use_batch_statistics=True)
    assert mean.dtype == tf.float32 and variance.dtype == tf.float32
    reference = build_operator(dataclasses.replace(config, precision="float32"))
    reference.set_weights(op.get_weights())
    expected, _ = reference(tf.random.stateless_uniform((4, 28, 28, 1), [1, 2]), step=0, use_batch_statistics=True)
    np.testing.assert_allclose(mean, expected, atol=0.02)  # bfloat16 keeps 8 bits of mantissa


# ------------------------------------------------------------------------- fused pieces of the training step
def test_fused_batch_normalization_matches_moments_and_its_gradient():
    """networks.fused_batch_normalization (one FusedBatchNormV3 kernel) against tf.nn.moments +
    tf.nn.batch_normalization: outputs, biased batch statistics and gradients."""
    from infusion_tf.networks import fused_batch_normalization

    rng = np.random.default_rng(3)
    for shape in ((64, 12), (8, 4, 4, 5)):
        x = tf.constant(rng.standard_normal(shape).astype(np.float32) * 3 + 1)
        gamma = tf.constant(rng.uniform(0.5, 2, shape[-1]).astype(np.float32))
        beta = tf.constant(rng.standard_normal(shape[-1]).astype(np.float32))
        weights = tf.constant(rng.standard_normal(shape).astype(np.float32))
        results = []
        for fused in (True, False):
            with tf.GradientTape() as tape:
                tape.watch([x, gamma, beta])
                if fused:
                    y, mean, variance = fused_batch_normalization(x, gamma, beta, 1e-4)
                else:
                    mean, variance = tf.nn.moments(x, axes=list(range(len(shape) - 1)))
                    y = tf.nn.batch_normalization(x, mean, variance, beta, gamma, 1e-4)
                loss = tf.reduce_sum(weights * tf.nn.relu(y))
            results.append([y, mean, variance, *tape.gradient(loss, [x, gamma, beta])])
        for a, b in zip(*results):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


def test_replayed_dense_has_the_gradients_of_the_product():
    """networks.replayed_dense returns the stored output, with the gradients of h @ kernel + bias."""
    from infusion_tf.networks import replayed_dense

    rng = np.random.default_rng(4)
    h, kernel, bias = (tf.constant(rng.standard_normal(s).astype(np.float32)) for s in ((7, 5), (5, 3), (3,)))
    upstream = tf.constant(rng.standard_normal((7, 3)).astype(np.float32))
    grads = []
    for replay in (True, False):
        with tf.GradientTape() as tape:
            tape.watch([h, kernel, bias])
            out = tf.matmul(h, kernel) + bias
            if replay:
                out = replayed_dense(h, kernel, bias, tf.stop_gradient(out))
            loss = tf.reduce_sum(upstream * out)
        grads.append(tape.gradient(loss, [h, kernel, bias]))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_mlp_operator_replays_its_recorded_products():
    """call(return_products=True) records the Dense outputs; call(products=...) on the same input gives the
    same (mean, variance) and the same gradients as computing the products again."""
    operator = MLPOperator((6,), num_steps=2, width=8, depth=2)
    operator.build((None, 6))
    z = tf.constant(np.random.default_rng(5).uniform(size=(2, 10, 6)).astype(np.float32))  # [T, B, d]
    recorded = [operator(z[t], step=t, use_batch_statistics=True, return_products=True)[2] for t in range(2)]
    products = [tf.concat(layer, axis=0) for layer in zip(*recorded)]
    outputs = []
    for replay in (products, None):
        with tf.GradientTape() as tape:
            kwargs = {} if replay is None else {"products": replay}
            mean, variance = operator(z, step=None, use_batch_statistics=True, **kwargs)
            loss = tf.reduce_sum(mean * 3.0 + tf.math.log(variance))
        outputs.append([mean, variance, *tape.gradient(loss, operator.trainable_variables)])
    for a, b in zip(*outputs):
        np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy(),
                                   rtol=1e-4, atol=1e-5)
