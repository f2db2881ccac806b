"""Energy distance (infusion_tf/energy_distance.py) against scipy and closed forms."""

import math

import numpy as np
import pytest
from scipy import stats

from infusion_tf.energy_distance import energy_distance


def test_v_statistic_is_scipys_in_one_dimension():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=300), rng.normal(0.5, 2.0, size=200)
    assert energy_distance(x, y, unbiased=False) == pytest.approx(stats.energy_distance(x, y) ** 2, rel=1e-9)


def test_point_masses_and_shifted_gaussians():
    a, b = np.array([[0.0, 0.0]] * 3), np.array([[3.0, 4.0]] * 5)
    assert energy_distance(a, b, unbiased=False) == pytest.approx(2 * 5.0)
    assert energy_distance(a, b) == pytest.approx(2 * 5.0)
    # 1-D N(0, 1) against N(mu, 1): E|X - Y| for X - Y ~ N(mu, 2), E|X - X'| = 2 / sqrt(pi).
    mu, n = 1.0, 4000
    rng = np.random.default_rng(1)
    s = math.sqrt(2)
    e_xy = s * math.sqrt(2 / math.pi) * math.exp(-mu**2 / (2 * s**2)) + mu * (1 - 2 * stats.norm.cdf(-mu / s))
    exact = 2 * e_xy - 2 * 2 / math.sqrt(math.pi)
    estimate = energy_distance(rng.normal(size=n), rng.normal(mu, 1, size=n))
    assert estimate == pytest.approx(exact, abs=0.02)  # the U-statistic's standard error here is about 0.005


def test_two_samples_of_one_law_are_about_zero_and_errors():
    rng = np.random.default_rng(2)
    values = [energy_distance(rng.normal(size=(500, 2)), rng.normal(size=(500, 2))) for _ in range(20)]
    assert abs(np.mean(values)) < 3 * np.std(values) / math.sqrt(20) + 1e-12
    with pytest.raises(ValueError, match="two samples"):
        energy_distance(np.zeros((5, 2)), np.zeros((5, 3)))
