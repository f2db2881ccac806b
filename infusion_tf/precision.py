"""Which precision fits this machine: bfloat16 matrix products pay only where the hardware has the units.

TensorFlow's mixed_bfloat16 runs the matrix products in bfloat16 (densities and bounds stay float32). On a
CPU with AMX or AVX512_BF16, or a GPU of compute capability 8.0 and up, that is faster than float32; on a
CPU without them, TensorFlow emulates bfloat16 and the products run about 4x slower than float32 (measured:
58 GFLOP/s against 226-259 on a 2-core AVX-512 Xeon without AVX512_BF16, issue 12).
"""

from __future__ import annotations

__all__ = ["PRECISIONS", "bfloat16_units", "resolve_precision", "slow_bfloat16_warning"]

PRECISIONS = ("float32", "mixed_bfloat16")  # what a model computes in; "auto" resolves to one of them
_CPU_FLAGS = {"amx_bf16": "AMX", "avx512_bf16": "AVX512_BF16"}


def bfloat16_units(cpu_flags: list[str] | None = None, gpus: list[tuple[str, tuple[int, int] | None]] | None = None
                   ) -> str | None:
    """The hardware that runs bfloat16 products natively, e.g. "CPU AMX", "GPU:0 (compute capability 8.0)"; None.

    cpu_flags: the CPU's flags (default: /proc/cpuinfo); gpus: [(name, compute capability or None)] (default:
    TensorFlow's physical GPUs). A GPU counts from compute capability 8.0 (Ampere) on.
    """
    if gpus is None:
        gpus = _tensorflow_gpus()
    for name, capability in gpus:
        if capability is not None and tuple(capability) >= (8, 0):
            return f"{name} (compute capability {capability[0]}.{capability[1]})"
    if cpu_flags is None:
        from infusion_tf.provenance import cpu_model

        cpu_flags = cpu_model()[1]
    found = [label for flag, label in _CPU_FLAGS.items() if flag in cpu_flags]
    return f"CPU {' and '.join(found)}" if found else None


def _tensorflow_gpus() -> list[tuple[str, tuple[int, int] | None]]:
    import tensorflow as tf

    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(device).get("compute_capability")
        gpus.append((device.name.replace("/physical_device:", ""), capability))
    return gpus


def resolve_precision(requested: str, units: str | None = None) -> tuple[str, str]:
    """(precision, why) for a requested precision: "auto" takes mixed_bfloat16 only where `units` (default:
    bfloat16_units()) has bfloat16 units, else float32; float32 and mixed_bfloat16 are returned as they are.

    Raises: ValueError naming the allowed values.
    """
    if requested not in (*PRECISIONS, "auto"):
        raise ValueError(f"precision must be one of {[*PRECISIONS, 'auto']}, got {requested!r}")
    if requested != "auto":
        return requested, "as requested"
    units = bfloat16_units() if units is None else units
    if units:
        return "mixed_bfloat16", f"auto: {units} runs bfloat16 products natively"
    return "float32", "auto: no bfloat16 units (AMX, AVX512_BF16 or a GPU of compute capability >= 8.0)"


def slow_bfloat16_warning(precision: str, units: str | None = None) -> str | None:
    """A warning line when mixed_bfloat16 is asked for on hardware without bfloat16 units; None otherwise."""
    if precision != "mixed_bfloat16":
        return None
    units = bfloat16_units() if units is None else units
    if units:
        return None
    return ("warning: this machine has no bfloat16 units (AMX, AVX512_BF16 or a GPU of compute capability >= 8.0): "
            "mixed_bfloat16 runs about 4x slower than float32 here; --precision float32 or auto fits it")
