"""Shared pieces of the benchmarks: the machine's matmul peak, model FLOPs, the environment, results files.

Every benchmark measures the machine's matrix-product peak in the same process as the model, so a ratio
to peak is a ratio between two numbers taken under the same load, thread settings and TensorFlow build.

FLOP convention (matrix products only; biases, batch norm, activations and densities are not counted):
    forward     F = 2 * sum over the operator's Dense kernels of (in * out) per example and step
                  (the paper's MNIST operator 784 -> 1200 -> 1200 -> 2 x 784: F = 8 524 800);
    training    3 * F * T per example: forward plus backward (twice the forward) for each of the T
                  steps, the usual "model FLOPs utilization" convention. Work the implementation adds on
                  top (the denoising step draws the chain in a forward pass of its own before scoring it,
                  backward products that are not needed) is not useful work and is not counted;
    evaluation  F * T per chain (one infusion chain of T operator calls, Eq. 2 and Eq. 3);
    sampling    F * S per sample for a chain of S sampling steps.
Achieved GFLOP/s = those FLOPs / measured seconds; ratio_to_peak = achieved / `matmul_peak` of the
dtype the products run in (float32 for float32, bfloat16 for mixed_bfloat16).

Results go to `bench/results/<script>.json`: {"script", "command", "settings", "environment", "started",
"duration_seconds", "peak_rss_mb", "measurements": [{"name", "examples_per_second" or
"latency_seconds", "peak_gflops", "ratio_to_peak", ...}, ...]}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from infusion_tf.files import write_json  # noqa: E402
from infusion_tf.provenance import environment, portable_argv, portable_path  # noqa: E402

__all__ = ["REPO", "RESULTS_DIR", "PEAK_SIZES", "matmul_peak", "measure_peaks", "operator_forward_flops",
           "operator_kernel_shapes", "matmul_only_seconds", "training_passes", "environment", "portable_argv", "peak_rss_mb", "write_results", "read_results", "print_table",
           "base_parser", "percentile_summary", "reset_keras"]

RESULTS_DIR = REPO / "bench" / "results"
PEAK_SIZES = (1024, 2048)
_CHAIN = 10  # dependent matrix products per call


def _chain_function():
    @tf.function
    def chain(c, b):
        for _ in range(_CHAIN):  # unrolled; each product needs the previous one, so none can be merged
            c = tf.matmul(c, b)
        return c[0, 0]
    return chain


def matmul_peak(dtype: str = "float32", sizes=PEAK_SIZES, repeats: int = 5) -> float:
    """The machine's square-matmul throughput in GFLOP/s, measured now in this process.

    A tf.function computes c = c @ b ten times (dependent products, so grappler cannot merge them), with
    b ~ N(0, 1/n) so values stay finite; each size n is timed `repeats` times after a warm-up call and
    the best call counts, 2 n^3 FLOPs per product. Returns the best over `sizes`.
    dtype: "float32" or "bfloat16". Raises: ValueError for another dtype or no sizes.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    if not sizes or int(repeats) < 1:
        raise ValueError(f"need at least one size and one repeat, got sizes={sizes}, repeats={repeats}")
    best = 0.0
    chain = _chain_function()
    for n in sizes:
        n = int(n)
        rng = np.random.default_rng(n)
        b = tf.cast(tf.constant(rng.standard_normal((n, n)) / math.sqrt(n), tf.float32), dtype)
        c = tf.cast(tf.constant(rng.standard_normal((n, n)), tf.float32), dtype)
        chain(c, b).numpy()  # trace and warm the oneDNN primitive cache
        for _ in range(int(repeats)):
            start = time.perf_counter()
            value = float(chain(c, b).numpy())
            seconds = time.perf_counter() - start
            if not math.isfinite(value):
                raise FloatingPointError(f"matmul chain of size {n} in {dtype} gave {value}")
            best = max(best, _CHAIN * 2.0 * n**3 / seconds / 1e9)
    return best


def measure_peaks(quick: bool = False) -> dict[str, float]:
    """{"float32": GFLOP/s, "bfloat16": GFLOP/s}; quick: one size (1024) and two repeats."""
    sizes, repeats = ((1024,), 2) if quick else (PEAK_SIZES, 5)
    return {dtype: matmul_peak(dtype, sizes, repeats) for dtype in ("float32", "bfloat16")}


