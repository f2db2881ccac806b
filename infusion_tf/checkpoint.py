"""Run and checkpoint folders: find a weights file and rebuild the model it belongs to.

A folder holds `config.json` and weights in `checkpoints/{best,last}.weights.h5` (as the training command
writes them) or `{best,last}.weights.h5` beside config.json (as `pretrained/` ships them).
"""

from __future__ import annotations

import dataclasses
import os

from infusion_tf.config import CONFIG_FILENAME, load_config

__all__ = ["find_weights", "load_checkpoint"]


def find_weights(checkpoint_dir: str, weights: str | None = None) -> str:
    """The weights file of a run folder: `weights` "best" / "last" / a path; None: best if present, else last.

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


def load_checkpoint(checkpoint_dir: str, weights: str | None = None, precision: str | None = None) -> InfusionModel:
    """The InfusionModel of a run folder: built from its config.json, with its weights loaded.

    precision: float32 (the default, whatever the run trained with) or mixed_bfloat16 (faster matrix
    products on CPUs with bfloat16 units; densities stay float32).

    Raises: FileNotFoundError naming a missing folder, config or weights file; ValueError when the
    weights do not fit the config's architecture or cannot be read.
    """
    from infusion_tf.model import InfusionModel  # imports TensorFlow: not needed to find weights

    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"checkpoint folder {checkpoint_dir!r} does not exist")
    config = load_config(checkpoint_dir)
    weights_path = find_weights(checkpoint_dir, weights)
    model = InfusionModel(dataclasses.replace(config, precision=precision or "float32"))  # checks the name
    try:
        model.load_weights(weights_path)
    except ValueError as e:
        # Keras' message runs to many lines; its first two say what did not load and why.
        detail = " ".join([line.strip() for line in str(e).splitlines() if line.strip()][:2]) or type(e).__name__
        raise ValueError(
            f"weights {weights_path!r} do not match the architecture of "
            f"{os.path.join(checkpoint_dir, CONFIG_FILENAME)!r} (operator={config.operator}, width={config.width}, "
            f"depth={config.depth}, num_steps={config.num_steps}, variance={config.variance}, "
            f"example_shape={list(config.example_shape)}): {detail}") from None
    except OSError as e:  # h5py: a truncated or damaged file, which names neither itself nor the problem's cause
        raise ValueError(f"weights {weights_path!r} cannot be read (damaged or incomplete?): {e}") from None
    return model
