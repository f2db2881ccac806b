"""A deep latent-variable generator learned by short-run Langevin inference with optimal-transport correction
(Dongsheng An, Jianwen Xie & Ping Li, CVPR 2021; settings from the paper's supplement, Section 1 and Table 1).

The model: z ~ N(0, I_30), y = G(z) + sigma * eps with eps ~ N(0, I), on the paper's [-1, 1] pixel scale
(y = 2 x - 1 for the toolkit's data x in [0, 1]). Algorithm 1 alternates, per batch here:
  1. inference:  K short-run Langevin steps on z given y, from noise,
                 z <- z - (s^2 / 2) dU/dz + s * noise,   U(z) = ||y - G(z)||^2 / (2 sigma^2) + ||z||^2 / 2;
  2. correction: z <- z + alpha (e_pi - z), pi the optimal matching of the batch's z to fresh prior samples e
                 (optimal_transport.py);
  3. learning:   L Adam steps on the regression loss ||y - G(z)||^2 / (2 sigma^2) over the pairs (z, y).

Likelihood (the toolkit's protocol): log p(x) = log int N(x; G_x(z), sigma_x^2 I) N(z; 0, I) dz is estimated by
importance sampling with a Gaussian proposal q(z | x) fitted per example to short-run Langevin chains. On the
data's [0, 1] scale G_x(z) = (G(z) + 1) / 2 and sigma_x = sigma / 2, so a density of x is the density of y times
2^d: log p(x) = log p(y) + d log 2 (784 log 2 = 543.4 nats for MNIST); `log_weights` returns [0, 1]-scale nats.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import tensorflow as tf

from infusion_tf import protocol
from infusion_tf.config import ModelConfig, check_seed
from infusion_tf.optimal_transport import transport_correction
from infusion_tf.registry import register_model, register_model_config

__all__ = ["ShortRunConfig", "ShortRunModel", "build_generator", "energy", "langevin_step", "short_run_langevin",
           "fit_gaussian_proposal", "gaussian_log_weights", "NAME"]

NAME = "short_run_ot"
_MNIST_SHAPE = (28, 28, 1)


@register_model_config(NAME)
@dataclasses.dataclass(frozen=True)
class ShortRunConfig(ModelConfig):
    """Settings of the short-run model and its training. Defaults: the supplement's MNIST settings."""

    model: str = NAME  # the registered model these settings build (registry.MODELS)
    dataset: str = "mnist"  # 28x28x1 images only (the generator of the supplement's Table 1)
    example_shape: tuple[int, ...] = _MNIST_SHAPE  # shape of one example
    dequantize: bool = True  # x = (u + U[0,1)) / 256, as the toolkit's infusion model
    train_examples: int | None = None  # train on the first N training examples (the supplement uses all)
    validation_examples: int | None = None  # validate on the first N validation examples
    seed: int = 0
    sampling_steps: int = 1  # a sample is one generator pass G(z), z ~ N(0, I); the step count is ignored
    latent_dim: int = 30  # dimension of z for MNIST (supplement, Model architectures)
    sigma: float = 0.3  # observation noise on the [-1, 1] scale (supplement, Optimization): 0.15 on [0, 1]
    langevin_steps: int = 50  # K, short-run Langevin steps per batch (supplement: L = K = 50)
    step_size: float = 0.3  # s, Langevin step size for MNIST (supplement, Optimization)
    alpha: float = 0.5  # fraction of the way to the optimal-transport match, MNIST (supplement, Optimization)
    learning_steps: int = 50  # L, generator regression steps per batch (supplement: L = K = 50)
    ot_correction: bool = True  # the optimal-transport correction (--no-ot-correction: the ablation without it)
    batch_norm_momentum: float = 0.9  # moving-average momentum (PyTorch's default 0.1 in its convention)
    proposal_chains: int = 8  # evaluation: Langevin chains per example that the Gaussian proposal is fitted to
    proposal_steps: int = 200  # evaluation: Langevin steps per chain; the states of the last half are kept
    proposal_step_size: float = 0.1  # evaluation: the chains' step size (s = 0.3 diverges on a trained G: measured)
    proposal_widen: float = 1.5  # evaluation: the proposal's variance is this times the chains' variance
    batch_size: int = 2000  # supplement, Optimization
    learning_rate: float = 2e-4  # Adam; not given in the supplement (our choice)
    beta_1: float = 0.5  # Adam beta1 (supplement, Optimization)
    beta_2: float = 0.99  # Adam beta2 (supplement, Optimization)
    epochs: int = 20  # passes over the data (the supplement runs 10-15 outer iterations of Algorithm 1)
    patience: int | None = None  # stop after this many epochs without a better validation bound; None: never
    sample_every: int = 1  # write a sample grid after epoch 1 and every this many epochs

    def __post_init__(self) -> None:
        if self.model != NAME:
            raise ValueError(f"ShortRunConfig builds the {NAME} model, got model={self.model!r}")
        object.__setattr__(self, "example_shape", tuple(int(s) for s in self.example_shape))
        if self.example_shape != _MNIST_SHAPE:
            raise ValueError(f"the {NAME} generator (supplement, Table 1) makes 28x28x1 images, got example_shape "
                             f"{self.example_shape} (dataset {self.dataset!r})")
        for name in ("latent_dim", "langevin_steps", "learning_steps", "proposal_chains", "proposal_steps",
                     "batch_size", "epochs", "sample_every", "sampling_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("train_examples", "validation_examples", "patience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        for name in ("sigma", "step_size", "learning_rate", "proposal_widen", "proposal_step_size"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        for name in ("alpha", "batch_norm_momentum", "beta_1", "beta_2"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        check_seed(self.seed)


def build_generator(latent_dim: int, batch_norm_momentum: float = 0.9) -> keras.Sequential:
    """G of the supplement's Table 1 (MNIST): z [B, latent_dim] -> [B, 28, 28, 1] in (-1, 1), Xavier-normal init."""
    init = "glorot_normal"

    def bn():
        return keras.layers.BatchNormalization(momentum=batch_norm_momentum, epsilon=1e-5)

    return keras.Sequential([
        keras.Input((latent_dim,)),
        keras.layers.Dense(1024, kernel_initializer=init), bn(), keras.layers.ReLU(),
        keras.layers.Dense(7 * 7 * 128, kernel_initializer=init), bn(), keras.layers.ReLU(),
        keras.layers.Reshape((7, 7, 128)),
        keras.layers.Conv2DTranspose(64, 2, strides=2, kernel_initializer=init), bn(), keras.layers.ReLU(),  # 14x14x64
        keras.layers.Conv2DTranspose(1, 2, strides=2, kernel_initializer=init, activation="tanh"),  # 28x28x1
    ], name="generator")


def _flat(t):
    return tf.reshape(t, [tf.shape(t)[0], -1])


def energy(generator, z, y, sigma: float):
    """U(z) = ||y - G(z)||^2 / (2 sigma^2) + ||z||^2 / 2 = -log p(y, z) + const (Algorithm 1, inference).

    generator: z [N, m] -> [N, ...]; z: [N, m]; y: [N, ...] of G's output shape. Returns [N].
    """
    residual = _flat(y) - _flat(generator(z))  # [N, d]
    return tf.reduce_sum(residual**2, 1) / (2.0 * sigma**2) + 0.5 * tf.reduce_sum(z**2, 1)


def langevin_step(generator, z, y, sigma: float, step_size: float, noise):
    """One Langevin step z - (s^2 / 2) dU/dz + s * noise (Algorithm 1, inference; U as `energy`).

    z, noise: [N, m]; y: [N, ...]. Returns [N, m]. With noise = 0 it is gradient descent on U with rate s^2 / 2.
    """
    with tf.GradientTape() as tape:
        tape.watch(z)
        total = tf.reduce_sum(energy(generator, z, y, sigma))
    return z - 0.5 * step_size**2 * tape.gradient(total, z) + step_size * noise


def short_run_langevin(generator, z0, y, sigma: float, step_size: float, num_steps: int, seed, keep_from=None):
    """K Langevin steps from z0; the mean and variance of the states z_t with t > keep_from (per row).

    z0: [N, m]; y: [N, ...]; seed: int32 [2] (step t draws its noise from fold_in(seed, t)); keep_from: an int in
    [0, num_steps) (default num_steps // 2). Returns (z_K [N, m], mean [N, m], variance [N, m]).
    """
    keep_from = num_steps // 2 if keep_from is None else keep_from
    kept = float(num_steps - keep_from)

    def body(t, z, total, total_sq):
        noise = tf.random.stateless_normal(tf.shape(z), tf.random.experimental.stateless_fold_in(seed, t))
        z = langevin_step(generator, z, y, sigma, step_size, noise)
        keep = tf.cast(t >= keep_from, z.dtype)  # t counts from 0: z after step t + 1
        return t + 1, z, total + keep * z, total_sq + keep * z**2

    zeros = tf.zeros_like(z0)
    _, z, total, total_sq = tf.while_loop(lambda t, *_: t < num_steps, body, (tf.constant(0), z0, zeros, zeros))
    mean = total / kept
    return z, mean, tf.maximum(total_sq / kept - mean**2, 0.0)


def fit_gaussian_proposal(chain_mean, chain_variance, widen: float = 1.0, floor: float = 1e-6):
    """The Gaussian proposal q(z | x) = N(mu, widen * v) fitted to C Langevin chains per example.

    chain_mean, chain_variance: [B, C, m], each chain's mean and variance of its kept states. mu is their mean;
    v the law of total variance: the mean within-chain variance plus the variance of the chains' means (floored).
    Returns (mu [B, m], widen * v [B, m]).
    """
    center = tf.reduce_mean(chain_mean, 1)  # [B, m]
    variance = tf.reduce_mean(chain_variance, 1) + tf.reduce_mean((chain_mean - center[:, None]) ** 2, 1)
    return center, widen * tf.maximum(variance, floor)


def gaussian_log_weights(generator, y, mean, variance, sigma: float, num_proposals, seed):
    """Importance log-weights of z ~ q(z | y) = N(mean, diag variance) for p(y) = int N(y; G(z), sigma^2 I) N(z; 0, I) dz.

    y: [B, ...]; mean, variance: [B, m]; num_proposals: k (int or int32 scalar); seed: int32 [2].
    Returns float32 [2, B, k]: log N(z; 0, I) - log q(z | y), and log N(y; G(z), sigma^2 I); their sum is
    log p(y, z) - log q(z | y), whose mean over k bounds log p(y) below and whose log-mean-exp estimates it.
    """
    b, m = tf.shape(mean)[0], tf.shape(mean)[1]
    eps = tf.random.stateless_normal(tf.stack([b, num_proposals, m]), seed)  # [B, k, m]
    z = mean[:, None] + tf.sqrt(variance)[:, None] * eps  # [B, k, m]
    log_2pi = math.log(2.0 * math.pi)
    log_q = -0.5 * tf.reduce_sum(log_2pi + tf.math.log(variance)[:, None] + eps**2, -1)  # [B, k]
    log_prior = -0.5 * tf.reduce_sum(log_2pi + z**2, -1)  # [B, k]
    g = tf.reshape(generator(tf.reshape(z, [-1, m])), [b, num_proposals, -1])  # [B, k, d]
    d = tf.cast(tf.shape(g)[-1], tf.float32)
    sse = tf.reduce_sum((_flat(y)[:, None] - g) ** 2, -1)  # [B, k]
    log_likelihood = -0.5 * d * math.log(2.0 * math.pi * sigma**2) - sse / (2.0 * sigma**2)
    return tf.stack([log_prior - log_q, log_likelihood])


@register_model(NAME)
@keras.saving.register_keras_serializable(package="infusion_tf")
class ShortRunModel(keras.Model):
    """The generator of Table 1 trained by Algorithm 1 (module docstring); the toolkit's protocol (protocol.py)."""

    capabilities = ()  # no inpainting, no sampling chain, batch norm not recomputed, no isotropic rescoring
    # config fields that change only how the model is evaluated (eval/run.py --model-setting NAME=VALUE)
    evaluation_settings = ("proposal_chains", "proposal_steps", "proposal_step_size", "proposal_widen")

    def __init__(self, config: ShortRunConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = ShortRunConfig.from_dict(config) if isinstance(config, dict) else config
        self.generator = build_generator(self.config.latent_dim, self.config.batch_norm_momentum)
        self.built = True

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    def describe(self) -> str:
        c = self.config
        ot = f"OT correction alpha = {c.alpha:g}" if c.ot_correction else "no OT correction"
        return (f"{NAME}: generator of Table 1 (z in R^{c.latent_dim}), sigma = {c.sigma:g}, K = {c.langevin_steps} "
                f"Langevin steps of s = {c.step_size:g}, {ot}, L = {c.learning_steps}, Adam beta = "
                f"({c.beta_1:g}, {c.beta_2:g})")

    def compile(self, optimizer=None, **kwargs):
        """Adam with the supplement's beta1 = 0.5, beta2 = 0.99 (the training command passes a plain Adam)."""
        lr = self.config.learning_rate
        if isinstance(optimizer, keras.optimizers.Adam):
            lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        super().compile(optimizer=keras.optimizers.Adam(lr, beta_1=self.config.beta_1, beta_2=self.config.beta_2),
                        **kwargs)

    def fit_prior(self, train_array) -> None:
        """Nothing to fit: the prior is N(0, I)."""

    def _scaled(self, x):
        return 2.0 * tf.cast(x, tf.float32) - 1.0  # [0, 1] -> the paper's [-1, 1]

    def infer(self, x, seed, num_chains: int = 1, num_steps=None, step_size=None, training: bool = False):
        """Short-run inference from noise (default: K steps of size s): (z_K, mean, variance) [B * num_chains, m],
        rows example-major; mean and variance of each chain's last half of states."""
        c = self.config
        y = tf.repeat(self._scaled(x), num_chains, axis=0)
        z0 = tf.random.stateless_normal([tf.shape(y)[0], c.latent_dim], tf.random.experimental.stateless_fold_in(seed, 0))
        return short_run_langevin(lambda z: self.generator(z, training=training), z0, y, c.sigma,
                                  step_size or c.step_size, num_steps or c.langevin_steps,
                                  tf.random.experimental.stateless_fold_in(seed, 1))

    def train_step(self, x):
        """Algorithm 1 on one batch: inference (K steps), OT correction, L regression steps of G."""
        c = self.config
        iteration = self.optimizer.iterations
        seed = tf.stack([tf.cast(iteration, tf.int32), tf.constant(c.seed, tf.int32)])
        y = self._scaled(x)
        z, _, _ = self.infer(x, seed, training=True)
        if c.ot_correction:
            prior = tf.random.stateless_normal(tf.shape(z), tf.random.experimental.stateless_fold_in(seed, 2))
            z = transport_correction(z, prior, c.alpha)
        z = tf.stop_gradient(z)

        def learn(step, _):
            with tf.GradientTape() as tape:
                residual = _flat(y) - _flat(self.generator(z, training=True))
                loss = tf.reduce_mean(tf.reduce_sum(residual**2, 1)) / (2.0 * c.sigma**2)
            self.optimizer.apply(tape.gradient(loss, self.generator.trainable_variables),
                                 self.generator.trainable_variables)
            return step + 1, loss

        _, loss = tf.while_loop(lambda step, _: step < c.learning_steps, learn, (tf.constant(0), tf.constant(0.0)))
        # One Keras step is one batch of Algorithm 1: the run folder counts epochs by optimizer.iterations.
        iteration.assign_sub(tf.cast(c.learning_steps - 1, iteration.dtype))
        return {"loss": loss, "latent_norm": tf.reduce_mean(tf.norm(z, axis=1))}

    def test_step(self, x):
        """The one-proposal lower bound (nats per example, [0, 1] scale) and the regression loss of inferred z."""
        weights = self.log_weights(x, 1, tf.constant([0, 2], tf.int32)).per_step  # [2, B, 1]
        bound = tf.reduce_mean(tf.reduce_sum(weights, axis=0))
        return {"loss": -bound, "lower_bound": bound}

    def log_weights(self, x, num_proposals, seed) -> protocol.LogWeights:
        """Importance log-weights of k proposals per example (module docstring), [0, 1]-scale nats.

        x: float32 [B, 28, 28, 1]; seed: int32 [2]. The proposal q(z | x) = N(mu, widen * var) has the mean and
        variance of config.proposal_chains chains' last half of config.proposal_steps Langevin states (step size
        config.proposal_step_size).
        Returns LogWeights(per_step [2, B, k]): log p(z) - log q(z | x), log p(x | z).
        """
        c = self.config
        seed = tf.convert_to_tensor(seed, tf.int32)
        b, chains = tf.shape(x)[0], c.proposal_chains
        _, mean, var = self.infer(x, seed, chains, c.proposal_steps, c.proposal_step_size)  # [B * chains, m]
        center, variance = fit_gaussian_proposal(tf.reshape(mean, [b, chains, c.latent_dim]),
                                                 tf.reshape(var, [b, chains, c.latent_dim]), c.proposal_widen)
        weights = gaussian_log_weights(lambda z: self.generator(z, training=False), self._scaled(x), center, variance,
                                       c.sigma, num_proposals, tf.random.experimental.stateless_fold_in(seed, 3))
        scale = float(math.prod(c.example_shape)) * math.log(2.0)  # log |dy/dx| = d log 2: nats on the [0, 1] scale
        return protocol.LogWeights(weights + tf.constant([[[0.0]], [[scale]]]))

    def sample(self, num_samples, num_steps=None, seed=None, **kwargs):
        """(G(z) + 1) / 2, z ~ N(0, I): float32 [n, 28, 28, 1] in [0, 1] (the mean of p(x | z), as the infusion
        model's samples are means). seed: an int, an int32 [2] tensor, or None (0); num_samples may be a tensor."""
        key = tf.constant([seed or 0, 0], tf.int32) if seed is None or isinstance(seed, int) else seed
        z = tf.random.stateless_normal(tf.stack([num_samples, self.config.latent_dim]),
                                       tf.convert_to_tensor(key, tf.int32))
        return (self.generator(z, training=False) + 1.0) / 2.0
