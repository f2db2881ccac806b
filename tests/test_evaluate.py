"""The evaluation command on a small trained checkpoint: results.json, reproducibility, clear errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from infusion_tf import evaluate, run_folder, training
from infusion_tf.config import InfusionConfig, save_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(width=32, depth=1, num_steps=3, sampling_steps=4, batch_size=50, train_examples=300,
            validation_examples=100, epochs=1, sample_every=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("run") / "mnist")
    training.train(InfusionConfig(**TINY), folder, verbose=0, export=False)
    return folder


def run(checkpoint, tmp_path, **kwargs):
    settings = dict(checkpoint=checkpoint, num_examples=40, repeats=2, validation_examples=40,
                    output=str(tmp_path / "results.json"), batch_norm="moving")
    return evaluate.evaluate(evaluate.EvalSettings(**{**settings, **kwargs}))


@pytest.mark.parametrize("estimator", ["lower_bound", "importance_sampling", "isotropic"])
def test_chain_estimators_write_results(checkpoint, tmp_path, estimator):
    result = run(checkpoint, tmp_path, estimator=estimator, k=4)
    with open(tmp_path / "results.json") as f:
        saved = json.load(f)
    for key in ("estimator", "mean_nats", "std_nats", "bits_per_dim", "per_step", "settings", "wall_seconds"):
        assert key in saved, key
    assert saved["estimator"] == estimator
    assert saved["settings"]["config"]["num_steps"] == 3 and saved["settings"]["k"] == 4
    assert len(saved["per_step"]) == 4 and np.isfinite(saved["mean_nats"])
    assert len(saved["repeats_nats"]) == 2 and saved["std_nats"] > 0
    np.testing.assert_allclose(sum(saved["per_step"]), saved["lower_bound_same_chains"]["mean_nats"], rtol=1e-6)
    if estimator == "importance_sampling":
        assert result["mean_nats"] >= result["lower_bound_same_chains"]["mean_nats"]
    if estimator == "isotropic":
        assert saved["isotropic_variance"] in evaluate.ISOTROPIC_VARIANCES


def test_output_in_a_new_folder_is_written(checkpoint, tmp_path):
    output = tmp_path / "new" / "deeper" / "results.json"
    run(checkpoint, tmp_path, estimator="lower_bound", k=2, repeats=1, output=str(output))
    assert json.loads(output.read_text())["estimator"] == "lower_bound"


def test_fixed_seed_gives_identical_results(checkpoint, tmp_path):
    a = run(checkpoint, tmp_path, estimator="importance_sampling", k=3, seed=4)
    b = run(checkpoint, tmp_path, estimator="importance_sampling", k=3, seed=4)
    assert a["repeats_nats"] == b["repeats_nats"]


def test_results_name_no_folder_of_this_machine(checkpoint, tmp_path, monkeypatch):
    """Paths under the home folder are recorded as ~/... (provenance.portable_path); names stay names."""
    home = os.path.dirname(os.path.dirname(checkpoint))  # holds both the run folder and tmp_path
    monkeypatch.setenv("HOME", home)
    weights = os.path.join(checkpoint, "checkpoints", "best.weights.h5")
    run(checkpoint, tmp_path, estimator="lower_bound", k=2, repeats=1, weights=weights)
    recorded = json.loads((tmp_path / "results.json").read_text())["settings"]
    assert recorded["checkpoint"] == os.path.join("~", os.path.relpath(checkpoint, home))
    assert recorded["weights"] == os.path.join("~", os.path.relpath(weights, home))
    assert recorded["output"] == os.path.join("~", os.path.relpath(tmp_path / "results.json", home))
    run(checkpoint, tmp_path, estimator="lower_bound", k=2, repeats=1, weights="best")
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["weights"] == "best"


def test_recomputed_batch_norm_is_reported(checkpoint, tmp_path):
    result = run(checkpoint, tmp_path, estimator="lower_bound", k=2, repeats=1, batch_norm="recompute",
                 batch_norm_cache=False)
    assert result["batch_norm"]["mode"] == "recompute"
    assert result["batch_norm"]["max_abs_mean_change"] > 0
    assert not any(name.endswith(".batch_norm.npz") for _, _, names in os.walk(checkpoint) for name in names)


def test_recomputed_statistics_are_kept_for_the_same_weights_only(checkpoint, tmp_path):
    from infusion_tf.checkpoint import load_checkpoint

    folder = str(tmp_path / "run")
    shutil.copytree(checkpoint, folder)
    cache = os.path.join(folder, "checkpoints", "best.batch_norm.npz")
    kwargs = dict(estimator="lower_bound", k=2, repeats=1, batch_norm="recompute")
    first = run(folder, tmp_path, **kwargs)
    assert "seconds" in first["batch_norm"] and os.path.isfile(cache)
    second = run(folder, tmp_path, **kwargs)  # read back: the same statistics, the same numbers
    assert second["batch_norm"]["cache"] == cache and "seconds" not in second["batch_norm"]
    assert second["repeats_nats"] == first["repeats_nats"]
    assert second["batch_norm"]["max_abs_mean_change"] == first["batch_norm"]["max_abs_mean_change"]
    other_seed = run(folder, tmp_path, **kwargs, seed=1)  # the key holds the seed: recomputed
    assert "cache" not in other_seed["batch_norm"]
    model = load_checkpoint(folder)  # new weights under the same name: the hash no longer matches
    kernel = model.operator.trainable_weights[0]
    kernel.assign(kernel + 0.05)
    model.save_weights(os.path.join(folder, "checkpoints", "best.weights.h5"))
    changed = run(folder, tmp_path, **kwargs, seed=1)
    assert "cache" not in changed["batch_norm"] and changed["repeats_nats"] != other_seed["repeats_nats"]


@pytest.mark.parametrize("settings, message", [
    (dict(k=0), "k .* must be >= 1"),
    (dict(estimator="ais"), "unknown estimator 'ais'"),
    (dict(split="dev"), "split must be"),
    (dict(repeats=0), "repeats must be >= 1"),
])
def test_bad_settings_are_clear_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        evaluate.EvalSettings(checkpoint="x", **settings)


def test_command_line_errors_exit_2(checkpoint, tmp_path):
    def call(*args):
        return subprocess.run([sys.executable, "eval/run.py", *args], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})

    missing = call("--checkpoint", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    bad_k = call("--checkpoint", checkpoint, "--k", "0")
    assert bad_k.returncode == 2 and "k (chains per example) must be >= 1" in bad_k.stderr
    # A checkpoint of another architecture: the config says width 64, the weights are width 32.
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    save_config(InfusionConfig(**{**TINY, "width": 64}), str(other))
    os.link(os.path.join(checkpoint, "checkpoints", "best.weights.h5"), other / "checkpoints" / "best.weights.h5")
    foreign = call("--checkpoint", str(other))
    assert foreign.returncode == 2 and "do not match the architecture" in foreign.stderr
    assert len(foreign.stderr.strip().splitlines()[-1]) > 0


# --- evaluation follows the run: its data source and its dequantization


def write_fewer_images(folder, train=10_300, test=500):
    """A data source other than the shipped MNIST: valid gzip IDX files of its first `train` / `test` images,
    written with numpy (the last 10 000 training images become validation, so train keeps 300)."""
    import gzip
    import pathlib

    from infusion_tf import data

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True)
    shipped = pathlib.Path(REPO) / "infusion_tf" / "datasets" / "mnist"
    for name, n in (("train-images-idx3-ubyte.gz", train), ("t10k-images-idx3-ubyte.gz", test)):
        images = data.read_idx(str(shipped / name))[:n]  # uint8 [n, 28, 28]
        header = np.array([2051, *images.shape], dtype=">u4").tobytes()
        (folder / name).write_bytes(gzip.compress(header + images.tobytes(), compresslevel=1))
    return folder


@pytest.fixture(scope="module")
def idx_run(tmp_path_factory):
    """(run folder, data folder): a tiny run trained with --no-dequantize on its own IDX files."""
    root = tmp_path_factory.mktemp("idx_run")
    data_dir = write_fewer_images(root / "data")
    folder = str(root / "run")
    training.train(InfusionConfig(**{**TINY, "dequantize": False}), folder, data_dir=str(data_dir), verbose=0,
                   export=False)
    return folder, data_dir


def eval_main(capsys, *args):
    """eval/run.py's main in this process: (exit status, the results written or None, stderr)."""
    output = dict(zip(args, args[1:])).get("--output")
    status = evaluate.main(list(map(str, args)))
    err = capsys.readouterr().err
    results = json.loads(open(output).read()) if status == 0 and output else None
    return status, results, err


