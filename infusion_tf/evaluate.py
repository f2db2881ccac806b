"""The evaluation command: `python eval/run.py --checkpoint DIR --estimator NAME` (console script `infusion-eval`).

Estimators (Section 2.4, Section 4.1, Tables 1 and 2 of the paper):
    lower_bound          Eq. 3, k chains per example (default 10)
    importance_sampling  Eq. 2, logsumexp of k log-weights - log k (default k = 1000; the paper used 20 000)
    isotropic            Eq. 2 with the last step's variance replaced by one variance for all pixels,
                         chosen on the validation set (Table 2's isotropic row)
    parzen               Parzen window on 10 000 samples, bandwidth chosen on the validation set (Table 1)
    sample_quality       classifier-based Inception score and Frechet distance, nearest-neighbour figure
Every estimator runs --repeats times with different chains (or samples) and reports the mean and the
standard deviation over repeats, as Table 2 does. Before estimating, every step's batch-norm statistics
are recomputed over the whole training set (Appendix A.1) unless --batch-norm moving; the recomputed
statistics are kept beside the weights (`best.batch_norm.npz`, keyed by the weights' hash) and reused by
the next evaluation of the same weights (--no-batch-norm-cache recomputes and writes nothing). Evaluated points are
dequantized as the run trained (config.dequantize: uniform noise of 1/256 fixed by --seed, as the paper and Wu et
al. (2016)) unless --dequantize / --no-dequantize says otherwise. The data are the run's own, found where its
data_source.json says (--data-dir only when they have moved; other data are refused).
Results go to `<checkpoint>/results_<estimator>.json` (or --output), with the dequantization used and the data source.
The chains of each call are seeded by (seed, repeat, the call's place in the whole evaluated set), and shards start
at a call's first example, so --shard I --num-shards N can score a slice of the examples on each machine (`<checkpoint>/shards/`, resumed when finished) and eval/merge_shards.py joins them into the results
of an unsharded run (shards.py, docs/distributed.md).
--model-setting NAME=VALUE (repeatable) sets a config field that the model marks as evaluation-only
(its `evaluation_settings`, e.g. short_run_ot's proposal chains) for this evaluation; the results record it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Callable

import numpy as np

from infusion_tf import files, protocol, provenance
from infusion_tf.config import check_seed
from infusion_tf.console import (BAD_INPUT, OneLineErrorParser, check_output_folder, field_help, print_error,
                                 quiet_tensorflow_logs)
from infusion_tf.precision import resolve_precision
from infusion_tf.registry import ESTIMATORS, register_estimator

__all__ = ["ESTIMATORS", "Estimator", "EvalInputs", "EvalSettings", "lower_bound", "importance_sampling", "isotropic",
           "parzen_window", "sample_quality", "evaluate", "use_recomputed_batch_norm", "copy_batch_norm_cache",
           "batch_norm_cache_path", "eval_parser", "main"]


@dataclasses.dataclass(frozen=True)
class Estimator:
    """One estimator of eval/run.py, registered in registry.ESTIMATORS under its name.

    run(model, inputs, settings) -> dict of results ("mean_nats", "std_nats", ... or None for scores).
    """

    name: str
    run: Callable[..., dict]
    default_k: int | None = None  # proposals per example when it scores log-weights; None: it draws samples
    needs: str | None = None  # a protocol capability the model must have (protocol.CAPABILITIES)
    check: Callable[[Any], None] | None = None  # check(config): ValueError before any work when it cannot run


@dataclasses.dataclass(frozen=True)
class EvalInputs:
    """What every estimator gets: the evaluated points, validation points, the training split and the folder."""

    x: np.ndarray  # float32 [n, *example_shape], as the model sees them
    x_validation: np.ndarray  # float32 [v, *example_shape]
    train: np.ndarray  # the run's training split in stored form (uint8 images or float points)
    folder: str  # where results and figures go
    first_index: int = 0  # index of x's first row in the evaluated set: a shard's first example (per-example seeds)


def _estimator(name: str, **spec):
    """Registers the decorated function as Estimator(name, function, **spec)."""
    def decorate(run):
        register_estimator(name)(Estimator(name, run, **spec))
        return run
    return decorate

_SAMPLES_TAG = 1  # the seed stream of the samples of Parzen and sample quality (see _sample_seed)
ISOTROPIC_VARIANCES = np.logspace(-4, 0, 33)  # grid of the isotropic output variance


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Every setting of one evaluation; all of them are written into results.json."""

    checkpoint: str
    estimator: str = "lower_bound"
    num_examples: int = 1000  # first N examples of the split (the paper: 1000 test examples)
    shard: int = 0  # score only slice I (0-based) of the examples; eval/merge_shards.py joins the slices
    num_shards: int = 1  # slices the examples are split into (shards.py); results do not depend on it
    k: int | None = None  # chains per example; None: 10 (lower_bound) or 1000 (importance sampling)
    repeats: int = 10  # Table 2 reports mean +- std over 10 repetitions
    seed: int = 0  # fixes the dequantization noise of the evaluated points and the chains of every repeat
    split: str = "test"  # test | validation | train: the split whose first num_examples are evaluated
    weights: str | None = None  # best | last | a path; None: best if present, else last
    batch_norm: str = "recompute"  # recompute over the training set (the paper) | moving (training's averages)
    batch_norm_cache: bool = True  # reuse (and write) <weights>.batch_norm.npz beside the weights
    dequantize: bool | None = None  # uniform noise of 1/256 on the evaluated points; None: as the run trained
    validation_examples: int = 1000  # for choosing the isotropic variance and the Parzen bandwidth
    num_samples: int = 10_000  # Parzen and sample quality: samples drawn from the model
    rows_per_call: int = 2048  # chains scored per call: bounds memory whatever k
    precision: str = "float32"  # float32 | mixed_bfloat16 (bfloat16 matrix products, float32 densities) | auto
    data_dir: str | None = None  # the data the run trained on, if it is not found as the run recorded it
    output: str | None = None  # results file; None: <checkpoint>/results_<estimator>.json
    model_settings: tuple[str, ...] = ()  # NAME=VALUE for a field the model marks evaluation-only (repeatable)

    def __post_init__(self):
        object.__setattr__(self, "model_settings", tuple(self.model_settings or ()))
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; choose one of {list(ESTIMATORS.names())}")
        if self.split not in ("test", "train", "validation"):
            raise ValueError(f"split must be test, train or validation, got {self.split!r}")
        if self.precision not in ("float32", "mixed_bfloat16", "auto"):
            raise ValueError(f"precision must be float32, mixed_bfloat16 or auto, got {self.precision!r}")
        if self.batch_norm not in ("recompute", "moving"):
            raise ValueError(f"batch_norm must be recompute or moving, got {self.batch_norm!r}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"k (chains per example) must be >= 1, got {self.k}")
        for name in ("num_examples", "repeats", "validation_examples", "num_samples", "rows_per_call"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_seed(self.seed)
        from infusion_tf.shards import check_shard

        check_shard(self.shard, self.num_shards, self.num_examples)
        if self.num_shards > 1 and ESTIMATORS.get(self.estimator).default_k is None:
            raise ValueError(f"{self.estimator} draws samples for the whole set and cannot be sharded; shard "
                             f"lower_bound, importance_sampling or isotropic")

    @property
    def chains(self) -> int:
        return self.k if self.k is not None else (ESTIMATORS.get(self.estimator).default_k or 1)


def _summary(values: list[float], unit: str = "_nats") -> dict:
    """Mean, standard deviation over repeats and the repeats themselves; keys end with `unit`."""
    values = np.asarray(values, np.float64)
    return {f"mean{unit}": float(values.mean()), f"std{unit}": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            f"repeats{unit}": [float(v) for v in values]}


def _chain_estimate(model, inputs: EvalInputs, settings: EvalSettings, per_example_values, variances=(),
                    result=None) -> dict:
    """Repeats of k proposals per example of inputs.x scored by the model's log-weights (protocol.py);
    per_example_values(stats) -> [n] is the estimator's value per example (estimators.ChainStatistics). Repeat r
    draws with seed * 1000 + r; the chains of a call are seeded by the call's place in the whole evaluated set
    (estimators.score_chains), whichever shard scores it."""
    from infusion_tf import estimators, shards

    scorer = estimators.LogWeightScorer.from_model(model)
    x = inputs.x
    values, bounds, per_step = [], [], []
    for r in range(settings.repeats):
        print(f"repeat {r + 1}/{settings.repeats}: {settings.chains} chains x {len(x)} examples")
        stats = estimators.score_chains(scorer, x, settings.chains, settings.seed * 1000 + r,
                                        rows_per_call=settings.rows_per_call, isotropic_variances=variances,
                                        progress=True, first_index=inputs.first_index)
        bounds.append(stats.lower_bound())
        per_step.append(stats.per_step())
        values.append(per_example_values(stats))
    return {**(result or {}), **shards.chain_summary(values, bounds, per_step)}


@_estimator("lower_bound", default_k=10, needs="likelihood")
def lower_bound(model, inputs: EvalInputs, settings: EvalSettings) -> dict:
    """Eq. 3: mean_j l_j over k proposals per example."""
    return _chain_estimate(model, inputs, settings, lambda stats: stats.lower_bound())


@_estimator("importance_sampling", default_k=1000, needs="likelihood")
def importance_sampling(model, inputs: EvalInputs, settings: EvalSettings) -> dict:
    """Eq. 2 with footnote 4: logsumexp_j l_j - log k."""
    return _chain_estimate(model, inputs, settings, lambda stats: stats.importance_sampling())


@_estimator("isotropic", default_k=1000, needs="isotropic")
def isotropic(model, inputs: EvalInputs, settings: EvalSettings) -> dict:
    """Eq. 2 with the last step's variance replaced by one variance for all pixels, chosen on validation (Table 2)."""
    from infusion_tf import estimators

    variance, table = _choose_isotropic_variance(estimators.LogWeightScorer.from_model(model), inputs.x_validation,
                                                 settings)
    return _chain_estimate(model, inputs, settings,
                           lambda stats: stats.isotropic_log_sum_exp[0] - math.log(stats.num_chains), (variance,),
                           {"isotropic_variance": variance, "validation_by_variance": table})


def _choose_isotropic_variance(scorer, x_validation, settings: EvalSettings) -> tuple[float, dict]:
    """The isotropic variance with the best validation IS estimate, from one set of chains for the whole grid."""
    from infusion_tf import estimators

    k = min(settings.chains, 100)
    print(f"choosing the isotropic variance on {len(x_validation)} validation examples, {k} chains each")
    stats = estimators.score_chains(scorer, x_validation, k, settings.seed + 7919, rows_per_call=settings.rows_per_call,
                                    isotropic_variances=ISOTROPIC_VARIANCES, progress=True)
    values = (stats.isotropic_log_sum_exp - math.log(k)).mean(axis=1)  # [G]
    best = int(np.argmax(values))
    return float(ISOTROPIC_VARIANCES[best]), {f"{v:.6g}": float(m) for v, m in zip(ISOTROPIC_VARIANCES, values)}


def _sample_seed(seed: int, repeat: int, batch: int):
    """int32 [2] seed of one batch of samples: [seed, _SAMPLES_TAG] folded with the repeat, then the batch
    (stateless_fold_in, as the chains and data._derived_seed derive theirs), distinct for every
    (seed, repeat, batch) whatever their size, where arithmetic on the seed would overflow an int32."""
    import tensorflow as tf

    key = tf.constant([seed, _SAMPLES_TAG], tf.int32)
    for index in (repeat, batch):
        key = tf.random.experimental.stateless_fold_in(key, index, alg="philox")
    return key


def _model_samples(model, settings: EvalSettings, repeat: int) -> np.ndarray:
    """num_samples samples (means of the last of config.sampling_steps steps), drawn in batches of 1000 with
    the seeds _sample_seed(settings.seed, repeat, batch)."""
    batches = []
    for i, start in enumerate(range(0, settings.num_samples, 1000)):
        n = min(1000, settings.num_samples - start)
        batches.append(np.asarray(model.sample(n, seed=_sample_seed(settings.seed, repeat, i))))
    return np.concatenate(batches, axis=0)


@_estimator("parzen")
def parzen_window(model, inputs: EvalInputs, settings: EvalSettings) -> dict:
    """Parzen window on num_samples samples, bandwidth chosen on the validation points (Table 1)."""
    from infusion_tf import parzen

    x, x_validation = inputs.x, inputs.x_validation
    grid = parzen.sigma_grid(x_validation)  # from the data's scale: the same widths for every repeat
    print(f"Parzen widths: {len(grid)} from {grid[0]:g} to {grid[-1]:g}, chosen on {len(x_validation)} validation "
          f"examples")
    values, estimates, result = [], [], {}
    for r in range(settings.repeats):
        print(f"repeat {r + 1}/{settings.repeats}: {settings.num_samples} samples")
        samples = _model_samples(model, settings, r)
        estimate = parzen.parzen_estimate(samples, x_validation, x, sigmas=grid)  # warns at the grid's edge
        values.append(estimate.mean_nats)
        estimates.append(estimate)
        result["standard_error_nats"] = estimate.standard_error
    result.update(_summary(values))
    result["sigma"] = [float(e.sigma) for e in estimates]
    result["sigma_grid"] = [float(s) for s in grid]
    result["sigma_at_grid_edge"] = [bool(e.at_edge) for e in estimates]  # true: the best width may lie beyond
    return result


def _check_sample_quality(config) -> None:
    """Sample quality needs images and a trained classifier of them (quality.require_classifier)."""
    if len(config.example_shape) != 3:
        raise ValueError(f"sample_quality scores images; {config.dataset!r} has examples of shape "
                         f"{config.example_shape}")
    from infusion_tf import quality

    quality.require_classifier(config.dataset)


@_estimator("sample_quality", check=_check_sample_quality)
def sample_quality(model, inputs: EvalInputs, settings: EvalSettings) -> dict:
    """Classifier Inception score and Frechet distance of samples, and a nearest-neighbour figure."""
    from infusion_tf import quality

    x, train_array, folder = inputs.x, inputs.train, inputs.folder
    classifier = quality.load_classifier(model.config.dataset)
    scores, distances = [], []
    for r in range(settings.repeats):
        samples = _model_samples(model, settings, r)
        scores.append(quality.classifier_inception_score(classifier, samples)[0])
        distances.append(quality.classifier_frechet_distance(classifier, samples, x))
        if r == 0:
            figure = os.path.join(folder, "nearest_neighbours.png")
            train = train_array.astype(np.float32) / 255.0 if train_array.dtype == np.uint8 else train_array
            quality.save_nearest_neighbour_figure(figure, samples[:10], train)
    test_score = quality.classifier_inception_score(classifier, x)[0]
    return {"inception_score": _summary(scores, ""), "frechet_distance": _summary(distances, ""),
            "test_images_inception_score": float(test_score),
            "nearest_neighbour_figure": provenance.portable_path(figure),
            "mean_nats": None, "std_nats": None}


def _recorded_settings(settings: EvalSettings) -> dict:
    """The settings as results.json records them: paths relative to the repository or ~ (portable_path)."""
    paths = {"checkpoint", "output", "data_dir"}
    if settings.weights not in (None, "best", "last"):
        paths.add("weights")  # a weights file, not a name
    return {name: provenance.portable_path(value) if name in paths else value
            for name, value in dataclasses.asdict(settings).items()}


def _check_inputs(config, spec: Estimator, output: str) -> None:
    """Checks what would otherwise fail after the batch-norm recomputation: that `output` can be written and the
    estimator's own check (sample quality: images and a trained classifier for them, quality.require_classifier).
    Raises: ValueError or OSError naming the problem; creates nothing."""
    check_output_folder(os.path.dirname(os.path.abspath(output)))
    if os.path.isdir(output):
        raise IsADirectoryError(f"--output {output!r} is a folder; give the results file's name")
    if spec.check is not None:
        spec.check(config)


def _read_batch_norm_cache(path: str) -> tuple[dict, dict, dict] | None:
    """(key, change, statistics) of a cache file; None, with a warning, for a damaged one (it is recomputed)."""
    try:
        with np.load(path) as cached:
            stored, change = json.loads(str(cached["key"])), json.loads(str(cached["change"]))
            stats = {name: cached[name] for name in cached.files if name not in ("key", "change")}
    except Exception as e:  # noqa: BLE001 -- zip, pickle, missing-entry and JSON errors all mean a damaged file
        print(f"warning: ignoring the damaged batch-norm statistics {path} ({type(e).__name__}: {e})",
              file=sys.stderr)
        return None
    if not isinstance(stored, dict) or not isinstance(change, dict):
        print(f"warning: ignoring the damaged batch-norm statistics {path} (no key)", file=sys.stderr)
        return None
    return stored, change, stats


def batch_norm_cache_path(weights_path: str) -> str:
    """Where the recomputed statistics of a weights file are kept: best.weights.h5 -> best.batch_norm.npz."""
    folder, name = os.path.split(weights_path)
    stem = name[:-len(".weights.h5")] if name.endswith(".weights.h5") else os.path.splitext(name)[0]
    return os.path.join(folder, f"{stem}.batch_norm.npz")


def _same_cache_key(stored: dict, key: dict) -> bool:
    """Whether a cache's key fits: equal, or written before keys held the data (no "data_fingerprint") and equal
    in everything else, which such a cache is trusted for, as it was then."""
    if "data_fingerprint" not in stored:
        key = {name: value for name, value in key.items() if name != "data_fingerprint"}
    return stored == key


def use_recomputed_batch_norm(model, weights_path: str, train: np.ndarray, *, seed: int = 0,
                              precision: str = "float32", cache: bool = True,
                              data_fingerprint: str | None = None) -> dict:
    """Sets the statistics over the whole training set (Appendix A.1), from the cache when it fits.

    The recomputation takes 1-2 minutes for the paper's model on 2 cores, and is the same for every
    estimator, so its result is kept beside the weights with what it depends on (the weights' hash, the
    number of training examples, the seed, the precision and the data's fingerprint, data.data_source). A cache
    of other weights or data is recomputed and replaced; a folder that cannot be written is only reported.
    """
    from infusion_tf import estimators

    key = {"weights_sha256": provenance.file_sha256(weights_path), "train_examples": len(train), "seed": seed,
           "precision": precision}
    if data_fingerprint is not None:
        key["data_fingerprint"] = data_fingerprint
    path = batch_norm_cache_path(weights_path)
    cached = _read_batch_norm_cache(path) if cache and os.path.isfile(path) else None
    if cached is not None:
        stored, change, stats = cached
        if _same_cache_key(stored, key):
            estimators.set_batch_norm_statistics(model, stats)
            print(f"batch-norm statistics over {len(train)} training examples read from {path}")
            return {**change, "cache": provenance.portable_path(path)}
    started = time.time()
    print(f"recomputing batch-norm statistics over {len(train)} training examples")
    change = estimators.recompute_batch_norm_statistics(model, train, seed=seed, progress=True)
    seconds = time.time() - started
    print(f"statistics moved by up to {change['max_abs_mean_change']:.3g} in mean and "
          f"{100 * change['max_rel_variance_change']:.3g}% in variance ({seconds:.0f} s)", flush=True)
    if cache:
        try:
            statistics = estimators.batch_norm_statistics(model)
            files.atomic_write(path, lambda tmp: np.savez(tmp, key=json.dumps(key), change=json.dumps(change),
                                                          **statistics))
        except OSError as e:
            print(f"warning: could not keep the batch-norm statistics in {path}: {e}", file=sys.stderr)
    return {**change, "seconds": seconds}


def copy_batch_norm_cache(source_weights: str, target_weights: str) -> str | None:
    """Keeps source_weights' recomputed statistics for target_weights, a re-save of the same variables.

    Returns the new cache's path, or None when source_weights has no cache of its current bytes (or a damaged one).
    """
    source = batch_norm_cache_path(source_weights)
    cached = _read_batch_norm_cache(source) if os.path.isfile(source) else None
    if cached is None or cached[0].get("weights_sha256") != provenance.file_sha256(source_weights):
        return None
    key, change, stats = cached
    arrays = {"change": json.dumps(change), **stats}
    target = batch_norm_cache_path(target_weights)
    target_key = json.dumps({**key, "weights_sha256": provenance.file_sha256(target_weights)})
    return files.atomic_write(target, lambda tmp: np.savez(tmp, key=target_key, **arrays))


def evaluate(settings: EvalSettings) -> dict:
    """Runs one estimator on a checkpoint; writes and returns the results (see the module docstring)."""
    from infusion_tf import data, estimators, shards
    from infusion_tf.checkpoint import find_weights, load_checkpoint
    from infusion_tf.run_folder import load_run_data, training_splits

    started = time.time()
    output = settings.output or (os.path.join(settings.checkpoint, f"results_{settings.estimator}.json")
                                 if settings.num_shards == 1 else
                                 shards.shard_output(settings.checkpoint, settings.estimator, settings.shard,
                                                     settings.num_shards))
    precision, precision_why = resolve_precision(settings.precision)  # auto: bfloat16 where the hardware has units
    settings = dataclasses.replace(settings, precision=precision)  # results.json records what was chosen
    model = load_checkpoint(settings.checkpoint, settings.weights, settings.precision,
                            settings.model_settings)  # clear error first
    weights_path = find_weights(settings.checkpoint, settings.weights)
    folder = os.path.dirname(os.path.abspath(output))
    config = model.config
    spec = ESTIMATORS.get(settings.estimator)
    if spec.needs is not None:
        protocol.require(model, spec.needs, f"the {spec.name} estimator")
    _check_inputs(config, spec, output)  # what would fail after minutes of work fails now
    if settings.num_shards > 1:  # a finished shard of the same settings and weights is not recomputed
        recorded = {**_recorded_settings(settings), "chains": settings.chains, "config": config.to_dict()}
        done = shards.finished_shard(output, recorded, provenance.file_sha256(weights_path))
        if done is not None:
            print(f"shard {settings.shard} of {settings.num_shards} is finished in {output}; not recomputed")
            return {**done, "output": output}
    splits, source = load_run_data(config, settings.checkpoint, settings.data_dir)  # the run's own data
    train = training_splits(config, splits).train
    os.makedirs(folder, exist_ok=True)  # once the inputs are known to be good, before the work
    has_batch_norm = "batch_norm" in protocol.capabilities(model)
    batch_norm = {"mode": settings.batch_norm if has_batch_norm else "none (the model has no batch normalization)"}
    if settings.batch_norm == "recompute" and has_batch_norm:
        batch_norm.update(use_recomputed_batch_norm(model, weights_path, train, seed=settings.seed,
                                                    precision=settings.precision, cache=settings.batch_norm_cache,
                                                    data_fingerprint=source["fingerprint"]))
    prepared = None  # what the log-weights need beyond the weights (an RBM prior's log Z), before any estimate
    if spec.needs is not None and "prepare" in protocol.capabilities(model):
        prepared = model.prepare_evaluation(settings.seed)
    dequantize = config.dequantize if settings.dequantize is None else settings.dequantize
    array = getattr(splits, settings.split)[:settings.num_examples]
    x = data.eval_points(array, seed=settings.seed, dequantize=dequantize)
    x_validation = data.eval_points(splits.validation[:settings.validation_examples], seed=settings.seed + 1,
                                    dequantize=dequantize)
    align = estimators.examples_per_call(settings.chains, settings.rows_per_call) if spec.default_k else 1
    first, stop = shards.shard_range(len(x), settings.shard, settings.num_shards, align)
    result = spec.run(model, EvalInputs(x[first:stop], x_validation, train, folder, first), settings)
    result = {"estimator": settings.estimator, **result, "examples": {"first": first, "stop": stop}}
    if result.get("mean_nats") is not None:
        # 8-bit pixels dequantized into [0, 1] add d log 256; a model of other data (binary images) says so.
        quantized = getattr(model, "quantized_8bit", config.dequantize or len(config.example_shape) == 3)
        result["bits_per_dim"] = estimators.bits_per_dim(result["mean_nats"], config.num_dims, quantized)
        result["quantized_8bit"] = bool(quantized)
    result["batch_norm"] = batch_norm
    if prepared is not None:
        result["prepared"] = prepared
    result["dequantize"] = {"used": dequantize, "from": "run" if settings.dequantize is None else "flag"}
    result["data_source"] = {**source, "data_dir": provenance.portable_path(source["data_dir"])}
    result["settings"] = {**_recorded_settings(settings), "chains": settings.chains, "config": config.to_dict()}
    # the evaluation-only fields set by --model-setting, as the model's config holds them (config: all fields)
    result["model_settings"] = {name: getattr(config, name) for name in
                                (s.partition("=")[0].strip() for s in settings.model_settings)}
    result["precision"] = {"used": precision, "why": precision_why}
    result["weights_sha256"] = provenance.file_sha256(weights_path)
    result["wall_seconds"] = time.time() - started
    result["environment"] = provenance.environment()
    files.write_json(output, result)
    result["output"] = output
    return result


def _print_table(result: dict) -> None:
    rows = [("estimator", result["estimator"])]
    if result.get("mean_nats") is not None:
        rows += [("log p(x), nats", f"{result['mean_nats']:.2f} +- {result['std_nats']:.2f} (std over repeats)"),
                 ("standard error over examples", f"{result.get('standard_error_nats', float('nan')):.2f}"),
                 ("bits per dim", f"{result['bits_per_dim']:.4f}")]
    for key in ("isotropic_variance", "sigma"):
        if key in result:
            rows.append((key, str(result[key])))
    if any(result.get("sigma_at_grid_edge", ())):
        grid = result["sigma_grid"]
        rows.append(("warning", f"sigma at the edge of its grid {grid[0]:g} .. {grid[-1]:g} in "
                                f"{sum(result['sigma_at_grid_edge'])} repeats"))
    for key in ("inception_score", "frechet_distance"):
        if key in result:
            rows.append((key, f"{result[key]['mean']:.3f} +- {result[key]['std']:.3f}"))
    if "dequantize" in result:
        rows.append(("dequantized points", f"{result['dequantize']['used']} (from the {result['dequantize']['from']})"))
    rows += [("wall seconds", f"{result['wall_seconds']:.1f}"), ("written to", result["output"])]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def eval_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="eval/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="run folder (config.json + weights)")
    parser.add_argument("--estimator", default="lower_bound", help=f"one of {', '.join(ESTIMATORS.names())} "
                                                                     f"(default lower_bound)")
    helps = field_help(EvalSettings)
    for field in dataclasses.fields(EvalSettings):
        if field.name in ("checkpoint", "estimator", "model_settings"):
            continue
        flag = "--" + field.name.replace("_", "-")
        text = f"{helps.get(field.name, field.name.replace('_', ' '))} (default {field.default})"
        if "bool" in str(field.type):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=text)
        else:
            kind = int if "int" in str(field.type) else str
            parser.add_argument(flag, type=kind, default=field.default, help=text)
    parser.add_argument("--model-setting", dest="model_settings", action="append", default=[], metavar="NAME=VALUE",
                        help="set a config field that the model marks as evaluation-only (e.g. short_run_ot's "
                             "proposal_steps=400) for this evaluation; repeatable; recorded in the results")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = eval_parser().parse_args(argv)
    quiet_tensorflow_logs()
    try:
        result = evaluate(EvalSettings(**vars(args)))
    except BAD_INPUT as e:  # flags, checkpoint, data (offline included), classifier, output folder
        return print_error(e)
    _print_table(result)
    return 0
