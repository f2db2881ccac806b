"""The model protocol: what a generative model gives the toolkit's commands and estimators.

Every model of the toolkit (infusion training, and the models of papers 002-004 as they join) is a
`keras.Model` registered with `@registry.register_model(name)` whose config is a frozen dataclass registered
with `@registry.register_model_config(name)`. The training command, `eval/run.py`, `eval/report.py`,
`eval/figures.py` and the export reach a model only through this page:

Required
    config                          frozen dataclass: dataset, example_shape, dequantize, seed, sampling_steps,
                                    and `model` (its registry name); written as config.json beside the weights
    log_weights(x, k, seed)         importance log-weights of k proposals z_j ~ q(z | x) per example,
                                    l_j = log p(x, z_j) - log q(z_j | x), split into S per-step terms whose sum
                                    is l_j (S = 1 for a model without steps). x: float32 [B, *example_shape];
                                    k: int; seed: int32 [2]. Returns LogWeights(per_step [S, B, k], ...).
                                    The lower bound (mean_j l_j), importance sampling (logsumexp_j l_j - log k)
                                    and every other chain estimator are computed from it, whatever the model.
    sample(n, num_steps=None, seed=None)
                                    float32 [n, *example_shape] samples (for Parzen, sample quality, figures
                                    and the SavedModel's `sample` signature)
    fit_prior(train_array)          optional set-up from the training set before the first step (may do nothing)
    train_step(x) / test_step(x)    Keras' own. A model that learns from a target's unnormalized log density
                                    instead of its examples (paired_flow: the toy datasets' log u) reads only
                                    the batch size of x in train_step; the examples still validate and evaluate
    monitor (optional attribute)    (metric, "max" | "min"), the validation metric of the best epoch; default
                                    ("lower_bound", "max"); a sample-only model names one it has (`monitor(model)`);
                                    None: no validation metric ranks the epochs, the model keeps its last epoch
                                    (no best.weights.h5, no early stopping)

Optional capabilities, discovered with `capabilities(model)`, never assumed:
    "likelihood"    log_weights above; a sample-only model (a GAN, a score-based sampler) leaves it out, and
                    eval/run.py refuses its lower bound and importance sampling with one error line. A model
                    whose samples have a density under some evaluation settings only (paired_flow: its flow's
                    samples do, its generator's do not) makes log_weights a property that is None where they
                    have none, so that the likelihood always describes the law that `sample` draws from
    "inpaint"       inpaint(images, mask, num_steps=None, seed=None) -> [B, *example_shape]: clamps mask = 1
    "chain"         sample(n, num_steps, seed, return_chain=True) -> (samples, [steps + 1, n, ...])
    "batch_norm"    step_batch_norms() -> the layers whose statistics can be recomputed over the training set
                    (Bordes et al., Appendix A.1), with chain_terms(x, seed, use_batch_statistics=True)
    "isotropic"     LogWeights.squared_error: ||x - mean of the last step||^2 [B, k], so the last step can be
                    rescored under an isotropic Gaussian (Table 2's isotropic row)
    "prepare"       prepare_evaluation(seed) -> dict: computes, before any estimator runs, what log_weights needs
                    that the weights do not fix (an RBM prior's log Z by annealed importance sampling); the dict
                    is recorded in results.json under "prepared"
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

__all__ = ["LogWeights", "GenerativeModel", "CAPABILITIES", "capabilities", "monitor", "require"]


class LogWeights(NamedTuple):
    """Importance log-weights of k proposals per example, split into per-step terms.

    per_step: float [S, B, k]; their sum over S is log p(x, z) - log q(z | x) of each proposal.
    squared_error: float [B, k] or None: ||x - mean of the last step||^2 (the "isotropic" capability).
    """

    per_step: Any
    squared_error: Any = None


@runtime_checkable
class GenerativeModel(Protocol):
    """The methods every model provides (see the module docstring for shapes)."""

    config: Any

    def log_weights(self, x, num_proposals: int, seed) -> LogWeights: ...

    def sample(self, num_samples: int, num_steps: int | None = None, seed: int | None = None, **kwargs): ...

    def fit_prior(self, train_array) -> None: ...


CAPABILITIES = ("likelihood", "inpaint", "chain", "batch_norm", "isotropic", "prepare")


def capabilities(model) -> frozenset[str]:
    """The optional capabilities a model has: the ones its class declares in `capabilities` and implements, and
    "likelihood" wherever it has `log_weights` (a sample-only model, e.g. a GAN, has none: the chain estimators
    refuse it instead of reading made-up weights)."""
    declared = frozenset(getattr(model, "capabilities", ()))
    if callable(getattr(model, "log_weights", None)):
        declared |= {"likelihood"}
    unknown = declared - set(CAPABILITIES)
    if unknown:
        raise ValueError(f"{type(model).__name__} declares unknown capabilities {sorted(unknown)}; "
                         f"known: {list(CAPABILITIES)}")
    needs = {"inpaint": "inpaint", "batch_norm": "step_batch_norms", "isotropic": "log_weights",
             "prepare": "prepare_evaluation"}
    missing = [c for c in declared if c in needs and not callable(getattr(model, needs[c], None))]
    if missing:
        raise ValueError(f"{type(model).__name__} declares {missing} but has no {[needs[c] for c in missing]}")
    return declared


def monitor(model) -> tuple[str, str] | None:
    """(metric, "max" | "min"): the validation metric whose best epoch training keeps (best.weights.h5) and early
    stopping counts from. A model declares it in the class attribute `monitor`; the default is the lower bound
    ("lower_bound", "max"), which a sample-only model does not have (the annealed GAN monitors an energy distance).

    None, for a model that declares `monitor = None`: none of its validation metrics says which epoch samples best
    (dae_langevin: its denoising loss), so training keeps its last epoch: it writes no best.weights.h5, evaluation
    and export then read last.weights.h5, and early stopping (patience) is refused. `model` may be the class.
    """
    declared = getattr(model, "monitor", ("lower_bound", "max"))
    if declared is None:
        return None
    name = model.__name__ if isinstance(model, type) else type(model).__name__
    if not (isinstance(declared, tuple) and len(declared) == 2 and isinstance(declared[0], str)
            and declared[1] in ("max", "min")):
        raise ValueError(f"{name}.monitor must be (metric name, 'max' or 'min') or None, got {declared!r}")
    return declared


def require(model, capability: str, what: str) -> None:
    """ValueError when `model` lacks `capability`, saying what needed it (e.g. "the isotropic estimator")."""
    if capability not in capabilities(model):
        name = getattr(getattr(model, "config", None), "model", type(model).__name__)
        raise ValueError(f"{what} needs the {capability!r} capability, which model {name!r} does not have "
                         f"(it has {sorted(capabilities(model)) or 'none'})")
