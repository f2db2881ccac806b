"""Log-likelihood estimators of Section 2.4: the stochastic lower bound (Eq. 3) and importance sampling (Eq. 2).

Both start from k infusion chains z~ ~ q(z~ | x) per example and their log-weights
    l_j = log p(z~_j, x) - log q(z~_j | x)                                   (footnote 4)
The lower bound averages them, mean_j l_j (Eq. 3); the importance-sampling estimate is
    log (1/k) sum_j exp(l_j) = logsumexp_j(l_j) - log k                       (Eq. 2)
which is itself a lower bound on log p(x) in expectation that rises with k towards log p(x).

Chains are scored in calls of at most `rows_per_call` chains (examples x chains), so memory depends on
that chunk size and not on k; the per-example sums are accumulated in float64 on the host with a
streaming log-sum-exp. Evaluation uses the moving (or recomputed, `recompute_batch_norm_statistics`)
batch-normalization statistics, not the batch's.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from infusion_tf import chains

__all__ = ["LogWeightScorer", "ChainScorer", "ChainStatistics", "Estimate", "score_chains", "lower_bound", "importance_sampling",
           "examples_per_call", "isotropic_log_weights", "bits_per_dim", "recompute_batch_norm_statistics", "batch_norm_statistics",
           "set_batch_norm_statistics"]


class LogWeightScorer:
    """Scores k proposals per example of any model of the protocol (protocol.py): x [B, ...] -> log-weights.

    Wraps the model's `log_weights(x, k, seed)` in one traced tf.function (a variable batch size or k does
    not retrace). `from_model` takes any registered model; the constructor takes the function itself, so a
    test can plug in a model with a known answer.
    """

    def __init__(self, log_weights, example_shape):
        self.example_shape = tuple(int(s) for s in example_shape)
        self._log_weights = log_weights
        self._score = tf.function(self._score_eager, input_signature=[
            tf.TensorSpec([None, *self.example_shape], tf.float32),  # x, one row per example
            tf.TensorSpec([], tf.int32),  # proposals (chains) per example
            tf.TensorSpec([2], tf.int32),  # seed
        ])

    @staticmethod
    def from_model(model) -> "LogWeightScorer":
        """The scorer of any model of the protocol (ChainScorer.from_model too: the model knows its chain)."""
        return LogWeightScorer(model.log_weights, model.config.example_shape)

    @property
    def num_dims(self) -> int:
        return int(np.prod(self.example_shape))

    def _score_eager(self, x, num_chains, seed):
        weights = self._log_weights(x, num_chains, seed)
        if weights.squared_error is None:
            return weights.per_step, tf.zeros([0], tf.float32)  # no "isotropic" capability
        return weights.per_step, weights.squared_error

    def __call__(self, x, num_chains: int, seed) -> tuple[np.ndarray, np.ndarray | None]:
        """Returns float64 (per-step terms [S, B, c], squared errors [B, c] or None) for c proposals per example."""
        steps, sse = self._score(tf.convert_to_tensor(x, tf.float32), tf.constant(num_chains, tf.int32),
                                 tf.convert_to_tensor(seed, tf.int32))
        b = int(x.shape[0])
        per_step = np.asarray(steps, np.float64).reshape(-1, b, num_chains)
        return per_step, (np.asarray(sse, np.float64).reshape(b, num_chains) if sse.shape[0] else None)


class ChainScorer(LogWeightScorer):
    """The infusion chain's scorer from its parts (operator, prior, schedule): per-step terms [T + 1, B, c] of
    Eq. 3 and ||x - mu_T||^2 [B, c]. A test plugs in an operator with a known answer; a model uses from_model."""

    def __init__(self, operator, prior_mean, prior_variance, alpha, delta_variance: float, example_shape):
        alpha = tf.convert_to_tensor(alpha, tf.float32)

        def log_weights(x, num_chains, seed):
            return chains.infusion_log_weights(operator, x, prior_mean, prior_variance, alpha, float(delta_variance),
                                               num_chains, seed)

        super().__init__(log_weights, example_shape)


def isotropic_log_weights(per_step: np.ndarray, squared_error: np.ndarray, variance: float, num_dims: int) -> np.ndarray:
    """Log-weights with the last step's density replaced by N(x; mu_T, variance * I) (Table 2, isotropic).

    per_step: [T + 1, ...] terms; squared_error: [...] = ||x - mu_T||^2. Returns [...].
    log N(x; mu, s I) = -(d / 2) log(2 pi s) - ||x - mu||^2 / (2 s).
    """
    rest = per_step[:-1].sum(axis=0)
    return rest - 0.5 * num_dims * math.log(2.0 * math.pi * variance) - squared_error / (2.0 * variance)


@dataclasses.dataclass
class ChainStatistics:
    """Per-example float64 accumulators over k chains; `isotropic_*` have one row per isotropic variance."""

    num_chains: int
    log_sum_exp: np.ndarray  # [n] logsumexp_j l_j
    sum: np.ndarray  # [n] sum_j l_j
    sum_squares: np.ndarray  # [n] sum_j l_j^2
    per_step_sum: np.ndarray  # [T + 1] sum over examples and chains of each step's term
    isotropic_variances: np.ndarray  # [G]
    isotropic_log_sum_exp: np.ndarray  # [G, n]
    isotropic_sum: np.ndarray  # [G, n]

    def importance_sampling(self) -> np.ndarray:
        """Eq. 2 per example: logsumexp_j(l_j) - log k. [n]"""
        return self.log_sum_exp - math.log(self.num_chains)

    def lower_bound(self) -> np.ndarray:
        """Eq. 3 per example: mean_j l_j. [n]"""
        return self.sum / self.num_chains

    def per_step(self) -> np.ndarray:
        """Mean of each step's bound term over examples and chains. [T + 1]"""
        return self.per_step_sum / (self.num_chains * self.log_sum_exp.shape[0])


