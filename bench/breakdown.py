"""Where the time goes: the model's matrix products alone, and the operator alone inside chain scoring.

    python bench/breakdown.py [--checkpoint RUN_FOLDER]

1. products alone: 15 steps of the paper operator's products (784 -> 1200 -> 1200 -> 2 x 784), forward
   only, nothing else, at 100, 512 and 1500 rows, float32 and bfloat16: the most the model's own matrix
   shapes can reach, next to the square-matmul peak;
2. chain scoring at 2048 rows: the operator's 15 forward passes alone (products, batch normalization,
   heads) against `estimators.ChainScorer` on the same rows (plus the draws from q and the log-densities).
Writes bench/results/breakdown.json.
"""

from __future__ import annotations

import time

import common  # first: sets up sys.path and TensorFlow's logging

import numpy as np
import tensorflow as tf

from infusion_tf import InfusionConfig, InfusionModel, estimators

SHAPES = [(784, 1200), (1200, 1200), (1200, 1568)]  # the two heads as one product
STEPS = 15


def _best_seconds(function, repeats: int) -> float:
    function()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def products_alone(rows: int, dtype: str, repeats: int) -> float:
    """GFLOP/s of STEPS chained forward passes of the operator's products alone."""
    compute = tf.as_dtype(dtype)
    kernels = [tf.cast(tf.random.normal(s) / s[0] ** 0.5, compute) for s in SHAPES]
    x = tf.Variable(tf.cast(tf.random.uniform([rows, 784]), compute))

    @tf.function
    def chain():
        z = x
        for _ in range(STEPS):
            h = z
            for kernel in kernels:
                h = tf.matmul(h[:, :kernel.shape[0]], kernel)
            z = h[:, :784]  # the mean head feeds the next step
        return z

    flops = STEPS * 2 * rows * sum(a * b for a, b in SHAPES)
    return flops / _best_seconds(lambda: chain().numpy(), repeats) / 1e9


def chain_scoring(model: InfusionModel, rows: int, repeats: int) -> dict:
    """Seconds for the operator's STEPS forward passes alone and for ChainScorer, on `rows` chains."""
    operator = model.operator
    x = tf.Variable(np.random.default_rng(0).random((rows, *model.config.example_shape)).astype(np.float32))

    @tf.function
    def operator_alone():
        z = x
        for t in range(STEPS):
            mean, variance = operator(z, step=t)
            z = mean + 0.0 * variance  # keeps the variance head live
        return z

    scorer = estimators.ChainScorer.from_model(model)
    points = x.numpy()[: rows // 16]
    flops = rows * STEPS * common.operator_forward_flops(model)
    alone = _best_seconds(lambda: operator_alone().numpy(), repeats)
    scoring = _best_seconds(lambda: scorer(points, 16, [1, 2]), repeats)
    return {"operator_seconds": alone, "scoring_seconds": scoring, "operator_gflops": flops / alone / 1e9,
            "scoring_gflops": flops / scoring / 1e9, "share_outside_operator": (scoring - alone) / scoring}


def main(argv=None) -> list[dict]:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="time a trained run folder (default: random weights)")
    args = parser.parse_args(argv)
    started = time.time()
    repeats = 2 if args.quick else 8
    peaks = common.measure_peaks(quick=args.quick)
    rows = []
    for dtype in ("float32", "bfloat16"):
        for n in ((100,) if args.quick else (100, 512, 1500)):
            gflops = products_alone(n, dtype, repeats)
            rows.append({"name": f"products alone, {n} rows, {dtype}", "achieved_gflops": gflops,
                         "peak_gflops": peaks[dtype], "peak_dtype": dtype, "ratio_to_peak": gflops / peaks[dtype]})
    if args.checkpoint:
        from infusion_tf.checkpoint import load_checkpoint

        model = load_checkpoint(args.checkpoint)
    else:
        model = InfusionModel(InfusionConfig())
    scoring = chain_scoring(model, 256 if args.quick else 2048, repeats)
    rows.append({"name": "operator alone in chain scoring, float32", "achieved_gflops": scoring["operator_gflops"],
                 "peak_gflops": peaks["float32"], "ratio_to_peak": scoring["operator_gflops"] / peaks["float32"],
                 "latency_seconds": scoring["operator_seconds"]})
    rows.append({"name": "chain scoring (ChainScorer), float32", "achieved_gflops": scoring["scoring_gflops"],
                 "peak_gflops": peaks["float32"], "ratio_to_peak": scoring["scoring_gflops"] / peaks["float32"],
                 "latency_seconds": scoring["scoring_seconds"],
                 "share_outside_operator": scoring["share_outside_operator"]})
    common.print_table(rows, ["name", "achieved_gflops", "peak_gflops", "ratio_to_peak"], title="breakdown")
    path = common.write_results("breakdown", rows, results_dir=args.results_dir,
                                settings={"checkpoint": args.checkpoint, "steps": STEPS}, started=started)
    print(f"\nwritten to {path}")
    return rows


if __name__ == "__main__":
    main()
