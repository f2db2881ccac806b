"""What the training-batch lower bound costs the denoising step (issue 14): the step with and without it.

    python bench/train_bound.py [--rounds 8] [--steps 10] [--batch-size 100] [--quick] [--results-dir DIR]

Two copies of the paper's MNIST model (float32), one with train_bound=True (the default: the draws' densities
under p(t) and q(t) are computed on every step for the progress bar's lower bound) and one with
train_bound=False (`--no-train-bound`: the denoising gradient needs only the draws and log p(t)(x | z~(t-1))).
Both run the same traced step on the same batches; rounds alternate their order so that a change of load hits
both. Reports the median seconds per step of each and their ratio.
"""

from __future__ import annotations

import time

import common  # first: sets up sys.path and TensorFlow's logging
import numpy as np

SCRIPT = "train_bound"


def seconds_per_step(step, batches) -> float:
    started = time.perf_counter()
    for batch in batches:
        logs = step(batch)
    float(logs["loss"])  # waits for the last step
    return (time.perf_counter() - started) / len(batches)


def main() -> None:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="steps per timing")
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    started = time.time()
    import tensorflow as tf

    from infusion_tf import data, training
    from infusion_tf.config import InfusionConfig

    rounds, steps = (2, 2) if args.quick else (args.rounds, args.steps)
    train = data.load_splits("mnist").train[:max(1000, steps * args.batch_size)]
    dataset, _ = data.make_train_dataset(train, args.batch_size, seed=0, dequantize=True)
    batches = list(dataset.take(steps))
    runs = {}
    for bound in (True, False):
        model = training.build_model(InfusionConfig(train_bound=bound, batch_size=args.batch_size), train)
        runs[bound] = tf.function(model.train_step)
        seconds_per_step(runs[bound], batches[:1])  # traces
    times = {True: [], False: []}
    for r in range(rounds):
        for bound in ((True, False) if r % 2 == 0 else (False, True)):
            times[bound].append(seconds_per_step(runs[bound], batches))
    rows = [{"name": f"denoising step, train_bound={bound}", "batch_size": args.batch_size,
             "median_seconds_per_step": float(np.median(times[bound])), "seconds_per_step": times[bound],
             "examples_per_second": args.batch_size / float(np.median(times[bound]))} for bound in (True, False)]
    rows.append({"name": "speed-up without the training bound",
                 "ratio": rows[0]["median_seconds_per_step"] / rows[1]["median_seconds_per_step"]})
    common.print_table(rows, ["name", "median_seconds_per_step", "examples_per_second", "ratio"])
    if not args.quick:
        print(f"written to {common.write_results(SCRIPT, rows, results_dir=args.results_dir, settings=vars(args), started=started)}")


if __name__ == "__main__":
    main()
