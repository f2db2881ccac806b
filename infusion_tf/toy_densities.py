"""Toy 2-D densities with exact log densities: banana (App. F) and kidney (App. I.2.1) of Tao et al. (2019).

Both are given by an unnormalized log density log u(x) at raw points x = (x1, x2); log p = log u - log Z.

banana (App. F):  log u(x) = -1/2 (x2^2 / 4 + (x1 - x2^2 / 4)^2), i.e. x2 ~ N(0, 4), x1 | x2 ~ N(x2^2 / 4, 1),
                  so Z = 2 pi * 2 = 4 pi in closed form. The normalized density and the exact sampler are
                  `data.banana_log_density` and `data.toy_samples("banana", ...)`, reused here.
kidney (App. I.2.1): with s1 = (||x|| - 2) / 0.4, s2 = exp(-1/2 ((x1 - 2) / 0.6)^2), s3 = exp(-1/2 ((x1 + 2) / 0.6)^2),
                  log u(x) = -1/2 s1^2 + log(s2 + s3). The supplement prints the potential U = -log u
                  (1/2 s1^2 - log(s2 + s3)) under the name log u; exp(+1/2 s1^2) is not integrable, so the density
                  is exp(-U), as in the issue and in Rezende & Mohamed (2015), where this potential comes from.
                  Z has no closed form: `kidney_log_normalizer` integrates u in polar coordinates with scipy.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import integrate

from infusion_tf import data

__all__ = ["TOY_DENSITIES", "banana_log_unnormalized", "banana_log_normalizer", "kidney_log_unnormalized",
           "kidney_log_normalizer", "log_unnormalized", "log_normalizer", "log_density", "banana_samples",
           "kidney_raw_samples", "kidney_samples", "exact_samples", "toy_affine"]

TOY_DENSITIES = ("banana", "kidney")
_KIDNEY_RADIUS, _KIDNEY_WIDTH, _KIDNEY_CENTER, _KIDNEY_SPREAD = 2.0, 0.4, 2.0, 0.6


def _check_points(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim == 0 or x.shape[-1] != 2:
        raise ValueError(f"toy density points must have shape [..., 2], got {x.shape}")
    return x


def banana_log_unnormalized(x) -> np.ndarray:
    """log u(x) = -1/2 (x2^2 / 4 + (x1 - x2^2 / 4)^2) (App. F). x: float [..., 2] raw points; returns float64 [...]."""
    x = _check_points(x)
    x1, x2 = x[..., 0], x[..., 1]
    return -0.5 * (x2**2 / 4 + (x1 - x2**2 / 4) ** 2)


def banana_log_normalizer() -> float:
    """log Z of the banana, closed form: integrating x1 then x2 gives sqrt(2 pi) * sqrt(2 pi * 4) = 4 pi."""
    return math.log(4 * math.pi)


def kidney_log_unnormalized(x) -> np.ndarray:
    """log u(x) = -1/2 s1(x)^2 + log(s2(x) + s3(x)) (App. I.2.1, the negated potential). float [..., 2] -> float64 [...].

    log(s2 + s3) is a logaddexp of the two exponents, so points far from x1 = +-2 give no log(0).
    """
    x = _check_points(x)
    s1 = (np.linalg.norm(x, axis=-1) - _KIDNEY_RADIUS) / _KIDNEY_WIDTH
    log_s2 = -0.5 * ((x[..., 0] - _KIDNEY_CENTER) / _KIDNEY_SPREAD) ** 2
    log_s3 = -0.5 * ((x[..., 0] + _KIDNEY_CENTER) / _KIDNEY_SPREAD) ** 2
    return -0.5 * s1**2 + np.logaddexp(log_s2, log_s3)


@functools.lru_cache(maxsize=None)
def kidney_log_normalizer() -> float:
    """log Z of the kidney by quadrature in polar coordinates: Z = int_0^R int_0^{2 pi} u(r cos a, r sin a) r da dr.

    R = 2 + 12 * 0.4: beyond it u < exp(-72) times the ring's peak. Z = 6.5372 (log Z = 1.8775); tests check it against a Cartesian grid.
    """
    def integrand(angle: float, radius: float) -> float:
        point = radius * np.array([math.cos(angle), math.sin(angle)])
        return radius * math.exp(float(kidney_log_unnormalized(point)))

    outer = _KIDNEY_RADIUS + 12 * _KIDNEY_WIDTH
    value, _ = integrate.dblquad(integrand, 0.0, outer, 0.0, 2 * math.pi, epsabs=1e-11, epsrel=1e-10)
    return math.log(value)


_LOG_U = {"banana": banana_log_unnormalized, "kidney": kidney_log_unnormalized}
_LOG_Z = {"banana": banana_log_normalizer, "kidney": kidney_log_normalizer}


def _check_name(name: str) -> None:
    if name not in TOY_DENSITIES:
        raise ValueError(f"unknown toy density {name!r}; choose one of {list(TOY_DENSITIES)}")


def log_unnormalized(name: str, x) -> np.ndarray:
    """log u of `name` ("banana" or "kidney") at float [..., 2] raw points; float64 [...]."""
    _check_name(name)
    return _LOG_U[name](x)


def log_normalizer(name: str) -> float:
    """log Z = log int u(x) dx of `name`: closed form (banana) or quadrature (kidney)."""
    _check_name(name)
    return _LOG_Z[name]()


def log_density(name: str, x) -> np.ndarray:
    """Normalized log p(x) = log u(x) - log Z; the banana's is `data.banana_log_density`. float64 [...]."""
    _check_name(name)
    if name == "banana":
        return data.banana_log_density(_check_points(x))
    return log_unnormalized(name, x) - log_normalizer(name)


