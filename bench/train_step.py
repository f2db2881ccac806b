"""Training throughput of the paper's MNIST model beside the machine's matmul peak, measured in one run.

    python bench/train_step.py [--batch-sizes 100 512] [--precisions float32 mixed_bfloat16]
                               [--warmup 10] [--steps 50] [--quick] [--results-dir DIR]

For each batch size and precision: the InfusionConfig defaults (T = 15, 2 x 1200 MLP, denoising), built by
`training.build_model` (dtype policy, prior fitted to MNIST, Adam) and trained by `model.fit` on real
MNIST batches from `data.make_train_dataset`, in epochs of --warmup batches: epoch 0 warms up (tracing,
oneDNN primitive caches), the next ceil(steps / warmup) epochs are timed by a callback that records the
time at the end of every batch. A step's time is the interval between consecutive batch ends, so the
input pipeline, Keras' loop and epoch boundaries are included; the median step sets examples_per_second
(the mean is reported too). Model FLOPs per example = 3 * F * T (bench/common.py).

Retracing: model.train_step is wrapped with a counter of its Python executions, i.e. of its traces; the
traces after the warm-up epoch must be 0 across the timed steps and epochs.

The float32 and bfloat16 matmul peaks are measured before and after the models (the larger counts), so
ratio_to_peak compares numbers taken under the same load.

Two references are timed in the same process (issue 14):
- matmul-only: the step's own matrix products at the same shapes, batch and dtype, nothing else
  (`common.matmul_only_seconds` with `common.training_passes(model)`); ratio_to_matmul_only is its time
  divided by the step's, the share of the step that is products;
- the plain Keras step (`plain_keras_step.py`, float32, what a user would write); speedup_vs_plain_keras is
  this step's examples/s over the plain step's at the same batch size (skip it with --no-plain).
"""

from __future__ import annotations

import math
import time

import common  # first: sets up sys.path and TensorFlow's logging

import keras
import plain_keras_step

from infusion_tf import InfusionConfig, data
from infusion_tf.training import build_model

SCRIPT = "train_step"
COMPUTE_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16"}


class BatchClock(keras.callbacks.Callback):
    """perf_counter() before the first batch of epoch `first_timed_epoch` and after every later batch."""

    def __init__(self, first_timed_epoch: int, trace_counter: list[int]):
        super().__init__()
        self.first_timed_epoch, self.trace_counter = first_timed_epoch, trace_counter
        self.epoch = -1
        self.times: list[float] = []
        self.traces_before_timing = None
        self.last_loss = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch == self.first_timed_epoch and batch == 0:
            self.traces_before_timing = self.trace_counter[0]
            self.times.append(time.perf_counter())

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch >= self.first_timed_epoch:
            if logs and "loss" in logs:
                self.last_loss = float(logs["loss"])  # a host value: the step has finished
            self.times.append(time.perf_counter())


def _count_traces(model) -> list[int]:
    """Wraps model.train_step (before fit builds its tf.function) so that every trace adds 1 to the counter."""
    counter = [0]
    original = model.train_step

    def train_step(batch):
        counter[0] += 1
        return original(batch)

    model.train_step = train_step
    return counter


