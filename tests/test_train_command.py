"""End-to-end tests of the training command `python train/run.py`, run as a subprocess on real MNIST slices.

Each run trains a tiny model (width 32, depth 1, T = 3) on the first 300 training and 100 validation images
of the MNIST files bundled with the package, so a run takes a few seconds; the run folder it writes is then
checked file by file, and its SavedModel is called in a fresh process that cannot import infusion_tf.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from _helpers import assert_usage_error, snapshot  # tests/ is on sys.path under pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST_DIR = REPO / "infusion_tf" / "datasets" / "mnist"  # shipped with the package: bad copies are made from it
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

TRAIN_EXAMPLES, BATCH_SIZE, SAMPLING_STEPS = 300, 50, 4
STEPS_PER_EPOCH = TRAIN_EXAMPLES // BATCH_SIZE  # 300 = 6 * 50: no partial batch
TINY = {"width": 32, "depth": 1, "num_steps": 3, "sampling_steps": SAMPLING_STEPS, "batch_size": BATCH_SIZE,
        "train_examples": TRAIN_EXAMPLES, "validation_examples": 100, "sample_every": 1}
TINY_FLAGS = [arg for name, value in TINY.items() for arg in (f"--{name.replace('_', '-')}", str(value))]
LOG_COLUMNS = ("loss", "lower_bound", "val_loss", "val_lower_bound", "epoch_seconds", "epoch_cpu_seconds")


def run_train(*args) -> subprocess.CompletedProcess:
    """`python train/run.py ARGS --verbose 0` from the repository root; stdout and stderr captured."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "train/run.py", *map(str, args), "--verbose", "0"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "done:" in result.stdout


