"""Frozen configuration of an infusion-training run, with the paper's defaults.

One dataclass holds every setting that changes what is trained; it is written as
`config.json` beside every checkpoint, so a run can be rebuilt from its folder
alone. Presets (`PRESETS["mnist"]`, `PRESETS["cifar10"]`) are
`dataclasses.replace` of the defaults; the command line generates one flag per
field (`train/run.py`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from typing import Any

from infusion_tf import files
from infusion_tf.precision import PRECISIONS
from infusion_tf.registry import MODEL_CONFIGS, OBJECTIVES, OPERATORS, register_model_config

__all__ = ["PAPER_TABLE4", "ModelConfig", "InfusionConfig", "PRESETS", "preset", "save_config", "load_config", "CONFIG_FILENAME", "MAX_SEED",
           "check_seed"]

CONFIG_FILENAME = "config.json"

_VARIANCES = ("diagonal", "isotropic")
_SCHEDULES = ("increasing", "constant")
_LR_SCHEDULES = ("constant", "cosine", "linear")
_CONV_DEPTH = 2  # the depth field's default, which the conv operator ignores
MAX_SEED = 2**31 - 1  # seeds enter the stateless random ops as int32 pairs [seed, ...]


class ModelConfig:
    """What every model's config shares (a frozen dataclass subclassing this): JSON round trips that check each
    value's type, and the preset of a dataset. Each registers with `@registry.register_model_config(name)`."""

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}; known fields are {sorted(known)}")
        values = dict(values)
        _check_json_types(cls, values)
        hints = typing.get_type_hints(cls)
        for name, value in values.items():
            if typing.get_origin(hints[name]) is tuple:
                values[name] = tuple(value)
        return cls(**values)

    @classmethod
    def for_dataset(cls, dataset: str):
        """The model's preset for a dataset (its defaults with the dataset's name where it has none)."""
        return dataclasses.replace(cls(), dataset=dataset)

    @property
    def num_dims(self) -> int:
        """d, the number of dimensions of one example."""
        d = 1
        for s in self.example_shape:
            d *= s
        return d


