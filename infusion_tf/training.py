"""A training run: its output folder, checkpoints, logs, pictures, resumption and final SavedModel.

    <output>/config.json                    the frozen InfusionConfig, enough to rebuild the model
    <output>/data_source.json               where the data came from and their fingerprint (data.data_source)
    <output>/checkpoints/last.keras         weights + optimizer + random state + Progress, the commit of each epoch
    <output>/checkpoints/last.weights.h5    weights only, same epoch
    <output>/checkpoints/best.weights.h5    weights of the epoch with the best validation lower bound
    <output>/checkpoints/state.json         a readable copy of the Progress in last.keras
    <output>/log.csv, <output>/tensorboard/ loss, lower bound and validation lower bound per epoch
    <output>/samples/                       PNG grids of samples and of sampling chains every few epochs
    <output>/saved_model/                   SavedModel of the best weights, written at the end

Every file is written to a temporary name and renamed, so each one is always whole. After the epoch's log
row and pictures, last.keras is replaced: that rename commits the epoch, and a run killed at any moment
resumes from the newest committed epoch. Its epoch is the optimizer's step count divided by the steps per
epoch, both stored in last.keras, so it cannot disagree with the weights it resumes; the best validation
bound travels in the same file. On --resume the files written after a commit are brought level with it
and the log rows of an unfinished epoch are dropped (_repair_run_folder). SIGINT and SIGTERM stop training
at the next batch, or after the epoch's commit when they arrive during validation or the epoch's writes;
the unfinished part of an epoch is lost, its committed epochs are not.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import shutil
import signal
import threading
import time
import zipfile

import keras
import numpy as np

from infusion_tf import data as data_lib
from infusion_tf import visualize
from infusion_tf.config import CONFIG_FILENAME, InfusionConfig, load_config, save_config
from infusion_tf.model import InfusionModel

__all__ = ["RunPaths", "Progress", "RESUMABLE_FIELDS", "TrainingInterrupted", "check_output_dir", "resume_config",
           "create_output_dir", "DATA_SOURCE_FILENAME", "read_data_source", "load_run_data", "load_training_data",
           "build_model", "CheckpointCallback", "NonFiniteLossGuard",
           "SamplesCallback", "PatienceStopping", "StopOnSignal", "EpochTimer", "describe_run", "read_progress", "train"]

RESUMABLE_FIELDS = ("epochs", "patience")  # what --resume may change; every other setting is the run's own
_PROGRESS_ENTRY = "infusion_progress.json"  # the Progress, stored inside last.keras beside the weights
DATA_SOURCE_FILENAME = "data_source.json"  # data.data_source of the run's data, written when the folder is created


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Where a run in folder `root` writes each of its files."""

    root: str

    def _join(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    config = property(lambda self: self._join(CONFIG_FILENAME))
    data_source = property(lambda self: self._join(DATA_SOURCE_FILENAME))
    checkpoints = property(lambda self: self._join("checkpoints"))
    last = property(lambda self: self._join("checkpoints", "last.keras"))
    last_weights = property(lambda self: self._join("checkpoints", "last.weights.h5"))
    best_weights = property(lambda self: self._join("checkpoints", "best.weights.h5"))
    state = property(lambda self: self._join("checkpoints", "state.json"))
    log = property(lambda self: self._join("log.csv"))
    tensorboard = property(lambda self: self._join("tensorboard"))
    samples = property(lambda self: self._join("samples"))
    saved_model = property(lambda self: self._join("saved_model"))


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a run stands after its last committed epoch; saved inside last.keras with the weights."""

    epoch: int = 0  # complete epochs
    best_val_lower_bound: float = -math.inf  # best validation lower bound so far, nats per example
    best_epoch: int = -1  # the (1-based) epoch that reached it; -1: none yet

    @property
    def epochs_without_improvement(self) -> int:
        return self.epoch - max(self.best_epoch, 0)


def _differences(saved: InfusionConfig, config: InfusionConfig) -> list[str]:
    """Fields outside RESUMABLE_FIELDS in which `config` differs from `saved`."""
    new = config.to_dict()
    return sorted(k for k, v in saved.to_dict().items() if k not in RESUMABLE_FIELDS and new[k] != v)


def _check_resumable(output_dir: str, saved: InfusionConfig, config: InfusionConfig) -> None:
    changed = _differences(saved, config)
    if changed:
        raise ValueError(f"--resume continues {output_dir!r} with its saved config.json; only "
                         f"{', '.join('--' + f for f in RESUMABLE_FIELDS)} may change, but these differ: {changed}")


def resume_config(output_dir: str, changes: dict | None = None) -> InfusionConfig:
    """The saved config of the run in `output_dir` with `changes` ({field: value}) applied.

    Raises: FileNotFoundError for a missing folder or config.json; ValueError naming every changed field
    outside RESUMABLE_FIELDS, or a changed value out of range.
    """
    if not os.path.isdir(output_dir):
        raise FileNotFoundError(f"--resume: run folder {output_dir!r} does not exist")
    saved = load_config(output_dir)
    config = dataclasses.replace(saved, **(changes or {}))
    _check_resumable(output_dir, saved, config)
    return config


def check_output_dir(output_dir: str, config: InfusionConfig, *, resume: bool, overwrite: bool) -> None:
    """Refuses a path that is not a folder, a folder that holds another run (unless `overwrite`) and, with
    `resume`, a config that is not the run's own (only RESUMABLE_FIELDS may change). Writes nothing."""
    if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output folder {output_dir!r} exists and is not a folder")
    if resume:
        if not os.path.isdir(output_dir):
            raise FileNotFoundError(f"--resume: run folder {output_dir!r} does not exist")
        _check_resumable(output_dir, load_config(output_dir), config)
    elif os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise ValueError(f"output folder {output_dir!r} already holds files; pass --resume to continue "
                         f"that run or --overwrite to replace it")


def create_output_dir(output_dir: str, config: InfusionConfig, *, overwrite: bool,
                      data_source: dict | None = None) -> None:
    """Creates a new run folder (deleting an old one if `overwrite`) and writes config.json into it, then
    data_source.json when `data_source` (data.data_source of the run's data) is given.

    config.json comes first: a run killed here leaves an empty folder (a new run may start in it) or one
    that --resume continues (and that writes the missing data_source.json).
    """
    if overwrite and os.path.isdir(output_dir):
        shutil.rmtree(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    save_config(config, output_dir)
    if data_source is not None:
        _write_json(RunPaths(output_dir).data_source, data_source)
    os.makedirs(RunPaths(output_dir).checkpoints, exist_ok=True)


def read_data_source(run_dir: str) -> dict | None:
    """The data source recorded in a run folder (data.data_source); None for a folder without a record (a run
    written before the record existed, or a pretrained/ folder shipped without one)."""
    path = RunPaths(run_dir).data_source
    if not os.path.isfile(path):
        return None
    try:
        source = _read_json(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not readable JSON ({e}); delete it to use --data-dir as given") from None
    if not isinstance(source, dict) or not isinstance(source.get("fingerprint"), str):
        raise ValueError(f"{path} holds no data fingerprint; delete it to use --data-dir as given")
    return source


def load_run_data(config: InfusionConfig, run_dir: str | None = None,
                  data_dir: str | None = None) -> tuple[data_lib.Splits, dict]:
    """The full splits of the run's dataset and their data.data_source; checks the example shape.

    data_dir None: the folder recorded in run_dir's data_source.json; without a record (or without run_dir),
    the package's MNIST files, TFDS's default folder or the toy generator, as before records existed. A given
    data_dir must hold the recorded data: the same content in another folder (the data moved) is accepted.
    Raises: ValueError when the data differ from the recorded ones (their fingerprints differ);
      FileNotFoundError that names the recorded folder when it is gone.
    """
    recorded = read_data_source(run_dir) if run_dir is not None else None
    folder = data_dir if data_dir is not None else (recorded or {}).get("data_dir")
    try:
        splits = data_lib.load_splits(config.dataset, data_dir=folder, seed=config.seed)
    except FileNotFoundError as e:
        if data_dir is None and folder is not None:  # the run's own folder has gone
            raise FileNotFoundError(f"{e}; the run in {run_dir!r} recorded its data there ({DATA_SOURCE_FILENAME}): "
                                    f"pass --data-dir with the same files") from None
        raise
    if tuple(splits.example_shape) != tuple(config.example_shape):
        raise ValueError(f"dataset {config.dataset!r} has examples of shape {splits.example_shape}, but the "
                         f"config says example_shape={config.example_shape}")
    source = data_lib.data_source(config.dataset, folder, splits)
    if recorded is not None and recorded["fingerprint"] != source["fingerprint"]:
        trained = recorded.get("data_dir") or f"the {recorded.get('kind', '?')} {recorded.get('dataset', '')} data"
        if data_dir is not None:
            given = f"--data-dir {data_dir}"
            hint = "leave --data-dir out to use the run's own data, or pass a folder that holds the same files"
        else:  # the files where the run found them have changed
            given = folder or f"the {source['kind']} data"
            hint = "they changed since; pass --data-dir with the run's own files"
        raise ValueError(f"the data in {given} are not the data the run in {run_dir!r} trained on ({trained}, "
                         f"fingerprint {recorded['fingerprint'][:12]}, here {source['fingerprint'][:12]}; see its "
                         f"{DATA_SOURCE_FILENAME}): {hint}")
    return splits, source


def _cut_to_config(config: InfusionConfig, splits: data_lib.Splits) -> data_lib.Splits:
    """splits with train and validation cut to config.train_examples / validation_examples."""
    train = splits.train if config.train_examples is None else splits.train[:config.train_examples]
    validation = (splits.validation if config.validation_examples is None
                  else splits.validation[:config.validation_examples])
    return dataclasses.replace(splits, train=train, validation=validation)


def load_training_data(config: InfusionConfig, data_dir: str | None = None,
                       run_dir: str | None = None) -> data_lib.Splits:
    """The dataset's splits, cut to config.train_examples / validation_examples; checks the example shape.

    With run_dir, the run's own data (load_run_data): the recorded folder unless data_dir is given.
    """
    return _cut_to_config(config, load_run_data(config, run_dir, data_dir)[0])


def build_model(config: InfusionConfig, train_array: np.ndarray | None = None) -> InfusionModel:
    """A compiled InfusionModel (Adam), its prior fitted to `train_array` when given (Eq. 1)."""
    keras.utils.set_random_seed(config.seed)
    model = InfusionModel(config)  # its layers compute in config.precision
    if train_array is not None:
        model.fit_prior(train_array)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    model.optimizer.build(model.trainable_variables)  # its slots exist before the first step is traced
    return model


def _atomic(save, path: str) -> None:
    """Saves through a temporary file in the same folder, then renames: the old file stays whole until then."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, ".tmp-" + name)
    save(tmp)
    os.replace(tmp, path)


def _write_json(path: str, values: dict) -> None:
    def save(tmp):
        with open(tmp, "w") as f:
            json.dump(values, f, indent=2)
    _atomic(save, path)


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or infinite, or at the end of an epoch that left a
    weight, a batch-norm statistic or an optimizer slot NaN or infinite (the loss can stay finite while the
    moving statistics overflow). The checkpoint callback then writes nothing: the last one stays as it was.
    `tripped` says what happened, e.g. "the loss became NaN or infinite at epoch 2, batch 3".
    """

    def __init__(self):
        super().__init__()
        self.tripped: str | None = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.tripped is None and logs and not math.isfinite(float(logs.get("loss", 0.0))):
            self.tripped = f"the loss became NaN or infinite at epoch {self._epoch + 1}, batch {batch + 1}"
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.tripped is not None:
            return
        variables = [*self.model.variables, *(self.model.optimizer.variables if self.model.optimizer else [])]
        bad = [v.path for v in variables
               if "float" in str(v.dtype) and not bool(keras.ops.all(keras.ops.isfinite(v.value)))]
        if bad:
            self.tripped = f"{bad[0]} became NaN or infinite in epoch {epoch + 1} (the loss stayed finite)"
            self.model.stop_training = True


def save_checkpoint(model: InfusionModel, path: str, progress: Progress) -> None:
    """model.save(path) with `progress` added to the same .keras file (an entry Keras does not read)."""
    model.save(path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(_PROGRESS_ENTRY, json.dumps(dataclasses.asdict(progress)))


def read_progress(path: str) -> Progress | None:
    """The Progress saved in a .keras checkpoint; None for one written without it (an older run)."""
    with zipfile.ZipFile(path) as archive:
        if _PROGRESS_ENTRY not in archive.namelist():
            return None
        return Progress(**json.loads(archive.read(_PROGRESS_ENTRY)))


class CheckpointCallback(keras.callbacks.Callback):
    """Each epoch: last.keras (the commit), then last.weights.h5, best.weights.h5 when the validation bound
    improves, and state.json. Goes after the callbacks that log the epoch (see the module docstring)."""

    def __init__(self, paths: RunPaths, guard: NonFiniteLossGuard, progress: Progress = Progress()):
        super().__init__()
        self.paths, self.guard, self.progress = paths, guard, progress

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.guard.tripped is not None or not math.isfinite(float(logs.get("loss", math.nan))):
            return
        bound = float(logs.get("val_lower_bound", logs.get("lower_bound", -math.inf)))
        improved = math.isfinite(bound) and bound > self.progress.best_val_lower_bound
        self.progress = Progress(epoch + 1, *((bound, epoch + 1) if improved else
                                              (self.progress.best_val_lower_bound, self.progress.best_epoch)))
        _atomic(lambda tmp: save_checkpoint(self.model, tmp, self.progress), self.paths.last)
        _atomic(self.model.save_weights, self.paths.last_weights)
        if improved:
            _atomic(self.model.save_weights, self.paths.best_weights)
        _write_state(self.paths, self.progress)


def _write_state(paths: RunPaths, progress: Progress) -> None:
    _write_json(paths.state, {**dataclasses.asdict(progress), "time": time.time()})


class PatienceStopping(keras.callbacks.Callback):
    """Early stopping: ends training once the validation bound has not improved for `patience` epochs.

    Counts from the checkpoint callback's Progress, which a resumed run restores, so an interrupted run stops
    at the same epoch as an uninterrupted one. Goes after the CheckpointCallback. patience None: never stops.
    """

    def __init__(self, checkpoint: CheckpointCallback, patience: int | None):
        super().__init__()
        self.checkpoint, self.patience = checkpoint, patience
        self.stopped = False

    def on_epoch_end(self, epoch, logs=None):
        progress = self.checkpoint.progress
        if self.patience is not None and progress.epoch == epoch + 1 \
                and progress.epochs_without_improvement >= self.patience:
            self.stopped = True
            self.model.stop_training = True


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM (`signum`); the message says where the run can resume from."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopOnSignal(keras.callbacks.Callback):
    """Turns SIGINT and SIGTERM into a clean stop; wrap the fit in `with stop.installed():`.

    The handler only records the signal. TrainingInterrupted is raised from this callback at the next safe
    point: at the start, after a training batch, or at the end of an epoch (put this callback last, after the
    checkpoint is committed). Raising from the handler itself could land inside TensorFlow, h5py or a
    finalizer, where the exception is swallowed or leaves a file half written. A second signal stops at once.
    """

    def __init__(self):
        super().__init__()
        self.signum: int | None = None

    @contextlib.contextmanager
    def installed(self):
        """Installs the handlers for the duration (main thread only: Python delivers signals there)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.signal(signum, self._record) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _record(self, signum, frame):
        if self.signum is not None:
            raise TrainingInterrupted(f"second {signal.Signals(signum).name}: stopped at once", signum)
        self.signum = signum

    def _stop_if_signalled(self, *args, **kwargs):
        if self.signum is not None:
            raise TrainingInterrupted(f"stopped by {signal.Signals(self.signum).name}", self.signum)

    on_train_begin = on_epoch_begin = on_train_batch_end = on_epoch_end = _stop_if_signalled


def _duration(seconds: float) -> str:
    """A rounded duration a person reads at a glance: 45 s, 12 min, 3.4 h, 2.1 days."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"


def describe_run(config: InfusionConfig, splits: data_lib.Splits, model, output_dir: str,
                 progress: Progress) -> list[str]:
    """The header a run prints before training: data, model, optimization, where it writes, how to stop."""
    shape = "x".join(str(s) for s in config.example_shape)
    schedule = (f"alpha(0) = {config.alpha0:g}, omega = {config.omega:g}" if config.schedule == "increasing"
                else f"alpha = {config.alpha0:g} (constant)")
    layers = f"{config.depth} x {config.width}" if config.operator == "mlp" else f"width {config.width}"
    start = "starting" if progress.epoch == 0 else f"resuming after epoch {progress.epoch}"
    steps = len(splits.train) // config.batch_size
    return [
        f"data:      {config.dataset}, {len(splits.train)} train / {len(splits.validation)} validation / "
        f"{len(splits.test)} test examples of shape {shape}",
        f"model:     {config.operator} operator ({layers}), T = {config.num_steps} steps, {schedule}, "
        f"{model.count_params():,} parameters",
        f"training:  {config.objective} objective, batch {config.batch_size}, Adam {config.learning_rate:g}, "
        f"{config.precision}; {start}, {config.epochs} epochs of {steps} steps",
        f"output:    {output_dir} (config.json, checkpoints/, log.csv, samples/, tensorboard/)",
        f"stop:      Ctrl-C keeps every complete epoch; continue with --resume --output-dir {output_dir}",
    ]


class EpochTimer(keras.callbacks.Callback):
    """When the second epoch of this process begins: the first one's time (training, validation, checkpoint and
    pictures) and the projected time of the epochs left. Printed then, not at the first epoch's end, so that the
    line does not cut into the progress bar's last update."""

    def __init__(self, total_epochs: int, printer=print):
        super().__init__()
        self.total_epochs, self.printer = total_epochs, printer
        self._started: float | None = None
        self.seconds: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._started is None:
            self._started = time.monotonic()
        elif self.seconds is None:
            self.seconds = time.monotonic() - self._started
            left = self.total_epochs - epoch
            self.printer(f"epoch {epoch} took {_duration(self.seconds)} (with tracing); the {left} epochs left "
                         f"would take about {_duration(left * self.seconds)} (--epochs, --patience to change)")


class SamplesCallback(keras.callbacks.Callback):
    """After the first epoch, every `every` epochs and at the last one: a grid of samples and a grid of sampling
    chains (PNG). Nothing for an epoch in which `guard` tripped."""

    def __init__(self, paths: RunPaths, config: InfusionConfig, reference: np.ndarray | None = None,
                 num_samples: int = 100, num_chains: int = 10, guard: NonFiniteLossGuard | None = None):
        super().__init__()
        self.paths, self.config, self.reference, self.guard = paths, config, reference, guard
        self.num_samples, self.num_chains = num_samples, num_chains

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        due = done == 1 or done % self.config.sample_every == 0 or done == self.config.epochs
        if not due or (self.guard and self.guard.tripped):
            return
        write_samples(self.model, self.paths.samples, tag=f"epoch{done:04d}", reference=self.reference,
                      num_samples=self.num_samples, num_chains=self.num_chains)


def write_samples(model: InfusionModel, folder: str, tag: str, reference=None, num_samples=100, num_chains=10,
                  seed: int = 1234) -> list[str]:
    """Writes samples_<tag>.png and chains_<tag>.png (a scatter plot for 2-D data) and copies of the latest."""
    os.makedirs(folder, exist_ok=True)
    steps = model.config.sampling_steps
    samples = np.asarray(model.sample(num_samples, steps, seed=seed))
    written = []
    if len(model.config.example_shape) == 1:
        written.append(visualize.save_scatter(os.path.join(folder, f"samples_{tag}.png"), samples,
                                              reference, title=f"samples, {steps} steps ({tag})"))
    else:
        _, chain = model.sample(num_chains, steps, seed=seed + 1, return_chain=True)
        written.append(visualize.save_sample_grid(os.path.join(folder, f"samples_{tag}.png"), samples))
        written.append(visualize.save_chain_grid(os.path.join(folder, f"chains_{tag}.png"), np.asarray(chain)))
    for path in written:
        shutil.copyfile(path, os.path.join(folder, os.path.basename(path).replace(f"_{tag}", "")))
    return written


def _resume_model(paths: RunPaths, config: InfusionConfig, steps_per_epoch: int):
    """(model, Progress) from last.keras, or None when the run has no checkpoint yet.

    Raises: ValueError for a file Keras cannot load, a model of another config than config.json, or a step
    count that is not a whole number of epochs.
    """
    if not os.path.isfile(paths.last):
        return None
    try:
        model = keras.models.load_model(paths.last)
        progress = read_progress(paths.last)
    except Exception as e:  # Keras raises many types for a damaged or foreign file
        detail = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ValueError(f"cannot resume from {paths.last}: {detail}") from None
    if not isinstance(model, InfusionModel) or _differences(model.config, config):
        changed = _differences(model.config, config) if isinstance(model, InfusionModel) else type(model).__name__
        raise ValueError(f"{paths.last} holds a model of another architecture than {paths.config}: {changed}")
    epoch, partial = divmod(int(model.optimizer.iterations.numpy()), steps_per_epoch)
    if partial:
        raise ValueError(f"{paths.last} stopped {partial} steps into an epoch of {steps_per_epoch} steps; it does "
                         f"not belong to this run's data (train_examples, batch_size)")
    if progress is None:  # a checkpoint of an older version: its state.json kept the best epoch
        state = _read_json(paths.state) if os.path.isfile(paths.state) else {}
        progress = Progress(epoch, float(state.get("best_val_lower_bound", -math.inf)), int(state.get("best_epoch", -1)))
    if progress.epoch != epoch:
        raise ValueError(f"{paths.last} is inconsistent: {progress.epoch} epochs recorded, {epoch} trained")
    return model, progress


def _repair_run_folder(paths: RunPaths, model: InfusionModel, progress: Progress) -> None:
    """Brings the files written after last.keras level with it, after a run was killed between them.

    Drops temporary files and the log rows of unfinished epochs; rewrites last.weights.h5, state.json, and
    best.weights.h5 when the committed epoch is the best one (the kill may have come before it was written).
    """
    for name in os.listdir(paths.checkpoints):
        if name.startswith(".tmp-"):
            os.remove(os.path.join(paths.checkpoints, name))
    _atomic(model.save_weights, paths.last_weights)
    if progress.best_epoch == progress.epoch:
        _atomic(model.save_weights, paths.best_weights)
    _write_state(paths, progress)
    if os.path.isfile(paths.log):
        with open(paths.log, newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) < progress.epoch]  # column 0: epoch
        if kept != rows:
            _atomic(lambda tmp: _write_rows(tmp, kept), paths.log)


def _write_rows(path: str, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def train(config: InfusionConfig, output_dir: str, *, data_dir: str | None = None, resume: bool = False,
          overwrite: bool = False, verbose: int | str = 1, callbacks=(), export: bool = True) -> keras.callbacks.History:
    """Trains a model as `config` says, writing everything listed in this module's docstring into `output_dir`.

    Stops after config.epochs, or earlier when the validation bound has not improved for config.patience
    epochs. Raises: ValueError / FileNotFoundError for bad settings, data or checkpoints, before anything is
    written; FloatingPointError if the loss becomes NaN or infinite (the last good checkpoint stays);
    TrainingInterrupted after SIGINT or SIGTERM, once what is complete is saved.
    """
    check_output_dir(output_dir, config, resume=resume, overwrite=overwrite)
    # Bad data, or on --resume data other than the run's own, fail here, before anything is written.
    full_splits, source = load_run_data(config, output_dir if resume else None, data_dir)
    splits = _cut_to_config(config, full_splits)
    paths = RunPaths(output_dir)
    # make_train_dataset drops the last partial batch; it also rejects a set smaller than one batch.
    steps_per_epoch = max(1, len(splits.train) // config.batch_size)
    resumed = _resume_model(paths, config, steps_per_epoch) if resume else None
    if not resume:
        create_output_dir(output_dir, config, overwrite=overwrite, data_source=source)
    else:
        save_config(config, output_dir)  # a resumed run may change RESUMABLE_FIELDS
        if read_data_source(output_dir) != source:  # an older run without a record, or its data have moved
            _write_json(paths.data_source, source)
        os.makedirs(paths.checkpoints, exist_ok=True)
    if resumed is None:
        model, progress = build_model(config, splits.train), Progress()
    else:
        model, progress = resumed
        _repair_run_folder(paths, model, progress)
    finished = progress.epoch >= config.epochs or (
        config.patience is not None and progress.epochs_without_improvement >= config.patience)
    if finished:
        print(f"run in {output_dir} already finished: {progress.epoch} epochs (--epochs {config.epochs}), best "
              f"epoch {progress.best_epoch} (--patience {config.patience})")
        if export and not os.path.isfile(os.path.join(paths.saved_model, "saved_model.pb")):
            _export_best(model, paths)  # the run was stopped while exporting
        return keras.callbacks.History()
    train_ds, _ = data_lib.make_train_dataset(splits.train, config.batch_size, seed=config.seed,
                                              dequantize=config.dequantize, initial_epoch=progress.epoch,
                                              epochs=config.epochs)
    val_ds = data_lib.make_eval_dataset(splits.validation, config.batch_size, seed=config.seed + 1,
                                        dequantize=config.dequantize)
    if verbose:
        print("\n".join(describe_run(config, splits, model, output_dir, progress)), flush=True)
    guard = NonFiniteLossGuard()
    checkpoint = CheckpointCallback(paths, guard, progress)
    patience, stop = PatienceStopping(checkpoint, config.patience), StopOnSignal()
    reference = splits.train[:2000] if len(config.example_shape) == 1 else None
    loggers = [keras.callbacks.CSVLogger(paths.log, append=progress.epoch > 0),
               keras.callbacks.TensorBoard(paths.tensorboard, write_graph=False, profile_batch=0)]
    # Order matters: the epoch is logged and drawn, then committed, then early stopping and signals act.
    timer = [EpochTimer(config.epochs)] if verbose else []
    all_callbacks = [guard, *loggers, SamplesCallback(paths, config, reference, guard=guard), *callbacks, checkpoint,
                     patience, *timer, stop]
    with stop.installed():
        try:
            history = model.fit(train_ds, epochs=config.epochs, initial_epoch=progress.epoch,
                                steps_per_epoch=steps_per_epoch, validation_data=val_ds, callbacks=all_callbacks,
                                verbose=verbose, shuffle=False)
        except KeyboardInterrupt as e:
            for logger in loggers:  # fit does not end its callbacks on an exception: flush and close the logs
                logger.on_train_end()
            signum = getattr(e, "signum", signal.SIGINT)
            raise TrainingInterrupted(
                f"interrupted by {signal.Signals(signum).name}; the last complete checkpoint is epoch "
                f"{checkpoint.progress.epoch} in {paths.checkpoints} (an unfinished epoch is not saved); continue "
                f"with --resume --output-dir {output_dir}", signum) from None
    if guard.tripped is not None:
        saved = (f"the last good checkpoint (epoch {checkpoint.progress.epoch}) is in {paths.checkpoints}"
                 if checkpoint.progress.epoch else "no epoch was complete, nothing was saved")
        raise FloatingPointError(f"{guard.tripped}; training stopped, {saved}; try a smaller --learning-rate "
                                 f"(now {config.learning_rate})")
    if patience.stopped and verbose:
        print(f"early stopping after epoch {checkpoint.progress.epoch}: the validation lower bound has not improved "
              f"since epoch {checkpoint.progress.best_epoch} (--patience {config.patience})")
    if export:
        _export_best(model, paths)
    return history


def _export_best(model: InfusionModel, paths: RunPaths) -> None:
    from infusion_tf.export import export_saved_model

    if os.path.isfile(paths.best_weights):
        model.load_weights(paths.best_weights)
    export_saved_model(model, paths.saved_model)