def read_log(run: pathlib.Path) -> list[dict[str, float]]:
    with open(run / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        assert set(LOG_COLUMNS) <= set(row), f"log.csv columns {sorted(row)}"
    return [{key: float(value) for key, value in row.items()} for row in rows]


def without_times(row: dict[str, float]) -> dict[str, float]:
    """A log.csv row without its wall and CPU seconds (training.EpochClock), which no two runs share."""
    return {key: value for key, value in row.items() if not key.endswith("seconds")}


def read_state(run: pathlib.Path) -> dict:
    with open(run / "checkpoints" / "state.json") as f:
        return json.load(f)


def decode_png(path: pathlib.Path) -> np.ndarray:
    import tensorflow as tf

    return tf.io.decode_png(tf.io.read_file(str(path))).numpy()


def grid_size(rows: int, cols: int, side: int = 28, padding: int = 1, scale: int = 2) -> tuple[int, int]:
    """Pixel size of visualize.image_grid(rows, cols) saved by visualize.save_png (upscaled by 2)."""
    return ((rows * (side + padding) + padding) * scale, (cols * (side + padding) + padding) * scale)


_CALL_SAVED_MODEL = """
import json, sys
sys.modules["infusion_tf"] = None  # the SavedModel must load without this project installed
import numpy as np, tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
out = model.sample(num_samples=int(sys.argv[2]), num_steps=int(sys.argv[3]), seed=0)["images"].numpy()
print(json.dumps({"shape": list(out.shape), "finite": bool(np.isfinite(out).all()),
                  "min": float(out.min()), "max": float(out.max())}))
"""


def call_saved_model(path: pathlib.Path, num_samples: int, num_steps: int) -> dict:
    """Calls `sample` of the SavedModel at `path` in a fresh Python process; its output's shape and range."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", _CALL_SAVED_MODEL, str(path), str(num_samples), str(num_steps)],
                            cwd=path.parent, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def tensorboard_scalars(folder: pathlib.Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every scalar in the event files of one TensorBoard folder."""
    import tensorflow as tf

    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no event files in {folder}"
    scalars: dict[str, dict[int, float]] = {}
    for path in files:
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
                scalars.setdefault(value.tag, {})[int(event.step)] = number
    return scalars


def copy_run(source: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    target = tmp_path / "run"
    shutil.copytree(source, target)
    return target


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory) -> pathlib.Path:
    """A finished 2-epoch tiny MNIST run; tests that change it work on a copy."""
    run = tmp_path_factory.mktemp("train_command") / "mnist"
    assert_ok(run_train(*TINY_FLAGS, "--epochs", 2, "--output-dir", run))
    return run


# --- 1. what a run writes


def test_config_json_round_trips_with_flags_applied(mnist_run):
    from infusion_tf.config import PRESETS, load_config

    from infusion_tf.precision import resolve_precision

    config = load_config(str(mnist_run))  # the preset's precision "auto" is resolved for this machine
    assert config == dataclasses.replace(PRESETS["mnist"], epochs=2, precision=resolve_precision("auto")[0], **TINY)
    with open(mnist_run / "config.json") as f:
        assert json.load(f) == config.to_dict()


def test_checkpoints_and_state(mnist_run):
    checkpoints = mnist_run / "checkpoints"
    for name in ("last.keras", "last.weights.h5", "best.weights.h5", "state.json"):
        assert (checkpoints / name).is_file() and (checkpoints / name).stat().st_size > 0, name
    assert not [p.name for p in checkpoints.iterdir() if p.name.startswith(".tmp")], "temporary files left"
    state = read_state(mnist_run)
    assert state["epoch"] == 2
    # best.weights.h5 is the epoch with the best validation lower bound of log.csv.
    val = [row["val_lower_bound"] for row in read_log(mnist_run)]
    assert state["best_epoch"] == int(np.argmax(val)) + 1
    assert state["best_val_lower_bound"] == pytest.approx(max(val), rel=1e-6)


def test_log_csv_has_one_finite_row_per_epoch(mnist_run):
    rows = read_log(mnist_run)
    assert [int(row["epoch"]) for row in rows] == [0, 1]
    for row in rows:
        assert all(math.isfinite(row[key]) for key in LOG_COLUMNS), row


def test_tensorboard_logs_train_and_validation(mnist_run):
    rows = read_log(mnist_run)
    train = tensorboard_scalars(mnist_run / "tensorboard" / "train")
    validation = tensorboard_scalars(mnist_run / "tensorboard" / "validation")
    for key in ("loss", "lower_bound"):
        assert train[f"epoch_{key}"] == pytest.approx({e: row[key] for e, row in enumerate(rows)}, rel=1e-5)
        assert validation[f"epoch_{key}"] == pytest.approx(
            {e: row[f"val_{key}"] for e, row in enumerate(rows)}, rel=1e-5)


def test_sample_and_chain_pictures(mnist_run):
    samples = decode_png(mnist_run / "samples" / "samples.png")
    assert samples.shape == (*grid_size(10, 10), 1)  # 100 samples in 10 rows of 10
    chains = decode_png(mnist_run / "samples" / "chains.png")
    assert chains.shape == (*grid_size(10, SAMPLING_STEPS + 1), 1)  # 10 chains, z(0) .. z(4)
    assert samples.std() > 0 and chains.std() > 0
    for epoch in (1, 2):  # --sample-every 1
        assert (mnist_run / "samples" / f"samples_epoch{epoch:04d}.png").is_file()
    # samples.png is a copy of the last epoch's picture.
    assert (mnist_run / "samples" / "samples.png").read_bytes() == \
        (mnist_run / "samples" / "samples_epoch0002.png").read_bytes()


def test_saved_model_samples_in_a_fresh_process(mnist_run):
    out = call_saved_model(mnist_run / "saved_model", num_samples=5, num_steps=SAMPLING_STEPS)
    assert out["shape"] == [5, 28, 28, 1]
    assert out["finite"] and 0.0 <= out["min"] <= out["max"] <= 1.0


# --- 2. resumption


def test_resume_continues_at_the_next_epoch(mnist_run, tmp_path):
    import keras

    from infusion_tf.config import load_config
    from infusion_tf.model import InfusionModel  # noqa: F401 -- registers the class for load_model

    run = copy_run(mnist_run, tmp_path)
    before_config, before_rows = load_config(str(run)), read_log(run)
    assert_ok(run_train("--resume", "--epochs", 3, "--output-dir", run))

    rows = read_log(run)
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    assert rows[:2] == before_rows  # appended, not rewritten
    assert all(math.isfinite(rows[2][key]) for key in LOG_COLUMNS)
    assert read_state(run)["epoch"] == 3
    assert (run / "samples" / "samples_epoch0003.png").is_file()
    # The config is the run's own (epochs may be recorded as the new target or kept).
    after_config = load_config(str(run))
    assert dataclasses.replace(after_config, epochs=before_config.epochs) == before_config
    model = keras.models.load_model(str(run / "checkpoints" / "last.keras"))
    assert int(model.optimizer.iterations.numpy()) == 3 * STEPS_PER_EPOCH
    assert dataclasses.replace(model.config, epochs=before_config.epochs) == before_config

    # Resuming replays the batches and random state of an uninterrupted 3-epoch run.
    straight = tmp_path / "straight"
    assert_ok(run_train(*TINY_FLAGS, "--epochs", 3, "--output-dir", straight))
    for resumed_row, straight_row in zip(rows, read_log(straight)):
        assert without_times(resumed_row) == pytest.approx(without_times(straight_row), rel=1e-4)


def test_snapshots_keep_the_weights_of_every_nth_epoch(mnist_run, tmp_path):
    """--snapshot-every N (also on --resume): checkpoints/epochNNNN.weights.h5, a copy of that epoch's
    last.weights.h5 (the weights eval/run.py reads), for learning curves evaluated afterwards."""
    from infusion_tf.config import load_config

    run = copy_run(mnist_run, tmp_path)
    assert_ok(run_train("--resume", "--epochs", 4, "--snapshot-every", 3, "--output-dir", run))
    kept = sorted(p.name for p in (run / "checkpoints").glob("epoch*.weights.h5"))
    assert kept == ["epoch0003.weights.h5"] and load_config(str(run)).snapshot_every == 3
    assert (run / "checkpoints" / "epoch0003.weights.h5").read_bytes() != (
        run / "checkpoints" / "last.weights.h5").read_bytes()  # epoch 4 moved on
    result = subprocess.run([sys.executable, "eval/run.py", "--checkpoint", str(run), "--weights",
                             str(run / "checkpoints" / "epoch0003.weights.h5"), "--num-examples", "5", "--k", "2",
                             "--repeats", "1", "--output", str(tmp_path / "e3.json")], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_resume_with_a_conflicting_flag_is_refused(mnist_run, tmp_path):
    run = copy_run(mnist_run, tmp_path)
    before = snapshot(run)
    result = run_train("--resume", "--epochs", 3, "--width", 64, "--output-dir", run)
    assert_usage_error(result, "width")
    assert snapshot(run) == before
    assert_usage_error(run_train("--resume", "--recipe", "paper", "--output-dir", run), "recipe")  # a new run's
    assert snapshot(run) == before


def _fewer_images(tmp_path: pathlib.Path, train: int = 10_300, test: int = 500) -> pathlib.Path:
    """Another data source: valid gzip IDX files of the first `train` / `test` shipped images, written with numpy."""
    from infusion_tf import data

    folder = tmp_path / "fewer"
    folder.mkdir()
    for name, n in (("train-images-idx3-ubyte.gz", train), ("t10k-images-idx3-ubyte.gz", test)):
        images = data.read_idx(str(MNIST_DIR / name))[:n]  # uint8 [n, 28, 28]
        header = np.array([2051, *images.shape], dtype=">u4").tobytes()
        (folder / name).write_bytes(gzip.compress(header + images.tobytes(), compresslevel=1))
    return folder


def test_the_run_records_its_data_source(mnist_run):
    from infusion_tf import data

    source = json.loads((mnist_run / "data_source.json").read_text())
    assert (source["dataset"], source["kind"], source["data_dir"]) == ("mnist", "bundled", None)
    assert source["fingerprint"] == data.splits_fingerprint(data.load_splits("mnist"))


def test_resume_with_another_data_source_is_refused(mnist_run, tmp_path):
    run = copy_run(mnist_run, tmp_path)
    before = snapshot(run)
    other = _fewer_images(tmp_path)  # the first 300 training images are the same, the rest is not
    result = run_train("--resume", "--epochs", 3, "--data-dir", other, "--output-dir", run)
    assert_usage_error(result, f"--data-dir {other}", "are not the data the run", "data_source.json")
    assert snapshot(run) == before


def test_resume_with_the_same_data_in_another_folder_is_accepted(mnist_run, tmp_path):
    run = copy_run(mnist_run, tmp_path)
    same = _copy_mnist(tmp_path)  # the shipped files, elsewhere (the data moved): the same content
    assert_ok(run_train("--resume", "--epochs", 3, "--data-dir", same, "--output-dir", run))
    assert read_state(run)["epoch"] == 3
    source = json.loads((run / "data_source.json").read_text())  # the record follows the data
    assert (source["kind"], source["data_dir"]) == ("idx", str(same.resolve()))
    assert source["fingerprint"] == json.loads((mnist_run / "data_source.json").read_text())["fingerprint"]


# --- 3. bad inputs: exit 2, one line, nothing written


def _copy_mnist(tmp_path: pathlib.Path) -> pathlib.Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for name in MNIST_FILES:
        shutil.copyfile(MNIST_DIR / name, folder / name)
    return folder


def _truncated_file(tmp_path):
    folder = _copy_mnist(tmp_path)
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100_000])  # the gzip stream ends early
    return folder


