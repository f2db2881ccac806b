"""infusion_tf: infusion training (Bordes, Honari & Vincent, ICLR 2017) in Keras 3 / TensorFlow.

`InfusionModel` is imported on first use (PEP 562), so that `import infusion_tf.cli` does not import
TensorFlow: the commands first quiet TensorFlow's start-up log (`console.quiet_tensorflow_logs`).
"""

from infusion_tf.config import PRESETS, InfusionConfig, preset

__all__ = ["InfusionConfig", "InfusionModel", "PRESETS", "preset"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "InfusionModel":
        from infusion_tf.model import InfusionModel

        return InfusionModel
    raise AttributeError(f"module 'infusion_tf' has no attribute {name!r}")
