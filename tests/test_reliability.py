"""Reliability (issue 6): interruption, determinism, numerical faults and bad input; docs/reliability.md
lists each guarantee beside the test that shows it. (The serving checks are in tests/test_export.py.)

The training runs are real `python train/run.py` subprocesses on the MNIST files shipped with the package:
the first 500 training and 200 validation images, batches of 50, a 1 x 64 MLP with T = 3, so an epoch is
10 steps and a run of a few epochs takes a few seconds after TensorFlow has started. Kill moments come from
a seeded random generator, so a failure can be replayed.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import math
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from infusion_tf import InfusionConfig, InfusionModel, chains, cli, data, evaluate, export, run_folder, training
from infusion_tf import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
SMALL = {"train_examples": 500, "validation_examples": 200, "batch_size": 50, "width": 64, "depth": 1,
         "num_steps": 3, "sampling_steps": 4, "sample_every": 1}
SMALL_FLAGS = [arg for name, value in SMALL.items() for arg in (f"--{name.replace('_', '-')}", str(value))]
STEPS_PER_EPOCH = SMALL["train_examples"] // SMALL["batch_size"]  # 10


def cli_config(**changes) -> InfusionConfig:
    """The config `train/run.py SMALL_FLAGS` trains: the mnist preset (the recipe study's average of the weights,
    precision auto resolved for this machine) with SMALL and `changes`."""
    from infusion_tf.precision import resolve_precision

    return dataclasses.replace(config_lib.PRESETS["mnist"], precision=resolve_precision("auto")[0], **SMALL, **changes)
EPOCHS = 6
QUIET = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


# ------------------------------------------------------------------------------------------------ helpers


def start_train(run: pathlib.Path, *args) -> subprocess.Popen:
    """`python train/run.py SMALL --deterministic ARGS --output-dir RUN --verbose 2`, output into run.out/.err."""
    out, err = (open(f"{run}.{suffix}", "a") for suffix in ("out", "err"))
    with out, err:
        return subprocess.Popen([sys.executable, "train/run.py", *SMALL_FLAGS, "--deterministic", *map(str, args),
                                 "--output-dir", str(run), "--verbose", "2"], cwd=REPO, env=QUIET, stdout=out,
                                stderr=err)


def finish(process: subprocess.Popen, run: pathlib.Path, timeout: float = 300) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a run started by start_train; clears the output files for the next one."""
    status = process.wait(timeout=timeout)
    texts = []
    for suffix in ("out", "err"):
        path = pathlib.Path(f"{run}.{suffix}")
        texts.append(path.read_text())
        path.unlink()
    return status, *texts


def train_to_end(run: pathlib.Path, *args) -> float:
    """Runs a whole training command; returns its wall time in seconds."""
    started = time.monotonic()
    status, out, err = finish(start_train(run, *args), run)
    assert status == 0 and "done:" in out, f"exit {status}\n{out}\n{err[-3000:]}"
    return time.monotonic() - started


def epochs_begun(stdout: str) -> list[int]:
    """The epochs Keras announced ("Epoch 3/4" -> 3) in a run's output."""
    return [int(line.split()[1].split("/")[0]) for line in stdout.splitlines() if line.startswith("Epoch ")]


def h5_arrays(path: pathlib.Path) -> dict[str, np.ndarray]:
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


def checkpoint_arrays(run: pathlib.Path) -> dict[str, np.ndarray]:
    """Every model and optimizer variable stored in the run's last.keras, by path."""
    model = keras.models.load_model(run / "checkpoints" / "last.keras")
    return {v.path: v.numpy() for v in [*model.variables, *model.optimizer.variables]}


