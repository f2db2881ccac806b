"""The recipe study of issue 15: which training recipe buys the most nats of lower bound per CPU-hour.

    taskset -c 1 python train/recipe_study.py --output-dir ~/runs/recipe --budget-minutes 8

Two studies: T = 15, omega = 0.01 warm-started from `pretrained/mnist` (the regime in which the long run goes
on), and T = 5, omega = 0.1 from scratch. Each recipe of a study gets the same CPU budget, spent as whole epochs:

1. a calibration run on a fifth of the training and validation data (2 epochs, `--train-examples 10000
   --validation-examples 2000`) measures the recipe's CPU seconds per epoch (the second epoch, without tracing,
   times five; `epoch_cpu_seconds` of log.csv), and the recipe trains for budget / that many epochs;
2. `train/run.py` trains it (the learning-rate decays end at that epoch);
3. `eval/run.py` measures the validation lower bound of the final weights (1000 examples, k = 10, batch
   statistics recomputed over the training set, the same seed for every recipe so that the comparison is paired):
   the raw weights (`checkpoints/last.keras`) and the exponential moving average (`last.weights.h5`).

Every recipe keeps an average (`--ema-momentum`), which does not change the raw weights, so each run gives two
rows: "constant" raw is the paper's recipe. Writes recipe_study.json, recipe_study.md and recipe_study.png
(the validation bound of each epoch, batch statistics, against CPU minutes). Every step is resumable: rerun the
same command after an interruption and what is finished is skipped. Pin it to one core (taskset) so that other
work on the machine does not change the budget.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np

from studies import run_command, trained_epochs

STUDIES = {  # name: (flags, description)
    "T15": (["--num-steps", "15", "--omega", "0.01", "--init-from", "pretrained/mnist"],
            "T = 15, omega = 0.01, warm start from pretrained/mnist (51 epochs)"),
    "T5": (["--num-steps", "5", "--omega", "0.1"], "T = 5, omega = 0.1, from scratch"),
}
EMA = ["--ema-momentum", "0.999"]
FP32 = ["--precision", "float32"]
# name: (flags, description). Batch 512 scales the learning rate by sqrt(5.12) and the average's momentum so that
# it spans the same number of examples (0.999 ** 5.12 = 0.995).
RECIPES = {
    "constant": (["--lr-schedule", "constant", *EMA, *FP32], "Adam 1e-3 constant, batch 100, float32"),
    "cosine": (["--lr-schedule", "cosine", *EMA, *FP32], "cosine decay to 0 at the budget's end, batch 100, float32"),
    "cosine_bf16": (["--lr-schedule", "cosine", *EMA, "--precision", "mixed_bfloat16"],
                    "cosine, batch 100, mixed_bfloat16"),
    "cosine_b512_bf16": (["--lr-schedule", "cosine", "--batch-size", "512", "--learning-rate", "0.00226",
                          "--ema-momentum", "0.995", "--precision", "mixed_bfloat16"],
                         "cosine, batch 512, Adam 2.26e-3, mixed_bfloat16"),
    "cosine_seed1": (["--lr-schedule", "cosine", *EMA, *FP32, "--seed", "1"], "cosine, batch 100, float32, seed 1"),
    "constant_bf16": (["--lr-schedule", "constant", *EMA, "--precision", "mixed_bfloat16"],
                      "Adam 1e-3 constant, batch 100, mixed_bfloat16"),
}
START = ["--overwrite", "--recipe", "paper"]  # a new run starts from the paper's recipe, which the flags change
CALIBRATION_FRACTION = 5  # the calibration run sees 1/5 of the 50 000 training and 10 000 validation examples


def _log(folder: str) -> list[dict[str, float]]:
    with open(os.path.join(folder, "log.csv"), newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def calibrate(output_dir: str, study: str, recipe: str) -> float:
    """CPU seconds of one full epoch of `recipe` (its second calibration epoch, times five)."""
    folder = os.path.join(output_dir, "calibration", f"{study}_{recipe}")
    if trained_epochs(folder) < 2:
        flags = [*STUDIES[study][0], *RECIPES[recipe][0], "--train-examples", str(50_000 // CALIBRATION_FRACTION),
                 "--validation-examples", str(10_000 // CALIBRATION_FRACTION), "--epochs", "2",
                 "--sample-every", "1000", "--output-dir", folder, "--verbose", "2"]
        run_command(["train/run.py", *flags, *(["--resume"] if trained_epochs(folder) else START)])
    return _log(folder)[1]["epoch_cpu_seconds"] * CALIBRATION_FRACTION


def train(output_dir: str, study: str, recipe: str, epochs: int) -> str:
    folder = os.path.join(output_dir, study, recipe)
    done = trained_epochs(folder)
    if done < epochs:
        flags = [*STUDIES[study][0], *RECIPES[recipe][0], "--epochs", str(epochs), "--sample-every", "1000",
                 "--output-dir", folder, "--verbose", "2"]
        run_command(["train/run.py", *flags, *(["--resume"] if done else START)])
    return folder


def evaluate(folder: str, weights: str, args) -> dict:
    """The validation lower bound of `weights` ("last": the average; "raw": checkpoints/last.keras)."""
    output = os.path.join(folder, f"validation_{weights}.json")
    if not os.path.isfile(output):
        path = os.path.join(folder, "checkpoints", "last.keras") if weights == "raw" else weights
        run_command(["eval/run.py", "--checkpoint", folder, "--weights", path, "--split", "validation",
                     "--num-examples", str(args.num_examples), "--k", str(args.k), "--repeats", "1",
                     "--output", output])
    with open(output) as f:
        return json.load(f)


def _paired_gain(paper, result: dict, name: str) -> dict:
    """Mean and standard error over the examples of (this bound - the paper recipe's), on the same examples."""
    if paper is None:
        return {}
    gain = np.asarray(result["per_example_nats"]["estimate"]) - np.asarray(paper)
    return {f"{name}_gain": float(gain.mean()), f"{name}_gain_se": float(gain.std(ddof=1) / np.sqrt(gain.size))}


def write_report(output_dir: str, rows: list[dict], args) -> None:
    with open(os.path.join(output_dir, "recipe_study.json"), "w") as f:
        json.dump({"budget_minutes": args.budget_minutes, "rows": rows}, f, indent=2)
    lines = [f"Budget: {args.budget_minutes} CPU minutes of training and validation epochs per recipe; validation "
             f"lower bound of the final weights on {args.num_examples} examples, k = {args.k}, batch statistics "
             "recomputed (s.e.: over the examples, which every row shares).", "",
             "The gains are paired differences from the paper's recipe (constant, raw weights) on the same examples.", "",
             "| study | recipe | epochs | CPU min | raw weights (nats) | gain | average (nats) | gain |",
             "|---|---|---|---|---|---|---|---|"]

    def gain(r, name):
        return f"{r[name + '_gain']:+.1f} +- {r[name + '_gain_se']:.1f}" if name + "_gain" in r else ""

    for r in rows:
        lines.append(f"| {r['study']} | {r['recipe']}: {r['description']} | {r['epochs']} | {r['cpu_minutes']:.1f} "
                     f"| {r['raw']:.1f} +- {r['raw_se']:.1f} | {gain(r, 'raw')} | {r['average']:.1f} "
                     f"+- {r['average_se']:.1f} | {gain(r, 'average')} |")
    with open(os.path.join(output_dir, "recipe_study.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    studies = [s for s in STUDIES if any(r["study"] == s for r in rows)]
    fig, axes = plt.subplots(1, len(studies), figsize=(5.5 * len(studies), 3.6), squeeze=False)
    for ax, study in zip(axes[0], studies):
        for r in rows:
            if r["study"] == study:
                ax.plot(r["curve_cpu_minutes"], r["curve_validation"], marker="o", markersize=3, label=r["recipe"])
        ax.set_title(STUDIES[study][1], fontsize=9)
        ax.set_xlabel("CPU minutes")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("validation lower bound, batch statistics (nats)")
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, "recipe_study.png"), dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--budget-minutes", type=float, default=8.0, help="CPU minutes of epochs per recipe")
    parser.add_argument("--studies", nargs="*", default=list(STUDIES), choices=list(STUDIES))
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--num-examples", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    for study in args.studies:
        for recipe in args.recipes:
            per_epoch = calibrate(args.output_dir, study, recipe)
            folder = train(args.output_dir, study, recipe, max(1, round(args.budget_minutes * 60 / per_epoch)))
            for weights in ("raw", "last"):
                evaluate(folder, weights, args)
            write_report(args.output_dir, finished_rows(args.output_dir, args), args)
    return 0


def finished_rows(output_dir: str, args) -> list[dict]:
    """A row for every recipe of every study whose run and evaluations are in output_dir, in RECIPES' order,
    whichever command trained it (so that recipes run by several commands share one report)."""
    rows = []
    for study in STUDIES:
        paper = None  # the paper recipe's per-example bounds, when it has run
        for recipe in RECIPES:
            folder = os.path.join(output_dir, study, recipe)
            results = [os.path.join(folder, f"validation_{w}.json") for w in ("raw", "last")]
            if not all(os.path.isfile(r) for r in results):
                continue
            raw, average = evaluate(folder, "raw", args), evaluate(folder, "last", args)  # read, not rerun
            if recipe == "constant":
                paper = raw["per_example_nats"]["estimate"]
            log = _log(folder)
            cpu = [sum(row["epoch_cpu_seconds"] for row in log[:i + 1]) / 60 for i in range(len(log))]
            rows.append({"study": study, "recipe": recipe, "description": RECIPES[recipe][1], "epochs": len(log),
                         "calibrated_cpu_seconds_per_epoch": calibrate(output_dir, study, recipe),
                         "cpu_minutes": cpu[-1], "wall_minutes": sum(row["epoch_seconds"] for row in log) / 60,
                         "raw": raw["mean_nats"], "raw_se": raw["standard_error_nats"],
                         "average": average["mean_nats"], "average_se": average["standard_error_nats"],
                         **_paired_gain(paper, raw, "raw"), **_paired_gain(paper, average, "average"),
                         "curve_cpu_minutes": cpu, "curve_validation": [row["val_lower_bound"] for row in log]})
    return rows


if __name__ == "__main__":
    sys.exit(main())