def operator_forward_flops(model) -> int:
    """Matmul FLOPs of one forward pass of the transition operator for one example: 2 * sum(in * out).

    model: an InfusionModel or its operator. Only the MLP operator is supported: a convolution's FLOPs
    depend on its output size and are not a kernel's in * out. Raises: ValueError for another operator.
    """
    import keras

    from infusion_tf.networks import MLPOperator

    operator = getattr(model, "operator", model)
    if not isinstance(operator, MLPOperator):
        raise ValueError(f"operator_forward_flops counts Dense kernels of the MLP operator only; got "
                         f"{type(operator).__name__} (the conv operator's FLOPs are not counted here)")
    dense = [layer for layer in operator._flatten_layers() if isinstance(layer, keras.layers.Dense)]
    return 2 * sum(int(layer.kernel.shape[0]) * int(layer.kernel.shape[1]) for layer in dense)


def operator_kernel_shapes(model) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(hidden, heads): the (in, out) shapes of the MLP operator's hidden Dense kernels, in order, and of its heads."""
    operator = getattr(model, "operator", model)
    operator_forward_flops(operator)  # the same check: MLP operators only
    hidden = [tuple(int(n) for n in layer.kernel.shape) for layer in operator.dense]
    heads = [tuple(int(n) for n in layer.kernel.shape) for layer in (operator.mean_head, operator.variance_head)]
    return hidden, heads


def matmul_only_seconds(hidden, heads, passes, dtype: str = "float32", repeats: int = 7) -> float:
    """Seconds of a step's matrix products alone: the same shapes, batch and dtype, nothing else (best of repeats).

    hidden, heads: (in, out) kernel shapes (`operator_kernel_shapes`). passes: a list of (rows, num_steps, mode):
    `num_steps` dependent operator calls on `rows` rows each (the output of call t, cut to the input width, is
    the input of call t + 1, so no two calls can be merged), each doing the forward products ("forward"),
    forward and backward ("forward_backward"), or the backward products alone on stored activations
    ("backward"). Backward products are the kernels' gradients (input^T @ upstream) and the inputs' gradients
    (upstream @ kernel^T) of every layer but the first, whose input needs none. Training step by step is
    [(B, T, "forward_backward")]; the step that draws the chain first and replays its products when scoring
    all steps as one batch is [(B, T, "forward"), (T * B, 1, "backward")]; evaluation is [(rows, T, "forward")].
    Weight gradients are returned, not summed over calls, so no elementwise work is timed (but one addition of
    the two heads' input gradients). This is the floor the step cannot beat with these products: the step's
    time divided into this one is the share of its time that is matrix products.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    modes = ("forward", "forward_backward", "backward")
    if not passes or any(mode not in modes for _, _, mode in passes):
        raise ValueError(f"passes must be (rows, num_steps, mode) with mode in {modes}, got {passes}")
    rng = np.random.default_rng(0)
    normal = lambda shape, scale: tf.cast(tf.constant(rng.standard_normal(shape) * scale, tf.float32), dtype)  # noqa: E731
    hidden_kernels = [normal(shape, 1 / math.sqrt(shape[0])) for shape in hidden]
    head_kernels = [normal(shape, 1 / math.sqrt(shape[0])) for shape in heads]
    width_in = hidden[0][0]
    inputs = [normal((rows, width_in), 1.0) for rows, _, _ in passes]
    # Stored activations and upstream gradients of a backward-only pass: every layer's input, the heads' gradients.
    stored = [[normal((rows, shape[0]), 1.0) for shape in hidden] + [normal((rows, heads[0][0]), 1.0)]
              + [normal((rows, shape[1]), 1.0) for shape in heads] if mode == "backward" else []
              for rows, _, mode in passes]

    def backward(activations, h, heads_grad, outputs):
        outputs += [tf.matmul(h, g, transpose_a=True) for g in heads_grad]
        grad = tf.add_n([tf.matmul(g, kernel, transpose_b=True) for g, kernel in zip(heads_grad, head_kernels)])
        for i in reversed(range(len(hidden_kernels))):
            outputs.append(tf.matmul(activations[i], grad, transpose_a=True))
            if i > 0:
                grad = tf.matmul(grad, hidden_kernels[i], transpose_b=True)
        outputs.append(grad)

    @tf.function
    def products(inputs, stored):
        outputs = []
        for (rows, steps, mode), z, saved in zip(passes, inputs, stored):
            if mode == "backward":
                n = len(hidden_kernels)
                backward(saved[:n], saved[n], saved[n + 1:], outputs)
                continue
            for _ in range(steps):
                activations, h = [], z
                for kernel in hidden_kernels:
                    activations.append(h)
                    h = tf.matmul(h, kernel)
                outs = [tf.matmul(h, kernel) for kernel in head_kernels]
                if mode == "forward_backward":  # the heads' outputs stand in for their gradients: new values
                    backward(activations, h, outs, outputs)  # each call, so no two calls share a product
                z = outs[0][:, :width_in]
            outputs.append(z)
        return outputs

    products(inputs, stored)  # trace, warm the oneDNN primitive caches
    best = float("inf")
    for _ in range(int(repeats)):
        start = time.perf_counter()
        values = products(inputs, stored)
        float(tf.reduce_sum(tf.cast(values[-1][:1, :1], tf.float32)))
        best = min(best, time.perf_counter() - start)
    return best


def training_passes(model) -> list[tuple[int, int, str]]:
    """The products a model's training step does, as `matmul_only_seconds` passes (see there)."""
    config = model.config
    b, t = config.batch_size, config.num_steps
    if getattr(model, "score_steps_together", False):
        if getattr(model.operator, "supports_replay", False):
            return [(b, t, "forward"), (t * b, 1, "backward")]
        return [(b, t - 1, "forward"), (t * b, 1, "forward_backward")]
    return [(b, t, "forward_backward")]


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory in MB (2^20 bytes) of this process, or of its largest waited-for child."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_maxrss / 1024.0  # Linux reports KiB