def committed_epoch(run: pathlib.Path, epochs: int = EPOCHS) -> int:
    """Checks that the newest checkpoint loads and agrees with itself; returns its epoch (0: none yet).

    last.keras must load, hold the run's own config, a whole number of epochs of optimizer steps, and the
    same epoch in its Progress; config.json must be the run's (or absent if the run never got that far).
    """
    if (run / "config.json").exists():
        assert config_lib.load_config(str(run)) == cli_config(epochs=epochs)
    last = run / "checkpoints" / "last.keras"
    if not last.exists():
        return 0
    model = keras.models.load_model(last)
    assert model.config == cli_config(epochs=epochs)
    epoch, partial = divmod(int(model.optimizer.iterations.numpy()), STEPS_PER_EPOCH)
    assert partial == 0 and epoch >= 1
    assert run_folder.read_progress(str(last)).epoch == epoch
    return epoch


def temporary_files(run: pathlib.Path) -> list[str]:
    folder = run / "checkpoints"
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-")) if folder.is_dir() else []


def saved_epoch(run: pathlib.Path) -> int:
    """The epoch in the run's state.json (written last in an epoch's checkpoint), 0 before the first."""
    try:
        with open(run / "checkpoints" / "state.json") as f:
            return json.load(f)["epoch"]
    except FileNotFoundError:
        return 0


def wait_for_epoch(process: subprocess.Popen, run: pathlib.Path, epoch: int, timeout: float = 300) -> float:
    """Waits until the run has saved `epoch`; returns the time it was seen (time.monotonic)."""
    deadline = time.monotonic() + timeout
    while saved_epoch(run) < epoch:
        assert process.poll() is None and time.monotonic() < deadline, f"epoch {epoch} never saved"
        time.sleep(0.005)
    return time.monotonic()


def signal_during_commit(process: subprocess.Popen, run: pathlib.Path, signum: int = signal.SIGKILL,
                         timeout: float = 300) -> None:
    """Sends `signum` the moment .tmp-last.keras is being written (an epoch's commit) while an earlier
    last.keras exists, so the signal lands inside a checkpoint write."""
    folder, deadline = run / "checkpoints", time.monotonic() + timeout
    while not ((folder / "last.keras").exists() and (folder / ".tmp-last.keras").exists()):
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint write seen"
        time.sleep(0.0002)
    process.send_signal(signum)


