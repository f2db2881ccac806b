"""Peak resident memory of the training command and of importance sampling with large k.

    python bench/memory.py [--train-examples 5000] [--k 2000 20000] [--rows-per-call 2048 8192]
                           [--checkpoint RUN_FOLDER] [--quick] [--results-dir DIR]

Each measurement runs a command in its own child process and reads that child's peak resident set
size from os.wait4 (the rusage of that one child and the children it waited for, i.e. ru_maxrss of the
command alone, not of this script or of the other measurements):
    train   python train/run.py --dataset mnist --epochs 1 --train-examples N --output-dir TMP/run
            (validation, sample pictures and the SavedModel export included); bound: 2 GiB;
    is      python eval/run.py --checkpoint TMP/run --estimator importance_sampling --k K --num-examples 2
            --repeats 1 --rows-per-call R --output TMP/...   (batch-norm recompute included)
            for every K of --k at the first R, and the largest K at every other R. Memory must be set by
            R (the chunk of chains scored per call), not by K: compare the rows of one R.
With --checkpoint the training run is skipped and the IS runs use that folder (results go to TMP only).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import common  # first: sets up sys.path and TensorFlow's logging

SCRIPT = "memory"
TRAIN_BOUND_MB = 2048.0  # the issue: training under 2 GiB


def run_measured(command: list[str], log_path: str) -> dict:
    """Runs `command` in a child process; returns its exit code, wall seconds and peak RSS in MB."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=str(common.REPO), env=env)
        try:
            _, status, usage = os.wait4(process.pid, 0)  # the rusage of this child alone
        except BaseException:
            process.kill()
            process.wait()
            raise
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        with open(log_path) as f:
            tail = "".join(f.readlines()[-30:])
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}; its output ends with:\n{tail}")
    return {"exit_code": process.returncode, "wall_seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024.0}


def train_row(folder: str, train_examples: int, validation_examples: int | None) -> tuple[dict, str]:
    run = os.path.join(folder, "run")
    command = [sys.executable, "train/run.py", "--dataset", "mnist", "--epochs", "1", "--train-examples",
               str(train_examples), "--output-dir", run, "--verbose", "2"]
    if validation_examples is not None:
        command += ["--validation-examples", str(validation_examples)]
    result = run_measured(command, os.path.join(folder, "train.log"))
    row = {"name": f"train 1 epoch, {train_examples} examples", "peak_rss_mb": result["peak_rss_mb"],
           "bound_mb": TRAIN_BOUND_MB, "within_bound": result["peak_rss_mb"] < TRAIN_BOUND_MB,
           "wall_seconds": result["wall_seconds"], "command": " ".join(common.portable_argv(command[1:]))}
    return row, run


def is_row(folder: str, checkpoint: str, k: int, rows_per_call: int, num_examples: int) -> dict:
    output = os.path.join(folder, f"results_is_k{k}_r{rows_per_call}.json")
    command = [sys.executable, "eval/run.py", "--checkpoint", checkpoint, "--estimator", "importance_sampling",
               "--k", str(k), "--num-examples", str(num_examples), "--repeats", "1",
               "--rows-per-call", str(rows_per_call), "--output", output]
    result = run_measured(command, os.path.join(folder, f"is_k{k}_r{rows_per_call}.log"))
    chains_per_call = min(k, rows_per_call)  # as estimators.score_chains splits the work
    examples_per_call = min(num_examples, max(1, rows_per_call // chains_per_call))
    return {"name": f"importance sampling k={k} rows={rows_per_call}", "k": k, "rows_per_call": rows_per_call,
            "rows_per_call_used": chains_per_call * examples_per_call, "num_examples": num_examples,
            "peak_rss_mb": result["peak_rss_mb"], "bound_mb": None, "within_bound": None,
            "mb_over_smallest_k": None, "wall_seconds": result["wall_seconds"],
            "command": " ".join(common.portable_argv(command[1:]))}


def main(argv=None) -> list[dict]:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--train-examples", type=int, default=5000)
    parser.add_argument("--validation-examples", type=int, default=None, help="default: all 10 000")
    parser.add_argument("--k", type=int, nargs="+", default=[2000, 20000], help="chains per example")
    parser.add_argument("--rows-per-call", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--num-examples", type=int, default=2, help="test examples of the IS runs")
    parser.add_argument("--checkpoint", default=None, help="run folder for the IS runs; skips the training run")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_examples, args.validation_examples = 1000, 500
        args.k, args.rows_per_call, args.num_examples = [200, 2000], args.rows_per_call[:1], 1
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as folder:
        checkpoint = args.checkpoint
        if checkpoint is None:
            row, checkpoint = train_row(folder, args.train_examples, args.validation_examples)
            rows.append(row)
            print(f"{row['name']}: {row['peak_rss_mb']:.0f} MB")
        first, *others = args.rows_per_call
        plan = [(k, first) for k in sorted(args.k)] + [(max(args.k), r) for r in others]
        for k, rows_per_call in plan:
            row = is_row(folder, os.path.abspath(checkpoint), k, rows_per_call, args.num_examples)
            rows.append(row)
            print(f"{row['name']}: {row['peak_rss_mb']:.0f} MB")
    for row in rows:
        if "k" in row:
            smallest = min((r for r in rows if r.get("rows_per_call") == row["rows_per_call"]), key=lambda r: r["k"])
            row["mb_over_smallest_k"] = row["peak_rss_mb"] - smallest["peak_rss_mb"]
    settings = {**vars(args), "train_bound_mb": TRAIN_BOUND_MB,
                "method": "os.wait4 rusage of each command's own child process (ru_maxrss)"}
    path = common.write_results(SCRIPT, rows, results_dir=args.results_dir, settings=settings, started=started)
    common.print_table(rows, ["name", "peak_rss_mb", "bound_mb", "within_bound", "rows_per_call_used",
                              "mb_over_smallest_k", "wall_seconds"], title="peak resident memory (MB = 2^20 bytes)")
    print(f"\nwritten to {path}")
    return rows


if __name__ == "__main__":
    main()
