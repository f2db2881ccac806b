"""Tests for infusion_tf.parzen: the Parzen-window estimate against scipy, chunking, sigma selection."""

import json

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from infusion_tf import parzen


def scipy_parzen(x: np.ndarray, samples: np.ndarray, sigma: float) -> np.ndarray:
    """Direct reference: the full [n, N] distance matrix and scipy's logsumexp, float64."""
    x, samples = x.reshape(len(x), -1).astype(np.float64), samples.reshape(len(samples), -1).astype(np.float64)
    sq = np.sum((x[:, None, :] - samples[None, :, :]) ** 2, axis=-1)  # [n, N]
    d = x.shape[1]
    return logsumexp(-sq / (2 * sigma**2), axis=1) - np.log(len(samples)) - d / 2 * np.log(2 * np.pi * sigma**2)


@pytest.fixture(scope="module")
def rng_data():
    rng = np.random.default_rng(0)
    samples = rng.uniform(size=(300, 4, 4, 1))  # image-shaped, flattened to d = 16
    x = rng.uniform(size=(70, 4, 4, 1))
    return x, samples


@pytest.mark.parametrize("sigma", [0.05, 0.17, 0.5])
def test_matches_scipy_logsumexp(rng_data, sigma):
    x, samples = rng_data
    np.testing.assert_allclose(parzen.parzen_log_likelihood(x, samples, sigma, chunk_size=32),
                               scipy_parzen(x, samples, sigma), rtol=1e-6)


def test_single_sample_is_a_gaussian_density():
    rng = np.random.default_rng(1)
    centre, x, sigma = rng.uniform(size=(1, 10)), rng.uniform(size=(25, 10)), 0.3
    expected = stats.multivariate_normal(mean=centre[0], cov=sigma**2 * np.eye(10)).logpdf(x)
    np.testing.assert_allclose(parzen.parzen_log_likelihood(x, centre, sigma), expected, rtol=1e-6)


def test_far_points_do_not_underflow():
    """Kernels that all underflow exp() still give the finite logsumexp value."""
    x, samples = np.full((3, 20), 5.0), np.zeros((4, 20))
    ll = parzen.parzen_log_likelihood(x, samples, 0.05)
    np.testing.assert_allclose(ll, scipy_parzen(x, samples, 0.05), rtol=1e-9)
    assert np.all(np.isfinite(ll))


def test_chunk_size_does_not_change_the_result(rng_data):
    x, samples = rng_data
    reference = parzen.parzen_log_likelihood(x, samples, 0.2, chunk_size=10_000)
    for chunk in (9, 23, 64):
        np.testing.assert_allclose(parzen.parzen_log_likelihood(x, samples, 0.2, chunk_size=chunk), reference,
                                   rtol=1e-12)


def test_several_sigmas_equal_one_at_a_time(rng_data):
    x, samples = rng_data
    sigmas = [0.1, 0.2, 0.3]
    together = parzen.parzen_log_likelihoods(x, samples, sigmas, chunk_size=16)
    assert together.shape == (3, len(x)) and together.dtype == np.float64
    for row, sigma in zip(together, sigmas):
        np.testing.assert_allclose(row, parzen.parzen_log_likelihood(x, samples, sigma), rtol=1e-12)


def test_float32_input_is_accepted(rng_data):
    x, samples = rng_data
    np.testing.assert_allclose(parzen.parzen_log_likelihood(x.astype(np.float32), samples.astype(np.float32), 0.2),
                               scipy_parzen(x.astype(np.float32), samples.astype(np.float32), 0.2), rtol=1e-6)


def test_select_sigma_recovers_the_true_kernel_width():
    """Data drawn from the Parzen mixture itself (centres + N(0, 0.1^2)): the best sigma is close to 0.1."""
    rng = np.random.default_rng(2)
    centres = rng.uniform(size=(500, 8))
    validation = centres[rng.integers(500, size=2000)] + 0.1 * rng.standard_normal((2000, 8))
    best, table = parzen.select_sigma(validation, centres)
    assert set(table) == set(parzen.DEFAULT_SIGMAS)
    assert abs(best - 0.1) <= 0.01, table
    assert table[best] == max(table.values())


def test_default_sigmas_hold_the_paper_value():
    assert parzen.PAPER_SIGMA in parzen.DEFAULT_SIGMAS
    assert parzen.DEFAULT_SIGMAS[0] == 0.05 and parzen.DEFAULT_SIGMAS[-1] == 0.3


def test_parzen_estimate_protocol():
    rng = np.random.default_rng(3)
    centres = rng.uniform(size=(400, 6))

    def draw(n):
        return centres[rng.integers(400, size=n)] + 0.15 * rng.standard_normal((n, 6))

    validation, test = draw(800), draw(600)
    result = parzen.parzen_estimate(centres, validation, test, sigmas=[0.05, 0.1, 0.15, 0.2, 0.3])
    assert result.sigma == 0.15
    ll = scipy_parzen(test, centres, 0.15)
    np.testing.assert_allclose(result.mean_nats, ll.mean(), rtol=1e-9)
    np.testing.assert_allclose(result.standard_error, ll.std() / np.sqrt(600), rtol=1e-9)
    assert (result.num_samples, result.num_examples) == (400, 600)
    assert sorted(result.validation) == [0.05, 0.1, 0.15, 0.2, 0.3]
    json.dumps(result.to_dict())
    with pytest.raises(Exception):
        result.sigma = 1.0  # frozen


@pytest.mark.parametrize("kwargs, match", [
    (dict(x=np.zeros((2, 3), np.uint8)), "floating"),
    (dict(samples=np.zeros((5, 4))), "values per example"),
    (dict(sigma=0.0), "sigma"),
    (dict(sigma=-1.0), "sigma"),
    (dict(sigma=[0.1, 0.2]), "single number"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(x=np.full((2, 3), np.nan)), "NaN"),
    (dict(samples=np.zeros((0, 3))), "non-empty"),
])
def test_bad_arguments_raise(kwargs, match):
    arguments = dict(x=np.zeros((2, 3)), samples=np.zeros((5, 3)), sigma=0.1, chunk_size=10)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        parzen.parzen_log_likelihood(**arguments)
