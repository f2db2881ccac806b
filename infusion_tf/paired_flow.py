"""A sampler learned from an unnormalized density: a free-form generator paired with a MAF (Tao et al. 2019, App. G-H, I.2).

Target mu(x) = u(x) / Z, known only through log u. The generator q (x = G(z), z ~ N(0, I), no density) should minimize
the annealed reverse KL F_mu(q; beta_t) of App. A (`tempered_objective`):

    E_q[log q(x)] - beta_t E_q[log u(x)]      (= KL(q || mu_beta) up to constants, mu_beta ~ u^beta_t)

at the temperature that one of App. B's two regularizations reaches (`regularized_objective`, `annealing.annealed_beta`):
entropy, beta_ent = 1 / (1 + lambda_t), or likelihood, beta_lik = 1 + lambda_t. Its gradient needs grad_x log q,
which a free-form generator does not have. The paired flow nu (a MAF, `maf.py`)
supplies it: each step nu is fitted to the generator's current samples by maximum likelihood (MAF's cheap direction,
one pass per block), and the generator descends E_z[log nu(G(z)) - beta_t log u(G(z))] through x = G(z). Neither
network is ever sampled from in training, which is App. G's point: sampling a MAF is D passes per block, so training
the flow itself on KL(nu || mu) would back-propagate through its slow direction.

`importance_diagnostics` reports, for samples x with a density log r(x) (nu's exact one, or nu standing in for q),
log w = log u(x) - log r(x): the reverse KL log Z - mean log w (with the exact normalizer where there is one), the
importance-sampling estimate of log Z, and the effective sample size (sum w)^2 / sum w^2 / n;
`model_importance_diagnostics` the same for the samples of any registered model with a likelihood learned on the
banana or the kidney (paired_flow_model's nu, `sampler=flow`), through the protocol's log_weights.
"""

from __future__ import annotations

import math
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from infusion_tf import maf

__all__ = ["banana_log_u", "kidney_log_u", "TOY_LOG_U", "tempered_objective", "regularized_objective",
           "paired_updates", "PairedFlowSampler", "importance_diagnostics", "model_importance_diagnostics"]


def banana_log_u(x: tf.Tensor) -> tf.Tensor:
    """log u of the banana (App. F), TensorFlow: float [n, 2] -> [n] (toy_densities.banana_log_unnormalized)."""
    x1, x2 = x[:, 0], x[:, 1]
    return -0.5 * (x2**2 / 4 + (x1 - x2**2 / 4) ** 2)


def kidney_log_u(x: tf.Tensor) -> tf.Tensor:
    """log u of the kidney (App. I.2.1, the negated potential), TensorFlow: [n, 2] -> [n] (toy_densities')."""
    s1 = (tf.norm(x, axis=-1) - 2.0) / 0.4
    log_s2 = -0.5 * ((x[:, 0] - 2.0) / 0.6) ** 2
    log_s3 = -0.5 * ((x[:, 0] + 2.0) / 0.6) ** 2
    return -0.5 * s1**2 + tf.reduce_logsumexp(tf.stack([log_s2, log_s3]), axis=0)


TOY_LOG_U = {"banana": banana_log_u, "kidney": kidney_log_u}


def tempered_objective(log_q: tf.Tensor, log_u: tf.Tensor, beta) -> tf.Tensor:
    """F_mu(q; beta) = KL(q || mu) + (1 - beta) E_q[log mu] = E_q[log q] - beta E_q[log u] + beta log Z (App. A, Eq. 1),
    without its constant beta log Z: a Monte Carlo mean over samples x ~ q.

    log_q, log_u: float [n] at the same n samples; beta: scalar > 0. Returns: scalar. Its minimizer over all q is
    mu_beta ~ u^beta (beta < 1: flatter than mu; beta = 1: the plain reverse KL).
    """
    return tf.reduce_mean(log_q) - beta * tf.reduce_mean(log_u)


