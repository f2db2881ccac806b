"""Bayesian logistic regression on the Cancer data with the paired-flow sampler, against NUTS (Tao et al. 2019, I.2.3).

Table 2 of the supplement: Cancer, 285 training and 284 test rows (its "32 features" count the 30 measurements of
the Wisconsin diagnostic data with its id and label columns). scikit-learn ships the data (`load_breast_cancer`, 569
rows, 30 features), so nothing is downloaded. What the supplement leaves open, and what we chose:
- the split: a random permutation with a fixed seed, the first 285 rows for training;
- features standardized with the training rows' mean and standard deviation, plus a constant 1 (the bias): D = 31;
- the prior w ~ N(0, I), so log u(w) = sum_i log sigmoid(s_i x_i . w) - ||w||^2 / 2, s_i = +-1 the label.
Predictions average over posterior samples: p(y = 1 | x) = mean_s sigmoid(x . w_s); test accuracy thresholds it at
1/2, test log-likelihood is mean_i log p(y_i | x_i). The reference is a long run of TFP's NUTS.

    python -m infusion_tf.bayes_logreg --output-dir runs/langevin/cancer
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

from infusion_tf.console import parse_settings
from infusion_tf.files import write_json

__all__ = ["CancerSplit", "load_cancer", "log_posterior", "predictive", "nuts_samples", "LogRegSettings", "run", "main"]

TRAIN_ROWS = 285  # Table 2


@dataclasses.dataclass(frozen=True)
class CancerSplit:
    x_train: np.ndarray  # float32 [285, 31], standardized features and a final column of ones
    y_train: np.ndarray  # float32 [285] in {0, 1}
    x_test: np.ndarray  # float32 [284, 31]
    y_test: np.ndarray  # float32 [284]


def load_cancer(seed: int = 0) -> CancerSplit:
    """The Wisconsin diagnostic breast-cancer data (scikit-learn), split 285 / 284 by a permutation with `seed`."""
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError:
        raise ImportError("the Cancer data come with scikit-learn: pip install -e \".[baselines]\" "
                          "(or pip install scikit-learn)") from None

    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    train, test = order[:TRAIN_ROWS], order[TRAIN_ROWS:]
    mean, std = x[train].mean(0), x[train].std(0)

    def features(rows):
        return np.concatenate([(x[rows] - mean) / std, np.ones((len(rows), 1))], axis=1).astype(np.float32)

    return CancerSplit(features(train), y[train].astype(np.float32), features(test), y[test].astype(np.float32))


def log_posterior(x: np.ndarray, y: np.ndarray, prior_scale: float = 1.0):
    """log u(w) = sum_i log sigmoid(s_i x_i . w) + log N(w; 0, prior_scale^2 I) up to its constant.

    x float [N, D], y {0, 1} [N]. Returns a TensorFlow function: float32 w [n, D] -> [n].
    """
    import tensorflow as tf

    x_t = tf.constant(x, tf.float32)
    signs = tf.constant(2.0 * np.asarray(y) - 1.0, tf.float32)

    def log_u(w):
        logits = tf.matmul(w, x_t, transpose_b=True)  # [n, N]
        return (tf.reduce_sum(tf.math.log_sigmoid(signs * logits), axis=-1)
                - 0.5 * tf.reduce_sum(tf.square(w), axis=-1) / prior_scale**2)

    return log_u


def predictive(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict:
    """Posterior-predictive test accuracy and mean log-likelihood of samples w [S, D] on x [N, D], y [N] in {0, 1}."""
    logits = np.asarray(w, np.float64) @ np.asarray(x, np.float64).T  # [S, N]
    log_p1 = -np.logaddexp(0.0, -logits)
    log_p0 = -np.logaddexp(0.0, logits)
    log_mean_p1 = np.logaddexp.reduce(log_p1, axis=0) - math.log(len(w))  # [N]
    log_mean_p0 = np.logaddexp.reduce(log_p0, axis=0) - math.log(len(w))
    log_lik = np.where(y > 0.5, log_mean_p1, log_mean_p0)
    return {"accuracy": float(np.mean((log_mean_p1 > math.log(0.5)) == (y > 0.5))),
            "log_likelihood": float(log_lik.mean()), "log_likelihood_se": float(log_lik.std(ddof=1) / math.sqrt(len(y)))}


def nuts_samples(log_u, dim: int, num_chains: int, num_warmup: int, num_samples: int, seed: int) -> dict:
    """NUTS (TFP), step size adapted by dual averaging over the warm-up; chains start at N(0, 0.01 I).

    Returns samples [chains, num_samples, dim], R-hat and effective sample size per coordinate, mean acceptance.
    """
    import tensorflow as tf
    import tensorflow_probability as tfp

    kernel = tfp.mcmc.DualAveragingStepSizeAdaptation(
        tfp.mcmc.NoUTurnSampler(lambda w: log_u(w), step_size=0.05),
        num_adaptation_steps=int(0.8 * num_warmup), target_accept_prob=0.8)
    init = 0.1 * tf.random.stateless_normal([num_chains, dim], [seed, 1])

    @tf.function(jit_compile=True)
    def sample():
        return tfp.mcmc.sample_chain(num_samples, init, kernel=kernel, num_burnin_steps=num_warmup,
                                     trace_fn=lambda _, r: r.inner_results.log_accept_ratio, seed=[seed, 2])

    draws, log_accept = sample()  # [S, chains, dim]
    r_hat = tfp.mcmc.potential_scale_reduction(draws)
    ess = tfp.mcmc.effective_sample_size(draws, cross_chain_dims=1)  # [dim], over all chains
    accept = tf.reduce_mean(tf.minimum(1.0, tf.exp(log_accept)))
    return {"samples": tf.transpose(draws, [1, 0, 2]).numpy(), "r_hat_max": float(tf.reduce_max(r_hat)),
            "ess_min": float(tf.reduce_min(ess)), "accept": float(accept)}


@dataclasses.dataclass(frozen=True)
class LogRegSettings:
    split_seed: int = 0  # the permutation of the 569 rows
    nuts_chains: int = 4
    nuts_warmup: int = 1000  # per chain; the step size adapts over the first 80%
    nuts_samples: int = 5000  # per chain, kept
    steps: int = 3000  # paired-flow training steps
    lambda0: float = 1.0  # linear annealing of lambda to 0 at 0.9 steps; beta_ent = 1 / (1 + lambda)
    batch_size: int = 256
    blocks: int = 8  # MAF blocks (App. I.2.2)
    hidden: int = 512  # units of the MADE's two hidden layers (App. I.2.2)
    learning_rate: float = 1e-3  # Adam, generator and flow
    num_samples: int = 4000  # samples of each paired-flow sampler scored
    seed: int = 0  # NUTS and paired-flow seed


def _moments(w: np.ndarray, reference: np.ndarray) -> dict:
    """How far samples' means and standard deviations lie from the reference's, in reference standard deviations."""
    ref_mean, ref_std = reference.mean(0), reference.std(0)
    return {"max_abs_mean_error_in_sd": float(np.max(np.abs(w.mean(0) - ref_mean) / ref_std)),
            "median_std_ratio": float(np.median(w.std(0) / ref_std)),
            "min_std_ratio": float(np.min(w.std(0) / ref_std)), "max_std_ratio": float(np.max(w.std(0) / ref_std))}


def run(s: LogRegSettings, output_dir: str) -> dict:
    from infusion_tf import annealing, paired_flow, provenance

    start, cpu = time.time(), time.process_time()
    os.makedirs(output_dir, exist_ok=True)
    split = load_cancer(s.split_seed)
    dim = split.x_train.shape[1]
    log_u = log_posterior(split.x_train, split.y_train)
    t0, c0 = time.time(), time.process_time()
    nuts = nuts_samples(log_u, dim, s.nuts_chains, s.nuts_warmup, s.nuts_samples, s.seed)
    reference = nuts.pop("samples").reshape(-1, dim)
    results = {"settings": dataclasses.asdict(s), "dim": dim,
               "nuts": {**nuts, **predictive(reference, split.x_test, split.y_test),
                        "train": predictive(reference, split.x_train, split.y_train),
                        "wall_s": time.time() - t0, "cpu_s": time.process_time() - c0}, "paired_flow": []}
    np.save(os.path.join(output_dir, "nuts_samples.npy"), reference)
    for lambda0 in (0.0, s.lambda0):
        lambdas = annealing.linear_lambda(s.steps, lambda0, 0.9 * s.steps) if lambda0 else np.zeros(1)
        sampler = paired_flow.PairedFlowSampler(dim, log_u, annealing.beta_ent(lambdas), blocks=s.blocks,
                                                hidden=(s.hidden, s.hidden), batch_size=s.batch_size,
                                                learning_rate=s.learning_rate, flow_learning_rate=s.learning_rate,
                                                seed=s.seed)
        t0, c0 = time.time(), time.process_time()
        history = sampler.train(s.steps, log_every=max(1, s.steps // 10), printer=lambda line: print(line, flush=True))
        row = {"lambda0": lambda0, "train_wall_s": time.time() - t0, "train_cpu_s": time.process_time() - c0,
               "history": history}
        x_flow, log_nu = sampler.flow_samples(s.num_samples, seed=s.seed + 100)
        x_gen = sampler.generate(s.num_samples, seed=s.seed + 200).numpy()
        for name, x, log_r in (("flow", x_flow, log_nu), ("generator_nu_as_density", x_gen, sampler.log_nu(x_gen))):
            row[name] = {**predictive(x, split.x_test, split.y_test), **_moments(x, reference),
                         **paired_flow.importance_diagnostics(log_u(x).numpy(), log_r)}
        results["paired_flow"].append(row)
        np.savez(os.path.join(output_dir, f"paired_flow_lambda{lambda0:g}.npz"), flow=x_flow, generator=x_gen)
    results.update({"command": "python -m infusion_tf.bayes_logreg " + " ".join(sys.argv[1:]),
                    "environment": provenance.environment(), "wall_s": time.time() - start,
                    "cpu_s": time.process_time() - cpu})
    write_json(os.path.join(output_dir, "results.json"), results, indent=1)
    return results


def main(argv=None) -> int:
    settings, output_dir = parse_settings(LogRegSettings, argv, __doc__.split("\n\n")[0],
                                          prog="python -m infusion_tf.bayes_logreg")
    results = run(settings, output_dir)
    summary = {"nuts": {k: v for k, v in results["nuts"].items() if k != "train"},
               "paired_flow": [{k: v for k, v in r.items() if k != "history"} for r in results["paired_flow"]]}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
