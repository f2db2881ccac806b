"""Every estimate of Tables 1 and 2 for one checkpoint, beside the paper's: `python eval/report.py --checkpoint DIR`.

Runs `eval/run.py` (in this process, with the same arguments as on the command line) once per row:
    lower bound (Eq. 3)                      k = --lb-k chains, --repeats repeats
    importance sampling (Eq. 2), a k ladder  k in --is-k, with --is-repeats repeats each
    importance sampling at large k           k in --subset-k on the first --subset-examples test examples,
                                             to show how the estimate moves up to the paper's k = 20 000
    isotropic output (Table 2)               k = --isotropic-k, --isotropic-repeats repeats
    Parzen window (Table 1)                  --repeats repeats of 10 000 samples
    classifier sample quality                --quality-repeats repeats
Each row writes `<output-dir>/results_<row>.json`. A row whose file exists with the same settings and the same
weights is read back instead of run again, so an interrupted report resumes where it stopped. At the end it writes
`report.md` (a table with the paper's values, each row's command, wall time, commit and hardware), report.json and
`importance_sampling_by_k.png` (the estimate against k).
The batch-norm statistics are recomputed once and then read from the cache beside the weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import time

from infusion_tf import evaluate, files, provenance
from infusion_tf.checkpoint import find_weights
from infusion_tf.console import BAD_INPUT, OneLineErrorParser, check_output_folder, print_error, quiet_tensorflow_logs

__all__ = ["PAPER_MNIST", "Row", "plan", "run_row", "write_report", "main"]

# Bordes et al. (2017), MNIST: Table 1 (Parzen) and Table 2 (mean +- std over 10 repeats, 1000 test examples).
PAPER_MNIST = {
    "lower_bound": "1350.60 +- 0.08",
    "importance_sampling": "1836.27 +- 0.55 (k = 20 000)",
    "isotropic": "413.30 +- 0.46",
    "parzen": "312 +- 1.7",
}


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the report: a label, the eval/run.py arguments (without --checkpoint/--output) and a file name."""

    name: str
    label: str
    estimator: str
    arguments: tuple[str, ...]
    paper: str = ""  # the paper's value for the same quantity, when it reported one


def plan(args) -> list[Row]:
    """The rows, in the order they run (cheapest first, so a short budget still gets the headline numbers)."""
    chosen = ("--weights", args.weights) if args.weights else ()  # eval/run.py's default: best if present, else last
    common = ("--num-examples", str(args.num_examples), "--precision", args.precision, "--seed", str(args.seed),
              *chosen)
    rows = [Row("lower_bound", f"lower bound (Eq. 3), k = {args.lb_k}", "lower_bound",
                ("--estimator", "lower_bound", "--k", str(args.lb_k), "--repeats", str(args.repeats), *common),
                PAPER_MNIST["lower_bound"])]
    if len(args.is_repeats) not in (1, len(args.is_k)):
        raise ValueError(f"--is-repeats takes 1 value or one per --is-k value ({len(args.is_k)}), "
                         f"got {len(args.is_repeats)}")
    repeats = args.is_repeats * len(args.is_k) if len(args.is_repeats) == 1 else args.is_repeats
    for k, r in zip(args.is_k, repeats):
        rows.append(Row(f"importance_sampling_k{k}", f"importance sampling (Eq. 2), k = {k}", "importance_sampling",
                        ("--estimator", "importance_sampling", "--k", str(k), "--repeats", str(r), *common),
                        PAPER_MNIST["importance_sampling"] if k == max(args.is_k) else ""))
    rows.append(Row("parzen", "Parzen window (Table 1)", "parzen",
                    ("--estimator", "parzen", "--repeats", str(args.repeats), *common), PAPER_MNIST["parzen"]))
    rows.append(Row("sample_quality", "classifier sample quality", "sample_quality",
                    ("--estimator", "sample_quality", "--repeats", str(args.quality_repeats), *common)))
    rows.append(Row("isotropic", f"isotropic output, importance sampling, k = {args.isotropic_k}", "isotropic",
                    ("--estimator", "isotropic", "--k", str(args.isotropic_k), "--repeats",
                     str(args.isotropic_repeats), *common), PAPER_MNIST["isotropic"]))
    subset = ("--num-examples", str(args.subset_examples), "--precision", args.precision, "--seed", str(args.seed),
              *chosen)
    for k in args.subset_k:
        rows.append(Row(f"importance_sampling_first{args.subset_examples}_k{k}",
                        f"importance sampling, k = {k}, first {args.subset_examples} test examples",
                        "importance_sampling", ("--estimator", "importance_sampling", "--k", str(k), "--repeats", "1",
                                                *subset)))
    return rows