def percentile_summary(seconds) -> dict[str, float]:
    """median, mean, p10, p90, min, max of a list of durations, in seconds."""
    values = np.asarray(list(seconds), np.float64)
    if values.size == 0:
        raise ValueError("no durations to summarize")
    return {"median": float(np.median(values)), "mean": float(values.mean()),
            "p10": float(np.percentile(values, 10)), "p90": float(np.percentile(values, 90)),
            "min": float(values.min()), "max": float(values.max()), "count": int(values.size)}


def write_results(script_name: str, rows: list[dict], *, results_dir=None, settings: dict | None = None,
                  started: float | None = None) -> Path:
    """Writes `<results_dir>/<script_name>.json` (see the module docstring) atomically; returns its path.

    started: time.time() at the script's start, for duration_seconds.
    """
    for row in rows:
        if "name" not in row:
            raise ValueError(f"every measurement needs a name, got keys {sorted(row)}")
    folder = Path(results_dir) if results_dir is not None else RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    document = {
        "script": script_name,
        "command": portable_argv([sys.executable, *sys.argv]),  # no folder of this machine in committed results
        "settings": {key: _portable(value) for key, value in (settings or {}).items()},
        "environment": environment(),
        "started": None if started is None else datetime.datetime.fromtimestamp(
            started, datetime.timezone.utc).isoformat(timespec="seconds"),
        "duration_seconds": None if started is None else time.time() - started,
        "peak_rss_mb": peak_rss_mb(),
        "measurements": rows,
    }
    path = folder / f"{script_name}.json"
    write_json(str(path), document, end="\n", default=_json_default)
    return path


def _portable(value):
    """A setting that is a path (a Path, or a str naming an absolute path) as provenance.portable_path writes it."""
    is_path = isinstance(value, Path) or (isinstance(value, str) and os.path.isabs(value))
    return portable_path(value) if is_path else value


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (Path,)):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def read_results(script_name: str, results_dir=None) -> dict | None:
    """The document a script wrote, or None when there is none."""
    path = (Path(results_dir) if results_dir is not None else RESULTS_DIR) / f"{script_name}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _format(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0.0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(rows: list[dict], columns: list[str] | None = None, title: str | None = None) -> None:
    """Prints the rows as an aligned text table of `columns` (default: every key of the first row)."""
    if not rows:
        print("(no measurements)")
        return
    columns = columns or list(rows[0])
    cells = [[_format(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(columns, widths))))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))


def base_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the flags every benchmark takes: --quick and --results-dir."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few steps only: checks that the script works")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR), help="where <script>.json is written")
    return parser


def reset_keras() -> None:
    """Back to the float32 policy with a fresh Keras session, between two models of one benchmark."""
    import keras

    keras.backend.clear_session()
    keras.config.set_dtype_policy("float32")
