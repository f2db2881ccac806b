"""The k ladder of importance sampling from one set of log-weights, and the weights' effective sample size.

`eval/run.py --estimator importance_sampling --k K` draws fresh proposals for every K, so a ladder of several K
costs the sum of them, and for a model whose proposal is fitted per call (short_run_ot: Langevin chains per
example) the fitting is repeated for every K. Here the k = K_max log-weights l_1 .. l_K of each example are kept
([n, K] float64, from the model's `log_weights` through the same scorer as the shared estimators), and each rung
k of the ladder reads the first k of them (nested prefixes, one proposal per example):

    importance sampling  log (1/k) sum_{j<=k} exp(l_j)                       (Eq. 2 of the infusion paper)
    lower bound          (1/k) sum_{j<=k} l_j                                (Eq. 3)
    effective sample size  (sum_j w_j)^2 / sum_j w_j^2 = exp(2 lse(l) - lse(2 l)),  w_j = exp(l_j)   (Kong 1992)

An ESS near 1 out of k says one proposal carries the estimate: the estimate is then a lower bound in expectation
that has not converged (the proposal misses posterior mass), whatever its standard error over examples.

A long ladder (k = 20 000 on 1000 examples: 160 MB of log-weights) keeps, per example, only each rung's statistics
(`Rows`, `ladder_rows`: a few hundred bytes per example), from which `ladder_from_rows` gives the same rungs; so an
interrupted ladder's kept state is small enough to carry to another machine and continue there.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["Draws", "Rows", "log_weight_matrix", "ladder_rows", "rung_rows", "step_terms", "ladder", "ladder_from_rows",
           "ladder_markdown"]


@dataclasses.dataclass(frozen=True)
class Draws:
    """What the ladder keeps per example: the k log-weights, and the mean and variance over those k proposals of
    each per-step term of the log-weight (the model's `per_step`, e.g. Eq. 3's T + 1 terms of infusion)."""

    log_weights: np.ndarray  # float64 [n, k]
    step_means: np.ndarray  # float64 [n, S]
    step_variances: np.ndarray  # float64 [n, S]

    def __len__(self) -> int:
        return len(self.log_weights)

    @staticmethod
    def concatenate(parts: list["Draws"]) -> "Draws":
        return Draws(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Draws)))


def _scored_chunks(scorer, x: np.ndarray, k: int, seed: int, examples_per_call: int, start: int):
    """Yields the Draws of the examples x[first:first + examples_per_call] for first = start, start + b, ...; chunk c
    = first // b is scored with the seed [seed, c], so a run resumed at any chunk draws what an uninterrupted one
    draws."""
    import tensorflow as tf

    for first in range(start, len(x), examples_per_call):
        chunk = first // examples_per_call
        per_step, _ = scorer(x[first:first + examples_per_call], k, tf.constant([seed, chunk], tf.int32))  # [S, b, k]
        yield Draws(per_step.sum(axis=0), per_step.mean(axis=2).T, per_step.var(axis=2).T)


def log_weight_matrix(scorer, x: np.ndarray, k: int, seed: int, examples_per_call: int = 8,
                      done: Draws | None = None, on_chunk=None) -> Draws:
    """Log-weights l_j = log p(x, z_j) - log q(z_j | x) of k proposals per example ([n, k]), with their per-step
    terms' means and variances over the proposals ([n, S]).

    scorer: estimators.LogWeightScorer (any model of the protocol); x: float32 [n, ...]. The proposals of each
    example come from one call (one fitted proposal); chunk c of examples_per_call examples uses the seed
    [seed, c]. done: the Draws of the first examples from an interrupted run with the same settings, kept;
    on_chunk(draws_so_far) is called after each chunk (for a partial save).
    """
    parts = [done] if done is not None and len(done) else []
    for draws in _scored_chunks(scorer, x, k, seed, examples_per_call, len(done) if parts else 0):
        parts.append(draws)
        if on_chunk is not None:
            on_chunk(Draws.concatenate(parts))
    if not parts:
        return Draws(np.zeros((0, k)), np.zeros((0, 0)), np.zeros((0, 0)))
    return Draws.concatenate(parts)


@dataclasses.dataclass(frozen=True)
class Rows:
    """Per example and rung k (the columns, in the ladder's order), what `ladder_from_rows` needs of the first k
    log-weights: the importance-sampling estimate log (1/k) sum exp(l_j), their mean (the bound), the ESS, their
    standard deviation, largest and median; and the per-step terms' means and variances over the K proposals."""

    estimate: np.ndarray  # float64 [n, R]
    bound: np.ndarray  # [n, R]
    ess: np.ndarray  # [n, R]
    spread: np.ndarray  # [n, R]
    best: np.ndarray  # [n, R]
    median: np.ndarray  # [n, R]
    step_means: np.ndarray  # [n, S]
    step_variances: np.ndarray  # [n, S]

    def __len__(self) -> int:
        return len(self.estimate)

    @staticmethod
    def concatenate(parts: list["Rows"]) -> "Rows":
        return Rows(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Rows)))

    @staticmethod
    def of(draws: Draws, ks) -> "Rows":
        """The rows of `draws` (its log-weights reduced to the rungs ks)."""
        return Rows(**rung_rows(draws.log_weights, ks), step_means=draws.step_means,
                    step_variances=draws.step_variances)