def _settings(checkpoint: str, row: Row, output: str) -> evaluate.EvalSettings:
    parsed = evaluate.eval_parser().parse_args(["--checkpoint", checkpoint, *row.arguments, "--output", output])
    return evaluate.EvalSettings(**vars(parsed))


def _same_run(saved: dict, settings: evaluate.EvalSettings, weights_path: str) -> bool:
    """Whether a results.json was computed with these settings on the current weights file, on points dequantized
    as they are now (results written before results recorded it followed settings.dequantize, then always True)."""
    from infusion_tf.config import load_config

    keys = ("estimator", "num_examples", "k", "repeats", "seed", "precision", "batch_norm", "split")
    wanted = dataclasses.asdict(settings)
    dequantize = load_config(settings.checkpoint).dequantize if settings.dequantize is None else settings.dequantize
    used = saved.get("dequantize", {}).get("used", saved.get("settings", {}).get("dequantize", True))
    return (all(saved.get("settings", {}).get(key) == wanted[key] for key in keys) and used == dequantize
            and saved.get("weights_sha256") == provenance.file_sha256(weights_path))


def _read_saved(path: str) -> dict | None:
    """A row's earlier results.json, or None when there is none or it is damaged (then the row runs again)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: not JSON, e.g. cut short
        print(f"warning: {path} is unreadable ({e}); running its row again", file=sys.stderr)
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get("settings", {}), dict):
        print(f"warning: {path} does not hold results; running its row again", file=sys.stderr)
        return None
    return saved


def _available(checkpoint: str, rows: list[Row], explicit: bool, weights: str | None = None) -> list[Row]:
    """The rows whose inputs exist, checked before the first row runs: the checkpoint's config and weights, and
    each estimator's own check (sample quality: a classifier of its images). Without --only, a row that cannot
    run is left out with a note; asked for by name, it is an error.
    Raises: ValueError or OSError naming what is missing."""
    from infusion_tf.config import load_config
    from infusion_tf.registry import ESTIMATORS

    if not os.path.isdir(checkpoint):
        raise FileNotFoundError(f"checkpoint folder {checkpoint!r} does not exist")
    config = load_config(checkpoint)
    find_weights(checkpoint, weights)  # the rows' weights (--weights; default: best if present, else last)
    kept = []
    for row in rows:
        check = ESTIMATORS.get(row.estimator).check
        if check is not None:
            try:
                check(config)
            except ValueError as e:
                if explicit:
                    raise
                print(f"left out: {row.label}: {e}", flush=True)
                continue
        kept.append(row)
    return kept


def run_row(checkpoint: str, row: Row, output_dir: str) -> dict:
    """The row's results.json, computed now or read back when it was computed with the same settings and weights."""
    output = os.path.join(output_dir, f"results_{row.name}.json")
    settings = _settings(checkpoint, row, output)
    weights_path = find_weights(checkpoint, settings.weights)
    saved = _read_saved(output)
    if saved is not None:
        if _same_run(saved, settings, weights_path):
            print(f"{row.label}: read back from {output}", flush=True)
            return saved
    print(f"\n== {row.label}: python eval/run.py --checkpoint {shlex.quote(checkpoint)} {' '.join(row.arguments)}",
          flush=True)
    result = evaluate.evaluate(settings)
    result.pop("output", None)
    return result