def score_chains(scorer: LogWeightScorer, x: np.ndarray, num_chains: int, seed: int, *, rows_per_call: int = 2048,
                 isotropic_variances=(), progress: bool = False, first_index: int | None = None) -> ChainStatistics:
    """Draws `num_chains` proposals (infusion chains, for the infusion model) for every example of x [n, ...] and
    accumulates their log-weights; isotropic_variances need a scorer that returns squared errors.

    Memory is bounded by rows_per_call (examples x chains per call), whatever num_chains. The examples are
    scored in blocks of E = `examples_per_call(num_chains, rows_per_call)`, each block's chains in chunks of
    min(k, rows_per_call); call c = block * chunks + chunk is seeded fold_in(chains.seed_pair(seed), c)
    (fold_in([seed, 0], c) for a seed below 2^31): a fixed seed and chunk size give identical results.

    first_index: row i of x is example first_index + i of the evaluated set (default 0), and blocks are counted
    in that numbering, so a set scored in slices that start at multiples of E (shards.shard_range with
    align=E) gives the same per-example values as one call on the whole set. Raises: ValueError for a
    first_index that is not a multiple of E.
    """
    if int(num_chains) < 1:
        raise ValueError(f"the number of chains k must be >= 1, got {num_chains}")
    if int(rows_per_call) < 1:
        raise ValueError(f"rows_per_call must be >= 1, got {rows_per_call}")
    x = np.asarray(x, np.float32)
    n, k = x.shape[0], int(num_chains)
    chains_per_call = min(k, int(rows_per_call))
    per_call = examples_per_call(k, rows_per_call)
    chunks = math.ceil(k / chains_per_call)
    offset = 0 if first_index is None else int(first_index)
    if offset < 0 or offset % per_call:
        raise ValueError(f"first_index must be a multiple of the {per_call} examples scored per call "
                         f"(k = {k}, rows_per_call = {rows_per_call}), got {first_index}")
    variances = np.asarray(isotropic_variances, np.float64).reshape(-1)
    stats = ChainStatistics(k, np.full(n, -np.inf), np.zeros(n), np.zeros(n), np.zeros(0),  # per_step_sum: [S] below
                            variances, np.full((len(variances), n), -np.inf), np.zeros((len(variances), n)))
    calls = math.ceil(n / per_call) * chunks
    bar = keras.utils.Progbar(calls, unit_name="call") if progress else None
    call = 0
    for start in range(0, n, per_call):
        rows = slice(start, min(n, start + per_call))
        block = (offset + start) // per_call  # in the evaluated set's numbering, whatever slice x is
        for chunk, first in enumerate(range(0, k, chains_per_call)):
            c = min(chains_per_call, k - first)
            step_seed = tf.random.experimental.stateless_fold_in(chains.seed_pair(seed), block * chunks + chunk)
            per_step, sse = scorer(x[rows], c, step_seed)  # [S, b, c], [b, c] or None
            if call == 0:
                stats.per_step_sum = np.zeros(per_step.shape[0])
                if len(variances) and sse is None:
                    raise ValueError("isotropic rescoring needs the last step's squared errors, which this model's "
                                     "log_weights does not return (the 'isotropic' capability)")
            _accumulate(stats, rows, per_step, sse, scorer.num_dims)
            call += 1
            if bar is not None:
                bar.update(call)
    return stats


