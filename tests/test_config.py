"""Tests of infusion_tf.config: the paper's defaults, validation at construction, config.json round trips."""

import dataclasses
import json

import pytest

from infusion_tf.config import (CONFIG_FILENAME, PRESETS, STUDY_RECIPE, InfusionConfig, load_config, preset,
                                save_config, with_recipe)


def test_defaults_are_the_papers():
    config = InfusionConfig()
    # Section 4 and footnotes 1-3: the MNIST model.
    assert config.num_steps == 15
    assert config.omega == 0.01
    assert config.alpha0 == 0.0
    assert config.schedule == "increasing"
    assert config.beta == 0.1
    assert config.epsilon == 1e-4
    assert config.width == 1200
    assert config.depth == 2
    assert config.operator == "mlp"
    assert config.objective == "denoising"
    assert config.eta0 == 1.0
    assert config.example_shape == (28, 28, 1)
    assert config.num_dims == 784
    assert config.sampling_steps == 30  # Section 4.2 samples 30 steps from a 15-step model


def test_frozen():
    config = InfusionConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_steps = 3


def test_cifar10_preset():
    config = PRESETS["cifar10"]
    assert (config.operator, config.example_shape, config.num_steps, config.omega) == ("conv", (32, 32, 3), 20, 0.02)
    assert preset("mnist") == InfusionConfig(**STUDY_RECIPE)  # the paper's model with the recipe study's optimization
    assert with_recipe(preset("mnist"), "paper") == InfusionConfig()  # the paper's everything
    other = preset("svhn")  # any other TFDS image dataset starts from the cifar10 preset
    assert other == dataclasses.replace(PRESETS["cifar10"], dataset="svhn")


@pytest.mark.parametrize("config", [
    *PRESETS.values(),
    InfusionConfig(example_shape=[8], width=32, depth=1, num_steps=3, alpha0=0.2, omega=0.1,
                   variance="isotropic", objective="lower_bound", train_examples=100, dequantize=False,
                   precision="mixed_bfloat16", schedule="constant"),
], ids=[*PRESETS, "custom"])
def test_dict_round_trip(config):
    values = config.to_dict()
    assert InfusionConfig.from_dict(values) == config
    # Through JSON too, as config.json stores it (tuples become lists).
    assert InfusionConfig.from_dict(json.loads(json.dumps(values))) == config
    assert isinstance(values["example_shape"], list)


def test_example_shape_normalized_to_int_tuple():
    config = InfusionConfig(example_shape=[4, 2], width=8)
    assert config.example_shape == (4, 2)
    assert config.num_dims == 8
    assert hash(config) == hash(InfusionConfig(example_shape=(4, 2), width=8))


