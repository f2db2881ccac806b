"""A training run: its output folder, checkpoints, logs, pictures, resumption and final SavedModel.

    <output>/config.json                    the frozen InfusionConfig, enough to rebuild the model
    <output>/checkpoints/last.keras         weights + optimizer + random state, written atomically each epoch
    <output>/checkpoints/last.weights.h5    weights only, same epoch
    <output>/checkpoints/best.weights.h5    weights of the epoch with the best validation lower bound
    <output>/checkpoints/state.json         epoch, best validation bound and its epoch
    <output>/log.csv, <output>/tensorboard/ loss, lower bound and validation lower bound per epoch
    <output>/samples/                       PNG grids of samples and of sampling chains every few epochs
    <output>/saved_model/                   SavedModel of the best weights, written at the end

The epoch a resumed run starts from is the optimizer's step count divided by the steps per epoch, both
stored in last.keras, so it cannot disagree with the weights it resumes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import time

import keras
import numpy as np

from infusion_tf import data as data_lib
from infusion_tf import visualize
from infusion_tf.config import CONFIG_FILENAME, InfusionConfig, load_config, save_config
from infusion_tf.model import InfusionModel

__all__ = ["RunPaths", "check_output_dir", "create_output_dir", "load_training_data", "build_model", "CheckpointCallback",
           "NonFiniteLossGuard", "SamplesCallback", "train"]


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Where a run in folder `root` writes each of its files."""

    root: str

    def _join(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    config = property(lambda self: self._join(CONFIG_FILENAME))
    checkpoints = property(lambda self: self._join("checkpoints"))
    last = property(lambda self: self._join("checkpoints", "last.keras"))
    last_weights = property(lambda self: self._join("checkpoints", "last.weights.h5"))
    best_weights = property(lambda self: self._join("checkpoints", "best.weights.h5"))
    state = property(lambda self: self._join("checkpoints", "state.json"))
    log = property(lambda self: self._join("log.csv"))
    tensorboard = property(lambda self: self._join("tensorboard"))
    samples = property(lambda self: self._join("samples"))
    saved_model = property(lambda self: self._join("saved_model"))


def check_output_dir(output_dir: str, config: InfusionConfig, *, resume: bool, overwrite: bool) -> None:
    """Refuses a path that is not a folder, a folder that holds another run (unless `overwrite`) and, with
    `resume`, a config that is not the run's own (only `epochs` may change). Writes nothing."""
    if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output folder {output_dir!r} exists and is not a folder")
    if resume:
        if not os.path.isdir(output_dir):
            raise FileNotFoundError(f"--resume: run folder {output_dir!r} does not exist")
        saved = load_config(output_dir)
        if dataclasses.replace(saved, epochs=config.epochs) != config:
            changed = sorted(k for k, v in saved.to_dict().items() if k != "epochs" and config.to_dict()[k] != v)
            raise ValueError(f"--resume continues {output_dir!r} with its saved config.json; only --epochs may "
                             f"change, but these differ: {changed}")
    elif os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise ValueError(f"output folder {output_dir!r} already holds files; pass --resume to continue "
                         f"that run or --overwrite to replace it")


def create_output_dir(output_dir: str, config: InfusionConfig, *, overwrite: bool) -> None:
    """Creates a new run folder (deleting an old one if `overwrite`) and writes config.json into it."""
    if overwrite and os.path.isdir(output_dir):
        shutil.rmtree(output_dir)
    os.makedirs(RunPaths(output_dir).checkpoints, exist_ok=True)
    save_config(config, output_dir)


def load_training_data(config: InfusionConfig, data_dir: str | None = None) -> data_lib.Splits:
    """The dataset's splits, cut to config.train_examples / validation_examples; checks the example shape."""
    splits = data_lib.load_splits(config.dataset, data_dir=data_dir, seed=config.seed)
    if tuple(splits.example_shape) != tuple(config.example_shape):
        raise ValueError(f"dataset {config.dataset!r} has examples of shape {splits.example_shape}, but the "
                         f"config says example_shape={config.example_shape}")
    train = splits.train if config.train_examples is None else splits.train[:config.train_examples]
    validation = (splits.validation if config.validation_examples is None
                  else splits.validation[:config.validation_examples])
    return dataclasses.replace(splits, train=train, validation=validation)


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
    """Stops training at the first batch whose loss is NaN or infinite; the last checkpoint stays as it was."""

    def __init__(self):
        super().__init__()
        self.tripped_at: tuple[int, int] | None = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if logs and not math.isfinite(float(logs.get("loss", 0.0))):
            self.tripped_at = (self._epoch, batch)
            self.model.stop_training = True


class CheckpointCallback(keras.callbacks.Callback):
    """Each epoch: last.keras and last.weights.h5; best.weights.h5 when the validation bound improves."""

    def __init__(self, paths: RunPaths, guard: NonFiniteLossGuard, best: float = -math.inf, best_epoch: int = -1):
        super().__init__()
        self.paths, self.guard = paths, guard
        self.best, self.best_epoch = best, best_epoch

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.guard.tripped_at is not None or not math.isfinite(float(logs.get("loss", math.nan))):
            return
        _atomic(self.model.save, self.paths.last)
        _atomic(self.model.save_weights, self.paths.last_weights)
        bound = float(logs.get("val_lower_bound", logs.get("lower_bound", -math.inf)))
        if math.isfinite(bound) and bound > self.best:
            self.best, self.best_epoch = bound, epoch + 1
            _atomic(self.model.save_weights, self.paths.best_weights)
        _write_json(self.paths.state, {"epoch": epoch + 1, "best_val_lower_bound": self.best,
                                       "best_epoch": self.best_epoch, "time": time.time()})


class SamplesCallback(keras.callbacks.Callback):
    """Every `every` epochs and at the last one: a grid of samples and a grid of sampling chains (PNG)."""

    def __init__(self, paths: RunPaths, config: InfusionConfig, reference: np.ndarray | None = None,
                 num_samples: int = 100, num_chains: int = 10):
        super().__init__()
        self.paths, self.config, self.reference = paths, config, reference
        self.num_samples, self.num_chains = num_samples, num_chains

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if done % self.config.sample_every and done != self.config.epochs:
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
    """(model, initial_epoch, best, best_epoch) from last.keras, or None when the run has no checkpoint yet."""
    if not os.path.isfile(paths.last):
        return None
    try:
        model = keras.models.load_model(paths.last)
    except Exception as e:  # Keras raises many types for a damaged or foreign file
        raise ValueError(f"cannot resume from {paths.last}: {e}") from None
    if dataclasses.replace(model.config, epochs=config.epochs) != config:
        raise ValueError(f"{paths.last} was trained with another config than {paths.config}")
    initial_epoch = int(model.optimizer.iterations.numpy()) // steps_per_epoch
    state = {}
    if os.path.isfile(paths.state):
        with open(paths.state) as f:
            state = json.load(f)
    return model, initial_epoch, float(state.get("best_val_lower_bound", -math.inf)), int(state.get("best_epoch", -1))


def train(config: InfusionConfig, output_dir: str, *, data_dir: str | None = None, resume: bool = False,
          overwrite: bool = False, verbose: int | str = 1, callbacks=(), export: bool = True) -> keras.callbacks.History:
    """Trains a model as `config` says, writing everything listed in this module's docstring into `output_dir`.

    Raises: ValueError / FileNotFoundError for bad settings or data (before anything is written where
    possible); FloatingPointError if the loss becomes NaN or infinite (the last good checkpoint stays).
    """
    check_output_dir(output_dir, config, resume=resume, overwrite=overwrite)
    splits = load_training_data(config, data_dir)  # bad data fail here, before the folder is created
    if not resume:
        create_output_dir(output_dir, config, overwrite=overwrite)
    else:
        save_config(config, output_dir)  # a resumed run may extend --epochs
    paths = RunPaths(output_dir)
    # make_train_dataset drops the last partial batch; it also rejects a set smaller than one batch.
    steps_per_epoch = max(1, len(splits.train) // config.batch_size)
    resumed = _resume_model(paths, config, steps_per_epoch) if resume else None
    if resumed is None:
        model, initial_epoch, best, best_epoch = build_model(config, splits.train), 0, -math.inf, -1
    else:
        model, initial_epoch, best, best_epoch = resumed
    if initial_epoch >= config.epochs:
        print(f"run in {output_dir} already trained {initial_epoch} epochs (--epochs {config.epochs})")
        return keras.callbacks.History()
    train_ds, _ = data_lib.make_train_dataset(splits.train, config.batch_size, seed=config.seed,
                                              dequantize=config.dequantize, initial_epoch=initial_epoch,
                                              epochs=config.epochs)
    val_ds = data_lib.make_eval_dataset(splits.validation, config.batch_size, seed=config.seed + 1,
                                        dequantize=config.dequantize)
    guard = NonFiniteLossGuard()
    reference = splits.train[:2000] if len(config.example_shape) == 1 else None
    all_callbacks = [
        guard,
        CheckpointCallback(paths, guard, best, best_epoch),
        keras.callbacks.CSVLogger(paths.log, append=initial_epoch > 0),
        keras.callbacks.TensorBoard(paths.tensorboard, write_graph=False, profile_batch=0),
        SamplesCallback(paths, config, reference),
        *callbacks,
    ]
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        history = model.fit(train_ds, epochs=config.epochs, initial_epoch=initial_epoch,
                            steps_per_epoch=steps_per_epoch, validation_data=val_ds, callbacks=all_callbacks,
                            verbose=verbose, shuffle=False)
    except KeyboardInterrupt:
        epoch = _saved_epoch(paths)
        print(f"\ninterrupted; the last complete checkpoint is epoch {epoch} in {paths.checkpoints}; "
              f"continue with --resume --output-dir {output_dir}", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if guard.tripped_at is not None:
        epoch, batch = guard.tripped_at
        raise FloatingPointError(
            f"the loss became NaN or infinite at epoch {epoch + 1}, batch {batch + 1}; training stopped. The last "
            f"good checkpoint (epoch {_saved_epoch(paths)}) is in {paths.checkpoints}; try a smaller "
            f"--learning-rate (now {config.learning_rate})")
    if export:
        _export_best(model, paths)
    return history


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _saved_epoch(paths: RunPaths) -> int:
    if not os.path.isfile(paths.state):
        return 0
    with open(paths.state) as f:
        return int(json.load(f).get("epoch", 0))


def _export_best(model: InfusionModel, paths: RunPaths) -> None:
    from infusion_tf.export import export_saved_model

    if os.path.isfile(paths.best_weights):
        model.load_weights(paths.best_weights)
    export_saved_model(model, paths.saved_model)