def regularized_objective(form: str, log_q: tf.Tensor, log_u: tf.Tensor, lam) -> tf.Tensor:
    """The two annealed objectives of Corollary 2.2 (App. B), without their constants, as Monte Carlo means over x ~ q:

        "entropy":    KL(q || mu) + lambda S(q)          S(q) = E_q[log q]      = (1 + lambda) F_mu(q; beta_ent)
        "likelihood": KL(q || mu) - lambda E_q[log mu]                          = F_mu(q; beta_lik)

    log_q, log_u: float [n]; lam: scalar > -1. Returns: scalar. The sampler descends `tempered_objective` at
    `annealing.annealed_beta(form, lam)`, which is this objective divided by 1 + lambda for the entropy form
    (the same direction; Adam's step does not depend on the loss's scale) and equal to it for the likelihood form.
    Raises: ValueError naming an unknown form.
    """
    kl = tf.reduce_mean(log_q) - tf.reduce_mean(log_u)  # KL(q || mu) - log Z
    if form == "entropy":
        return kl + lam * tf.reduce_mean(log_q)
    if form == "likelihood":
        return kl - lam * tf.reduce_mean(log_u)  # E_q[log mu] = E_q[log u] - log Z: the constant dropped
    raise ValueError(f"unknown annealing form {form!r}; choose one of ['entropy', 'likelihood']")


