"""Ships a trained model: `python eval/export_pretrained.py --checkpoint ~/runs/mnist_paper --output pretrained/mnist`.

Writes a small folder that `infusion_tf.checkpoint.load_checkpoint` and `eval/run.py --checkpoint` read:
    config.json               the run's config
    data_source.json          the run's data source (kind, dataset, fingerprint) without its folder, when recorded
    best.weights.h5           the chosen weights without optimizer state (last.weights.h5 for --weights last)
    best.batch_norm.npz       the statistics recomputed over the training set, when eval/run.py kept them
    results_*.json            the run's evaluation results that were computed on these weights
    export.json               source, weights, the exporting commit, and the check below
    README.md                 what the model is, how it was trained, how to sample from and evaluate it
The folder is written beside --output, checked, then moved into place: it must be at most --max-mb, it must
load, and its stochastic lower bound (Eq. 3, moving batch-norm statistics) on the first --check-examples test
examples must equal the source checkpoint's with the same seed. An existing non-empty --output is replaced only
with --overwrite.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import os
import re
import shutil
import sys

import numpy as np

from infusion_tf import files, provenance
from infusion_tf.console import BAD_INPUT, OneLineErrorParser, check_output_folder, print_error, quiet_tensorflow_logs
from infusion_tf.config import check_seed

__all__ = ["ExportSettings", "export_pretrained", "check_points", "lower_bound_check", "use_shipped_batch_norm",
           "export_parser", "main"]

CHECK_TOLERANCE_NATS = 1e-3  # same weights, same chains: only float rounding may differ


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """Every setting of one export."""

    checkpoint: str
    output: str = "pretrained/mnist"
    weights: str | None = "best"  # best | last | a path
    overwrite: bool = False
    max_mb: float = 20.0  # limit on the folder's size, MB = 10^6 bytes
    check_examples: int = 100  # first N test examples for the lower-bound check
    check_chains: int = 10  # infusion chains per example in the check
    seed: int = 0
    data_dir: str | None = None
    note: tuple[str, ...] = ()  # lines added to the README's "Training" section (hardware, commit, ...)

    def __post_init__(self):
        for name in ("check_examples", "check_chains"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.max_mb > 0:
            raise ValueError(f"max_mb must be > 0, got {self.max_mb}")
        check_seed(self.seed)
        object.__setattr__(self, "note", tuple(self.note or ()))


def _check_output(settings: ExportSettings) -> None:
    """Refuses an output that is the checkpoint or holds it, a file, or a non-empty folder without --overwrite."""
    source, output = os.path.realpath(settings.checkpoint), os.path.realpath(settings.output)
    if output == source or source.startswith(output + os.sep):
        raise ValueError(f"--output {settings.output!r} would replace the checkpoint folder {settings.checkpoint!r}")
    if os.path.lexists(settings.output) and not os.path.isdir(settings.output):
        raise ValueError(f"--output {settings.output!r} exists and is not a folder")
    if os.path.isdir(settings.output) and os.listdir(settings.output) and not settings.overwrite:
        raise ValueError(f"--output {settings.output!r} already holds files; pass --overwrite to replace them")
    check_output_folder(os.path.dirname(os.path.abspath(settings.output)))  # where the staging folder goes


def check_points(config, settings: ExportSettings) -> np.ndarray:
    """The first check_examples test examples as the model sees them, dequantized with `seed`. float32 [n, ...]

    The test images are the run's own (run_folder.load_run_data: where the checkpoint's data_source.json says,
    or settings.data_dir holding the same data).
    """
    from infusion_tf import data
    from infusion_tf.run_folder import load_run_data

    test = load_run_data(config, settings.checkpoint, settings.data_dir)[0].test
    return data.eval_points(test[:settings.check_examples], seed=settings.seed, dequantize=config.dequantize)


def lower_bound_check(model, x: np.ndarray, settings: ExportSettings, batch_norm: str = "moving") -> dict:
    """Eq. 3 on x [n, ...] with check_chains chains per example, seed `seed`, the model's current statistics."""
    from infusion_tf import estimators

    estimate = estimators.lower_bound(estimators.ChainScorer.from_model(model), x, settings.check_chains,
                                      settings.seed)
    return {"split": "test", "num_examples": len(x), "k": settings.check_chains, "seed": settings.seed,
            "batch_norm": batch_norm, "mean_nats": estimate.mean_nats,
            "standard_error_nats": estimate.standard_error}


