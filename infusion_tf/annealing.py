"""Annealing schedules lambda_t (Tao et al. 2019, App. I.1) and the temperatures they set (App. B, Corollary 2.2).

The annealed objective F_mu(rho; beta) = beta KL(rho || mu) + (1 - beta) S(rho) (App. A, Eqs. 1-6) is reached
either through a likelihood term, beta_lik = 1 + lambda, or through an entropy term, beta_ent = 1 / (1 + lambda)
(App. B). lambda_t decays to 0 (monotonic schemes) or oscillates (the sinusoidal scheme), so the objective ends at
the plain KL(rho || mu).

Schedules are float64 numpy arrays indexed by the training iteration t = 0 .. num_steps - 1, as
`schedule.infusion_rates`; a training step reads lambda_t as a tensor so that a new value does not retrace.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SCHEDULES", "FORMS", "linear_lambda", "exponential_lambda", "sinusoidal_lambda", "lambda_schedule",
           "beta_lik", "beta_ent", "annealed_beta"]


def _steps(num_steps: int) -> np.ndarray:
    if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    return np.arange(int(num_steps), dtype=np.float64)


def _positive(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def linear_lambda(num_steps: int, lambda0: float, t_max: float) -> np.ndarray:
    """lambda_t = sign(lambda0) max(|lambda0| (1 - t / T_max), 0) (App. I.1, linear annealing).

    T_max: the step at which lambda reaches 0 ("slightly smaller than the total number of iterations").
    Returns: float64 [num_steps], lambda_t for t = 0 .. num_steps - 1.
    Raises: ValueError if num_steps < 1 or T_max <= 0.
    """
    t = _steps(num_steps)
    t_max = _positive("t_max", t_max)
    return np.sign(lambda0) * np.maximum(abs(lambda0) * (1.0 - t / t_max), 0.0)


def exponential_lambda(num_steps: int, lambda0: float, tau: float) -> np.ndarray:
    """lambda_t = sign(lambda0) |lambda0| exp(-tau t) (App. I.1, exponential annealing).

    tau: decay rate per step, "chosen so that at the end of training lambda_t -> 0".
    Returns: float64 [num_steps]. Raises: ValueError if num_steps < 1 or tau <= 0.
    """
    t = _steps(num_steps)
    return float(lambda0) * np.exp(-_positive("tau", tau) * t)


def sinusoidal_lambda(num_steps: int, lambda0: float, cycles: float = 5.0) -> np.ndarray:
    """lambda_t = lambda0 (1 + cos(2 pi cycles t / num_steps)) / 2: oscillatory ("sinuous") annealing (App. I.1).

    The supplement says only that the continuous oscillation beat the stepwise one and that lambda_t "loops over
    for five cycles" during training; this form (ours) starts at lambda0, as the monotonic schemes do, and swings
    between lambda0 and 0 `cycles` times.
    Returns: float64 [num_steps]. Raises: ValueError if num_steps < 1 or cycles <= 0.
    """
    t = _steps(num_steps)
    phase = 2 * math.pi * _positive("cycles", cycles) * t / float(num_steps)
    return float(lambda0) * 0.5 * (1.0 + np.cos(phase))


SCHEDULES = {"linear": linear_lambda, "exponential": exponential_lambda, "sinusoidal": sinusoidal_lambda}


def lambda_schedule(kind: str, num_steps: int, lambda0: float, **settings) -> np.ndarray:
    """The schedule named `kind` ("linear" with t_max, "exponential" with tau, "sinusoidal" with cycles).

    Raises: ValueError naming the unknown kind and the known ones.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown annealing schedule {kind!r}; choose one of {list(SCHEDULES)}")
    return SCHEDULES[kind](num_steps, lambda0, **settings)


def _one_plus(lam) -> np.ndarray:
    one_plus = 1.0 + np.asarray(lam, np.float64)
    if np.any(~(one_plus > 0)):
        bad = np.asarray(lam, np.float64).ravel()[np.flatnonzero(~(one_plus.ravel() > 0))[0]]
        raise ValueError(f"lambda must be > -1 (a positive temperature beta), got {float(bad)!r}")
    return one_plus


def beta_lik(lam) -> np.ndarray:
    """beta_lik = 1 + lambda: the temperature of likelihood regularization (App. B). lam: float [...] > -1."""
    return _one_plus(lam)


def beta_ent(lam) -> np.ndarray:
    """beta_ent = 1 / (1 + lambda): the temperature of entropy regularization (App. B). lam: float [...] > -1."""
    return 1.0 / _one_plus(lam)


FORMS = {"entropy": beta_ent, "likelihood": beta_lik}  # the two regularizations of Corollary 2.2 (App. B)


def annealed_beta(form: str, lam) -> np.ndarray:
    """The temperature beta of F_mu(rho; beta) that regularization `form` reaches at lambda (App. B, Corollary 2.2).

    "entropy":    KL(rho || mu) + lambda S(rho)         = (1 + lambda) F_mu(rho; 1 / (1 + lambda))   (Eqs. 5-6)
    "likelihood": KL(rho || mu) - lambda E_rho[log mu]  = F_mu(rho; 1 + lambda)                      (Eqs. 1, 4)
    lam: float [...] > -1. Returns: float64 [...]. The entropy form flattens the target (beta < 1) for lambda > 0,
    the likelihood form for -1 < lambda < 0; both give beta = 1, the plain KL, at lambda = 0.
    Raises: ValueError naming an unknown form, or a lambda <= -1.
    """
    if form not in FORMS:
        raise ValueError(f"unknown annealing form {form!r}; choose one of {list(FORMS)}")
    return FORMS[form](lam)
