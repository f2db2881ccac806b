"""eval/figures.py and eval/export_pretrained.py on a tiny untrained checkpoint; the shipped pretrained/mnist model."""

import csv
import importlib.util
import json
import os
import struct
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tensorflow as tf

from infusion_tf import InfusionConfig, InfusionModel, evaluate, visualize
from infusion_tf.checkpoint import load_checkpoint
from infusion_tf.config import save_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = InfusionConfig(width=32, depth=1, num_steps=2, sampling_steps=3, train_examples=200, batch_size=50)


def _command(name):
    """The module of eval/<name>.py (eval/ is not a package: a top-level `eval` would shadow the builtin)."""
    spec = importlib.util.spec_from_file_location(f"eval_{name}", os.path.join(REPO, "eval", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


figures, export = _command("figures"), _command("export_pretrained")


def _grid_size(rows, cols, side=28, scale=2):
    """(height, width) of visualize.image_grid's picture of rows x cols tiles, upscaled by save_png."""
    return (rows * (side + 1) + 1) * scale, (cols * (side + 1) + 1) * scale


def _png_size(path):
    """(height, width) from the PNG's IHDR chunk."""
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", header[16:24])
    return height, width


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, mnist_uint8):
    """A run folder as train/run.py lays it out: config.json, checkpoints/, log.csv, a results file."""
    folder = tmp_path_factory.mktemp("run")
    model = InfusionModel(TINY)
    model.fit_prior(mnist_uint8)
    save_config(TINY, str(folder))
    (folder / "checkpoints").mkdir()
    model.save_weights(str(folder / "checkpoints" / "best.weights.h5"))
    with open(folder / "log.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "lower_bound", "val_loss", "val_lower_bound"])
        writer.writerows([[e, -100.0 * e, 300.0 + 50 * e, -90.0 * e, 280.0 + 40 * e] for e in range(4)])
    (folder / "checkpoints" / "state.json").write_text(json.dumps(
        {"epoch": 4, "best_val_lower_bound": 400.0, "best_epoch": 4, "time": 1.7e9}))
    result = {"estimator": "lower_bound", "mean_nats": 123.4, "std_nats": 0.5, "batch_norm": {"mode": "recompute"},
              "settings": {"weights": None, "num_examples": 1000, "split": "test", "chains": 10, "repeats": 10}}
    (folder / "results_lower_bound.json").write_text(json.dumps(result))
    (folder / "results_parzen.json").write_text(json.dumps({**result, "estimator": "parzen",
                                                            "settings": {"weights": "last"}}))
    return str(folder)


@pytest.fixture(scope="module")
def pretrained(checkpoint, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("pretrained") / "mnist")
    # An evaluation first, so that the checkpoint has recomputed batch-norm statistics for the export to ship.
    evaluate.evaluate(evaluate.EvalSettings(checkpoint=checkpoint, num_examples=5, repeats=1, k=1,
                                            output=str(tmp_path_factory.mktemp("eval") / "results.json")))
    assert export.main(["--checkpoint", checkpoint, "--output", output, "--check-examples", "20",
                        "--check-chains", "2"]) == 0
    return output


def test_figures_are_written_with_their_sizes(checkpoint, tmp_path, capsys):
    output = tmp_path / "figures"
    assert figures.main(["--checkpoint", checkpoint, "--output-dir", str(output), "--completions", "4"]) == 0
    printed = capsys.readouterr().out
    expected = {"samples": _grid_size(10, 10), "chains": _grid_size(10, TINY.sampling_steps + 1),
                "infusion_chains": _grid_size(10, TINY.num_steps + 2), "training_curve": (400, 600),
                "inpainting": _grid_size(10, 2 + 4),
                "nearest_neighbours": _grid_size(10, 1 + 3)}
    for i, (name, size) in enumerate(expected.items()):
        path = str(output / f"{name}.png")
        assert f"[{i + 1}/6] {name}:" in printed and f"wrote {path}" in printed
        assert _png_size(path) == size, name
    assert sorted(os.listdir(output)) == sorted(f"{name}.png" for name in expected)


def test_inpainting_keeps_the_top_half(checkpoint, tmp_path):
    """Every completion's top half is the original's, pixel for pixel; the bottom halves are the model's own."""
    path = str(tmp_path / "inpainting.png")
    settings = figures.FigureSettings(checkpoint=checkpoint, inpaint_digits=3, completions=2)
    model, _, test = figures._load(settings)
    figures._inpainting(model, test, settings, TINY.sampling_steps, path)
    image = tf.io.decode_png(tf.io.read_file(path)).numpy()[::2, ::2, 0]  # undo save_png's 2x upscaling
    tiles = [[image[1 + r * 29:29 + r * 29, 1 + c * 29:29 + c * 29] for c in range(4)] for r in range(3)]
    for original, masked, *completions in tiles:
        for picture in (masked, *completions):
            np.testing.assert_array_equal(picture[:14], original[:14])
        assert not np.array_equal(masked[14:], original[14:])
        assert not np.array_equal(completions[0][14:], completions[1][14:])  # two chains, two completions


def test_infusion_chain_figure_ends_with_the_model_mean_and_the_target(checkpoint):
    """Figure 1's infusion chain: T draws from q, p(T)'s mean, then the digit itself in the last column."""
    from infusion_tf import data

    settings = figures.FigureSettings(checkpoint=checkpoint)
    model, _, test = figures._load(settings)
    columns = figures.infusion_chain_figure(model, test[:3], seed=4)
    assert columns.shape == (TINY.num_steps + 2, 3, 28, 28, 1)
    x = data.eval_points(test[:3], seed=4, dequantize=model.config.dequantize)
    np.testing.assert_allclose(columns[-1], np.clip(x, 0, 1), atol=1e-6)
    assert np.abs(columns[0] - x).mean() > 0.05  # z~(0) comes from the prior (alpha(0) = 0), not from x
    np.testing.assert_array_equal(columns, figures.infusion_chain_figure(model, test[:3], seed=4))  # seeded


def test_inpainting_grid_rejects_mismatched_shapes(tmp_path):
    images = np.zeros((2, 28, 28, 1), np.float32)
    with pytest.raises(ValueError, match=r"completions \[n, m, H, W, C\], got .*\(3, 2, 28, 28, 1\)"):
        visualize.save_inpainting_grid(str(tmp_path / "x.png"), images, images, np.zeros((3, 2, 28, 28, 1)))


def test_figures_recompute_batch_norm_and_skip_a_missing_log(pretrained, tmp_path, capsys):
    output = tmp_path / "figures"
    assert figures.main(["--checkpoint", pretrained, "--output-dir", str(output), "--batch-norm", "recompute",
                         "--num-samples", "20", "--num-chains", "2", "--inpaint-digits", "2"]) == 0
    printed = capsys.readouterr().out
    assert "batch-norm statistics over 200 training examples read from" in printed  # the shipped statistics
    assert "training_curve: skipped" in printed and not (output / "training_curve.png").exists()
    assert _png_size(str(output / "samples.png")) == _grid_size(2, 10)
    assert _png_size(str(output / "chains.png")) == _grid_size(2, TINY.sampling_steps + 1)


def test_figures_bad_settings_exit_2(checkpoint, tmp_path, capsys):
    assert figures.main(["--checkpoint", checkpoint, "--batch-norm", "batch"]) == 2
    assert "batch_norm must be moving or recompute, got 'batch'" in capsys.readouterr().err
    assert figures.main(["--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_export_writes_a_small_loadable_folder(checkpoint, pretrained):
    assert sorted(os.listdir(pretrained)) == ["README.md", "best.batch_norm.npz", "best.weights.h5", "config.json",
                                              "export.json", "results_lower_bound.json"]  # parzen's: last weights
    with h5py.File(os.path.join(pretrained, "best.weights.h5"), "r") as f:
        assert "optimizer" not in f
    source, shipped = load_checkpoint(checkpoint), load_checkpoint(pretrained)
    assert shipped.config == source.config
    for a, b in zip(source.weights, shipped.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    summary = json.loads(open(os.path.join(pretrained, "export.json")).read())
    assert summary["check"]["num_examples"] == 20 and np.isfinite(summary["check"]["mean_nats"])
    assert summary["not_copied"] == ["results_parzen.json: computed on weights last, not best.weights.h5"]
    samples = summary["check_samples"]  # the data-free check: the same draw from the shipped folder
    assert len(samples["sample_means"]) == 16 and all(0.0 < m < 1.0 for m in samples["sample_means"])
    np.testing.assert_allclose(export.sample_check(shipped, samples["seed"])["sample_means"], samples["sample_means"],
                               atol=1e-6)
    readme = open(os.path.join(pretrained, "README.md")).read()
    for line in (f"python eval/run.py --checkpoint {pretrained} --estimator lower_bound", "load_checkpoint(",
                 "model.sample(", "visualize.save_sample_grid(", "Epochs trained: 4", "epoch 4",
                 "--width 32", "--depth 1", "--num-steps 2", "--train-examples 200", "123.40 +- 0.50 nats"):
        assert line in readme, line


def test_export_refuses_to_overwrite(checkpoint, pretrained, capsys):
    before = {name: os.path.getmtime(os.path.join(pretrained, name)) for name in os.listdir(pretrained)}
    assert export.main(["--checkpoint", checkpoint, "--output", pretrained]) == 2
    assert "already holds files; pass --overwrite" in capsys.readouterr().err
    assert {name: os.path.getmtime(os.path.join(pretrained, name)) for name in os.listdir(pretrained)} == before
    assert export.main(["--checkpoint", checkpoint, "--output", checkpoint, "--overwrite"]) == 2
    assert "would replace the checkpoint folder" in capsys.readouterr().err


def test_export_over_the_size_limit_leaves_nothing(checkpoint, tmp_path, capsys):
    output = tmp_path / "big"
    assert export.main(["--checkpoint", checkpoint, "--output", str(output), "--max-mb", "0.01"]) == 2
    assert "over the 0.01 MB limit" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_export_overwrite_replaces_the_folder(checkpoint, tmp_path):
    output = tmp_path / "mnist"
    output.mkdir()
    (output / "stale.txt").write_text("old")
    assert export.main(["--checkpoint", checkpoint, "--output", str(output), "--overwrite", "--weights", "best",
                        "--check-examples", "5", "--check-chains", "1"]) == 0
    assert not (output / "stale.txt").exists() and (output / "best.weights.h5").is_file()
    assert sorted(os.listdir(tmp_path)) == ["mnist"]


def test_export_of_a_snapshot_names_it_and_ships_it_as_best(checkpoint, tmp_path):
    """--weights checkpoints/epochNNNN.weights.h5 (a snapshot chosen by a learning curve): shipped as
    best.weights.h5, and the README says which snapshot and how it was exported."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(checkpoint, run)
    snapshot = run / "checkpoints" / "epoch0002.weights.h5"
    shutil.copy(run / "checkpoints" / "best.weights.h5", snapshot)
    shipped = tmp_path / "shipped"
    assert export.main(["--checkpoint", str(run), "--weights", str(snapshot), "--output", str(shipped),
                        "--check-examples", "5", "--check-chains", "1"]) == 0
    assert (shipped / "best.weights.h5").is_file() and not (shipped / "epoch0002.weights.h5").exists()
    readme = (shipped / "README.md").read_text()
    assert "the snapshot of epoch 2, shipped as `best.weights.h5`" in readme
    assert f"--weights {snapshot}" in readme


def test_figures_and_export_use_the_data_the_run_recorded(checkpoint, tmp_path, capsys):
    """A run that recorded its data in a folder of IDX files: figures and export find them there without
    --data-dir; the export ships the record without that folder (eval of the shipped folder then reads the
    package's files, the same content); once the folder is gone, the error names it and --data-dir."""
    import shutil

    from infusion_tf import data

    run, files = tmp_path / "run", tmp_path / "data"
    shutil.copytree(checkpoint, run)
    shutil.copytree(os.path.join(REPO, "infusion_tf", "datasets", "mnist"), files)
    source = data.data_source("mnist", str(files), data.load_splits("mnist", str(files)))
    (run / "data_source.json").write_text(json.dumps(source))
    drawing = ["--checkpoint", str(run), "--output-dir", str(tmp_path / "figures"), "--num-samples", "4",
               "--num-chains", "1", "--inpaint-digits", "1", "--completions", "1"]
    assert figures.main(drawing) == 0
    shipped = tmp_path / "shipped"
    assert export.main(["--checkpoint", str(run), "--output", str(shipped), "--check-examples", "5",
                        "--check-chains", "1"]) == 0
    assert json.loads((shipped / "data_source.json").read_text()) == {**source, "data_dir": None}
    result = evaluate.evaluate(evaluate.EvalSettings(checkpoint=str(shipped), num_examples=5, repeats=1, k=1,
                                                     batch_norm="moving", output=str(tmp_path / "results.json")))
    assert result["data_source"]["kind"] == "bundled" and result["data_source"]["fingerprint"] == source["fingerprint"]
    capsys.readouterr()
    shutil.move(files, tmp_path / "moved")
    assert figures.main(drawing) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(files) in err[0] and "--data-dir" in err[0]
    assert figures.main([*drawing, "--data-dir", str(tmp_path / "moved")]) == 0


def test_evaluation_command_runs_on_the_exported_folder(pretrained, tmp_path):
    results = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "eval/run.py", "--checkpoint", pretrained, "--estimator", "lower_bound", "--num-examples",
         "20", "--repeats", "2", "--k", "2", "--batch-norm", "moving", "--output", str(results)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-2000:]
    # Its first repeat uses the examples, chains and seed of the export's check (20 examples, k = 2, seed 0).
    check = json.loads(open(os.path.join(pretrained, "export.json")).read())["check"]
    assert json.loads(results.read_text())["repeats_nats"][0] == pytest.approx(check["mean_nats"], abs=1e-6)


def test_shipped_batch_norm_statistics_equal_a_fresh_recomputation(pretrained, tmp_path):
    kwargs = dict(checkpoint=pretrained, num_examples=10, repeats=1, k=2)
    cached = evaluate.evaluate(evaluate.EvalSettings(**kwargs, output=str(tmp_path / "a.json")))
    fresh = evaluate.evaluate(evaluate.EvalSettings(**kwargs, batch_norm_cache=False, output=str(tmp_path / "b.json")))
    assert cached["batch_norm"]["cache"] == os.path.join(pretrained, "best.batch_norm.npz")
    assert "cache" not in fresh["batch_norm"]
    assert cached["repeats_nats"] == pytest.approx(fresh["repeats_nats"], abs=1e-4)


def test_exported_folder_gives_the_recomputed_check_with_the_default_command(pretrained, tmp_path):
    summary = json.loads(open(os.path.join(pretrained, "export.json")).read())
    recomputed = summary["check_recomputed"]
    assert recomputed["batch_norm"].startswith("recomputed") and recomputed["mean_nats"] != summary["check"]["mean_nats"]
    result = evaluate.evaluate(evaluate.EvalSettings(
        checkpoint=pretrained, num_examples=recomputed["num_examples"], k=recomputed["k"], repeats=1,
        seed=recomputed["seed"], output=str(tmp_path / "results.json")))
    assert result["batch_norm"]["cache"] == os.path.join(pretrained, "best.batch_norm.npz")
    assert result["mean_nats"] == pytest.approx(recomputed["mean_nats"], abs=1e-6)
    assert "check_recomputed" in summary and "With the shipped recomputed statistics" in open(
        os.path.join(pretrained, "README.md")).read()


def _shipped(name: str) -> str:
    return os.path.join(REPO, "pretrained", name)


def _dataset(name: str) -> str:
    return json.loads(open(os.path.join(_shipped(name), "config.json")).read())["dataset"]


# The shipped models (every folder of pretrained/ with an export.json): MNIST's test images ship with the package;
# the other datasets' are read from ../shared/data.
SHIPPED = sorted(name for name in os.listdir(os.path.join(REPO, "pretrained"))
                 if os.path.isfile(os.path.join(_shipped(name), "export.json")))
SHIPPED_MODELS = [pytest.param(name, marks=[pytest.mark.shared_data] if _dataset(name) != "mnist" else [])
                  for name in SHIPPED]


@pytest.mark.skipif(not SHIPPED_MODELS, reason="no pretrained model shipped yet")
@pytest.mark.parametrize("name", SHIPPED_MODELS)
@pytest.mark.parametrize("which", ["check", "check_recomputed"])
def test_shipped_model_gives_its_documented_lower_bound(name, which):
    """Same examples, chains and seed as at export: only float rounding differs (CPU kernels, GPU TF32), far below
    the 2 nats allowed; wrong weights or batch-norm statistics move the bound by tens of nats or more. `check`
    uses the training's moving statistics, `check_recomputed` the shipped ones (what `eval/run.py` uses)."""
    from conftest import shared_data_dir

    folder = _shipped(name)
    data_dir = None if _dataset(name) == "mnist" else str(shared_data_dir(_dataset(name)))
    check = json.loads(open(os.path.join(folder, "export.json")).read())[which]
    model = load_checkpoint(folder)
    if which == "check_recomputed":
        assert export.use_shipped_batch_norm(model, folder, check["seed"], data_dir) == os.path.join(
            folder, "best.batch_norm.npz")
    settings = export.ExportSettings(checkpoint=folder, check_examples=check["num_examples"],
                                     check_chains=check["k"], seed=check["seed"], data_dir=data_dir)
    result = export.lower_bound_check(model, export.check_points(model.config, settings), settings)
    assert abs(result["mean_nats"] - check["mean_nats"]) < 2.0, (result["mean_nats"], check["mean_nats"])


SAMPLE_CHECKED = [name for name in SHIPPED
                  if "check_samples" in json.loads(open(os.path.join(_shipped(name), "export.json")).read())]


@pytest.mark.skipif(not SAMPLE_CHECKED, reason="no shipped model records a sample check yet")
@pytest.mark.parametrize("name", SAMPLE_CHECKED)
def test_shipped_model_draws_its_documented_samples_without_data(name):
    """The data-free check: the same seed gives the same samples, each image's mean pixel within 1e-3 (rounding
    moves it by about 1e-6; other weights by hundredths). Runs on a clone that has none of the model's data."""
    check = json.loads(open(os.path.join(_shipped(name), "export.json")).read())["check_samples"]
    result = export.sample_check(load_checkpoint(_shipped(name)), check["seed"], check["num_samples"])
    np.testing.assert_allclose(result["sample_means"], check["sample_means"], atol=1e-3)
