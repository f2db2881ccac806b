"""A run's learning curve from its snapshots, and how much more training a target bound would take at the measured
pace: `python eval/learning_curve.py --checkpoint DIR --prior-epochs 96 --target 1350.6`.

The run must have trained with `--snapshot-every N` (checkpoints/epochNNNN.weights.h5: the weights evaluation reads,
the average with --ema-momentum). Each snapshot is scored as the recipe study scores a run: the lower bound (Eq. 3)
of the split's first --num-examples images, k chains, one repeat, batch-norm statistics recomputed over the training
set (cached beside each snapshot), the same --seed for every snapshot, so that the points are paired. A point is
written to <output-dir>/epochNNNN.json and read back on a rerun; the curve resumes where it stopped.

The extrapolation fits bound = a + b log2(epochs) (epochs counted from the start of training: --prior-epochs are the
epochs the run's initial weights already had, e.g. from --init-from) to the last --fit-points points, and reads off
the epochs where the line reaches --target, and the CPU hours (log.csv's median epoch_cpu_seconds). A bound that
grows by a constant number of nats per doubling of training is an assumption, not a measurement: the report gives
the range from the slope's standard error and says when the slope is not resolved.
Output: learning_curve.json, learning_curve.md and learning_curve.png in --output-dir (default: <checkpoint>/curve).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import math
import os
import re
import sys

import numpy as np

from infusion_tf import provenance
from infusion_tf.config import check_seed
from infusion_tf.console import (BAD_INPUT, OneLineErrorParser, check_output_folder, field_help, print_error,
                                 quiet_tensorflow_logs)

__all__ = ["CurveSettings", "LogLinearFit", "fit_log_linear", "snapshots", "run", "main"]


@dataclasses.dataclass(frozen=True)
class CurveSettings:
    checkpoint: str = ""  # run folder trained with --snapshot-every
    output_dir: str = ""  # default: <checkpoint>/curve
    split: str = "validation"  # test | validation: the split whose first --num-examples images score each snapshot
    num_examples: int = 1000
    k: int = 10  # chains per example of the lower bound
    seed: int = 0  # dequantization noise and chains, the same for every snapshot
    prior_epochs: int = 0  # epochs the run's initial weights had already trained (--init-from)
    every: int = 1  # score every N-th snapshot (and always the last)
    target: float = 0.0  # a bound in nats to extrapolate to; 0: none
    fit_points: int = 6  # the fit uses the last N points

    def __post_init__(self):
        if not self.checkpoint:
            raise ValueError("--checkpoint is required")
        if not os.path.isdir(self.checkpoint):
            raise FileNotFoundError(f"checkpoint folder {self.checkpoint!r} does not exist")
        if self.split not in ("test", "validation"):
            raise ValueError(f"split must be test or validation, got {self.split!r}")
        for name in ("num_examples", "k", "every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prior_epochs < 0:
            raise ValueError(f"prior_epochs must be >= 0, got {self.prior_epochs}")
        if self.fit_points < 3:
            raise ValueError(f"fit_points must be >= 3 (a line and its error), got {self.fit_points}")
        check_seed(self.seed)


def snapshots(checkpoint: str) -> list[tuple[int, str]]:
    """(epoch, path) of checkpoints/epochNNNN.weights.h5 in epoch order."""
    found = []
    for path in glob.glob(os.path.join(checkpoint, "checkpoints", "epoch*.weights.h5")):
        match = re.fullmatch(r"epoch(\d+)\.weights\.h5", os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


@dataclasses.dataclass(frozen=True)
class LogLinearFit:
    """bound = intercept + slope log2(epochs): slope is nats per doubling of training."""

    intercept: float
    slope: float
    slope_se: float


def fit_log_linear(epochs, bounds) -> LogLinearFit:
    """Least squares of bound on log2(epochs) (n >= 3 points, epochs > 0), with the slope's standard error."""
    x = np.log2(np.asarray(epochs, float))
    y = np.asarray(bounds, float)
    if x.size < 3 or x.size != y.size:
        raise ValueError(f"the fit needs >= 3 (epoch, bound) pairs, got {x.size} and {y.size}")
    if np.ptp(x) == 0:
        raise ValueError("the fit needs points at more than one epoch")
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / (xc ** 2).sum())
    intercept = float(y.mean() - slope * x.mean())
    residual = y - (intercept + slope * x)
    slope_se = float(np.sqrt((residual ** 2).sum() / (x.size - 2) / (xc ** 2).sum()))
    return LogLinearFit(intercept, slope, slope_se)


