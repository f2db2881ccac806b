"""Registries of the toolkit's models, their configs, transition operators, objectives and estimators.

Like TFP's `@kullback_leibler.RegisterKL(Normal, Normal)`, a new piece registers itself where it is defined:

    @register_model("infusion")
    class InfusionModel(keras.Model): ...

and nothing else lists it. A registry also knows the built-in entries it can import on first use (name ->
module), so that listing the names (for `--help` and for checking a config) imports no TensorFlow; a new
built-in adds its name and module to that table, next to the others. A plug-in outside the package simply
imports its module, whose decorator registers it.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["Registry", "MODELS", "MODEL_CONFIGS", "OPERATORS", "OBJECTIVES", "ESTIMATORS", "register_model",
           "register_model_config", "register_operator", "register_objective", "register_estimator"]


class Registry:
    """Name -> object, filled by the `register(name)` decorator; built-in names import their module on first use."""

    def __init__(self, kind: str, builtins: dict[str, str] | None = None):
        self.kind = kind
        self._builtins = dict(builtins or {})  # name -> module whose import registers it
        self._entries: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """A decorator registering its argument under `name`; ValueError if another object has the name."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def decorate(entry):
            known = self._entries.get(name)
            if known is not None and _qualified(known) != _qualified(entry):
                raise ValueError(f"{self.kind} {name!r} is already registered ({_qualified(known)})")
            self._entries[name] = entry  # a module imported twice (e.g. as __main__) registers again
            return entry

        return decorate

    def names(self) -> tuple[str, ...]:
        """Every name, built-in or registered, sorted; imports nothing."""
        return tuple(sorted(set(self._builtins) | set(self._entries)))

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and (name in self._entries or name in self._builtins)

    def get(self, name: str) -> Any:
        """The entry of `name`, importing its built-in module if needed.

        Raises: ValueError naming the unknown name and the known ones.
        """
        if name in self and name not in self._entries:
            importlib.import_module(self._builtins[name])
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {list(self.names())}")
        return self._entries[name]

    def check(self, field: str, name: str) -> None:
        """ValueError unless `name` is known; names `field` (a config field or flag) in the message."""
        if name not in self:
            raise ValueError(f"{field} must be one of {list(self.names())}, got {name!r}")


def _qualified(entry) -> str:
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', repr(entry))}"


# Built-in entries: name -> the module that registers it. A new model adds one line to MODELS and MODEL_CONFIGS.
MODELS = Registry("model", {"infusion": "infusion_tf.model",
                              "annealed_gan": "infusion_tf.annealed_gan_model",
                              "dvae": "infusion_tf.dvae",
                              "dvae_rbm": "infusion_tf.dvae_rbm",
                              "short_run_ot": "infusion_tf.short_run",
                              "gaussian_vae": "infusion_tf.gaussian_vae",
                              "paired_flow": "infusion_tf.paired_flow_model",
                              "dae_langevin": "infusion_tf.dae_langevin_model"})
MODEL_CONFIGS = Registry("model", {"infusion": "infusion_tf.config",  # name -> its config class
                                    "annealed_gan": "infusion_tf.annealed_gan_model",
                                    "dvae": "infusion_tf.dvae",
                                    "dvae_rbm": "infusion_tf.dvae_rbm",
                                    "short_run_ot": "infusion_tf.short_run",
                                    "gaussian_vae": "infusion_tf.gaussian_vae",
                                    "paired_flow": "infusion_tf.paired_flow_model",
                                    "dae_langevin": "infusion_tf.dae_langevin_model"})
OPERATORS = Registry("operator", {"mlp": "infusion_tf.networks", "conv": "infusion_tf.networks"})
OBJECTIVES = Registry("objective", {"denoising": "infusion_tf.model", "lower_bound": "infusion_tf.model"})
ESTIMATORS = Registry("estimator", {name: "infusion_tf.evaluate" for name in (
    "lower_bound", "importance_sampling", "isotropic", "parzen", "sample_quality")})

register_model = MODELS.register
register_model_config = MODEL_CONFIGS.register
register_operator = OPERATORS.register
register_objective = OBJECTIVES.register
register_estimator = ESTIMATORS.register
