"""infusion_tf: infusion training (Bordes, Honari & Vincent, ICLR 2017) in Keras 3 / TensorFlow."""

from infusion_tf.config import InfusionConfig, PRESETS, preset
from infusion_tf.model import InfusionModel

__all__ = ["InfusionConfig", "InfusionModel", "PRESETS", "preset"]
__version__ = "0.1.0"