def test_the_run_folder_records_its_data_source(idx_run):
    from infusion_tf import data

    run, data_dir = idx_run
    source = json.loads(open(os.path.join(run, "data_source.json")).read())
    assert source["kind"] == "idx" and source["data_dir"] == str(data_dir.resolve())
    assert source["examples"] == {"train": 300, "validation": 10_000, "test": 500}
    assert source["fingerprint"] == data.splits_fingerprint(data.load_splits("mnist", str(data_dir)))


def test_eval_without_data_dir_uses_the_runs_data_and_dequantization(idx_run, tmp_path, capsys):
    """A run trained with --no-dequantize on its own files: eval, told neither, scores u / 255 of those files'
    test images; the reference reads the IDX file itself and runs the estimator on the same chains."""
    from infusion_tf import data, estimators, provenance
    from infusion_tf.checkpoint import load_checkpoint

    run, data_dir = idx_run
    flags = ["--checkpoint", run, "--estimator", "lower_bound", "--num-examples", 20, "--k", 2, "--repeats", 1,
             "--batch-norm", "moving"]
    status, results, err = eval_main(capsys, *flags, "--output", tmp_path / "run.json")
    assert status == 0, err
    assert results["dequantize"] == {"used": False, "from": "run"}
    assert results["data_source"]["kind"] == "idx" and results["data_source"]["examples"]["test"] == 500
    assert results["data_source"]["data_dir"] == provenance.portable_path(str(data_dir.resolve()))
    test = data.read_idx(str(data_dir / "t10k-images-idx3-ubyte.gz"))[:20, :, :, None]  # uint8 [20, 28, 28, 1]
    scorer = estimators.ChainScorer.from_model(load_checkpoint(run))
    # eval/run.py numbers the examples from 0 (first_index=0: the whole set, shards.py)
    expected = estimators.lower_bound(scorer, test.astype(np.float32) / 255.0, 2, 0, first_index=0).mean_nats
    assert results["repeats_nats"][0] == pytest.approx(expected, abs=1e-4)

    status, flagged, err = eval_main(capsys, *flags, "--dequantize", "--output", tmp_path / "flag.json")
    assert status == 0, err
    assert flagged["dequantize"] == {"used": True, "from": "flag"}
    x = np.concatenate([np.asarray(b) for b in data.make_eval_dataset(test, 1000, seed=0, dequantize=True)])
    assert np.all(np.floor(256 * x) == test)  # (u + U[0, 1)) / 256
    expected = estimators.lower_bound(scorer, x, 2, 0, first_index=0).mean_nats
    assert flagged["repeats_nats"][0] == pytest.approx(expected, abs=1e-4)
    assert abs(flagged["repeats_nats"][0] - results["repeats_nats"][0]) > 1.0


