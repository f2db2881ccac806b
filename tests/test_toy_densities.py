"""Toy densities (infusion_tf/toy_densities.py): normalizers against 2-D quadrature, the banana against data.py."""

import math

import numpy as np
import pytest
from scipy import integrate

from infusion_tf import data, toy_densities


def _grid_integral(name: str, low, high, num: int = 1401) -> float:
    """int u over the box [low, high]^2-ish by the trapezoidal rule on a Cartesian grid (spectrally accurate for
    a smooth integrand that vanishes at the edges)."""
    x1 = np.linspace(low[0], high[0], num)
    x2 = np.linspace(low[1], high[1], num)
    points = np.stack(np.meshgrid(x1, x2, indexing="ij"), axis=-1)  # [num, num, 2]
    u = np.exp(toy_densities.log_unnormalized(name, points))
    return integrate.trapezoid(integrate.trapezoid(u, x2, axis=1), x1)


def test_banana_normalizer_is_4_pi_by_quadrature():
    assert toy_densities.banana_log_normalizer() == pytest.approx(math.log(4 * math.pi), abs=1e-15)
    value, error = integrate.dblquad(lambda x1, x2: math.exp(toy_densities.banana_log_unnormalized([x1, x2])),
                                     -16.0, 16.0, lambda x2: x2**2 / 4 - 12.0, lambda x2: x2**2 / 4 + 12.0,
                                     epsabs=1e-10, epsrel=1e-10)
    assert value == pytest.approx(4 * math.pi, rel=1e-8)


def test_kidney_normalizer_matches_a_cartesian_grid():
    polar = math.exp(toy_densities.kidney_log_normalizer())
    cartesian = _grid_integral("kidney", (-7.5, -7.5), (7.5, 7.5))
    assert polar == pytest.approx(cartesian, rel=1e-8)
    assert polar == pytest.approx(6.53715, abs=1e-5)  # the value docs/langevin.md quotes


def test_log_density_integrates_to_one_and_the_banana_is_datas():
    x = np.random.default_rng(0).normal(size=(50, 2)) * 3
    np.testing.assert_allclose(toy_densities.log_density("banana", x), data.banana_log_density(x), rtol=0, atol=0)
    np.testing.assert_allclose(toy_densities.log_density("banana", x),
                               toy_densities.banana_log_unnormalized(x) - math.log(4 * math.pi), atol=1e-12)
    mass = _grid_integral("kidney", (-7.5, -7.5), (7.5, 7.5)) / math.exp(toy_densities.log_normalizer("kidney"))
    assert mass == pytest.approx(1.0, abs=1e-8)


def test_kidney_matches_the_formula_of_app_i21():
    x = np.array([[2.0, 0.0], [0.3, -1.7], [-4.0, 5.0]])
    s1 = (np.linalg.norm(x, axis=1) - 2) / 0.4
    s2 = np.exp(-0.5 * ((x[:, 0] - 2) / 0.6) ** 2)
    s3 = np.exp(-0.5 * ((x[:, 0] + 2) / 0.6) ** 2)
    expected = -0.5 * s1**2 + np.log(s2 + s3)
    np.testing.assert_allclose(toy_densities.kidney_log_unnormalized(x), expected, rtol=1e-12, atol=1e-14)
    assert np.isfinite(toy_densities.kidney_log_unnormalized([40.0, 0.0]))  # s2 + s3 underflows; logaddexp does not


def test_banana_samples_have_the_exact_moments():
    x = toy_densities.banana_samples(20_000, seed=3)  # x2 ~ N(0, 4); x1 = x2^2 / 4 + N(0, 1): mean 1, var 1 + 2
    n = len(x)
    assert abs(x[:, 1].mean()) < 5 * 2 / math.sqrt(n)
    assert abs(x[:, 0].mean() - 1.0) < 5 * math.sqrt(3 / n)
    assert abs(x[:, 1].var() - 4.0) < 5 * 4 * math.sqrt(2 / n)


def test_unknown_names_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="unknown toy density 'moon'; choose one of"):
        toy_densities.log_density("moon", np.zeros(2))
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 2\]"):
        toy_densities.log_unnormalized("kidney", np.zeros((4, 3)))
