"""Masked autoregressive flow (MAF) with a MADE network written as a Keras 3 layer (Tao et al. 2019, App. G, I.2.2).

App. I.2.2 stacks 8 "shift_and_scale" MAF blocks with [512, 512] hidden layers, each followed by an order-flipping
permutation, built with tensorflow-probability. `tfb.AutoregressiveNetwork` is a Keras 2 layer, so the autoregressive
network here is `MADE`, a Keras 3 layer (Germain et al. 2015): masked dense layers whose masks make output d a function
of inputs < d only. `tfb.MaskedAutoregressiveFlow` takes it as its `shift_and_log_scale_fn`:

    forward (sampling):  x_d = z_d exp(log_scale_d(x_<d)) + shift_d(x_<d)    D sequential passes
    inverse (density):   z = (x - shift(x)) exp(-log_scale(x))                 one pass

so the density is cheap and sampling is slow: the "backward flow" of App. G that the paired sampler evaluates on a
free-form generator's samples without ever sampling from it.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfb, tfd = tfp.bijectors, tfp.distributions

__all__ = ["MADE", "made_masks", "maf_distribution"]


def made_masks(dim: int, hidden: tuple[int, ...]) -> list[np.ndarray]:
    """Masks of MADE with sequential input degrees 1..D and hidden degrees cycling through 1..D-1.

    Returns float32 masks [D, h1], [h1, h2], ..., [h_last, D]: mask[i, j] = 1 where unit j may see unit i (hidden:
    degree_j >= degree_i; output d: degree of the hidden unit < d). Output d (1-based) thus depends on inputs < d only.
    """
    if dim < 2:
        raise ValueError(f"a MADE needs dim >= 2, got {dim}")
    degrees = [np.arange(1, dim + 1)]
    for width in hidden:
        degrees.append(np.arange(width) % (dim - 1) + 1)
    masks = [(d_out[None, :] >= d_in[:, None]).astype(np.float32) for d_in, d_out in zip(degrees[:-1], degrees[1:])]
    masks.append((np.arange(1, dim + 1)[None, :] > degrees[-1][:, None]).astype(np.float32))
    return masks


@keras.saving.register_keras_serializable(package="infusion_tf")
class MADE(keras.layers.Layer):
    """x [..., D] -> (shift [..., D], log_scale [..., D]), output d a function of x_<d (App. I.2.2: [512, 512]).

    The last layer starts at zero, so the flow starts as the identity. log_scale = c tanh(raw / c), c = log_scale_bound,
    keeps each block's scale within exp(+-c) (tfp's own default network clips it to [-5, 3] instead).
    """

    def __init__(self, dim: int, hidden=(512, 512), activation: str = "relu", log_scale_bound: float = 3.0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.hidden = int(dim), tuple(int(h) for h in hidden)
        self.activation, self.log_scale_bound = keras.activations.get(activation), float(log_scale_bound)
        self._activation_name = activation
        self.masks = [tf.constant(m) for m in made_masks(self.dim, self.hidden)]
        sizes = (self.dim, *self.hidden)
        self.kernels, self.biases = [], []
        for i, (n_in, n_out) in enumerate(zip(sizes, (*self.hidden, 2 * self.dim))):
            last = i == len(self.hidden)
            init = "zeros" if last else "glorot_uniform"
            self.kernels.append(self.add_weight(shape=(n_in, n_out), initializer=init, name=f"kernel{i}"))
            self.biases.append(self.add_weight(shape=(n_out,), initializer="zeros", name=f"bias{i}"))
        self.masks[-1] = tf.concat([self.masks[-1], self.masks[-1]], axis=1)  # [h_last, 2D]: shift and log-scale
        self.built = True

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "hidden": list(self.hidden),
                "activation": self._activation_name, "log_scale_bound": self.log_scale_bound}

    def call(self, x):
        h = x
        for i, (kernel, bias, mask) in enumerate(zip(self.kernels, self.biases, self.masks)):
            h = tf.matmul(h, kernel * mask) + bias
            if i < len(self.hidden):
                h = self.activation(h)
        shift, raw = tf.split(h, 2, axis=-1)
        return shift, self.log_scale_bound * tf.tanh(raw / self.log_scale_bound)


def maf_distribution(mades, dim: int) -> tfd.TransformedDistribution:
    """N(0, I_D) pushed through MAF blocks, each followed by an order flip (App. I.2.2).

    mades: MADE layers, one per block. log_prob is one pass of every MADE; sample takes D passes of each.
    """
    bijectors = []
    for made in mades:
        bijectors.append(tfb.MaskedAutoregressiveFlow(shift_and_log_scale_fn=made))
        bijectors.append(tfb.Permute(permutation=list(range(dim - 1, -1, -1))))
    base = tfd.MultivariateNormalDiag(loc=tf.zeros(dim))
    return tfd.TransformedDistribution(base, tfb.Chain(list(reversed(bijectors))))