def test_eval_of_a_run_whose_data_moved(idx_run, tmp_path, capsys):
    run, data_dir = idx_run
    moved = str(tmp_path / "run")
    shutil.copytree(run, moved)
    record = os.path.join(moved, "data_source.json")
    source = json.loads(open(record).read())
    with open(record, "w") as f:
        json.dump({**source, "data_dir": str(tmp_path / "gone")}, f)
    flags = ["--checkpoint", moved, "--num-examples", 5, "--k", 1, "--repeats", 1, "--batch-norm", "moving",
             "--output", tmp_path / "results.json"]
    status, _, err = eval_main(capsys, *flags)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and "gone" in err and "--data-dir" in err
    status, results, err = eval_main(capsys, *flags, "--data-dir", data_dir)  # the same content elsewhere
    assert status == 0, err
    assert results["data_source"]["fingerprint"] == source["fingerprint"]
    status, _, err = eval_main(capsys, *flags, "--data-dir", write_fewer_images(tmp_path / "other", train=10_400))
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "are not the data the run" in err and source["fingerprint"][:12] in err


def test_batch_norm_cache_key_holds_the_data_fingerprint(idx_run, tmp_path):
    from infusion_tf.checkpoint import load_checkpoint

    folder = str(tmp_path / "run")
    shutil.copytree(idx_run[0], folder)
    result = run(folder, tmp_path, estimator="lower_bound", k=1, repeats=1, num_examples=5, batch_norm="recompute")
    fingerprint = result["data_source"]["fingerprint"]
    cache = os.path.join(folder, "checkpoints", "best.batch_norm.npz")
    with np.load(cache) as cached:
        assert json.loads(str(cached["key"]))["data_fingerprint"] == fingerprint
    model, weights = load_checkpoint(folder), os.path.join(folder, "checkpoints", "best.weights.h5")
    train = np.zeros((300, 28, 28, 1), np.uint8)  # the key, not these images, decides whether the cache is used
    same = evaluate.use_recomputed_batch_norm(model, weights, train, data_fingerprint=fingerprint)
    assert "cache" in same
    other = evaluate.use_recomputed_batch_norm(model, weights, train, data_fingerprint="0" * 64)
    assert "cache" not in other and "seconds" in other  # other data: recomputed (and the cache replaced)
    with np.load(cache) as cached:  # a cache written before keys held the data is trusted as it was then
        arrays = {name: cached[name] for name in cached.files}
    key = json.loads(str(arrays.pop("key")))
    del key["data_fingerprint"]
    np.savez(cache, key=json.dumps(key), **arrays)
    assert "cache" in evaluate.use_recomputed_batch_norm(model, weights, train, data_fingerprint=fingerprint)


def test_resume_of_a_run_without_a_record_writes_one(idx_run, tmp_path):
    """A run folder written before data sources were recorded resumes on the data given, and records them."""
    run, data_dir = idx_run
    folder = str(tmp_path / "run")
    shutil.copytree(run, folder)
    os.remove(os.path.join(folder, "data_source.json"))
    config = run_folder.resume_config(folder, {"epochs": 2})
    training.train(config, folder, data_dir=str(data_dir), resume=True, verbose=0, export=False)
    assert run_folder.read_data_source(folder) == run_folder.read_data_source(run)
