"""Latency of the SavedModel `sample` signature after loading it in a fresh process.

    python bench/serving.py [--saved-model PATH] [--batch-sizes 1 64] [--num-steps 30] [--repeats 20]
                            [--quick] [--results-dir DIR]

Without --saved-model, the paper's MNIST model (random weights, prior fitted to MNIST) is exported with
`export.export_saved_model` into a temporary folder. A fresh Python process then imports TensorFlow,
loads the SavedModel with tf.saved_model.load (no infusion_tf, no Keras model code involved) and calls
    loaded.sample(num_samples=n, num_steps=S, seed=i)["images"]          # [n, 28, 28, 1]
once per batch size to warm up (reported as first_call_seconds), then --repeats times: median and p90
latency. Rows: the import and load times, the first call, and one row per batch size with
latency_seconds (median), samples/s and, from F * S FLOPs per sample, the ratio to the float32 matmul
peak measured in that process after the latencies.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

SCRIPT = "serving"


def child(args: argparse.Namespace) -> None:
    """Runs in the fresh process: import, load, call; writes the raw timings to args.child_output."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()
    import tensorflow as tf
    import_seconds = time.perf_counter() - start

    start = time.perf_counter()
    loaded = tf.saved_model.load(args.child)
    load_seconds = time.perf_counter() - start

    def call(n: int, seed: int) -> float:
        start = time.perf_counter()
        images = loaded.sample(num_samples=tf.constant(n, tf.int32), num_steps=tf.constant(args.num_steps, tf.int32),
                               seed=tf.constant(seed, tf.int32))["images"]
        images.numpy()
        return time.perf_counter() - start

    result = {"import_seconds": import_seconds, "load_seconds": load_seconds, "first_call": {}, "latencies": {}}
    for n in args.batch_sizes:
        result["first_call"][str(n)] = call(n, 0)
        result["latencies"][str(n)] = [call(n, i + 1) for i in range(args.repeats)]
    import common  # after the measurements: it imports infusion_tf, which the loaded model does not need

    result["peaks"] = common.measure_peaks(args.quick)
    result["peak_rss_mb"] = common.peak_rss_mb()
    with open(args.child_output, "w") as f:
        json.dump(result, f)


def export_model(folder: str) -> tuple[str, int]:
    """Exports the paper's MNIST model (random weights, fitted prior) into folder; returns (path, F)."""
    import common

    from infusion_tf import InfusionConfig, InfusionModel, data
    from infusion_tf.export import export_saved_model

    common.reset_keras()
    model = InfusionModel(InfusionConfig())
    model.fit_prior(data.load_splits("mnist").train)
    path = export_saved_model(model, os.path.join(folder, "saved_model"))
    return path, common.operator_forward_flops(model)


def forward_flops_of(saved_model: str) -> int | None:
    """F of the model whose run folder holds the SavedModel (config.json beside it), or None."""
    import common

    from infusion_tf import InfusionModel
    from infusion_tf.config import load_config

    try:
        config = load_config(os.path.dirname(os.path.abspath(saved_model)))
        return common.operator_forward_flops(InfusionModel(config))
    except (FileNotFoundError, ValueError):
        return None


def rows_from(raw: dict, forward: int | None, num_steps: int) -> list[dict]:
    import common

    peak = raw["peaks"]["float32"]
    rows = [{"name": "import tensorflow", "latency_seconds": raw["import_seconds"]},
            {"name": "load SavedModel", "latency_seconds": raw["load_seconds"]}]
    for n, first in raw["first_call"].items():
        rows.append({"name": f"first call n={n}", "num_samples": int(n), "latency_seconds": first})
    for n, latencies in raw["latencies"].items():
        timing = common.percentile_summary(latencies)
        n = int(n)
        achieved = None if forward is None else n * num_steps * forward / timing["median"] / 1e9
        rows.append({
            "name": f"sample n={n} steps={num_steps}",
            "num_samples": n,
            "num_steps": num_steps,
            "latency_seconds": timing["median"],
            "latency_p90_seconds": timing["p90"],
            "latency_mean_seconds": timing["mean"],
            "latency": timing,
            "samples_per_second": n / timing["median"],
            "achieved_gflops": achieved,
            "peak_gflops": peak,
            "peak_dtype": "float32",
            "ratio_to_peak": None if achieved is None else achieved / peak,
        })
    for row in rows:
        row["peak_gflops"] = peak
        row.setdefault("ratio_to_peak", None)
    return rows


def main(argv=None) -> list[dict] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few calls only: checks that the script works")
    parser.add_argument("--results-dir", default=None, help="where serving.json is written (default bench/results)")
    parser.add_argument("--saved-model", default=None, help="time this SavedModel instead of a fresh export")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--num-steps", type=int, default=30, help="sampling steps (the paper: 30)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: the fresh process
    parser.add_argument("--child-output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 3
    if args.repeats < 1 or args.num_steps < 1 or any(n < 1 for n in args.batch_sizes):
        parser.error("--repeats, --num-steps and --batch-sizes must be >= 1")
    if args.child:
        child(args)
        return None

    import common

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_serving_") as folder:
        if args.saved_model is None:
            saved_model, forward = export_model(folder)
        else:
            saved_model = os.path.abspath(args.saved_model)
            forward = forward_flops_of(saved_model)
        output = os.path.join(folder, "child.json")
        command = [sys.executable, os.path.abspath(__file__), "--child", saved_model, "--child-output", output,
                   "--num-steps", str(args.num_steps), "--repeats", str(args.repeats),
                   "--batch-sizes", *map(str, args.batch_sizes), *(["--quick"] if args.quick else [])]
        subprocess.run(command, check=True, cwd=str(common.REPO))
        with open(output) as f:
            raw = json.load(f)
    rows = rows_from(raw, forward, args.num_steps)
    settings = {k: v for k, v in vars(args).items() if not k.startswith("child")}
    settings.update(forward_flops_per_sample_step=forward, child_peak_rss_mb=raw["peak_rss_mb"],
                    child_peaks=raw["peaks"], saved_model=args.saved_model or "fresh export (random weights)")
    path = common.write_results(SCRIPT, rows, results_dir=args.results_dir, settings=settings, started=started)
    common.print_table(rows, ["name", "latency_seconds", "latency_p90_seconds", "samples_per_second",
                              "achieved_gflops", "peak_gflops", "ratio_to_peak"],
                       title="SavedModel `sample` in a fresh process")
    print(f"\nwritten to {path}")
    return rows


if __name__ == "__main__":
    main()