@pytest.mark.parametrize("kwargs, words", [
    (dict(operator="resnet"), ["operator", "resnet", "mlp", "conv"]),
    (dict(variance="full"), ["variance", "full"]),
    (dict(objective="elbo"), ["objective", "elbo"]),
    (dict(schedule="linear"), ["schedule", "linear"]),
    (dict(alpha0=0.9, omega=0.1, num_steps=3), ["alpha(2)", "1.1"]),
    (dict(alpha0=-0.5), ["alpha(0)", "-0.5"]),
    (dict(batch_size=0), ["batch_size", "0"]),
    (dict(num_steps=0), ["num_steps"]),
    (dict(width=True), ["width"]),
    (dict(epochs=2.5), ["epochs"]),
    (dict(train_examples=0), ["train_examples"]),
    (dict(example_shape=(28, 0, 1)), ["example_shape"]),
    (dict(beta=0.0), ["beta"]),
    (dict(delta_variance=-1e-4), ["delta_variance"]),
    (dict(batch_norm_momentum=1.0), ["batch_norm_momentum"]),
    (dict(eta0=0.0), ["eta0"]),
    (dict(dataset=" "), ["dataset"]),
    (dict(operator="conv"), ["conv", "28"]),  # default example_shape is MNIST's 28x28x1
    (dict(operator="conv", example_shape=(48, 48, 3)), ["conv", "48"]),
    (dict(operator="conv", example_shape=(32, 64, 3)), ["conv"]),
    (dict(operator="conv", example_shape=(32, 32, 3), depth=3), ["depth=3", "conv", "mlp"]),  # conv ignores it
    (dict(seed=-1), ["seed", "-1"]),
    (dict(seed=2**31), ["seed", str(2**31)]),  # would wrap around in the int32 seeds
])
def test_invalid_values_raise_clear_errors(kwargs, words):
    with pytest.raises(ValueError) as info:
        InfusionConfig(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_conv_accepts_32_and_64():
    assert InfusionConfig(operator="conv", example_shape=(32, 32, 3)).operator == "conv"
    assert InfusionConfig(operator="conv", example_shape=(64, 64, 3)).operator == "conv"


def test_every_preset_builds_and_mlp_depth_is_free():
    for name, config in PRESETS.items():
        assert dataclasses.replace(config) == config, name
    assert InfusionConfig(depth=3).depth == 3 and InfusionConfig(seed=2**31 - 1).seed == 2**31 - 1


def test_replace_revalidates():
    with pytest.raises(ValueError, match="batch_size"):
        dataclasses.replace(InfusionConfig(), batch_size=0)


def test_from_dict_unknown_field():
    values = {**InfusionConfig().to_dict(), "learning_rat": 0.1}
    with pytest.raises(ValueError, match="learning_rat"):
        InfusionConfig.from_dict(values)


def test_from_dict_partial_uses_defaults():
    assert InfusionConfig.from_dict({"num_steps": 4}) == InfusionConfig(num_steps=4)


def test_save_load_round_trip(tmp_path):
    config = InfusionConfig(example_shape=(2,), width=16, num_steps=4, omega=0.05, objective="lower_bound")
    path = save_config(config, str(tmp_path))
    assert path == str(tmp_path / CONFIG_FILENAME)
    assert not (tmp_path / (CONFIG_FILENAME + ".tmp")).exists()
    with open(path) as f:
        assert json.load(f) == config.to_dict()
    assert load_config(str(tmp_path)) == config
    # Overwriting an existing config.json works (os.replace).
    save_config(PRESETS["cifar10"], str(tmp_path))
    assert load_config(str(tmp_path)) == PRESETS["cifar10"]


def test_load_config_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=CONFIG_FILENAME):
        load_config(str(tmp_path))


def test_load_config_invalid_json(tmp_path):
    (tmp_path / CONFIG_FILENAME).write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        load_config(str(tmp_path))


def test_the_paper_recipe_resets_the_optimization_and_flags_still_win():
    """train/run.py --recipe paper: the paper's optimization over the preset, whatever the preset's recipe; a flag
    given beside it wins; a model config without those fields keeps its own; another name is refused."""
    from infusion_tf import cli
    from infusion_tf.config import PAPER_RECIPE, PRESETS, with_recipe

    tuned = dataclasses.replace(PRESETS["mnist"], lr_schedule="cosine", ema_momentum=0.999, batch_size=512,
                                learning_rate=3e-3, precision="mixed_bfloat16")
    paper = with_recipe(tuned, "paper")
    assert {k: getattr(paper, k) for k in PAPER_RECIPE} == PAPER_RECIPE
    assert dataclasses.replace(paper, **{k: getattr(tuned, k) for k in PAPER_RECIPE}) == tuned  # nothing else moved
    assert with_recipe(tuned, "preset") is tuned
    with pytest.raises(ValueError, match="recipe must be"):
        with_recipe(tuned, "fast")
    args = cli.train_parser().parse_args(["--recipe", "paper", "--ema-momentum", "0.99"])
    args.dataset = "mnist"
    config = cli.config_from_flags(args)
    assert config.ema_momentum == 0.99 and config.lr_schedule == "constant" and config.precision == "float32"
