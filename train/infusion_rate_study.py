"""The infusion-rate study of the paper's Table 4 and Figure 6, on one budget of epochs per model.

    python train/infusion_rate_study.py --output-dir ~/runs/table4 --epochs 5

Trains one model per (T, omega) row of Table 4 that we reproduce (alpha(0) = 0, increasing schedule;
for T = 1 the rate is alpha(0) itself, omega = 0, as in Figure 6a) with `train/run.py`, evaluates each
with `eval/run.py --estimator lower_bound` on the test set (batch statistics recomputed over the training
set, as the paper does for Table 4), and writes `<output>/table4.json`, `<output>/table4.md` and
`<output>/figure6.png` (validation lower bound per epoch). Every step is resumable: rerun the same
command after an interruption and finished runs and evaluations are skipped.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

from studies import run_command, trained_epochs

from infusion_tf.config import PAPER_TABLE4


# (name, num_steps, alpha0, omega, the paper's test lower bound in Table 4), in the table's order
ROWS = [(f"T{t}_alpha{alpha0}" if t == 1 else f"T{t}_omega{omega}", t, alpha0, omega, paper)
        for (t, alpha0, omega), paper in PAPER_TABLE4.items()]


def train_row(output_dir: str, name: str, num_steps: int, alpha0: float, omega: float, args) -> str:
    folder = os.path.join(output_dir, name)
    flags = ["--dataset", "mnist", "--num-steps", str(num_steps), "--alpha0", str(alpha0), "--omega", str(omega),
             "--epochs", str(args.epochs), "--precision", args.precision, "--output-dir", folder, "--verbose", "2"]
    if os.path.isfile(os.path.join(folder, "config.json")):
        if trained_epochs(folder) >= args.epochs and os.path.isdir(os.path.join(folder, "saved_model")):
            return folder
        flags.append("--resume")
    started = time.time()
    run_command(["train/run.py", *flags])
    wall = os.path.join(folder, "train_wall_seconds.json")
    seconds = time.time() - started
    if os.path.isfile(wall):
        with open(wall) as f:
            seconds += json.load(f)["seconds"]
    with open(wall, "w") as f:
        json.dump({"seconds": seconds}, f)
    return folder


def evaluate_row(folder: str, args) -> dict:
    output = os.path.join(folder, "results_lower_bound.json")
    if not os.path.isfile(output):
        run_command(["eval/run.py", "--checkpoint", folder, "--estimator", "lower_bound",
              "--num-examples", str(args.num_examples), "--k", str(args.k), "--repeats", str(args.repeats),
              "--output", output])
    with open(output) as f:
        return json.load(f)


def _validation_curve(folder: str) -> list[float]:
    with open(os.path.join(folder, "log.csv")) as f:
        return [float(row["val_lower_bound"]) for row in csv.DictReader(f)]


def write_report(output_dir: str, rows: list[dict], args) -> None:
    with open(os.path.join(output_dir, "table4.json"), "w") as f:
        json.dump({"epochs": args.epochs, "precision": args.precision, "rows": rows}, f, indent=2)
    lines = [f"Budget: {args.epochs} epochs of 500 batches of 100 per model ({args.precision}); test lower bound "
             f"on {args.num_examples} examples, k = {args.k}, {args.repeats} repeats, batch statistics recomputed.",
             "", "| T | alpha(0) | omega | ours (nats) | paper (nats) | best epoch | training minutes |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['num_steps']} | {r['alpha0']} | {r['omega']} | {r['test_lower_bound']:.1f} "
                     f"+- {r['std']:.1f} | {r['paper']:.2f} | {r['best_epoch']} | {r['train_minutes']:.1f} |")
    with open(os.path.join(output_dir, "table4.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted({r["num_steps"] for r in rows})
    fig, axes = plt.subplots(1, len(steps), figsize=(4 * len(steps), 3.2), squeeze=False)
    for ax, t in zip(axes[0], steps):
        for r in rows:
            if r["num_steps"] == t:
                curve = r["validation_curve"]
                ax.plot(range(1, len(curve) + 1), curve, marker="o", label=f"rate {r['omega'] or r['alpha0']}")
        ax.set_title(f"T = {t}")
        ax.set_xlabel("epoch")
        ax.legend()
    axes[0][0].set_ylabel("validation lower bound (nats)")
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, "figure6.png"), dpi=100)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--num-examples", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="names of the rows to run (default: all)")
    args = parser.parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    rows = []
    for name, num_steps, alpha0, omega, paper in ROWS:
        if args.only and name not in args.only:
            continue
        folder = train_row(args.output_dir, name, num_steps, alpha0, omega, args)
        result = evaluate_row(folder, args)
        curve = _validation_curve(folder)
        rows.append({"name": name, "num_steps": num_steps, "alpha0": alpha0, "omega": omega, "paper": paper,
                     "test_lower_bound": result["mean_nats"], "std": result["std_nats"],
                     "best_epoch": 1 + max(range(len(curve)), key=curve.__getitem__), "epochs": len(curve),
                     "train_minutes": _train_minutes(folder), "validation_curve": curve})
        write_report(args.output_dir, rows, args)
    return 0


def _train_minutes(folder: str) -> float:
    """Wall time of the training commands of this row, summed over resumptions."""
    log = os.path.join(folder, "train_wall_seconds.json")
    if os.path.isfile(log):
        with open(log) as f:
            return json.load(f)["seconds"] / 60
    return float("nan")


if __name__ == "__main__":
    sys.exit(main())
