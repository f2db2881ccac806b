"""Throughput of the tf.data training pipeline alone, beside the rate training consumes it at.

    python bench/input_pipeline.py [--batch-sizes 100 512] [--batches 300] [--quick] [--results-dir DIR]

For each batch size, with and without dequantization: `data.make_train_dataset` on the 50 000 MNIST
training images, iterated in Python as Keras' loop would (no model), after --warmup batches. Reports
examples per second and the CPU seconds the process spent per example (the pipeline shares the cores
with the training step). When `<results-dir>/train_step.json` exists, each row is compared with the
fastest training row of the same batch size: headroom = pipeline examples/s / training examples/s
(the pipeline must never be the bottleneck: headroom >> 1), and cpu_share_at_training_rate = CPU
seconds the pipeline needs per second of training at that rate.
"""

from __future__ import annotations

import math
import time

import common  # first: sets up sys.path and TensorFlow's logging

from infusion_tf import data

SCRIPT = "input_pipeline"


def measure(train_array, batch_size: int, dequantize: bool, warmup: int, batches: int) -> dict:
    """Iterates warmup + batches batches of the training pipeline; times the last `batches`."""
    started = time.time()
    per_epoch = len(train_array) // batch_size
    dataset, _ = data.make_train_dataset(train_array, batch_size, seed=0, dequantize=dequantize,
                                         epochs=math.ceil((warmup + batches) / per_epoch))
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        batch = next(iterator)  # float32 [batch_size, 28, 28, 1]
    checksum = float(batch[0, 14, 14, 0])  # the last batch reaches the host
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    examples = batches * batch_size
    return {
        "name": f"pipeline b{batch_size} {'dequantized' if dequantize else 'plain'}",
        "batch_size": batch_size,
        "dequantize": dequantize,
        "batches": batches,
        "examples_per_second": examples / wall,
        "seconds_per_batch": wall / batches,
        "cpu_seconds_per_example": cpu / examples,
        "checksum": checksum,
        "training_examples_per_second": None,
        "headroom": None,
        "cpu_share_at_training_rate": None,
        "duration_seconds": time.time() - started,
    }


def compare_with_training(rows: list[dict], results_dir) -> str | None:
    """Fills the training columns from train_step.json; returns its date, or None when there is none."""
    document = common.read_results("train_step", results_dir)
    if document is None:
        return None
    for row in rows:
        training = [m["examples_per_second"] for m in document["measurements"]
                    if m.get("batch_size") == row["batch_size"] and m.get("examples_per_second")]
        if training:
            needed = max(training)
            row["training_examples_per_second"] = needed
            row["headroom"] = row["examples_per_second"] / needed
            row["cpu_share_at_training_rate"] = row["cpu_seconds_per_example"] * needed
    return document.get("environment", {}).get("date", "unknown date")


def main(argv=None) -> list[dict]:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 512])
    parser.add_argument("--warmup", type=int, default=20, help="batches before timing")
    parser.add_argument("--batches", type=int, default=300, help="timed batches")
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.batches = 3, 20
    if args.warmup < 0 or args.batches < 1:
        parser.error(f"--warmup must be >= 0 and --batches >= 1, got {args.warmup} and {args.batches}")
    started = time.time()
    train_array = data.load_splits("mnist").train  # uint8 [50000, 28, 28, 1]
    rows = [measure(train_array, b, d, args.warmup, args.batches)
            for b in args.batch_sizes for d in (True, False)]
    training_date = compare_with_training(rows, args.results_dir)
    settings = {**vars(args), "train_examples": len(train_array), "train_step_results_date": training_date}
    path = common.write_results(SCRIPT, rows, results_dir=args.results_dir, settings=settings, started=started)
    common.print_table(rows, ["name", "examples_per_second", "cpu_seconds_per_example",
                              "training_examples_per_second", "headroom", "cpu_share_at_training_rate"],
                       title="input pipeline alone")
    if training_date is None:
        print(f"(no train_step.json in {args.results_dir}: run bench/train_step.py first for the headroom)")
    print(f"\nwritten to {path}")
    return rows


if __name__ == "__main__":
    main()