def banana_samples(num_samples: int, seed: int) -> np.ndarray:
    """float64 [n, 2] exact banana samples in raw coordinates: `data.toy_samples` mapped back with `data.toy_to_raw`.

    data.toy_samples stores float32 points in [0, 1]^2 (rounding < 4e-6 in raw units) and clips fewer than 1 in
    10^6 of them at the box edge.
    """
    return data.toy_to_raw("banana", data.toy_samples("banana", num_samples, seed))


def kidney_raw_samples(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """float64 [n, 2] exact kidney samples by rejection from the uniform law on the box [-5, 5]^2, drawn with `rng`.

    u <= 1 + 1e-9 everywhere (-1/2 s1^2 <= 0 and s2 + s3 <= 1 + exp(-22)), so accepting x with probability u(x) / (1 +
    1e-9) draws from u restricted to the box; outside it ||x|| > 5 and u < exp(-28), a mass below 1e-10 of Z. About
    6.5% of the proposals are accepted (Z / 100). data.py's "kidney" dataset uses it.
    """
    kept, total = [], 0
    while total < num_samples:
        x = rng.uniform(-5.0, 5.0, size=(max(16 * num_samples, 4000), 2))
        x = x[rng.uniform(size=len(x)) * (1 + 1e-9) < np.exp(kidney_log_unnormalized(x))]
        kept.append(x)
        total += len(x)
    return np.concatenate(kept)[:num_samples]


def kidney_samples(num_samples: int, seed: int) -> np.ndarray:
    """float64 [n, 2] exact kidney samples (kidney_raw_samples) with numpy's default generator seeded by `seed`."""
    return kidney_raw_samples(num_samples, np.random.default_rng(seed))


def exact_samples(name: str, num_samples: int, seed: int) -> np.ndarray:
    """float64 [n, 2] exact samples of `name` in raw coordinates (banana_samples or kidney_samples)."""
    _check_name(name)
    return (banana_samples if name == "banana" else kidney_samples)(num_samples, seed)


def toy_affine(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale), float64 [2] each: raw = offset + scale * x maps the toolkit's [0, 1]^2 points of the toy
    dataset `dataset` (data.TOY_DATASETS) to the density's own coordinates (data.toy_to_raw, an affine map); a
    density in [0, 1]^2 is the raw one times prod(scale). Raises: ValueError for a dataset that is not a toy."""
    offset = data.toy_to_raw(dataset, np.zeros(2))
    return offset, data.toy_to_raw(dataset, np.ones(2)) - offset