def measure(train_array, batch_size: int, precision: str, warmup: int, steps: int) -> dict:
    """Times `model.fit` for one batch size and precision; returns the raw measurement."""
    common.reset_keras()
    started = time.time()
    config = InfusionConfig(precision=precision, batch_size=batch_size)
    model = build_model(config, train_array)
    counter = _count_traces(model)
    timed_epochs = math.ceil(steps / warmup)
    batches = (1 + timed_epochs) * warmup
    dataset, _ = data.make_train_dataset(train_array, batch_size, seed=config.seed, dequantize=config.dequantize,
                                         epochs=math.ceil(batches / (len(train_array) // batch_size)))
    clock = BatchClock(first_timed_epoch=1, trace_counter=counter)
    model.fit(dataset, epochs=1 + timed_epochs, steps_per_epoch=warmup, verbose=0, callbacks=[clock],
              shuffle=False)
    intervals = [b - a for a, b in zip(clock.times, clock.times[1:])]  # [timed_epochs * warmup] seconds
    forward = common.operator_forward_flops(model)
    passes = common.training_passes(model)
    matmul_only = common.matmul_only_seconds(*common.operator_kernel_shapes(model), passes, COMPUTE_DTYPE[precision])
    result = {"config": config, "matmul_only_seconds": matmul_only, "matmul_only_passes": passes,
              "scores_steps_together": bool(model.score_steps_together), "intervals": intervals, "forward_flops": forward,
              "flops_per_example": 3.0 * forward * config.num_steps, "traces_total": counter[0],
              "traces_during_timing": counter[0] - clock.traces_before_timing, "final_loss": clock.last_loss,
              "duration_seconds": time.time() - started}
    del model
    common.reset_keras()
    return result


def to_row(raw: dict, peaks: dict[str, float]) -> dict:
    config = raw["config"]
    timing = common.percentile_summary(raw["intervals"])
    eps = config.batch_size / timing["median"]
    achieved = eps * raw["flops_per_example"] / 1e9
    peak = peaks[COMPUTE_DTYPE[config.precision]]
    return {
        "name": f"train b{config.batch_size} {config.precision}",
        "batch_size": config.batch_size,
        "precision": config.precision,
        "num_steps_T": config.num_steps,
        "width": config.width,
        "depth": config.depth,
        "objective": config.objective,
        "examples_per_second": eps,
        "examples_per_second_mean": config.batch_size / timing["mean"],
        "step_seconds": timing,
        "model_gflops_per_example": raw["flops_per_example"] / 1e9,
        "forward_flops_per_example_step": raw["forward_flops"],
        "achieved_gflops": achieved,
        "peak_gflops": peak,
        "peak_dtype": COMPUTE_DTYPE[config.precision],
        "peak_float32_gflops": peaks["float32"],
        "peak_bfloat16_gflops": peaks["bfloat16"],
        "ratio_to_peak": achieved / peak,
        "ratio_to_float32_peak": achieved / peaks["float32"],
        "speedup_vs_float32": None,
        "scores_steps_together": raw["scores_steps_together"],
        "matmul_only_passes": raw["matmul_only_passes"],
        "matmul_only_examples_per_second": config.batch_size / raw["matmul_only_seconds"],
        "ratio_to_matmul_only": raw["matmul_only_seconds"] / timing["median"],
        "plain_keras_examples_per_second": None,
        "speedup_vs_plain_keras": None,
        "traces_total": raw["traces_total"],
        "traces_during_timing": raw["traces_during_timing"],
        "final_loss": raw["final_loss"],
        "duration_seconds": raw["duration_seconds"],
    }


def main(argv=None) -> list[dict]:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 512])
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"],
                        choices=sorted(COMPUTE_DTYPE))
    parser.add_argument("--warmup", type=int, default=10, help="batches per epoch; epoch 0 is the warm-up")
    parser.add_argument("--steps", type=int, default=50, help="timed batches (rounded up to whole epochs)")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain Keras reference step")
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.steps = 3, 6
    if args.warmup < 1 or args.steps < 1:
        parser.error(f"--warmup and --steps must be >= 1, got {args.warmup} and {args.steps}")
    started = time.time()
    train_array = data.load_splits("mnist").train  # uint8 [50000, 28, 28, 1]
    peaks_before = common.measure_peaks(args.quick)
    raws = [measure(train_array, b, p, args.warmup, args.steps) for b in args.batch_sizes for p in args.precisions]
    plain = {}
    if not args.no_plain:  # the same step written plainly (bench/plain_keras_step.py), float32, in this process
        for b in args.batch_sizes:
            common.reset_keras()
            plain[b] = plain_keras_step.time_plain_step(train_array, b, args.warmup, args.steps)
    peaks_after = common.measure_peaks(args.quick)
    peaks = {k: max(peaks_before[k], peaks_after[k]) for k in peaks_before}
    rows = [to_row(raw, peaks) for raw in raws]
    for row in rows:
        if row["batch_size"] in plain:
            row["plain_keras_examples_per_second"] = plain[row["batch_size"]]["examples_per_second"]
            row["speedup_vs_plain_keras"] = row["examples_per_second"] / row["plain_keras_examples_per_second"]
    for row in rows:
        base = next((r for r in rows if r["batch_size"] == row["batch_size"] and r["precision"] == "float32"), None)
        if base is not None and row["precision"] != "float32":
            row["speedup_vs_float32"] = row["examples_per_second"] / base["examples_per_second"]
    settings = {**vars(args), "train_examples": len(train_array), "peaks_before": peaks_before,
                "plain_keras_step": {b: {k: v for k, v in r.items() if k != "name"} for b, r in plain.items()},
                "peaks_after": peaks_after,
                "flop_convention": "3 * F * T per example, F = operator forward matmul FLOPs (bench/common.py)"}
    path = common.write_results(SCRIPT, rows, results_dir=args.results_dir, settings=settings, started=started)
    print(f"matmul peak: float32 {peaks['float32']:.0f} GFLOP/s, bfloat16 {peaks['bfloat16']:.0f} GFLOP/s "
          f"(best of before/after)")
    common.print_table(rows, ["name", "examples_per_second", "achieved_gflops", "ratio_to_peak",
                              "matmul_only_examples_per_second", "ratio_to_matmul_only",
                              "plain_keras_examples_per_second", "speedup_vs_plain_keras", "speedup_vs_float32",
                              "traces_during_timing"], title="training throughput (median step)")
    print(f"\nwritten to {path}")
    return rows


if __name__ == "__main__":
    main()
