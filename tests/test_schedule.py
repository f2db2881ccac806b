"""Tests of infusion_tf.schedule: alpha(t) (Section 2.3.1, footnote 2) and eta(t) (footnote 3)."""

import math

import numpy as np
import pytest

from infusion_tf.schedule import denoising_weights, infusion_rates


def _alpha_loop(num_steps, alpha0, omega):
    """Reference: the recursion alpha(t) = alpha(t-1) + omega, alpha(0) = alpha0, as footnote 2 writes it."""
    alpha = [alpha0]
    for _ in range(1, num_steps):
        alpha.append(alpha[-1] + omega)
    return np.array(alpha)


@pytest.mark.parametrize("num_steps, alpha0, omega", [
    (15, 0.0, 0.01),  # the paper's MNIST schedule
    (20, 0.0, 0.02),  # CIFAR-10
    (5, 0.2, 0.1),
    (1, 0.5, 0.3),    # a single step: only alpha(0)
    (4, 0.0, 0.0),
])
def test_increasing_matches_recursion(num_steps, alpha0, omega):
    alpha = infusion_rates(num_steps, alpha0, omega)
    assert alpha.dtype == np.float64
    assert alpha.shape == (num_steps,)
    np.testing.assert_allclose(alpha, _alpha_loop(num_steps, alpha0, omega), rtol=0, atol=1e-12)


def test_paper_schedule_values():
    alpha = infusion_rates(15, 0.0, 0.01)
    assert alpha[0] == 0.0
    assert alpha[-1] == pytest.approx(0.14, abs=1e-12)


@pytest.mark.parametrize("num_steps, alpha0, omega, kind", [
    (15, 0.0, 0.01, "increasing"),
    (10, 0.05, 0.1, "increasing"),
    (2, 0.9, 0.1, "increasing"),   # ends exactly at 1
    (7, 0.3, 0.5, "constant"),     # omega is ignored by the constant schedule
])
def test_monotone_within_unit_interval(num_steps, alpha0, omega, kind):
    alpha = infusion_rates(num_steps, alpha0, omega, kind)
    assert np.all(np.diff(alpha) >= 0.0)
    assert np.all((alpha >= 0.0) & (alpha <= 1.0))


def test_constant_schedule():
    alpha = infusion_rates(6, 0.25, 0.5, kind="constant")
    np.testing.assert_array_equal(alpha, np.full(6, 0.25))


def test_endpoints_zero_and_one_are_allowed():
    np.testing.assert_array_equal(infusion_rates(3, 1.0, 0.0), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(infusion_rates(3, 0.0, 0.0), [0.0, 0.0, 0.0])
    np.testing.assert_allclose(infusion_rates(2, 0.9, 0.1), [0.9, 1.0], atol=1e-15)


@pytest.mark.parametrize("num_steps, alpha0, omega, kind, step, value", [
    (3, 0.9, 0.1, "increasing", 2, "1.1"),    # alpha(2) = 1.1
    (15, 0.0, 0.1, "increasing", 11, "1.1"),  # alpha(11) = 1.1 is the first past 1
    (3, -0.1, 0.1, "increasing", 0, "-0.1"),
    (3, 0.5, -0.3, "increasing", 2, "-0.1"),
    (4, 1.5, 0.0, "constant", 0, "1.5"),
])
def test_out_of_range_names_step_and_value(num_steps, alpha0, omega, kind, step, value):
    with pytest.raises(ValueError) as info:
        infusion_rates(num_steps, alpha0, omega, kind)
    message = str(info.value)
    assert f"alpha({step})" in message
    assert value in message
    assert "[0, 1]" in message


def test_nan_rate_is_rejected():
    with pytest.raises(ValueError, match=r"alpha\(0\)"):
        infusion_rates(3, math.nan, 0.01)


@pytest.mark.parametrize("num_steps", [0, -1, 2.5, True])
def test_bad_num_steps(num_steps):
    with pytest.raises(ValueError, match="num_steps"):
        infusion_rates(num_steps, 0.0, 0.01)
    with pytest.raises(ValueError, match="num_steps"):
        denoising_weights(num_steps)


def test_unknown_kind():
    with pytest.raises(ValueError, match="linear"):
        infusion_rates(3, 0.0, 0.01, kind="linear")


@pytest.mark.parametrize("num_steps, eta0", [(15, 1.0), (4, 0.5), (1, 2.0)])
def test_denoising_weights(num_steps, eta0):
    eta = denoising_weights(num_steps, eta0)
    expected = np.array([eta0 * t / num_steps for t in range(1, num_steps + 1)])
    assert eta.dtype == np.float64
    assert eta.shape == (num_steps,)
    np.testing.assert_allclose(eta, expected, rtol=1e-15)
    assert eta[-1] == pytest.approx(eta0)  # eta(T) = eta0
    assert np.all(np.diff(eta) > 0)
