"""Evaluation throughput: lower-bound examples/s and importance-sampling chains/s, beside the matmul peak.

    python bench/evaluation.py [--precision float32 mixed_bfloat16] [--rows-per-call 2048 8192]
                               [--lb-examples 1000 --lb-chains 10] [--is-examples 64 --is-chains 1000]
                               [--checkpoint RUN_FOLDER] [--quick] [--results-dir DIR]

The T = 15 paper model (InfusionConfig defaults) with random weights, its prior fitted to the MNIST
training set and its moving batch-norm statistics (throughput does not depend on the weights; pass
--checkpoint to time a trained model instead), scored by `estimators.ChainScorer` / `score_chains` on
dequantized MNIST test examples, as `eval/run.py` does:
    lower bound          --lb-examples examples x --lb-chains chains (the evaluation command's k = 10);
    importance sampling  --is-examples examples x --is-chains chains (the issue's target: k = 1000 on
                         1000 examples; the default runs 64 examples so the script takes a minute or two).
Each setting is warmed up by one call of its chunk's shape, then timed end to end (host-side
accumulation included). Model FLOPs per chain = F * T (bench/common.py); ratio_to_peak is against the
matmul peak of the compute dtype, measured in the same run. In the same run too: the chunk's matrix products
alone (`common.matmul_only_seconds`, ratio_to_matmul_only = their time over the estimator's) and, for
importance sampling, the same estimator written plainly (`plain_keras_step.PlainImportanceSampler`,
float32; speedup_vs_plain_keras), unless --no-plain.
"""

from __future__ import annotations

import time

import common  # first: sets up sys.path and TensorFlow's logging

import keras
import numpy as np
import plain_keras_step

from infusion_tf import InfusionConfig, InfusionModel, data, estimators

SCRIPT = "evaluation"
COMPUTE_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16"}


def build(precision: str, train_array, checkpoint: str | None) -> InfusionModel:
    """The model to time: a trained checkpoint, or random weights with the prior fitted (Eq. 1)."""
    common.reset_keras()
    if checkpoint is not None:
        from infusion_tf.checkpoint import load_checkpoint

        return load_checkpoint(checkpoint, precision=precision)
    keras.utils.set_random_seed(0)
    model = InfusionModel(InfusionConfig(precision=precision))  # the config sets the layers' precision
    model.fit_prior(train_array)
    return model


def test_points(test_array, num_examples: int) -> np.ndarray:
    """The first test examples, dequantized with a fixed seed as eval/run.py does. float32 [n, 28, 28, 1]"""
    return data.eval_points(test_array[:num_examples], seed=0, dequantize=True)


def _tracing_count(scorer) -> int | None:
    function = getattr(scorer, "_score", None)
    counter = getattr(function, "experimental_get_tracing_count", None)
    return None if counter is None else int(counter())


