"""Denoiser score estimators and Langevin sampling (Tao et al. 2019, App. F).

A denoising autoencoder phi_sigma is trained on x + sigma eps, eps ~ N(0, I), to predict x. Its optimum is
Tweedie's formula phi*(x) = x + sigma^2 grad log p_sigma(x), with p_sigma = p * N(0, sigma^2 I) the smoothed data
density, so two estimates of the score grad log p come from it:

    DAE-score     s_sigma(x)   = (phi_sigma(x) - x) / sigma^2          (exact for p_sigma at the optimum)
    DAE-residual  s^r_sigma(x) = -grad_x ||phi_sigma(x) - x||^2         (by autodiff)

At the optimum s^r = -2 sigma^4 H(x) s_sigma(x), H the Hessian of log p_sigma: it vanishes where the score does, but
with a scale and direction set by the curvature, which is why App. F finds its Langevin samples off the data.

Langevin sampling (unadjusted): x_{k+1} = x_k + (eps / 2) s(x_k) + sqrt(eps) z_k, z_k ~ N(0, I); with annealed noise
levels sigma_1 > ... > sigma_L, level i runs with step eps (sigma_i / sigma_L)^2 and its own score (Song & Ermon
2019, Algorithm 1), starting where level i - 1 stopped.
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
import tensorflow as tf

__all__ = ["DenoisingAutoencoder", "dae_score", "dae_residual_score", "residual_rescale", "langevin_sample",
           "annealed_langevin_sample"]

ScoreFn = Callable[[tf.Tensor], tf.Tensor]  # float32 [n, d] -> [n, d]


@keras.saving.register_keras_serializable(package="infusion_tf")
class DenoisingAutoencoder(keras.Model):
    """phi_sigma(x): an MLP denoiser of points in R^d, trained on x + sigma eps to predict x (App. F).

    phi(x) = x + scale * net((x - shift) / scale): the network sees standardized points and predicts the
    correction, whose optimum sigma^2 grad log p_sigma(x) is small; `adapt(x)` sets shift and scale from data.
    `fit(x)` minimizes E ||phi(x + sigma eps) - x||^2 (summed over coordinates) with fresh noise every step.
    """

    def __init__(self, dim: int, sigma: float, width: int = 128, depth: int = 3, activation: str = "swish",
                 seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma!r}")
        if int(dim) < 1 or int(width) < 1 or int(depth) < 1:
            raise ValueError(f"dim, width and depth must be >= 1, got {dim}, {width}, {depth}")
        self.dim, self.sigma, self.width, self.depth = int(dim), float(sigma), int(width), int(depth)
        self.activation, self.seed = activation, int(seed)
        self.hidden = [keras.layers.Dense(self.width, activation=activation) for _ in range(self.depth)]
        self.out = keras.layers.Dense(self.dim, kernel_initializer="zeros")  # phi = identity at initialization
        self.shift = self.add_weight(name="shift", shape=(self.dim,), initializer="zeros", trainable=False)
        self.scale = self.add_weight(name="scale", shape=(self.dim,), initializer="ones", trainable=False)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.build((None, self.dim))

    def build(self, input_shape):
        shape = (None, self.dim)
        for layer in self.hidden:
            layer.build(shape)
            shape = (None, self.width)
        self.out.build(shape)
        self.built = True

    def get_config(self):
        return {"dim": self.dim, "sigma": self.sigma, "width": self.width, "depth": self.depth,
                "activation": self.activation, "seed": self.seed, "name": self.name}

    def adapt(self, x) -> None:
        """Sets shift and scale to the mean and standard deviation of float [n, d] data (plus sigma^2 noise)."""
        x = tf.convert_to_tensor(x, tf.float32)
        mean, var = tf.nn.moments(x, axes=[0])
        self.shift.assign(mean)
        self.scale.assign(tf.sqrt(var + self.sigma**2))

    def call(self, x):
        h = (x - self.shift) / self.scale  # [n, d]
        for layer in self.hidden:
            h = layer(h)
        return x + self.scale * self.out(h)

    @property
    def metrics(self):
        return [self.loss_tracker]

    def train_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        noise = keras.random.normal(tf.shape(x), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.reduce_sum(tf.square(self(x + self.sigma * noise) - x), axis=-1))
        self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}


def dae_score(phi: Callable, x: tf.Tensor, sigma: float) -> tf.Tensor:
    """DAE-score estimator s_sigma(x) = (phi_sigma(x) - x) / sigma^2 (App. F). x: float32 [n, d] -> [n, d]."""
    return (phi(x) - x) / (sigma**2)


def dae_residual_score(phi: Callable, x: tf.Tensor) -> tf.Tensor:
    """DAE-residual estimator s^r(x) = -grad_x ||phi(x) - x||^2 (App. F), by autodiff. float32 [n, d] -> [n, d].

    phi must treat rows independently (an MLP without batch statistics), so that the gradient of the summed
    residuals is each row's own gradient.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        residual = tf.reduce_sum(tf.square(phi(x) - x))
    return -tape.gradient(residual, x)