def _bad_magic(tmp_path):
    folder = _copy_mnist(tmp_path)
    path = folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x05" + raw[4:], compresslevel=1))  # magic 2053 instead of 2051
    return folder


def _truncated_payload(tmp_path):
    folder = _copy_mnist(tmp_path)
    path = folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-784], compresslevel=1))  # a valid gzip of one image too few
    return folder


BAD_INPUTS = {
    # name: (flags given tmp_path, words the error line must hold)
    "unknown_dataset": (lambda tmp: ["--dataset", "no_such_dataset"], ["no_such_dataset"]),
    # T = 15 (the preset): alpha(6) = 0.95 + 6 * 0.01 > 1.
    "alpha_out_of_range": (lambda tmp: ["--alpha0", "0.95", "--num-steps", "15"], ["alpha", "[0, 1]"]),
    "batch_size_zero": (lambda tmp: ["--batch-size", "0"], ["batch_size"]),
    "missing_data_dir": (lambda tmp: ["--data-dir", str(tmp / "no_such_folder")], ["no_such_folder"]),
    "truncated_idx_file": (lambda tmp: ["--data-dir", str(_truncated_file(tmp))], ["train-images-idx3-ubyte"]),
    "idx_magic_number": (lambda tmp: ["--data-dir", str(_bad_magic(tmp))], ["train-images-idx3-ubyte", "magic"]),
    "truncated_idx_payload": (lambda tmp: ["--data-dir", str(_truncated_payload(tmp))],
                              ["train-images-idx3-ubyte", "truncated"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, tmp_path):
    flags, words = BAD_INPUTS[case]
    output = tmp_path / "run"
    # TINY first so that the case's flags override it (argparse keeps the last value).
    result = run_train(*TINY_FLAGS, "--epochs", 1, *flags(tmp_path), "--output-dir", output)
    assert_usage_error(result, *words)
    assert not output.exists()


def test_existing_run_folder_is_not_touched_without_resume_or_overwrite(mnist_run, tmp_path):
    run = copy_run(mnist_run, tmp_path)
    before = snapshot(run)
    result = run_train(*TINY_FLAGS, "--epochs", 1, "--output-dir", run)
    assert_usage_error(result, str(run), "--resume", "--overwrite")
    assert snapshot(run) == before


def test_output_path_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "run"
    path.write_text("not a folder\n")
    assert_usage_error(run_train(*TINY_FLAGS, "--epochs", 1, "--output-dir", path), str(path))
    assert path.read_text() == "not a folder\n"


def test_overwrite_replaces_the_folder(tmp_path):
    output = tmp_path / "run"
    (output / "checkpoints").mkdir(parents=True)
    (output / "notes.txt").write_text("an older run\n")
    (output / "checkpoints" / "state.json").write_text('{"epoch": 7}')
    assert_ok(run_train(*TINY_FLAGS, "--epochs", 1, "--output-dir", output, "--overwrite"))
    assert not (output / "notes.txt").exists()
    assert read_state(output)["epoch"] == 1
    assert [int(row["epoch"]) for row in read_log(output)] == [0]
    assert (output / "saved_model" / "saved_model.pb").is_file()


# --- 4. a 2-D toy density


def test_banana_run_writes_a_scatter_plot_and_a_2d_saved_model(tmp_path):
    run = tmp_path / "banana"
    assert_ok(run_train("--dataset", "banana", "--epochs", 1, "--train-examples", 512, "--width", 32,
                        "--validation-examples", 512, "--output-dir", run))
    rows = read_log(run)
    assert len(rows) == 1 and all(math.isfinite(rows[0][key]) for key in LOG_COLUMNS)
    scatter = decode_png(run / "samples" / "samples.png")
    # matplotlib figure of 4 x 4 inches at 100 dpi (visualize.save_scatter), in colour.
    assert scatter.shape[:2] == (400, 400) and scatter.shape[2] in (3, 4)
    assert len(np.unique(scatter.reshape(-1, scatter.shape[2]), axis=0)) > 2
    out = call_saved_model(run / "saved_model", num_samples=7, num_steps=10)
    assert out["shape"] == [7, 2]
    assert out["finite"] and 0.0 <= out["min"] <= out["max"] <= 1.0


# --- 5. the lower-bound objective (Section 2.4.1)


def test_lower_bound_objective_trains_with_finite_values(tmp_path):
    from infusion_tf.config import load_config

    run = tmp_path / "lower_bound"
    assert_ok(run_train(*TINY_FLAGS, "--epochs", 1, "--objective", "lower_bound", "--output-dir", run))
    assert load_config(str(run)).objective == "lower_bound"
    rows = read_log(run)
    assert len(rows) == 1 and all(math.isfinite(rows[0][key]) for key in LOG_COLUMNS), rows
    assert read_state(run)["epoch"] == 1


# --- warm start


def test_init_from_starts_from_another_runs_weights_with_a_fresh_optimizer(mnist_run, tmp_path):
    """--init-from: the new run's model before its first step holds the source's best weights (operator, prior and
    batch-norm statistics), its own schedules and a fresh random stream; config.json records the source."""
    from infusion_tf import run_folder, training
    from infusion_tf.checkpoint import load_checkpoint
    from infusion_tf.config import PRESETS

    config = dataclasses.replace(PRESETS["mnist"], epochs=1, omega=0.02, learning_rate=5e-4, init_from=str(mnist_run),
                                 **TINY)
    splits = run_folder.training_splits(config, run_folder.load_run_data(config)[0])
    model = training.build_model(config, splits.train)
    training.warm_start(model, config.init_from)
    source = load_checkpoint(str(mnist_run))
    for mine, theirs in zip(model.weights, source.weights):
        if mine.path.endswith(("alpha", "eta", "rng_counter")):
            continue
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs), err_msg=mine.path)
    np.testing.assert_allclose(np.asarray(model.alpha), 0.02 * np.arange(3), atol=1e-7)  # this run's omega
    assert int(model.rng_counter.numpy()) == 0 and int(model.optimizer.iterations.numpy()) == 0
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(config.learning_rate)
    assert all(not np.any(np.asarray(v)) for v in model.optimizer.variables if "moment" in v.path or "veloc" in v.path)
    run = tmp_path / "warm"
    result = run_train(*TINY_FLAGS, "--epochs", 1, "--init-from", mnist_run, "--output-dir", run)
    assert_ok(result)
    assert json.loads((run / "config.json").read_text())["init_from"] == str(mnist_run)


