"""A VAE whose decoder is the short-run model's generator: the comparison of issue 18, item 4.

Same generative model as short_run_ot (short_run.py): z ~ N(0, I_30), y = G(z) + sigma * eps on the [-1, 1] scale
(y = 2 x - 1), G the generator of An, Xie & Li's supplement, Table 1, sigma = 0.3 fixed. Instead of short-run
Langevin inference, a Gaussian encoder q(z | y) = N(mu(y), diag exp(log_var(y))) (Kingma & Welling 2014) is
trained jointly with G on the reparametrized evidence lower bound

    ELBO(y) = E_q[log N(y; G(z), sigma^2 I)] - KL(q(z | y) || N(0, I)),   z = mu + exp(log_var / 2) * eps,

one sample of eps per example, the KL in closed form. The encoder mirrors G: two 4x4 stride-2 convolutions
(28 -> 14 -> 7, 64 and 128 channels, ReLU), Linear 1024 (ReLU), Linear 2 * 30. The likelihood goes through the
protocol as short_run_ot's does, with the encoder as the proposal (short_run.gaussian_log_weights, the same two
per-step terms), so the estimators and the [0, 1]-scale correction (+ d log 2 = 543.4 nats, short_run.py) are
shared.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import tensorflow as tf

from infusion_tf import protocol
from infusion_tf.config import ModelConfig, check_seed
from infusion_tf.registry import register_model, register_model_config
from infusion_tf.short_run import build_generator, gaussian_log_weights

__all__ = ["GaussianVAEConfig", "GaussianVAE", "build_encoder", "NAME"]

NAME = "gaussian_vae"
_MNIST_SHAPE = (28, 28, 1)


@register_model_config(NAME)
@dataclasses.dataclass(frozen=True)
class GaussianVAEConfig(ModelConfig):
    """Settings of the VAE with short_run_ot's decoder. The decoder's settings are short_run_ot's defaults."""

    model: str = NAME  # the registered model these settings build (registry.MODELS)
    dataset: str = "mnist"  # 28x28x1 images only (the decoder is the generator of the supplement's Table 1)
    example_shape: tuple[int, ...] = _MNIST_SHAPE  # shape of one example
    dequantize: bool = True  # x = (u + U[0,1)) / 256, as the toolkit's other models
    train_examples: int | None = None  # train on the first N training examples
    validation_examples: int | None = None  # validate on the first N validation examples
    seed: int = 0
    sampling_steps: int = 1  # a sample is one decoder pass G(z), z ~ N(0, I); the step count is ignored
    latent_dim: int = 30  # dimension of z (short_run_ot's)
    sigma: float = 0.3  # observation noise on the [-1, 1] scale, fixed as in short_run_ot (0.15 on [0, 1])
    encoder_width: int = 1024  # the encoder's dense layer (the decoder's first layer mirrored)
    batch_norm_momentum: float = 0.9  # the decoder's batch norm, as short_run_ot
    batch_size: int = 100  # our choice (the VAE's usual setting), not short_run_ot's 2000
    learning_rate: float = 1e-3  # Adam (the training command's default beta1 = 0.9, beta2 = 0.999): our choice
    epochs: int = 100  # passes over the data
    patience: int | None = None  # stop after this many epochs without a better validation bound; None: never
    sample_every: int = 10  # write a sample grid after epoch 1 and every this many epochs

    def __post_init__(self) -> None:
        if self.model != NAME:
            raise ValueError(f"GaussianVAEConfig builds the {NAME} model, got model={self.model!r}")
        object.__setattr__(self, "example_shape", tuple(int(s) for s in self.example_shape))
        if self.example_shape != _MNIST_SHAPE:
            raise ValueError(f"the {NAME} decoder (short_run_ot's generator) makes 28x28x1 images, got example_shape "
                             f"{self.example_shape} (dataset {self.dataset!r})")
        for name in ("latent_dim", "encoder_width", "batch_size", "epochs", "sample_every", "sampling_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("train_examples", "validation_examples", "patience"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        for name in ("sigma", "learning_rate"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if not 0.0 <= self.batch_norm_momentum <= 1.0:
            raise ValueError(f"batch_norm_momentum must be in [0, 1], got {self.batch_norm_momentum}")
        check_seed(self.seed)


def build_encoder(latent_dim: int, width: int = 1024) -> keras.Sequential:
    """y [B, 28, 28, 1] -> [B, 2 * latent_dim]: mean and log-variance of q(z | y) (G of Table 1 mirrored)."""
    init = "glorot_normal"
    return keras.Sequential([
        keras.Input(_MNIST_SHAPE),
        keras.layers.Conv2D(64, 4, strides=2, padding="same", activation="relu", kernel_initializer=init),  # 14x14
        keras.layers.Conv2D(128, 4, strides=2, padding="same", activation="relu", kernel_initializer=init),  # 7x7
        keras.layers.Flatten(),
        keras.layers.Dense(width, activation="relu", kernel_initializer=init),
        keras.layers.Dense(2 * latent_dim, kernel_initializer="zeros"),  # q = N(0, I) at the start
    ], name="encoder")


@register_model(NAME)
@keras.saving.register_keras_serializable(package="infusion_tf")
class GaussianVAE(keras.Model):
    """The VAE of the module docstring; the toolkit's protocol (protocol.py)."""

    capabilities = ()  # no inpainting, no sampling chain, batch norm not recomputed, no isotropic rescoring

    def __init__(self, config: GaussianVAEConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = GaussianVAEConfig.from_dict(config) if isinstance(config, dict) else config
        self.encoder = build_encoder(self.config.latent_dim, self.config.encoder_width)
        self.generator = build_generator(self.config.latent_dim, self.config.batch_norm_momentum)
        self.built = True

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    def describe(self) -> str:
        c = self.config
        return (f"{NAME}: Gaussian encoder (conv 64, conv 128, dense {c.encoder_width}) and short_run_ot's generator "
                f"(z in R^{c.latent_dim}), sigma = {c.sigma:g}, reparametrized ELBO")

    def fit_prior(self, train_array) -> None:
        """Nothing to fit: the prior is N(0, I)."""

    @property
    def _unit_scale(self) -> float:
        return float(math.prod(self.config.example_shape)) * math.log(2.0)  # d log 2: [-1, 1] -> [0, 1] nats

    def posterior(self, x):
        """q(z | x): (mean [B, m], variance [B, m]) for x in [0, 1]."""
        out = self.encoder(2.0 * tf.cast(x, tf.float32) - 1.0)
        mean, log_var = tf.split(out, 2, axis=-1)
        return mean, tf.exp(tf.clip_by_value(log_var, -20.0, 10.0))

    def elbo(self, x, seed, training: bool = False):
        """The reparametrized ELBO per example, [0, 1]-scale nats: [B] (module docstring)."""
        mean, variance = self.posterior(x)
        z = mean + tf.sqrt(variance) * tf.random.stateless_normal(tf.shape(mean), seed)
        y = tf.reshape(2.0 * tf.cast(x, tf.float32) - 1.0, [tf.shape(x)[0], -1])
        g = tf.reshape(self.generator(z, training=training), tf.shape(y))
        d, s2 = tf.cast(tf.shape(y)[1], tf.float32), self.config.sigma**2
        log_likelihood = -0.5 * d * math.log(2.0 * math.pi * s2) - tf.reduce_sum((y - g) ** 2, 1) / (2.0 * s2)
        kl = 0.5 * tf.reduce_sum(mean**2 + variance - tf.math.log(variance) - 1.0, 1)
        return log_likelihood - kl + self._unit_scale

    def train_step(self, x):
        seed = tf.stack([tf.cast(self.optimizer.iterations, tf.int32), tf.constant(self.config.seed, tf.int32)])
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            bound = tf.reduce_mean(self.elbo(x, seed, training=True))
            loss = -bound
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        return {"loss": loss, "lower_bound": bound}

    def test_step(self, x):
        bound = tf.reduce_mean(self.elbo(x, tf.constant([0, 2], tf.int32)))
        return {"loss": -bound, "lower_bound": bound}

    def log_weights(self, x, num_proposals, seed) -> protocol.LogWeights:
        """Importance log-weights of k proposals z ~ q(z | x) per example, [0, 1]-scale nats.

        x: float32 [B, 28, 28, 1]; seed: int32 [2]. Returns LogWeights(per_step [2, B, k]): log p(z) - log q(z | x),
        log p(x | z) (short_run.gaussian_log_weights, as short_run_ot's with its fitted proposal).
        """
        mean, variance = self.posterior(x)
        weights = gaussian_log_weights(lambda z: self.generator(z, training=False), 2.0 * tf.cast(x, tf.float32) - 1.0,
                                       mean, variance, self.config.sigma, num_proposals,
                                       tf.convert_to_tensor(seed, tf.int32))
        return protocol.LogWeights(weights + tf.constant([[[0.0]], [[self._unit_scale]]]))

    def reconstruct(self, x):
        """(G(mean of q(z | x)) + 1) / 2: float32 [B, 28, 28, 1] in [0, 1]."""
        return (self.generator(self.posterior(x)[0], training=False) + 1.0) / 2.0

    def sample(self, num_samples, num_steps=None, seed=None, **kwargs):
        """(G(z) + 1) / 2, z ~ N(0, I): float32 [n, 28, 28, 1] in [0, 1], as short_run_ot's samples."""
        key = tf.constant([seed or 0, 0], tf.int32) if seed is None or isinstance(seed, int) else seed
        z = tf.random.stateless_normal(tf.stack([num_samples, self.config.latent_dim]),
                                       tf.convert_to_tensor(key, tf.int32))
        return (self.generator(z, training=False) + 1.0) / 2.0
