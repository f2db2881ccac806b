"""A run folder: where each file lives, how an epoch is committed, and how a run resumes.

    <output>/config.json                    the frozen InfusionConfig, enough to rebuild the model
    <output>/data_source.json               where the data came from and their fingerprint (data.data_source)
    <output>/checkpoints/last.keras         weights + optimizer + random state + Progress, the commit of each epoch
    <output>/checkpoints/last.weights.h5    weights only, same epoch
    <output>/checkpoints/best.weights.h5    weights of the epoch with the best monitored validation metric (the
                                            lower bound unless the model names another); none for a model that
                                            keeps its last epoch (protocol.monitor None)
    <output>/checkpoints/state.json         a readable copy of the Progress in last.keras
    <output>/log.csv, <output>/tensorboard/ loss, lower bound and validation lower bound per epoch
    <output>/samples/                       PNG grids of samples and of sampling chains every few epochs
    <output>/saved_model/                   SavedModel of the best weights (else the last), written at the end

Every file is written to a temporary name and renamed (files.atomic_write), so each one is always whole. After
the epoch's log row and pictures, last.keras is replaced: that rename commits the epoch (commit_epoch), and a
run killed at any moment resumes from the newest committed epoch. Its epoch is the optimizer's step count
divided by the steps per epoch, both stored in last.keras, so it cannot disagree with the weights it resumes;
the best validation bound travels in the same file. On --resume the files written after a commit are brought
level with it and the log rows of an unfinished epoch are dropped (repair_run_folder).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import time
import zipfile

import keras

from infusion_tf import data as data_lib
from infusion_tf import files, optimizers
from infusion_tf.config import CONFIG_FILENAME, InfusionConfig, load_config, save_config
from infusion_tf.registry import MODELS

__all__ = ["RunPaths", "Progress", "RESUMABLE_FIELDS", "DATA_SOURCE_FILENAME", "check_output_dir", "resume_config",
           "create_output_dir", "update_output_dir", "read_data_source", "load_run_data", "training_splits",
           "load_training_data", "save_checkpoint", "read_progress", "commit_epoch", "resume_model",
           "repair_run_folder"]

# What --resume may change; every other setting is the run's own.
RESUMABLE_FIELDS = ("epochs", "patience", "snapshot_every")
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

    def snapshot(self, epoch: int) -> str:
        """The copy of last.weights.h5 kept after `epoch` (config snapshot_every), for learning curves."""
        return self._join("checkpoints", f"epoch{epoch:04d}.weights.h5")


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a run stands after its last committed epoch; saved inside last.keras with the weights."""

    epoch: int = 0  # complete epochs
    best_val_lower_bound: float = -math.inf  # best monitored validation score so far (protocol.monitor): the lower
    # bound in nats per example; a metric to minimize (the annealed GAN's energy distance) is kept negated
    best_epoch: int = -1  # the (1-based) epoch that reached it; -1: none yet

    @property
    def epochs_without_improvement(self) -> int:
        return self.epoch - max(self.best_epoch, 0)


# ------------------------------------------------------------------------------------------ creating and resuming


def _differences(saved: InfusionConfig, config: InfusionConfig) -> list[str]:
    """Fields outside RESUMABLE_FIELDS in which `config` differs from `saved`."""
    new = config.to_dict()
    return sorted(k for k, v in saved.to_dict().items() if k not in RESUMABLE_FIELDS and new[k] != v)


def _check_resumable(output_dir: str, saved: InfusionConfig, config: InfusionConfig) -> None:
    changed = _differences(saved, config)
    if changed:
        flags = ", ".join("--" + f.replace("_", "-") for f in RESUMABLE_FIELDS)
        raise ValueError(f"--resume continues {output_dir!r} with its saved config.json; only {flags} may change, "
                         f"but these differ: {changed}")


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
        files.write_json(RunPaths(output_dir).data_source, data_source)
    os.makedirs(RunPaths(output_dir).checkpoints, exist_ok=True)


