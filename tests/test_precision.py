"""infusion_tf.precision: --precision auto takes bfloat16 only where the hardware has the units."""

import pathlib

import pytest

from infusion_tf import precision


def test_cpu_flags_decide_the_units():
    assert precision.bfloat16_units(["avx2", "avx512f"], gpus=[]) is None
    assert precision.bfloat16_units(["avx512f", "avx512_bf16"], gpus=[]) == "CPU AVX512_BF16"
    assert precision.bfloat16_units(["amx_tile", "amx_bf16", "avx512_bf16"], gpus=[]) == "CPU AMX and AVX512_BF16"


def test_a_gpu_counts_from_compute_capability_8():
    assert precision.bfloat16_units([], gpus=[("GPU:0", (7, 5))]) is None
    assert precision.bfloat16_units([], gpus=[("GPU:0", None)]) is None
    assert precision.bfloat16_units([], gpus=[("GPU:0", (7, 0)), ("GPU:1", (9, 0))]) == \
        "GPU:1 (compute capability 9.0)"


def test_auto_resolves_by_the_units_and_explicit_choices_stay():
    assert precision.resolve_precision("auto", units="CPU AMX")[0] == "mixed_bfloat16"
    chosen, why = precision.resolve_precision("auto", units="")
    assert chosen == "float32" and "no bfloat16 units" in why
    for value in precision.PRECISIONS:
        assert precision.resolve_precision(value, units="")[0] == value
    with pytest.raises(ValueError, match="float32.*mixed_bfloat16.*auto.*'half'"):
        precision.resolve_precision("half")


def test_auto_on_this_machine_follows_its_cpuinfo():
    """An independent read of /proc/cpuinfo's flags (no GPU in the test machines' TensorFlow is assumed)."""
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("flags")), [])
    has_units = "amx_bf16" in flags or "avx512_bf16" in flags
    chosen, _ = precision.resolve_precision("auto", units=precision.bfloat16_units(gpus=[]))
    assert chosen == ("mixed_bfloat16" if has_units else "float32")


def test_slow_bfloat16_warning_only_without_units():
    assert "4x slower" in precision.slow_bfloat16_warning("mixed_bfloat16", units="")
    assert precision.slow_bfloat16_warning("mixed_bfloat16", units="CPU AMX") is None
    assert precision.slow_bfloat16_warning("float32", units="") is None
