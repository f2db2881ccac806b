"""The annealed GAN as a model of the toolkit: `train/run.py --model annealed_gan` (Tao et al. 2019; issue 17, items 4, 6).

The same updates as `annealed_gan.AnnealedGAN` (the discriminator's logistic loss, a DAE on the generator's own samples
whose DAE-score stands in for grad log q, and the generator's GAN loss plus lambda_t times the entropy surrogate, so
beta_ent = 1 / (1 + lambda_t), App. B), on any dataset of the toolkit: 2-D toys (points in data.py's [0, 1] box) and
images (the generator ends in a sigmoid, pixels in [0, 1]). lambda_t follows an `annealing` schedule over the whole
run (epochs x steps per epoch; linear: T_max = 0.9 of it, App. I.1); lambda0 = 0 is the plain GAN.

A sample-only model: a GAN has no likelihood, so it has no `log_weights` (protocol capability "likelihood"), and
eval/run.py refuses the lower bound and importance sampling for it; Parzen and sample quality read its samples.
Its validation metric is the energy distance between a validation batch and as many generator samples (a proper
two-sample distance, zero only when the laws agree; `monitor` tells the training loop to keep the smallest).
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from infusion_tf import annealing, score
from infusion_tf.annealed_gan import GENERATOR_LOSSES, annealed_generator_loss
from infusion_tf.config import ModelConfig, check_seed
from infusion_tf.registry import register_model, register_model_config

__all__ = ["NAME", "AnnealedGANConfig", "AnnealedGANModel", "lambda_values", "batch_energy_distance"]

NAME = "annealed_gan"
_TOY_SIGMA = 0.01  # DAE noise in data.py's [0, 1] box: 0.33 raw units of the banana's x1, 0.03 of the ring's


@register_model_config(NAME)
@dataclasses.dataclass(frozen=True)
class AnnealedGANConfig(ModelConfig):
    """Settings of the annealed GAN and its training. Defaults: MNIST with MLPs sized for 2 CPU cores."""

    model: str = NAME  # the registered model these settings build (registry.MODELS)
    dataset: str = "mnist"  # mnist | fashion_mnist | banana | mixture_of_gaussians (or any image dataset)
    example_shape: tuple[int, ...] = (28, 28, 1)  # shape of one example (set from the data)
    dequantize: bool = True  # images: x = (u + U[0,1)) / 256; toys: False (their points are floats)
    train_examples: int | None = None  # train on the first N training examples
    validation_examples: int | None = None  # validate on the first N validation examples
    seed: int = 0
    sampling_steps: int = 1  # a sample is one generator pass G(z); the step count is ignored
    latent_dim: int = 64  # dimension of z ~ N(0, I)
    width: int = 512  # units of each hidden layer of the generator, the discriminator and the DAE
    depth: int = 2  # hidden layers of each of the three MLPs
    batch_norm: bool = True  # batch normalization after each hidden layer of the generator, as App. I.1's Table 1 (toys: off)
    dropout: float = 0.3  # dropout after each hidden layer of the discriminator while it trains (toys: 0)
    generator_loss: str = "jsd"  # jsd: -log sigmoid D(G(z)) | rkl: -D(G(z)), the reverse KL (App. E)
    sigma: float = 0.1  # noise of the DAE on the generator's samples (data scale)
    lambda0: float = 1.0  # lambda at step 0; 0: the plain GAN (App. I.1 tries |lambda0| in {0.1, 1, 10})
    schedule: str = "linear"  # linear (T_max = 0.9 of the run) | exponential (tau = 5 / steps) | sinusoidal (5 cycles)
    batch_size: int = 100
    learning_rate: float = 2e-4  # Adam (beta_1 = 0.5) for all three networks (App. I.1 uses 1e-4 with DFM)
    epochs: int = 20
    patience: int | None = None  # stop after N epochs without a smaller validation energy distance
    sample_every: int = 5  # epochs between sample grids

    @classmethod
    def for_dataset(cls, dataset: str) -> "AnnealedGANConfig":
        """MNIST defaults for images; for the 2-D toys: points (no dequantization), 2-D latent, 128 units, sigma 0.01."""
        from infusion_tf.data import TOY_DATASETS

        if dataset in TOY_DATASETS:
            return cls(dataset=dataset, example_shape=(2,), dequantize=False, latent_dim=2, width=128, sigma=_TOY_SIGMA,
                       batch_norm=False, dropout=0.0, batch_size=256, learning_rate=1e-3, epochs=10, sample_every=1)
        return cls(dataset=dataset)

    def __post_init__(self) -> None:
        if self.model != NAME:
            raise ValueError(f"AnnealedGANConfig builds the {NAME} model, got model={self.model!r}")
        object.__setattr__(self, "example_shape", tuple(int(s) for s in self.example_shape))
        if self.generator_loss not in GENERATOR_LOSSES:
            raise ValueError(f"generator_loss must be one of {list(GENERATOR_LOSSES)}, got {self.generator_loss!r}")
        if self.schedule not in annealing.SCHEDULES:
            raise ValueError(f"schedule must be one of {list(annealing.SCHEDULES)}, got {self.schedule!r}")
        for name in ("latent_dim", "width", "depth", "batch_size", "epochs", "sample_every", "sampling_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("train_examples", "validation_examples", "patience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        for name in ("sigma", "learning_rate"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not (math.isfinite(self.lambda0) and self.lambda0 >= 0):
            raise ValueError(f"lambda0 must be a finite number >= 0 (entropy weight), got {self.lambda0}")
        check_seed(self.seed)

    @property
    def total_steps(self) -> int:
        """Generator steps of the whole run: epochs x (training examples // batch size), 50 000 examples by default."""
        return self.epochs * max(1, (self.train_examples or 50_000) // self.batch_size)


def lambda_values(config: AnnealedGANConfig) -> np.ndarray:
    """float32 [total_steps] lambda_t of the run (annealing.py; App. I.1 settings: T_max = 0.9 T, tau = 5 / T, 5 cycles)."""
    steps = config.total_steps
    settings = {"linear": {"t_max": 0.9 * steps}, "exponential": {"tau": 5.0 / steps}, "sinusoidal": {"cycles": 5.0}}
    return annealing.lambda_schedule(config.schedule, steps, config.lambda0, **settings[config.schedule]).astype(np.float32)


def batch_energy_distance(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Squared energy distance, U-statistic, of two batches [n, d] and [m, d] (energy_distance.energy_distance's)."""
    def mean_distance(a, b, skip_diagonal):
        sq = tf.maximum(tf.reduce_sum(a**2, 1)[:, None] + tf.reduce_sum(b**2, 1)[None, :] - 2 * a @ tf.transpose(b), 0.0)
        dist = tf.sqrt(sq + 1e-12) - 1e-6
        if skip_diagonal:
            n = tf.cast(tf.shape(a)[0], tf.float32)
            return (tf.reduce_sum(dist) - tf.linalg.trace(dist)) / (n * (n - 1))
        return tf.reduce_mean(dist)

    return 2 * mean_distance(x, y, False) - mean_distance(x, x, True) - mean_distance(y, y, True)


def _mlp(width: int, depth: int, out: int, activation: str, final=None, name=None, dropout: float = 0.0,
         batch_norm: bool = False):
    layers = []
    for _ in range(depth):
        if batch_norm:  # Dense, BN, activation (App. I.1, Table 1)
            layers += [keras.layers.Dense(width), keras.layers.BatchNormalization(momentum=0.9),
                       keras.layers.Activation(activation)]
        else:
            layers.append(keras.layers.Dense(width, activation=activation))
        layers += [keras.layers.Dropout(dropout)] if dropout else []
    return keras.Sequential(layers + [keras.layers.Dense(out, activation=final)], name=name)


@register_model(NAME)
@keras.saving.register_keras_serializable(package="infusion_tf")
class AnnealedGANModel(keras.Model):
    """Generator, discriminator and DAE (module docstring); implements protocol.GenerativeModel without log_weights."""

    capabilities = ()  # sample-only: no likelihood, inpainting, chain, batch norm or isotropic rescoring
    monitor = ("energy_distance", "min")  # the validation metric the training loop keeps the best epoch of

    def __init__(self, config: AnnealedGANConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = c = AnnealedGANConfig.from_dict(config) if isinstance(config, dict) else config
        d = c.num_dims
        images = len(c.example_shape) > 1
        self.generator = _mlp(c.width, c.depth, d, "relu" if c.batch_norm else "leaky_relu",
                              "sigmoid" if images else None, name="generator", batch_norm=c.batch_norm)
        self.discriminator = _mlp(c.width, c.depth, 1, "leaky_relu", name="discriminator", dropout=c.dropout)
        self.denoiser = score.DenoisingAutoencoder(d, c.sigma, width=c.width, depth=c.depth, seed=c.seed)
        self.generator.build((None, c.latent_dim))
        self.discriminator.build((None, d))
        self.lambdas = tf.constant(lambda_values(c))  # [total_steps]
        self.seed_generator = keras.random.SeedGenerator(c.seed)
        # The discriminator's and the DAE's Adams are made and built here, not in an overridden compile(): Keras then
        # saves their state in last.keras with the model's and restores it on --resume (keras.models.load_model
        # does not call a custom compile, so the model came back without any optimizer and could not resume).
        self.d_optimizer = keras.optimizers.Adam(c.learning_rate, beta_1=0.5)
        self.dae_optimizer = keras.optimizers.Adam(c.learning_rate, beta_1=0.5)
        self.d_optimizer.build(self.discriminator.trainable_variables)
        self.dae_optimizer.build(self.denoiser.trainable_variables)
        self.built = True

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    def describe(self) -> str:
        c = self.config
        return (f"{NAME}: {c.generator_loss} GAN, MLPs {c.depth} x {c.width}, z in R^{c.latent_dim}, entropy term "
                f"lambda0 = {c.lambda0:g} ({c.schedule}), DAE sigma = {c.sigma:g}")

    def make_optimizer(self):
        """The generator's Adam (beta_1 = 0.5), the compiled optimizer whose iterations count the steps; the
        discriminator and the DAE have their own (made in __init__), all three at config.learning_rate."""
        return keras.optimizers.Adam(self.config.learning_rate, beta_1=0.5)

    def fit_prior(self, train_array) -> None:
        """Nothing to fit: z ~ N(0, I)."""

    def _flat(self, x):
        return tf.reshape(tf.cast(x, tf.float32), [tf.shape(x)[0], self.config.num_dims])

    def train_step(self, x):
        """One discriminator, one DAE (on G's samples) and one generator update (module docstring)."""
        c = self.config
        x = self._flat(x)
        z = keras.random.normal((tf.shape(x)[0], c.latent_dim), seed=self.seed_generator)
        step = tf.minimum(tf.cast(self.optimizer.iterations, tf.int32), tf.shape(self.lambdas)[0] - 1)
        lam = self.lambdas[step]
        with tf.GradientTape() as tape:  # logistic loss, optimum logit log p / q
            fake = self.generator(z, training=True)
            d_loss = tf.reduce_mean(tf.nn.softplus(-self.discriminator(x, training=True))
                                    + tf.nn.softplus(self.discriminator(fake, training=True)))
        self.d_optimizer.apply(tape.gradient(d_loss, self.discriminator.trainable_variables),
                               self.discriminator.trainable_variables)
        target = tf.stop_gradient(fake)
        noise = keras.random.normal(tf.shape(target), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            dae_loss = tf.reduce_mean(tf.reduce_sum(tf.square(self.denoiser(target + c.sigma * noise) - target), -1))
        self.dae_optimizer.apply(tape.gradient(dae_loss, self.denoiser.trainable_variables),
                                 self.denoiser.trainable_variables)
        with tf.GradientTape() as tape:
            fake = self.generator(z, training=True)
            loss, gan, _ = annealed_generator_loss(c.generator_loss, self.discriminator(fake), fake, self.denoiser,
                                                   c.sigma, lam)
        self.optimizer.apply(tape.gradient(loss, self.generator.trainable_variables),
                             self.generator.trainable_variables)
        return {"loss": loss, "d_loss": d_loss, "g_loss": gan, "dae_loss": dae_loss, "lambda": lam}

    def test_step(self, x):
        """Energy distance between the validation batch and as many generator samples (smaller is better)."""
        x = self._flat(x)
        fake = self._flat(self.sample(tf.shape(x)[0], seed=tf.constant([self.config.seed, 3], tf.int32)))
        return {"energy_distance": batch_energy_distance(x, fake)}

    def sample(self, num_samples, num_steps=None, seed=None, **kwargs):
        """G(z), z ~ N(0, I): float32 [n, *example_shape]. seed: an int, an int32 [2] tensor or None (0)."""
        key = tf.constant([seed or 0, 0], tf.int32) if seed is None or isinstance(seed, int) else seed
        z = tf.random.stateless_normal(tf.stack([num_samples, self.config.latent_dim]), tf.cast(key, tf.int32))
        return tf.reshape(self.generator(z), tf.concat([[num_samples], list(self.config.example_shape)], 0))