def epochs_to_target(epochs, bounds, target: float) -> dict:
    """The fit's epochs (and the range from slope +- one standard error, each line through the data's centre) to
    reach `target`; inf where that slope is not positive."""
    fit = fit_log_linear(epochs, bounds)
    x_mean, y_mean = float(np.mean(np.log2(np.asarray(epochs, float)))), float(np.mean(bounds))

    def through_centre(slope):
        return math.inf if slope <= 0 else 2.0 ** (x_mean + (target - y_mean) / slope)

    return {"intercept": fit.intercept, "nats_per_doubling": fit.slope, "nats_per_doubling_se": fit.slope_se,
            "epochs": through_centre(fit.slope), "epochs_low": through_centre(fit.slope + fit.slope_se),
            "epochs_high": through_centre(fit.slope - fit.slope_se),
            "resolved": bool(fit.slope > 2 * fit.slope_se)}


def _cpu_seconds_per_epoch(checkpoint: str) -> float | None:
    path = os.path.join(checkpoint, "log.csv")
    if not os.path.isfile(path):
        return None
    with open(path, newline="") as f:
        values = [float(r["epoch_cpu_seconds"]) for r in csv.DictReader(f) if r.get("epoch_cpu_seconds")]
    return float(np.median(values)) if values else None


def _score(settings: CurveSettings, path: str, output: str) -> dict:
    from infusion_tf import evaluate

    if os.path.isfile(output):
        with open(output) as f:
            return json.load(f)
    parsed = evaluate.eval_parser().parse_args(
        ["--checkpoint", settings.checkpoint, "--weights", path, "--estimator", "lower_bound",
         "--split", settings.split, "--num-examples", str(settings.num_examples), "--k", str(settings.k),
         "--repeats", "1", "--seed", str(settings.seed), "--output", output])
    return evaluate.evaluate(evaluate.EvalSettings(**vars(parsed)))


def run(settings: CurveSettings) -> dict:
    folder = settings.output_dir or os.path.join(settings.checkpoint, "curve")
    check_output_folder(folder)
    found = snapshots(settings.checkpoint)
    if not found:
        raise FileNotFoundError(f"{settings.checkpoint} has no checkpoints/epochNNNN.weights.h5: train it with "
                                "--snapshot-every N (a resumed run may add it)")
    chosen = [s for i, s in enumerate(found) if i % settings.every == 0 or i == len(found) - 1]
    points = []
    for i, (epoch, path) in enumerate(chosen, 1):
        print(f"[{i}/{len(chosen)}] epoch {epoch} ({settings.prior_epochs + epoch} in all)", flush=True)
        result = _score(settings, path, os.path.join(folder, f"epoch{epoch:04d}.json"))
        points.append({"epoch": epoch, "total_epochs": settings.prior_epochs + epoch,
                       "bound_nats": result["mean_nats"], "standard_error_nats": result["standard_error_nats"],
                       "per_example_nats": result["per_example_nats"]["estimate"]})
    first = np.asarray(points[0]["per_example_nats"])
    for p in points:  # the gain over the first point on the same images and noise: paired, so its s.e. is small
        gain = np.asarray(p.pop("per_example_nats")) - first
        p["gain_over_first_nats"], p["gain_se"] = float(gain.mean()), float(gain.std(ddof=1) / math.sqrt(gain.size))
    cpu = _cpu_seconds_per_epoch(settings.checkpoint)
    shown = {**dataclasses.asdict(settings), "checkpoint": provenance.portable_path(settings.checkpoint),
             "output_dir": provenance.portable_path(folder)}  # no folder of this machine in the record
    report = {"settings": shown, "points": points, "cpu_seconds_per_epoch": cpu}
    fitted = points[-settings.fit_points:]
    if settings.target and len(fitted) >= 3 and len({p["total_epochs"] for p in fitted}) > 1:
        fit = epochs_to_target([p["total_epochs"] for p in fitted], [p["bound_nats"] for p in fitted],
                               settings.target)
        now = points[-1]["total_epochs"]
        fit["fit_epochs"] = [fitted[0]["total_epochs"], now]
        fit["target"] = settings.target
        if cpu:
            for name in ("epochs", "epochs_low", "epochs_high"):
                fit[f"cpu_hours_{name[7:] or 'fit'}"] = max(fit[name] - now, 0) * cpu / 3600
        report["extrapolation"] = fit
    from infusion_tf import files

    files.write_json(os.path.join(folder, "learning_curve.json"), report)
    with open(os.path.join(folder, "learning_curve.md"), "w") as f:
        f.write(_markdown(report) + "\n")
    _plot(report, os.path.join(folder, "learning_curve.png"))
    return {**report, "output_dir": folder}


