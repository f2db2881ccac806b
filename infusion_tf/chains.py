"""The prior p(0), the infusion chain q and the model sampling chain p (Sections 2.2, 2.3.1 and 2.4).

Pure functions of tensors. Randomness is stateless: every function takes a `seed`, an int32 [2] tensor,
and derives one seed per step with `stateless_fold_in`, so a fixed seed gives identical chains and a
SavedModel can expose the seed as an input. The transition operator is any callable
`operator(z, step, use_batch_statistics, update_statistics) -> (mean, variance)` (see networks.py),
where `step` is 0-based: transition p(t) uses step t - 1.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from infusion_tf.protocol import LogWeights

__all__ = [
    "infusion_log_weights", "prior_parameters", "gaussian_log_prob", "prior_log_prob", "sample_prior",
    "infusion_sample", "mixture_choice_and_noise", "infusion_log_prob", "ChainTerms", "infusion_chain",
    "infusion_trajectory", "score_infusion_chain",
    "lower_bound_terms", "sampling_chain", "seed_pair",
]

tfd = tfp.distributions
Operator = Callable[..., tuple[tf.Tensor, tf.Tensor]]


def prior_parameters(mean: np.ndarray, variance: np.ndarray, variance_floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Parameters of the factorial Gaussian prior p(0) fitted by maximum likelihood, Eq. 1.

    The maximum-likelihood Gaussian has the per-pixel mean and variance of the training set; the floor
    keeps constant pixels (MNIST's borders) at a finite density.
    mean, variance: [*example_shape]. Returns: float32 (mean, max(variance, floor)), same shapes.
    """
    return (np.asarray(mean, np.float32),
            np.maximum(np.asarray(variance, np.float64), variance_floor).astype(np.float32))


