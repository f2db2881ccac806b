"""Sharded evaluation: score a slice of the examples on each machine, then merge the slices into one result.

`python eval/run.py --checkpoint RUN --estimator importance_sampling --shard I --num-shards N` scores examples
shard_range(n, I, N, E) of the evaluated set and writes `RUN/shards/results_<estimator>.shard-I-of-N.json`. The
examples are scored in calls of E = estimators.examples_per_call(k, rows_per_call), seeded by the call's place in
the whole set, and shards start at multiples of E, so an example's value is the same whichever shard scores it, and `python eval/merge_shards.py` joins the N files into
the `results_<estimator>.json` an unsharded run of the same settings writes: the same per-example values, hence the
same mean, spread over repeats and standard error (per-step terms up to float rounding, summed in another order).

A shard whose file is there, finished, with the same settings and weights, is not recomputed. The merge refuses a
missing shard, a shard given twice, and shards of other settings, weights or data, naming the files.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Iterable

import numpy as np

__all__ = ["SHARD_KEYS", "shard_range", "check_shard", "shard_output", "chain_summary", "finished_shard",
           "merge_shards", "read_shards", "find_shard_files", "merge_parser", "merge_main"]

SHARD_KEYS = ("shard", "num_shards")  # the settings in which the shards of one evaluation differ (with output)
_NAME = re.compile(r"^results_(?P<estimator>\w+)\.shard-(?P<shard>\d+)-of-(?P<num_shards>\d+)\.json$")


def shard_range(num_examples: int, shard: int, num_shards: int, align: int = 1) -> tuple[int, int]:
    """(first, stop): the contiguous slice of examples 0 .. num_examples - 1 that shard `shard` of `num_shards`
    scores; the slices of shards 0 .. N - 1 follow each other and cover every example once. Each starts at a
    multiple of `align` (the examples one call scores, estimators.examples_per_call, so that the per-example
    values do not depend on the split); in blocks of `align` the shards differ by at most one block.
    Raises: ValueError (check_shard)."""
    align = max(1, int(align))
    blocks = -(-int(num_examples) // align)
    check_shard(shard, num_shards, num_examples)
    if num_shards > blocks:
        raise ValueError(f"num_shards {num_shards} is more than the {blocks} calls of {align} examples that score the "
                         f"{num_examples} examples; every shard needs at least one")
    return (min(num_examples, shard * blocks // num_shards * align),
            min(num_examples, (shard + 1) * blocks // num_shards * align))


def check_shard(shard: int, num_shards: int, num_examples: int | None = None) -> None:
    """Raises ValueError unless 0 <= shard < num_shards and each shard gets at least one of num_examples."""
    if int(num_shards) < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if not 0 <= int(shard) < int(num_shards):
        raise ValueError(f"shard must be in 0 .. {num_shards - 1} (num_shards {num_shards}), got {shard}")
    if num_examples is not None and num_shards > num_examples:
        raise ValueError(f"num_shards {num_shards} is more than the {num_examples} examples evaluated; every shard "
                         f"needs at least one")


def shard_output(checkpoint: str, estimator: str, shard: int, num_shards: int) -> str:
    """Where a shard's results go by default: <checkpoint>/shards/results_<estimator>.shard-<I>-of-<N>.json."""
    return os.path.join(checkpoint, "shards", f"results_{estimator}.shard-{shard}-of-{num_shards}.json")


def _summary(values: np.ndarray) -> dict:
    """Mean, standard deviation over repeats (evaluate's _summary) of per-repeat means."""
    return {"mean_nats": float(values.mean()), "std_nats": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "repeats_nats": [float(v) for v in values]}