def sample_check(model, seed: int = 0, num_samples: int = 16) -> dict:
    """A check that needs no data: the mean pixel of each of num_samples samples (model sampling chain, means,
    config.sampling_steps steps, the weights' moving statistics) drawn with `seed`. Other weights move these means
    by hundredths; float rounding by far less. A user's clone can run it without the dataset (Fashion-MNIST)."""
    samples = np.asarray(model.sample(num_samples, seed=seed), np.float64)
    return {"num_samples": num_samples, "seed": seed, "batch_norm": "moving",
            "sample_means": [float(v) for v in samples.reshape(num_samples, -1).mean(axis=1)]}


def use_shipped_batch_norm(model, folder: str, seed: int = 0, data_dir: str | None = None) -> str:
    """Sets the model's statistics to the recomputed ones shipped in `folder` (or recomputes them); returns the file.

    The training images are the folder's own data (run_folder.load_run_data), as eval/run.py finds them.
    """
    from infusion_tf.checkpoint import find_weights
    from infusion_tf.evaluate import batch_norm_cache_path, use_recomputed_batch_norm
    from infusion_tf.run_folder import load_run_data, training_splits

    weights = find_weights(folder)
    splits, source = load_run_data(model.config, folder, data_dir)
    use_recomputed_batch_norm(model, weights, training_splits(model.config, splits).train, seed=seed,
                              data_fingerprint=source["fingerprint"])
    return batch_norm_cache_path(weights)


def _matching_results(settings: ExportSettings, weights_path: str) -> tuple[list[str], list[str]]:
    """(results_*.json computed on these weights after they were written, [why each other one is left out])."""
    from infusion_tf.checkpoint import find_weights

    keep, skipped = [], []
    for name in sorted(os.listdir(settings.checkpoint)):
        if not (name.startswith("results_") and name.endswith(".json")):
            continue
        path = os.path.join(settings.checkpoint, name)
        try:
            with open(path) as f:
                used = json.load(f)["settings"].get("weights")
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # cut short or edited by hand
            skipped.append(f"{name}: unreadable results ({type(e).__name__} {e})")
            continue
        if used not in (None, "best", "last"):
            used = provenance.local_path(used)  # a weights file, recorded relative to the repository or ~
        try:
            same = os.path.samefile(find_weights(settings.checkpoint, used), weights_path)
        except FileNotFoundError:
            same = False
        if not same:
            skipped.append(f"{name}: computed on weights {used or 'best'}, not {os.path.basename(weights_path)}")
        elif os.path.getmtime(path) < os.path.getmtime(weights_path):
            skipped.append(f"{name}: older than {os.path.basename(weights_path)} (stale; evaluate again)")
        else:
            keep.append(path)
    return keep, skipped


def _run_history(checkpoint: str) -> dict:
    """What the run folder tells about its training: log.csv's epochs and bounds, checkpoints/state.json.

    A damaged file is reported and left out: the README then says less, the export is still good.
    """
    try:
        return _read_history(checkpoint)
    except (KeyError, TypeError, ValueError, OverflowError) as e:  # a missing column, a short row, a bad number
        print(f"warning: the run's log.csv or state.json is damaged ({type(e).__name__} {e}); the README "
              f"leaves out the training history", file=sys.stderr)
        return {}