def read_log(run: pathlib.Path) -> list[dict[str, str]]:
    """log.csv's rows without the epochs' wall and CPU seconds (training.EpochClock), which no two runs share."""
    with open(run / "log.csv", newline="") as f:
        return [{key: value for key, value in row.items() if not key.endswith("seconds")} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """An uninterrupted deterministic run of EPOCHS epochs; when it saved epoch 2, and how long an epoch took."""
    run = tmp_path_factory.mktemp("reference") / "run"
    started = time.monotonic()
    process = start_train(run, "--epochs", EPOCHS)
    seen = [wait_for_epoch(process, run, epoch) for epoch in range(1, EPOCHS + 1)]
    status, out, err = finish(process, run)
    assert status == 0 and "done:" in out, f"exit {status}\n{out}\n{err[-3000:]}"
    return {"run": run, "second_epoch_saved": seen[1] - started, "epoch": (seen[-1] - seen[0]) / (EPOCHS - 1)}


# ----------------------------------------------------------------------------- 1. interruption, 2. determinism


def test_two_deterministic_runs_give_bit_identical_weights(reference, tmp_path):
    run = tmp_path / "again"
    train_to_end(run, "--epochs", EPOCHS)
    first, second = checkpoint_arrays(reference["run"]), checkpoint_arrays(run)
    assert first.keys() == second.keys() and len(first) > 10
    for name in first:
        np.testing.assert_array_equal(second[name], first[name], err_msg=name)
    assert read_log(run) == read_log(reference["run"])  # every logged float, to the last bit


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted_run(reference, tmp_path):
    """SIGKILL at three moments: any moment up to the second epoch's checkpoint, a moment within an epoch
    after a checkpoint, and inside the write of an epoch's checkpoint; then --resume to the end."""
    rng = random.Random(6)
    run = tmp_path / "killed"
    committed = [0]
    for plan in ("anywhere", "within an epoch", "during a checkpoint write"):
        # A kill before config.json was written leaves no folder, an empty one, or (killed while writing
        # config.json) one to start again with --overwrite.
        resuming = (run / "config.json").exists()
        again = ["--resume"] if resuming else ["--overwrite"] if run.exists() else []
        process = start_train(run, "--epochs", EPOCHS, *again)
        if plan == "anywhere":
            # Up to this run's own second checkpoint: on a loaded machine the reference's timing can be slower than
            # this run's, and a kill after the last epoch would leave nothing to resume (seen in CI).
            kill_at = time.monotonic() + rng.uniform(0.0, reference["second_epoch_saved"])
            while time.monotonic() < kill_at and saved_epoch(run) < 2:
                time.sleep(0.005)
            process.kill()
        elif plan == "within an epoch":
            wait_for_epoch(process, run, committed[-1] + 1)
            time.sleep(rng.uniform(0.0, reference["epoch"]))
            process.kill()
        else:
            signal_during_commit(process, run)
        status, out, _ = finish(process, run)
        assert status == -signal.SIGKILL, f"the run ended with {status} before the kill ({plan})"
        if plan == "during a checkpoint write":
            assert ".tmp-last.keras" in temporary_files(run)  # the half-written file is still there...
        committed.append(committed_epoch(run))  # ...and the newest complete checkpoint loads
        assert committed[-1] >= committed[-2]
        begun = epochs_begun(out)
        if resuming and begun:  # continued from the last complete checkpoint
            assert begun[0] == committed[-2] + 1, (plan, begun, committed)
    assert 1 <= committed[-1] < EPOCHS, committed
    status, out, err = finish(start_train(run, "--epochs", EPOCHS, "--resume"), run)
    assert status == 0, err[-3000:]
    assert epochs_begun(out) == list(range(committed[-1] + 1, EPOCHS + 1))

    # The same number of steps, and bit for bit the weights, optimizer state and log of the uninterrupted run.
    expected, actual = checkpoint_arrays(reference["run"]), checkpoint_arrays(run)
    assert int(actual["adam/iteration"]) == EPOCHS * STEPS_PER_EPOCH
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
    assert read_log(run) == read_log(reference["run"])
    for name in ("best.weights.h5", "last.weights.h5"):
        want = h5_arrays(reference["run"] / "checkpoints" / name)
        got = h5_arrays(run / "checkpoints" / name)
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want), name
    with open(run / "checkpoints" / "state.json") as f, open(reference["run"] / "checkpoints" / "state.json") as g:
        assert {k: v for k, v in json.load(f).items() if k != "time"} == \
            {k: v for k, v in json.load(g).items() if k != "time"}
    assert (run / "config.json").read_text() == (reference["run"] / "config.json").read_text()
    assert temporary_files(run) == [] and (run / "saved_model" / "saved_model.pb").is_file()


@pytest.mark.parametrize("signum, moment", [(signal.SIGTERM, "during a checkpoint write"),
                                           (signal.SIGINT, "within an epoch")])
def test_sigterm_and_sigint_stop_cleanly_after_saving(reference, tmp_path, signum, moment):
    """The process exits promptly with status 128 + signal and a line saying how to resume, nothing is half
    written, the checkpoint being written is completed, and a signal mid-epoch loses only that epoch."""
    run, epochs = tmp_path / "signalled", 100
    process = start_train(run, "--epochs", epochs)
    if moment == "within an epoch":
        wait_for_epoch(process, run, 1)
        time.sleep(random.Random(7).uniform(0.0, reference["epoch"]))
        process.send_signal(signum)
    else:
        signal_during_commit(process, run, signum)
    sent = time.monotonic()
    status, out, err = finish(process, run, timeout=120)
    seconds = time.monotonic() - sent

    assert status == 128 + signum, err[-3000:]
    assert seconds < 30, f"took {seconds:.1f} s to stop"
    epoch = committed_epoch(run, epochs)
    assert err.strip().splitlines()[-1] == (
        f"interrupted by {signal.Signals(signum).name}; the last complete checkpoint is epoch {epoch} in "
        f"{run / 'checkpoints'} (an unfinished epoch is not saved); continue with --resume --output-dir {run}")
    begun = epochs_begun(out)
    if moment == "during a checkpoint write":  # that epoch is completed and committed, no other one begun
        assert epoch == begun[-1] >= 2, begun
    else:
        assert epoch in (begun[-1] - 1, begun[-1]) and epoch >= 1, begun
    assert saved_epoch(run) == epoch
    assert [int(row["epoch"]) for row in read_log(run)] == list(range(epoch))
    assert temporary_files(run) == []
    if signum == signal.SIGTERM:  # and the run continues from there
        status, out, err = finish(start_train(run, "--resume", "--epochs", epoch + 1), run)
        assert status == 0 and epochs_begun(out) == [epoch + 1], err[-3000:]
        assert [int(row["epoch"]) for row in read_log(run)] == list(range(epoch + 1))