def importance_diagnostics(log_u: np.ndarray, log_r: np.ndarray, log_z: float | None = None) -> dict:
    """Importance weights w = u / r of n samples x ~ r: float [n] log u(x) and log r(x).

    Returns reverse_kl = log Z - mean(log w) (None without log_z; KL(r || mu) >= 0 in expectation), log_z_estimate =
    logsumexp(log w) - log n, ess_fraction = (sum w)^2 / (n sum w^2), and the number of non-finite weights dropped.
    """
    log_w = np.asarray(log_u, np.float64) - np.asarray(log_r, np.float64)
    finite = np.isfinite(log_w)
    log_w = log_w[finite]
    n = len(log_w)
    if n == 0:
        raise ValueError("no finite importance weight")
    lse = np.logaddexp.reduce(log_w)
    return {"reverse_kl": None if log_z is None else float(log_z - log_w.mean()),
            "reverse_kl_se": float(log_w.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
            "log_z_estimate": float(lse - math.log(n)),
            "ess_fraction": float(math.exp(2 * lse - np.logaddexp.reduce(2 * log_w)) / n),
            "num_samples": n, "non_finite": int((~finite).sum())}


def model_importance_diagnostics(model, x, num_proposals: int = 1, seed: int = 0) -> dict:
    """`importance_diagnostics` of a model's own samples x ~ r on the toy density it learned (config.dataset banana or
    kidney): the reverse KL(r || mu) with mu's exact normalizer (toy_densities.log_normalizer) and the effective
    sample size of w = u / r, in the density's own coordinates.

    x: float32 [n, 2] samples of `model` in the dataset's [0, 1]^2 coordinates (model.sample). log r(x) is the
    importance-sampling estimate over num_proposals proposals of the protocol's log_weights (estimators.
    importance_sampling, Eq. 2 of the infusion paper), minus the affine map's log |d raw / d x| = sum log scale
    (toy_densities.toy_affine). For a model whose samples have a density and no latent variable (paired_flow with
    sampler=flow: log nu) it is exact for any num_proposals; for a latent-variable model it is an estimate that
    falls short of log r on average (less so as num_proposals grows). Returns importance_diagnostics' dict and
    "num_proposals". Raises: ValueError for a model without the "likelihood" capability or a dataset without an exact
    density.
    """
    from infusion_tf import estimators, protocol, toy_densities

    protocol.require(model, "likelihood", "the reverse KL and the effective sample size")
    dataset = model.config.dataset
    if dataset not in toy_densities.TOY_DENSITIES:
        raise ValueError(f"an exact normalizer exists for {list(toy_densities.TOY_DENSITIES)}; the model learned "
                         f"{dataset!r}")
    offset, scale = toy_densities.toy_affine(dataset)
    x = np.asarray(x, np.float32)  # [n, 2]
    log_r_unit = estimators.importance_sampling(estimators.LogWeightScorer.from_model(model), x, num_proposals,
                                                seed).per_example  # [n], log r in [0, 1]^2 coordinates
    log_r = log_r_unit - float(np.sum(np.log(scale)))  # [n], raw coordinates
    log_u = toy_densities.log_unnormalized(dataset, offset + scale * x.astype(np.float64))  # [n]
    return {**importance_diagnostics(log_u, log_r, toy_densities.log_normalizer(dataset)),
            "num_proposals": int(num_proposals)}


def paired_updates(generator, flow, flow_variables, g_optimizer, flow_optimizer, log_u, beta, zs) -> dict:
    """One training step of the pair (App. G): a flow update by maximum likelihood on G(z) for each latent batch of
    zs (float32 [B, latent] each), the last one's taken on the same tape as the generator's update, which descends
    `tempered_objective(log nu(G(z)), log u(G(z)), beta)` through x = G(z) (nu stands in for log q).

    generator: x = G(z), [B, latent] -> [B, dim]; flow: nu, a distribution whose log_prob is differentiable in its
    flow_variables; log_u: [B, dim] -> [B]; beta: scalar > 0. Returns the last batch's flow_nll, g_loss, beta and
    mean_log_u (scalars).
    """
    for z in zs[:-1]:
        with tf.GradientTape() as tape:
            flow_nll = -tf.reduce_mean(flow.log_prob(tf.stop_gradient(generator(z, training=True))))
        flow_optimizer.apply(tape.gradient(flow_nll, flow_variables), flow_variables)
    with tf.GradientTape(persistent=True) as tape:
        x = generator(zs[-1], training=True)  # [B, dim]
        log_nu = flow.log_prob(x)  # [B]; nu's gradient reads x as data, G's reads nu as log q
        log_u_x = log_u(x)
        flow_nll = -tf.reduce_mean(log_nu)
        g_loss = tempered_objective(log_nu, log_u_x, beta)  # F_mu(q; beta) with nu standing in for log q
    flow_optimizer.apply(tape.gradient(flow_nll, flow_variables), flow_variables)
    g_vars = generator.trainable_variables
    g_optimizer.apply(tape.gradient(g_loss, g_vars), g_vars)
    del tape
    return {"flow_nll": flow_nll, "g_loss": g_loss, "beta": beta, "mean_log_u": tf.reduce_mean(log_u_x)}


class PairedFlowSampler:
    """A generator G and a MAF nu trained against log u with beta_t = betas[t] (see the module docstring).

    dim: dimension of x; log_u: float32 [n, dim] -> [n]; betas: float [num_steps] inverse temperatures > 0
    (annealing.annealed_beta of a lambda schedule, either form; steps past the end use the last; beta > 1, which the
    likelihood form reaches for lambda > 0, sharpens the target). App. I.2.2: 8 blocks of [512, 512].
    """

    def __init__(self, dim: int, log_u: Callable[[tf.Tensor], tf.Tensor], betas, *, blocks: int = 8,
                 hidden=(512, 512), generator_width: int = 256, generator_depth: int = 3, batch_size: int = 256,
                 learning_rate: float = 1e-3, flow_learning_rate: float = 1e-3, flow_steps: int = 1, seed: int = 0):
        betas = np.asarray(betas, np.float32).ravel()
        if betas.size < 1 or not np.all(np.isfinite(betas)) or np.any(betas <= 0):
            raise ValueError(f"betas must be a non-empty schedule of finite inverse temperatures > 0, got "
                             f"{betas.size} values with minimum {betas.min() if betas.size else None}")
        if dim < 2 or blocks < 1 or batch_size < 2 or flow_steps < 1:
            raise ValueError(f"need dim >= 2, blocks >= 1, batch_size >= 2 and flow_steps >= 1; got {dim}, {blocks}, "
                             f"{batch_size}, {flow_steps}")
        keras.utils.set_random_seed(seed)
        self.dim, self.log_u, self.batch_size, self.seed = int(dim), log_u, int(batch_size), int(seed)
        self.flow_steps = int(flow_steps)
        self.betas = tf.constant(betas)
        self.generator = keras.Sequential([keras.layers.Dense(generator_width, activation="relu")
                                           for _ in range(generator_depth)] + [keras.layers.Dense(self.dim)])
        self.generator.build((None, self.dim))
        self.mades = [maf.MADE(self.dim, hidden) for _ in range(blocks)]
        self.flow = maf.maf_distribution(self.mades, self.dim)
        self.flow_variables = [v for m in self.mades for v in m.trainable_variables]
        self.g_optimizer = keras.optimizers.Adam(learning_rate)
        self.flow_optimizer = keras.optimizers.Adam(flow_learning_rate)
        self.g_optimizer.build(self.generator.trainable_variables)
        self.flow_optimizer.build(self.flow_variables)
        self.step_count = tf.Variable(0, dtype=tf.int32, trainable=False)

    def generate(self, num_samples: int, seed: int) -> tf.Tensor:
        """float32 [n, dim] generator samples G(z), z ~ N(0, I) with a stateless seed."""
        return self.generator(tf.random.stateless_normal([num_samples, self.dim], tf.constant([seed, 7], tf.int32)))

    @tf.function
    def train_step(self) -> dict:
        """flow_steps flow updates (maximum likelihood on fresh generator samples), then one generator update."""
        t = self.step_count
        beta = self.betas[tf.minimum(t, tf.shape(self.betas)[0] - 1)]
        zs = []
        for i in range(self.flow_steps - 1):  # latents of the extra flow updates, so that nu keeps up with q
            seed = tf.random.experimental.stateless_fold_in(tf.stack([tf.constant(self.seed), t]), i + 1)
            zs.append(tf.random.stateless_normal([self.batch_size, self.dim], seed))
        zs.append(tf.random.stateless_normal([self.batch_size, self.dim], tf.stack([tf.constant(self.seed), t])))
        values = paired_updates(self.generator, self.flow, self.flow_variables, self.g_optimizer, self.flow_optimizer,
                                self.log_u, beta, zs)
        self.step_count.assign_add(1)
        return values

    def train(self, num_steps: int, log_every: int = 0, printer=print) -> list[dict]:
        """Runs num_steps steps; every log_every steps (0: never) prints and records the step's numbers."""
        history = []
        for i in range(num_steps):
            values = self.train_step()
            if log_every and (i + 1) % log_every == 0:
                row = {"step": int(self.step_count.numpy()), **{k: float(v) for k, v in values.items()}}
                history.append(row)
                printer(" ".join(f"{k} {v:.4g}" for k, v in row.items()))
        return history

    def flow_samples(self, num_samples: int, seed: int, chunk: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """(x [n, dim], log nu(x) [n]) with x ~ nu: MAF sampling, D passes per block, in chunks."""
        xs, lps = [], []
        for i, start in enumerate(range(0, num_samples, chunk)):
            x = self.flow.sample(min(chunk, num_samples - start), seed=tf.constant([seed, i], tf.int32))
            xs.append(x.numpy())
            lps.append(self.flow.log_prob(x).numpy())
        return np.concatenate(xs), np.concatenate(lps)

    def log_nu(self, x) -> np.ndarray:
        """log nu at float [n, dim] points, float64 [n]."""
        return self.flow.log_prob(tf.convert_to_tensor(x, tf.float32)).numpy().astype(np.float64)
