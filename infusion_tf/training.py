"""The training loop: build or resume the model, fit it with the callbacks that log, draw, commit, stop early and
stop on signals, then export the best weights as a SavedModel.

What the run folder holds, how each epoch is committed and how a killed run is repaired on --resume:
`run_folder`. The order of the callbacks matters: the epoch is logged and drawn, then committed
(CheckpointCallback, run_folder.commit_epoch), then early stopping and signals act. SIGINT and SIGTERM stop
training at the next batch, or after the epoch's commit when they arrive during validation or the epoch's
writes; the unfinished part of an epoch is lost, its committed epochs are not.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import threading
import time

import keras
import numpy as np

from infusion_tf import checkpoint, optimizers, protocol
from infusion_tf import data as data_lib
from infusion_tf import distribute, files
from infusion_tf import visualize
from infusion_tf.config import InfusionConfig
from infusion_tf.registry import MODELS
from infusion_tf.run_folder import (Progress, RunPaths, check_output_dir, commit_epoch, create_output_dir,
                                    load_run_data, repair_run_folder, resume_model, training_splits,
                                    update_output_dir)

__all__ = ["TrainingInterrupted", "build_model", "CheckpointCallback", "NonFiniteLossGuard", "SamplesCallback",
           "PatienceStopping", "StopOnSignal", "EpochTimer", "describe_run", "train"]


def build_model(config, train_array: np.ndarray | None = None):
    """A compiled model of the registered kind config.model (its make_optimizer(), or Adam), set up on `train_array` when given
    (the infusion model fits its prior p(0), Eq. 1)."""
    keras.utils.set_random_seed(config.seed)
    model = checkpoint.build_model(config)  # its layers compute in config.precision
    if train_array is not None:
        model.fit_prior(train_array)
    # A model may name its optimizer (make_optimizer()); the default is Adam, fused, whose learning rate follows
    # config.lr_schedule over the run's budget (epochs x steps per epoch of train_array).
    make_optimizer = getattr(model, "make_optimizer", None)
    if callable(make_optimizer):
        optimizer = make_optimizer()
    else:
        kind = getattr(config, "lr_schedule", "constant") if train_array is not None else "constant"
        budget = 0 if train_array is None else len(train_array) // config.batch_size * config.epochs
        momentum = float(getattr(config, "ema_momentum", 0.0))
        ema = {"use_ema": True, "ema_momentum": momentum} if momentum > 0 else {}
        optimizer = optimizers.adam(optimizers.learning_rate_schedule(kind, config.learning_rate, budget), **ema)
    model.compile(optimizer=optimizer)
    model.optimizer.build(model.trainable_variables)  # its slots exist before the first step is traced
    return model


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


class CheckpointCallback(keras.callbacks.Callback):
    """Each epoch: last.keras (the commit), then last.weights.h5, best.weights.h5 when the model's monitored
    validation metric (`protocol.monitor`: the lower bound unless the model names another) improves (never for a
    model without a monitor: it keeps its last epoch), and state.json. Goes after the callbacks that log the epoch
    (see the module docstring)."""

    def __init__(self, paths: RunPaths, guard: NonFiniteLossGuard, progress: Progress = Progress(),
                 commit: bool = True, snapshot_every: int | None = None):
        super().__init__()
        self.paths, self.guard, self.progress = paths, guard, progress
        self.commit = commit  # False on a worker that is not the chief: it keeps the Progress and writes nothing
        self.snapshot_every = snapshot_every  # the run's config (a resumed run may change it), not the model's

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.guard.tripped is not None or not math.isfinite(float(logs.get("loss", math.nan))):
            return
        monitored = protocol.monitor(self.model)  # default the lower bound; None: the model keeps its last epoch
        bound = math.nan  # Progress keeps a score where larger is better
        if monitored is not None:
            metric, mode = monitored
            value = float(logs.get("val_" + metric, logs.get(metric, math.nan)))
            bound = value if mode == "max" else -value
        improved = math.isfinite(bound) and bound > self.progress.best_val_lower_bound
        self.progress = Progress(epoch + 1, *((bound, epoch + 1) if improved else
                                              (self.progress.best_val_lower_bound, self.progress.best_epoch)))
        if self.commit:
            commit_epoch(self.paths, self.model, self.progress, improved)
            # A copy of the weights evaluation reads (the average, with --ema-momentum).
            if self.snapshot_every and (epoch + 1) % self.snapshot_every == 0:
                files.atomic_write(self.paths.snapshot(epoch + 1),
                                   lambda tmp: shutil.copyfile(self.paths.last_weights, tmp))


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


def warm_start(model, folder: str | None) -> None:
    """Loads the weights of a run or pretrained folder (best, else last) into a new model (config.init_from): the
    model's own warm_start where it has one (the infusion model keeps its new schedules), else load_weights.
    Raises: FileNotFoundError naming a missing folder or weights; ValueError when they do not fit the model."""
    if folder is None:
        return
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--init-from: folder {folder!r} does not exist")
    weights = checkpoint.find_weights(folder)
    load = model.warm_start if callable(getattr(model, "warm_start", None)) else model.load_weights
    # A weights file of a compiled model carries its optimizer's state (step count, learning rate, moments):
    # put back this run's fresh optimizer, learning rate included.
    fresh = [np.array(v) for v in model.optimizer.variables] if model.optimizer is not None else []
    checkpoint.load_weights(model, weights, load, os.path.join(folder, "config.json"))
    for variable, value in zip(model.optimizer.variables if fresh else [], fresh):
        variable.assign(value)


def describe_run(config, splits: data_lib.Splits, model, output_dir: str, progress: Progress) -> list[str]:
    """The header a run prints before training: data, model (its own `describe()` where it has one), optimization,
    where it writes, how to stop."""
    shape = "x".join(str(s) for s in config.example_shape)
    start = "starting" if progress.epoch == 0 else f"resuming after epoch {progress.epoch}"
    if progress.epoch == 0 and getattr(config, "init_from", None):
        start = f"starting from the weights of {config.init_from} with a fresh optimizer"
    steps = len(splits.train) // config.batch_size
    what = model.describe() if callable(getattr(model, "describe", None)) else f"{config.model} model"
    optimization = ", ".join(part for part in (
        f"{config.objective} objective" if hasattr(config, "objective") else "", f"batch {config.batch_size}",
        f"Adam {config.learning_rate:g}" + (f" with {config.lr_schedule} decay" if getattr(
            config, "lr_schedule", "constant") != "constant" else ""),
        f"average of the weights {config.ema_momentum:g}" if getattr(config, "ema_momentum", 0.0) else "",
        getattr(config, "precision", "")) if part)
    return [
        f"data:      {config.dataset}, {len(splits.train)} train / {len(splits.validation)} validation / "
        f"{len(splits.test)} test examples of shape {shape}",
        f"model:     {what}, {model.count_params():,} parameters",
        f"training:  {optimization}; {start}, {config.epochs} epochs of {steps} steps",
        f"output:    {output_dir} (config.json, checkpoints/, log.csv, samples/, tensorboard/)",
        f"stop:      Ctrl-C keeps every complete epoch; continue with --resume --output-dir {output_dir}",
    ]


class EpochClock(keras.callbacks.Callback):
    """Adds `epoch_seconds` and `epoch_cpu_seconds` to each epoch's logs: the wall and process CPU time of the
    epoch's training and validation, so that log.csv gives learning curves against CPU time (the recipe study of
    docs/mnist.md). Placed before the loggers; off for a resumed run whose log.csv was written without them, so
    that its columns stay aligned."""

    KEYS = ("epoch_seconds", "epoch_cpu_seconds")

    def __init__(self, log_path: str | None = None):
        super().__init__()
        self.enabled = True
        if log_path is not None and os.path.isfile(log_path) and os.path.getsize(log_path) > 0:
            with open(log_path) as f:
                self.enabled = self.KEYS[0] in f.readline()
        self._wall = self._cpu = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._wall, self._cpu = time.monotonic(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        if self.enabled and logs is not None:
            logs[self.KEYS[0]] = time.monotonic() - self._wall
            logs[self.KEYS[1]] = time.process_time() - self._cpu


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
        with optimizers.ema_weights(self.model):  # the weights evaluation uses (the plain ones without EMA)
            visualize.write_samples(self.model, self.paths.samples, tag=f"epoch{done:04d}",
                                    reference=self.reference, num_samples=self.num_samples, num_chains=self.num_chains)


def train(config: InfusionConfig, output_dir: str, *, data_dir: str | None = None, resume: bool = False,
          overwrite: bool = False, verbose: int | str = 1, callbacks=(), export: bool = True,
          strategy=None) -> keras.callbacks.History:
    """Trains a model as `config` says, writing the run folder that run_folder's docstring lists into `output_dir`.

    Stops after config.epochs, or earlier when the validation bound has not improved for config.patience
    epochs (a model without a monitor keeps its last epoch and refuses a patience). Raises: ValueError /
    FileNotFoundError for bad settings, data or checkpoints, before anything is written; FloatingPointError if the
    loss becomes NaN or infinite (the last good checkpoint stays); TrainingInterrupted after SIGINT or SIGTERM, once
    what is complete is saved.
    strategy: a tf.distribute strategy (distribute.make_strategy) or None. Only its chief writes the folder;
    distribute.WorkerLost when another worker of a cluster is gone (committed epochs are kept).
    """
    if config.patience is not None and protocol.monitor(MODELS.get(config.model)) is None:
        raise ValueError(f"model {config.model!r} keeps its last epoch (no validation metric ranks its epochs), so "
                         f"early stopping has nothing to count: leave --patience unset (got {config.patience})")
    chief = distribute.is_chief(strategy)
    if chief or resume:  # a fresh run's folder is the chief's to create: the others do not look at it
        check_output_dir(output_dir, config, resume=resume, overwrite=overwrite)
    # Bad data, or on --resume data other than the run's own, fail here, before anything is written.
    full_splits, source = load_run_data(config, output_dir if resume else None, data_dir)
    splits = training_splits(config, full_splits)
    paths = RunPaths(output_dir)
    # make_train_dataset drops the last partial batch; it also rejects a set smaller than one batch.
    steps_per_epoch = max(1, len(splits.train) // config.batch_size)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():  # variables on every replica
        resumed = resume_model(paths, config, steps_per_epoch) if resume else None
        if resumed is None:
            model, progress = build_model(config, splits.train), Progress()
            warm_start(model, getattr(config, "init_from", None))  # a source that does not fit fails before any write
    if resume and chief:
        update_output_dir(output_dir, config, source)  # a resumed run may change RESUMABLE_FIELDS
    elif chief:
        create_output_dir(output_dir, config, overwrite=overwrite, data_source=source)
    if resumed is not None:
        model, progress = resumed
        if chief:
            repair_run_folder(paths, model, progress)
    finished = progress.epoch >= config.epochs or (
        config.patience is not None and progress.epochs_without_improvement >= config.patience)
    if finished:
        kept = f"best epoch {progress.best_epoch}" if protocol.monitor(model) else "the last epoch kept"
        print(f"run in {output_dir} already finished: {progress.epoch} epochs (--epochs {config.epochs}), {kept} "
              f"(--patience {config.patience})")
        if export and chief and not os.path.isfile(os.path.join(paths.saved_model, "saved_model.pb")):
            _export_best(model, paths, strategy)  # the run was stopped while exporting
        return keras.callbacks.History()
    train_ds, _ = data_lib.make_train_dataset(splits.train, config.batch_size, seed=config.seed,
                                              dequantize=config.dequantize, initial_epoch=progress.epoch,
                                              epochs=config.epochs)
    val_ds = data_lib.make_eval_dataset(splits.validation, config.batch_size, seed=config.seed + 1,
                                        dequantize=config.dequantize)
    if strategy is not None:  # each worker keeps its replicas' rows of every global batch
        train_ds, val_ds = distribute.shard_by_data(train_ds), distribute.shard_by_data(val_ds)
        model = distribute.prepare_model(model, strategy)
    if verbose and chief:
        print("\n".join(describe_run(config, splits, model, output_dir, progress)), flush=True)
    guard = NonFiniteLossGuard()
    checkpoint = CheckpointCallback(paths, guard, progress, commit=chief,
                                    snapshot_every=getattr(config, "snapshot_every", None))
    patience, stop = PatienceStopping(checkpoint, config.patience), StopOnSignal()
    reference = splits.train[:2000] if len(config.example_shape) == 1 else None
    loggers = [keras.callbacks.CSVLogger(paths.log, append=progress.epoch > 0),
               keras.callbacks.TensorBoard(paths.tensorboard, write_graph=False, profile_batch=0)]
    # Order matters: the epoch is logged and drawn, then committed, then early stopping and signals act.
    timer = [EpochTimer(config.epochs)] if verbose else []
    ema = [optimizers.EMAValidation()] if optimizers.has_ema(model) else []  # validation sees the averaged weights
    clock = EpochClock(paths.log if progress.epoch > 0 else None)
    all_callbacks = [guard, *ema, clock, *loggers, SamplesCallback(paths, config, reference, guard=guard), *callbacks,
                     checkpoint, patience, *timer, stop]
    if not chief:  # the other workers log, draw and commit nothing
        loggers = []
        all_callbacks = [guard, *ema, *callbacks, checkpoint, patience, stop]
    with stop.installed():
        try:
            history = model.fit(train_ds, epochs=config.epochs, initial_epoch=progress.epoch,
                                steps_per_epoch=steps_per_epoch, validation_data=val_ds, callbacks=all_callbacks,
                                verbose=verbose, shuffle=False)
        except distribute.collective_errors() as e:
            if distribute.num_workers(strategy) == 1:
                raise
            for logger in loggers:
                logger.on_train_end()
            raise distribute.WorkerLost(
                f"a worker of the cluster stopped or cannot be reached; the last committed epoch is "
                f"{checkpoint.progress.epoch} in {paths.checkpoints}: restart every worker with --resume --output-dir "
                f"{output_dir} "
                f"({type(e).__name__})") from None
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
        print(f"early stopping after epoch {checkpoint.progress.epoch}: the validation "
              f"{protocol.monitor(model)[0].replace('_', ' ')} has not improved "
              f"since epoch {checkpoint.progress.best_epoch} (--patience {config.patience})")
    if export and chief:
        _export_best(model, paths, strategy)
    return history


def _export_best(model, paths: RunPaths, strategy=None) -> None:
    from infusion_tf.export import export_saved_model

    if strategy is not None:  # a copy built outside the strategy (best weights, else last): one device's SavedModel
        model = checkpoint.load_checkpoint(paths.root, precision=getattr(model.config, "precision", None))
    else:  # best weights, else last (a model without a monitor writes no best): what evaluation reads by default
        kept = next((path for path in (paths.best_weights, paths.last_weights) if os.path.isfile(path)), None)
        if kept is not None:
            model.load_weights(kept)
    export_saved_model(model, paths.saved_model)
