"""Tests for infusion_tf.parzen: the Parzen-window estimate against scipy, chunking, sigma selection."""

import json
import warnings

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
    assert set(table) == set(parzen.sigma_grid(validation))  # the default: the grid of the data's scale
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


# --- the grid of kernel widths follows the data's scale


def _mnist_validation(n=1000):
    """The first n validation digits of the shipped MNIST as the evaluation sees them, float32 [n, 28, 28, 1]."""
    from infusion_tf import data

    splits = data.load_splits("mnist")
    return np.concatenate([np.asarray(b) for b in data.make_eval_dataset(splits.validation[:n], 1000, seed=1,
                                                                          dequantize=True)])


def test_sigma_grid_follows_its_documented_rule():
    """low = median nearest-neighbour distance / sqrt(d) / 4 (scipy's k-d tree), high = 2 sqrt(mean variance);
    the grid is 0.17 r^k inside [low, high], r = 17/16 unless that needs more than max_size widths, and no
    further step fits."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(4)
    points = rng.normal(size=(500, 3)) * [0.2, 0.1, 0.3]
    distances, _ = cKDTree(points).query(points, k=2)  # column 0: the point itself
    low, high = np.median(distances[:, 1]) / np.sqrt(3) / 4, 2 * np.sqrt(points.var(axis=0).mean())
    for max_size in (1000, 48, 10):
        ratio = max(parzen.GRID_RATIO, (high / low) ** (1 / (max_size - 1)))
        grid = np.array(parzen.sigma_grid(points, max_size=max_size))
        assert len(grid) <= max_size and np.all(np.diff(grid) > 0)
        np.testing.assert_allclose(grid[1:] / grid[:-1], ratio, rtol=1e-3)  # values have 4 significant digits
        assert parzen.PAPER_SIGMA in grid.tolist()
        assert low * (1 - 1e-3) <= grid[0] < low * ratio
        assert high / ratio < grid[-1] <= high * (1 + 1e-3)
    assert ratio > parzen.GRID_RATIO  # max_size 10 coarsened the steps


def test_sigma_grid_on_mnist_holds_the_papers_widths():
    """Table 1's protocol is unchanged on MNIST: the grid holds 0.16 and 0.17 (the shipped model's choices) and
    spans the paper's 0.05-0.30 in steps of 17/16."""
    grid = parzen.sigma_grid(_mnist_validation())
    assert 0.16 in grid and parzen.PAPER_SIGMA in grid
    assert grid[0] <= 0.051 and grid[-1] >= 0.30 and len(grid) <= 48


def test_mixture_bandwidth_lies_strictly_inside_the_grid():
    """On the 2-D ring of 8 Gaussians (component std 0.03 in [0, 1] coordinates) the fixed 0.05-0.30 grid is wider
    than a component: its best width is its edge. The data's grid holds the best width strictly inside, and the
    choice is a maximum of the validation log-likelihood computed directly (scipy_parzen)."""
    from infusion_tf import data

    samples = data.toy_samples("mixture_of_gaussians", 10_000, seed=5)
    validation = data.toy_samples("mixture_of_gaussians", 1000, seed=6)
    test = data.toy_samples("mixture_of_gaussians", 500, seed=7)
    with pytest.warns(parzen.ParzenGridWarning, match="smallest"):
        fixed = parzen.parzen_estimate(samples, validation, test, sigmas=parzen.DEFAULT_SIGMAS)
    assert fixed.at_edge and fixed.sigma == 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("error", parzen.ParzenGridWarning)
        result = parzen.parzen_estimate(samples, validation, test)
    grid = sorted(result.validation)
    assert grid == list(parzen.sigma_grid(validation)) and not result.at_edge
    assert grid[0] < result.sigma < grid[-1]
    i = grid.index(result.sigma)
    reference = [scipy_parzen(validation, samples, s).mean() for s in grid[i - 1:i + 2]]  # [below, chosen, above]
    assert reference[1] > max(reference[0], reference[2])
    # Against the true density of the ring (in [0, 1]^2: the raw density times the box's Jacobian 1 / 0.3^2):
    # the data's grid comes within 3 standard errors of it on the same test points, the fixed grid falls far short.
    true = np.mean(data.mixture_of_gaussians_log_density(data.toy_to_raw("mixture_of_gaussians", test))
                   + 2 * np.log(3.0 / 0.9))
    assert abs(result.mean_nats - true) < 3 * result.standard_error
    assert true - fixed.mean_nats > 10 * result.standard_error


@pytest.mark.parametrize("sigmas, side", [([0.3, 0.5, 1.0], "smallest"), ([0.01, 0.02, 0.03], "largest")])
def test_a_width_at_the_grid_edge_warns(sigmas, side):
    """Data of true kernel width 0.1 (test_select_sigma_recovers_the_true_kernel_width) on grids beyond it."""
    rng = np.random.default_rng(2)
    centres = rng.uniform(size=(300, 4))
    validation = centres[rng.integers(300, size=500)] + 0.1 * rng.standard_normal((500, 4))
    with pytest.warns(parzen.ParzenGridWarning, match=side):
        result = parzen.parzen_estimate(centres, validation, validation[:50], sigmas=sigmas)
    assert result.at_edge and result.sigma == (sigmas[0] if side == "smallest" else sigmas[-1])
    assert result.to_dict()["at_edge"] is True


def test_a_single_width_is_not_an_edge():
    rng = np.random.default_rng(8)
    x = rng.uniform(size=(20, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", parzen.ParzenGridWarning)
        assert not parzen.parzen_estimate(x, x, x, sigmas=[0.2]).at_edge


@pytest.mark.parametrize("points, match", [(np.zeros((1, 3)), "at least 2"), (np.ones((10, 3)), "all equal"),
                                           (np.zeros((10, 3), np.uint8), "floating")])
def test_sigma_grid_bad_data_raise(points, match):
    with pytest.raises(ValueError, match=match):
        parzen.sigma_grid(points)
