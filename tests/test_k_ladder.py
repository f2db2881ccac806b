"""infusion_tf/k_ladder.py against scipy and a Gaussian model whose log p(x) is known; eval/k_ladder.py end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import special, stats

from infusion_tf import k_ladder
from infusion_tf.estimators import LogWeightScorer
from infusion_tf.protocol import LogWeights


def test_rungs_equal_scipy_on_the_prefixes():
    l = np.random.default_rng(0).normal(3.0, 2.0, size=(50, 100))
    rungs = k_ladder.ladder(l, [1, 7, 100])
    for rung in rungs:
        k = rung["k"]
        estimate = special.logsumexp(l[:, :k], axis=1) - math.log(k)
        w = np.exp(l[:, :k])
        ess = w.sum(1) ** 2 / (w**2).sum(1)
        assert rung["importance_sampling_nats"] == pytest.approx(estimate.mean(), rel=1e-12)
        assert rung["importance_sampling_standard_error"] == pytest.approx(stats.sem(estimate), rel=1e-9)
        assert rung["lower_bound_nats"] == pytest.approx(l[:, :k].mean(), rel=1e-12)
        assert rung["ess_mean"] == pytest.approx(ess.mean(), rel=1e-9) and rung["ess_min"] >= 1 - 1e-12
    assert rungs[0]["ess_mean"] == pytest.approx(1.0) and rungs[0]["importance_sampling_nats"] == rungs[0][
        "lower_bound_nats"]
    assert k_ladder.ladder(np.zeros((3, 10)), [10])[0]["ess_min"] == pytest.approx(10.0)  # equal weights: ESS = k
    with pytest.raises(ValueError, match="1 <= k <= 100"):
        k_ladder.ladder(l, [101])


def gaussian_scorer():
    """x ~ N(0, 2) as z ~ N(0, 1), x | z ~ N(z, 1), proposal q(z | x) = N(0, 1): log w = log N(x; z, 1); the exact
    log p(x) = log N(x; 0, 2)."""
    def log_weights(x, k, seed):
        z = tf.random.stateless_normal(tf.stack([tf.shape(x)[0], k]), seed)
        return LogWeights(-0.5 * (math.log(2 * math.pi) + (x[:, None] - z) ** 2)[None])  # [1, B, k]

    return LogWeightScorer(log_weights, ())


def test_the_estimate_reaches_the_exact_log_likelihood_and_resumes_exactly():
    x = np.linspace(-1.0, 1.0, 40).astype(np.float32)
    scorer = gaussian_scorer()
    saved = []
    l = k_ladder.log_weight_matrix(scorer, x, 4000, seed=3, examples_per_call=16, on_chunk=saved.append)
    assert l.shape == (40, 4000) and [len(s) for s in saved] == [16, 32, 40]
    resumed = k_ladder.log_weight_matrix(scorer, x, 4000, seed=3, examples_per_call=16, done=saved[0])
    np.testing.assert_array_equal(resumed, l)
    exact = stats.norm.logpdf(x, 0, math.sqrt(2)).mean()
    top = k_ladder.ladder(l, [1, 4000])
    w = np.exp(l)  # the relative standard error of the mean weight bounds the error of its log
    tolerance = 5 * (w.std(1) / w.mean(1) / math.sqrt(4000)).max()
    assert abs(top[1]["importance_sampling_nats"] - exact) < tolerance
    assert top[0]["lower_bound_nats"] < exact  # Jensen: the bound is below log p(x) (by about 0.5 nats here)
    assert 0.5 * 4000 < top[1]["ess_mean"] < 4000  # a proposal near the posterior: most weights count
