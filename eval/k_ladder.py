"""The k ladder of importance sampling with effective sample sizes, from one set of k = K log-weights per example:
`python eval/k_ladder.py --checkpoint DIR --num-examples 1000 --k 1000 --ladder 1,10,100,1000`.

Any model with the `likelihood` capability. The evaluated points are those of `eval/run.py` with the same --seed
(the split's first --num-examples, dequantized as the run trained, noise fixed by the seed); the log-weights come
from the model's `log_weights` through the shared scorer (infusion_tf/k_ladder.py says how each rung reads them).
Results go to <checkpoint>/results_k_ladder.json (or --output); the scored rows are kept in <output>.partial.npz
while it runs (every two minutes, with the ladder over the examples scored so far in <output>.so_far.json, and as
markdown tables in <output>.so_far.md; the finished ladder's tables go to <output stem>.md), and a
rerun with the same settings and weights continues from them. A kept row is each example's rung statistics, not its
k log-weights (about 0.5 kB per example at six rungs), so the partial file can be committed or copied and the ladder continued on
another machine, in pieces over several sessions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import numpy as np

from infusion_tf.config import check_seed
from infusion_tf.console import (BAD_INPUT, OneLineErrorParser, check_output_folder, field_help, print_error,
                                 quiet_tensorflow_logs)

__all__ = ["LadderSettings", "run", "main"]

SAVE_SECONDS = 120.0  # how often an interrupted ladder's scored rows are kept (and the ladder so far written)


@dataclasses.dataclass(frozen=True)
class LadderSettings:
    """Every setting of one ladder (the command's flags)."""

    checkpoint: str = ""  # run folder (config.json + weights)
    num_examples: int = 1000  # the first N examples of the split
    k: int = 1000  # log-weights per example: the ladder's largest rung
    ladder: str = "1,10,100,1000"  # rungs k, comma-separated, each <= --k
    seed: int = 0  # dequantization noise (as eval/run.py's --seed) and proposals
    split: str = "test"  # test | validation | train
    examples_per_call: int = 8  # examples scored per call of log_weights (all k proposals of each at once)
    batch_norm: str = "recompute"  # recompute over the training set (the paper; cached as eval/run.py does) | moving
    precision: str = "float32"  # float32 | mixed_bfloat16 (bfloat16 matrix products, float32 densities) | auto
    model_settings: tuple[str, ...] = ()  # NAME=VALUE: evaluation-only config fields, as eval/run.py's --model-setting
    output: str = ""  # results file; empty: <checkpoint>/results_k_ladder.json

    def __post_init__(self):
        if not self.checkpoint:
            raise ValueError("--checkpoint is required")
        if self.batch_norm not in ("recompute", "moving"):
            raise ValueError(f"batch_norm must be recompute or moving, got {self.batch_norm!r}")
        if self.split not in ("test", "validation", "train"):
            raise ValueError(f"split must be test, validation or train, got {self.split!r}")
        for name in ("num_examples", "k", "examples_per_call"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        rungs = self.rungs
        if not rungs or any(r < 1 or r > self.k for r in rungs):
            raise ValueError(f"ladder must be comma-separated integers in [1, k = {self.k}], got {self.ladder!r}")
        object.__setattr__(self, "model_settings", tuple(self.model_settings))
        check_seed(self.seed)
        from infusion_tf.precision import resolve_precision

        resolve_precision(self.precision)  # a clear error for an unknown precision before any work

    @property
    def rungs(self) -> list[int]:
        try:
            return [int(r) for r in self.ladder.split(",") if r.strip()]
        except ValueError:
            return []


def run(settings: LadderSettings) -> dict:
    from infusion_tf import data, estimators, files, k_ladder, protocol, provenance
    from infusion_tf.checkpoint import find_weights, load_checkpoint
    from infusion_tf.evaluate import use_recomputed_batch_norm
    from infusion_tf.run_folder import load_run_data, training_splits

    from infusion_tf.precision import resolve_precision

    started, cpu_started = time.time(), time.process_time()
    precision, precision_why = resolve_precision(settings.precision)
    output = settings.output or os.path.join(settings.checkpoint, "results_k_ladder.json")
    check_output_folder(os.path.dirname(os.path.abspath(output)))
    model = load_checkpoint(settings.checkpoint, precision=precision, model_settings=settings.model_settings)
    protocol.require(model, "likelihood", "the k ladder")
    splits, source = load_run_data(model.config, settings.checkpoint)
    batch_norm = {"mode": "none (the model has no batch normalization)"}
    if "batch_norm" in protocol.capabilities(model):
        batch_norm = {"mode": settings.batch_norm}
        if settings.batch_norm == "recompute":
            batch_norm.update(use_recomputed_batch_norm(
                model, find_weights(settings.checkpoint), training_splits(model.config, splits).train,
                seed=settings.seed, precision=precision, data_fingerprint=source["fingerprint"]))
    x = data.eval_points(getattr(splits, settings.split)[:settings.num_examples], seed=settings.seed,
                         dequantize=model.config.dequantize)
    partial = output + ".partial.npz"
    key = json.dumps({**dataclasses.asdict(settings), "output": None,
                      "weights_sha256": provenance.file_sha256(find_weights(settings.checkpoint))}, sort_keys=True)
    done = None
    if os.path.isfile(partial):
        with np.load(partial) as saved:
            if str(saved["key"]) == key and "estimate" in saved:
                done = k_ladder.Rows(**{f.name: saved[f.name] for f in dataclasses.fields(k_ladder.Rows)})
                print(f"continuing from {len(done)} scored examples in {partial}")

    so_far = os.path.splitext(output)[0] + ".so_far.json"
    so_far_md = os.path.splitext(output)[0] + ".so_far.md"  # the same as tables, for a results page
    last_save = [time.time()]

    def save(rows):
        """Keeps the scored rows (each example's rung statistics, not its k log-weights: a few hundred bytes per
        example, so the file can be carried to another machine) at most every SAVE_SECONDS, with the ladder over the
        examples scored so far."""
        if time.time() - last_save[0] < SAVE_SECONDS and len(rows) < len(x):
            return
        last_save[0] = time.time()
        files.atomic_write(partial, lambda tmp: np.savez(tmp, key=key, **dataclasses.asdict(rows)))
        rungs, per_step = k_ladder.ladder_from_rows(rows, settings.rungs), k_ladder.step_terms(rows)
        files.write_json(so_far, {"complete": False, "examples_scored": len(rows), "of": len(x), "rungs": rungs,
                                  "per_step": per_step, "settings": dataclasses.asdict(settings)})
        files.write_text(so_far_md, f"The ladder over the first {len(rows)} of {len(x)} examples (in progress).\n\n"
                         + k_ladder.ladder_markdown(rungs, per_step))
        print(f"{len(rows)}/{len(x)} examples, {time.time() - started:.0f} s (the ladder so far: {so_far})",
              flush=True)

    scorer = estimators.LogWeightScorer.from_model(model)
    rows = k_ladder.ladder_rows(scorer, x, settings.k, settings.rungs, settings.seed, settings.examples_per_call,
                                done, save)
    result = {"rungs": k_ladder.ladder_from_rows(rows, settings.rungs), "per_step": k_ladder.step_terms(rows),
              "batch_norm": batch_norm, "settings": dataclasses.asdict(settings),
              "precision": {"used": precision, "why": precision_why},
              "config": model.config.to_dict(), "data_source": {**source, "data_dir":
                                                                provenance.portable_path(source["data_dir"])},
              "weights_sha256": provenance.file_sha256(find_weights(settings.checkpoint)),
              "wall_seconds_this_process": time.time() - started,
              "cpu_seconds_this_process": time.process_time() - cpu_started,
              "resumed_from_examples": 0 if done is None else int(len(done)), "environment": provenance.environment()}
    files.write_json(output, result)
    files.write_text(os.path.splitext(output)[0] + ".md", f"The ladder over {len(rows)} examples.\n\n"
                     + k_ladder.ladder_markdown(result["rungs"], result["per_step"]))
    for path in (partial, so_far, so_far_md):
        if os.path.isfile(path):
            os.remove(path)
    return {**result, "output": output}


def main(argv: list[str] | None = None) -> int:
    quiet_tensorflow_logs()
    try:
        settings = LadderSettings(**vars(_parser().parse_args(argv)))
        result = run(settings)
    except BAD_INPUT as e:
        return print_error(e)
    print(f"{'k':>6} {'IS (nats)':>12} {'+- se':>7} {'bound':>10} {'ESS mean':>9} {'median':>7} {'std log w':>9} "
          f"{'max log w':>10} {'median':>8}")
    for r in result["rungs"]:
        print(f"{r['k']:>6} {r['importance_sampling_nats']:>12.2f} {r['importance_sampling_standard_error']:>7.2f} "
              f"{r['lower_bound_nats']:>10.2f} {r['ess_mean']:>9.2f} {r['ess_median']:>7.2f} "
              f"{r['log_weight_std_mean']:>9.2f} {r['max_log_weight_nats']:>10.2f} {r['median_log_weight_nats']:>8.2f}")
    print("per-step terms of log w: " + ", ".join(f"{t['mean_nats']:.1f} (std {t['std_over_proposals']:.1f})"
                                                  for t in result["per_step"]))
    print(f"written to {result['output']} ({result['wall_seconds_this_process']:.0f} s wall, "
          f"{result['cpu_seconds_this_process']:.0f} s CPU)")
    return 0


def _parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(prog="eval/k_ladder.py", description=__doc__.split("\n\n")[0])
    helps = field_help(LadderSettings)
    for field in dataclasses.fields(LadderSettings):
        if field.name != "model_settings":
            parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default,
                                help=f"{helps[field.name]} (default {field.default!r})")
    parser.add_argument("--model-setting", dest="model_settings", action="append", default=[], metavar="NAME=VALUE",
                        help=helps["model_settings"] + " (repeatable)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
