"""Variational annealing of a GAN generator with an entropy term (Tao et al. 2019, App. A-B, I.1; a first cut).

The generator q minimizes its GAN loss minus lambda_t H(q), the entropy regularization whose temperature is
beta_ent = 1 / (1 + lambda_t) (App. B); lambda_t follows an `annealing` schedule to 0. The entropy gradient needs
the generator's score grad log q, which no GAN has: as the paper does, a denoising autoencoder (`score.py`) is trained
on the generator's own samples, one step per GAN step, and its DAE-score s stands in for it:

    grad_theta E_q[log q(x)] = E_z[ (grad_x log q)(G(z)) . dG(z)/dtheta ]    (the score-function term has mean 0)

so `entropy_surrogate(x, s) = mean(stop_gradient(s) . x)` has the gradient of -H(q).

Generator losses: "jsd" the non-saturating -log sigmoid(D(G(z))); "rkl" -D(G(z)), the reverse KL when the logit D
estimates log p / q. The discriminator always minimizes the logistic (JSD) loss, whose optimal logit is log p / q.
Not yet here: the likelihood regularization (beta_lik, for a known log density), MNIST networks, the commands.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from infusion_tf import score

__all__ = ["GENERATOR_LOSSES", "entropy_surrogate", "annealed_generator_loss", "AnnealedGAN"]

GENERATOR_LOSSES = ("jsd", "rkl")


def entropy_surrogate(x: tf.Tensor, score_estimate: tf.Tensor) -> tf.Tensor:
    """A scalar whose gradient w.r.t. the generator's parameters is that of E_q[log q] = -H(q).

    x: float32 [n, d] generator samples (differentiable in the parameters); score_estimate: [n, d] estimate of
    grad log q at x (its gradient is stopped).
    """
    return tf.reduce_mean(tf.reduce_sum(tf.stop_gradient(score_estimate) * x, axis=-1))


def annealed_generator_loss(generator_loss: str, logit, fake, denoiser, sigma: float, lam):
    """The generator's annealed objective: the GAN term (JSD: softplus(-D(G(z))); rkl: -D(G(z))) plus
    lambda_t times the negative-entropy surrogate, whose gradient comes from the DAE's score on the generator's
    own samples (App. B, F). logit: [B, 1] discriminator outputs on fake [B, d]. Returns (loss, gan, neg_entropy),
    scalars."""
    gan = tf.reduce_mean(tf.nn.softplus(-logit) if generator_loss == "jsd" else -logit)
    neg_entropy = entropy_surrogate(fake, score.dae_score(denoiser, fake, sigma))
    return gan + lam * neg_entropy, gan, neg_entropy


def _mlp(width: int, depth: int, out: int, activation: str) -> keras.Sequential:
    return keras.Sequential([keras.layers.Dense(width, activation=activation) for _ in range(depth)]
                            + [keras.layers.Dense(out)])


class AnnealedGAN(keras.Model):
    """A GAN on points in R^d whose generator loss carries -lambda_t H(q), H's gradient from a DAE on its samples.

    lambdas: float [num_steps] schedule (annealing.lambda_schedule); step t >= num_steps uses the last value.
    """

    def __init__(self, dim: int, lambdas, latent_dim: int = 2, width: int = 128, depth: int = 2,
                 sigma: float = 0.1, generator_loss: str = "jsd", seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if generator_loss not in GENERATOR_LOSSES:
            raise ValueError(f"generator_loss must be one of {list(GENERATOR_LOSSES)}, got {generator_loss!r}")
        lambdas = np.asarray(lambdas, np.float32).ravel()
        if lambdas.size < 1 or np.any(lambdas <= -1) or not np.all(np.isfinite(lambdas)):
            raise ValueError("lambdas must be a non-empty schedule of finite values > -1")
        self.dim, self.latent_dim, self.sigma, self.generator_loss = int(dim), int(latent_dim), float(sigma), generator_loss
        self.lambdas = tf.constant(lambdas)  # [num_steps]
        self.generator = _mlp(width, depth, self.dim, "relu")
        self.discriminator = _mlp(width, depth, 1, "leaky_relu")
        self.denoiser = score.DenoisingAutoencoder(self.dim, sigma, width=width, depth=depth, seed=seed)
        self.generator.build((None, self.latent_dim))
        self.discriminator.build((None, self.dim))
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in
                         ("d_loss", "g_loss", "dae_loss", "neg_entropy_surrogate", "lambda")}

    def compile(self, g_optimizer, d_optimizer, dae_optimizer, **kwargs):
        super().compile(**kwargs)
        self.g_optimizer, self.d_optimizer, self.dae_optimizer = g_optimizer, d_optimizer, dae_optimizer

    @property
    def metrics(self):
        return list(self.trackers.values())

    def sample(self, num_samples: int, seed: int = 0) -> tf.Tensor:
        """float32 [n, dim] generator samples G(z), z ~ N(0, I) drawn with a stateless seed."""
        z = tf.random.stateless_normal([num_samples, self.latent_dim], tf.constant([seed, 0], tf.int32))
        return self.generator(z)

    def train_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        n = tf.shape(x)[0]
        z = keras.random.normal((n, self.latent_dim), seed=self.seed_generator)
        step = tf.minimum(tf.cast(self.g_optimizer.iterations, tf.int32), tf.shape(self.lambdas)[0] - 1)
        lam = self.lambdas[step]

        with tf.GradientTape() as tape:  # discriminator: logistic loss, optimum logit log p / q
            fake = self.generator(z)
            d_real, d_fake = self.discriminator(x), self.discriminator(fake)
            d_loss = tf.reduce_mean(tf.nn.softplus(-d_real) + tf.nn.softplus(d_fake))
        self.d_optimizer.apply(tape.gradient(d_loss, self.discriminator.trainable_variables),
                               self.discriminator.trainable_variables)

        noise = keras.random.normal(tf.shape(fake), seed=self.seed_generator)
        with tf.GradientTape() as tape:  # the DAE follows the generator's current samples
            target = tf.stop_gradient(fake)
            dae_loss = tf.reduce_mean(tf.reduce_sum(tf.square(self.denoiser(target + self.sigma * noise) - target), -1))
        self.dae_optimizer.apply(tape.gradient(dae_loss, self.denoiser.trainable_variables),
                                 self.denoiser.trainable_variables)

        with tf.GradientTape() as tape:
            fake = self.generator(z)
            g_loss, gan, neg_entropy = annealed_generator_loss(self.generator_loss, self.discriminator(fake), fake,
                                                               self.denoiser, self.sigma, lam)
        self.g_optimizer.apply(tape.gradient(g_loss, self.generator.trainable_variables),
                               self.generator.trainable_variables)

        values = {"d_loss": d_loss, "g_loss": gan, "dae_loss": dae_loss, "neg_entropy_surrogate": neg_entropy,
                  "lambda": lam}
        for name, value in values.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}