# ---------------------------------------------------------------------------------------- 3. numerical faults


class AbsurdLearningRate(keras.callbacks.Callback):
    """From epoch `start` (0-based) on, Adam's learning rate is 1e30; records the checkpoint files just before."""

    def __init__(self, folder: pathlib.Path, start: int = 1):
        super().__init__()
        self.folder, self.start, self.before = folder, start, None

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.start:
            self.before = snapshot(self.folder)
            self.model.optimizer.learning_rate.assign(1e30)


def snapshot(folder: pathlib.Path) -> dict[str, str]:
    """relative path -> md5 of every file under folder."""
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_nonfinite_training_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    config = InfusionConfig(**SMALL, epochs=2)
    absurd = AbsurdLearningRate(run / "checkpoints", start=1)
    with pytest.raises(FloatingPointError) as info:
        training.train(config, str(run), verbose=0, export=False, callbacks=[absurd])
    message = str(info.value)
    assert "NaN or infinite in epoch 2" in message or "NaN or infinite at epoch 2" in message, message
    assert f"the last good checkpoint (epoch 1) is in {run / 'checkpoints'}" in message
    assert "--learning-rate" in message and "\n" not in message
    assert snapshot(run / "checkpoints") == absurd.before  # epoch 1's files, untouched
    # That checkpoint is good: a resumed run (its saved learning rate is the configured one) finishes.
    training.train(config, str(run), resume=True, verbose=0, export=False)
    model = keras.models.load_model(run / "checkpoints" / "last.keras")
    assert int(model.optimizer.iterations.numpy()) == 2 * STEPS_PER_EPOCH
    assert all(np.isfinite(v.numpy()).all() for v in model.variables)
    assert [int(row["epoch"]) for row in read_log(run)] == [0, 1]