def ladder_rows(scorer, x: np.ndarray, k: int, ks, seed: int, examples_per_call: int = 8, done: Rows | None = None,
                on_chunk=None) -> Rows:
    """As `log_weight_matrix` (the same proposals, chunks and seeds), but each chunk's [b, k] log-weights are
    reduced at once to their `Rows` for the rungs ks; done / on_chunk(rows_so_far) hold and receive Rows."""
    parts = [done] if done is not None and len(done) else []
    for draws in _scored_chunks(scorer, x, k, seed, examples_per_call, len(done) if parts else 0):
        parts.append(Rows.of(draws, ks))
        if on_chunk is not None:
            on_chunk(Rows.concatenate(parts))
    if not parts:
        return Rows.of(Draws(np.zeros((0, k)), np.zeros((0, 0)), np.zeros((0, 0))), ks)
    return Rows.concatenate(parts)


def step_terms(draws: Draws | Rows) -> list[dict]:
    """Per step s: the mean over examples and proposals of its term of log w, and the root mean over examples of
    its variance over the proposals. The steps whose terms vary most between proposals are those that spread the
    log-weights, and so the gap between importance sampling and the lower bound (about var(log w) / 2 while the
    weights are nearly log-normal, up to log k once one proposal dominates)."""
    return [{"step": s, "mean_nats": float(draws.step_means[:, s].mean()),
             "std_over_proposals": float(np.sqrt(draws.step_variances[:, s].mean()))}
            for s in range(draws.step_means.shape[1])]


def _logsumexp(values: np.ndarray) -> np.ndarray:
    top = values.max(axis=1, keepdims=True)
    return top[:, 0] + np.log(np.exp(values - top).sum(axis=1))


def rung_rows(log_weights: np.ndarray, ks) -> dict[str, np.ndarray]:
    """Per example (rows) and rung k of ks (columns, each <= log_weights.shape[1]), from the first k log-weights
    l [n, k]: estimate = lse(l) - log k (Eq. 2), bound = mean(l) (Eq. 3), ess = exp(2 lse(l) - lse(2 l)) in [1, k],
    spread = std(l) (0 at k = 1), best = max(l), median = median(l); each float64 [n, len(ks)]."""
    log_weights = np.asarray(log_weights, np.float64)
    n, available = log_weights.shape
    columns = {name: [] for name in ("estimate", "bound", "ess", "spread", "best", "median")}
    for k in ks:
        if not 1 <= k <= available:
            raise ValueError(f"a rung k = {k} needs 1 <= k <= {available} (the log-weights per example)")
        l = log_weights[:, :k]  # [n, k]
        columns["estimate"].append(_logsumexp(l) - math.log(k))
        columns["bound"].append(l.mean(axis=1))
        columns["ess"].append(np.exp(2.0 * _logsumexp(l) - _logsumexp(2.0 * l)))
        columns["spread"].append(l.std(axis=1, ddof=1) if k > 1 else np.zeros(n))
        columns["best"].append(l.max(axis=1))
        columns["median"].append(np.median(l, axis=1))
    return {name: np.stack(values, axis=1) if values else np.zeros((n, 0)) for name, values in columns.items()}


