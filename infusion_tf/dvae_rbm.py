"""A VAE with 200 binary latents and a restricted-Boltzmann-machine prior trained through overlapping
transformations (Vahdat et al. 2018, "DVAE++", Section 5, Section 7.2, App. E-F; Table 2's one-latent-layer rows).

Generative model p(z) p(x | zeta): p(z) = exp(-E(z1, z2)) / Z an RBM whose two sides z1, z2 are the two halves of
the latent_units binary latents (infusion_tf/rbm.py), or a factorial Bernoulli prior (`prior="factorial"`, Table 2's
directed "Joint ELBO" column trained with the same App. F settings). p(x | zeta) factorial Bernoulli from a linear or
two-layer tanh decoder with batch normalization on its hidden layers (App. F). Inference q(z | x) factorial
Bernoulli; zeta ~ r(zeta | z) the overlapping exponentials at a fixed beta (App. F).

Objective, the joint ELBO with one latent layer (Section 5, Eq. 6; the KL is exact for a factorial q):

    E_q(zeta|x)[log p(x | zeta)] - gamma KL(q(z | x) || p(z)),
    KL = log Z - H(q(z | x)) - a1^T mu1 - a2^T mu2 - mu1^T W mu2,

gamma annealed linearly 0 -> 1 (KL annealing, App. F). The value of log Z is the last AIS estimate (`log_z`,
refreshed before each validation and by `prepare_evaluation`); its gradient comes from persistent contrastive
divergence chains (App. E: 40 block-Gibbs sweeps per update, stop-gradient on the samples).

Evaluation is in the binary limit: `log_weights` returns, for z ~ q(z | x) binary, the per-step terms
[-log Z, -E(z) - log q(z | x), log p(x | z)] whose sum is log p(x, z) - log q(z | x) (Table 2's 4000-sample
importance sampling through eval/run.py). The data are binarized statically as in infusion_tf/dvae.py.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from infusion_tf import ais, overlapping, protocol, rbm
from infusion_tf.config import ModelConfig
from infusion_tf.dvae import bernoulli_kl, bernoulli_log_prob, fit_to_training_mean, static_binarization
from infusion_tf.registry import register_model, register_model_config

__all__ = ["DVAERBMConfig", "DVAERBMModel", "learning_rate_schedule"]

PRIORS = ("rbm", "factorial")
NETWORKS = ("linear", "nonlinear")


@register_model_config("dvae_rbm")
@dataclasses.dataclass(frozen=True)
class DVAERBMConfig(ModelConfig):
    """Settings of the RBM-prior VAE of Section 7.2 / App. F (Table 2) and its training."""

    model: str = "dvae_rbm"  # registry name
    dataset: str = "binarized_mnist"  # binary images; u / 255 of mnist is binarized the same way by the model
    example_shape: tuple[int, ...] = (28, 28, 1)
    dequantize: bool = False  # must stay False: the model binarizes u / 255 itself
    binarization_seed: int = 0  # the fixed seed of the static binarization (dvae.static_binarization)
    seed: int = 0  # initialization, PCD chains and training noise
    train_examples: int | None = None  # train on the first N of the 50k training images (quick runs)
    validation_examples: int | None = None  # validate on the first N of the 10k validation images
    sampling_steps: int = 1000  # block-Gibbs sweeps of the RBM from a uniform start when drawing samples
    prior: str = "rbm"  # rbm (Section 5) | factorial (the directed prior of Table 2's ELBO columns)
    network: str = "nonlinear"  # linear | nonlinear: two tanh layers of hidden_units (App. F)
    hidden_units: int = 200  # units of each tanh layer (App. F)
    latent_units: int = 200  # binary latents; the RBM's two sides are its two halves (App. F: 200 per layer)
    batch_norm: bool = True  # batch normalization on the nonlinear hidden layers (App. F)
    beta: float = 8.0  # fixed inverse temperature of the smoothing; App. F cross-validates it in {5, 6, 8, 10}
    kl_anneal_fraction: float = 0.3  # KL weight 0 -> 1 over this fraction of the run (App. F: 300K of 1M steps)
    learning_rate: float = 3e-3  # App. F's initial rate
    lr_drop_fractions: tuple[float, ...] = (0.6, 0.75, 0.95)  # rate x lr_drop_factor here (App. F: 600K, 750K, 950K of 1M)
    lr_drop_factor: float = 0.3  # App. F
    adam_epsilon: float = 1e-3  # Section 7.1's Adam epsilon (App. F names no optimizer)
    pcd_chains: int = 100  # persistent chains for the gradient of log Z (App. E gives no number)
    pcd_sweeps: int = 40  # block-Gibbs sweeps of the chains per update (App. E)
    ais_chains: int = 1000  # AIS for log Z at evaluation (prepare_evaluation)
    ais_temperatures: int = 10000
    validation_ais_chains: int = 100  # the cheaper AIS before each validation
    validation_ais_temperatures: int = 1000
    batch_size: int = 100  # App. F
    epochs: int = 200  # scaled down from App. F's 1M iterations (docs/dvae.md)
    patience: int | None = None  # stop after N epochs without a better validation bound
    sample_every: int = 5  # epochs between sample grids

    def __post_init__(self):
        for name, allowed in (("prior", PRIORS), ("network", NETWORKS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if self.dequantize:
            raise ValueError("dequantize must be False for the dvae_rbm model: it binarizes the pixels itself")
        if not 0 < self.beta <= 80:
            raise ValueError(f"beta must lie in (0, 80], got {self.beta}")
        if self.latent_units < 2 or self.latent_units % 2:
            raise ValueError(f"latent_units must be even (the RBM's two halves) and >= 2, got {self.latent_units}")
        for name in ("hidden_units", "batch_size", "epochs", "pcd_chains", "pcd_sweeps", "sampling_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("ais_chains", "validation_ais_chains", "ais_temperatures", "validation_ais_temperatures"):
            if getattr(self, name) < 3:
                raise ValueError(f"{name} must be at least 3, got {getattr(self, name)}")
        if not 0 <= self.kl_anneal_fraction <= 1:
            raise ValueError(f"kl_anneal_fraction must lie in [0, 1], got {self.kl_anneal_fraction}")
        if any(not 0 < f <= 1 for f in self.lr_drop_fractions) or list(self.lr_drop_fractions) != sorted(
                self.lr_drop_fractions):
            raise ValueError(f"lr_drop_fractions must increase within (0, 1], got {self.lr_drop_fractions}")

    @property
    def total_steps(self) -> int:
        """Training steps of the whole run: epochs x steps per epoch."""
        return self.epochs * max(1, (self.train_examples or 50_000) // self.batch_size)


def learning_rate_schedule(config: DVAERBMConfig) -> keras.optimizers.schedules.LearningRateSchedule:
    """learning_rate, multiplied by lr_drop_factor at each of lr_drop_fractions x total_steps (App. F)."""
    boundaries = [max(1, int(f * config.total_steps)) for f in config.lr_drop_fractions]
    values = [config.learning_rate * config.lr_drop_factor ** i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def _mlp(name: str, depth: int, units: int, outputs: int, input_dim: int, batch_norm: bool) -> keras.Sequential:
    layers = []
    for i in range(depth):  # Dense -> batch normalization -> tanh (App. F)
        layers.append(keras.layers.Dense(units, use_bias=not batch_norm, name=f"{name}_dense{i}"))
        if batch_norm:
            layers.append(keras.layers.BatchNormalization(name=f"{name}_bn{i}"))
        layers.append(keras.layers.Activation("tanh", name=f"{name}_tanh{i}"))
    net = keras.Sequential([*layers, keras.layers.Dense(outputs, name=f"{name}_logits")], name=name)
    net.build((None, input_dim))
    return net


@register_model("dvae_rbm")
@keras.saving.register_keras_serializable(package="infusion_tf")
class DVAERBMModel(keras.Model):
    """The RBM-prior (or factorial-prior) VAE of Table 2 (module docstring); implements protocol.GenerativeModel."""

    capabilities = ("prepare",)  # log Z by AIS before evaluation
    evaluation_settings = ("ais_chains", "ais_temperatures", "sampling_steps")  # eval/run.py --model-setting
    quantized_8bit = False  # log-probabilities of binary images

    def __init__(self, config: DVAERBMConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = DVAERBMConfig.from_dict(config) if isinstance(config, dict) else config
        c = self.config
        d, n, half = c.num_dims, c.latent_units, c.latent_units // 2
        depth = 2 if c.network == "nonlinear" else 0
        self.encoder = _mlp("encoder", depth, c.hidden_units, n, d, c.batch_norm)
        self.decoder = _mlp("decoder", depth, c.hidden_units, d, n, c.batch_norm)
        self.a1 = self.add_weight(name="a1", shape=(half,), initializer="zeros")
        self.a2 = self.add_weight(name="a2", shape=(n - half,), initializer="zeros")
        if c.prior == "rbm":
            self.w = self.add_weight(name="w", shape=(half, n - half), initializer="zeros")
            start = np.random.default_rng(c.seed).integers(0, 2, (c.pcd_chains, half)).astype(np.float32)
            self.pcd_z1 = self.add_weight(name="pcd_z1", shape=start.shape, trainable=False,
                                          initializer=keras.initializers.Constant(start))
        self.log_z = self.add_weight(name="log_z", shape=(), trainable=False, initializer="zeros")
        self.train_mean = self.add_weight(name="train_mean", shape=(d,), initializer="zeros", trainable=False)
        self.built = True
        self.log_z.assign(self._factorial_log_z())  # exact while W = 0, as initialized

    def _factorial_log_z(self):
        """log Z of the factorial prior (and of the RBM while W = 0): sum softplus(a)."""
        return tf.reduce_sum(tf.math.softplus(self.a1)) + tf.reduce_sum(tf.math.softplus(self.a2))

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    def compile(self, optimizer=None, **kwargs):
        """Compiles with Adam on App. F's learning-rate drops and config.adam_epsilon, replacing the caller's Adam
        (the training command passes Adam(config.learning_rate))."""
        if optimizer is None or isinstance(optimizer, keras.optimizers.Adam):
            optimizer = keras.optimizers.Adam(learning_rate_schedule(self.config), epsilon=self.config.adam_epsilon)
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config):
        """Recompiles a loaded model (a resumed run) with its own optimizer, whose state the loader then restores;
        Keras skips a custom `compile` otherwise."""
        self.compile()
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def fit_prior(self, train_array) -> None:
        """Centres the encoder's input on the training mean and starts the decoder's output bias at its logit."""
        fit_to_training_mean(self.train_mean, self.decoder.layers[-1].bias, train_array)

    # -- the prior --------------------------------------------------------------------------------------------

    def _split(self, z):
        half = self.config.latent_units // 2
        return z[..., :half], z[..., half:]

    def prior_energy(self, z):
        """E(z) [...] of binary or mean z [..., n]: the RBM's, or -a^T z for the factorial prior."""
        z1, z2 = self._split(z)
        if self.config.prior == "rbm":
            return rbm.energy(z1, z2, self.a1, self.a2, self.w)
        return -(tf.reduce_sum(z1 * self.a1, -1) + tf.reduce_sum(z2 * self.a2, -1))

    def estimate_log_partition(self, num_chains: int, num_temperatures: int, seed=(0, 0)) -> dict:
        """Sets `log_z`: AIS for the RBM (base: the factorial fit to the PCD chains), exact for the factorial prior."""
        if self.config.prior == "factorial":
            self.log_z.assign(self._factorial_log_z())
            return {"log_z": float(self.log_z.numpy()), "method": "exact (factorial prior)"}
        mean = np.clip(self.pcd_z1.numpy().mean(0), 0.02, 0.98)
        result = ais.annealed_log_partition(self.a1.numpy(), self.a2.numpy(), self.w.numpy(), num_chains=num_chains,
                                            num_temperatures=num_temperatures, seed=seed,
                                            base_logits=np.log(mean / (1 - mean)))
        self.log_z.assign(result.log_z)
        return {**result.to_dict(), "method": "annealed importance sampling"}

    def prepare_evaluation(self, seed: int = 0) -> dict:
        """The 'prepare' capability: log Z by AIS with config.ais_chains x config.ais_temperatures."""
        return self.estimate_log_partition(self.config.ais_chains, self.config.ais_temperatures, seed=(seed, 1))

    def evaluate(self, *args, **kwargs):
        """Keras' evaluate (fit's validation too), after a fresh, cheaper AIS estimate of log Z."""
        step = int(self.optimizer.iterations.numpy()) if self.optimizer is not None else 0
        self.estimate_log_partition(self.config.validation_ais_chains, self.config.validation_ais_temperatures,
                                    seed=(step % (1 << 30), 2))
        return super().evaluate(*args, **kwargs)

    # -- training ---------------------------------------------------------------------------------------------

    def kl(self, logits, log_z=None):
        """KL(q(z | x) || p(z)) [B] for factorial q given by logits [B, n] (Section 5, Eq. 6 with one layer).

        log_z: the RBM's log Z term (default: the value of `log_z`, no gradient); training passes `log_z` plus the
        PCD surrogate minus its stopped value, so that the value is the AIS estimate and the gradient App. E's."""
        if self.config.prior == "factorial":
            return bernoulli_kl(logits, tf.concat([self.a1, self.a2], 0))
        mu = tf.sigmoid(logits)
        negative_entropy = bernoulli_log_prob(mu, logits)  # sum mu log mu + (1 - mu) log(1 - mu)
        return negative_entropy + self.prior_energy(mu) + (self.log_z if log_z is None else log_z)

    def smoothed_elbo(self, x, seed, training=False, log_z=None):
        """(E_q(zeta|x)[log p(x | zeta)] [B], KL [B]) at the fixed beta, one zeta per example."""
        x_binary = static_binarization(x, self.config.binarization_seed)
        logits = self.encoder(x_binary - self.train_mean, training=training)  # [B, n]
        rho = tf.random.stateless_uniform(tf.shape(logits), seed, minval=1e-6, maxval=1.0 - 1e-6)
        zeta = overlapping.exponential_inverse_cdf(rho, logits, self.config.beta)  # [B, n], reparametrized
        log_px = bernoulli_log_prob(x_binary, self.decoder(zeta, training=training))
        return log_px, self.kl(logits, log_z)

    def train_step(self, x):
        step = self.optimizer.iterations
        seed = tf.stack([tf.cast(step, tf.int32), tf.constant(self.config.seed, tf.int32)])
        c = self.config
        if c.prior == "rbm":  # PCD: advance the persistent chains under the current prior (App. E)
            z1, z2 = rbm.gibbs_sweeps(self.pcd_z1, self.a1, self.a2, self.w, c.pcd_sweeps, seed + [0, 7919])
            self.pcd_z1.assign(z1)
        gamma = tf.minimum(tf.cast(step, tf.float32) / max(1.0, c.kl_anneal_fraction * c.total_steps), 1.0)
        with tf.GradientTape() as tape:
            log_z = None
            if c.prior == "rbm":
                surrogate = rbm.log_partition_surrogate(z1, z2, self.a1, self.a2, self.w)
                log_z = self.log_z + surrogate - tf.stop_gradient(surrogate)
            log_px, kl = self.smoothed_elbo(x, seed, training=True, log_z=log_z)
            loss = -tf.reduce_mean(log_px - gamma * kl)
        self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        return {"loss": loss, "lower_bound": tf.reduce_mean(log_px - kl), "kl_weight": gamma,
                "learning_rate": self.optimizer.learning_rate}

    def test_step(self, x):
        """The binary-limit ELBO (beta -> infinity), one z per example, with the current log_z."""
        bound = tf.reduce_mean(tf.reduce_sum(self.log_weights(x, 1, tf.constant([0, 2], tf.int32)).per_step, 0))
        return {"loss": -bound, "lower_bound": bound}

    # -- the protocol -----------------------------------------------------------------------------------------

    def log_weights(self, x, num_proposals, seed) -> protocol.LogWeights:
        """log p(x, z) - log q(z | x), z ~ q(z | x) binary (beta -> infinity), k per example.

        x: float [B, *example_shape] (u / 255); seed int32 [2]. Returns per_step [3, B, k]:
        -log Z, -E(z) - log q(z | x), log p(x | z).
        """
        x_binary = static_binarization(x, self.config.binarization_seed)  # [B, d]
        logits = self.encoder(x_binary - self.train_mean, training=False)[:, None, :]  # [B, 1, n]
        b, n = tf.shape(x_binary)[0], self.config.latent_units
        u = tf.random.stateless_uniform(tf.stack([b, num_proposals, n]), seed, minval=1e-7, maxval=1.0 - 1e-7)
        z = tf.cast(logits + tf.math.log(u) - tf.math.log1p(-u) > 0, tf.float32)  # [B, k, n] ~ Bernoulli(q)
        energy_minus_q = -self.prior_energy(z) - bernoulli_log_prob(z, logits)  # [B, k]
        decoded = tf.reshape(self.decoder(tf.reshape(z, [-1, n]), training=False), [b, num_proposals, -1])
        likelihood = bernoulli_log_prob(x_binary[:, None, :], decoded)  # [B, k]
        log_z = self.log_z if self.config.prior == "rbm" else self._factorial_log_z()
        log_z = tf.fill(tf.shape(likelihood), -tf.cast(log_z, likelihood.dtype))
        return protocol.LogWeights(tf.stack([log_z, energy_minus_q, likelihood]))

    def sample_latents(self, num_samples, seed):
        """z ~ p(z) [n, latent_units]: config.sampling_steps Gibbs sweeps from a uniform start, or exact draws."""
        c, half = self.config, self.config.latent_units // 2
        seeds = tf.random.experimental.stateless_split(seed, 3)
        if c.prior == "factorial":
            logits = tf.broadcast_to(tf.concat([self.a1, self.a2], 0), [num_samples, c.latent_units])
            return tf.cast(tf.random.stateless_uniform(tf.shape(logits), seeds[0]) < tf.sigmoid(logits), tf.float32)
        start = tf.cast(tf.random.stateless_uniform([num_samples, half], seeds[0]) < 0.5, tf.float32)
        z1, z2 = rbm.gibbs_sweeps(start, self.a1, self.a2, self.w, c.sampling_steps, seeds[1])
        return tf.concat([z1, z2], -1)

    def sample(self, num_samples, num_steps=None, seed=None, **kwargs):
        """Means of p(x | z), z ~ p(z): float32 [n, *example_shape] in [0, 1]. seed: int, int32 [2] or None (0)."""
        key = tf.constant([seed or 0, 0], tf.int32) if seed is None or isinstance(seed, int) else seed
        z = self.sample_latents(num_samples, tf.convert_to_tensor(key, tf.int32))
        images = tf.sigmoid(self.decoder(z, training=False))
        return tf.reshape(images, tf.concat([[num_samples], list(self.config.example_shape)], 0))