def call_train_main(argv) -> tuple[int, str]:
    """cli.train_main in this process; (exit status, stderr). Usage errors exit through SystemExit."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            status = cli.train_main([str(a) for a in argv])
        except SystemExit as e:
            status = e.code
    return status, stderr.getvalue()


def assert_one_error_line(status: int, stderr: str, *words: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), (status, stderr)
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def test_absurd_learning_rate_ends_the_command_with_one_error_line(tmp_path):
    run = tmp_path / "run"
    status, stderr = call_train_main([*SMALL_FLAGS, "--epochs", 2, "--learning-rate", "1e30", "--output-dir", run,
                                      "--verbose", 0])
    assert_one_error_line(status, stderr, "NaN or infinite", "epoch 1", "nothing was saved",
                          "--learning-rate (now 1e+30)")
    assert not (run / "checkpoints" / "last.keras").exists()


@pytest.fixture(scope="module")
def floored_model(mnist_uint8) -> InfusionModel:
    """A small model whose prior is fitted to MNIST: its border pixels have variance 0 in the data."""
    model = InfusionModel(InfusionConfig(width=16, depth=1, num_steps=3))
    model.fit_prior(mnist_uint8)
    assert float(np.min(model.prior_variance.numpy())) == pytest.approx(model.config.prior_variance_floor)
    return model


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=hnp.arrays(np.float32, (2, 28, 28, 1),
                    elements=st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0, width=32))),
       mean_logit=st.sampled_from([-1e4, 0.0, 1e4]), variance_logit=st.sampled_from([-1e4, -30.0, 0.0, 1e4]))
def test_log_densities_are_finite_for_every_input_in_the_unit_interval(floored_model, x, mean_logit,
                                                                       variance_logit):
    """Whatever x in [0, 1] and however saturated the operator (means 0 or 1, variance head at 0), the
    prior's and the operator's variance floors keep every log-density of Eq. 3 finite."""
    operator = floored_model.operator
    for head, logit in ((operator.mean_head, mean_logit), (operator.variance_head, variance_logit)):
        head.kernel.assign(np.zeros(head.kernel.shape, np.float32))
        head.bias.assign(np.full(head.bias.shape, logit, np.float32))
    prior = chains.prior_log_prob(x, floored_model.prior_mean, floored_model.prior_variance)
    terms = floored_model.chain_terms(tf.constant(x), tf.constant([1, 2], tf.int32), use_batch_statistics=False)
    for name, value in (("prior", prior), *zip(terms._fields, terms)):
        if value is not None:
            assert np.isfinite(np.asarray(value)).all(), name
    assert np.isfinite(np.asarray(floored_model(x))).all()


# --------------------------------------------------------------------------------------------- 4. bad input

MNIST_DIR = pathlib.Path(data.__file__).resolve().parent / "datasets" / "mnist"
IMAGE_FILES = ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")


def idx_images(images: np.ndarray) -> bytes:
    """gzip of an IDX image file (magic 2051) holding uint8 images [n, rows, cols]."""
    header = (2051).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in images.shape)
    return gzip.compress(header + images.astype(np.uint8).tobytes(), compresslevel=1)


def _missing_test_file(tmp: pathlib.Path) -> pathlib.Path:
    folder = tmp / "data"
    folder.mkdir()
    shutil.copyfile(MNIST_DIR / IMAGE_FILES[0], folder / IMAGE_FILES[0])
    return folder


def _images_of_14_by_14(tmp: pathlib.Path) -> pathlib.Path:
    folder = tmp / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, count in zip(IMAGE_FILES, (12_000, 100)):
        (folder / name).write_bytes(idx_images(rng.integers(0, 256, (count, 14, 14))))
    return folder


BAD_FLAGS = {
    # name: (flags given tmp_path, words the error line must hold)
    "negative_num_steps": (lambda tmp: ["--num-steps", "-1"], ["num_steps", "-1"]),
    "negative_epochs": (lambda tmp: ["--epochs", "-5"], ["epochs", "-5"]),
    "zero_train_examples": (lambda tmp: ["--train-examples", "0"], ["train_examples"]),
    "negative_alpha0": (lambda tmp: ["--alpha0", "-0.1"], ["alpha", "-0.1", "[0, 1]"]),
    "alpha0_above_one": (lambda tmp: ["--alpha0", "1.5", "--schedule", "constant"], ["alpha", "1.5", "[0, 1]"]),
    "batch_size_zero": (lambda tmp: ["--batch-size", "0"], ["batch_size"]),
    "batch_size_not_a_number": (lambda tmp: ["--batch-size", "ten"], ["--batch-size", "ten"]),
    "learning_rate_nan": (lambda tmp: ["--learning-rate", "nan"], ["learning_rate", "nan"]),
    "eta0_infinite": (lambda tmp: ["--eta0", "inf"], ["eta0", "finite", "inf"]),
    "patience_zero": (lambda tmp: ["--patience", "0"], ["patience"]),
    "unknown_flag": (lambda tmp: ["--no-such-flag", "3"], ["--no-such-flag"]),
    "unknown_operator": (lambda tmp: ["--operator", "rnn"], ["operator", "rnn"]),
    "data_file_missing": (lambda tmp: ["--data-dir", _missing_test_file(tmp)], ["t10k-images-idx3-ubyte"]),
    "images_of_wrong_dimensions": (lambda tmp: ["--data-dir", _images_of_14_by_14(tmp)], ["(14, 14, 1)", "(28, 28, 1)"]),
    "resume_without_a_run": (lambda tmp: ["--resume"], ["does not exist"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_bad_flags_and_data_end_with_one_error_line_and_write_nothing(case, tmp_path):
    flags, words = BAD_FLAGS[case]
    output = tmp_path / "run"
    status, stderr = call_train_main([*SMALL_FLAGS, "--epochs", 1, *flags(tmp_path), "--output-dir", output])
    assert_one_error_line(status, stderr, *words)
    assert not output.exists()


def copy_run(source: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    shutil.copytree(source, target)
    return target


def foreign_model(width: int = 32) -> InfusionModel:
    """A compiled model of another architecture (width 32 instead of 64), optimizer built."""
    model = InfusionModel(InfusionConfig(**{**SMALL, "width": width}, epochs=EPOCHS))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)
    return model


def test_resume_from_a_checkpoint_of_another_architecture_is_refused(reference, tmp_path):
    run = copy_run(reference["run"], tmp_path / "run")
    run_folder.save_checkpoint(foreign_model(), str(run / "checkpoints" / "last.keras"), run_folder.Progress(EPOCHS))
    before = snapshot(run)
    status, stderr = call_train_main(["--resume", "--epochs", EPOCHS + 1, "--output-dir", run])
    assert_one_error_line(status, stderr, "last.keras", "another architecture", "width")
    assert snapshot(run) == before


def test_eval_and_export_of_a_checkpoint_of_another_architecture_are_refused(reference, tmp_path):
    run = copy_run(reference["run"], tmp_path / "run")
    foreign_model().save_weights(str(run / "checkpoints" / "best.weights.h5"))
    before = snapshot(run)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = evaluate.main(["--checkpoint", str(run), "--num-examples", "10", "--repeats", "1"])
    assert_one_error_line(status, stderr.getvalue(), "best.weights.h5", "do not match the architecture", "width=64")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exit_info:
        export.main(["--checkpoint", str(run), "--output", str(tmp_path / "exported")])
    assert_one_error_line(exit_info.value.code, stderr.getvalue(), "do not match the architecture", "width=64")
    assert snapshot(run) == before and not (tmp_path / "exported").exists()
    assert not list(run.glob("results_*.json"))


def test_a_folder_that_holds_another_run_is_refused_without_resume_or_overwrite(reference, tmp_path):
    run = copy_run(reference["run"], tmp_path / "run")
    before = snapshot(run)
    status, stderr = call_train_main([*SMALL_FLAGS, "--epochs", 1, "--width", 32, "--output-dir", run])
    assert_one_error_line(status, stderr, "already holds files", "--resume", "--overwrite")
    status, stderr = call_train_main(["--resume", "--width", 32, "--output-dir", run])  # another config
    assert_one_error_line(status, stderr, "only --epochs, --patience, --snapshot-every may change", "width")
    assert snapshot(run) == before


def _idx_header(magic: int, dims: list[int]) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)


@settings(max_examples=300, deadline=None)
@given(magic=st.sampled_from([2049, 2051, 2050, 2052, 0, 2**32 - 1]),
       dims=st.lists(st.integers(0, 12), max_size=4), extra=st.integers(-3, 3), compress=st.booleans(),
       cut=st.one_of(st.none(), st.integers(0, 80)), flip=st.one_of(st.none(), st.integers(0, 10**6)))
def test_read_idx_fuzz_returns_the_declared_array_or_a_value_error(tmp_path_factory, magic, dims, extra,
                                                                   compress, cut, flip):
    """Headers that do or do not match their payload, gzip or raw, truncated or with a flipped byte: read_idx
    returns exactly the array the header declares, or raises a ValueError naming the file."""
    payload = bytes(np.random.default_rng(len(dims)).integers(0, 256, max(0, math.prod(dims) + extra), np.uint8))
    content = _idx_header(magic, dims) + payload
    if compress:
        content = gzip.compress(content, compresslevel=1)
    if cut is not None:
        content = content[:cut]
    if flip is not None and content:
        i = flip % len(content)
        content = content[:i] + bytes([content[i] ^ 0xFF]) + content[i + 1:]
    path = tmp_path_factory.mktemp("idx") / "file.gz"
    path.write_bytes(content)
    try:
        array = data.read_idx(str(path))
    except ValueError as e:
        assert str(path) in str(e)
        return
    raw = gzip.decompress(content) if content[:2] == b"\x1f\x8b" else content
    declared = tuple(int.from_bytes(raw[i:i + 4], "big") for i in range(4, 4 + 4 * raw[3], 4))
    assert int.from_bytes(raw[:4], "big") in (2049, 2051)
    assert array.dtype == np.uint8 and array.shape == declared
    assert array.tobytes() == raw[4 + 4 * raw[3]:]


@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=300), compress=st.booleans())
def test_read_idx_fuzz_random_bytes(tmp_path_factory, blob, compress):
    path = tmp_path_factory.mktemp("idx") / "blob"
    path.write_bytes(gzip.compress(blob) if compress else blob)
    try:
        array = data.read_idx(str(path))
    except ValueError as e:
        assert str(path) in str(e)
    else:
        assert array.dtype == np.uint8 and array.size >= 1


_FIELDS = {f.name: f for f in dataclasses.fields(InfusionConfig)}
_FLAG_FIELDS = sorted(name for name in _FIELDS if name not in ("dataset", "example_shape"))
_TEXT = st.one_of(st.integers(-10**4, 10**4).map(str), st.floats(allow_nan=True).map(repr),
                  st.sampled_from(["", "nan", "inf", "-inf", "1e309", "0x10", "ten", "mlp", "conv", "constant",
                                   "lower_bound", "isotropic", "mixed_bfloat16", "None"]),
                  st.text(max_size=6))


@settings(max_examples=300, deadline=None)
@given(values=st.dictionaries(st.sampled_from(_FLAG_FIELDS), _TEXT, max_size=6))
def test_flag_parsing_fuzz_gives_a_valid_config_or_one_error_line(values):
    """Any flag values: a config whose every setting is finite and in range, or exit 2 with one line."""
    argv = []
    for name, text in values.items():
        flag = "--" + name.replace("_", "-")
        if _FIELDS[name].type in ("bool", bool):
            argv.append(flag if text.startswith("1") else "--no-" + flag[2:])
        else:
            argv.append(f"{flag}={text}")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            args = cli.train_parser().parse_args(argv)
        except SystemExit as e:
            assert_one_error_line(e.code, stderr.getvalue())
            return
    args.dataset = "mnist"
    try:
        config = cli.config_from_flags(args)
    except ValueError as e:
        assert "\n" not in str(e)
        return
    for name, value in config.to_dict().items():
        if isinstance(value, float):
            assert math.isfinite(value), (name, value)
    assert InfusionConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


_JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                                      st.floats(allow_nan=True), st.text(max_size=5)),
                            lambda inner: st.lists(inner, max_size=3), max_leaves=4)


@settings(max_examples=300, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(sorted(_FIELDS) + ["no_such_field"]), _JSON_VALUES, max_size=4))
def test_config_json_fuzz_loads_or_raises_a_value_error(tmp_path_factory, changes):
    """A config.json with fields of any JSON type or value loads as a valid config, or fails with a
    ValueError (never a TypeError from deep inside), as a run folder's config is read by --resume and eval."""
    folder = tmp_path_factory.mktemp("config")
    (folder / "config.json").write_text(json.dumps({**InfusionConfig().to_dict(), **changes}))
    try:
        config = config_lib.load_config(str(folder))
    except ValueError:
        return
    assert isinstance(config, InfusionConfig)


