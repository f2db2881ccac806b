"""Does mixed_bfloat16 training reach the float32 validation lower bound after the same number of steps?

    python bench/precision_accuracy.py --epochs 2 --seeds 0 1 --runs-dir ~/runs/precision

Trains the paper's MNIST model (T = 15, 2 x 1200) with `train/run.py` for the same number of epochs in
float32 and in mixed_bfloat16, with several seeds each, and compares the validation lower bound (nats,
10 000 validation examples, one chain each) after the last epoch: the difference of the two precisions'
means against the seed-to-seed spread within each precision (run-to-run noise). Runs are resumable:
rerun the command after an interruption. Writes bench/results/precision_accuracy.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time

import common  # noqa: E402  (bench/ is the script's folder, first on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_folder(runs_dir: str, precision: str, seed: int) -> str:
    return os.path.join(runs_dir, f"{precision}_seed{seed}")


def train(runs_dir: str, precision: str, seed: int, epochs: int, extra: list[str]) -> dict:
    folder = _run_folder(runs_dir, precision, seed)
    flags = ["--dataset", "mnist", "--precision", precision, "--seed", str(seed), "--epochs", str(epochs),
             "--output-dir", folder, "--verbose", "2", *extra]
    timing = os.path.join(folder, "wall_seconds.json")
    if os.path.isfile(os.path.join(folder, "config.json")):
        flags.append("--resume")
    started = time.time()
    subprocess.run([sys.executable, "train/run.py", *flags], check=True, cwd=ROOT)
    seconds = time.time() - started
    if os.path.isfile(timing) and "--resume" in flags:
        with open(timing) as f:
            seconds += json.load(f)["seconds"]
    with open(timing, "w") as f:
        json.dump({"seconds": seconds}, f)
    with open(os.path.join(folder, "log.csv")) as f:
        log = list(csv.DictReader(f))
    return {"precision": precision, "seed": seed, "epochs": len(log),
            "val_lower_bound": float(log[-1]["val_lower_bound"]), "train_lower_bound": float(log[-1]["lower_bound"]),
            "wall_seconds": seconds}


def compare(rows: list[dict]) -> dict:
    """Mean and seed-to-seed standard deviation per precision, and the difference of the means in units of
    its standard error (Welch): |z| below 2 means the precisions agree within run-to-run noise."""
    by = {p: [r["val_lower_bound"] for r in rows if r["precision"] == p] for p in ("float32", "mixed_bfloat16")}
    summary = {p: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else float("nan"),
                   "runs": v} for p, v in by.items()}
    difference = summary["mixed_bfloat16"]["mean"] - summary["float32"]["mean"]
    se = math.sqrt(sum(s["std"] ** 2 / len(s["runs"]) for s in summary.values()))
    return {**summary, "difference_nats": difference, "standard_error_nats": se,
            "z": difference / se if se > 0 else float("nan")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", default=os.path.expanduser("~/runs/precision"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-examples", type=int, default=None, help="quick runs: fewer training examples")
    parser.add_argument("--results-dir", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args(argv)
    extra = [] if args.train_examples is None else ["--train-examples", str(args.train_examples)]
    started = time.time()
    rows = [train(args.runs_dir, precision, seed, args.epochs, extra)
            for seed in args.seeds for precision in ("float32", "mixed_bfloat16")]
    result = compare(rows)
    for row in rows:
        row["name"] = f"{row['precision']} seed {row['seed']}"
    common.print_table(rows, ["name", "epochs", "val_lower_bound", "wall_seconds"])
    print(f"mixed_bfloat16 - float32 = {result['difference_nats']:+.2f} nats "
          f"(standard error {result['standard_error_nats']:.2f}, z = {result['z']:+.2f})")
    common.write_results("precision_accuracy", rows + [{"name": "comparison", **result}],
                         results_dir=args.results_dir, started=started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