def seed_pair(seed) -> tf.Tensor:
    """The int32 [2] stateless seed of an integer s in [0, 2^62): [s mod 2^31, s div 2^31], i.e. [s, 0] for
    s < 2^31, so that no two integers share a seed (tf.constant([s, 0], tf.int32) wraps s >= 2^31 around).

    A [2] integer tensor (a seed already derived, e.g. by stateless_fold_in) is returned as int32.
    Raises: ValueError for a negative or too large integer, or a tensor that is not [2] integers.
    """
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        if not 0 <= seed < 2**62:
            raise ValueError(f"seed must be an integer in [0, 2^62), got {seed}")
        return tf.constant([int(seed) % 2**31, int(seed) // 2**31], tf.int32)
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer or seed.shape != (2,):
        raise ValueError(f"seed must be an integer or an integer tensor of shape [2], got {seed.dtype.name} "
                         f"{seed.shape}")
    return tf.cast(seed, tf.int32)


def _sum_dims(values: tf.Tensor, batch_dims: int = 1) -> tf.Tensor:
    """[B, ...] -> [B] (or [T, B, ...] -> [T, B] with batch_dims=2): a factorial density sums over dimensions."""
    return tf.reduce_sum(values, axis=list(range(batch_dims, len(values.shape))))


def gaussian_log_prob(z: tf.Tensor, mean: tf.Tensor, variance: tf.Tensor) -> tf.Tensor:
    """Per-dimension log N(z; mean, variance), with `tfp.distributions.Normal`. Shapes broadcast."""
    return tfd.Normal(loc=mean, scale=tf.sqrt(variance)).log_prob(z)


def prior_log_prob(z: tf.Tensor, mean: tf.Tensor, variance: tf.Tensor) -> tf.Tensor:
    """log p(0)(z), the factorial Gaussian prior (Sections 2.2 and 4). z: [B, ...] -> [B]."""
    return _sum_dims(gaussian_log_prob(z, mean, variance))


def sample_prior(num_samples, mean: tf.Tensor, variance: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """z(0) ~ p(0). Returns float32 [num_samples, *mean.shape]."""
    shape = tf.concat([[num_samples], tf.shape(mean)], axis=0)
    return mean + tf.sqrt(variance) * tf.random.stateless_normal(shape, seed)


def infusion_sample(x, p_mean, p_variance, alpha_t, delta_variance: float, seed: tf.Tensor) -> tf.Tensor:
    """z~(t) ~ q(t)(. | z~(t-1), x): per pixel, from delta_x with probability alpha(t), else from p(t) (Sec. 2.3.1).

    x, p_mean, p_variance: [B, ...]; alpha_t: scalar. One uniform per pixel makes both choices
    (`mixture_choice_and_noise`). The draw is reparametrized: z = mean + std * noise in either component, so
    gradients reach p(t)'s mean and variance (Section 2.4.1) unless stopped.
    Returns: [B, ...].
    """
    uniform = tf.random.stateless_uniform(tf.shape(x), seed)
    p_mean, p_variance = tf.convert_to_tensor(p_mean), tf.convert_to_tensor(p_variance)  # Keras variables too
    from_x, noise = mixture_choice_and_noise(uniform, tf.cast(alpha_t, tf.float32))
    return tf.where(from_x, x + math.sqrt(delta_variance) * noise, p_mean + tf.sqrt(p_variance) * noise)


_HALF_ULP = 2.0**-24  # float32 uniforms are multiples of 2^-23 in [0, 1)


def mixture_choice_and_noise(uniform: tf.Tensor, alpha_t: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A two-component mixture's choice and a standard normal noise, both from one uniform per pixel.

    u ~ U(0, 1) picks delta_x where u < alpha; within either side, u rescaled to (0, 1) (u / alpha, or
    (u - alpha) / (1 - alpha)) is again uniform and independent of the choice, and its normal quantile
    (ndtri) is the noise. One random stream instead of a uniform and a normal one: drawing is the dearest
    elementwise work of the training step (docs/performance.md). The uniforms' 2^23 levels bound the noise
    to |noise| < 5.3 (4.4 on the delta_x side at alpha = 0.01): a tail of mass 1e-7 (1e-5), as with any
    normal drawn from float32 uniforms.
    uniform: float32 [...] in [0, 1); alpha_t: scalar or broadcastable. Returns: (bool [...], float32 [...]).
    """
    u = uniform + _HALF_ULP  # in (0, 1): centred on its level
    from_x = u < alpha_t
    rescaled = tf.where(from_x, u / tf.maximum(alpha_t, _HALF_ULP),
                        (u - alpha_t) / tf.maximum(1.0 - alpha_t, _HALF_ULP))
    return from_x, tf.math.ndtri(tf.clip_by_value(rescaled, _HALF_ULP, 1.0 - _HALF_ULP))


def infusion_log_prob(z, x, p_mean, p_variance, alpha_t, delta_variance: float) -> tf.Tensor:
    """log q(t)(z | z~(t-1), x) = sum_i log[(1 - alpha) p_i(t)(z_i) + alpha N(z_i; x_i, delta)] (Sec. 2.3.1).

    For t = 0, p_mean and p_variance are the prior's. Returns: [B].
    """
    return _sum_dims(_infusion_log_prob_dims(gaussian_log_prob(z, p_mean, p_variance), z, x, alpha_t, delta_variance))


def _infusion_log_prob_dims(log_p_dims, z, x, alpha_t, delta_variance: float) -> tf.Tensor:
    """Per-dimension log q(t)(z_i | ., x) given log p_i(t)(z_i): a log-sum-exp of the mixture's two components.

    alpha_t broadcasts against z (a scalar, or [T, 1, ...]); alpha = 0 or 1 leaves one component.
    """
    alpha_t = tf.cast(alpha_t, tf.float32)
    log_from_p = tf.math.log1p(-alpha_t) + log_p_dims
    log_from_x = tf.math.log(alpha_t) + gaussian_log_prob(z, x, delta_variance)
    return tf.reduce_logsumexp(tf.stack([log_from_p, log_from_x]), axis=0)


class ChainTerms(NamedTuple):
    """Per-step log-densities along one infusion chain z~(0) .. z~(T-1) per example, each float32 [T, B].

    log_p_target[t-1] = log p(t)(x | z~(t-1)), t = 1 .. T: the denoising terms (Section 2.3.2).
    log_p_chain[t] = log p(t)(z~(t) | z~(t-1)), with log p(0)(z~(0)) at t = 0 (Eq. 3).
    log_q_chain[t] = log q(t)(z~(t) | z~(t-1), x), t = 0 .. T-1 (Eq. 3).
    final_squared_error = ||x - mean of p(T)(. | z~(T-1))||^2, [B]: with it the last term can be rescored
    under any isotropic variance (Table 2's isotropic output).
    """

    log_p_target: tf.Tensor
    log_p_chain: tf.Tensor
    log_q_chain: tf.Tensor
    final_squared_error: tf.Tensor | None = None


def _step_seed(seed: tf.Tensor, t: int | tf.Tensor) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(t, tf.int32))


def _infusion_draws(operator: Operator, x, prior_mean, prior_variance, alpha, delta_variance: float,
                    seed: tf.Tensor, *, use_batch_statistics: bool, update_statistics: bool, stop_gradient: bool):
    """The one place that draws the infusion chain: z~(0) ~ q(0)(. | x), z~(t) ~ q(t)(. | z~(t-1), x) (Sec. 2.3.1).

    Yields, for t = 0 .. T-1, (z~(t), mean, variance): the draw, [B, ...], and the parameters of the model
    component it was drawn from, p(0)'s [...] at t = 0, then the operator's p(t)(. | z~(t-1)), [B, ...].
    Draw t uses the seed `_step_seed(seed, t)`. The operator is called once per step t >= 1 (step t - 1),
    only when draw t is asked for: the T - 1 calls that drawing needs, never p(T)(. | z~(T-1)).
    """
    mean, variance = tf.convert_to_tensor(prior_mean), tf.convert_to_tensor(prior_variance)
    for t in range(int(alpha.shape[0])):
        if t > 0:
            mean, variance = operator(z_tilde, step=t - 1, use_batch_statistics=use_batch_statistics,
                                      update_statistics=update_statistics)  # [B, ...] each
        z_tilde = infusion_sample(x, mean, variance, alpha[t], delta_variance, _step_seed(seed, t))
        z_tilde = tf.stop_gradient(z_tilde) if stop_gradient else z_tilde
        yield z_tilde, mean, variance


def _step_terms(x, z_tilde, draw_mean, draw_variance, mean, variance, alpha_t, delta_variance: float,
                batch_dims: int = 1) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The one place that scores a step t of the chain: its terms of Eq. 3 and of the denoising objective.

    z_tilde: z~(t), drawn from q(t), whose model component N(draw_mean, draw_variance) is p(t)(. | z~(t-1))
    (p(0) at t = 0); mean, variance: p(t+1)(. | z~(t)), the operator's output on z~(t). The mixture q(t)
    reuses p(t)'s per-dimension densities. batch_dims = 1: one step, [B, ...] tensors, alpha_t a scalar;
    batch_dims = 2: all steps at once, [T, B, ...] tensors, alpha_t [T, 1, ...]; x [B, ...] broadcasts.
    Returns: (log p(t+1)(x | z~(t)), log p(t)(z~(t) | .), log q(t)(z~(t) | ., x)), each [*batch].
    """
    log_p_dims = gaussian_log_prob(z_tilde, draw_mean, draw_variance)
    log_q_dims = _infusion_log_prob_dims(log_p_dims, z_tilde, x, alpha_t, delta_variance)
    log_p_target = _sum_dims(gaussian_log_prob(x, mean, variance), batch_dims)
    return log_p_target, _sum_dims(log_p_dims, batch_dims), _sum_dims(log_q_dims, batch_dims)


def infusion_chain(operator: Operator, x, prior_mean, prior_variance, alpha, delta_variance: float,
                   seed: tf.Tensor, *, use_batch_statistics: bool = True, update_statistics: bool = False,
                   stop_gradient: bool = True, score_draws: bool = True) -> ChainTerms:
    """Runs the infusion chain q(z~(0..T-1) | x) and scores it under p (Sections 2.3.1, 2.3.2, 2.4).

    x: float32 [B, ...]; alpha: [T], alpha(t) for t = 0 .. T-1; T = len(alpha) is static, so the loop
    unrolls into one graph. Each transition is one call of the operator, whose output serves both as
    p(t)'s density and as q(t)'s model component. `stop_gradient=True` is the denoising procedure (no
    gradient through the chain's samples); False reparametrizes them (lower-bound procedure, Sec. 2.4.1).
    `score_draws=False` skips the densities of the draws under p(t) and q(t), which only the bound needs: the
    denoising objective's gradient needs the draws and log p(t)(x | z~(t-1)) alone (log_p_chain and log_q_chain
    are then None).
    Returns: ChainTerms, each [T, B].
    """
    num_steps = int(alpha.shape[0])
    draws = list(_infusion_draws(operator, x, prior_mean, prior_variance, alpha, delta_variance, seed,
                                 use_batch_statistics=use_batch_statistics, update_statistics=update_statistics,
                                 stop_gradient=stop_gradient))  # T x (z~(t), p(t)'s mean, variance)
    last = operator(draws[-1][0], step=num_steps - 1, use_batch_statistics=use_batch_statistics,
                    update_statistics=update_statistics)  # p(T)(. | z~(T-1)): only the last denoising term
    transitions = [(mean, variance) for _, mean, variance in draws[1:]] + [last]  # p(t+1)(. | z~(t))
    if not score_draws:
        log_p_target = tf.stack([_sum_dims(gaussian_log_prob(x, mean, variance)) for mean, variance in transitions])
        return ChainTerms(log_p_target, None, None, _sum_dims(tf.square(x - last[0])))
    per_step = [_step_terms(x, z_tilde, draw_mean, draw_variance, mean, variance, alpha[t], delta_variance)
                for t, ((z_tilde, draw_mean, draw_variance), (mean, variance)) in enumerate(zip(draws, transitions))]
    log_p_target, log_p_chain, log_q_chain = (tf.stack(terms) for terms in zip(*per_step))  # [T, B] each
    return ChainTerms(log_p_target, log_p_chain, log_q_chain, _sum_dims(tf.square(x - last[0])))


def infusion_trajectory(operator: Operator, x, prior_mean, prior_variance, alpha, delta_variance: float,
                        seed: tf.Tensor, *, use_batch_statistics: bool = True, record_products: bool = False):
    """Draws the infusion chain z~(0) .. z~(T-1) ~ q(z~ | x) without scoring it (Section 2.3.1).

    The first of the denoising training step's two passes: the draws are the ones `infusion_chain` makes
    with the same seed (both take them from `_infusion_draws`), T - 1 operator calls that update no batch
    statistics, and no gradient flows through them. `score_infusion_chain` then scores all steps in one
    batch of T * B rows, whose matrix products run much closer to the machine's peak than T products of
    B rows (docs/performance.md).
    `record_products=True` (an operator with `supports_replay`) also runs the operator on z~(T-1) and keeps
    the Dense layers' outputs of all T calls, so that the scoring pass replays them instead of computing the
    forward products a second time.
    x: float32 [B, ...]. Returns: float32 [T, B, ...]; with record_products, also the products, a list of
    [T * B, units] tensors in step-major order (row t * B + b), the layout of a step=None operator call.
    """
    recorded = []

    def recording(z, step, **kwargs):
        mean, variance, products = operator(z, step=step, return_products=True, **kwargs)
        recorded.append(products)
        return mean, variance

    draws = list(_infusion_draws(recording if record_products else operator, x, prior_mean, prior_variance, alpha,
                                 delta_variance, seed, use_batch_statistics=use_batch_statistics,
                                 update_statistics=False, stop_gradient=False))
    z_tilde = tf.stop_gradient(tf.stack([z for z, _, _ in draws]))
    if not record_products:
        return z_tilde
    recording(draws[-1][0], step=len(draws) - 1, use_batch_statistics=use_batch_statistics,
              update_statistics=False)  # p(T)(. | z~(T-1)): recorded for the scoring pass only
    products = [tf.stop_gradient(tf.concat(layer, axis=0)) for layer in zip(*recorded)]
    return z_tilde, products


def score_infusion_chain(operator: Operator, x, z_tilde, prior_mean, prior_variance, alpha, delta_variance: float,
                         *, use_batch_statistics: bool = True, update_statistics: bool = False,
                         products=None, score_draws: bool = True) -> ChainTerms:
    """Scores given infusion chains under p and q with one operator call for all T steps (Eq. 3's terms).

    z_tilde: [T, B, ...], z~(t) for t = 0 .. T-1 (from `infusion_trajectory`); x: [B, ...]. The operator
    runs with step=None on all of them at once: its row t is p(t+1)(. | z~(t)), normalized with step t's
    batch statistics, exactly as `infusion_chain` computes it one step at a time; `_step_terms` then scores
    the T steps as one batch.
    `products`: the Dense outputs `infusion_trajectory(record_products=True)` recorded on these draws; the
    operator replays them (no forward products) and only its backward products run on the T * B rows.
    `score_draws=False` computes only the denoising terms log p(t)(x | z~(t-1)), as in `infusion_chain`.
    Returns: ChainTerms, each [T, B], equal to `infusion_chain`'s for the same draws.
    """
    num_steps = int(z_tilde.shape[0])
    replay = {} if products is None else {"products": products}
    mean, variance = operator(z_tilde, step=None, use_batch_statistics=use_batch_statistics,
                              update_statistics=update_statistics, **replay)  # [T, B, ...]: p(t+1)(. | z~(t))
    if not score_draws:
        return ChainTerms(_sum_dims(gaussian_log_prob(x, mean, variance), 2), None, None,
                          _sum_dims(tf.square(x - mean[-1])))
    # The distribution each z~(t) was drawn from: p(0), then p(t)(. | z~(t-1)).
    prior_shaped = tf.zeros_like(z_tilde[:1])
    draw_mean = tf.concat([prior_shaped + prior_mean, mean[:-1]], axis=0)  # [T, B, ...]
    draw_variance = tf.concat([prior_shaped + prior_variance, variance[:-1]], axis=0)
    alpha_t = tf.reshape(tf.cast(alpha, tf.float32), [num_steps] + [1] * (len(z_tilde.shape) - 1))
    terms = _step_terms(x, z_tilde, draw_mean, draw_variance, mean, variance, alpha_t, delta_variance, batch_dims=2)
    return ChainTerms(*terms, _sum_dims(tf.square(x - mean[-1])))


def lower_bound_terms(terms: ChainTerms) -> tf.Tensor:
    """Per-step terms of the stochastic lower bound, Eq. 3, for one chain per example.

    Term t (t = 0 .. T-1) is log p(t)(z~(t) | .) - log q(t)(z~(t) | ., x); term T is log p(T)(x | z~(T-1)).
    Their sum over steps is log p(z~, x) - log q(z~ | x), the bound's integrand.
    Returns: float32 [T + 1, B].
    """
    return tf.concat([terms.log_p_chain - terms.log_q_chain, terms.log_p_target[-1:]], axis=0)


def infusion_log_weights(operator: Operator, x, prior_mean, prior_variance, alpha, delta_variance: float,
                         num_chains, seed: tf.Tensor) -> LogWeights:
    """k infusion chains per example scored under p and q: the importance log-weights of Eq. 2 with footnote 4,
    l = log p(z~, x) - log q(z~ | x), split into the T + 1 per-step terms of Eq. 3 (`lower_bound_terms`).

    x: float32 [B, ...]; num_chains: k (int or int32 scalar); seed: int32 [2]. The chains of one example are
    consecutive rows of one `infusion_chain` call, normalized with the moving (or recomputed) statistics.
    Returns: LogWeights(per_step float32 [T + 1, B, k], squared_error float32 [B, k] = ||x - mu_T||^2).
    """
    b = tf.shape(x)[0]
    terms = infusion_chain(operator, tf.repeat(x, num_chains, axis=0), prior_mean, prior_variance, alpha,
                           delta_variance, seed, use_batch_statistics=False)  # [T, B * k] each, example-major
    per_step = tf.reshape(lower_bound_terms(terms), [-1, b, num_chains])
    return LogWeights(per_step, tf.reshape(terms.final_squared_error, [b, num_chains]))


def sampling_chain(operator: Operator, prior_mean, prior_variance, num_samples, num_steps, seed: tf.Tensor, *,
                   return_means: bool = True, return_chain: bool = False, known=None, mask=None,
                   use_batch_statistics: bool = False):
    """The model sampling chain z(0) ~ p(0), z(t) ~ p(t)(. | z(t-1)) for t = 1 .. num_steps (Section 2.2).

    num_steps may exceed the trained T (steps past it reuse the last batch normalization, Section 4.2) and
    may be a tensor. With `known` [B, ...] and `mask` [B, ...] (1 = known pixel), known pixels are clamped
    to their values at every step (inpainting). `return_means` reads out the last step's mean instead of
    its sample, as the paper's figures do.
    Returns: [num_samples, ...], and with `return_chain` also [num_steps + 1, num_samples, ...]: z(0), then
    the mean (or sample) of every step.
    """
    clamp = (lambda z: z) if mask is None else (lambda z: mask * known + (1.0 - mask) * z)
    z0 = clamp(sample_prior(num_samples, prior_mean, prior_variance, _step_seed(seed, 0)))
    shown = tf.TensorArray(tf.float32, size=num_steps + 1, element_shape=z0.shape).write(0, z0)

    def step(t, z, _, shown):
        mean, variance = operator(z, step=t - 1, use_batch_statistics=use_batch_statistics, update_statistics=False)
        noise = tf.random.stateless_normal(tf.shape(mean), _step_seed(seed, t))
        z = clamp(mean + tf.sqrt(variance) * noise)
        out = clamp(mean) if return_means else z
        return t + 1, z, out, (shown.write(t, out) if return_chain else shown)

    _, _, last, shown = tf.while_loop(lambda t, *_: t <= num_steps, step,
                                      (tf.constant(1), z0, z0, shown))
    return (last, shown.stack()) if return_chain else last
