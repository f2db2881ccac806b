"""A VAE with 200 factorial Bernoulli latents and a directed (factorial) prior, trained through overlapping
transformations (Vahdat et al. 2018, "DVAE++", Sections 4.1, 4.2 and 7.1; the model of Table 1).

Generative model p(z) p(x | z): p(z) factorial Bernoulli with learned logits, p(x | zeta) factorial Bernoulli over
784 binary pixels from a linear or a two-layer tanh (200 units) decoder (Section 7.1, after Tucker et al. 2017).
Inference q(z | x): factorial Bernoulli from the same kind of encoder. Training smooths z into zeta with
r(zeta | z) (infusion_tf/overlapping.py) at an inverse temperature beta annealed linearly (Section 7.1) and
maximizes either

    joint ELBO (Eq. 4)      E_q(zeta|x)[log p(x | zeta)] - KL(q(z | x) || p(z))              (closed form)
    marginal ELBO (Eq. 5)   E_q(zeta|x)[log p(x | zeta) + log p(zeta) - log q(zeta | x)]     (one-sample estimate)

Evaluation is in the binary limit beta -> infinity (Section 7.1), where zeta = z: `log_weights` returns
log p(x, z) - log q(z | x) for z ~ q(z | x) binary, so importance sampling with k = 100 is Table 1's quantity.

Data: the model sees the toolkit's MNIST pixels u / 255 (config.dequantize = False) and binarizes them itself,
statically (`static_binarization`): each pixel is 1 with probability u / 255, drawn once per image from a hash
of the image's pixels and config.binarization_seed, so an image is always binarized the same way (in training,
validation and evaluation) without a binarized copy of MNIST on disk. This is not the Salakhutdinov & Murray
(2008) file the paper's Table 1 used (it cannot be downloaded here); see docs/dvae.md.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from infusion_tf import overlapping, protocol
from infusion_tf.binarization import static_binarization
from infusion_tf.config import ModelConfig
from infusion_tf.registry import register_model, register_model_config

__all__ = ["DVAEConfig", "DVAEModel", "static_binarization", "bernoulli_log_prob", "bernoulli_kl", "annealed_beta",
           "fit_to_training_mean"]

NETWORKS = ("linear", "nonlinear")
OBJECTIVES = ("joint", "marginal")
SMOOTHINGS = ("exponential", "logistic")


@register_model_config("dvae")
@dataclasses.dataclass(frozen=True)
class DVAEConfig(ModelConfig):
    """Settings of the directed-prior VAE of Section 7.1 (Table 1) and its training."""

    model: str = "dvae"  # registry name
    dataset: str = "mnist"  # MNIST pixels u / 255, binarized inside the model (static_binarization)
    example_shape: tuple[int, ...] = (28, 28, 1)
    dequantize: bool = False  # must stay False: the model binarizes u / 255 itself
    binarization_seed: int = 0  # the fixed seed of the static binarization
    seed: int = 0  # initialization and training noise
    train_examples: int | None = None  # train on the first N of the 50k training images (quick runs)
    validation_examples: int | None = None  # validate on the first N of the 10k validation images
    sampling_steps: int = 1  # no chain: one draw z ~ p(z), x ~ p(x | z)
    network: str = "nonlinear"  # linear | nonlinear: two tanh layers of hidden_units (Section 7.1)
    hidden_units: int = 200  # units of each tanh layer of the nonlinear encoder and decoder
    latent_units: int = 200  # factorial Bernoulli latents (Section 7.1)
    objective: str = "joint"  # joint ELBO (Eq. 4) | marginal ELBO (Eq. 5)
    smoothing: str = "exponential"  # overlapping exponentials (Section 3) | logistics (App. B), mu = 0, 1, s = 1/beta
    beta_start: float = 6.0  # inverse temperature at step 0; the paper cross-validates it in {5, 6, 7, 8}
    beta_end: float = 14.0  # at the end of annealing; the paper cross-validates it in {12, 14, 16, 18}
    anneal_steps: int = 0  # steps of the linear annealing of beta; 0: the whole run (epochs x steps per epoch)
    batch_size: int = 100  # training settings the training command reads
    learning_rate: float = 5e-4  # the paper selects it from {1e-4, 5e-4} (Section 7.1)
    adam_epsilon: float = 1e-3  # Adam's epsilon (Section 7.1); the other Adam settings are Keras' defaults
    epochs: int = 200  # our default; the paper follows Tucker et al. (2017), whose count we could not check
    patience: int | None = None  # stop after N epochs without a better validation bound
    sample_every: int = 5  # epochs between sample grids

    def __post_init__(self):
        for name, allowed in (("network", NETWORKS), ("objective", OBJECTIVES), ("smoothing", SMOOTHINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if self.dequantize:
            raise ValueError("dequantize must be False for the dvae model: it binarizes the pixels u / 255 itself")
        if not 0 < self.beta_start <= 80 or not 0 < self.beta_end <= 80:
            raise ValueError(f"beta_start and beta_end must lie in (0, 80], got {self.beta_start}, {self.beta_end}")
        for name in ("hidden_units", "latent_units", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.anneal_steps < 0:
            raise ValueError(f"anneal_steps must be >= 0, got {self.anneal_steps}")

    @property
    def total_anneal_steps(self) -> int:
        """anneal_steps, or the steps of the whole run when it is 0."""
        if self.anneal_steps:
            return self.anneal_steps
        return self.epochs * max(1, (self.train_examples or 50_000) // self.batch_size)


def bernoulli_log_prob(value, logits):
    """sum_i log Bernoulli(value_i | sigmoid(logits_i)) over the last axis: [..., n] -> [...]."""
    return tf.reduce_sum(value * tf.math.log_sigmoid(logits) + (1.0 - value) * tf.math.log_sigmoid(-logits), -1)


def bernoulli_kl(logits_q, logits_p):
    """KL(q || p) of factorial Bernoullis given by logits, summed over the last axis (the closed form of Eq. 4)."""
    q = tf.sigmoid(logits_q)
    return tf.reduce_sum(q * (tf.math.log_sigmoid(logits_q) - tf.math.log_sigmoid(logits_p)) +
                         (1.0 - q) * (tf.math.log_sigmoid(-logits_q) - tf.math.log_sigmoid(-logits_p)), -1)


def annealed_beta(step, beta_start: float, beta_end: float, anneal_steps: int):
    """beta annealed linearly from beta_start to beta_end over anneal_steps, then constant (Section 7.1)."""
    fraction = tf.minimum(tf.cast(step, tf.float32) / float(max(anneal_steps, 1)), 1.0)
    return beta_start + (beta_end - beta_start) * fraction


def _mlp(name: str, depth: int, units: int, outputs: int, input_dim: int) -> keras.Sequential:
    layers = [keras.layers.Dense(units, activation="tanh", name=f"{name}_hidden{i}") for i in range(depth)]
    net = keras.Sequential([*layers, keras.layers.Dense(outputs, name=f"{name}_logits")], name=name)
    net.build((None, input_dim))
    return net


def fit_to_training_mean(train_mean, output_bias, train_array) -> None:
    """A binary model's set-up on its training set: `train_mean` [d] <- the pixels' mean (u / 255 for uint8),
    which the encoder subtracts from its input, and the decoder's `output_bias` [d] <- its logit (clipped to
    [1e-3, 1 - 1e-3]), so the first decoder outputs the mean image. Used by dvae and dvae_rbm."""
    mean = np.asarray(train_array, np.float64).reshape(len(train_array), -1).mean(axis=0)
    mean = mean / 255.0 if np.asarray(train_array).dtype == np.uint8 else mean
    train_mean.assign(mean.astype(np.float32))
    clipped = np.clip(mean, 1e-3, 1 - 1e-3)
    output_bias.assign(np.log(clipped / (1 - clipped)).astype(np.float32))


@register_model("dvae")
@keras.saving.register_keras_serializable(package="infusion_tf")
class DVAEModel(keras.Model):
    """The directed-prior discrete VAE of Table 1 (see the module docstring); implements protocol.GenerativeModel."""

    capabilities = ()  # no inpainting, chain, batch norm or isotropic rescoring
    quantized_8bit = False  # log-probabilities of binary images: bits per dim are -log p / (d log 2)

    def __init__(self, config: DVAEConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = DVAEConfig.from_dict(config) if isinstance(config, dict) else config
        c = self.config
        d = c.num_dims
        depth = 2 if c.network == "nonlinear" else 0
        self.encoder = _mlp("encoder", depth, c.hidden_units, c.latent_units, d)
        self.decoder = _mlp("decoder", depth, c.hidden_units, d, c.latent_units)
        self.prior_logits = self.add_weight(name="prior_logits", shape=(c.latent_units,), initializer="zeros")
        self.train_mean = self.add_weight(name="train_mean", shape=(d,), initializer="zeros", trainable=False)
        self.built = True

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    def compile(self, optimizer=None, **kwargs):
        """Compiles with the caller's optimizer, setting Adam's epsilon to config.adam_epsilon (Section 7.1)."""
        if isinstance(optimizer, keras.optimizers.Adam):
            optimizer.epsilon = self.config.adam_epsilon
        super().compile(optimizer=optimizer, **kwargs)

    def fit_prior(self, train_array) -> None:
        """Centres the encoder's input on the training mean and starts the decoder's output bias at its logit."""
        fit_to_training_mean(self.train_mean, self.decoder.layers[-1].bias, train_array)

    def binarize(self, x):
        """[B, *example_shape] pixels u / 255 -> float32 [B, d] binary pixels (static_binarization)."""
        return static_binarization(x, self.config.binarization_seed)

    def encode(self, x_binary):
        """logits of q(z = 1 | x): [B, d] -> [B, latent_units]."""
        return self.encoder(x_binary - self.train_mean)

    def _smooth(self, rho, logits, beta):
        if self.config.smoothing == "exponential":
            return overlapping.exponential_inverse_cdf(rho, logits, beta)
        return overlapping.logistic_inverse_cdf(rho, logits, 0.0, 1.0, 1.0 / beta)

    def _log_q_zeta(self, zeta, logits, beta):
        if self.config.smoothing == "exponential":
            return overlapping.exponential_log_q(zeta, logits, beta)
        return overlapping.logistic_log_q(zeta, logits, 0.0, 1.0, 1.0 / beta)

    def smoothed_elbo(self, x, beta, seed):
        """One-sample joint (Eq. 4) or marginal (Eq. 5) ELBO at inverse temperature beta: [B] nats."""
        x_binary = self.binarize(x)
        logits = self.encode(x_binary)  # [B, n]
        rho = tf.random.stateless_uniform(tf.shape(logits), seed, minval=1e-6, maxval=1.0 - 1e-6)
        zeta = self._smooth(rho, logits, beta)  # [B, n], reparametrized
        log_px = bernoulli_log_prob(x_binary, self.decoder(zeta))  # [B]
        if self.config.objective == "joint":
            return log_px - bernoulli_kl(logits, self.prior_logits)
        prior = tf.broadcast_to(self.prior_logits, tf.shape(logits))
        kl = tf.reduce_sum(self._log_q_zeta(zeta, logits, beta) - self._log_q_zeta(zeta, prior, beta), -1)
        return log_px - kl

    def beta(self):
        c = self.config
        return annealed_beta(self.optimizer.iterations, c.beta_start, c.beta_end, c.total_anneal_steps)

    def train_step(self, x):
        seed = tf.stack([tf.cast(self.optimizer.iterations, tf.int32), tf.constant(self.config.seed, tf.int32)])
        with tf.GradientTape() as tape:
            bound = tf.reduce_mean(self.smoothed_elbo(x, self.beta(), seed))
            loss = -bound
        self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        return {"loss": loss, "lower_bound": bound, "beta": self.beta()}

    def test_step(self, x):
        """The binary-limit ELBO (beta -> infinity), one z per example: what evaluation scores."""
        bound = tf.reduce_mean(tf.reduce_sum(self.log_weights(x, 1, tf.constant([0, 2], tf.int32)).per_step, 0))
        return {"loss": -bound, "lower_bound": bound}

    def log_weights(self, x, num_proposals, seed) -> protocol.LogWeights:
        """log p(x, z) - log q(z | x), z ~ q(z | x) binary (beta -> infinity), k per example.

        x: float [B, *example_shape] (u / 255); seed int32 [2]. Returns per_step [2, B, k]:
        log p(z) - log q(z | x), and log p(x | z).
        """
        x_binary = self.binarize(x)  # [B, d]
        logits = self.encode(x_binary)[:, None, :]  # [B, 1, n]
        b, n = tf.shape(x_binary)[0], self.config.latent_units
        u = tf.random.stateless_uniform(tf.stack([b, num_proposals, n]), seed, minval=1e-7, maxval=1.0 - 1e-7)
        z = tf.cast(logits + tf.math.log(u) - tf.math.log1p(-u) > 0, tf.float32)  # [B, k, n] ~ Bernoulli(q)
        prior_minus_q = bernoulli_log_prob(z, self.prior_logits) - bernoulli_log_prob(z, logits)  # [B, k]
        decoded = tf.reshape(self.decoder(tf.reshape(z, [-1, n])), [b, num_proposals, -1])  # [B, k, d]
        likelihood = bernoulli_log_prob(x_binary[:, None, :], decoded)  # [B, k]
        return protocol.LogWeights(tf.stack([prior_minus_q, likelihood]))

    def sample(self, num_samples, num_steps=None, seed=None, **kwargs):
        """Means of p(x | z), z ~ p(z): float32 [n, *example_shape] in [0, 1]. seed: int, int32 [2] or None (0)."""
        key = tf.constant([seed or 0, 0], tf.int32) if seed is None or isinstance(seed, int) else seed
        u = tf.random.stateless_uniform(tf.stack([num_samples, self.config.latent_units]),
                                        tf.convert_to_tensor(key, tf.int32), minval=1e-7, maxval=1.0 - 1e-7)
        z = tf.cast(self.prior_logits + tf.math.log(u) - tf.math.log1p(-u) > 0, tf.float32)
        images = tf.sigmoid(self.decoder(z))
        return tf.reshape(images, tf.concat([[num_samples], list(self.config.example_shape)], 0))