def _read_history(checkpoint: str) -> dict:
    history = {}
    log = os.path.join(checkpoint, "log.csv")
    if os.path.isfile(log):
        with open(log, newline="") as f:
            rows = {int(r["epoch"]): r for r in csv.DictReader(f)}  # a resumed epoch keeps its last row
        if rows:
            last = rows[max(rows)]
            history["epochs"] = max(rows) + 1
            history["last_lower_bound"] = float(last["lower_bound"])
            if "val_lower_bound" in last:
                best = max(rows, key=lambda e: float(rows[e]["val_lower_bound"]))
                history["best_epoch"] = best + 1
                history["best_val_lower_bound"] = float(rows[best]["val_lower_bound"])
    state = os.path.join(checkpoint, "checkpoints", "state.json")
    if os.path.isfile(state):
        with open(state) as f:
            values = json.load(f)
        if "time" in values:
            history["last_checkpoint_utc"] = datetime.datetime.fromtimestamp(
                values["time"], datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        history.setdefault("best_epoch", values.get("best_epoch"))
    return history


def _training_command(config, checkpoint: str) -> str:
    """The train/run.py command that rebuilds config: the dataset's preset plus one flag per changed setting."""
    from infusion_tf.config import preset

    base = preset(config.dataset).to_dict()
    flags = [f"--dataset {config.dataset}"]
    for key, value in config.to_dict().items():
        if key in ("dataset", "example_shape") or base.get(key) == value:
            continue
        flag = key.replace("_", "-")
        flags.append(f"--{flag}" if value is True else f"--no-{flag}" if value is False else f"--{flag} {value}")
    return " ".join(["python train/run.py", *flags, f"--output-dir {checkpoint}"])


def _display(path: str) -> str:
    """A path as a reader would type it: relative inside the repository, ~ for the home folder."""
    return provenance.portable_path(path)


def _mean(summary: dict) -> float:
    """The mean of a score summary; results written before commit 7cfb4b0 named it mean_nats."""
    return summary["mean"] if "mean" in summary else summary["mean_nats"]


def _results_rows(paths: list[str]) -> list[str]:
    rows = []
    for path in paths:
        with open(path) as f:
            result = json.load(f)
        used = result.get("settings", {})
        setting = (f"{used.get('num_examples', '?')} {used.get('split', 'test')} examples, k = {used.get('chains', '?')}, "
                   f"{used.get('repeats', '?')} repeats, batch norm {result.get('batch_norm', {}).get('mode', '?')}")
        if result.get("estimator") == "parzen":
            setting = (f"{used.get('num_samples', '?')} samples, {used.get('num_examples', '?')} "
                       f"{used.get('split', 'test')} examples, {used.get('repeats', '?')} repeats")
        if used.get("repeats") == 1:
            setting = setting.replace("1 repeats", "1 repeat")
        if result.get("mean_nats") is not None:
            value = (f"{result['mean_nats']:.2f} nats" if used.get("repeats") == 1 else
                     f"{result['mean_nats']:.2f} +- {result['std_nats']:.2f} nats")
        elif "inception_score" in result and "frechet_distance" in result:
            score, distance = (_mean(result["inception_score"]), _mean(result["frechet_distance"]))
            value = f"Inception score {score:.3f}, Frechet distance {distance:.2f}"
            setting = f"{used.get('num_samples', '?')} samples, {used.get('repeats', '?')} repeats"
        else:
            continue
        rows.append(f"| `{os.path.basename(path)}` | {result.get('estimator', '?')} | {value} | {setting} |")
    return rows


def _readme(settings: ExportSettings, config, weights_path: str, results: list[str], summary: dict,
            history: dict, commit: str | None) -> str:
    """README.md of the exported folder."""
    check, recomputed = summary["check"], summary.get("check_recomputed")
    output, source = _display(settings.output), _display(settings.checkpoint)
    weights_name = os.path.basename(weights_path)
    shipped_name = summary["weights"]  # best.weights.h5, or last.weights.h5 for the last weights
    snapshot = re.fullmatch(r"epoch(\d+)\.weights\.h5", weights_name)
    if weights_name.startswith("best") and "best_epoch" in history:
        chosen = f"the best validation lower bound, epoch {history['best_epoch']}"
        if "best_val_lower_bound" in history:
            chosen += f" ({history['best_val_lower_bound']:.1f} nats, batch statistics)"
    elif weights_name.startswith("last") and "epochs" in history:
        chosen = f"the last epoch, {history['epochs']}"
    elif snapshot:
        chosen = f"the snapshot of epoch {int(snapshot.group(1))}"
    else:
        chosen = "as saved"
    lines = [
        f"# Infusion-training model: {config.dataset}", "",
        "A model trained by infusion training (Bordes, Honari & Vincent, \"Learning to generate samples from noise "
        "through infusion training\", ICLR 2017) with this repository's `train/run.py`. It is a Markov chain that "
        "starts from factorial noise p(0) and applies a learned Gaussian transition operator p(t) for T steps.", "",
        f"- Chain: T = {config.num_steps} steps, {config.schedule} infusion rate, alpha(0) = {config.alpha0}, "
        f"omega = {config.omega}; sampled with {config.sampling_steps} steps.",
        f"- Transition operator: {config.operator}, width {config.width}, depth {config.depth}, per-step batch "
        f"normalization, {config.variance} variance {config.beta} sigmoid + {config.epsilon}.",
        f"- Objective: {config.objective}; Adam {config.learning_rate}, batch {config.batch_size}, "
        f"dequantize = {config.dequantize}, seed {config.seed}. Every setting is in `config.json`.", "",
        "## Training", "",
        f"- Run folder: `{source}`; weights `{_display(weights_path)}`, {chosen}, shipped as `{shipped_name}` "
        "without optimizer state.",
    ]
    if "epochs" in history:
        lines.append(f"- Epochs trained: {history['epochs']} (log.csv); training-batch lower bound at the last "
                     f"epoch {history['last_lower_bound']:.1f} nats.")
    if "last_checkpoint_utc" in history:
        lines.append(f"- Last checkpoint written {history['last_checkpoint_utc']}.")
    lines.append(f"- Command (rebuilt from config.json; a continued run adds `--resume`): "
                 f"`{_training_command(config, source)}`")
    lines += [f"- {note}" for note in settings.note] or [
        "- Training commit, hardware and wall time: not recorded in the run folder."]
    chosen_flag = "" if settings.weights in (None, "best") else f" --weights {_display(weights_path)}"
    lines.append(f"- Exported by `python eval/export_pretrained.py --checkpoint {source}{chosen_flag} --output {output}` at "
                 f"commit `{commit or 'unknown'}`.")
    if results:
        lines += ["", "## Results", "", "From the run folder's `eval/run.py` results, copied here:", "",
                  "| file | estimator | value (mean +- std over repeats) | settings |", "| --- | --- | --- | --- |",
                  *_results_rows(results)]
    lines += [
        "", "## Sample", "", "```python",
        "from infusion_tf import visualize",
        "from infusion_tf.checkpoint import load_checkpoint", "",
        f"model = load_checkpoint(\"{output}\")",
        f"samples = model.sample(100, seed=0)  # [100, *example_shape], means of step {config.sampling_steps}",
        "visualize.save_sample_grid(\"samples.png\", samples.numpy())",
        "```", "",
        f"All figures (samples, chains, inpainting, nearest neighbours): "
        f"`python eval/figures.py --checkpoint {output} --output-dir figures`.", "",
        "## Evaluate", "", "```bash",
        f"python eval/run.py --checkpoint {output} --estimator lower_bound",
        "```", "",
        ("It uses the batch-norm statistics recomputed over the training set that ship in `best.batch_norm.npz` "
         "(or recomputes them, 1-2 minutes), then estimates Eq. 3 on 1000 test examples, " if recomputed else
         "It recomputes the batch-norm statistics over the training set, then estimates Eq. 3 on 1000 test examples, ")
        + f"and writes `results_lower_bound.json` into `{output}` (replacing the shipped one; `--output FILE` writes "
        "elsewhere). `--estimator importance_sampling`, `isotropic`, `parzen` and `sample_quality` give the other "
        "numbers.", "",
        f"Check at export (`export.json`): the lower bound on the first {check['num_examples']} test examples, "
        f"k = {check['k']}, seed {check['seed']}, moving batch-norm statistics, is {check['mean_nats']:.2f} nats "
        f"(standard error over examples {check['standard_error_nats']:.2f}), the same as the run folder's. "
        f"`python eval/run.py --checkpoint {output} --estimator lower_bound --num-examples {check['num_examples']} "
        f"--k {check['k']} --repeats 1 --seed {check['seed']} --batch-norm moving --output check.json` gives it "
        "again in seconds.", "",
    ]
    if recomputed:
        lines += [f"With the shipped recomputed statistics the same check gives {recomputed['mean_nats']:.2f} nats "
                  f"(`export.json` `check_recomputed`; the same command without `--batch-norm moving`).", ""]
    return "\n".join(lines)


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))