def residual_rescale(phi: Callable, x, sigma: float) -> float:
    """The constant c minimizing sum ||s_sigma(x) - c s^r_sigma(x)||^2 over the points x, float [n, d]: the DAE-residual
    scaled to the DAE-score's size by least squares (App. F's comparison; at the optimum s^r is about 2 sigma^4 H s)."""
    x = tf.convert_to_tensor(x, tf.float32)
    dae_s, resid_s = dae_score(phi, x, sigma), dae_residual_score(phi, x)
    return float(tf.reduce_sum(dae_s * resid_s) / tf.reduce_sum(resid_s * resid_s))


def langevin_sample(score_fn: ScoreFn, x0, step_size: float, num_steps, seed=0) -> tf.Tensor:
    """Unadjusted Langevin: x_{k+1} = x_k + (eps / 2) score(x_k) + sqrt(eps) z_k, for k < num_steps.

    x0: float [n, d] starting points. step_size: eps > 0. num_steps: an int or an int32 scalar tensor (traced
    sampling, e.g. a SavedModel signature). seed: an int or an int32 scalar tensor; step k draws its noise with the
    stateless seed (seed, k).
    Returns: float32 [n, d], the points after num_steps steps.
    Raises: ValueError if step_size <= 0, or if a Python num_steps is not an integer >= 0.
    """
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size!r}")
    if not tf.is_tensor(num_steps) and (int(num_steps) != num_steps or num_steps < 0):
        raise ValueError(f"num_steps must be an integer >= 0, got {num_steps!r}")
    eps = tf.constant(step_size, tf.float32)

    @tf.function
    def run(x, num_steps, seed):
        def body(k, x):
            noise = tf.random.stateless_normal(tf.shape(x), tf.stack([seed, k]))
            return k + 1, x + 0.5 * eps * score_fn(x) + tf.sqrt(eps) * noise

        return tf.while_loop(lambda k, x: k < num_steps, body, (tf.constant(0, tf.int32), x))[1]

    return run(tf.convert_to_tensor(x0, tf.float32), tf.cast(num_steps, tf.int32), tf.cast(seed, tf.int32))


def annealed_langevin_sample(score_fns: Sequence[ScoreFn], sigmas: Sequence[float], x0, step_size: float,
                             steps_per_level, seed=0) -> tf.Tensor:
    """Annealed Langevin over noise levels sigma_1 > ... > sigma_L: level i runs `steps_per_level` steps of
    size step_size (sigma_i / sigma_L)^2 with score_fns[i] (the score of p_{sigma_i}), noise seed seed * 1000 + i.
    steps_per_level and seed: ints or int32 scalar tensors (langevin_sample).

    Returns: float32 [n, d]. Raises: ValueError if the lists differ in length or sigmas do not decrease.
    """
    if len(score_fns) != len(sigmas) or not sigmas:
        raise ValueError(f"need one score function per noise level, got {len(score_fns)} and {len(sigmas)}")
    if any(not b < a for a, b in zip(sigmas, sigmas[1:])) or not sigmas[-1] > 0:
        raise ValueError(f"sigmas must be positive and decreasing, got {list(sigmas)}")
    x = tf.convert_to_tensor(x0, tf.float32)
    for level, (score_fn, sigma) in enumerate(zip(score_fns, sigmas)):
        x = langevin_sample(score_fn, x, step_size * (sigma / sigmas[-1]) ** 2, steps_per_level,
                            seed=seed * 1000 + level)
    return x