# ---------------------------------------------------------------------------------------------- early stopping


class ScriptedBound(keras.callbacks.Callback):
    """Replaces epoch e's validation lower bound by bounds[e] before the checkpoint callback reads it (user
    callbacks come before it), and records the weights of each epoch."""

    def __init__(self, bounds):
        super().__init__()
        self.bounds, self.weights = bounds, {}

    def on_epoch_end(self, epoch, logs=None):
        logs["val_lower_bound"] = self.bounds[epoch]
        self.weights[epoch + 1] = [np.array(w) for w in self.model.get_weights()]


def expected_stop(bounds: list[float], patience: int, epochs: int) -> tuple[int, int]:
    """(epochs trained, best epoch) of early stopping, by a plain loop: stop once `patience` epochs have
    passed without a strictly better bound."""
    best, best_epoch = -math.inf, 0
    for epoch, bound in enumerate(bounds[:epochs], start=1):
        if bound > best:
            best, best_epoch = bound, epoch
        if epoch - best_epoch >= patience:
            return epoch, best_epoch
    return min(epochs, len(bounds)), best_epoch


BOUNDS = [-10.0, -5.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0]  # best at epoch 2, then two epochs without a better one


def test_early_stopping_stops_after_patience_epochs_and_keeps_the_best_weights(tmp_path):
    run, scripted = tmp_path / "run", ScriptedBound(BOUNDS)
    config = InfusionConfig(**SMALL, epochs=len(BOUNDS), patience=2)
    training.train(config, str(run), verbose=0, export=False, callbacks=[scripted])
    stopped, best = expected_stop(BOUNDS, 2, len(BOUNDS))
    assert (stopped, best) == (4, 2)
    progress = run_folder.read_progress(str(run / "checkpoints" / "last.keras"))
    assert (progress.epoch, progress.best_epoch, progress.best_val_lower_bound) == (stopped, best, BOUNDS[best - 1])
    assert sorted(scripted.weights) == list(range(1, stopped + 1))  # no epoch after the stop
    model = InfusionModel(config)
    model.load_weights(str(run / "checkpoints" / "best.weights.h5"))
    for got, want in zip(model.get_weights(), scripted.weights[best]):
        np.testing.assert_array_equal(got, want)


