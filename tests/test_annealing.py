"""Annealing schedules (infusion_tf/annealing.py) against numpy loops over the formulas of App. I.1 and App. B."""

import math

import numpy as np
import pytest

from infusion_tf import annealing


@pytest.mark.parametrize("lambda0", [10.0, 1.0, 0.1, -1.0, 0.0])
def test_linear_matches_a_loop_over_app_i1(lambda0):
    t_max = 70.0
    expected = [math.copysign(1.0, lambda0) * max(abs(lambda0) * (1 - t / t_max), 0.0) if lambda0 else 0.0
                for t in range(100)]
    got = annealing.linear_lambda(100, lambda0, t_max)
    assert got.dtype == np.float64 and got.shape == (100,)
    np.testing.assert_allclose(got, expected, rtol=1e-15, atol=0)
    assert got[0] == lambda0 and np.all(got[70:] == 0)


@pytest.mark.parametrize("lambda0", [10.0, -0.1])
def test_exponential_matches_a_loop_and_decays_to_zero(lambda0):
    tau = 5.0 / 200
    expected = [math.copysign(1.0, lambda0) * abs(lambda0) * math.exp(-tau * t) for t in range(200)]
    got = annealing.exponential_lambda(200, lambda0, tau)
    np.testing.assert_allclose(got, expected, rtol=1e-14)
    assert np.all(np.abs(np.diff(got)) > 0) and abs(got[-1]) < abs(lambda0) * math.exp(-4.9)


def test_sinusoidal_loops_five_cycles_between_lambda0_and_zero():
    got = annealing.sinusoidal_lambda(1000, 2.0)
    expected = [2.0 * 0.5 * (1 + math.cos(2 * math.pi * 5 * t / 1000)) for t in range(1000)]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    peaks = np.flatnonzero(np.isclose(got, 2.0))
    assert list(peaks) == [0, 200, 400, 600, 800] and got.min() == pytest.approx(0.0, abs=1e-15)


def test_betas_of_app_b():
    lam = np.array([0.0, 0.1, 1.0, 10.0, -0.5])
    np.testing.assert_allclose(annealing.beta_lik(lam), [1.0, 1.1, 2.0, 11.0, 0.5])
    np.testing.assert_allclose(annealing.beta_ent(lam), [1.0, 1 / 1.1, 0.5, 1 / 11, 2.0])
    # App. B: beta_lik (1 - 1 / beta_lik) = lambda and 1 / beta_ent - 1 = lambda.
    np.testing.assert_allclose(annealing.beta_lik(lam) * (1 - 1 / annealing.beta_lik(lam)), lam, atol=1e-15)
    np.testing.assert_allclose(1 / annealing.beta_ent(lam) - 1, lam, atol=1e-15)


def test_dispatch_and_errors():
    np.testing.assert_array_equal(annealing.lambda_schedule("linear", 10, 1.0, t_max=5),
                                  annealing.linear_lambda(10, 1.0, 5))
    with pytest.raises(ValueError, match="unknown annealing schedule 'step'; choose one of"):
        annealing.lambda_schedule("step", 10, 1.0)
    with pytest.raises(ValueError, match="t_max must be a finite number > 0, got 0"):
        annealing.linear_lambda(10, 1.0, 0)
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1"):
        annealing.exponential_lambda(0, 1.0, 0.1)
    with pytest.raises(ValueError, match=r"lambda must be > -1 .* got -1.0"):
        annealing.beta_ent([0.0, -1.0])


def test_annealed_beta_names_the_two_regularizations_of_app_b():
    lam = np.array([0.0, 1.0, -0.5, 9.0])
    np.testing.assert_allclose(annealing.annealed_beta("entropy", lam), [1.0, 0.5, 2.0, 0.1], rtol=1e-15)
    np.testing.assert_allclose(annealing.annealed_beta("likelihood", lam), [1.0, 2.0, 0.5, 10.0], rtol=1e-15)
    # The two forms reach the same temperature at lambda_lik = 1 / (1 + lambda_ent) - 1 (e.g. -0.5 and 1).
    assert annealing.annealed_beta("likelihood", -0.5) == annealing.annealed_beta("entropy", 1.0)
    with pytest.raises(ValueError, match="annealing form 'entropic'"):
        annealing.annealed_beta("entropic", 0.5)
    with pytest.raises(ValueError, match="> -1"):
        annealing.annealed_beta("likelihood", [0.0, -1.5])
