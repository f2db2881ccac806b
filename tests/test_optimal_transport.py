"""The optimal-transport correction (infusion_tf/optimal_transport.py): the exact matching against brute force
over all permutations of small sets, and the correction step inside a tf.function."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf

from infusion_tf import optimal_transport


@pytest.mark.parametrize("n", range(1, 8))
def test_matching_is_the_brute_force_optimum(n):
    rng = np.random.default_rng(n)
    z, targets = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    pi = optimal_transport.optimal_matching(z, targets)
    assert sorted(pi) == list(range(n))
    best = min(optimal_transport.matching_cost(z, targets, np.array(p)) for p in itertools.permutations(range(n)))
    assert optimal_transport.matching_cost(z, targets, pi) == pytest.approx(best, rel=1e-12)


def test_correction_moves_each_latent_alpha_of_the_way_to_its_match_inside_a_tf_function():
    rng = np.random.default_rng(0)
    z, targets = rng.normal(size=(6, 2)).astype(np.float32), rng.normal(size=(6, 2)).astype(np.float32)
    pi = optimal_transport.optimal_matching(z, targets)
    correct = tf.function(optimal_transport.transport_correction)
    np.testing.assert_allclose(correct(z, targets, 0.0), z)
    np.testing.assert_allclose(correct(z, targets, 1.0), targets[pi], atol=1e-6)
    np.testing.assert_allclose(correct(z, targets, 0.5), 0.5 * (z + targets[pi]), atol=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        optimal_transport.optimal_matching(z, targets[:5])