def test_early_stopping_counts_across_resume(tmp_path):
    """Stopped by --epochs at 3, resumed with more epochs: stops at epoch 4 as the uninterrupted run does;
    resumed again, it is finished and trains nothing."""
    run = tmp_path / "run"
    config = InfusionConfig(**SMALL, epochs=3, patience=2)
    training.train(config, str(run), verbose=0, export=False, callbacks=[ScriptedBound(BOUNDS)])
    assert run_folder.read_progress(str(run / "checkpoints" / "last.keras")).epoch == 3
    more = run_folder.resume_config(str(run), {"epochs": len(BOUNDS)})  # --resume may change epochs and patience
    training.train(more, str(run), resume=True, verbose=0, export=False, callbacks=[ScriptedBound(BOUNDS)])
    progress = run_folder.read_progress(str(run / "checkpoints" / "last.keras"))
    assert (progress.epoch, progress.best_epoch) == expected_stop(BOUNDS, 2, len(BOUNDS)) == (4, 2)
    before = snapshot(run / "checkpoints")
    again = ScriptedBound(BOUNDS)
    history = training.train(more, str(run), resume=True, verbose=0, export=False, callbacks=[again])
    assert not again.weights and not history.history
    assert {k: v for k, v in snapshot(run / "checkpoints").items() if k != "state.json"} == \
        {k: v for k, v in before.items() if k != "state.json"}


@pytest.mark.parametrize("command, argv, words", [
    ("eval", ["--k", "abc"], ["--k", "abc"]),
    ("eval", ["--k", "0"], ["k (chains per example) must be >= 1"]),
    ("eval", ["--estimator", "ais"], ["unknown estimator 'ais'"]),
    ("export", ["--max-samples", "0"], ["max_samples must be an integer >= 1"]),
    ("export", ["--max-steps", "many"], ["--max-steps", "many"]),
])
def test_eval_and_export_flags_out_of_range_give_one_error_line(reference, tmp_path, command, argv, words):
    run = copy_run(reference["run"], tmp_path / "run")
    before = snapshot(run)
    main = evaluate.main if command == "eval" else export.main
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            status = main(["--checkpoint", str(run), *argv, "--output", str(tmp_path / "out")])
        except SystemExit as e:
            status = e.code
    assert_one_error_line(status, stderr.getvalue(), *words)
    assert snapshot(run) == before and not (tmp_path / "out").exists()