def ladder_from_rows(rows: Rows | dict, ks) -> list[dict]:
    """One dict per k of `ks` (the rows' columns): importance sampling and lower bound (mean over examples, nats,
    with the standard error over examples), the effective sample size of the k weights (mean, median, minimum over
    examples), and the mean over examples of the largest and of the median of the k log-weights. These split the
    gap between the two estimates: IS - bound = (max - median) + (median - mean) - (log k - log sum_j exp(l_j -
    max)); the first term is how far the best proposal is above a typical one, the second how far a long lower
    tail pulls the mean below a typical one, and the last is log k less the log of about the ESS."""
    get = rows.get if isinstance(rows, dict) else (lambda name: getattr(rows, name))
    n = len(get("estimate"))
    se = (lambda v: float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"))
    rungs = []
    for column, k in enumerate(ks):
        estimate, bound, ess = get("estimate")[:, column], get("bound")[:, column], get("ess")[:, column]  # [n]
        rungs.append({"k": int(k), "importance_sampling_nats": float(estimate.mean()),
                      # the gap decomposed: IS - bound = (max - median) + (median - mean) - (log k - log sum_j
                      # exp(l_j - max)); with ESS ~ 1 the last sum is ~1 and IS ~ the best of the k log-weights - log k
                      "max_log_weight_nats": float(get("best")[:, column].mean()),
                      "median_log_weight_nats": float(get("median")[:, column].mean()),
                      "importance_sampling_standard_error": se(estimate), "lower_bound_nats": float(bound.mean()),
                      "lower_bound_standard_error": se(bound), "ess_mean": float(ess.mean()),
                      "ess_median": float(np.median(ess)), "ess_min": float(ess.min()),
                      "log_weight_std_mean": float(get("spread")[:, column].mean()), "num_examples": int(n)})
    return rungs


def ladder(log_weights: np.ndarray, ks) -> list[dict]:
    """`ladder_from_rows` of the rows of log_weights [n, K] (float64) for the rungs ks (each <= K)."""
    return ladder_from_rows(rung_rows(log_weights, ks), ks)


def ladder_markdown(rungs: list[dict], per_step: list[dict]) -> str:
    """The ladder as two markdown tables, for a results page: one row per rung (importance sampling with its standard
    error over examples, the bound of the same draws, the median and largest log-weight, max - log k, the spread of
    the log-weights and the ESS), then the per-step terms (`step_terms`: mean, and root mean square over examples of
    the standard deviation over the draws). Numbers in nats."""
    lines = ["| k | importance sampling, Eq. 2 | lower bound of the same draws, Eq. 3 | median log w | max log w | "
             "max log w - log k | std of log w over the draws | ESS: mean / median / min |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rungs:
        k = r["k"]
        lines.append(f"| {k:,} | {r['importance_sampling_nats']:.1f} (s.e. {r['importance_sampling_standard_error']:.1f}) "
                     f"| {r['lower_bound_nats']:.1f} | {r['median_log_weight_nats']:.1f} | {r['max_log_weight_nats']:.1f} "
                     f"| {r['max_log_weight_nats'] - math.log(k):.1f} | {r['log_weight_std_mean']:.0f} "
                     f"| {r['ess_mean']:.2f} / {r['ess_median']:.2f} / {r['ess_min']:.2f} |".replace(",", " "))
    lines += ["", "| step | " + " | ".join(str(t["step"]) for t in per_step) + " |",
              "| --- |" + " --- |" * len(per_step),
              "| mean (nats) | " + " | ".join(f"{t['mean_nats']:.1f}" for t in per_step) + " |",
              "| spread over the draws (nats) | " + " | ".join(f"{t['std_over_proposals']:.0f}" for t in per_step) + " |"]
    return "\n".join(lines) + "\n"