def _value(result: dict) -> str:
    if result["estimator"] == "sample_quality":
        return (f"Inception score {result['inception_score']['mean']:.2f} +- {result['inception_score']['std']:.2f} "
                f"(test images {result['test_images_inception_score']:.2f}); Frechet distance "
                f"{result['frechet_distance']['mean']:.1f} +- {result['frechet_distance']['std']:.1f}")
    text = f"{result['mean_nats']:.2f}"
    if result["settings"]["repeats"] > 1:
        text += f" +- {result['std_nats']:.2f}"
    if "standard_error_nats" in result:
        text += f" (s.e. over examples {result['standard_error_nats']:.1f})"
    if "sigma" in result:
        text += f", sigma {result['sigma'][0]:g}"
    if "isotropic_variance" in result:
        text += f", s = {result['isotropic_variance']:.3g}"
    return text


def _shown(arguments) -> list[str]:
    """eval/run.py arguments as a reader types them: a path of this machine (--weights) made portable."""
    return [provenance.portable_path(a) if os.path.isabs(a) else a for a in arguments]


def write_report(checkpoint: str, rows: list[Row], results: list[dict], output_dir: str) -> str:
    """Writes report.md and report.json in output_dir; returns report.md's text."""
    env, shown = results[0].get("environment", {}), provenance.portable_path(checkpoint)  # no folder of this machine
    lines = [f"Checkpoint `{shown}`, weights sha256 `{results[0].get('weights_sha256', '?')[:12]}`; "
             f"{results[0]['settings']['num_examples']} test examples unless the row says otherwise; "
             f"+- is the standard deviation over repeats (as the paper's Table 2), s.e. the standard error over "
             f"test examples.",
             f"Hardware: {env.get('cpu_model', '?')}, {env.get('cores_available', '?')} cores, "
             f"GPUs: {', '.join(env.get('gpus', [])) or 'none'}; TensorFlow {env.get('tensorflow', '?')}.", "",
             "| quantity | ours | paper | repeats | wall time | commit | command (after `python eval/run.py "
             "--checkpoint CKPT`) |", "|---|---|---|---|---|---|---|"]
    for row, result in zip(rows, results):
        env = result.get("environment", {})
        commit = (env.get("git_commit") or "?")[:7] + ("-dirty" if env.get("git_dirty") else "")
        seconds = result["wall_seconds"]
        wall = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
        lines.append(f"| {row.label} | {_value(result)} | {row.paper} | {result['settings']['repeats']} | "
                     f"{wall} | `{commit}` | `{' '.join(_shown(row.arguments))}` |")
    text = "\n".join(lines) + "\n"
    files.write_text(os.path.join(output_dir, "report.md"), text)  # whole or absent, as report.json
    files.write_json(os.path.join(output_dir, "report.json"),
                     {"checkpoint": shown, "rows": [{"name": r.name, "label": r.label, "arguments": _shown(r.arguments),
                                                     "result": res} for r, res in zip(rows, results)]})
    return text