@register_model_config("infusion")
@dataclasses.dataclass(frozen=True)
class InfusionConfig(ModelConfig):
    """Every setting of a model and its training. Defaults: the paper's MNIST model (Section 4)."""

    model: str = "infusion"  # the registered model these settings build (registry.MODELS)
    # --- data
    dataset: str = "mnist"  # mnist | fashion_mnist | mixture_of_gaussians | banana | any TFDS image dataset
    example_shape: tuple[int, ...] = (28, 28, 1)  # shape of one example, [H, W, C] or [d]
    dequantize: bool = True  # x = (u + U[0,1)) / 256, as the authors' code and Wu et al. (2016)
    train_examples: int | None = None  # train on the first N of the 50k training examples (quick runs)
    validation_examples: int | None = None  # validate on the first N of the 10k validation examples
    # --- infusion chain (Section 2.3.1)
    num_steps: int = 15  # T: transitions p(1) .. p(T); q draws z~(0) .. z~(T-1)
    schedule: str = "increasing"  # alpha(t) = alpha(t-1) + omega (footnote 2), or constant alpha0
    alpha0: float = 0.0  # alpha(0), infusion rate of the first step
    omega: float = 0.01  # increment of the infusion rate per step
    delta_variance: float = 1e-4  # variance of delta_x, the narrow Gaussian around x (footnote 1)
    prior_variance_floor: float = 1e-4  # floor on the prior's per-pixel variance (constant pixels)
    # --- transition operator p(t)(z(t) | z(t-1)) (Section 4)
    operator: str = "mlp"  # mlp (MNIST, TFD) | conv (CIFAR-10, CelebA; Appendix A.2)
    width: int = 1200  # units per hidden layer (mlp) or channels of the first feature map (conv)
    depth: int = 2  # hidden layers of the mlp operator (the authors' final code used 1); conv: set by the image size
    variance: str = "diagonal"  # diagonal: one variance per pixel | isotropic: one per example and step
    beta: float = 0.1  # variance = beta * sigmoid(head) + epsilon
    epsilon: float = 1e-4
    batch_norm_momentum: float = 0.9  # per-step batch normalization (footnote 5), authors' code
    batch_norm_epsilon: float = 1e-4
    # --- objective (Sections 2.3.2 and 2.4.1)
    objective: str = "denoising"  # denoising: target x | lower_bound: target z~(t), reparametrized
    eta0: float = 1.0  # eta(t) = eta0 * t / T weighs step t of the denoising objective (footnote 3)
    train_bound: bool = True  # the lower bound of each training batch (progress bar, log.csv); --no-train-bound skips its density work in the denoising step (validation still computes it)
    # --- optimization
    batch_size: int = 100
    learning_rate: float = 1e-3  # Adam
    lr_schedule: str = "constant"  # constant (the paper) | cosine | linear: decay from learning_rate to 0 at the end of `epochs`
    ema_momentum: float = 0.0  # 0: off (the paper) | e.g. 0.999: validate, draw, save best/last weights and export an exponential moving average of the weights
    epochs: int = 1500  # the authors' code; early stopping on the validation bound picks the model
    patience: int | None = None  # stop after this many epochs without a better validation bound; None: never
    precision: str = "float32"  # float32 | mixed_bfloat16 (densities stay float32) | auto: bfloat16 where the hardware has the units
    seed: int = 0
    init_from: str | None = None  # warm start from this run or pretrained folder's weights (best, else last), fresh optimizer
    # --- outputs
    sample_every: int = 5  # write sample and chain PNGs after epoch 1 and every this many epochs
    snapshot_every: int | None = None  # keep checkpoints/epochNNNN.weights.h5 every this many epochs (learning curves); None: none
    sampling_steps: int = 30  # the paper samples 30 steps from a 15-step model (Section 4.2)

    def __post_init__(self) -> None:
        for name, value in vars(self).items():  # NaN passes "> 0" checks; an infinite rate or variance trains NaN
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if self.model != "infusion":
            raise ValueError(f"InfusionConfig builds the infusion model, got model={self.model!r}")
        OPERATORS.check("operator", self.operator)
        _check_choice("variance", self.variance, _VARIANCES)
        OBJECTIVES.check("objective", self.objective)
        _check_choice("schedule", self.schedule, _SCHEDULES)
        _check_choice("lr_schedule", self.lr_schedule, _LR_SCHEDULES)
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ValueError(f"ema_momentum must be in [0, 1) (0 turns the moving average off), got {self.ema_momentum}")
        _check_choice("precision", self.precision, PRECISIONS)
        if not self.dataset or not self.dataset.strip():
            raise ValueError("dataset must be a non-empty name, got an empty string")
        for name in ("num_steps", "width", "depth", "batch_size", "epochs", "sample_every", "sampling_steps"):
            _check_positive_int(name, getattr(self, name))
        for name in ("train_examples", "validation_examples", "patience", "snapshot_every"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        shape = tuple(self.example_shape)
        if not shape or any(int(s) < 1 for s in shape):
            raise ValueError(f"example_shape must be positive dimensions, got {self.example_shape}")
        object.__setattr__(self, "example_shape", tuple(int(s) for s in shape))
        for name in ("delta_variance", "prior_variance_floor", "beta", "epsilon", "learning_rate",
                     "batch_norm_epsilon"):
            if not float(getattr(self, name)) > 0.0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.batch_norm_momentum < 1.0:
            raise ValueError(f"batch_norm_momentum must be in [0, 1), got {self.batch_norm_momentum}")
        if self.eta0 <= 0.0:
            raise ValueError(f"eta0 must be > 0, got {self.eta0}")
        if self.operator == "conv" and (len(shape) != 3 or shape[0] != shape[1] or shape[0] not in (32, 64)):
            raise ValueError(
                f"the conv operator takes 32x32xC or 64x64xC images, got example_shape {shape}")
        if self.operator == "conv" and self.depth != _CONV_DEPTH:
            raise ValueError(f"depth={self.depth} applies to the mlp operator only: the conv operator's depth follows "
                             f"the image size (3 transposed convolutions for 32x32, 4 for 64x64); leave depth at "
                             f"{_CONV_DEPTH}")
        check_seed(self.seed)
        # Imported here: schedule.py imports nothing from config, and the rates are checked
        # at construction so a bad alpha fails before any data is loaded.
        from infusion_tf.schedule import infusion_rates

        infusion_rates(self.num_steps, self.alpha0, self.omega, self.schedule)

    @classmethod
    def for_dataset(cls, dataset: str) -> "InfusionConfig":
        """The paper's preset for the dataset (see PRESETS and `preset`)."""
        return preset(dataset)

def _check_json_types(cls: type, values: dict[str, Any]) -> None:
    """ValueError naming the first field whose value has the wrong type for it (e.g. "beta": null in a
    config.json), before the checks of __post_init__ meet it. An int may stand for a float, never a bool."""
    def is_a(value, allowed) -> bool:
        allowed = tuple(allowed) + ((int,) if float in allowed else ())
        return isinstance(value, allowed) and (bool in allowed or not isinstance(value, bool))

    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        hint = hints[name]
        if typing.get_origin(hint) is tuple:  # e.g. example_shape: a JSON list of ints (of its element type)
            element = typing.get_args(hint)[0] if typing.get_args(hint) else int
            ok = isinstance(value, (list, tuple)) and all(is_a(v, (element,)) for v in value)
        else:
            ok = is_a(value, typing.get_args(hint) or (hint,))
        if not ok:
            raise ValueError(f"config field {name} must be of type {hint}, got {value!r}")


def check_seed(value: Any, name: str = "seed") -> int:
    """Returns `value`, an integer seed in [0, MAX_SEED]. Raises: ValueError naming it otherwise (a larger
    seed would wrap around in an int32 and give the draws of another seed)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be an integer in [0, {MAX_SEED}], got {value!r}")
    return value


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


# The paper's Table 4 (MNIST, 1000 test examples): the test lower bound of each (num_steps, alpha0, omega) it lists.
# Tables 1 and 2 are of its (15, 0.0, 0.01) chain; Table 4 gives 1351.03 for that chain's bound, Table 2 1350.60.
PAPER_TABLE4 = {(1, 0.0, 0.0): 824.34, (1, 0.3, 0.0): 1209.39, (5, 0.0, 0.05): 1303.19, (5, 0.0, 0.1): 1448.66,
                (10, 0.0, 0.02): 1389.12, (10, 0.0, 0.04): 1223.47, (15, 0.0, 0.01): 1351.03, (15, 0.0, 0.02): 1066.60}

# The paper's optimization (Section 4 and the authors' code): what `train/run.py --recipe paper` sets over a preset.
PAPER_RECIPE = {"learning_rate": 1e-3, "batch_size": 100, "lr_schedule": "constant", "ema_momentum": 0.0,
                "precision": "float32"}
# The recipe study's choice for the image presets (docs/mnist.md, "The recipe study"): an average of the weights for
# evaluation, and bfloat16 products where the hardware has the units, which the training command resolves
# (STUDY_PRECISION, as --precision auto) since a config holds what it computes in.
STUDY_RECIPE = {"ema_momentum": 0.999}
STUDY_PRECISION = "auto"
STUDY_PRESETS = ("mnist", "fashion_mnist")  # the presets that carry the study's recipe

PRESETS: dict[str, InfusionConfig] = {
    # Section 4: 2 x 1200 MLP, T = 15, alpha(t) = alpha(t-1) + 0.01 from 0; the recipe study's optimization.
    "mnist": InfusionConfig(**STUDY_RECIPE),
    "fashion_mnist": InfusionConfig(dataset="fashion_mnist", **STUDY_RECIPE),
    # Section 4 and Appendix A.2: conv operator, T = 20, omega = 0.02.
    "cifar10": InfusionConfig(dataset="cifar10", example_shape=(32, 32, 3), operator="conv", width=512,
                              num_steps=20, omega=0.02, sampling_steps=40),
    # 2-D toy densities for quick experiments: a small MLP, few steps, no dequantization.
    "mixture_of_gaussians": InfusionConfig(dataset="mixture_of_gaussians", example_shape=(2,), width=128,
                                           num_steps=10, omega=0.02, dequantize=False, sampling_steps=10,
                                           epochs=50, batch_size=256),
    "banana": InfusionConfig(dataset="banana", example_shape=(2,), width=128, num_steps=10, omega=0.02,
                             dequantize=False, sampling_steps=10, epochs=50, batch_size=256),
}


def with_recipe(config, recipe: str):
    """config with the optimization of `recipe`: "preset" (the dataset's preset, unchanged) or "paper" (PAPER_RECIPE,
    for the fields the model's config has). Raises: ValueError for another recipe."""
    if recipe == "preset":
        return config
    if recipe != "paper":
        raise ValueError(f"recipe must be preset or paper, got {recipe!r}")
    names = {f.name for f in dataclasses.fields(config)}
    return dataclasses.replace(config, **{k: v for k, v in PAPER_RECIPE.items() if k in names})


def preset(dataset: str) -> InfusionConfig:
    """The preset for a dataset; another TFDS dataset starts from the cifar10 preset with its name."""
    if dataset in PRESETS:
        return PRESETS[dataset]
    return dataclasses.replace(PRESETS["cifar10"], dataset=dataset)


def save_config(config: InfusionConfig, directory: str) -> str:
    """Writes `<directory>/config.json` atomically; returns its path."""
    return files.write_json(os.path.join(directory, CONFIG_FILENAME), config.to_dict(), sort_keys=True, end="\n")


def load_config(directory: str) -> InfusionConfig:
    """Reads `<directory>/config.json`; FileNotFoundError naming the path when there is none, ValueError
    naming it for invalid JSON or settings (a value of the wrong type included)."""
    path = os.path.join(directory, CONFIG_FILENAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {CONFIG_FILENAME} in {directory!r}: not a run or checkpoint folder")
    with open(path) as f:
        try:
            values = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} holds {type(values).__name__}, not an object of settings")
    try:  # config.json of runs written before models were registered has no "model": infusion
        return MODEL_CONFIGS.get(values.get("model", "infusion")).from_dict(values)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