def measure(scorer, x: np.ndarray, estimator: str, chains: int, rows_per_call: int, seed: int) -> dict:
    """Warms up with one call of the chunk's shape, then times score_chains on all of x."""
    chains_per_call = min(chains, rows_per_call)
    examples_per_call = max(1, rows_per_call // chains_per_call)
    estimators.score_chains(scorer, x[:examples_per_call], chains_per_call, seed + 1, rows_per_call=rows_per_call)
    traces = _tracing_count(scorer)
    start = time.perf_counter()
    stats = estimators.score_chains(scorer, x, chains, seed, rows_per_call=rows_per_call)
    seconds = time.perf_counter() - start
    values = stats.importance_sampling() if estimator == "importance_sampling" else stats.lower_bound()
    after = _tracing_count(scorer)
    return {"seconds": seconds, "examples": len(x), "chains": chains, "rows_per_call": rows_per_call,
            "rows_per_call_used": examples_per_call * chains_per_call,
            "calls": -(-len(x) // examples_per_call) * -(-chains // chains_per_call),
            "mean_nats": float(np.mean(values)),
            "traces_during_timing": None if traces is None or after is None else after - traces}


def to_row(raw: dict, estimator: str, precision: str, forward: int, num_steps: int, peaks: dict) -> dict:
    chains_total = raw["examples"] * raw["chains"]
    chains_per_second = chains_total / raw["seconds"]
    achieved = chains_per_second * forward * num_steps / 1e9
    peak = peaks[COMPUTE_DTYPE[precision]]
    short = "lb" if estimator == "lower_bound" else "is"
    return {
        "name": f"{short} k={raw['chains']} rows={raw['rows_per_call']} {precision}",
        "estimator": estimator,
        "precision": precision,
        "examples_per_second": raw["examples"] / raw["seconds"],
        "chains_per_second": chains_per_second,
        "achieved_gflops": achieved,
        "peak_gflops": peak,
        "peak_dtype": COMPUTE_DTYPE[precision],
        "ratio_to_peak": achieved / peak,
        "ratio_to_float32_peak": achieved / peaks["float32"],
        "model_gflops_per_chain": forward * num_steps / 1e9,
        "seconds_for_1000_examples": raw["seconds"] * 1000 / raw["examples"],
        "matmul_only_chains_per_second": 1.0 / raw["matmul_only_seconds_per_chain"],
        "ratio_to_matmul_only": raw["matmul_only_seconds_per_chain"] * chains_total / raw["seconds"],
        "plain_keras_chains_per_second": raw["plain"]["chains_per_second"] if "plain" in raw else None,
        "speedup_vs_plain_keras": chains_per_second / raw["plain"]["chains_per_second"] if "plain" in raw else None,
        **{k: raw[k] for k in ("examples", "chains", "rows_per_call", "rows_per_call_used", "calls", "mean_nats",
                               "traces_during_timing")},
        "duration_seconds": raw["seconds"],
    }


def main(argv=None) -> list[dict]:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--precision", nargs="+", default=["float32", "mixed_bfloat16"], choices=sorted(COMPUTE_DTYPE))
    parser.add_argument("--rows-per-call", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--lb-examples", type=int, default=1000)
    parser.add_argument("--lb-chains", type=int, default=10)
    parser.add_argument("--is-examples", type=int, default=64)
    parser.add_argument("--is-chains", type=int, default=1000)
    parser.add_argument("--checkpoint", default=None, help="time a trained run folder instead of random weights")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain Keras importance sampler")
    args = parser.parse_args(argv)
    if args.quick:
        args.lb_examples, args.is_examples, args.rows_per_call = 200, 2, args.rows_per_call[:1]
    for name in ("lb_examples", "lb_chains", "is_examples", "is_chains"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if any(r < 1 for r in args.rows_per_call):
        parser.error("--rows-per-call values must be >= 1")
    started = time.time()
    splits = data.load_splits("mnist")
    x_lb, x_is = test_points(splits.test, args.lb_examples), test_points(splits.test, args.is_examples)
    peaks_before = common.measure_peaks(args.quick)
    raws = []
    for precision in args.precision:
        model = build(precision, splits.train, args.checkpoint)
        forward, num_steps = common.operator_forward_flops(model), model.config.num_steps
        scorer = estimators.ChainScorer.from_model(model)
        for rows_per_call in args.rows_per_call:
            for estimator, x, k in (("lower_bound", x_lb, args.lb_chains),
                                    ("importance_sampling", x_is, args.is_chains)):
                raw = measure(scorer, x, estimator, k, rows_per_call, seed=len(raws))
                used = raw["rows_per_call_used"]  # the products of one call: T forward calls on these rows
                raw["matmul_only_seconds_per_chain"] = common.matmul_only_seconds(
                    *common.operator_kernel_shapes(model), [(used, num_steps, "forward")],
                    COMPUTE_DTYPE[precision]) / used
                if estimator == "importance_sampling" and not args.no_plain:
                    common.reset_keras()  # the plain reference (float32), same examples, chains and call size
                    raw["plain"] = plain_keras_step.time_plain_importance_sampling(
                        splits.train, x.reshape(len(x), -1), k, rows_per_call)
                    keras.config.set_dtype_policy(precision)
                raws.append((raw, estimator, precision, forward, num_steps))
                print(f"{estimator} {precision} rows_per_call={rows_per_call}: {raw['seconds']:.1f} s")
        del scorer, model
    peaks_after = common.measure_peaks(args.quick)
    peaks = {k: max(peaks_before[k], peaks_after[k]) for k in peaks_before}
    rows = [to_row(*raw, peaks) for raw in raws]
    settings = {**vars(args), "peaks_before": peaks_before, "peaks_after": peaks_after,
                "weights": args.checkpoint or "random (prior fitted, moving batch-norm statistics)",
                "flop_convention": "F * T per chain, F = operator forward matmul FLOPs (bench/common.py)"}
    path = common.write_results(SCRIPT, rows, results_dir=args.results_dir, settings=settings, started=started)
    print(f"matmul peak: float32 {peaks['float32']:.0f} GFLOP/s, bfloat16 {peaks['bfloat16']:.0f} GFLOP/s "
          f"(best of before/after)")
    common.print_table(rows, ["name", "chains_per_second", "achieved_gflops", "ratio_to_peak",
                              "matmul_only_chains_per_second", "ratio_to_matmul_only", "plain_keras_chains_per_second",
                              "speedup_vs_plain_keras", "seconds_for_1000_examples", "traces_during_timing"],
                       title="evaluation throughput")
    print(f"\nwritten to {path}")
    return rows


if __name__ == "__main__":
    main()