def plot_k_ladder(rows: list[Row], results: list[dict], path: str) -> str | None:
    """importance-sampling estimate against k (log axis), one line per set of test examples; None if < 2 points."""
    ladders: dict[int, list[tuple[int, float, float]]] = {}
    bound = None
    for row, result in zip(rows, results):
        if row.estimator == "lower_bound":
            bound = result
        if row.estimator != "importance_sampling":
            continue
        used = result["settings"]
        ladders.setdefault(used["num_examples"], []).append(
            (used["chains"], result["mean_nats"], result.get("standard_error_nats", 0.0)))
    if sum(len(points) for points in ladders.values()) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for n, points in sorted(ladders.items(), reverse=True):
        points.sort()
        ks, means, _ = zip(*points)
        ax.plot(ks, means, marker="o", label=f"importance sampling, first {n} test examples")
    if bound is not None:
        ax.axhline(bound["mean_nats"], color="gray", linestyle="--",
                   label=f"lower bound, k = {bound['settings']['chains']}")
    ax.set_xscale("log")
    ax.set_xlabel("k (infusion chains per example)")
    ax.set_ylabel("log-likelihood estimate (nats)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    files.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))  # matplotlib takes the format from .png
    plt.close(fig)
    return path


def report_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="eval/report.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--output-dir", help="where the results and report go (default: the checkpoint folder)")
    parser.add_argument("--num-examples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--lb-k", type=int, default=10)
    parser.add_argument("--is-k", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--is-repeats", type=int, nargs="+", default=[10, 10, 2])
    parser.add_argument("--isotropic-k", type=int, default=100)
    parser.add_argument("--isotropic-repeats", type=int, default=3)
    parser.add_argument("--quality-repeats", type=int, default=3)
    parser.add_argument("--subset-examples", type=int, default=100)
    parser.add_argument("--subset-k", type=int, nargs="*", default=[100, 1000, 10000])
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", help="best | last | a weights file, e.g. a snapshot checkpoints/epochNNNN.weights.h5 "
                                          "(default: best if present, else last)")
    parser.add_argument("--only", nargs="*", help="names of the rows to run (default: all)")
    return parser


def _chain(checkpoint: str) -> tuple:
    """(dataset, model, num_steps, alpha0, omega) of the checkpoint's config."""
    from infusion_tf.config import load_config

    config = load_config(checkpoint)
    return (config.dataset, getattr(config, "model", "infusion"), getattr(config, "num_steps", None),
            getattr(config, "alpha0", None), getattr(config, "omega", None))


def papers_rows(rows: list[Row], chain: tuple) -> list[Row]:
    """The rows with the paper's values where they belong: Tables 1 and 2 are of its MNIST infusion chain with
    T = 15, alpha(0) = 0, omega = 0.01; Table 4 gives the lower bound alone of its other chains (PAPER_TABLE4); any
    other chain, model or dataset has none."""
    from infusion_tf.config import PAPER_TABLE4

    dataset, model, num_steps, alpha0, omega = chain
    if dataset != "mnist" or model != "infusion":
        return [dataclasses.replace(row, paper="") for row in rows]
    key = next((key for key in PAPER_TABLE4 if key[0] == num_steps and math.isclose(key[1], alpha0, abs_tol=1e-9)
                and math.isclose(key[2], omega, abs_tol=1e-9)), None)
    if key == (15, 0.0, 0.01):
        return rows
    return [dataclasses.replace(row, paper=f"{PAPER_TABLE4[key]:.2f} (Table 4)" if key and row.name == "lower_bound"
                                else "") for row in rows]


def main(argv: list[str] | None = None) -> int:
    args = report_parser().parse_args(argv)
    quiet_tensorflow_logs()
    output_dir = args.output_dir or args.checkpoint
    try:
        rows = plan(args)
        if args.only:
            unknown = sorted(set(args.only) - {r.name for r in rows})
            if unknown:
                raise ValueError(f"unknown rows {unknown}; the rows are {[r.name for r in rows]}")
            rows = [r for r in rows if r.name in args.only]
        for row in rows:
            _settings(args.checkpoint, row, "x")  # every row's settings are checked before the first one runs
        rows = _available(args.checkpoint, rows, explicit=bool(args.only), weights=args.weights)  # and their inputs
        rows = papers_rows(rows, _chain(args.checkpoint))  # the paper's values beside the paper's model only
        check_output_folder(output_dir)
        os.makedirs(output_dir, exist_ok=True)
        started, results = time.time(), []
        for row in rows:
            results.append(run_row(args.checkpoint, row, output_dir))
    except BAD_INPUT as e:  # flags, checkpoint, data (offline included), classifier, output folder
        return print_error(e)
    print("\n" + write_report(args.checkpoint, rows, results, output_dir))
    figure = plot_k_ladder(rows, results, os.path.join(output_dir, "importance_sampling_by_k.png"))
    if figure:
        print(f"wrote {figure}")
    print(f"report written to {os.path.join(output_dir, 'report.md')} ({(time.time() - started) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
