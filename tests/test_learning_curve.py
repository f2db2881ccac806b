"""eval/learning_curve.py: the log-linear fit against closed forms, and a curve from a tiny run's snapshots whose
points are the lower bounds eval/run.py gives for the same snapshots."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("eval_learning_curve", ROOT / "eval" / "learning_curve.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


curve = _module()


def test_fit_of_an_exact_line_gives_its_slope_and_the_epochs_to_a_target():
    epochs = [8, 16, 32, 64]
    bounds = [1000 + 20 * math.log2(e) for e in epochs]  # 1060, 1080, 1100, 1120
    out = curve.epochs_to_target(epochs, bounds, 1200.0)
    assert out["nats_per_doubling"] == pytest.approx(20) and out["intercept"] == pytest.approx(1000)
    assert out["nats_per_doubling_se"] == pytest.approx(0, abs=1e-9) and out["resolved"]
    assert out["epochs"] == pytest.approx(2.0 ** 10)  # 1000 + 20 * 10 = 1200


def test_fit_recovers_a_noisy_slope_within_its_standard_error():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(200):
        epochs = np.arange(10, 200, 10)
        bounds = 900 + 15 * np.log2(epochs) + rng.normal(0, 3, epochs.size)
        fit = curve.fit_log_linear(epochs, bounds)
        hits += abs(fit.slope - 15) < 2 * fit.slope_se
    assert 180 <= hits <= 200  # ~95% within two standard errors (t with 17 degrees of freedom: 93.8%)


def test_a_flat_or_falling_curve_never_reaches_the_target():
    out = curve.epochs_to_target([10, 20, 40, 80], [1000, 999, 1001, 998], 1100)
    assert not out["resolved"] and math.isinf(out["epochs_high"])
    falling = curve.epochs_to_target([10, 20, 40], [1000, 990, 980], 1100)
    assert math.isinf(falling["epochs"])


def test_fit_needs_three_points_at_two_epochs():
    with pytest.raises(ValueError, match=">= 3"):
        curve.fit_log_linear([1, 2], [3, 4])
    with pytest.raises(ValueError, match="more than one epoch"):
        curve.fit_log_linear([5, 5, 5], [1, 2, 3])


def test_settings_refuse_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        curve.CurveSettings(checkpoint=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="fit_points"):
        curve.CurveSettings(checkpoint=str(tmp_path), fit_points=2)
    assert curve.main(["--checkpoint", str(tmp_path)]) == 2  # no snapshots: one error line, nothing written
    assert not (tmp_path / "curve").exists()


def test_curve_of_a_tiny_run_matches_eval_run_on_each_snapshot(tmp_path, capsys):
    from infusion_tf import provenance, evaluate, training
    from infusion_tf.config import InfusionConfig

    run = tmp_path / "run"
    config = InfusionConfig(width=32, depth=1, num_steps=3, sampling_steps=4, batch_size=50, train_examples=300,
                            validation_examples=100, epochs=3, snapshot_every=1)
    training.train(config, str(run), verbose=0, export=False)
    assert [e for e, _ in curve.snapshots(str(run))] == [1, 2, 3]
    assert curve.main(["--checkpoint", str(run), "--num-examples", "30", "--k", "3", "--prior-epochs", "10",
                       "--target", "5000", "--fit-points", "3"]) == 0
    report = json.loads((run / "curve" / "learning_curve.json").read_text())
    assert [p["total_epochs"] for p in report["points"]] == [11, 12, 13]
    assert report["points"][0]["gain_over_first_nats"] == 0
    assert report["settings"]["checkpoint"] == provenance.portable_path(run)  # as a reader elsewhere types it
    assert (run / "curve" / "learning_curve.png").stat().st_size > 0
    assert "nats per doubling" in (run / "curve" / "learning_curve.md").read_text()
    parsed = evaluate.eval_parser().parse_args(
        ["--checkpoint", str(run), "--weights", str(run / "checkpoints" / "epoch0002.weights.h5"),
         "--estimator", "lower_bound", "--split", "validation", "--num-examples", "30", "--k", "3", "--repeats", "1",
         "--output", str(tmp_path / "direct.json")])
    direct = evaluate.evaluate(evaluate.EvalSettings(**vars(parsed)))
    assert report["points"][1]["bound_nats"] == pytest.approx(direct["mean_nats"], rel=1e-6)
    # a rerun reads the points back instead of scoring them again
    before = (run / "curve" / "epoch0001.json").stat().st_mtime_ns
    assert curve.main(["--checkpoint", str(run), "--num-examples", "30", "--k", "3"]) == 0
    assert (run / "curve" / "epoch0001.json").stat().st_mtime_ns == before