def _check_size(folder: str, settings: ExportSettings) -> int:
    size = _folder_bytes(folder)
    if size > settings.max_mb * 1e6:
        raise ValueError(f"the exported folder is {size / 1e6:.1f} MB, over the {settings.max_mb:g} MB limit")
    return size


def _same_weights(a, b) -> None:
    """Raises ValueError unless models a and b hold identical variables (paths compared below the model's name)."""
    def values(model):
        return {v.path.removeprefix(model.name + "/"): v.numpy() for v in model.weights}

    left, right = values(a), values(b)
    differ = sorted(k for k in left.keys() | right.keys()
                    if k not in left or k not in right or not np.array_equal(left[k], right[k]))
    if differ:
        raise ValueError(f"the exported weights differ from the checkpoint's: {differ}")


def _write_folder(settings: ExportSettings, staging: str, model, weights_path: str) -> dict:
    """Writes and checks everything in `staging`; returns the summary."""
    from infusion_tf.checkpoint import load_checkpoint
    from infusion_tf.config import save_config
    from infusion_tf.evaluate import copy_batch_norm_cache
    from infusion_tf.run_folder import DATA_SOURCE_FILENAME, read_data_source

    name = "last.weights.h5" if os.path.basename(weights_path) == "last.weights.h5" else "best.weights.h5"
    save_config(model.config, staging)
    recorded = read_data_source(settings.checkpoint)
    if recorded is not None:  # the folder of this machine means nothing elsewhere: a user passes --data-dir there
        files.write_json(os.path.join(staging, DATA_SOURCE_FILENAME), {**recorded, "data_dir": None})
    model.save_weights(os.path.join(staging, name))  # an uncompiled model: no optimizer state
    shipped_statistics = copy_batch_norm_cache(weights_path, os.path.join(staging, name))
    if shipped_statistics:  # saves users the 1-2 minutes of recomputing them for every evaluation
        print("copied the recomputed batch-norm statistics")
    results, skipped = _matching_results(settings, weights_path)
    for path in results:
        shutil.copy2(path, staging)  # keeps the time stamp, so results stay newer than the weights
    for reason in skipped:
        print(f"not copied: {reason}")
    _check_size(staging, settings)
    print(f"checking: lower bound on {settings.check_examples} test examples, k = {settings.check_chains}, "
          f"seed {settings.seed}", flush=True)
    exported = load_checkpoint(staging)
    _same_weights(model, exported)
    x = check_points(model.config, settings)
    source_check, check = lower_bound_check(model, x, settings), lower_bound_check(exported, x, settings)
    if abs(check["mean_nats"] - source_check["mean_nats"]) > CHECK_TOLERANCE_NATS:
        raise ValueError(f"the exported folder's lower bound {check['mean_nats']:.4f} differs from the "
                         f"checkpoint's {source_check['mean_nats']:.4f} nats")
    if shipped_statistics:  # the number a user gets from `eval/run.py --checkpoint <output>` on the same examples
        data_dir = settings.data_dir or (recorded or {}).get("data_dir")  # the staging record has no folder
        use_shipped_batch_norm(exported, staging, settings.seed, data_dir)
        checks = {"check_recomputed": lower_bound_check(exported, x, settings, "recomputed (best.batch_norm.npz)")}
    else:
        checks = {}
    checks["check_samples"] = sample_check(load_checkpoint(staging), settings.seed)  # moving statistics, no data
    commit = provenance.git_commit()
    summary = {"source": _display(settings.checkpoint), "source_weights": _display(weights_path), "weights": name,
               "results": [os.path.basename(p) for p in results], "not_copied": skipped, "commit": commit,
               "exported_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "check": check, **checks}
    history = _run_history(settings.checkpoint)
    files.write_text(os.path.join(staging, "README.md"),
                     _readme(settings, model.config, weights_path, results, summary, history, commit))
    files.write_json(os.path.join(staging, "export.json"), summary, end="\n")
    summary["size_bytes"] = _check_size(staging, settings)
    return summary


def export_pretrained(settings: ExportSettings) -> dict:
    """Writes the pretrained folder described in the module docstring; returns export.json's contents.

    Raises: ValueError for an output that may not be replaced, a folder over max_mb, or a failed check;
    FileNotFoundError for a missing checkpoint or weights file. Nothing is left at --output on failure.
    """
    from infusion_tf.checkpoint import find_weights, load_checkpoint

    _check_output(settings)
    if not os.path.isdir(settings.checkpoint):
        raise FileNotFoundError(f"checkpoint folder {settings.checkpoint!r} does not exist")
    weights_path = find_weights(settings.checkpoint, settings.weights)
    print(f"loading {weights_path}", flush=True)
    model = load_checkpoint(settings.checkpoint, weights_path)
    output = os.path.normpath(settings.output)
    staging = output + ".partial"
    if os.path.isdir(staging):
        shutil.rmtree(staging)  # left by an interrupted export of this command
    os.makedirs(staging)
    try:
        summary = _write_folder(settings, staging, model, weights_path)
        if os.path.isdir(output):
            shutil.rmtree(output)  # empty, or --overwrite (checked above)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary["output"] = output
    return summary


def export_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="eval/export_pretrained.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="run folder (config.json + checkpoints/)")
    parser.add_argument("--output", default=ExportSettings.output, help="default: %(default)s")
    parser.add_argument("--weights", default="best", help="best | last | a weights file (default: best)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    parser.add_argument("--max-mb", type=float, default=20.0, help="size limit, MB (default: 20)")
    parser.add_argument("--check-examples", type=int, default=100, help="test examples checked (default: 100)")
    parser.add_argument("--check-chains", type=int, default=10, help="chains per example checked (default: 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None,
                        help="the run's data, when they are no longer where its data_source.json says")
    parser.add_argument("--note", action="append", default=[],
                        help="a line for the README's training section, e.g. \"Hardware: 2 CPU cores\" (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = export_parser().parse_args(argv)
    quiet_tensorflow_logs()
    try:
        summary = export_pretrained(ExportSettings(**{**vars(args), "note": tuple(args.note)}))
    except BAD_INPUT as e:  # flags, checkpoint, data (offline included), an output that may not be replaced
        return print_error(e)
    for name in sorted(os.listdir(summary["output"])):
        print(f"wrote {os.path.join(summary['output'], name)}")
    check = summary["check"]
    print(f"size: {summary['size_bytes'] / 1e6:.1f} MB (limit {args.max_mb:g} MB)")
    print(f"check: loads with load_checkpoint; lower bound {check['mean_nats']:.2f} nats on {check['num_examples']} "
          f"test examples (k = {check['k']}, seed {check['seed']}), equal to the checkpoint's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
