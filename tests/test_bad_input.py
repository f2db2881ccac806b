"""Every command answers bad input with one `error:` line on stderr, exit status 2, no traceback, and leaves
nothing half-written: train, eval, figures, report, export, export_pretrained and quality, each run as a user
runs it, in a fresh process. Every process runs offline (tests/offline/sitecustomize.py makes each network
connection fail at once), so the cases that need data from the internet fail the same way on any machine.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import numpy as np
import pytest

from _helpers import assert_usage_error, run_command, snapshot
from infusion_tf import InfusionConfig, InfusionModel, training
from infusion_tf.config import PRESETS, save_config

TINY = dict(width=32, depth=1, num_steps=3, sampling_steps=4, batch_size=50, train_examples=300,
            validation_examples=100, epochs=1)
FAST = 60  # seconds: a command that needs the internet offline fails within this, instead of waiting minutes
SEED_COLLIDING_BEFORE = 2**29  # (seed * 1000 + r) * 100003 + i wrapped in an int32 gave seed 0's samples


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory) -> pathlib.Path:
    """A tiny MNIST run folder (one epoch on 300 images)."""
    folder = tmp_path_factory.mktemp("bad_input") / "mnist"
    training.train(InfusionConfig(**TINY), str(folder), verbose=0, export=False)
    return folder


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory) -> pathlib.Path:
    """A tiny untrained CIFAR-10 checkpoint (conv operator): its data come from TFDS, which is offline here."""
    folder = tmp_path_factory.mktemp("bad_input") / "cifar10"
    config = dataclasses.replace(PRESETS["cifar10"], width=16, num_steps=2, sampling_steps=2)
    folder.mkdir()
    save_config(config, str(folder))
    InfusionModel(config).save_weights(str(folder / "best.weights.h5"))
    return folder


def assert_fails_fast(started: float, result, *words: str) -> None:
    assert_usage_error(result, *words)
    assert time.monotonic() - started < FAST, f"took {time.monotonic() - started:.0f} s"


# --- (a, d) data that must come from the internet, offline: a line that says so and names --data-dir


@pytest.mark.parametrize("dataset", ["cifar10", "fashion_mnist"])
def test_train_offline_without_the_data_fails_fast_naming_data_dir(dataset, tmp_path):
    started = time.monotonic()
    result = run_command("train/run.py", "--dataset", dataset, "--epochs", 1, "--output-dir", tmp_path / "run",
                         offline=True)
    assert_fails_fast(started, result, repr(dataset), "could not be fetched", "--data-dir", "TFDS data folder")
    assert not (tmp_path / "run").exists()


def test_eval_offline_without_the_data_fails_fast_and_writes_nothing(cifar_run, tmp_path):
    before, started = snapshot(cifar_run), time.monotonic()
    result = run_command("eval/run.py", "--checkpoint", cifar_run, "--batch-norm", "moving",
                         "--output", tmp_path / "new" / "results.json", offline=True)
    assert_fails_fast(started, result, "'cifar10'", "could not be fetched", "--data-dir")
    assert not (tmp_path / "new").exists() and snapshot(cifar_run) == before


# --- (c) a toy density that does not exist is not silently another one


def test_misspelled_toy_dataset_is_refused(tmp_path):
    result = run_command("train/run.py", "--dataset", "bananas", "--epochs", 1, "--output-dir", tmp_path / "run",
                         offline=True)
    assert_usage_error(result, "bananas", "banana")  # names the dataset and the toy datasets there are
    assert not (tmp_path / "run").exists()


# --- (e) sample quality without a classifier: before any data or batch-norm work, naming the command


def test_sample_quality_without_a_classifier_names_the_command_before_any_work(cifar_run, tmp_path):
    before, started = snapshot(cifar_run), time.monotonic()
    result = run_command("eval/run.py", "--checkpoint", cifar_run, "--estimator", "sample_quality",
                         "--output", tmp_path / "new" / "results.json", cwd=tmp_path, offline=True)
    # Offline, the data would fail with another line: this one comes first.
    assert_fails_fast(started, result, "python -m infusion_tf.quality --dataset", "pretrained", "classifiers")
    assert not (tmp_path / "new").exists() and snapshot(cifar_run) == before


def test_report_checks_the_classifier_before_the_first_row(cifar_run, tmp_path):
    result = run_command("eval/report.py", "--checkpoint", cifar_run, "--only", "sample_quality",
                         "--output-dir", tmp_path / "report", offline=True)
    assert_usage_error(result, "python -m infusion_tf.quality")
    assert not (tmp_path / "report").exists()


# --- (b) large seeds: distinct and reproducible samples


def _nearest_neighbour_figure(run: pathlib.Path, folder: pathlib.Path, seed: int) -> bytes:
    """The sample_quality figure of 20 samples drawn with --seed, run from a folder outside the repository."""
    folder.mkdir()
    result = run_command("eval/run.py", "--checkpoint", run, "--estimator", "sample_quality", "--seed", seed,
                         "--num-samples", 20, "--repeats", 1, "--num-examples", 20, "--validation-examples", 20,
                         "--batch-norm", "moving", "--output", folder / "results.json", cwd=folder, offline=True)
    assert result.returncode == 0, result.stderr
    return (folder / "nearest_neighbours.png").read_bytes()


def test_sample_quality_seeds_beyond_int32_arithmetic_draw_other_samples(mnist_run, tmp_path):
    # Also finds the classifier from outside the repository (cwd is tmp_path).
    first = _nearest_neighbour_figure(mnist_run, tmp_path / "a", 0)
    other = _nearest_neighbour_figure(mnist_run, tmp_path / "b", SEED_COLLIDING_BEFORE)
    assert first != other


# --- (f) --depth with the conv operator


def test_depth_with_the_conv_operator_is_refused(tmp_path):
    result = run_command("train/run.py", "--dataset", "cifar10", "--depth", 3, "--output-dir", tmp_path / "run",
                         offline=True)
    assert_usage_error(result, "depth=3", "conv")
    assert not (tmp_path / "run").exists()


# --- (g) other bad input of every command


def _under_a_file(tmp_path: pathlib.Path) -> pathlib.Path:
    (tmp_path / "a_file").write_text("not a folder\n")
    return tmp_path / "a_file" / "out"


def _damaged_config(run: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    folder = tmp_path / "damaged"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.json").write_text('{"num_steps": 3,')  # cut short
    (folder / "checkpoints" / "best.weights.h5").write_bytes((run / "checkpoints" / "best.weights.h5").read_bytes())
    return folder


def _truncated_weights(run: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    folder = tmp_path / "truncated"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.json").write_bytes((run / "config.json").read_bytes())
    weights = (run / "checkpoints" / "best.weights.h5").read_bytes()
    (folder / "checkpoints" / "best.weights.h5").write_bytes(weights[:len(weights) // 2])
    return folder


BAD_INPUTS = {
    # name: (arguments given (run folder, tmp_path), words of the error line)
    "train_seed_out_of_range": (lambda run, tmp: ["train/run.py", "--seed", 2**31, "--output-dir", tmp / "x"],
                                ["seed", str(2**31)]),
    "train_output_under_a_file": (lambda run, tmp: ["train/run.py", "--epochs", 1, "--train-examples", 100,
                                                    "--output-dir", _under_a_file(tmp)], ["a_file"]),
    "eval_output_under_a_file": (lambda run, tmp: ["eval/run.py", "--checkpoint", run,
                                                   "--output", _under_a_file(tmp) / "r.json"], ["a_file"]),
    "eval_seed_out_of_range": (lambda run, tmp: ["eval/run.py", "--checkpoint", run, "--seed", 2**31],
                               ["seed", str(2**31)]),
    "eval_damaged_config": (lambda run, tmp: ["eval/run.py", "--checkpoint", _damaged_config(run, tmp)],
                            ["config.json", "not valid JSON"]),
    "eval_truncated_weights": (lambda run, tmp: ["eval/run.py", "--checkpoint", _truncated_weights(run, tmp)],
                               ["best.weights.h5"]),
    "figures_output_under_a_file": (lambda run, tmp: ["eval/figures.py", "--checkpoint", run,
                                                      "--output-dir", _under_a_file(tmp)], ["a_file"]),
    "figures_unknown_flag": (lambda run, tmp: ["eval/figures.py", "--checkpoint", run, "--no-such-flag"],
                             ["--no-such-flag"]),
    "report_missing_checkpoint": (lambda run, tmp: ["eval/report.py", "--checkpoint", tmp / "nothing",
                                                    "--output-dir", tmp / "report"], ["nothing"]),
    "export_output_under_a_file": (lambda run, tmp: ["-m", "infusion_tf.export", "--checkpoint", run,
                                                     "--output", _under_a_file(tmp)], ["a_file"]),
    "export_pretrained_bad_seed": (lambda run, tmp: ["eval/export_pretrained.py", "--checkpoint", run, "--seed", -1,
                                                     "--output", tmp / "x"], ["seed", "-1"]),
    "quality_zero_epochs": (lambda run, tmp: ["-m", "infusion_tf.quality", "--epochs", 0,
                                              "--output-dir", tmp / "x"], ["epochs", "0"]),
    "quality_output_under_a_file": (lambda run, tmp: ["-m", "infusion_tf.quality", "--epochs", 1,
                                                      "--output-dir", _under_a_file(tmp)], ["a_file"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_of_every_command_is_one_line_and_writes_nothing(case, mnist_run, tmp_path):
    arguments, words = BAD_INPUTS[case]
    before = snapshot(mnist_run)
    args = arguments(mnist_run, tmp_path)
    listed = sorted(p.name for p in tmp_path.iterdir())
    assert_usage_error(run_command(*args, offline=True), *words)
    assert snapshot(mnist_run) == before  # no cache, results or export beside the run
    assert sorted(p.name for p in tmp_path.iterdir()) == listed  # no output folder created
    if (tmp_path / "a_file").exists():
        assert (tmp_path / "a_file").read_text() == "not a folder\n"


def test_sample_seeds_are_reproducible_and_distinct(mnist_run):
    """In-process companion of the seed test above: the same seed draws the same samples, other seeds
    (small, >= 22, and 2^29 apart, all of which wrapped before) draw others."""
    from infusion_tf import evaluate
    from infusion_tf.checkpoint import load_checkpoint

    model = load_checkpoint(str(mnist_run))

    def draw(seed: int, repeat: int = 0) -> np.ndarray:
        settings = evaluate.EvalSettings(checkpoint=str(mnist_run), seed=seed, num_samples=1500)
        return evaluate._model_samples(model, settings, repeat)  # two batches: 1000 + 500

    seeds = [0, 22, 30, SEED_COLLIDING_BEFORE, 2**31 - 1]
    draws = {seed: draw(seed) for seed in seeds}
    np.testing.assert_array_equal(draw(30), draws[30])
    assert not np.array_equal(draw(30, repeat=1), draws[30])
    for i, a in enumerate(seeds):
        assert not np.array_equal(draws[a][:500], draws[a][1000:])  # the two batches of one draw differ
        for b in seeds[i + 1:]:
            assert not np.array_equal(draws[a], draws[b]), (a, b)