def update_output_dir(output_dir: str, config: InfusionConfig, data_source: dict) -> None:
    """A resumed run's folder: config.json rewritten (RESUMABLE_FIELDS may have changed) and data_source.json
    written when the folder has none (an older run) or the data have moved."""
    save_config(config, output_dir)
    if read_data_source(output_dir) != data_source:
        files.write_json(RunPaths(output_dir).data_source, data_source)
    os.makedirs(RunPaths(output_dir).checkpoints, exist_ok=True)


# ------------------------------------------------------------------------------------------ the run's data


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


def training_splits(config: InfusionConfig, splits: data_lib.Splits) -> data_lib.Splits:
    """What the run trained and validated on: splits with train and validation cut to config.train_examples /
    validation_examples (the first ones); test as it is."""
    train = splits.train if config.train_examples is None else splits.train[:config.train_examples]
    validation = (splits.validation if config.validation_examples is None
                  else splits.validation[:config.validation_examples])
    return dataclasses.replace(splits, train=train, validation=validation)


def load_training_data(config: InfusionConfig, data_dir: str | None = None,
                       run_dir: str | None = None) -> data_lib.Splits:
    """The dataset's splits, cut to config.train_examples / validation_examples; checks the example shape.

    With run_dir, the run's own data (load_run_data): the recorded folder unless data_dir is given.
    """
    return training_splits(config, load_run_data(config, run_dir, data_dir)[0])


# ------------------------------------------------------------------------------------------ checkpoints


def save_checkpoint(model, path: str, progress: Progress) -> None:
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


def commit_epoch(paths: RunPaths, model, progress: Progress, improved: bool) -> None:
    """Commits an epoch: last.keras with `progress` (the commit: training weights and optimizer), then
    last.weights.h5, best.weights.h5 when the validation bound `improved` (both with the moving average of the
    weights when the optimizer keeps one, `--ema-momentum`), and state.json."""
    files.atomic_write(paths.last, lambda tmp: save_checkpoint(model, tmp, progress))
    with optimizers.ema_weights(model):  # the weights files hold what evaluation uses: the moving average, if kept
        files.atomic_write(paths.last_weights, model.save_weights)
        if improved:
            files.atomic_write(paths.best_weights, model.save_weights)
    _write_state(paths, progress)


def resume_model(paths: RunPaths, config: InfusionConfig, steps_per_epoch: int):
    """(model, Progress) from last.keras, or None when the run has no checkpoint yet.

    Raises: ValueError for a file Keras cannot load, a model of another config than config.json, or a step
    count that is not a whole number of epochs.
    """
    if not os.path.isfile(paths.last):
        return None
    model_class = MODELS.get(config.model)  # imports the model's module, whose class Keras must know to load it
    try:
        model = keras.models.load_model(paths.last)
        progress = read_progress(paths.last)
    except Exception as e:  # Keras raises many types for a damaged or foreign file
        detail = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ValueError(f"cannot resume from {paths.last}: {detail}") from None
    if not isinstance(model, model_class) or _differences(model.config, config):
        changed = _differences(model.config, config) if isinstance(model, model_class) else type(model).__name__
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


def repair_run_folder(paths: RunPaths, model, progress: Progress) -> None:
    """Brings the files written after last.keras level with it, after a run was killed between them.

    Drops temporary files and the log rows of unfinished epochs; rewrites last.weights.h5, state.json, and
    best.weights.h5 when the committed epoch is the best one (the kill may have come before it was written).
    """
    for name in os.listdir(paths.checkpoints):
        if name.startswith(files.TEMPORARY_PREFIX):
            os.remove(os.path.join(paths.checkpoints, name))
    files.atomic_write(paths.last_weights, model.save_weights)
    if progress.best_epoch == progress.epoch:
        files.atomic_write(paths.best_weights, model.save_weights)
    _write_state(paths, progress)
    if os.path.isfile(paths.log):
        with open(paths.log, newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) < progress.epoch]  # column 0: epoch
        if kept != rows:
            files.atomic_write(paths.log, lambda tmp: _write_rows(tmp, kept))


def _write_state(paths: RunPaths, progress: Progress) -> None:
    files.write_json(paths.state, {**dataclasses.asdict(progress), "time": time.time()})


def _write_rows(path: str, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)
