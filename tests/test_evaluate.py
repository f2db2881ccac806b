"""The evaluation command on a small trained checkpoint: results.json, reproducibility, clear errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from infusion_tf import evaluate, training
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