def chain_summary(estimates, lower_bounds, per_step) -> dict:
    """The results of repeats of k chains per example, from their per-example values.

    estimates, lower_bounds: [R, n] per repeat and example, the estimator's value and the lower bound (Eq. 3) of
    the same chains; per_step: [R, S] each repeat's mean per-step terms over the n examples.
    Returns mean / std / repeats over repeats, the standard error over examples of the per-example mean over
    repeats, the per-step terms, the lower bound of the same chains, and the per-example values themselves
    (what the merge of shards reads).
    """
    estimates, lower_bounds = np.asarray(estimates, np.float64), np.asarray(lower_bounds, np.float64)
    per_step = np.asarray(per_step, np.float64)
    per_example = estimates.mean(axis=0)  # [n]
    n = per_example.shape[0]
    return {**_summary(estimates.mean(axis=1)),
            "standard_error_nats": float(per_example.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
            "per_step": [float(v) for v in per_step.mean(axis=0)],
            "per_step_repeats": [[float(v) for v in row] for row in per_step],
            "lower_bound_same_chains": _summary(lower_bounds.mean(axis=1)),
            "per_example_nats": {"estimate": [[float(v) for v in row] for row in estimates],
                                 "lower_bound": [[float(v) for v in row] for row in lower_bounds]}}


def _comparable(result: dict) -> dict:
    """What must agree between shards of one evaluation (and between a finished shard and a new request): the
    recorded settings but the shard and output, and the weights."""
    settings = {name: value for name, value in result["settings"].items() if name not in (*SHARD_KEYS, "output")}
    return {"settings": settings, "weights_sha256": result.get("weights_sha256")}


def finished_shard(path: str, settings: dict, weights_sha256: str) -> dict | None:
    """The results in `path` when it is a finished shard of the same settings (as results record them, JSON
    types) and weights; None when the file is absent, damaged, or of other settings (then it is recomputed)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            stored = json.load(f)
        same = _comparable(stored) == _comparable({"settings": json.loads(json.dumps(settings)),
                                                   "weights_sha256": weights_sha256})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return stored if same and "per_example_nats" in stored else None


def find_shard_files(checkpoint: str, estimator: str) -> list[str]:
    """The shard files of `estimator` in <checkpoint>/shards (any num_shards), sorted by name."""
    folder = os.path.join(checkpoint, "shards")
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if (m := _NAME.match(name)) and m["estimator"] == estimator)


def read_shards(paths: Iterable[str]) -> list[tuple[str, dict]]:
    """(path, results) of each file. Raises: ValueError naming a file that is not a shard's results."""
    shards = []
    for path in paths:
        try:
            with open(path) as f:
                result = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read shard results {path!r}: {e}") from None
        if not isinstance(result, dict) or "per_example_nats" not in result or "settings" not in result:
            raise ValueError(f"{path!r} holds no per-example results of a chain estimator (lower_bound, "
                             f"importance_sampling, isotropic) written by eval/run.py --shard I --num-shards N")
        shards.append((path, result))
    return shards


def _check_complete(shards: list[tuple[str, dict]]) -> int:
    """Checks that the shards are 0 .. N - 1 of one split, each once, of the same evaluation; returns N."""
    counts = sorted({int(r["settings"].get("num_shards", 1)) for _, r in shards})
    if len(counts) > 1:
        raise ValueError(f"the shards come from different splits (num_shards {', '.join(map(str, counts))}); merge "
                         f"the files of one split")
    num_shards, first_path = counts[0], shards[0][0]
    owner: dict[int, str] = {}
    for path, result in shards:
        index = int(result["settings"].get("shard", 0))
        if index in owner:
            raise ValueError(f"shard {index} of {num_shards} is given twice: {owner[index]!r} and {path!r}")
        owner[index] = path
        if _comparable(result) != _comparable(shards[0][1]):
            differ = [name for name, value in _comparable(result)["settings"].items()
                      if _comparable(shards[0][1])["settings"].get(name) != value]
            what = f"settings {', '.join(differ)}" if differ else "weights"
            raise ValueError(f"{path!r} is not a shard of the same evaluation as {first_path!r}: its {what} differ")
        if result.get("data_source", {}).get("fingerprint") != shards[0][1].get("data_source", {}).get("fingerprint"):
            raise ValueError(f"{path!r} evaluated other data than {first_path!r} (data fingerprints differ)")
    missing = [i for i in range(num_shards) if i not in owner]
    if missing:
        raise ValueError(f"missing shard{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of "
                         f"{num_shards}: run eval/run.py with --shard {missing[0]} --num-shards {num_shards} (and the "
                         f"same settings), or give its results file")
    return num_shards


def merge_shards(shards: list[tuple[str, dict]]) -> dict:
    """The results of an unsharded run from its N shards' results [(path, results)]: per-example values in example
    order, their summary (chain_summary), and the shards' common fields; "shards" lists where each came from.
    Raises: ValueError for no shards, a missing, duplicated or foreign shard, or shards that do not tile the
    examples."""
    if not shards:
        raise ValueError("no shard results given")
    _check_complete(shards)
    shards = sorted(shards, key=lambda item: int(item[1]["settings"].get("shard", 0)))
    first, expected = shards[0][1], 0
    for path, result in shards:
        start, stop = result["examples"]["first"], result["examples"]["stop"]
        if start != expected:
            raise ValueError(f"{path!r} scores examples {start} .. {stop - 1}; expected them to start at {expected}")
        expected = stop
        for key in ("isotropic_variance",):
            if result.get(key) != first.get(key):
                raise ValueError(f"{path!r} chose {key} {result.get(key)}, {shards[0][0]!r} {first.get(key)}")
    estimates = np.concatenate([np.asarray(r["per_example_nats"]["estimate"]) for _, r in shards], axis=1)
    bounds = np.concatenate([np.asarray(r["per_example_nats"]["lower_bound"]) for _, r in shards], axis=1)
    sizes = np.array([r["examples"]["stop"] - r["examples"]["first"] for _, r in shards], np.float64)
    per_step = sum(size * np.asarray(r["per_step_repeats"]) for size, (_, r) in zip(sizes, shards)) / sizes.sum()
    merged = {key: value for key, value in first.items()
              if key not in ("per_example_nats", "per_step_repeats", "wall_seconds", "environment", "output")}
    merged.update(chain_summary(estimates, bounds, per_step))
    if first.get("bits_per_dim") is not None:
        merged["bits_per_dim"] = _bits_per_dim(merged["mean_nats"], first)
    merged["examples"] = {"first": 0, "stop": int(estimates.shape[1])}
    merged["settings"] = {**first["settings"], "shard": 0, "num_shards": 1}
    merged["shards"] = [{"file": os.path.basename(path), "examples": r["examples"], "wall_seconds": r.get("wall_seconds"),
                         "environment": r.get("environment")} for path, r in shards]
    merged["wall_seconds"] = float(sum(r.get("wall_seconds", 0.0) for _, r in shards))  # machine time, all shards
    return merged


def _bits_per_dim(mean_nats: float, result: dict) -> float:
    """Bits per dim of the merged mean. estimators.bits_per_dim is affine in the mean with slope -1 / (d ln 2), so
    the shard's own (mean, bits per dim) pair gives it without the 8-bit offset's rule (and without TensorFlow)."""
    dims = int(np.prod(result["settings"]["config"]["example_shape"]))
    return result["bits_per_dim"] - (mean_nats - result["mean_nats"]) / (dims * math.log(2.0))


def _run_folder_of(shard_path: str) -> str:
    """The run folder of a shard's results file: the folder above shards/, else the file's own folder."""
    folder = os.path.dirname(os.path.abspath(shard_path))
    return os.path.dirname(folder) if os.path.basename(folder) == "shards" else folder


def merge_parser():
    from infusion_tf.console import OneLineErrorParser

    parser = OneLineErrorParser(prog="eval/merge_shards.py", description=(
        "Merges the results of eval/run.py --shard I --num-shards N into the results_<estimator>.json of an "
        "unsharded run of the same settings."))
    parser.add_argument("files", nargs="*", help="the shards' results files (default: every "
                                                 "<checkpoint>/shards/results_<estimator>.shard-*-of-*.json)")
    parser.add_argument("--checkpoint", default=None, help="run folder whose shards/ folder holds the shards' results")
    parser.add_argument("--estimator", default=None, help="with --checkpoint: the estimator whose shards to merge")
    parser.add_argument("--output", default=None,
                        help="merged results file (default: results_<estimator>.json in the evaluated run folder)")
    return parser


def merge_main(argv: list[str] | None = None) -> int:
    """Entry point of `python eval/merge_shards.py`; returns the exit status (2 with one error line for bad input)."""
    from infusion_tf import files, provenance
    from infusion_tf.console import BAD_INPUT, print_error

    parser = merge_parser()
    args = parser.parse_args(argv)
    try:
        paths = list(args.files)
        if not paths:
            if args.checkpoint is None or args.estimator is None:
                raise ValueError("give the shards' results files, or --checkpoint RUN --estimator NAME")
            paths = find_shard_files(args.checkpoint, args.estimator)
            if not paths:
                raise FileNotFoundError(f"no shard results of {args.estimator!r} in "
                                        f"{os.path.join(args.checkpoint, 'shards')!r}")
        shards = read_shards(paths)
        merged = merge_shards(shards)
        settings = merged["settings"]
        output = args.output or os.path.join(args.checkpoint or _run_folder_of(paths[0]),
                                             f"results_{merged['estimator']}.json")
        merged["settings"] = {**settings, "output": provenance.portable_path(output)}
        merged["environment"] = provenance.environment()
        files.write_json(output, merged)
    except BAD_INPUT as e:
        return print_error(e)
    n = merged["examples"]["stop"]
    print(f"merged {len(shards)} shards, {n} examples: {merged['estimator']} {merged['mean_nats']:.2f} +- "
          f"{merged['std_nats']:.2f} nats (std over repeats), standard error {merged['standard_error_nats']:.2f}")
    print(f"written to {output}")
    return 0