def examples_per_call(num_chains: int, rows_per_call: int) -> int:
    """E, the examples one call of `score_chains` scores: rows_per_call // min(k, rows_per_call), at least 1.
    Slices of an evaluated set that start at multiples of E get the same per-example values as the whole set."""
    return max(1, int(rows_per_call) // min(int(num_chains), int(rows_per_call)))


def _accumulate(stats: ChainStatistics, rows: slice, per_step: np.ndarray, sse: np.ndarray, num_dims: int) -> None:
    log_w = per_step.sum(axis=0)  # [b, c]
    stats.log_sum_exp[rows] = np.logaddexp(stats.log_sum_exp[rows], _logsumexp(log_w))
    stats.sum[rows] += log_w.sum(axis=1)
    stats.sum_squares[rows] += np.square(log_w).sum(axis=1)
    stats.per_step_sum += per_step.sum(axis=(1, 2))
    for g, variance in enumerate(stats.isotropic_variances):
        iso = isotropic_log_weights(per_step, sse, variance, num_dims)
        stats.isotropic_log_sum_exp[g, rows] = np.logaddexp(stats.isotropic_log_sum_exp[g, rows], _logsumexp(iso))
        stats.isotropic_sum[g, rows] += iso.sum(axis=1)


def _logsumexp(values: np.ndarray) -> np.ndarray:
    """logsumexp over the last axis, stable for -inf rows."""
    top = values.max(axis=-1)
    safe = np.where(np.isfinite(top), top, 0.0)
    return safe + np.log(np.exp(values - safe[..., None]).sum(axis=-1))


@dataclasses.dataclass(frozen=True)
class Estimate:
    """An estimate of the average log p(x) over examples, in nats per example, with its per-step terms."""

    estimator: str
    per_example: np.ndarray  # float64 [n]
    num_chains: int
    per_step: np.ndarray | None = None  # float64 [T + 1], mean bound terms (term T is log p(T)(x | z~(T-1)))
    num_dims: int = 784
    quantized_8bit: bool = True  # data are 8-bit values dequantized into [0, 1]

    @property
    def mean_nats(self) -> float:
        return float(np.mean(self.per_example))

    @property
    def standard_error(self) -> float:
        """Standard error of the mean over examples."""
        n = self.per_example.shape[0]
        return float(np.std(self.per_example, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")

    @property
    def bits_per_dim(self) -> float:
        return bits_per_dim(self.mean_nats, self.num_dims, self.quantized_8bit)


def bits_per_dim(log_likelihood_nats: float, num_dims: int, quantized_8bit: bool = True) -> float:
    """Negative log-likelihood in bits per dimension.

    For 8-bit data dequantized into [0, 1] the density of x relates to the probability of the 8-bit
    values u by log P(u) >= log p(x) - d log 256 (Theis et al. 2016), so bits/dim = (d ln 256 - log p(x)) / (d ln 2);
    for continuous data, -log p(x) / (d ln 2).
    """
    offset = num_dims * math.log(256.0) if quantized_8bit else 0.0
    return (offset - log_likelihood_nats) / (num_dims * math.log(2.0))


def lower_bound(scorer: LogWeightScorer, x: np.ndarray, num_chains: int = 1, seed: int = 0, **kwargs) -> Estimate:
    """Stochastic lower bound of Eq. 3, averaged over `num_chains` chains per example."""
    stats = score_chains(scorer, x, num_chains, seed, **kwargs)
    return Estimate("lower_bound", stats.lower_bound(), num_chains, stats.per_step(), scorer.num_dims)


def importance_sampling(scorer: LogWeightScorer, x: np.ndarray, num_chains: int, seed: int = 0, **kwargs) -> Estimate:
    """Importance-sampling estimate of log p(x), Eq. 2 with footnote 4: logsumexp of k log-weights - log k."""
    stats = score_chains(scorer, x, num_chains, seed, **kwargs)
    return Estimate("importance_sampling", stats.importance_sampling(), num_chains, stats.per_step(), scorer.num_dims)


class _MomentPool:
    """Pools per-batch moments into moments over every example seen: Chan et al.'s parallel formula."""

    def __init__(self, num_steps: int, channels: int):
        self.count = np.zeros(num_steps)
        self.sum = np.zeros((num_steps, channels))
        self.sum_squares = np.zeros((num_steps, channels))

    def __call__(self, layer, step, mean, variance, count):
        step, count = int(step), float(count)
        mean, variance = np.asarray(mean, np.float64), np.asarray(variance, np.float64)
        self.count[step] += count
        self.sum[step] += count * mean
        self.sum_squares[step] += count * (variance + np.square(mean))

    def moments(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        mean = self.sum[step] / self.count[step]
        return mean, np.maximum(self.sum_squares[step] / self.count[step] - np.square(mean), 0.0)


def recompute_batch_norm_statistics(model, train_array: np.ndarray, *, batch_size: int = 500, seed: int = 0,
                                    progress: bool = False) -> dict[str, float]:
    """Sets every step's batch-norm statistics to the moments over the whole training set (Appendix A.1).

    Runs the infusion chain over `train_array` in training mode (batch statistics, as during training)
    and pools every batch's moments per layer and step. Steps are recomputed together: the inputs of
    step t depend on how the earlier steps normalized. Returns the largest change of any moving mean
    and variance, to show how much the choice matters.
    """
    from infusion_tf.data import make_eval_dataset

    layers = model.step_batch_norms()
    pools = {id(layer): _MomentPool(layer.num_steps, int(layer.moving_mean.shape[1])) for layer in layers}
    for layer in layers:
        layer.recorder = pools[id(layer)]
    dataset = make_eval_dataset(train_array, batch_size, seed=seed, dequantize=model.config.dequantize)
    bar = keras.utils.Progbar(math.ceil(len(train_array) / batch_size), unit_name="batch") if progress else None
    try:
        for i, x in enumerate(dataset):
            model.chain_terms(x, tf.constant([seed, i], tf.int32), use_batch_statistics=True)
            if bar is not None:
                bar.update(i + 1)
    finally:
        for layer in layers:
            layer.recorder = None
    change = {"max_abs_mean_change": 0.0, "max_rel_variance_change": 0.0}
    for layer in layers:
        pool = pools[id(layer)]
        for step in range(layer.num_steps):
            if pool.count[step] == 0:
                continue
            mean, variance = pool.moments(step)
            old_mean = layer.moving_mean.numpy()[step]
            old_var = layer.moving_variance.numpy()[step]
            change["max_abs_mean_change"] = max(change["max_abs_mean_change"], float(np.abs(mean - old_mean).max()))
            change["max_rel_variance_change"] = max(change["max_rel_variance_change"],
                                                    float(np.abs(variance / old_var - 1.0).max()))
            layer.set_statistics(step, mean, variance)
    return change


def batch_norm_statistics(model) -> dict[str, np.ndarray]:
    """Every step's batch-norm statistics: {"<layer index>/mean" and "/variance": float32 [T, C]}."""
    stats = {}
    for i, layer in enumerate(model.step_batch_norms()):
        stats[f"{i}/mean"] = layer.moving_mean.numpy()
        stats[f"{i}/variance"] = layer.moving_variance.numpy()
    return stats


def set_batch_norm_statistics(model, stats: dict[str, np.ndarray]) -> None:
    """Inverse of `batch_norm_statistics`. Raises ValueError if the layers or shapes do not match."""
    layers = model.step_batch_norms()
    if sorted(stats) != sorted(f"{i}/{kind}" for i in range(len(layers)) for kind in ("mean", "variance")):
        raise ValueError(f"statistics for {len(stats) // 2} batch-norm layers given, the model has {len(layers)}")
    for i, layer in enumerate(layers):
        for name, variable in (("mean", layer.moving_mean), ("variance", layer.moving_variance)):
            value = np.asarray(stats[f"{i}/{name}"], np.float32)
            if value.shape != tuple(variable.shape):
                raise ValueError(f"batch-norm layer {i} {name}: shape {value.shape}, model has {tuple(variable.shape)}")
            variable.assign(value)