def test_init_from_another_architecture_is_refused_and_writes_nothing(mnist_run, tmp_path):
    flags = [arg if arg != "32" else "48" for arg in TINY_FLAGS]  # --width 48: other shapes
    result = run_train(*flags, "--epochs", 1, "--init-from", mnist_run, "--output-dir", tmp_path / "warm")
    assert_usage_error(result, "do not match the architecture", "width=48")
    assert not (tmp_path / "warm").exists()
    assert_usage_error(run_train(*TINY_FLAGS, "--init-from", tmp_path / "nowhere", "--output-dir", tmp_path / "w2"),
                       "--init-from", "does not exist")
    assert not (tmp_path / "w2").exists()


def test_epoch_clock_times_each_epoch_and_keeps_an_old_log_aligned(tmp_path):
    """log.csv gains the epoch's wall and CPU seconds; a run resumed on a log written without them adds none."""
    from infusion_tf.training import EpochClock

    clock, logs = EpochClock(), {"loss": 1.0}
    clock.on_epoch_begin(0)
    sum(i * i for i in range(200_000))  # some CPU work inside the epoch
    clock.on_epoch_end(0, logs)
    assert 0 < logs["epoch_cpu_seconds"] and 0 < logs["epoch_seconds"] < 60
    old = tmp_path / "log.csv"
    old.write_text("epoch,loss,lower_bound\n0,1.0,2.0\n")
    resumed, logs = EpochClock(str(old)), {"loss": 1.0}
    resumed.on_epoch_begin(1)
    resumed.on_epoch_end(1, logs)
    assert logs == {"loss": 1.0}
    new = tmp_path / "new.csv"
    new.write_text("epoch,epoch_cpu_seconds,epoch_seconds,loss\n0,1.0,1.0,2.0\n")
    assert EpochClock(str(new)).enabled


def test_the_header_names_the_recipe():
    """The training line of the header says the decay and the average of the weights when the recipe has them."""
    import dataclasses as dc
    import types

    from infusion_tf.config import PRESETS, InfusionConfig
    from infusion_tf.run_folder import Progress
    from infusion_tf.training import describe_run

    splits = types.SimpleNamespace(train=np.zeros(1000), validation=np.zeros(10), test=np.zeros(10))
    model = types.SimpleNamespace(describe=lambda: "a model", count_params=lambda: 7)
    paper = describe_run(InfusionConfig(), splits, model, "out", Progress())[2]
    assert "batch 100, Adam 0.001, float32;" in paper and "decay" not in paper and "average" not in paper
    tuned = dc.replace(PRESETS["mnist"], lr_schedule="cosine", ema_momentum=0.999, precision="mixed_bfloat16")
    line = describe_run(tuned, splits, model, "out", Progress())[2]
    assert "Adam 0.001 with cosine decay, average of the weights 0.999, mixed_bfloat16;" in line