def _markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"Lower bound (Eq. 3) of the first {s['num_examples']} {s['split']} images, k = {s['k']}, one repeat, "
             f"seed {s['seed']}, batch statistics recomputed; gain: paired difference from the first point.", "",
             "| epoch of the run | epochs in all | bound (nats) | s.e. | gain over the first point |",
             "| --- | --- | --- | --- | --- |"]
    for p in report["points"]:
        lines.append(f"| {p['epoch']} | {p['total_epochs']} | {p['bound_nats']:.1f} | {p['standard_error_nats']:.1f} "
                     f"| {p['gain_over_first_nats']:+.1f} +- {p['gain_se']:.1f} |")
    fit = report.get("extrapolation")
    if fit:
        lines += ["", f"Fit over epochs {fit['fit_epochs'][0]}-{fit['fit_epochs'][1]}: "
                      f"{fit['nats_per_doubling']:.1f} +- {fit['nats_per_doubling_se']:.1f} nats per doubling of the "
                      f"epochs" + ("" if fit["resolved"] else " (not resolved: under two standard errors)") + "."]
        lines.append(f"At that pace the bound reaches {fit['target']:.1f} after {_epochs(fit['epochs'])} epochs in all "
                     f"(range {_epochs(fit['epochs_low'])} - {_epochs(fit['epochs_high'])})"
                     + (f", about {_hours(fit['cpu_hours_fit'])} more CPU hours (range {_hours(fit['cpu_hours_low'])}"
                        f" - {_hours(fit['cpu_hours_high'])}) at {report['cpu_seconds_per_epoch']:.0f} CPU s per epoch"
                        if "cpu_hours_fit" in fit else "") + ".")
    return "\n".join(lines)


def _epochs(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:,.0f}"


def _hours(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:,.0f}"


def _plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from infusion_tf import files

    points = report["points"]
    epochs = [p["total_epochs"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(epochs, [p["bound_nats"] for p in points], yerr=[p["gain_se"] for p in points], fmt="o-",
                label="snapshots (error bars: paired s.e.)")
    fit = report.get("extrapolation")
    if fit:
        x = np.geomspace(fit["fit_epochs"][0], max(fit["fit_epochs"][1] * 4, 2), 50)
        ax.plot(x, fit["intercept"] + fit["nats_per_doubling"] * np.log2(x), "--",
                label=f"{fit['nats_per_doubling']:.1f} nats per doubling")
        ax.axhline(fit["target"], color="gray", lw=0.8, label=f"target {fit['target']:.1f}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("epochs in all")
    ax.set_ylabel(f"{report['settings']['split']} lower bound (nats)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    files.atomic_write(path, fig.savefig)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    quiet_tensorflow_logs()
    try:
        settings = CurveSettings(**vars(_parser().parse_args(argv)))
        report = run(settings)
    except BAD_INPUT as e:
        return print_error(e)
    print(_markdown(report))
    print(f"written to {report['output_dir']}")
    return 0


def _parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(prog="eval/learning_curve.py", description=__doc__.split("\n\n")[0])
    helps = field_help(CurveSettings)
    for field in dataclasses.fields(CurveSettings):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default,
                            help=f"{helps.get(field.name, '')} (default {field.default!r})")
    return parser


if __name__ == "__main__":
    sys.exit(main())
