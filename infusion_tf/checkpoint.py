"""Run and checkpoint folders: find a weights file and rebuild the model it belongs to.

A folder holds `config.json` and weights in `checkpoints/{best,last}.weights.h5` (as the training command
writes them) or `{best,last}.weights.h5` beside config.json (as `pretrained/` ships them).
"""

from __future__ import annotations

import dataclasses
import os
import typing

from infusion_tf.config import CONFIG_FILENAME, load_config
from infusion_tf.registry import MODELS

__all__ = ["find_weights", "build_model", "load_checkpoint", "load_weights", "evaluation_settings",
           "with_evaluation_settings"]


def find_weights(checkpoint_dir: str, weights: str | None = None) -> str:
    """The weights file of a run folder: `weights` "best" / "last" / a path; None: best if present, else last
    (the last for a model that keeps its last epoch, `protocol.monitor` None: its runs write no best).

    A name is looked up as `<dir>/checkpoints/<name>.weights.h5`, then `<dir>/<name>.weights.h5`.
    Raises: FileNotFoundError naming the paths tried.
    """
    if weights not in (None, "best", "last"):
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"weights file {weights!r} does not exist")
        return weights
    tried = []
    for name in (["best", "last"] if weights is None else [weights]):
        for folder in (os.path.join(checkpoint_dir, "checkpoints"), checkpoint_dir):
            tried.append(os.path.join(folder, f"{name}.weights.h5"))
            if os.path.isfile(tried[-1]):
                return tried[-1]
    raise FileNotFoundError(f"no weights in {checkpoint_dir!r}: tried {', '.join(tried)}")


def build_model(config, precision: str | None = None):
    """The registered model `config.model` (registry.MODELS) built from its config, uncompiled and untrained.

    precision: replaces config.precision where the model has one (None keeps it).
    """
    if precision is not None and hasattr(config, "precision"):
        config = dataclasses.replace(config, precision=precision)
    return MODELS.get(config.model)(config)


def _architecture(config) -> str:
    """The settings that decide a model's weights, for an error message: every non-training field."""
    skip = {"dataset", "dequantize", "train_examples", "validation_examples", "batch_size", "learning_rate",
            "lr_schedule", "ema_momentum", "epochs", "patience", "precision", "seed", "sample_every", "sampling_steps", "objective", "eta0", "init_from"}
    return ", ".join(f"{k}={v}" for k, v in config.to_dict().items() if k not in skip)


def evaluation_settings(model_name: str) -> tuple[str, ...]:
    """The config fields that model `model_name` marks as evaluation-only (its class attribute
    `evaluation_settings`): fields that change how it is evaluated, never its weights or its training."""
    return tuple(getattr(MODELS.get(model_name), "evaluation_settings", ()))


def _parse_value(name: str, text: str, hint):
    """A NAME=VALUE string as the field's type (int, float, bool, str, or None for an optional field)."""
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if text.lower() == "none" and type(None) in typing.get_args(hint):
        return None
    kind = kinds[0]
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError(f"model setting {name} takes true or false, got {text!r}")
        return text.lower() == "true"
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise ValueError(f"model setting {name} takes a value of type {kind.__name__}, got {text!r}") from None


def with_evaluation_settings(config, assignments) -> tuple[object, dict]:
    """(config with the NAME=VALUE assignments applied, {name: value} applied), for evaluation-only fields only.

    assignments: strings "NAME=VALUE" (eval/run.py's --model-setting). The new config is checked by the config's
    own __post_init__. Raises: ValueError naming a malformed assignment, an unknown field, or a field that the
    model does not mark as evaluation-only (changing it would evaluate another model than the one trained).
    """
    allowed = evaluation_settings(config.model)
    hints = typing.get_type_hints(type(config))
    values = {}
    for assignment in assignments:
        name, sep, text = str(assignment).partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"a model setting is NAME=VALUE, got {assignment!r}")
        if name not in allowed:
            known = ", ".join(allowed) or "none"
            why = "it changes the trained model" if name in hints else "no such config field"
            raise ValueError(f"model {config.model!r} has no evaluation-only setting {name!r} ({why}); its "
                             f"evaluation-only settings: {known}")
        values[name] = _parse_value(name, text.strip(), hints[name])
    return (dataclasses.replace(config, **values) if values else config), values


def load_checkpoint(checkpoint_dir: str, weights: str | None = None, precision: str | None = None,
                    model_settings=()):
    """The model of a run folder (any registered model): built from its config.json, with its weights loaded.

    precision: float32 (the default, whatever the run trained with) or mixed_bfloat16 (faster matrix
    products on CPUs with bfloat16 units; densities stay float32), for models that have the setting.
    model_settings: "NAME=VALUE" strings for the model's evaluation-only config fields (with_evaluation_settings);
    the model's config then holds them.

    Raises: FileNotFoundError naming a missing folder, config or weights file; ValueError when the
    weights do not fit the config's architecture or cannot be read.
    """
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"checkpoint folder {checkpoint_dir!r} does not exist")
    config, _ = with_evaluation_settings(load_config(checkpoint_dir), model_settings)
    weights_path = find_weights(checkpoint_dir, weights)
    model = build_model(config, precision or "float32")
    load_weights(model, weights_path, model.load_weights, os.path.join(checkpoint_dir, CONFIG_FILENAME))
    return model


def load_weights(model, weights_path: str, load, described_by: str) -> None:
    """Calls load(weights_path) (model.load_weights, or a model's own warm_start) with clear errors.

    Raises: ValueError naming the file and the model's architecture when the weights do not fit it (described_by:
    the config.json the architecture comes from), or when the file cannot be read.
    """
    try:
        load(weights_path)
    except ValueError as e:
        # Keras' message runs to many lines; its first two say what did not load and why.
        detail = " ".join([line.strip() for line in str(e).splitlines() if line.strip()][:2]) or type(e).__name__
        raise ValueError(f"weights {weights_path!r} do not match the architecture of {described_by!r} "
                         f"({_architecture(model.config)}): {detail}") from None
    except OSError as e:  # h5py: a truncated or damaged file, which names neither itself nor the problem's cause
        raise ValueError(f"weights {weights_path!r} cannot be read (damaged or incomplete?): {e}") from None
